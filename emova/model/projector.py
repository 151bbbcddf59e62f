"""Vision → LLM projector: the 2-layer MLP of EMOVA (Linear, GELU, Linear).

Being an `nn.Sequential`, its parameter names are `0.weight`, `0.bias`, `2.weight`, `2.bias`, exactly the
names the released checkpoints use under `mm_projector.` / `model.mm_projector.`.
"""

from __future__ import annotations

from typing import Any

from torch import nn


class MLPProjector(nn.Sequential):
    """(N, in_dim) → (N, out_dim). depth 1 is a single Linear; each extra layer adds GELU + Linear."""

    def __init__(self, in_dim: int, out_dim: int, mlp_depth: int = 2) -> None:
        if mlp_depth < 1:
            raise ValueError(f"mlp_depth must be >= 1, got {mlp_depth}")
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(1, mlp_depth):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        super().__init__(*layers)


def build_projector(cfg: dict[str, Any], in_dim: int, out_dim: int) -> nn.Module:
    """Build the projector named by a (validated) `mm_projector_config`."""
    kind = cfg.get("type", "MLPProjector")
    if kind == "MLPProjector":
        return MLPProjector(in_dim, out_dim, int(cfg.get("mlp_depth", 2)))
    raise ValueError(f"unknown projector type {kind!r}; accepted: ['MLPProjector']")
