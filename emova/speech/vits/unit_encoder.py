"""Unit encoder (`enc_p`): speech-unit ids -> prior mean / log-std per unit.

The embedding table is the UVITS symbol table: pad, punctuation, letters and IPA symbols
(`unit_offset` rows, 178 in the release) followed by the 4096 unit ids, so unit `u` is row
`unit_offset + u`.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from emova.speech.vits.attention import RelativeTransformerEncoder
from emova.speech.vits.common import sequence_mask


class UnitEncoder(nn.Module):
    def __init__(
        self,
        n_vocab: int,
        out_channels: int,
        hidden_channels: int,
        filter_channels: int,
        n_heads: int,
        n_layers: int,
        kernel_size: int,
        p_dropout: float,
        window_size: int = 4,
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.hidden_channels = hidden_channels
        self.emb = nn.Embedding(n_vocab, hidden_channels)
        nn.init.normal_(self.emb.weight, 0.0, hidden_channels**-0.5)
        self.encoder = RelativeTransformerEncoder(
            hidden_channels, filter_channels, n_heads, n_layers, kernel_size, p_dropout, window_size
        )
        self.proj = nn.Conv1d(hidden_channels, out_channels * 2, 1)

    def forward(
        self, tokens: torch.Tensor, lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # tokens: (B, T) symbol ids; lengths: (B,)
        x = self.emb(tokens) * math.sqrt(self.hidden_channels)  # (B, T, H)
        x = x.transpose(1, 2)  # (B, H, T)
        x_mask = sequence_mask(lengths, x.size(2)).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        x = self.encoder(x * x_mask, x_mask)
        stats = self.proj(x) * x_mask  # (B, 2 * out, T)
        m, logs = torch.split(stats, self.out_channels, dim=1)
        return x, m, logs, x_mask
