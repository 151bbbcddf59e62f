"""Small building blocks shared by the VITS components.

Parameter names follow the released EMOVA checkpoint so that weights load by name:
weight-normalised convolutions keep the legacy `weight_g` / `weight_v` pair (that is what
the checkpoint stores), and the gated WaveNet stack keeps `in_layers` / `res_skip_layers` /
`cond_layer`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.1


def _norm_except(v: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 norm of `v` over every axis except `dim`, kept broadcastable to `v`."""
    axes = [a for a in range(v.dim()) if a != dim]
    return v.pow(2).sum(dim=axes, keepdim=True).sqrt()


class _WeightNormMixin:
    """Weight normalisation with explicit `weight_g` / `weight_v` parameters.

    weight = weight_g * weight_v / ||weight_v||, the norm taken over every axis but `wn_dim`
    (0 for the usual per-output-channel form, 2 for fairseq's positional convolution).
    """

    weight_g: nn.Parameter
    weight_v: nn.Parameter
    wn_dim: int

    def _init_weight_norm(self, weight_shape: tuple[int, ...], wn_dim: int, device=None) -> None:
        self.wn_dim = wn_dim
        v = torch.empty(weight_shape, device=device)
        if v.device.type != "meta":
            nn.init.normal_(v, 0.0, 0.01)
        g_shape = [1] * len(weight_shape)
        g_shape[wn_dim] = weight_shape[wn_dim]
        self.weight_v = nn.Parameter(v)
        g = torch.empty(g_shape, device=device)
        if v.device.type != "meta":
            g.copy_(_norm_except(v, wn_dim))
        self.weight_g = nn.Parameter(g)

    def weight(self) -> torch.Tensor:  # noqa: D401 - computed weight
        return self.weight_v * (self.weight_g / _norm_except(self.weight_v, self.wn_dim))


class WNConv1d(_WeightNormMixin, nn.Module):
    """Conv1d with weight normalisation; keys `weight_g`, `weight_v`, `bias`."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        padding: int = 0,
        groups: int = 1,
        bias: bool = True,
        wn_dim: int = 0,
    ) -> None:
        super().__init__()
        self.stride, self.dilation, self.padding, self.groups = stride, dilation, padding, groups
        self._init_weight_norm((out_channels, in_channels // groups, kernel_size), wn_dim)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T')
        return F.conv1d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class WNConvTranspose1d(_WeightNormMixin, nn.Module):
    """ConvTranspose1d with weight normalisation (weight is (C_in, C_out, K), g is (C_in, 1, 1))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self._init_weight_norm((in_channels, out_channels, kernel_size), 0)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C_in, T) -> (B, C_out, T * stride)
        return F.conv_transpose1d(x, self.weight(), self.bias, self.stride, self.padding)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a (B, C, T) tensor.

    The official checkpoint names these parameters `GAMMA` / `BETA`; the converter maps them
    onto `weight` / `bias` (see emova/convert/speech_tokenizer.py).
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, T)
        y = F.layer_norm(x.transpose(1, -1), (x.size(1),), self.weight, self.bias, self.eps)
        return y.transpose(1, -1)


class WaveNet(nn.Module):
    """Non-causal gated WaveNet stack with optional global conditioning (VITS `WN`)."""

    def __init__(
        self,
        hidden_channels: int,
        kernel_size: int,
        dilation_rate: int,
        n_layers: int,
        gin_channels: int = 0,
        p_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"WaveNet kernel_size must be odd, got {kernel_size}")
        self.hidden_channels = hidden_channels
        self.n_layers = n_layers
        self.drop = nn.Dropout(p_dropout)
        self.in_layers = nn.ModuleList()
        self.res_skip_layers = nn.ModuleList()
        if gin_channels:
            self.cond_layer = WNConv1d(gin_channels, 2 * hidden_channels * n_layers, 1)
        for i in range(n_layers):
            dilation = dilation_rate**i
            padding = (kernel_size * dilation - dilation) // 2
            self.in_layers.append(
                WNConv1d(hidden_channels, 2 * hidden_channels, kernel_size, dilation=dilation, padding=padding)
            )
            out = 2 * hidden_channels if i < n_layers - 1 else hidden_channels
            self.res_skip_layers.append(WNConv1d(hidden_channels, out, 1))

    def forward(self, x: torch.Tensor, x_mask: torch.Tensor, g: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, H, T), x_mask: (B, 1, T), g: (B, gin, 1)
        h = self.hidden_channels
        output = torch.zeros_like(x)
        cond = self.cond_layer(g) if g is not None else None  # (B, 2H * L, 1)
        for i in range(self.n_layers):
            x_in = self.in_layers[i](x)  # (B, 2H, T)
            if cond is not None:
                x_in = x_in + cond[:, i * 2 * h : (i + 1) * 2 * h, :]
            acts = torch.tanh(x_in[:, :h]) * torch.sigmoid(x_in[:, h:])
            acts = self.drop(acts)
            res_skip = self.res_skip_layers[i](acts)
            if i < self.n_layers - 1:
                x = (x + res_skip[:, :h]) * x_mask
                output = output + res_skip[:, h:]
            else:
                output = output + res_skip
        return output * x_mask


class Flip(nn.Module):
    """Reverse the channel order (a volume-preserving flow step without parameters)."""

    def forward(self, x: torch.Tensor, *args, reverse: bool = False, **kwargs):
        x = torch.flip(x, [1])
        if reverse:
            return x
        return x, torch.zeros(x.size(0), dtype=x.dtype, device=x.device)


def sequence_mask(lengths: torch.Tensor, max_length: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask, True inside each sequence."""
    if max_length is None:
        max_length = int(lengths.max())
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


def generate_path(durations: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hard monotonic alignment from integer durations.

    durations: (B, 1, T_x); mask: (B, 1, T_y, T_x). Returns (B, 1, T_y, T_x) with
    path[b, 0, j, i] = 1 when output frame j belongs to input token i.
    """
    b, _, t_y, t_x = mask.shape
    ends = torch.cumsum(durations[:, 0], dim=-1)  # (B, T_x)
    starts = ends - durations[:, 0]
    frames = torch.arange(t_y, device=durations.device, dtype=ends.dtype)[None, :, None]  # (1, T_y, 1)
    path = (frames >= starts[:, None, :]) & (frames < ends[:, None, :])  # (B, T_y, T_x)
    return path.to(mask.dtype).unsqueeze(1) * mask


def get_padding(kernel_size: int, dilation: int = 1) -> int:
    return (kernel_size * dilation - dilation) // 2


def gaussian_log_prob_const() -> float:
    return 0.5 * math.log(2 * math.pi)
