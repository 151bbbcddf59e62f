"""Reading safetensors files with errors that name the file (a truncated or corrupt checkpoint is a clear
ValueError, never a deserialiser traceback)."""

from __future__ import annotations

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


__all__ = ["load_tensors"]
