"""Checkpoint averaging: the element-wise mean of the weights of several checkpoints of one model.

Consecutive checkpoints of one run (here: the last stage-3 legs, each continued from the one before) sit in one
basin of the loss; their average is often better on held-out data than any one of them (checkpoint averaging,
"LAWA", a model soup of one recipe). `emova train average --out DIR SRC SRC …` and the tiny recipe's `average`
step use it (docs/training.md, "Averaging the last legs").

Every source must be a `save_pretrained` directory of the same architecture: the same config (dtype aside), the
same tensor names and shapes. Floating-point tensors are averaged in fp32 and written in fp32 (the export decides
fp16); other tensors (integer buffers) must agree and are copied. The directory's other files (config, tokenizer,
processor, generation config) come from the last source; `average_info.json` records what was averaged.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emova.convert.model import write_safetensors_dir
from emova.safetensors_io import read_safetensors_dir

# how a checkpoint was stored or last run, not which model it is: a training checkpoint (fp32, use_cache set) and an
# fp16 export of the same model average
_IGNORED_CONFIG_KEYS = {"torch_dtype", "dtype", "transformers_version", "use_cache"}


def _config(src: Path) -> dict[str, Any]:
    f = src / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{src}: no config.json (expected a save_pretrained directory)")
    try:
        cfg = json.loads(f.read_text())
    except ValueError as e:
        raise ValueError(f"{f}: not JSON ({e})") from e

    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in _IGNORED_CONFIG_KEYS}
        return x

    return strip(cfg)


def _as_fp32(cfg: Any) -> Any:
    """A config (and its sub-configs) saying float32, as the averaged weights are."""
    if isinstance(cfg, dict):
        return {k: "float32" if k in ("torch_dtype", "dtype") and isinstance(v, str) else _as_fp32(v)
                for k, v in cfg.items()}
    return cfg


def average_checkpoints(srcs: Sequence[str | Path], dst: str | Path,
                        weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Write the (weighted) mean of the checkpoints `srcs` to `dst`; returns what was done (also in
    `dst/average_info.json`). `weights` default to equal; they are normalised to sum to 1."""
    paths = [Path(s) for s in srcs]
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two checkpoints, got {len(paths)}")
    if weights is None:
        weights = [1.0] * len(paths)
    if len(weights) != len(paths):
        raise ValueError(f"{len(weights)} weights for {len(paths)} checkpoints")
    if any(not (w > 0) for w in weights):  # also refuses nan
        raise ValueError(f"averaging weights must be positive, got {list(weights)}")
    total = float(sum(weights))
    coef = [float(w) / total for w in weights]
    dst = Path(dst)
    if dst.resolve() in {p.resolve() for p in paths}:
        raise ValueError(f"{dst}: the output may not be one of the checkpoints being averaged")
    first_cfg = _config(paths[0])
    for p in paths[1:]:
        if _config(p) != first_cfg:
            raise ValueError(f"{p}: its config.json differs from {paths[0]}'s: not checkpoints of one model")

    acc: dict[str, torch.Tensor] = {}
    kept: dict[str, torch.Tensor] = {}
    names: set[str] | None = None
    for p, c in zip(paths, coef):
        state = read_safetensors_dir(p)
        if names is not None and state.keys() != names:
            extra, gone = sorted(state.keys() - names), sorted(names - state.keys())
            raise ValueError(f"{p}: tensor {extra[0]!r} is not in {paths[0]}" if extra else
                             f"{p}: missing tensors {gone[:5]} that {paths[0]} has")
        names = set(state)
        for k, t in state.items():
            ref = acc.get(k, kept.get(k))
            if ref is not None and tuple(ref.shape) != tuple(t.shape):
                raise ValueError(f"{p}: tensor {k!r} has shape {tuple(t.shape)}, {paths[0]} has {tuple(ref.shape)}")
            if t.is_floating_point():
                acc[k] = acc[k] + c * t.float() if k in acc else c * t.float()
            elif k not in kept:
                kept[k] = t
            elif not torch.equal(kept[k], t):
                raise ValueError(f"{p}: non-float tensor {k!r} differs from {paths[0]}'s; cannot average")

    dst.mkdir(parents=True, exist_ok=True)
    for f in paths[-1].iterdir():
        if f.is_file() and not f.name.startswith("model") and f.name not in ("average_info.json", "export_info.json"):
            shutil.copy2(f, dst / f.name)
    cfg_file = dst / "config.json"
    cfg_file.write_text(json.dumps(_as_fp32(json.loads(cfg_file.read_text())), indent=2) + "\n")
    out = acc | kept
    write_safetensors_dir(out, dst)
    info = {"sources": [str(p) for p in paths], "weights": coef, "tensors": len(out), "dtype": "float32"}
    (dst / "average_info.json").write_text(json.dumps(info, indent=1))
    return info
