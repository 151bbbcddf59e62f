"""Checkpoints without pickle: model + optimizer tensors in safetensors, the rest in JSON.

A checkpoint directory holds `model.safetensors`, `optimizer.safetensors`, `state.json`.
Writes go to a temporary directory that is renamed into place, so a kill never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from emova.safetensors_io import load_tensors


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v) and v.dim() > 0:
                tensors[f"{pid}.{k}"] = v.contiguous()
            else:
                scalars.setdefault(str(pid), {})[k] = float(v.item() if torch.is_tensor(v) else v)
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def save_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                    state: dict) -> Path:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    meta = dict(state)
    if optimizer is not None:
        tensors, opt_meta = _flatten_optimizer(optimizer)
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        meta["optimizer"] = opt_meta
    (tmp / "state.json").write_text(json.dumps(meta, indent=1))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def save_step_checkpoint(run_dir: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                         state: dict, keep: int) -> Path:
    """Save `run_dir/step-{state['step']}` and delete all but the newest `keep` step checkpoints."""
    run_dir = Path(run_dir)
    path = save_checkpoint(run_dir / f"step-{state['step']}", model, optimizer, state)
    for old in sorted(run_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict:
    path = Path(path)
    model.load_state_dict(load_tensors(path / "model.safetensors"), strict=True)
    meta = json.loads((path / "state.json").read_text())
    if optimizer is not None and "optimizer" in meta:
        tensors = load_tensors(path / "optimizer.safetensors")
        om = meta["optimizer"]
        state: dict[int, dict] = {}
        for key, v in tensors.items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        for pid, sc in om["scalars"].items():
            for k, v in sc.items():
                state.setdefault(int(pid), {})[k] = torch.tensor(v)
        optimizer.load_state_dict({"state": state, "param_groups": om["param_groups"]})
    return meta


def load_model_tensors(path: str | Path, prefix: str = "", what: str = "training checkpoint") -> dict[str, torch.Tensor]:
    """The model tensors of a checkpoint whose names start with `prefix`, the prefix stripped."""
    f = Path(path) / "model.safetensors"
    if not f.is_file():
        raise ValueError(f"{path}: not a {what} (no model.safetensors)")
    return {k[len(prefix):]: v for k, v in load_tensors(f).items() if k.startswith(prefix)}


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    run_dir = Path(run_dir)
    cks = sorted(run_dir.glob("step-*"), key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else -1)
    cks = [c for c in cks if (c / "state.json").exists() and not c.name.endswith(".tmp")]
    return cks[-1] if cks else None
