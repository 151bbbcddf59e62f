"""Reference style encoder (`enc_r`, a Meta-StyleSpeech mel-style encoder).

Maps a linear spectrogram to an L2-normalised `gin_channels` style vector. The release trains it
jointly with the decoder; the 126 style prototypes in `style_embedding` are centroids of its
outputs. Module indices (spectral.0 / spectral.3, temporal.0 / temporal.1) mirror the checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _Linear(nn.Module):
    """Linear layer stored under `.fc` (checkpoint naming)."""

    def __init__(self, d_in: int, d_out: int) -> None:
        super().__init__()
        self.fc = nn.Linear(d_in, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class _Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, padding=(kernel_size - 1) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Mish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.tanh(F.softplus(x))


class GatedConv(nn.Module):
    """Residual conv + GLU."""

    def __init__(self, channels: int, kernel_size: int, dropout: float) -> None:
        super().__init__()
        self.channels = channels
        self.conv1 = _Conv(channels, 2 * channels, kernel_size)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        a, b = torch.split(self.conv1(x), self.channels, dim=1)
        return x + self.dropout(a * torch.sigmoid(b))


class StyleSelfAttention(nn.Module):
    """Multi-head self-attention with a residual; scores scaled by sqrt(d_model) as in the original."""

    def __init__(self, n_heads: int, d_model: int, dropout: float) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.w_qs = nn.Linear(d_model, d_model)
        self.w_ks = nn.Linear(d_model, d_model)
        self.w_vs = nn.Linear(d_model, d_model)
        self.fc = nn.Linear(d_model, d_model)
        self.dropout = nn.Dropout(dropout)
        self.temperature = math.sqrt(d_model)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, D); pad: (B, T) True at padded frames
        b, t, _ = x.shape

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.n_heads, self.d_head).transpose(1, 2)  # (B, H, T, Dh)

        q, k, v = heads(self.w_qs(x)), heads(self.w_ks(x)), heads(self.w_vs(x))
        scores = q @ k.transpose(-2, -1) / self.temperature  # (B, H, T, T)
        if pad is not None:
            scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
        out = (F.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, -1)
        return self.dropout(self.fc(out)) + x


class MelStyleEncoder(nn.Module):
    def __init__(self, in_dim: int, hidden: int, out_dim: int, kernel_size: int = 5, n_heads: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.spectral = nn.Sequential(
            _Linear(in_dim, hidden), Mish(), nn.Dropout(dropout), _Linear(hidden, hidden), Mish(), nn.Dropout(dropout)
        )
        self.temporal = nn.Sequential(GatedConv(hidden, kernel_size, dropout), GatedConv(hidden, kernel_size, dropout))
        self.slf_attn = StyleSelfAttention(n_heads, hidden, dropout)
        self.fc = _Linear(hidden, out_dim)

    def forward(self, spec: torch.Tensor, spec_mask: torch.Tensor | None = None) -> torch.Tensor:
        # spec: (B, T, F); spec_mask: (B, 1, T) with 1 inside -> (B, out_dim)
        pad = (spec_mask[:, 0] == 0) if spec_mask is not None else None
        x = self.spectral(spec)
        x = self.temporal(x.transpose(1, 2)).transpose(1, 2)
        if pad is not None:
            x = x.masked_fill(pad[..., None], 0.0)
        x = self.fc(self.slf_attn(x, pad))
        if pad is None:
            w = x.mean(dim=1)
        else:
            x = x.masked_fill(pad[..., None], 0.0)
            w = x.sum(dim=1) / (~pad).sum(dim=1, keepdim=True)
        return F.normalize(w, dim=1)
