"""A micro world (a handful of filled records + small images) and a micro model config, for stage tests."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from emova.data.world.formats import (
    asr_record,
    fill_speech_units,
    image_record,
    spoken_dialogue_record,
    text_record,
    tts_record,
)

MICRO_MODEL = """
name: micro
text_config: {model_type: qwen2, vocab_size: 4992, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2,
              num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 1024,
              tie_word_embeddings: false, bos_token_id: 768, eos_token_id: 770, pad_token_id: 768}
vision_config: {model_type: qwen2_vl_vision, depth: 2, embed_dim: 16, num_heads: 2, mlp_ratio: 2, hidden_size: 32,
                patch_size: 14, spatial_merge_size: 2, temporal_patch_size: 2, in_channels: 3}
mm_projector_config: {type: MLPProjector, mlp_depth: 2}
image_token_index: 4867
image_processor: {min_pixels: 3136, max_pixels: 3136}
"""
COLORS = {"red": (220, 30, 30), "blue": (30, 70, 220)}


def write_micro_model(path: Path) -> Path:
    path.write_text(MICRO_MODEL)
    return path


def make_micro_world(root: Path, n_per_task: int = 2, seed: int = 0) -> Path:
    """root/train/{caption,vqa,asr,tts,text_qa,dialogue_speech,vqa_speech}.json, units filled with random ids."""
    rng = random.Random(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "train").mkdir(parents=True, exist_ok=True)
    images = []
    for name, rgb in COLORS.items():
        rel = f"images/{name}.png"
        Image.new("RGB", (56, 56), rgb).save(root / rel)
        images.append((name, rel))
    recs: dict[str, list[dict]] = {t: [] for t in ("caption", "vqa", "asr", "tts", "text_qa", "dialogue_speech",
                                                   "vqa_speech")}
    for i in range(n_per_task):
        color, rel = images[i % len(images)]
        recs["caption"].append(image_record(f"cap-{i}", rel, [("Describe the image.", f"A {color} picture.")]))
        recs["vqa"].append(image_record(f"vqa-{i}", rel, [("What color is it?", color)],
                                           meta={"answer": color, "aliases": [color], "qtype": "color"}))
        recs["asr"].append(asr_record(f"asr-{i}", f"say {color}", "gender-female_emotion-neutral_speed-normal_pitch-normal"))
        recs["tts"].append(tts_record(f"tts-{i}", f"say {color}", "gender-male_emotion-neutral_speed-normal_pitch-normal"))
        recs["text_qa"].append(text_record(f"txt-{i}", f"What is {i} plus one?", str(i + 1),
                                          meta={"answer": str(i + 1), "kind": "arithmetic"}))
        recs["dialogue_speech"].append(spoken_dialogue_record(
            f"dlg-{i}", "I won the game", "happy", "high", "gender-female_emotion-happy_speed-normal_pitch-high",
            "That is great news", "happy", "high", "gender-male_emotion-happy_speed-normal_pitch-high"))
        recs["vqa_speech"].append(spoken_dialogue_record(
            f"vsp-{i}", "what color is it", "neutral", "normal", "gender-male_emotion-neutral_speed-normal_pitch-normal",
            f"It is {color}", "neutral", "normal", "gender-male_emotion-neutral_speed-normal_pitch-normal", image=rel,
            meta={"answer": color, "aliases": [color], "qtype": "color"}))
    for task, rs in recs.items():
        units = {}
        for r in rs:
            for s in r.get("speech", []):
                units[s["key"]] = [rng.randrange(4096) for _ in range(6)]
        (root / "train" / f"{task}.json").write_text(json.dumps(fill_speech_units(rs, units)))
    return root
