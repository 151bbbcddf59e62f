"""A conditional flow-matching mel refiner: the U2S's smooth mel → a mel drawn like real speech.

The U2S decoder is trained with an L1 loss, so where several spectra are plausible it draws their
average: formant transitions and harmonics come out smeared, and a recogniser trained on real speech
mishears them (docs/u2s.md). The refiner learns the distribution of the real mel *given* the U2S's mel
with optimal-transport conditional flow matching (Lipman et al. 2023; as Matcha-TTS uses it for TTS):

    x0 = mu + noise * eps                     mu: the U2S mel (per-bin normalised), eps ~ N(0, I)
    x_t = (1 - (1 - sigma_min) t) x0 + t x1   x1: the real mel of the same frames (teacher-forced U2S)
    v(x_t, t | mu, F0, style)  ≈  x1 - (1 - sigma_min) x0          (MSE, masked to the utterance)

Inference integrates dx/dt = v from t = 0 to 1 in `steps` Euler steps. Starting at mu (not at pure
noise) keeps the paths short, so a few steps suffice. The network is a stack of ConvNeXt blocks over
time (the U2S's own block), FiLM-conditioned on the flow time and the style vector, with the U2S mel and
its F0 (normalised log-F0 and voicing) as inputs beside x_t.

The noise of each frame is a fixed function of where the frame lies (its unit's position in the unit
sequence and its place inside the unit), so a streamed chunk draws the same sample as the full decode.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from emova.speech.u2s import ConvNeXtBlock

NOISE_TABLE_FRAMES = 4099  # a prime: frames index the table by a hash of (unit position, frame in unit)


@dataclass
class MelRefinerConfig:
    n_mels: int = 80
    dim: int = 192
    layers: int = 6
    kernel: int = 7
    style_dim: int = 256
    time_dim: int = 128
    noise: float = 1.0  # std of the source noise around mu, in per-bin standard deviations
    steps: int = 4  # Euler steps at inference
    temperature: float = 1.0  # inference: the source noise is temperature * noise (1: as trained)
    sigma_min: float = 1e-4
    # per-bin mean / std of the real log-mel (set from the training data before training)
    mel_mean: list[float] | None = None
    mel_std: list[float] | None = None

    def __post_init__(self) -> None:
        for k in ("n_mels", "dim", "layers", "kernel", "style_dim", "time_dim", "steps"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"MelRefinerConfig.{k} must be a positive integer, got {v!r}")
        if self.kernel % 2 == 0:
            raise ValueError("MelRefinerConfig.kernel must be odd")
        if not (isinstance(self.noise, (int, float)) and 0.0 <= self.noise <= 2.0):
            raise ValueError(f"MelRefinerConfig.noise must be in [0, 2], got {self.noise!r}")
        if not (isinstance(self.temperature, (int, float)) and 0.0 <= self.temperature <= 2.0):
            raise ValueError(f"MelRefinerConfig.temperature must be in [0, 2], got {self.temperature!r}")
        if not (isinstance(self.sigma_min, (int, float)) and 0.0 <= self.sigma_min < 0.1):
            raise ValueError(f"MelRefinerConfig.sigma_min must be in [0, 0.1), got {self.sigma_min!r}")
        if (self.mel_mean is None) != (self.mel_std is None):
            raise ValueError("MelRefinerConfig.mel_mean and mel_std must be given together")
        for k in ("mel_mean", "mel_std"):
            v = getattr(self, k)
            if v is not None:
                if (not isinstance(v, (list, tuple)) or len(v) != self.n_mels
                        or not all(isinstance(x, (int, float)) and math.isfinite(x) for x in v)):
                    raise ValueError(f"MelRefinerConfig.{k} must be {self.n_mels} finite numbers")
                setattr(self, k, [float(x) for x in v])
        if self.mel_std is not None and min(self.mel_std) <= 0:
            raise ValueError("MelRefinerConfig.mel_std values must be positive")

    @classmethod
    def from_dict(cls, d: dict) -> MelRefinerConfig:
        if not isinstance(d, dict):
            raise ValueError(f"mel refiner config must be a mapping, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown mel refiner config keys: {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


def _time_features(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of the flow time t (B,) in [0, 1] → (B, dim)."""
    half = dim // 2
    freq = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    arg = 1000.0 * t.float()[:, None] * freq[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=-1)


def frame_noise_keys(unit_index: torch.Tensor) -> torch.Tensor:
    """(F,) absolute unit position of each frame → (F,) row of the noise table: a hash of the unit's
    position and the frame's place inside its unit, so equal frames get equal noise in any window."""
    idx = unit_index.long()
    new = torch.ones_like(idx, dtype=torch.bool)
    new[1:] = idx[1:] != idx[:-1]
    starts = torch.cummax(torch.where(new, torch.arange(len(idx), device=idx.device), 0), 0).values
    inside = torch.arange(len(idx), device=idx.device) - starts
    return (idx * 7919 + inside * 104729) % NOISE_TABLE_FRAMES


