"""The distributed engines behind `emova.train.omni`: accelerate (single process / DDP), DeepSpeed ZeRO,
torch FSDP2 — how each is set up, and how each gives back a full state dict.

CPU facts (../shared/NOTES.md): accelerate refuses DeepSpeed on CPU (`Accelerator(cpu=True)` turns it
off), so the DeepSpeed engine is built here with `deepspeed.initialize` on the process group accelerate
started; accelerate's FSDP plugin silently runs DDP on CPU, so FSDP2 is applied here with `fully_shard`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from emova.yaml_io import read_yaml_mapping

FSDP_KEYS = {"wrap_classes", "reshard_after_forward"}


def make_accelerator(bf16: bool, engine: str, grad_accum: int) -> Any:
    """An Accelerator for this stage. One process may train several stages with different settings (the
    recipe, tests): the previous Accelerator's settings are forgotten, the process group is kept."""
    from accelerate.utils import DistributedDataParallelKwargs

    from emova.train.accel import fresh_accelerator

    use_autocast = bf16 and engine != "deepspeed"  # DeepSpeed runs bf16 itself (config "bf16")
    return fresh_accelerator(use_autocast, gradient_accumulation_steps=grad_accum if engine == "ddp" else 1,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def deepspeed_config(path: Path, batch_size: int, grad_accum: int, world: int, grad_clip: float,
                     bf16: bool) -> dict[str, Any]:
    """The shipped ZeRO JSON with the run's sizes filled in (the "auto" values)."""
    ds = json.loads(Path(path).read_text(encoding="utf-8"))
    ds.update({
        "train_micro_batch_size_per_gpu": batch_size, "gradient_accumulation_steps": grad_accum,
        "train_batch_size": batch_size * grad_accum * world, "gradient_clipping": grad_clip,
        "bf16": {"enabled": bf16}, "fp16": {"enabled": False}, "zero_allow_untested_optimizer": True,
    })  # fmt: skip
    return ds


def deepspeed_initialize(module: nn.Module, opt: torch.optim.Optimizer, config: dict[str, Any]) -> tuple[Any, Any]:
    """A DeepSpeed engine over the existing process group (on GPU the same call accelerate makes)."""
    import deepspeed

    if not torch.cuda.is_available():
        # the CPU backend would JIT-compile a shared-memory all-reduce (a C++ build behind a file lock);
        # marking it incompatible (a documented, editable dict) makes DeepSpeed use the gloo group as is
        import deepspeed.ops

        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo", auto_mpi_discovery=False)
    engine, ds_opt, _, _ = deepspeed.initialize(model=module, optimizer=opt, config=config)
    return engine, ds_opt


def fully_shard_module(module: nn.Module, fsdp_config: Path) -> None:
    """torch FSDP2: each block class named in the config becomes a shard unit, the rest the root unit."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    settings = read_yaml_mapping(fsdp_config)
    unknown = sorted(set(settings) - FSDP_KEYS)
    if unknown:
        raise ValueError(f"{fsdp_config}: unknown keys {unknown}; known: {sorted(FSDP_KEYS)}")
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        raise ValueError("engine fsdp2 needs a distributed launch (accelerate launch --multi_gpu …)")
    wrap = set(settings.get("wrap_classes", []))
    reshard = bool(settings.get("reshard_after_forward", True))
    mesh = init_device_mesh("cuda" if torch.cuda.is_available() else "cpu", (torch.distributed.get_world_size(),))
    for sub in module.modules():
        if type(sub).__name__ in wrap:
            fully_shard(sub, mesh=mesh, reshard_after_forward=reshard)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard)


def full_state_dict(engine: str, acc: Any, wrapped: nn.Module, module: nn.Module,
                    prefix: str = "model.") -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of `module.<prefix>…` on the main process, prefix removed.
    Collective under deepspeed/fsdp2: call it on every rank."""
    if engine == "deepspeed":
        zero3 = int(wrapped.zero_optimization_stage()) == 3
        sd = wrapped._zero3_consolidated_16bit_state_dict() if zero3 else wrapped.module.state_dict()
    elif engine == "fsdp2":
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        sd = module.state_dict()
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in (sd or {}).items():
        if not k.startswith(prefix):
            continue
        v = v.detach().cpu()
        ptr = v.data_ptr()
        out[k[len(prefix):]] = v.clone() if ptr in seen else v  # safetensors refuses shared storage
        seen.add(ptr)
    return out


def zero_stage(wrapped: Any) -> int | None:
    stage = getattr(wrapped, "zero_optimization_stage", None)
    return int(stage()) if callable(stage) else None


class StateDictHolder:
    """Hands a ready state dict to `emova.train.checkpoint.save_checkpoint` (which calls .state_dict())."""

    def __init__(self, sd: dict[str, torch.Tensor]) -> None:
        self._sd = sd

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._sd


def shutdown_distributed() -> None:
    """Barrier + destroy the process group (gloo processes otherwise sometimes abort at exit)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


__all__ = ["StateDictHolder", "deepspeed_config", "deepspeed_initialize", "full_state_dict", "fully_shard_module",
           "make_accelerator", "shutdown_distributed", "zero_stage"]
