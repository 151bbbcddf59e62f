"""Monotonic rational-quadratic spline with linear tails (Durkan et al. 2019, "Neural Spline Flows").

Used by the stochastic duration predictor's coupling flows. Inside [-B, B] the map is a
piecewise rational-quadratic spline with `num_bins` bins; outside it is the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MIN_BIN_WIDTH = 1e-3
MIN_BIN_HEIGHT = 1e-3
MIN_DERIVATIVE = 1e-3


def _knots(unnormalized: torch.Tensor, low: float, high: float, min_size: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Bin sizes and cumulative knot positions (with both ends pinned) for one axis."""
    n = unnormalized.shape[-1]
    sizes = min_size + (1 - min_size * n) * F.softmax(unnormalized, dim=-1)
    cum = F.pad(torch.cumsum(sizes, dim=-1), (1, 0))
    cum = (high - low) * cum + low
    cum = torch.cat([torch.full_like(cum[..., :1], low), cum[..., 1:-1], torch.full_like(cum[..., :1], high)], -1)
    return cum[..., 1:] - cum[..., :-1], cum


def _bin_index(knots: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Index of the bin containing x. knots: (N, K+1), x: (N,) -> (N, 1)."""
    knots = torch.cat([knots[..., :-1], knots[..., -1:] + 1e-6], dim=-1)
    return (torch.sum(x[..., None] >= knots, dim=-1) - 1).clamp(0, knots.shape[-1] - 2)[..., None]


def _spline(
    x: torch.Tensor, uw: torch.Tensor, uh: torch.Tensor, ud: torch.Tensor, inverse: bool, bound: float
) -> tuple[torch.Tensor, torch.Tensor]:
    # x: (N,), uw/uh: (N, K), ud: (N, K + 1)
    widths, cumwidths = _knots(uw, -bound, bound, MIN_BIN_WIDTH)
    heights, cumheights = _knots(uh, -bound, bound, MIN_BIN_HEIGHT)
    derivs = MIN_DERIVATIVE + F.softplus(ud)

    idx = _bin_index(cumheights if inverse else cumwidths, x)
    x0 = cumwidths.gather(-1, idx)[..., 0]
    w = widths.gather(-1, idx)[..., 0]
    y0 = cumheights.gather(-1, idx)[..., 0]
    h = heights.gather(-1, idx)[..., 0]
    delta = h / w
    d0 = derivs.gather(-1, idx)[..., 0]
    d1 = derivs[..., 1:].gather(-1, idx)[..., 0]
    slope_sum = d0 + d1 - 2 * delta

    if inverse:
        dy = x - y0
        a = dy * slope_sum + h * (delta - d0)
        b = h * d0 - dy * slope_sum
        c = -delta * dy
        theta = (2 * c) / (-b - torch.sqrt(b.pow(2) - 4 * a * c))
        out = theta * w + x0
    else:
        theta = (x - x0) / w
        tt = theta * (1 - theta)
        out = y0 + h * (delta * theta.pow(2) + d0 * tt) / (delta + slope_sum * tt)

    tt = theta * (1 - theta)
    denom = delta + slope_sum * tt
    d_num = delta.pow(2) * (d1 * theta.pow(2) + 2 * delta * tt + d0 * (1 - theta).pow(2))
    logabsdet = torch.log(d_num) - 2 * torch.log(denom)
    return out, (-logabsdet if inverse else logabsdet)


def rational_quadratic_spline(
    x: torch.Tensor,
    unnormalized_widths: torch.Tensor,
    unnormalized_heights: torch.Tensor,
    unnormalized_derivatives: torch.Tensor,
    inverse: bool = False,
    tail_bound: float = 5.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the spline elementwise.

    x: (...); widths/heights: (..., K); derivatives: (..., K - 1) for the interior knots
    (the boundary derivatives are fixed to 1 so the linear tails join smoothly).
    Returns (y, log|dy/dx|) with the shape of x.
    """
    inside = (x >= -tail_bound) & (x <= tail_bound)
    const = math.log(math.exp(1 - MIN_DERIVATIVE) - 1)
    ud = F.pad(unnormalized_derivatives, (1, 1), value=const)
    out = x.clone()
    logabsdet = torch.zeros_like(x)
    if inside.any():
        y, lad = _spline(
            x[inside], unnormalized_widths[inside], unnormalized_heights[inside], ud[inside], inverse, tail_bound
        )
        out[inside] = y.to(out.dtype)
        logabsdet[inside] = lad.to(out.dtype)
    return out, logabsdet
