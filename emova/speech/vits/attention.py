"""Transformer encoder with windowed relative-position self-attention (the VITS text encoder).

EMOVA feeds speech-unit ids instead of phonemes through the same encoder. Relative position
embeddings cover offsets in [-window_size, window_size] and are shared across heads, so
`emb_rel_k` / `emb_rel_v` have shape (1, 2 * window_size + 1, channels // n_heads).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emova.speech.vits.common import ChannelLayerNorm


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention over (B, C, T) with learned relative-position keys and values."""

    def __init__(self, channels: int, n_heads: int, window_size: int, p_dropout: float = 0.0) -> None:
        super().__init__()
        if channels % n_heads:
            raise ValueError(f"channels ({channels}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.head_dim = channels // n_heads
        self.window_size = window_size
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.drop = nn.Dropout(p_dropout)
        std = self.head_dim**-0.5
        self.emb_rel_k = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.head_dim) * std)
        self.emb_rel_v = nn.Parameter(torch.randn(1, 2 * window_size + 1, self.head_dim) * std)

    def _relative_table(self, table: torch.Tensor, length: int) -> torch.Tensor:
        """Rows for offsets -(length-1) … (length-1): (1, 2L-1, D). Out-of-window offsets get zeros."""
        w = self.window_size
        pad = max(length - (w + 1), 0)
        start = max((w + 1) - length, 0)
        if pad > 0:
            table = F.pad(table, (0, 0, pad, pad))
        return table[:, start : start + 2 * length - 1]

    @staticmethod
    def _rel_to_abs(x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, 2L-1) scores indexed by relative offset -> (B, H, L, L) indexed by key position."""
        b, h, length, _ = x.shape
        x = F.pad(x, (0, 1))  # (B, H, L, 2L)
        x = F.pad(x.reshape(b, h, length * 2 * length), (0, length - 1))
        return x.view(b, h, length + 1, 2 * length - 1)[:, :, :length, length - 1 :]

    @staticmethod
    def _abs_to_rel(x: torch.Tensor) -> torch.Tensor:
        """(B, H, L, L) weights indexed by key position -> (B, H, L, 2L-1) indexed by relative offset."""
        b, h, length, _ = x.shape
        x = F.pad(x, (0, length - 1))  # (B, H, L, 2L-1)
        x = F.pad(x.reshape(b, h, length * (2 * length - 1)), (length, 0))
        return x.view(b, h, length, 2 * length)[:, :, :, 1:]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T); attn_mask: (B, 1, T, T) with 1 where attention is allowed
        b, c, t = x.shape
        h, d = self.n_heads, self.head_dim
        q = self.conv_q(x).view(b, h, d, t).transpose(2, 3) / math.sqrt(d)  # (B, H, T, D)
        k = self.conv_k(x).view(b, h, d, t).transpose(2, 3)
        v = self.conv_v(x).view(b, h, d, t).transpose(2, 3)
        scores = q @ k.transpose(-2, -1)  # (B, H, T, T)
        rel_k = self._relative_table(self.emb_rel_k, t)  # (1, 2T-1, D)
        scores = scores + self._rel_to_abs(q @ rel_k.unsqueeze(0).transpose(-2, -1))
        scores = scores.masked_fill(attn_mask == 0, -1e4)
        p = self.drop(F.softmax(scores, dim=-1))
        out = p @ v  # (B, H, T, D)
        rel_v = self._relative_table(self.emb_rel_v, t)
        out = out + self._abs_to_rel(p) @ rel_v.unsqueeze(0)
        out = out.transpose(2, 3).reshape(b, c, t)
        return self.conv_o(out)


class ConvFeedForward(nn.Module):
    """Two 1-D convolutions with ReLU in between, 'same' padding, masked."""

    def __init__(self, channels: int, filter_channels: int, kernel_size: int, p_dropout: float = 0.0) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.conv_1 = nn.Conv1d(channels, filter_channels, kernel_size)
        self.conv_2 = nn.Conv1d(filter_channels, channels, kernel_size)
        self.drop = nn.Dropout(p_dropout)

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        return F.pad(x, ((k - 1) // 2, k // 2)) if k > 1 else x

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = torch.relu(self.conv_1(self._pad(x * x_mask)))
        y = self.conv_2(self._pad(self.drop(y) * x_mask))
        return y * x_mask


class RelativeTransformerEncoder(nn.Module):
    """Post-norm transformer encoder: attention and FFN sublayers, each followed by LayerNorm."""

    def __init__(
        self,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        window_size: int = 4,
    ) -> None:
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.attn_layers = nn.ModuleList(
            RelativeSelfAttention(hidden_channels, n_heads, window_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(
            ConvFeedForward(hidden_channels, filter_channels, kernel_size, p_dropout) for _ in range(n_layers)
        )
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(hidden_channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor) -> torch.Tensor:
        # x: (B, C, T), x_mask: (B, 1, T)
        attn_mask = x_mask.unsqueeze(2) * x_mask.unsqueeze(-1)  # (B, 1, T, T)
        x = x * x_mask
        for attn, norm1, ffn, norm2 in zip(self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2):
            x = norm1(x + self.drop(attn(x, attn_mask)))
            x = norm2(x + self.drop(ffn(x, x_mask)))
        return x * x_mask
