"""Speech-corpus ASR/TTS pairs for the omni stages: every rendering → ASR, the neutral one → TTS, and
sentences of the world's held-out split stay out."""

from __future__ import annotations

import json

import pytest

from emova.data.world_speech import corpus_speech_records, heldout_texts
from emova.model.prompts import ASR_PROMPT, TTS_PROMPT


class StubTokenizer:
    def encode_batch(self, paths):
        return [[7, 7, 3, 9, 9] if "_1" in str(p) else [5, 5, 2] for p in paths]

    @staticmethod
    def reduce(units):
        return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]


def _row(i: int, group: str, text: str, style: str) -> dict:
    return {"id": f"{group}_{i}", "split": "train", "group": group, "text": text, "phones": "a", "voice": "flite:slt",
            "gender": "female", "style": f"gender-female_{style}", "duration": 1.0, "path": f"wav/{group}_{i}.wav"}


def test_asr_for_every_rendering_tts_for_the_neutral_one_heldout_excluded(tmp_path):
    neutral, sad = "emotion-neutral_speed-normal_pitch-normal", "emotion-sad_speed-slow_pitch-low"
    rows = [_row(0, "g0", "The cat sat.", sad), _row(1, "g0", "The cat sat.", neutral),
            _row(0, "g1", "Held out  sentence.", neutral)]
    (tmp_path / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    world = tmp_path / "world" / "heldout"
    world.mkdir(parents=True)
    (world / "asr.json").write_text(json.dumps([{"conversations": [{"from": "gpt", "value": "held out sentence."}]}]))
    asr, tts = corpus_speech_records(tmp_path, StubTokenizer(), heldout_texts(tmp_path / "world"))
    assert [r["conversations"][1]["value"] for r in asr] == ["The cat sat.", "The cat sat."]
    assert asr[1]["conversations"][0]["value"] == ASR_PROMPT + "<|speech_7|><|speech_3|><|speech_9|>"
    assert len(tts) == 1 and tts[0]["conversations"][0]["value"] == TTS_PROMPT + "The cat sat."
    assert tts[0]["conversations"][1]["value"] == "<|speech_7|><|speech_3|><|speech_9|>"  # the neutral rendering
    with pytest.raises(ValueError, match="no usable"):
        corpus_speech_records(tmp_path, StubTokenizer(), {"the cat sat.", "held out sentence."})
