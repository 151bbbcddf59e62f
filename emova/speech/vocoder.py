"""Waveform generators: log-mel (F, 80) at 16 kHz / hop 256 → waveform.

- `VocosVocoder` (neural, Vocos family): ConvNeXt blocks at frame rate predict the complex STFT
  (log-magnitude + phase) and an inverse STFT makes the waveform. Everything runs at 62.5 frames/s,
  so it trains in minutes on a CPU, where a HiFi-GAN (upsampling convolutions at 16 kHz) does not.
- `HifiGanVocoder`: the VITS HiFi-GAN generator (`emova.speech.vits.generator.Generator`) on mels, for
  completeness and for machines with time to train it.
- `GriffinLim`: no weights; mel → linear magnitude by the pseudo-inverse of the mel filterbank, then
  fast Griffin-Lim (momentum 0.99).

Losses for training: multi-resolution STFT (spectral convergence + log magnitude) and mel L1.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from emova.audio import _mel_basis, log_mel

KINDS = ("vocos", "hifigan", "griffin_lim")


@dataclass
class VocoderConfig:
    kind: str = "vocos"
    sample_rate: int = 16_000
    n_fft: int = 1024
    hop: int = 256
    win: int = 1024
    n_mels: int = 80
    dim: int = 256
    intermediate: int = 768
    layers: int = 6
    kernel: int = 7
    gl_iters: int = 32
    # HiFi-GAN generator (kind == "hifigan"); upsample rates must multiply to hop
    upsample_rates: tuple[int, ...] = (8, 8, 4)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 8)
    upsample_initial_channel: int = 128
    # Vocos only: the vocoder also sees the F0 (Hz per frame, 0 = unvoiced) as a harmonic comb over the STFT
    # bins, both as an input and as a per-bin emphasis of the predicted magnitude. An 80-bin mel barely
    # resolves the harmonics of a voice below ~85 Hz, so from the mel alone a vocoder renders such a voice
    # higher than it is (docs/u2s.md, "Low voices").
    f0_input: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown vocoder kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        for k in ("sample_rate", "n_fft", "hop", "win", "n_mels", "dim", "intermediate", "layers", "kernel",
                  "gl_iters", "upsample_initial_channel"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"VocoderConfig.{k} must be a positive integer, got {v!r}")
        self.upsample_rates = tuple(int(r) for r in self.upsample_rates)
        self.upsample_kernel_sizes = tuple(int(r) for r in self.upsample_kernel_sizes)
        if not isinstance(self.f0_input, bool) or (self.f0_input and self.kind != "vocos"):
            raise ValueError(f"VocoderConfig.f0_input must be true or false, and true only for vocos; got "
                             f"{self.f0_input!r} for {self.kind}")
        if self.kind == "hifigan" and int(np.prod(self.upsample_rates)) != self.hop:
            raise ValueError(f"VocoderConfig.upsample_rates must multiply to hop={self.hop}")

    @classmethod
    def from_dict(cls, d: dict) -> VocoderConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown vocoder config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def with_kind(self, kind: str) -> VocoderConfig:
        """The same mel settings for another kind of vocoder (an F0 input stays only on a Vocos)."""
        return VocoderConfig.from_dict({**self.to_dict(), "kind": kind, "f0_input": self.f0_input and kind == "vocos"})

    def to_dict(self) -> dict:
        d = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def mel_frames(wave: torch.Tensor | np.ndarray, cfg: VocoderConfig) -> torch.Tensor:
    """Waveform (T,) or (B, T) → log-mel frames (F, n_mels) or (B, F, n_mels); F = T // hop + 1."""
    m = log_mel(wave, cfg.sample_rate, cfg.n_mels, cfg.hop, cfg.win, cfg.n_fft, 0.0, cfg.sample_rate / 2)
    return m.transpose(-1, -2)


class _ConvNeXt(nn.Module):
    def __init__(self, dim: int, inter: int, kernel: int, scale: float) -> None:
        super().__init__()
        self.dw = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1, self.pw2 = nn.Linear(dim, inter), nn.Linear(inter, dim)
        self.gamma = nn.Parameter(torch.full((dim,), scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, F)
        y = self.norm(self.dw(x).transpose(1, 2))
        y = self.pw2(F.gelu(self.pw1(y))) * self.gamma
        return x + y.transpose(1, 2)


class VocosVocoder(nn.Module):
    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Conv1d(cfg.n_mels, cfg.dim, 7, padding=3)
        self.norm_in = nn.LayerNorm(cfg.dim)
        self.blocks = nn.ModuleList(_ConvNeXt(cfg.dim, cfg.intermediate, cfg.kernel, 1.0 / cfg.layers)
                                    for _ in range(cfg.layers))
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.n_fft + 2)
        self.register_buffer("window", torch.hann_window(cfg.win), persistent=False)
        if cfg.f0_input:  # both zero-initialised: a mel-only vocoder grown into this one starts unchanged
            n_bins = cfg.n_fft // 2 + 1
            self.f0_in = nn.Conv1d(n_bins + 1, cfg.dim, 1)
            self.f0_gain = nn.Linear(cfg.dim, n_bins)
            for layer in (self.f0_in, self.f0_gain):
                nn.init.zeros_(layer.weight)
                nn.init.zeros_(layer.bias)
            self.register_buffer("bin_hz", torch.arange(n_bins) * (cfg.sample_rate / cfg.n_fft), persistent=False)

    def harmonic_comb(self, f0_hz: torch.Tensor) -> torch.Tensor:
        """f0 (B, F) in Hz, 0 where unvoiced → (B, n_bins, F): cos(2π f_bin / f0), 1 on every harmonic; 0 unvoiced."""
        voiced = (f0_hz > 0).float()
        comb = torch.cos(2 * torch.pi * self.bin_hz[None, :, None] / f0_hz.clamp(min=20.0)[:, None, :])
        return comb * voiced[:, None, :]

    def forward(self, mel: torch.Tensor, f0_hz: torch.Tensor | None = None) -> torch.Tensor:
        """mel (B, F, n_mels) [+ f0 (B, F) in Hz, 0 unvoiced, when `f0_input`] → waveform (B, (F - 1) * hop)."""
        x = self.embed(((mel + 5.0) / 4.0).transpose(1, 2))
        comb = None
        if self.cfg.f0_input:
            if f0_hz is None or tuple(f0_hz.shape) != tuple(mel.shape[:2]):
                raise ValueError(f"this vocoder needs the F0 of every mel frame, shape {tuple(mel.shape[:2])}; got "
                                 f"{None if f0_hz is None else tuple(f0_hz.shape)}")
            comb = self.harmonic_comb(f0_hz.float())
            x = x + self.f0_in(torch.cat([comb, (f0_hz > 0).float()[:, None]], 1).to(x.dtype))
        x = self.norm_in(x.transpose(1, 2)).transpose(1, 2)
        for b in self.blocks:
            x = b(x)
        h = self.norm_out(x.transpose(1, 2))
        out = self.head(h).transpose(1, 2)  # (B, n_fft + 2, F)
        logmag, phase = out.float().chunk(2, dim=1)
        if comb is not None:  # per-bin emphasis of the harmonics the F0 puts there
            logmag = logmag + self.f0_gain(h).transpose(1, 2).float() * comb
        mag = torch.exp(logmag.clamp(max=6.0))
        spec = torch.polar(mag, phase)
        return torch.istft(spec, self.cfg.n_fft, self.cfg.hop, self.cfg.win, self.window, center=True)


