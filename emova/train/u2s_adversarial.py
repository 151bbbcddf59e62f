"""An adversarial mel loss for the U2S: a patch discriminator on windows of log-mel.

An L1-trained unit→mel decoder draws the conditional mean of what a unit sequence may sound like: formant
transitions and bursts come out smeared, and a recogniser hears that smear (docs/u2s.md). A discriminator
that sees short windows of real and predicted mels rewards the decoder for drawing what real mels look
like, as GAN-trained acoustic models do (least-squares GAN + feature matching, as HiFi-GAN trains its
generator). Only the training changes; the U2S at inference is the same network.

`MelDiscriminator` maps a window (B, W, n_mels) to per-frame scores (B, W) and its hidden feature maps. It
convolves over time × frequency (frequency strided, time dilated, never strided), so every score belongs to
one frame. Windows are cut inside each utterance's real frames (`crop_windows`), so padding is never seen.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from emova.train.checkpoint import load_checkpoint


@dataclass
class MelDiscriminatorConfig:
    n_mels: int = 80
    channels: list[int] = field(default_factory=lambda: [16, 32, 32, 32])
    time_dilations: list[int] = field(default_factory=lambda: [1, 2, 4, 1])
    kernel_time: int = 3
    kernel_freq: int = 5
    window: int = 48  # frames per window (16 ms frames: 0.77 s)
    windows_per_item: int = 1
    # fixed affine applied to the log-mel before the first convolution (the corpus's log-mel is ~ -7.5 ± 3)
    mel_center: float = -7.0
    mel_scale: float = 3.0

    def __post_init__(self) -> None:
        if not isinstance(self.channels, list) or not self.channels or not all(
                isinstance(c, int) and c >= 1 for c in self.channels):
            raise ValueError(f"MelDiscriminatorConfig.channels must be a non-empty list of positive integers, "
                             f"got {self.channels!r}")
        if not isinstance(self.time_dilations, list) or len(self.time_dilations) != len(self.channels) or not all(
                isinstance(d, int) and d >= 1 for d in self.time_dilations):
            raise ValueError(f"MelDiscriminatorConfig.time_dilations must list one positive integer per channel "
                             f"entry ({len(self.channels)}), got {self.time_dilations!r}")
        for k in ("kernel_time", "kernel_freq"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1 or v % 2 == 0:
                raise ValueError(f"MelDiscriminatorConfig.{k} must be an odd positive integer, got {v!r}")
        for k in ("n_mels", "window", "windows_per_item"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"MelDiscriminatorConfig.{k} must be a positive integer, got {v!r}")
        if not isinstance(self.mel_scale, (int, float)) or self.mel_scale <= 0:
            raise ValueError(f"MelDiscriminatorConfig.mel_scale must be > 0, got {self.mel_scale!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> MelDiscriminatorConfig:
        d = dict(d or {})
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown mel discriminator config keys: {sorted(unknown)}")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)


class MelDiscriminator(nn.Module):
    def __init__(self, cfg: MelDiscriminatorConfig) -> None:
        super().__init__()
        self.cfg = cfg
        sn = nn.utils.parametrizations.spectral_norm
        layers, c_in = [], 1
        for c, d in zip(cfg.channels, cfg.time_dilations):
            pad = (d * (cfg.kernel_time - 1) // 2, cfg.kernel_freq // 2)
            layers.append(sn(nn.Conv2d(c_in, c, (cfg.kernel_time, cfg.kernel_freq), stride=(1, 2), padding=pad,
                                       dilation=(d, 1))))
            c_in = c
        self.layers = nn.ModuleList(layers)
        self.out = sn(nn.Conv2d(c_in, 1, (cfg.kernel_time, 3), padding=(cfg.kernel_time // 2, 1)))

    def forward(self, mel: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """mel (B, W, n_mels) → per-frame scores (B, W) and the hidden feature maps."""
        if mel.dim() != 3 or mel.shape[-1] != self.cfg.n_mels:
            raise ValueError(f"MelDiscriminator expects (batch, frames, {self.cfg.n_mels}) mels, "
                             f"got shape {tuple(mel.shape)}")
        x = ((mel.float() - self.cfg.mel_center) / self.cfg.mel_scale)[:, None]
        feats = []
        for conv in self.layers:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        return self.out(x).mean(-1)[:, 0], feats


def crop_windows(pred: torch.Tensor, real: torch.Tensor, lengths: torch.Tensor, window: int, per_item: int,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """`per_item` random windows of `window` frames from every utterance at least that long, taken at the
    same frames of the predicted and the real mel: (pred windows, real windows, item index of each).
    None when no utterance is long enough."""
    starts, items = [], []
    for b, n in enumerate(lengths.long().tolist()):
        if n < window:
            continue
        for _ in range(per_item):
            starts.append(int(torch.randint(0, n - window + 1, (1,), generator=gen)))
            items.append(b)
    if not items:
        return None
    idx = torch.tensor(items)
    t = torch.tensor(starts)[:, None] + torch.arange(window)[None]  # (K, W)
    return pred[idx[:, None], t], real[idx[:, None], t], idx


def discriminator_loss(disc: MelDiscriminator, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Least-squares GAN: real windows towards 1, predicted ones (detached) towards 0."""
    s, _ = disc(torch.cat([real, fake.detach()]))  # one pass: spectral norm's power step updates per call
    s_real, s_fake = s.float().chunk(2)
    return ((s_real - 1) ** 2).mean() + (s_fake ** 2).mean()


def generator_losses(disc: MelDiscriminator, fake: torch.Tensor, real: torch.Tensor,
                     weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`adv`: least-squares push of the predicted windows towards 'real'; `fm`: L1 between the
    discriminator's features of the predicted and the real window at the same frames (mean over layers),
    weighted per window by `weight` (e.g. lower for windows whose real mel is only aligned by DTW)."""
    k = fake.shape[0]
    s, feats = disc(torch.cat([fake, real.detach()]))  # one pass: both halves see the same normalised weights
    w = torch.ones(k, device=fake.device) if weight is None else weight.float()
    fm = sum((f[:k].float() - f[k:].detach().float()).abs().mean(dim=(1, 2, 3)) for f in feats) / len(feats)
    return {"adv": ((s[:k].float() - 1) ** 2).mean(),
            "fm": (fm * w).sum() / w.sum().clamp(min=1e-6)}


def load_or_new_discriminator(cfg: MelDiscriminatorConfig, lr: float, checkpoint: Path | None = None,
                              ) -> tuple[MelDiscriminator, torch.optim.Optimizer]:
    """A discriminator and its optimiser, resumed from `checkpoint` when one was saved there."""
    disc = MelDiscriminator(cfg)
    opt = torch.optim.AdamW(disc.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=0.01)
    if checkpoint is not None and (checkpoint / "state.json").exists():
        load_checkpoint(checkpoint, disc, opt)
        print(f"resuming the mel discriminator from {checkpoint}")
    return disc, opt


def discriminator_step(disc: MelDiscriminator, opt: torch.optim.Optimizer,
                       windows: tuple[torch.Tensor, torch.Tensor],
                       autocast: Callable[[], AbstractContextManager]) -> torch.Tensor:
    """One optimiser step of the discriminator on (predicted, real) windows; returns its loss."""
    opt.zero_grad(set_to_none=True)  # also drops what the U2S's backward left in its gradients
    with autocast():
        loss = discriminator_loss(disc, *windows)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(disc.parameters(), 1.0)
    opt.step()
    return loss.detach()
