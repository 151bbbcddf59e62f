from __future__ import annotations

import json
from pathlib import Path

import pytest

from emova.convert.model import to_their_keys
from emova.model.config_loader import count_parameters, load_model_config, meta_model
from tests.model.make_manifests import ASSETS, manifest


@pytest.mark.parametrize("size", ["3b", "7b"])
def test_meta_model_matches_official_hf_manifest(size):
    stored = json.loads((ASSETS / f"emova_qwen2.5_{size}_hf_manifest.json").read_text())
    assert stored == manifest(size)  # the asset is what the official sizes give
    spec = load_model_config(f"emova-qwen2.5-{size}")
    model = meta_model(spec.config)
    sd = {k: list(v.shape) for k, v in model.state_dict().items()}
    if spec.config.tie_word_embeddings:
        sd.pop("language_model.lm_head.weight")
    ours = {k: v for k, v in to_their_keys(sd, "official-hf").items()}  # type: ignore[arg-type]
    assert set(ours) == set(stored), (sorted(set(ours) - set(stored))[:5], sorted(set(stored) - set(ours))[:5])
    assert all(ours[k] == stored[k] for k in stored)


def test_sizes_and_counts():
    counts = {n: count_parameters(load_model_config(n).config)["total"]
              for n in ("tiny", "emova-qwen2.5-3b", "emova-qwen2.5-7b")}
    assert 2e6 < counts["tiny"] < 1e7
    assert abs(counts["emova-qwen2.5-3b"] - 3.78e9) < 0.02e9  # HF shards 4.96 GB + 2.6 GB of bf16
    assert 8.2e9 < counts["emova-qwen2.5-7b"] < 8.5e9
    tiny = load_model_config("tiny")
    assert tiny.config.image_token_index == 4867 and tiny.config.text_config.vocab_size == 4992


def test_unknown_keys_are_errors(tmp_path: Path):
    base = (Path(__file__).resolve().parents[2] / "emova" / "configs" / "model" / "tiny.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "colour: red\n")
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        load_model_config(bad)
    bad.write_text(base.replace("hidden_size: 256", "hidden_size: 256\n  hiden_layers: 3"))
    with pytest.raises(ValueError, match="hiden_layers"):
        load_model_config(bad)
    with pytest.raises(FileNotFoundError, match="tiny"):
        load_model_config("no-such-model")
