"""Checkpoint averaging: the mean of real EMOVA checkpoints loads and computes; bad inputs are refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from emova.train.average import average_checkpoints


def _micro(tmp_path: Path, name: str, seed: int) -> Path:
    from emova.model.config_loader import load_model_config
    from emova.model.modeling_emova import EmovaForConditionalGeneration
    from tests.train.omni_micro import write_micro_model

    torch.manual_seed(seed)
    m = EmovaForConditionalGeneration(load_model_config(write_micro_model(tmp_path / f"{name}.yaml")).config)
    m.save_pretrained(tmp_path / name)
    return tmp_path / name


def test_average_of_two_emova_checkpoints_loads_and_is_the_mean(tmp_path):
    from emova.model.modeling_emova import EmovaForConditionalGeneration

    a, b = _micro(tmp_path, "a", 0), _micro(tmp_path, "b", 1)
    (b / "tokenizer_config.json").write_text("{}")  # the other files come from the last checkpoint
    info = average_checkpoints([a, b], tmp_path / "avg", weights=[1, 3])
    assert info["weights"] == [0.25, 0.75] and info["dtype"] == "float32"
    sa, sb, sm = (load_file(str(d / "model.safetensors")) for d in (a, b, tmp_path / "avg"))
    assert sm.keys() == sa.keys()
    for k in sa:
        if sa[k].is_floating_point():
            torch.testing.assert_close(sm[k], 0.25 * sa[k].float() + 0.75 * sb[k].float())
    assert (tmp_path / "avg" / "tokenizer_config.json").exists()
    assert json.loads((tmp_path / "avg" / "average_info.json").read_text())["sources"] == [str(a), str(b)]
    m = EmovaForConditionalGeneration.from_pretrained(tmp_path / "avg")
    with torch.no_grad():
        logits = m(input_ids=torch.tensor([[1, 2, 3]])).logits
    assert torch.isfinite(logits).all()


def test_average_of_identical_checkpoints_is_the_checkpoint(tmp_path):
    a = _micro(tmp_path, "a", 0)
    average_checkpoints([a, a], tmp_path / "avg")
    sa, sm = load_file(str(a / "model.safetensors")), load_file(str(tmp_path / "avg" / "model.safetensors"))
    assert all(torch.equal(sa[k].float(), sm[k]) if sa[k].is_floating_point() else torch.equal(sa[k], sm[k])
               for k in sa)


def test_a_training_checkpoint_averages_with_an_fp16_export_of_the_same_model(tmp_path):
    a = _plain(tmp_path, "a", {"w": torch.ones(2)}, {"model_type": "x", "dtype": "float32", "use_cache": True,
                                                    "text_config": {"dtype": "float32"}})
    b = _plain(tmp_path, "b", {"w": torch.zeros(2, dtype=torch.float16)},
               {"model_type": "x", "dtype": "float16", "text_config": {"dtype": "float16"}})
    average_checkpoints([a, b], tmp_path / "avg")
    torch.testing.assert_close(load_file(str(tmp_path / "avg" / "model.safetensors"))["w"], torch.full((2,), 0.5))


def _plain(tmp_path: Path, name: str, tensors: dict[str, torch.Tensor], config: dict | None = None) -> Path:
    d = tmp_path / name
    d.mkdir()
    save_file(tensors, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps(config or {"model_type": "x", "dtype": "float32"}))
    return d


def test_sharded_checkpoints_are_read_through_their_index(tmp_path):
    d = tmp_path / "sharded"
    d.mkdir()
    save_file({"w": torch.ones(2)}, str(d / "model-00001-of-00002.safetensors"))
    save_file({"v": torch.zeros(3)}, str(d / "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"w": "model-00001-of-00002.safetensors", "v": "model-00002-of-00002.safetensors"}}))
    (d / "config.json").write_text(json.dumps({"model_type": "x", "dtype": "float16"}))
    b = _plain(tmp_path, "b", {"w": 3 * torch.ones(2), "v": torch.ones(3)})
    average_checkpoints([d, b], tmp_path / "avg")
    out = load_file(str(tmp_path / "avg" / "model.safetensors"))
    assert torch.equal(out["w"], 2 * torch.ones(2)) and torch.equal(out["v"], 0.5 * torch.ones(3))
    assert not (tmp_path / "avg" / "model.safetensors.index.json").exists()  # one file written, no stale index


@pytest.mark.parametrize("case,match", [
    ("one", "at least two"),
    ("weights_count", "2 weights for 3"),
    ("weights_sign", "must be positive"),
    ("keys", "missing tensors|is not in"),
    ("shape", "has shape"),
    ("int_buffer", "non-float tensor"),
    ("config", "config.json differs"),
    ("no_weights", "no weights"),
    ("no_config", "no config.json"),
    ("bad_index", "not a safetensors index"),
    ("dst_is_src", "may not be one of"),
])
def test_bad_inputs_get_clear_errors(tmp_path, case, match):
    a = _plain(tmp_path, "a", {"w": torch.ones(2), "n": torch.tensor([1])})
    srcs: list[Path] = [a]
    weights = None
    dst = tmp_path / "avg"
    if case == "weights_count":
        srcs, weights = [a, a, a], [1.0, 1.0]
    elif case == "weights_sign":
        srcs, weights = [a, a], [1.0, 0.0]
    elif case == "keys":
        srcs = [a, _plain(tmp_path, "b", {"w": torch.ones(2), "m": torch.tensor([1])})]
    elif case == "shape":
        srcs = [a, _plain(tmp_path, "b", {"w": torch.ones(3), "n": torch.tensor([1])})]
    elif case == "int_buffer":
        srcs = [a, _plain(tmp_path, "b", {"w": torch.ones(2), "n": torch.tensor([2])})]
    elif case == "config":
        srcs = [a, _plain(tmp_path, "b", {"w": torch.ones(2), "n": torch.tensor([1])}, {"model_type": "y"})]
    elif case == "no_weights":
        b = tmp_path / "b"
        b.mkdir()
        (b / "config.json").write_text(json.dumps({"model_type": "x"}))
        srcs = [a, b]
    elif case == "no_config":
        b = _plain(tmp_path, "b", {"w": torch.ones(2), "n": torch.tensor([1])})
        (b / "config.json").unlink()
        srcs = [a, b]
    elif case == "bad_index":
        b = _plain(tmp_path, "b", {"w": torch.ones(2), "n": torch.tensor([1])})
        (b / "model.safetensors.index.json").write_text("[1, 2]")
        srcs = [a, b]
    elif case == "dst_is_src":
        srcs, dst = [a, _plain(tmp_path, "b", {"w": torch.ones(2), "n": torch.tensor([1])})], a
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        average_checkpoints(srcs, dst, weights=weights)
    assert not (tmp_path / "avg" / "model.safetensors").exists()  # nothing half-written


def test_cli_average(tmp_path, capsys):
    from emova.cli import main

    a = _plain(tmp_path, "a", {"w": torch.ones(2)})
    b = _plain(tmp_path, "b", {"w": 3 * torch.ones(2)})
    main(["train", "average", str(a), str(b), "--out", str(tmp_path / "avg")])
    assert json.loads(capsys.readouterr().out)["weights"] == [0.5, 0.5]
    assert torch.equal(load_file(str(tmp_path / "avg" / "model.safetensors"))["w"], 2 * torch.ones(2))
