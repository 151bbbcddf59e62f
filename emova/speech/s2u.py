"""S2U: speech → discrete semantic units (EMOVA's speech tokenizer encoder).

    log-mel (B, 128, F) at 100 Hz
      → conv downsampling x4                      (B, T, d) at 25 Hz (40 ms)
      → transformer block(s)                      (B, T, d)
      → Linear(d → 4) → BatchNorm → FSQ [8,8,8,8]  4096 units
      → [training only] Linear(4 → d') → small transformer → CTC over phones

The CTC head reads only the quantised 4-d vectors, so units must carry the phonetic content. Pitch,
speaker and emotion are not in the CTC target; a cross-style consistency objective (see
`emova.train.s2u`) makes the units themselves stable when only the style changes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

from emova.speech.fsq import FSQ


@dataclass
class BlockConfig:
    layers: int
    dim: int
    heads: int
    ff_mult: int = 4

    def __post_init__(self) -> None:
        if self.layers < 1 or self.dim < 1 or self.heads < 1 or self.dim % self.heads:
            raise ValueError(f"bad transformer block {self}: need layers, dim, heads >= 1 and dim % heads == 0")


@dataclass
class S2UConfig:
    n_mels: int = 128
    conv_channels: int = 192
    conv_kernel: int = 5
    blocks: list[BlockConfig] = field(default_factory=lambda: [BlockConfig(4, 192, 4)])
    fsq_levels: list[int] = field(default_factory=lambda: [8, 8, 8, 8])
    post_dim: int = 192
    post_layers: int = 2
    post_heads: int = 4
    n_phones: int = 70  # CTC classes incl. blank
    dropout: float = 0.1
    pos_conv_kernel: int = 15

    def __post_init__(self) -> None:
        self.blocks = [b if isinstance(b, BlockConfig) else BlockConfig(**b) for b in self.blocks]
        if not self.blocks:
            raise ValueError("S2U needs at least one transformer block")
        if self.n_mels < 1 or self.conv_channels < 1 or self.conv_kernel % 2 == 0:
            raise ValueError("n_mels and conv_channels must be >= 1 and conv_kernel odd")
        if self.post_dim % self.post_heads:
            raise ValueError("post_dim must be divisible by post_heads")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.fsq_levels)

    @classmethod
    def from_dict(cls, d: dict) -> S2UConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown S2U config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


TINY = S2UConfig()
# The original dimensions: a 2-layer 512-d block then a 10-layer 768-d block.
EMOVA_SIZE = S2UConfig(conv_channels=512, blocks=[BlockConfig(2, 512, 8), BlockConfig(10, 768, 12)],
                       post_dim=768, post_layers=2, post_heads=12)
CONFIGS = {"tiny": TINY, "emova": EMOVA_SIZE}


class TransformerBlock(nn.Module):
    """A stack of pre-norm transformer layers with a convolutional positional embedding."""

    def __init__(self, cfg: BlockConfig, dropout: float, pos_kernel: int) -> None:
        super().__init__()
        self.pos_conv = nn.Conv1d(cfg.dim, cfg.dim, pos_kernel, padding=pos_kernel // 2, groups=cfg.heads)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.dim * cfg.ff_mult, dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.layers = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, pad_mask: torch.Tensor | None) -> torch.Tensor:
        # x: (B, T, D); pad_mask: (B, T) True where padded
        if pad_mask is not None:
            x = x.masked_fill(pad_mask[..., None], 0.0)
        x = x + F.gelu(self.pos_conv(x.transpose(1, 2))).transpose(1, 2)
        return self.norm(self.layers(x, src_key_padding_mask=pad_mask))


class S2UModel(nn.Module):
    def __init__(self, cfg: S2UConfig) -> None:
        super().__init__()
        self.cfg = cfg
        c, k = cfg.conv_channels, cfg.conv_kernel
        self.subsample = nn.Sequential(  # two stride-2 convs: 100 Hz → 25 Hz
            nn.Conv1d(cfg.n_mels, c, k, stride=2, padding=k // 2), nn.GELU(),
            nn.Conv1d(c, c, k, stride=2, padding=k // 2), nn.GELU(),
        )
        dims = [c] + [b.dim for b in cfg.blocks]
        self.block_in = nn.ModuleList(
            [nn.Identity() if dims[i] == dims[i + 1] else nn.Linear(dims[i], dims[i + 1]) for i in range(len(cfg.blocks))]
        )
        self.blocks = nn.ModuleList([TransformerBlock(b, cfg.dropout, cfg.pos_conv_kernel) for b in cfg.blocks])
        self.to_code = nn.Linear(dims[-1], len(cfg.fsq_levels))
        self.code_norm = nn.BatchNorm1d(len(cfg.fsq_levels))
        self.fsq = FSQ(cfg.fsq_levels)
        # CTC side (training only)
        self.from_code = nn.Linear(len(cfg.fsq_levels), cfg.post_dim)
        self.post = TransformerBlock(BlockConfig(cfg.post_layers, cfg.post_dim, cfg.post_heads), cfg.dropout,
                                     cfg.pos_conv_kernel)
        self.ctc_head = nn.Linear(cfg.post_dim, cfg.n_phones)

    @staticmethod
    def frames_after_subsampling(n_mel_frames: torch.Tensor) -> torch.Tensor:
        n = n_mel_frames
        for _ in range(2):
            n = (n - 1) // 2 + 1
        return n

    def encode(self, mel: torch.Tensor, mel_lens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """mel: (B, n_mels, F) normalised log-mel. Returns hidden (B,T,D), bounded z (B,T,4),
        quantised q (B,T,4), units (B,T), lengths (B,), pad_mask (B,T)."""
        if mel.dim() != 3 or mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"S2U expects mel of shape (B, {self.cfg.n_mels}, F), got {tuple(mel.shape)}")
        B, _, Fr = mel.shape
        if mel_lens is None:
            mel_lens = torch.full((B,), Fr, dtype=torch.long, device=mel.device)
        lens = self.frames_after_subsampling(mel_lens)
        x = self.subsample(mel).transpose(1, 2)  # (B, T, C)
        T = x.shape[1]
        pad = torch.arange(T, device=x.device)[None] >= lens[:, None]  # (B, T)
        for proj, block in zip(self.block_in, self.blocks):
            x = block(proj(x), pad if B > 1 else None)
        z = self.to_code(x)  # (B, T, 4)
        z = self.code_norm(z.transpose(1, 2)).transpose(1, 2) if not self.training else self._masked_bn(z, pad)
        q, zb, units = self.fsq(z)
        return {"hidden": x, "z": zb, "q": q, "units": units, "lengths": lens, "pad_mask": pad}

    def _masked_bn(self, z: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # BatchNorm statistics from real frames only (padding would bias them)
        flat = z[~pad]  # (N, 4)
        normed = self.code_norm(flat.float())
        out = torch.zeros_like(z, dtype=normed.dtype)
        out[~pad] = normed
        return out

    def ctc_logits(self, q: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
        """q: (B, T, 4) quantised codes → (B, T, n_phones) logits."""
        h = self.post(self.from_code(q), pad_mask if q.shape[0] > 1 else None)
        return self.ctc_head(h)

    def forward(self, mel: torch.Tensor, mel_lens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        out = self.encode(mel, mel_lens)
        out["logits"] = self.ctc_logits(out["q"], out["pad_mask"])
        return out
