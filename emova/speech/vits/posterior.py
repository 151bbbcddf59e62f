"""Posterior encoder (`enc_q`): linear spectrogram -> latent z (training only in the release)."""

from __future__ import annotations

import torch
from torch import nn

from emova.speech.vits.common import WaveNet, sequence_mask


class PosteriorEncoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.pre = nn.Conv1d(in_channels, hidden_channels, 1)
        self.enc = WaveNet(hidden_channels, kernel_size, dilation_rate, n_layers, gin_channels=gin_channels)
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, spec: torch.Tensor, lengths: torch.Tensor, g: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # spec: (B, F, T) linear magnitude spectrogram, lengths: (B,)
        x_mask = sequence_mask(lengths, spec.size(2)).unsqueeze(1).to(spec.dtype)  # (B, 1, T)
        x = self.enc(self.pre(spec) * x_mask, x_mask, g=g)
        m, logs = torch.split(self.proj(x) * x_mask, self.out_channels, dim=1)
        z = (m + torch.randn_like(m) * torch.exp(logs)) * x_mask
        return z, m, logs, x_mask