class MelRefiner(nn.Module):
    def __init__(self, cfg: MelRefinerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, C = cfg.dim, cfg.style_dim
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, C), nn.GELU(), nn.Linear(C, C))
        self.style_in = nn.Linear(cfg.style_dim, C)
        self.inp = nn.Linear(2 * cfg.n_mels + 2, D)
        self.blocks = nn.ModuleList(ConvNeXtBlock(D, cfg.kernel, C, 0.0) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(D)
        self.out = nn.Linear(D, cfg.n_mels)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        mean = torch.tensor(cfg.mel_mean) if cfg.mel_mean is not None else torch.full((cfg.n_mels,), -6.0)
        std = torch.tensor(cfg.mel_std) if cfg.mel_std is not None else torch.full((cfg.n_mels,), 2.0)
        self.register_buffer("mel_mean", mean.float(), persistent=False)
        self.register_buffer("mel_std", std.float(), persistent=False)
        g = torch.Generator().manual_seed(20240918)
        self.register_buffer("noise_table", torch.randn(NOISE_TABLE_FRAMES, cfg.n_mels, generator=g),
                             persistent=False)

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mel_mean.copy_(mean.float())
        self.mel_std.copy_(std.float().clamp(min=1e-3))
        self.cfg.mel_mean = [float(x) for x in mean]
        self.cfg.mel_std = [float(x) for x in self.mel_std]

    def normalise(self, mel: torch.Tensor) -> torch.Tensor:
        return (mel - self.mel_mean) / self.mel_std

    def denormalise(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mel_std + self.mel_mean

    def velocity(self, x: torch.Tensor, t: torch.Tensor, mu: torch.Tensor, f0: torch.Tensor, style: torch.Tensor,
                 mask: torch.Tensor) -> torch.Tensor:
        """x, mu (B, F, n_mels) normalised; t (B,); f0 (B, F, 2) normalised log-F0 and voicing; style (B, S);
        mask (B, F, 1) → the vector field (B, F, n_mels)."""
        c = self.time_mlp(_time_features(t, self.cfg.time_dim)) + self.style_in(style)
        h = self.inp(torch.cat([x, mu, f0], dim=-1)) * mask
        for b in self.blocks:
            h = b(h, c, mask)
        return self.out(self.norm(h)) * mask

    def loss(self, mel: torch.Tensor, mu: torch.Tensor, f0: torch.Tensor, style: torch.Tensor, mask: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Flow-matching loss: mel (real) and mu (U2S) (B, F, n_mels) log-mel, mask (B, F, 1)."""
        x1, m = self.normalise(mel), self.normalise(mu)
        B = mel.shape[0]
        eps = torch.randn(x1.shape, generator=generator, device=x1.device)
        x0 = m + self.cfg.noise * eps
        t = torch.rand(B, generator=generator, device=x1.device)
        s = self.cfg.sigma_min
        xt = (1 - (1 - s) * t)[:, None, None] * x0 + t[:, None, None] * x1
        target = x1 - (1 - s) * x0
        v = self.velocity(xt, t, m, f0, style, mask)
        return ((v.float() - target) ** 2 * mask).sum() / (mask.sum() * self.cfg.n_mels).clamp(min=1)

    @torch.no_grad()
    def refine(self, mu: torch.Tensor, lf0: torch.Tensor, voiced: torch.Tensor, style: torch.Tensor,
               unit_index: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        """One utterance: mu (F, n_mels) U2S log-mel, lf0 / voiced (F,), style (1, S), unit_index (F,) the
        absolute position of each frame's unit (fixes the noise) → refined log-mel (F, n_mels)."""
        n = steps or self.cfg.steps
        m = self.normalise(mu.float())[None]
        f0 = refiner_input_f0(lf0, voiced)[None]
        mask = torch.ones(1, mu.shape[0], 1)
        x = m + self.cfg.noise * self.cfg.temperature * self.noise_table[frame_noise_keys(unit_index)][None]
        for k in range(n):
            t = torch.full((1,), k / n)
            x = x + self.velocity(x, t, m, f0, style, mask) / n
        return self.denormalise(x[0])


def refiner_input_f0(lf0: torch.Tensor, voiced: torch.Tensor) -> torch.Tensor:
    """(B, F) normalised log-F0 and voicing → the refiner's (B, F, 2) F0 input."""
    return torch.stack([lf0.float(), voiced.float()], dim=-1)