class HifiGanVocoder(nn.Module):
    """The VITS HiFi-GAN generator driven by log-mel frames."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        from emova.speech.vits.generator import Generator

        self.cfg = cfg
        self.gen = Generator(cfg.n_mels, "2", [3, 5, 7], [[1, 2], [2, 6], [3, 12]], list(cfg.upsample_rates),
                             cfg.upsample_initial_channel, list(cfg.upsample_kernel_sizes))

    def forward(self, mel: torch.Tensor, f0_hz: torch.Tensor | None = None) -> torch.Tensor:  # F0 unused
        y = self.gen(((mel + 5.0) / 4.0).transpose(1, 2))[:, 0]  # (B, F * hop)
        return y[:, : (mel.shape[1] - 1) * self.cfg.hop]


@lru_cache(maxsize=4)
def _mel_pinv(sr: int, n_fft: int, n_mels: int) -> torch.Tensor:
    return torch.linalg.pinv(_mel_basis(sr, n_fft, n_mels, 0.0, sr / 2))  # (n_fft//2+1, n_mels)


class GriffinLim(nn.Module):
    """Mel → magnitude (pseudo-inverse) → fast Griffin-Lim. Deterministic (fixed initial phase)."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.register_buffer("window", torch.hann_window(cfg.win), persistent=False)

    def forward(self, mel: torch.Tensor, f0_hz: torch.Tensor | None = None) -> torch.Tensor:  # F0 unused
        c = self.cfg
        power = (_mel_pinv(c.sample_rate, c.n_fft, c.n_mels) @ torch.exp(mel.float()).transpose(1, 2)).clamp(min=1e-10)
        mag = power.sqrt()  # (B, n_fft//2+1, F)
        g = torch.Generator().manual_seed(0)
        angles = torch.exp(2j * np.pi * torch.rand(mag.shape, generator=g)).to(torch.complex64)
        prev = torch.zeros_like(angles)
        length = (mel.shape[1] - 1) * c.hop
        for _ in range(c.gl_iters):
            wave = torch.istft(mag * angles, c.n_fft, c.hop, c.win, self.window, center=True, length=length)
            rebuilt = torch.stft(wave, c.n_fft, c.hop, c.win, self.window, center=True, return_complex=True)
            angles = rebuilt - 0.99 * prev
            prev = rebuilt
            angles = angles / angles.abs().clamp(min=1e-8)
        return torch.istft(mag * angles, c.n_fft, c.hop, c.win, self.window, center=True, length=length)


def build_vocoder(cfg: VocoderConfig) -> nn.Module:
    return {"vocos": VocosVocoder, "hifigan": HifiGanVocoder, "griffin_lim": GriffinLim}[cfg.kind](cfg)


# ---------------------------------------------------------------------------- losses
RESOLUTIONS = ((512, 128, 512), (1024, 256, 1024), (2048, 512, 2048), (256, 64, 256))


def _stft_mag(x: torch.Tensor, n_fft: int, hop: int, win: int) -> torch.Tensor:
    w = torch.hann_window(win, device=x.device)
    s = torch.stft(x, n_fft, hop, win, w, center=True, return_complex=True)
    return (s.real**2 + s.imag**2).clamp(min=1e-9).sqrt()


def multi_resolution_stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(B, T) waveforms: Σ over resolutions of spectral convergence + L1 of log magnitudes."""
    total = pred.new_zeros(())
    for n_fft, hop, win in RESOLUTIONS:
        p, t = _stft_mag(pred, n_fft, hop, win), _stft_mag(target, n_fft, hop, win)
        sc = torch.linalg.norm(t - p) / torch.linalg.norm(t).clamp(min=1e-6)
        total = total + sc + F.l1_loss(torch.log(p), torch.log(t))
    return total / len(RESOLUTIONS)


def mel_l1(pred: torch.Tensor, target: torch.Tensor, cfg: VocoderConfig) -> torch.Tensor:
    return F.l1_loss(mel_frames(pred, cfg), mel_frames(target, cfg))
