"""Residual coupling flow (`flow`): maps posterior latents z to the prior space and back."""

from __future__ import annotations

import torch
from torch import nn

from emova.speech.vits.common import Flip, WaveNet


class ResidualCouplingLayer(nn.Module):
    """Affine coupling: the second half of the channels is shifted by a WaveNet of the first half.

    With `mean_only` (the release) the log-scale is zero, so the layer is volume preserving.
    """

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        mean_only: bool = True,
    ) -> None:
        super().__init__()
        if channels % 2:
            raise ValueError(f"coupling channels must be even, got {channels}")
        self.half = channels // 2
        self.mean_only = mean_only
        self.pre = nn.Conv1d(self.half, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.post = nn.Conv1d(hidden_channels, self.half * (1 if mean_only else 2), 1)
        nn.init.zeros_(self.post.weight)
        nn.init.zeros_(self.post.bias)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False):
        # x: (B, C, T)
        x0, x1 = torch.split(x, [self.half, self.half], dim=1)
        stats = self.post(self.enc(self.pre(x0) * x_mask, x_mask, g=g)) * x_mask
        if self.mean_only:
            m, logs = stats, torch.zeros_like(stats)
        else:
            m, logs = torch.split(stats, [self.half, self.half], dim=1)
        if reverse:
            x1 = (x1 - m) * torch.exp(-logs) * x_mask
            return torch.cat([x0, x1], dim=1)
        x1 = m + x1 * torch.exp(logs) * x_mask
        return torch.cat([x0, x1], dim=1), torch.sum(logs, [1, 2])


class ResidualCouplingFlow(nn.Module):
    """`n_flows` coupling layers, each followed by a channel flip (module indices 0, 2, 4, …)."""

    def __init__(
        self,
        channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        n_flows: int = 4,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.flows = nn.ModuleList()
        for _ in range(n_flows):
            self.flows.append(
                ResidualCouplingLayer(channels, hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels)
            )
            self.flows.append(Flip())

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False):
        if reverse:
            for flow in reversed(self.flows):
                x = flow(x, x_mask, g=g, reverse=True)
            return x
        for flow in self.flows:
            x, _ = flow(x, x_mask, g=g)
        return x
