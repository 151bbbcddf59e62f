"""Official EMOVA checkpoints ⇄ EmovaForConditionalGeneration.

Three layouts (the key prefixes are data — `LAYOUT_PREFIXES`):
  emova           ours: vision_tower.* | mm_projector.* | language_model.model.* | language_model.lm_head.weight
  official-hf     `model_type: "emova"`, architectures ["EMOVAForConditionalGeneration"] (Emova-ollm/*-hf)
  official-train  `EmovaQwen2ForCausalLM` (Emova-ollm/emova-qwen-2-5-*): model.vision_tower.vision_tower.* |
                  model.mm_projector.* | model.{embed_tokens,layers,norm}.* | lm_head.weight
The official-train names come from the original code (EmovaQwen2Model holds `vision_tower` (a
Qwen2VisionTower wrapping `.vision_tower`) and `mm_projector` beside the Qwen2 layers). The official-hf
prefixes are ASSUMED (their modeling_emova.py / index json were not readable here): see the docs.
Loading is strict: any missing/unexpected key or wrong shape raises CheckpointMismatchError listing them.
Only safetensors are read; nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from emova.assets import read_config
from emova.model.config_loader import meta_model
from emova.model.configuration_emova import EmovaConfig
from emova.safetensors_io import read_safetensors_dir

LAYOUTS = ("emova", "official-hf", "official-train")
# (our prefix, their prefix); the first matching entry wins, so specific prefixes come first
LAYOUT_PREFIXES: dict[str, list[tuple[str, str]]] = {
    "emova": [("", "")],
    "official-hf": [
        ("vision_tower.", "vision_tower."),
        ("mm_projector.", "mm_projector."),
        ("language_model.", "language_model."),
    ],
    "official-train": [
        ("vision_tower.", "model.vision_tower.vision_tower."),
        ("mm_projector.", "model.mm_projector."),
        ("language_model.lm_head.", "lm_head."),
        ("language_model.model.", "model."),
    ],
}
# Qwen2-VL ViT-600M (Emova-ollm/qwen2vit600m), used where an official config omits a vision size
QWEN2VIT_600M = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4, "hidden_size": 3584,
                 "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
                 "hidden_act": "quick_gelu"}
_VISION_DIM_KEYS = tuple(QWEN2VIT_600M)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "added_tokens.json", "special_tokens_map.json",
                   "vocab.json", "merges.txt", "chat_template.json", "chat_template.jinja",
                   "generation_config.json", "preprocessor_config.json", "emova_processor.json")
TRAIN_ONLY_KEYS = ("mm_vision_tower", "mm_projector", "mm_hidden_size", "image_aspect_ratio",
                   "mm_patch_merge_type", "use_mm_proj", "version", "mm_use_im_start_end",
                   "mm_use_im_patch_token", "tokenizer_model_max_length", "tokenizer_padding_side")
SHARD_BYTES = 5 * 1024**3


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the model built from its config."""


