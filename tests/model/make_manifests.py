"""Regenerate tests/assets/emova_qwen2.5_{3b,7b}_hf_manifest.json (key → shape of the official HF
checkpoints) from the official sizes, typed here from the public configs (Qwen2.5-{3B,7B}-Instruct
config.json, EMOVA HF config.json vocab 155776, Qwen2-VL ViT 32x1280, merger out 3584 assumed).
Run: PYTHONPATH=. .venv/bin/python tests/model/make_manifests.py"""

from __future__ import annotations

import json
from pathlib import Path

from tests.model.official_schema import official_manifest

VIT_600M = {"depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "hidden_size": 3584, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3}
SIZES = {
    "3b": {"vocab_size": 155776, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
           "num_attention_heads": 16, "num_key_value_heads": 2, "tie_word_embeddings": True},
    "7b": {"vocab_size": 155776, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
           "num_attention_heads": 28, "num_key_value_heads": 4, "tie_word_embeddings": False},
}
ASSETS = Path(__file__).resolve().parents[1] / "assets"


def manifest(size: str) -> dict[str, list[int]]:
    return dict(sorted(official_manifest(SIZES[size], VIT_600M, "official-hf").items()))


if __name__ == "__main__":
    for size in SIZES:
        out = ASSETS / f"emova_qwen2.5_{size}_hf_manifest.json"
        out.write_text(json.dumps(manifest(size), indent=0))
        print(out, len(manifest(size)))
