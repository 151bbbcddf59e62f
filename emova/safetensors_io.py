"""Reading safetensors files with errors that name the file (a truncated or corrupt checkpoint is a clear
ValueError, never a deserialiser traceback)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of one .safetensors file, as `safetensors.torch.load_file` returns them."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such weights file")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError) as e:
        raise ValueError(f"{path}: not a readable safetensors file (truncated or corrupt?): {e}") from None


class MissingWeightsError(FileNotFoundError, ValueError):
    """A checkpoint directory without the weight files it should have: a missing file (FileNotFoundError) and bad
    input (ValueError) alike, so callers catching either see it."""


def read_safetensors_dir(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of `model.safetensors` or of the shards named in `model.safetensors.index.json`."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e})") from e
        missing = [name for name in files if not (path / name).is_file()]
        if missing:
            raise MissingWeightsError(f"{path}: no weights at {', '.join(missing)} (named in {index.name})")
    elif (path / "model.safetensors").exists():
        files = ["model.safetensors"]
    else:
        found = [p.name for p in path.iterdir()] if path.is_dir() else []
        raise MissingWeightsError(f"{path}: no weights (no model.safetensors(.index.json)); found {found[:10]}. "
                                  f"Only safetensors checkpoints are read (no .bin/.pt).")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        state.update(load_tensors(path / name))
    return state


__all__ = ["MissingWeightsError", "load_tensors", "read_safetensors_dir"]