# ---- key mapping ---------------------------------------------------------------------------------
def _rename(key: str, pairs: list[tuple[str, str]], *, to_ours: bool) -> str | None:
    for ours, theirs in pairs:
        src, dst = (theirs, ours) if to_ours else (ours, theirs)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def to_our_keys(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    out, unmapped = {}, []
    for k, v in state.items():
        new = _rename(k, LAYOUT_PREFIXES[layout], to_ours=True)
        if new is None:
            unmapped.append(k)
        else:
            out[new] = v
    if unmapped:
        raise CheckpointMismatchError(f"{len(unmapped)} keys fit no {layout} prefix: {unmapped[:20]}")
    return out


def to_their_keys(state: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in state.items():
        new = _rename(k, LAYOUT_PREFIXES[layout], to_ours=False)
        if new is None:
            raise CheckpointMismatchError(f"our key {k!r} has no {layout} name")
        out[new] = v
    return out


# ---- reading / writing safetensors ---------------------------------------------------------------
def write_safetensors_dir(state: dict[str, torch.Tensor], path: str | Path, max_shard_bytes: int = SHARD_BYTES) -> None:
    """Write tensors (sharded with an index json when larger than max_shard_bytes)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k in sorted(state):
        t = state[k].contiguous()
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = t
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(path / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map, total = {}, 0
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / name), metadata={"format": "pt"})
        for k, t in shard.items():
            weight_map[k] = name
            total += t.numel() * t.element_size()
    (path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


# ---- configs -------------------------------------------------------------------------------------
def detect_layout(path: str | Path) -> str:
    """Which layout the checkpoint directory `path` is in: "emova", "official-hf" or "official-train"."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: no such checkpoint directory")
    cfg = read_config(path, "checkpoint")
    arch = cfg.get("architectures") or []
    if cfg.get("model_type") == "emova" and "EMOVAForConditionalGeneration" in arch:
        return "official-hf"
    if cfg.get("model_type") == "emova":
        return "emova"
    if cfg.get("model_type") == "emova_qwen2" or "EmovaQwen2ForCausalLM" in arch:
        return "official-train"
    raise ValueError(f"{path}/config.json: model_type={cfg.get('model_type')!r}, architectures={arch}: "
                     f"not an EMOVA checkpoint (accepted: emova, EMOVAForConditionalGeneration, EmovaQwen2ForCausalLM)")


def _vision_from_official(vcfg: dict[str, Any], state: dict[str, torch.Tensor], prefix: str) -> dict[str, Any]:
    """Our qwen2_vl_vision config from an official vision dict; sizes are read from the weights."""
    out = {k: vcfg[k] for k in _VISION_DIM_KEYS if k in vcfg}
    if "in_chans" in vcfg and "in_channels" not in out:
        out["in_channels"] = vcfg["in_chans"]
    out = {**QWEN2VIT_600M, **out}
    patch = state.get(prefix + "patch_embed.proj.weight")  # (embed, C, T, P, P)
    if patch is not None:
        out.update(embed_dim=patch.shape[0], in_channels=patch.shape[1], temporal_patch_size=patch.shape[2],
                   patch_size=patch.shape[3])
    merger_out = state.get(prefix + "merger.mlp.2.weight")  # (hidden, embed*merge^2)
    if merger_out is not None:
        out["hidden_size"] = merger_out.shape[0]
    blocks = {int(k[len(prefix) + 7:].split(".")[0]) for k in state if k.startswith(prefix + "blocks.")}
    if blocks:
        out["depth"] = max(blocks) + 1
    out["model_type"] = "qwen2_vl_vision"
    return out


def _text_from(cfg: dict[str, Any]) -> dict[str, Any]:
    text = {k: v for k, v in cfg.items() if k not in TRAIN_ONLY_KEYS and not k.startswith("_")}
    for k in ("architectures", "auto_map", "transformers_version", "torch_dtype", "dtype"):
        text.pop(k, None)
    text["model_type"] = "qwen2"
    return text


def official_config_to_ours(path: str | Path, state: dict[str, torch.Tensor], layout: str) -> tuple[EmovaConfig, dict[str, int]]:
    """(EmovaConfig, image settings {min_pixels, max_pixels}) from an official config.json."""
    cfg = json.loads((Path(path) / "config.json").read_text())
    if layout == "official-hf":
        vis_src, proj, prefix = cfg.get("vision_config", {}), cfg.get("mm_projector_config", {}), "vision_tower."
        text = _text_from(cfg["text_config"])
        text.setdefault("tie_word_embeddings", cfg.get("tie_word_embeddings", False))
        image_token = int(cfg["image_token_index"])
    else:
        vis_src, proj, prefix = cfg.get("mm_vision_tower", {}), cfg.get("mm_projector", {}), "model.vision_tower.vision_tower."
        text = _text_from({k: v for k, v in cfg.items() if k != "model_type"})
        image_token = int(cfg.get("image_token_index", 155761))
    if "lm_head.weight" not in state and "language_model.lm_head.weight" not in state:
        text["tie_word_embeddings"] = True  # tied checkpoints store the embedding only
    image = {k: int(vis_src[k]) for k in ("min_pixels", "max_pixels") if k in vis_src}
    config = EmovaConfig(
        text_config=text,
        vision_config=_vision_from_official(vis_src, state, prefix),
        mm_projector_config={k: v for k, v in proj.items() if k in ("type", "mlp_depth", "trainable")},
        image_token_index=image_token,
    )
    return config, image


def our_config_to_official(config: EmovaConfig, layout: str, image: dict[str, int] | None = None) -> dict[str, Any]:
    text = config.text_config.to_dict()
    for k in ("transformers_version", "dtype", "torch_dtype"):
        text.pop(k, None)
    v = config.vision_config
    vision = {k: getattr(v, k) for k in _VISION_DIM_KEYS}
    vision.update(model_type="qwen2_vl", type="Qwen2VisionTower",
                  pretrained_model_name_or_path="Emova-ollm/qwen2vit600m", **(image or {}))
    proj = dict(config.mm_projector_config)
    if layout == "official-hf":
        return {"architectures": ["EMOVAForConditionalGeneration"], "model_type": "emova",
                "text_config": {**text, "architectures": ["Qwen2ForCausalLM"]}, "vision_config": vision,
                "mm_projector_config": proj, "image_token_index": config.image_token_index,
                "ignore_index": config.ignore_index, "tie_word_embeddings": config.tie_word_embeddings,
                "default_system_prompt": "You are a helpful assistant."}
    return {**text, "architectures": ["EmovaQwen2ForCausalLM"], "model_type": "emova_qwen2",
            "mm_vision_tower": vision, "mm_projector": proj, "mm_hidden_size": config.vision_output_size,
            "image_aspect_ratio": "native_anyres", "mm_patch_merge_type": "flat", "use_mm_proj": True,
            "version": "qwen2", "image_token_index": config.image_token_index}


# ---- strict checks -------------------------------------------------------------------------------
def expected_shapes(config: EmovaConfig) -> dict[str, tuple[int, ...]]:
    """Our state_dict keys → shapes (meta device; tied lm_head left out, as in saved checkpoints)."""
    model = meta_model(config)
    shapes = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    if config.tie_word_embeddings:
        shapes.pop("language_model.lm_head.weight", None)
    return shapes


def check_state_dict(state: dict[str, torch.Tensor], config: EmovaConfig, source: str = "checkpoint") -> None:
    """Raise CheckpointMismatchError naming every missing, unexpected or mis-shaped key."""
    want = expected_shapes(config)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    shapes = sorted(f"{k}: {tuple(state[k].shape)} != {want[k]}" for k in set(want) & set(state)
                    if tuple(state[k].shape) != want[k])
    if missing or unexpected or shapes:
        raise CheckpointMismatchError(
            f"{source} does not match the model built from its config: "
            f"{len(missing)} missing {missing[:20]}, {len(unexpected)} unexpected {unexpected[:20]}, "
            f"{len(shapes)} wrong shapes {shapes[:20]}")


# ---- public API ----------------------------------------------------------------------------------
def load_checkpoint_state(src_dir: str | Path) -> tuple[EmovaConfig, dict[str, torch.Tensor], dict[str, int], str]:
    """(config, state in OUR key names, image settings, source layout) from any of the three layouts; strict."""
    layout = detect_layout(src_dir)
    raw = read_safetensors_dir(src_dir)
    if layout == "emova":
        config = EmovaConfig.from_pretrained(str(src_dir))
        image: dict[str, int] = {}
        state = raw
    else:
        config, image = official_config_to_ours(src_dir, raw, layout)
        state = to_our_keys(raw, layout)
    check_state_dict(state, config, source=f"{src_dir} ({layout})")
    return config, state, image, layout


def load_emova_model(src_dir: str | Path, dtype: torch.dtype | None = None) -> Any:
    """EmovaForConditionalGeneration with the checkpoint's weights, whatever its layout (strict)."""
    from emova.model.modeling_emova import EmovaForConditionalGeneration

    config, state, _, _ = load_checkpoint_state(src_dir)
    model = EmovaForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed = {"language_model.lm_head.weight"} if config.tie_word_embeddings else set()
    if unexpected or set(missing) - allowed:
        raise CheckpointMismatchError(f"missing {sorted(set(missing) - allowed)}, unexpected {sorted(unexpected)}")
    if config.tie_word_embeddings:
        model.tie_weights()  # lm_head shares the embedding
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()


def convert_checkpoint(src_dir: str | Path, dst_dir: str | Path, to: str = "emova") -> Path:
    """Convert a checkpoint directory between layouts; tensors are copied bit-exactly (dtype kept).
    Tokenizer/processor files are copied as they are. Returns dst_dir."""
    if to not in LAYOUTS:
        raise ValueError(f"to={to!r}; accepted: {list(LAYOUTS)}")
    src, dst = Path(src_dir), Path(dst_dir)
    if src.resolve() == dst.resolve():
        raise ValueError("src_dir and dst_dir must differ")
    config, state, image, _ = load_checkpoint_state(src)
    dst.mkdir(parents=True, exist_ok=True)
    if to == "emova":
        config.save_pretrained(str(dst))
        out_state = state
        if image and not (src / "emova_processor.json").exists():
            settings = {"system_prompt": "You are a helpful assistant.",
                        "image_processor": {"min_pixels": image.get("min_pixels", 3136),
                                            "max_pixels": image.get("max_pixels", 3211264)}}
            (dst / "emova_processor.json").write_text(json.dumps(settings, indent=2))
    else:
        (dst / "config.json").write_text(json.dumps(our_config_to_official(config, to, image), indent=2))
        out_state = to_their_keys(state, to)
    write_safetensors_dir(out_state, dst)
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            shutil.copyfile(src / name, dst / name)
    return dst
