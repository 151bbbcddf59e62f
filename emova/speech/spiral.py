"""The original EMOVA S2U encoder: SPIRAL conv/transformer stack + Linear(d -> 4) + FSQ [8, 8, 8, 8].

Module names mirror the released checkpoint (prefix `encoder.` there), so tensors load by name:

    encoder.wav2spec.featurizer.{window, fb}   log-mel front end (buffers)
    encoder.mask_emb                           training-time mask vector (unused at inference)
    encoder.feature_encoder.block_modules.N    ConvNormAct (`conv.conv`, `norm`) or TransformerEncoder
    pre_quant                                  Linear(768 -> 4)
    quantizer.bn                               BatchNorm1d(4) before FSQ (assumed, see docs)

Feature extraction (NeMo `FilterbankFeatures` as configured by SPIRAL): peak-normalise the wave,
pre-emphasis 0.97, |STFT|^2 (n_fft 512, 20 ms symmetric Hann window, 10 ms hop, centred),
128-bin Slaney mel (librosa), log(x + 2^-24), per-utterance per-bin mean/std normalisation over
the valid ceil(N / 160) frames, zero the rest and pad to a multiple of 16 frames.

FSQ code <-> index convention (lucidrains `FiniteScalarQuantize`, FSQ paper appendix): each of the
4 dimensions is bounded with tanh and rounded to an integer q_i in [-L_i // 2, L_i // 2 - 1]
(for L = 8: -4 … 3); digit d_i = q_i + L_i // 2 in [0, L_i); index = sum_i d_i * prod_{j<i} L_j,
so dimension 0 is the least significant digit: index = d0 + 8 d1 + 64 d2 + 512 d3 in [0, 4096).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emova.speech.vits.common import WNConv1d

# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ConvLayerConfig:
    filters: int
    kernel_size: int
    stride: int = 1
    norm: str | None = "ln"  # "ln" or None
    act: str | None = "relu"  # "relu" or None


@dataclass(frozen=True)
class TransformerConfig:
    layers: int
    dim: int
    ffn_dim: int
    heads: int
    conv_pos: int = 128
    conv_pos_groups: int = 16
    layer_norm_first: bool = True


@dataclass(frozen=True)
class BlockConfig:
    conv_layers: tuple[ConvLayerConfig, ...]
    transformer: TransformerConfig | None = None


@dataclass(frozen=True)
class SpiralConfig:
    sample_rate: int = 16000
    n_mels: int = 128
    win_length: int = 320  # 20 ms
    hop_length: int = 160  # 10 ms
    n_fft: int = 512
    preemph: float = 0.97
    normalize_time_domain: bool = True
    log_zero_guard: float = 2.0**-24
    pad_to: int = 16
    blocks: tuple[BlockConfig, ...] = ()
    ln_eps: float = 1e-5
    fsq_levels: tuple[int, ...] = (8, 8, 8, 8)
    l2_norm: bool = False
    batch_norm: bool = True
    has_mask_emb: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "fsq_levels", tuple(int(v) for v in self.fsq_levels))
        self.validate()

    @property
    def codebook_size(self) -> int:
        return int(np.prod(self.fsq_levels))

    @property
    def downsample(self) -> int:
        return int(np.prod([c.stride for b in self.blocks for c in b.conv_layers]))

    @property
    def output_dim(self) -> int:
        dim = self.n_mels
        for b in self.blocks:
            for c in b.conv_layers:
                dim = c.filters
            if b.transformer is not None:
                dim = b.transformer.dim
        return dim

    def validate(self) -> None:
        def need(cond: bool, fld: str, msg: str) -> None:
            if not cond:
                raise ValueError(f"SpiralConfig.{fld}: {msg}")

        need(len(self.blocks) > 0, "blocks", "needs at least one conv/transformer block")
        need(len(self.fsq_levels) > 0 and all(v >= 2 for v in self.fsq_levels), "fsq_levels",
             f"every level must be >= 2, got {self.fsq_levels}")
        need(self.win_length <= self.n_fft, "win_length", f"must be <= n_fft ({self.n_fft})")
        dim = self.n_mels
        for i, b in enumerate(self.blocks):
            for j, c in enumerate(b.conv_layers):
                need(c.kernel_size % 2 == 1, f"blocks[{i}].conv_layers[{j}].kernel_size", "must be odd")
                need(c.stride in (1, 2), f"blocks[{i}].conv_layers[{j}].stride", "must be 1 or 2")
                need(c.norm in ("ln", None), f"blocks[{i}].conv_layers[{j}].norm", "must be 'ln' or null")
                need(c.act in ("relu", None), f"blocks[{i}].conv_layers[{j}].act", "must be 'relu' or null")
                dim = c.filters
            t = b.transformer
            if t is not None:
                need(t.dim == dim, f"blocks[{i}].transformer.dim", f"must equal the preceding conv filters ({dim})")
                need(t.dim % t.heads == 0, f"blocks[{i}].transformer.heads", "must divide dim")
                need(t.dim % t.conv_pos_groups == 0, f"blocks[{i}].transformer.conv_pos_groups", "must divide dim")

    @classmethod
    def official(cls) -> SpiralConfig:
        """SPIRAL-base stack (two conv/transformer blocks) at 40 ms per unit, FSQ 8x8x8x8."""
        return cls(
            blocks=(
                BlockConfig(
                    conv_layers=(ConvLayerConfig(384, 5, 2), ConvLayerConfig(512, 5, 2), ConvLayerConfig(512, 1, 1, act=None)),
                    transformer=TransformerConfig(layers=2, dim=512, ffn_dim=2048, heads=8),
                ),
                BlockConfig(
                    conv_layers=(ConvLayerConfig(1536, 5, 1), ConvLayerConfig(768, 1, 1, act=None)),
                    transformer=TransformerConfig(layers=10, dim=768, ffn_dim=3072, heads=12),
                ),
            )
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "s2u_config") -> SpiralConfig:
        """Strict: unknown keys (at any level) raise ValueError naming them."""
        _check(cls, data, where)
        kw = dict(data)
        blocks = []
        for i, b in enumerate(kw.pop("blocks", [])):
            _check(BlockConfig, b, f"{where}.blocks[{i}]")
            convs = []
            for j, c in enumerate(b.get("conv_layers", [])):
                _check(ConvLayerConfig, c, f"{where}.blocks[{i}].conv_layers[{j}]")
                convs.append(ConvLayerConfig(**c))
            t = b.get("transformer")
            if t is not None:
                _check(TransformerConfig, t, f"{where}.blocks[{i}].transformer")
                t = TransformerConfig(**t)
            blocks.append(BlockConfig(conv_layers=tuple(convs), transformer=t))
        try:
            return cls(blocks=tuple(blocks), **kw)
        except TypeError as e:
            raise ValueError(f"bad {where}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["fsq_levels"] = list(self.fsq_levels)
        d["blocks"] = [{"conv_layers": [dict(c) for c in b["conv_layers"]], "transformer": b["transformer"]}
                       for b in d["blocks"]]
        return d


def _check(cls: type, data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown key(s) in {where}: {', '.join(unknown)}; accepted: {', '.join(sorted(known))}")


# --------------------------------------------------------------------------- features


class FilterbankFeatures(nn.Module):
    """Waveform (B, N) -> normalised log-mel (B, n_mels, F_padded) and valid lengths (B,)."""

    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win_length, periodic=False))
        self.register_buffer("fb", _mel_filterbank(cfg))  # (1, n_mels, n_fft // 2 + 1)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.cfg
        x = wave.float()
        if c.normalize_time_domain:
            x = x / (x.abs().amax(dim=1, keepdim=True) + 1e-5)
        n_frames = torch.ceil(lengths.float() / c.hop_length).long()  # (B,)
        if c.preemph:
            x = torch.cat([x[:, :1], x[:, 1:] - c.preemph * x[:, :-1]], dim=1)
        spec = torch.stft(x, c.n_fft, hop_length=c.hop_length, win_length=c.win_length,
                          window=self.window.float(), center=True, return_complex=True)
        power = spec.real.pow(2) + spec.imag.pow(2)  # (B, n_fft//2+1, F)
        mel = torch.log(self.fb[0].float() @ power + c.log_zero_guard)  # (B, n_mels, F)
        valid = torch.arange(mel.size(-1), device=mel.device)[None, :] < n_frames[:, None]  # (B, F)
        if bool((n_frames < 2).any()):
            raise ValueError(f"audio too short for the S2U front end: need at least {c.hop_length + 1} samples")
        v = valid[:, None, :].float()
        mean = (mel * v).sum(-1, keepdim=True) / n_frames[:, None, None]
        var = ((mel - mean).pow(2) * v).sum(-1, keepdim=True) / (n_frames[:, None, None] - 1)
        mel = (mel - mean) / (var.sqrt() + 1e-5)
        mel = mel.masked_fill(~valid[:, None, :], 0.0)
        if c.pad_to > 0 and mel.size(-1) % c.pad_to:
            mel = F.pad(mel, (0, c.pad_to - mel.size(-1) % c.pad_to))
        return mel, n_frames


def _mel_filterbank(cfg: SpiralConfig) -> torch.Tensor:
    if torch.empty(0).device.type == "meta":
        return torch.empty(1, cfg.n_mels, cfg.n_fft // 2 + 1)
    import librosa

    fb = librosa.filters.mel(sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=0.0, fmax=cfg.sample_rate / 2)
    return torch.tensor(fb, dtype=torch.float32).unsqueeze(0)


class _Preprocessor(nn.Module):
    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.featurizer = FilterbankFeatures(cfg)


# --------------------------------------------------------------------------- encoder blocks


def _pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B,) -> (B, T) bool, True at padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class _Conv(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride
        self.conv = nn.Conv1d(c_in, c_out, kernel_size, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kernel_size
        if k > 1:
            # TensorFlow-style 'same' padding as in SPIRAL: one less on the left for stride 2
            # (the original picks this by the parity of the channel count, which is even throughout)
            left = k // 2 - 1 if (self.stride == 2 and x.size(1) % 2 == 0) else k // 2
            x = F.pad(x, (left, k // 2))
        return self.conv(x)


class ConvNormAct(nn.Module):
    """Conv1d ('same', optional stride 2) -> LayerNorm over channels -> ReLU; lengths ceil-divided."""

    def __init__(self, c_in: int, layer: ConvLayerConfig, ln_eps: float) -> None:
        super().__init__()
        self.conv = _Conv(c_in, layer.filters, layer.kernel_size, layer.stride)
        self.norm = nn.LayerNorm(layer.filters, eps=ln_eps) if layer.norm == "ln" else None
        self.act = layer.act

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, C, T)
        if self.conv.kernel_size > 1:
            x = x.masked_fill(_pad_mask(lengths, x.size(2))[:, None, :], 0.0)
        x = self.conv(x)
        if self.conv.stride > 1:
            lengths = (lengths + self.conv.stride - 1) // self.conv.stride
        if self.norm is not None:
            x = self.norm(x.transpose(1, 2)).transpose(1, 2)
        if self.act == "relu":
            x = torch.relu(x)
        return x, lengths


class SelfAttention(nn.Module):
    """fairseq-style multi-head attention (q/k/v/out projections with bias)."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D); pad: (B, T) True at padded keys
        b, t, d = x.shape

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x)), attn_mask=~pad[:, None, None, :]
        )
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class TransformerLayer(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.layer_norm_first
        self.self_attn = SelfAttention(cfg.dim, cfg.heads)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim)
        self.final_layer_norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.self_attn(self.self_attn_layer_norm(x), pad)
            return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))
        x = self.self_attn_layer_norm(x + self.self_attn(x, pad))
        return self.final_layer_norm(x + self.fc2(F.gelu(self.fc1(x))))


