"""The EMOVA U2S decoder: VITS `SynthesizerTrn` with unit input and global style conditioning.

Submodule names mirror the released checkpoint (`enc_p`, `dec`, `enc_q`, `flow`, `dp`, `emb_g`,
`enc_r`), so `decoder.<name>.*` tensors load by name.

Inference (`infer`): units -> unit encoder -> durations (stochastic predictor, conditioned on the
style) -> expand the prior -> sample z_p -> inverse flow -> HiFi-GAN -> 22.05 kHz waveform.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from emova.speech.vits.common import generate_path, sequence_mask
from emova.speech.vits.config import VitsConfig
from emova.speech.vits.duration import DurationPredictor, StochasticDurationPredictor
from emova.speech.vits.flow import ResidualCouplingFlow
from emova.speech.vits.generator import Generator
from emova.speech.vits.posterior import PosteriorEncoder
from emova.speech.vits.style_encoder import MelStyleEncoder
from emova.speech.vits.unit_encoder import UnitEncoder


class SynthesizerTrn(nn.Module):
    def __init__(self, cfg: VitsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.enc_p = UnitEncoder(
            cfg.n_vocab, cfg.inter_channels, cfg.hidden_channels, cfg.filter_channels, cfg.n_heads,
            cfg.n_layers, cfg.kernel_size, cfg.p_dropout, cfg.window_size,
        )
        self.dec = Generator(
            cfg.inter_channels, cfg.resblock, list(cfg.resblock_kernel_sizes),
            [list(d) for d in cfg.resblock_dilation_sizes], list(cfg.upsample_rates),
            cfg.upsample_initial_channel, list(cfg.upsample_kernel_sizes), gin_channels=cfg.gin_channels,
        )
        self.enc_q = PosteriorEncoder(
            cfg.spec_channels, cfg.inter_channels, cfg.hidden_channels, cfg.posterior_kernel_size,
            cfg.posterior_dilation_rate, cfg.posterior_layers, gin_channels=cfg.gin_channels,
        )
        self.flow = ResidualCouplingFlow(
            cfg.inter_channels, cfg.hidden_channels, cfg.flow_kernel_size, cfg.flow_dilation_rate,
            cfg.flow_layers, cfg.flow_n_flows, gin_channels=cfg.gin_channels,
        )
        self.dp: nn.Module
        if cfg.use_sdp:
            self.dp = StochasticDurationPredictor(
                cfg.hidden_channels, cfg.sdp_kernel_size, cfg.sdp_p_dropout, cfg.sdp_n_flows,
                gin_channels=cfg.gin_channels, num_bins=cfg.spline_bins, tail_bound=cfg.spline_tail_bound,
            )
        else:
            self.dp = DurationPredictor(
                cfg.hidden_channels, cfg.dp_filter_channels, 3, 0.5, gin_channels=cfg.gin_channels
            )
        if cfg.n_speakers > 1:
            if cfg.ref_mode == "entropy":  # speaker Gaussians: (n_speakers, 2 * gin) means and variances
                self.emb_g = nn.Parameter(torch.randn(cfg.n_speakers, cfg.gin_channels * 2))
            else:
                self.emb_g = nn.Embedding(cfg.n_speakers, cfg.gin_channels)
        if cfg.use_ref_enc:
            self.enc_r = MelStyleEncoder(
                cfg.spec_channels, cfg.hidden_channels, cfg.gin_channels, cfg.style_kernel_size,
                cfg.style_heads, cfg.p_dropout,
            )

    # ------------------------------------------------------------ inference
    def units_to_tokens(self, units: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Unit ids in [0, n_units) -> symbol-table ids, shape (1, T)."""
        u = torch.as_tensor(units, dtype=torch.long).reshape(1, -1)
        if u.numel() == 0:
            raise ValueError("cannot synthesise an empty unit sequence")
        bad = (u < 0) | (u >= self.cfg.n_units)
        if bad.any():
            raise ValueError(
                f"unit ids must be in [0, {self.cfg.n_units}); got {int(u[bad][0])} at position {int(bad.nonzero()[0, 1])}"
            )
        return u + self.cfg.unit_offset

    @torch.no_grad()
    def infer(
        self,
        units: Sequence[int] | torch.Tensor,
        style_vector: torch.Tensor | None,
        noise_scale: float = 0.667,
        length_scale: float = 1.0,
        noise_scale_w: float = 0.8,
        max_frames: int | None = None,
    ) -> torch.Tensor:
        """units: T unit ids; style_vector: (gin,) or (1, gin) or (1, gin, 1). Returns a (N,) waveform."""
        device = next(self.parameters()).device
        tokens = self.units_to_tokens(units).to(device)  # (1, T)
        lengths = torch.tensor([tokens.size(1)], device=device)
        g = self._style(style_vector, device)
        x, m_p, logs_p, x_mask = self.enc_p(tokens, lengths)
        if self.cfg.use_sdp:
            logw = self.dp.infer(x, x_mask, g, noise_scale=noise_scale_w)
        else:
            logw = self.dp(x, x_mask, g=g)
        w_ceil = torch.ceil(torch.exp(logw) * x_mask * length_scale)  # (1, 1, T_x) frames per unit
        y_lengths = torch.clamp_min(w_ceil.sum([1, 2]), 1).long()
        y_mask = sequence_mask(y_lengths).unsqueeze(1).to(x_mask.dtype)  # (1, 1, T_y)
        attn = generate_path(w_ceil, x_mask.unsqueeze(2) * y_mask.unsqueeze(-1))  # (1, 1, T_y, T_x)
        m_p = (attn.squeeze(1) @ m_p.transpose(1, 2)).transpose(1, 2)  # (1, C, T_y)
        logs_p = (attn.squeeze(1) @ logs_p.transpose(1, 2)).transpose(1, 2)
        z_p = m_p + torch.randn_like(m_p) * torch.exp(logs_p) * noise_scale
        z = self.flow(z_p, y_mask, g=g, reverse=True)
        o = self.dec((z * y_mask)[:, :, :max_frames], g=g)  # (1, 1, T_y * hop)
        return o[0, 0]

    def _style(self, style_vector: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        if style_vector is None:
            return None
        g = torch.as_tensor(style_vector, dtype=torch.float32, device=device)
        if g.dim() == 1:
            g = g[None]
        if g.dim() == 2:
            g = g[..., None]
        if g.shape[:2] != (1, self.cfg.gin_channels) or g.shape[2] != 1:
            raise ValueError(f"style vector must have {self.cfg.gin_channels} values, got shape {tuple(style_vector.shape)}")
        return g

    def style_from_spectrogram(self, spec: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Reference style vector from a linear spectrogram (B, F, T) via `enc_r`: (B, gin)."""
        if not self.cfg.use_ref_enc:
            raise ValueError("this decoder has no reference style encoder (use_ref_enc is false)")
        mask = sequence_mask(lengths, spec.size(2)).unsqueeze(1).to(spec.dtype)
        return self.enc_r(spec.transpose(1, 2), mask)
