"""Duration predictors: stochastic (flow-based, used by the release) and deterministic.

Both predict log-durations (in output frames) per unit, conditioned on the unit encoder's
hidden states and the global style vector g.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from emova.speech.vits.common import ChannelLayerNorm, Flip
from emova.speech.vits.spline import rational_quadratic_spline


class DilatedDepthSeparableConv(nn.Module):
    """Residual stack of dilated depthwise convs + 1x1 convs with LayerNorm and GELU (`DDSConv`)."""

    def __init__(self, channels: int, kernel_size: int, n_layers: int, p_dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.convs_sep = nn.ModuleList()
        self.convs_1x1 = nn.ModuleList()
        self.norms_1 = nn.ModuleList()
        self.norms_2 = nn.ModuleList()
        for i in range(n_layers):
            dilation = kernel_size**i
            padding = (kernel_size * dilation - dilation) // 2
            self.convs_sep.append(
                nn.Conv1d(channels, channels, kernel_size, groups=channels, dilation=dilation, padding=padding)
            )
            self.convs_1x1.append(nn.Conv1d(channels, channels, 1))
            self.norms_1.append(ChannelLayerNorm(channels))
            self.norms_2.append(ChannelLayerNorm(channels))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        if g is not None:
            x = x + g
        for sep, pw, n1, n2 in zip(self.convs_sep, self.convs_1x1, self.norms_1, self.norms_2):
            y = F.gelu(n1(sep(x * x_mask)))
            y = self.drop(F.gelu(n2(pw(y))))
            x = x + y
        return x * x_mask


class ElementwiseAffine(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.m = nn.Parameter(torch.zeros(channels, 1))
        self.logs = nn.Parameter(torch.zeros(channels, 1))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, reverse: bool = False, **kwargs):
        if reverse:
            return (x - self.m) * torch.exp(-self.logs) * x_mask
        y = (self.m + torch.exp(self.logs) * x) * x_mask
        return y, torch.sum(self.logs * x_mask, [1, 2])


class SplineCouplingFlow(nn.Module):
    """Coupling layer whose second half is transformed by a rational-quadratic spline (`ConvFlow`)."""

    def __init__(
        self, in_channels: int, filter_channels: int, kernel_size: int, n_layers: int,
        num_bins: int = 10, tail_bound: float = 5.0,
    ) -> None:
        super().__init__()
        self.filter_channels = filter_channels
        self.num_bins = num_bins
        self.tail_bound = tail_bound
        self.half = in_channels // 2
        self.pre = nn.Conv1d(self.half, filter_channels, 1)
        self.convs = DilatedDepthSeparableConv(filter_channels, kernel_size, n_layers)
        self.proj = nn.Conv1d(filter_channels, self.half * (num_bins * 3 - 1), 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None, reverse: bool = False):
        x0, x1 = torch.split(x, [self.half, self.half], dim=1)
        h = self.proj(self.convs(self.pre(x0), x_mask, g=g)) * x_mask  # (B, half * (3K - 1), T)
        b, c, t = x0.shape
        h = h.reshape(b, c, -1, t).permute(0, 1, 3, 2)  # (B, half, T, 3K - 1)
        k = self.num_bins
        scale = math.sqrt(self.filter_channels)
        x1, logabsdet = rational_quadratic_spline(
            x1, h[..., :k] / scale, h[..., k : 2 * k] / scale, h[..., 2 * k :],
            inverse=reverse, tail_bound=self.tail_bound,
        )
        x = torch.cat([x0, x1], dim=1) * x_mask
        if reverse:
            return x
        return x, torch.sum(logabsdet * x_mask, [1, 2])


class StochasticDurationPredictor(nn.Module):
    """Flow-based duration model. Inference samples noise and runs the main flows in reverse.

    As in the original, the filter width equals `in_channels` whatever `filter_channels` says.
    The `post_*` modules form the variational posterior used only in training.
    """

    def __init__(
        self, in_channels: int, kernel_size: int, p_dropout: float, n_flows: int = 4,
        gin_channels: int = 0, num_bins: int = 10, tail_bound: float = 5.0,
    ) -> None:
        super().__init__()
        fc = in_channels

        def flows() -> nn.ModuleList:
            mods = nn.ModuleList([ElementwiseAffine(2)])
            for _ in range(n_flows):
                mods.append(SplineCouplingFlow(2, fc, kernel_size, 3, num_bins, tail_bound))
                mods.append(Flip())
            return mods

        self.flows = flows()
        self.post_pre = nn.Conv1d(1, fc, 1)
        self.post_proj = nn.Conv1d(fc, fc, 1)
        self.post_convs = DilatedDepthSeparableConv(fc, kernel_size, 3, p_dropout)
        self.post_flows = flows()
        self.pre = nn.Conv1d(in_channels, fc, 1)
        self.proj = nn.Conv1d(fc, fc, 1)
        self.convs = DilatedDepthSeparableConv(fc, kernel_size, 3, p_dropout)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, fc, 1)

    def _condition(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        x = self.pre(x.detach())
        if g is not None:
            x = x + self.cond(g.detach())
        return self.proj(self.convs(x, x_mask)) * x_mask

    def infer(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None, noise_scale: float) -> torch.Tensor:
        """Sample log-durations: (B, H, T) -> (B, 1, T)."""
        h = self._condition(x, x_mask, g)
        # reverse order, skipping the first spline flow (it only ever acts on the discarded channel)
        steps = list(reversed(self.flows))
        steps = steps[:-2] + [steps[-1]]
        z = torch.randn(x.size(0), 2, x.size(2), device=x.device, dtype=x.dtype) * noise_scale
        for flow in steps:
            z = flow(z, x_mask, g=h, reverse=True)
        return z[:, :1]

    def nll(self, x: torch.Tensor, x_mask: torch.Tensor, w: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        """Negative log-likelihood bound of durations w (B, 1, T) in frames; returns (B,)."""
        h = self._condition(x, x_mask, g)
        hw = self.post_proj(self.post_convs(self.post_pre(w), x_mask)) * x_mask
        e_q = torch.randn(w.size(0), 2, w.size(2), device=x.device, dtype=x.dtype) * x_mask
        z_q, logdet_q = e_q, 0.0
        for flow in self.post_flows:
            z_q, ld = flow(z_q, x_mask, g=h + hw)
            logdet_q = logdet_q + ld
        z_u, z1 = torch.split(z_q, [1, 1], dim=1)
        u = torch.sigmoid(z_u) * x_mask
        z0 = (w - u) * x_mask
        logdet_q = logdet_q + torch.sum((F.logsigmoid(z_u) + F.logsigmoid(-z_u)) * x_mask, [1, 2])
        log_q = torch.sum(-0.5 * (math.log(2 * math.pi) + e_q.pow(2)) * x_mask, [1, 2]) - logdet_q
        z0 = torch.log(torch.clamp_min(z0, 1e-5)) * x_mask
        logdet = torch.sum(-z0, [1, 2])
        z = torch.cat([z0, z1], dim=1)
        for flow in self.flows:
            z, ld = flow(z, x_mask, g=h)
            logdet = logdet + ld
        nll = torch.sum(0.5 * (math.log(2 * math.pi) + z.pow(2)) * x_mask, [1, 2]) - logdet
        return nll + log_q


class DurationPredictor(nn.Module):
    """Deterministic duration predictor (used when `use_sdp` is false)."""

    def __init__(self, in_channels: int, filter_channels: int, kernel_size: int, p_dropout: float,
                 gin_channels: int = 0) -> None:
        super().__init__()
        self.drop = nn.Dropout(p_dropout)
        self.conv_1 = nn.Conv1d(in_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_1 = ChannelLayerNorm(filter_channels)
        self.conv_2 = nn.Conv1d(filter_channels, filter_channels, kernel_size, padding=kernel_size // 2)
        self.norm_2 = ChannelLayerNorm(filter_channels)
        self.proj = nn.Conv1d(filter_channels, 1, 1)
        if gin_channels:
            self.cond = nn.Conv1d(gin_channels, in_channels, 1)

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        x = x.detach()
        if g is not None:
            x = x + self.cond(g.detach())
        x = self.drop(self.norm_1(torch.relu(self.conv_1(x * x_mask))))
        x = self.drop(self.norm_2(torch.relu(self.conv_2(x * x_mask))))
        return self.proj(x * x_mask) * x_mask  # (B, 1, T) log-durations