class _PosConv(nn.Module):
    """Grouped convolutional positional embedding, weight-normalised over the kernel axis (dim 2)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.even = cfg.conv_pos % 2 == 0
        # stored as pos_conv.0.* in the checkpoint (first element of a Sequential)
        self.add_module("0", WNConv1d(cfg.dim, cfg.dim, cfg.conv_pos, padding=cfg.conv_pos // 2,
                                      groups=cfg.conv_pos_groups, wn_dim=2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, T)
        y = getattr(self, "0")(x)
        if self.even:
            y = y[:, :, :-1]
        return F.gelu(y)


class TransformerEncoder(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.pre_norm = cfg.layer_norm_first
        self.pos_conv = _PosConv(cfg)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.layers))
        self.layer_norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        # x: (B, T, D)
        x = x.masked_fill(pad[..., None], 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.pre_norm:
            x = self.layer_norm(x)
        for layer in self.layers:
            x = layer(x, pad)
        return self.layer_norm(x) if self.pre_norm else x


class FeatureEncoder(nn.Module):
    """SPIRAL feature encoder: the conv layers and transformer of every block, flattened in order."""

    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.block_modules = nn.ModuleList()
        dim = cfg.n_mels
        for block in cfg.blocks:
            for layer in block.conv_layers:
                self.block_modules.append(ConvNormAct(dim, layer, cfg.ln_eps))
                dim = layer.filters
            if block.transformer is not None:
                self.block_modules.append(TransformerEncoder(block.transformer))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # x: (B, n_mels, T) -> (B, D, T / downsample)
        for module in self.block_modules:
            if isinstance(module, ConvNormAct):
                x, lengths = module(x, lengths)
            else:
                x = module(x.transpose(1, 2), _pad_mask(lengths, x.size(2))).transpose(1, 2)
        return x, lengths


class SpiralEncoder(nn.Module):
    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.wav2spec = _Preprocessor(cfg)
        if cfg.has_mask_emb:
            self.register_buffer("mask_emb", torch.zeros(cfg.n_mels))
        self.feature_encoder = FeatureEncoder(cfg)

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        specs, spec_lengths = self.wav2spec.featurizer(wave, lengths)
        feats, feat_lengths = self.feature_encoder(specs, spec_lengths)
        return feats.transpose(1, 2), feat_lengths  # (B, T', D), (B,)


# --------------------------------------------------------------------------- quantiser


class FSQ(nn.Module):
    """Finite scalar quantisation; see the module docstring for the index convention."""

    def __init__(self, levels: tuple[int, ...], l2_norm: bool = False, batch_norm: bool = False,
                 eps: float = 1e-3) -> None:
        super().__init__()
        self.levels = tuple(levels)
        self.l2_norm = l2_norm
        self.eps = eps
        self.bn = nn.BatchNorm1d(len(levels)) if batch_norm else None

    def _levels(self, ref: torch.Tensor) -> torch.Tensor:
        return torch.tensor(self.levels, dtype=torch.float32, device=ref.device)

    def _basis(self, ref: torch.Tensor) -> torch.Tensor:
        return torch.tensor([math.prod(self.levels[:i]) for i in range(len(self.levels))], device=ref.device)

    def bound(self, z: torch.Tensor) -> torch.Tensor:
        """(…, d) -> values in (-L/2 - eps, L/2 - 1 + eps) per dimension, before rounding."""
        lv = self._levels(z)
        half_l = (lv - 1) * (1 + self.eps) / 2
        offset = torch.where(lv % 2 == 0, 0.5, 0.0)
        shift = torch.atanh(offset / half_l)
        return torch.tanh(z + shift) * half_l - offset

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, T, d) -> codes in [-1, 1) (q_i / (L_i // 2)), straight-through rounding."""
        z = z.float()
        if self.l2_norm:
            z = F.normalize(z, dim=-1)
        if self.bn is not None:
            z = self.bn(z.transpose(1, 2)).transpose(1, 2)
        b = self.bound(z)
        q = b + (torch.round(b) - b).detach()
        return q / (self._levels(z) // 2)

    def codes_to_indices(self, codes: torch.Tensor) -> torch.Tensor:
        half = self._levels(codes) // 2
        digits = torch.round(codes * half + half).long()  # (…, d) in [0, L)
        return (digits * self._basis(codes)).sum(-1)

    def indices_to_codes(self, indices: torch.Tensor) -> torch.Tensor:
        lv = self._levels(indices)
        digits = (indices[..., None] // self._basis(indices)) % lv.long()
        half = lv // 2
        return (digits.float() - half) / half


class SpiralS2U(nn.Module):
    """Wave (16 kHz) -> 25 Hz unit ids in [0, prod(fsq_levels))."""

    def __init__(self, cfg: SpiralConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = SpiralEncoder(cfg)
        self.pre_quant = nn.Linear(cfg.output_dim, len(cfg.fsq_levels))
        self.quantizer = FSQ(cfg.fsq_levels, l2_norm=cfg.l2_norm, batch_norm=cfg.batch_norm)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """wave: (B, N) float at 16 kHz, lengths: (B,) -> unit ids (B, T') and valid lengths (B,)."""
        feats, feat_lengths = self.encoder(wave, lengths)
        codes = self.quantizer(self.pre_quant(feats))
        return self.quantizer.codes_to_indices(codes), feat_lengths

    def encode(self, wave: np.ndarray | torch.Tensor) -> list[int]:
        """One mono 16 kHz waveform -> list of unit ids (unreduced, 25 Hz for the release)."""
        device = self.pre_quant.weight.device
        w = torch.as_tensor(np.asarray(wave, dtype=np.float32)).to(device)
        if w.dim() != 1:
            raise ValueError(f"expected a mono waveform (1-D), got shape {tuple(w.shape)}")
        if w.numel() <= self.cfg.hop_length:
            raise ValueError(f"audio too short: {w.numel()} samples; need more than {self.cfg.hop_length}")
        ids, n = self(w[None], torch.tensor([w.numel()], device=device))
        return ids[0, : int(n[0])].tolist()


__all__ = [
    "BlockConfig", "ConvLayerConfig", "FSQ", "FilterbankFeatures", "SpiralConfig", "SpiralS2U", "TransformerConfig",
]
