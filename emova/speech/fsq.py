"""Finite scalar quantisation (Mentzer et al., 2023): bound each dimension, round to a grid.

With levels [8, 8, 8, 8] a 4-d vector becomes one of 8^4 = 4096 codes. Index convention: the first
dimension is the least significant digit, `index = sum(digit_i * prod(levels[:i]))`, digits in
[0, L_i). Rounding uses a straight-through estimator so gradients flow to the encoder.
"""

from __future__ import annotations

import torch
from torch import nn


class FSQ(nn.Module):
    def __init__(self, levels: tuple[int, ...] | list[int] = (8, 8, 8, 8), eps: float = 1e-3) -> None:
        super().__init__()
        if not levels or any(int(x) < 2 for x in levels):
            raise ValueError(f"FSQ levels must be integers >= 2, got {levels}")
        lv = torch.tensor([int(x) for x in levels], dtype=torch.long)
        self.register_buffer("levels", lv, persistent=False)
        self.register_buffer("basis", torch.cumprod(torch.cat([torch.ones(1, dtype=torch.long), lv[:-1]]), 0),
                             persistent=False)
        self.eps = eps
        self.dim = len(levels)
        self.codebook_size = int(torch.prod(lv))

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """Squash to (-L/2, L/2) so that rounding gives exactly L values per dimension. (..., D)"""
        lv = self.levels.to(z.dtype)
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(z.dtype)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z: (..., D) → (quantised values (..., D) with STE, bounded pre-round values, indices (...))."""
        if z.shape[-1] != self.dim:
            raise ValueError(f"FSQ expects last dimension {self.dim}, got {z.shape[-1]}")
        zb = self.bound(z.float())
        q = zb + (torch.round(zb) - zb).detach()
        return q, zb, self.codes_to_indices(torch.round(zb))

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        half_width = (self.levels // 2).to(codes.dtype)
        digits = (codes + half_width).round().long()
        return (digits * self.basis).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        if (indices < 0).any() or (indices >= self.codebook_size).any():
            raise ValueError(f"FSQ indices must be in [0, {self.codebook_size})")
        digits = (indices[..., None] // self.basis) % self.levels
        return (digits - self.levels // 2).float()
