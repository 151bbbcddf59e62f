"""Training checkpoints: a round trip, and a damaged one is a clear error naming the file."""

import pytest
import torch

from emova.safetensors_io import load_tensors
from emova.train.checkpoint import load_checkpoint, load_model_tensors, save_checkpoint


def _model_and_opt():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    return model, opt


def test_round_trip_and_damaged_files(tmp_path):
    model, opt = _model_and_opt()
    path = save_checkpoint(tmp_path / "step-1", model, opt, {"step": 1})
    other = torch.nn.Linear(4, 3)
    other_opt = torch.optim.AdamW(other.parameters(), lr=1e-3)
    assert load_checkpoint(path, other, other_opt)["step"] == 1
    assert torch.equal(other.weight, model.weight)
    assert set(load_model_tensors(path)) == {"weight", "bias"}

    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        load_checkpoint(path, other, other_opt)
    weights.unlink()
    with pytest.raises(ValueError, match="no such weights file"):
        load_tensors(weights)
