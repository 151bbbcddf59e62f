"""One way to get an accelerate `Accelerator` in this project."""

from __future__ import annotations

from typing import Any

import torch


def fresh_accelerator(bf16: bool, **kwargs: Any) -> Any:
    """An Accelerator with these settings, even when the process already made one with others.

    accelerate keeps its state process-wide and refuses a second Accelerator with other settings; one
    process may train several models in a row (the recipe, the tests), so the previous settings are
    forgotten here. The process group itself is kept. bf16 means autocast (on CPU too)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if bf16 else "no", **kwargs)
