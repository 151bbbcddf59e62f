"""One way to get an accelerate `Accelerator` in this project."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path
from typing import Any

import torch


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX). Without it, bf16 autocast on CPU is
    emulated and *slower* than fp32 (measured ~6x slower for the U2S step on an AVX2-only EPYC)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_bf16(requested: bool) -> bool:
    """bf16 autocast when asked for and worthwhile: on a GPU that supports it, or a CPU with native bf16.
    Otherwise warn once and train in fp32 (same numbers, faster on such CPUs)."""
    if not requested:
        return False
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    if cpu_has_native_bf16():
        return True
    _warn_no_bf16()
    return False


@functools.cache
def _warn_no_bf16() -> None:
    warnings.warn("bf16 requested but this CPU has no native bf16 (avx512_bf16/amx): training in fp32, which is "
                  "faster here", stacklevel=3)


def fresh_accelerator(bf16: bool, **kwargs: Any) -> Any:
    """An Accelerator with these settings, even when the process already made one with others.

    accelerate keeps its state process-wide and refuses a second Accelerator with other settings; one
    process may train several models in a row (the recipe, the tests), so the previous settings are
    forgotten here. The process group itself is kept. bf16 means autocast where it pays (`autocast_bf16`)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if autocast_bf16(bf16) else "no", **kwargs)


def optimizer_step(acc: Any, opt: torch.optim.Optimizer, params: Any, loss: torch.Tensor, lr: float,
                   clip: float = 1.0) -> None:
    """One plain update as the speech trainers make it: every group at `lr`, backward through the
    accelerator, gradient norm clipped to `clip`, step."""
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    acc.backward(loss)
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()
