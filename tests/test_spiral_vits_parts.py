"""Component checks for the official S2U (FSQ, features) and U2S (spline, relative attention) code."""

from __future__ import annotations

import librosa
import numpy as np
import torch

from emova.speech.spiral import FSQ, FilterbankFeatures, SpiralConfig
from emova.speech.vits.attention import RelativeSelfAttention
from emova.speech.vits.spline import rational_quadratic_spline


def test_fsq_index_convention_dimension0_least_significant():
    fsq = FSQ((8, 8, 8, 8))
    # q = (-4, -3, 0, 3) -> digits (0, 1, 4, 7) -> 0 + 8*1 + 64*4 + 512*7
    codes = torch.tensor([[-4, -3, 0, 3]], dtype=torch.float32) / 4
    assert fsq.codes_to_indices(codes).tolist() == [0 + 8 + 256 + 3584]
    all_ids = torch.arange(4096)
    codes = fsq.indices_to_codes(all_ids)
    assert codes.min() == -1 and codes.max() == 0.75
    assert torch.equal(fsq.codes_to_indices(codes), all_ids)


def test_fsq_bound_covers_exactly_the_levels():
    fsq = FSQ((8, 5))
    z = torch.linspace(-20, 20, 2001)[:, None].repeat(1, 2)
    q = torch.round(fsq.bound(z))
    assert q[:, 0].unique().tolist() == list(range(-4, 4))
    assert q[:, 1].unique().tolist() == list(range(-2, 3))


def test_filterbank_matches_librosa_and_normalises_per_bin():
    cfg = SpiralConfig.official()
    feats = FilterbankFeatures(cfg)
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=128)
    np.testing.assert_allclose(feats.fb[0].numpy(), ref, rtol=1e-6)
    rng = np.random.default_rng(0)
    wave = torch.tensor(rng.standard_normal(16000 + 37).astype(np.float32))[None]
    mel, n = feats(wave, torch.tensor([wave.shape[1]]))
    assert n.item() == 101  # ceil(16037 / 160)
    assert mel.shape == (1, 128, 112)  # padded to a multiple of 16
    valid = mel[0, :, :101]
    torch.testing.assert_close(valid.mean(-1), torch.zeros(128), atol=1e-4, rtol=0)
    torch.testing.assert_close(valid.std(-1), torch.ones(128), atol=1e-3, rtol=0)
    assert torch.all(mel[0, :, 101:] == 0)


def test_spline_inverse_and_log_determinant():
    torch.manual_seed(0)
    x = torch.linspace(-6, 6, 200, dtype=torch.float64)
    uw, uh, ud = (torch.randn(200, n, dtype=torch.float64) for n in (10, 10, 9))
    y, lad = rational_quadratic_spline(x, uw, uh, ud, tail_bound=5.0)
    x_back, lad_inv = rational_quadratic_spline(y, uw, uh, ud, inverse=True, tail_bound=5.0)
    torch.testing.assert_close(x_back, x, atol=1e-4, rtol=0)
    torch.testing.assert_close(lad_inv, -lad, atol=1e-4, rtol=0)
    # log|dy/dx| agrees with a finite difference inside the bound
    eps = 1e-6
    y_hi, _ = rational_quadratic_spline(x + eps, uw, uh, ud, tail_bound=5.0)
    y_lo, _ = rational_quadratic_spline(x - eps, uw, uh, ud, tail_bound=5.0)
    inside = x.abs() < 4.9
    fd = torch.log((y_hi - y_lo) / (2 * eps))
    torch.testing.assert_close(lad[inside], fd[inside], atol=1e-4, rtol=0)
    assert torch.equal(y[x.abs() > 5], x[x.abs() > 5])  # identity tails


def test_relative_attention_matches_brute_force():
    torch.manual_seed(0)
    attn = RelativeSelfAttention(channels=8, n_heads=2, window_size=2).eval()
    t = 7
    x = torch.randn(1, 8, t)
    mask = torch.ones(1, 1, t, t)
    out = attn(x, mask)
    q = attn.conv_q(x).view(2, 4, t).transpose(1, 2) / 2.0  # (H, T, D), scaled by 1/sqrt(4)
    k = attn.conv_k(x).view(2, 4, t).transpose(1, 2)
    v = attn.conv_v(x).view(2, 4, t).transpose(1, 2)
    ek, ev = attn.emb_rel_k[0], attn.emb_rel_v[0]  # (2w+1, D), offset r at row r + w
    scores = torch.zeros(2, t, t)
    for i in range(t):
        for j in range(t):
            rel = j - i
            extra = (q[:, i] * ek[rel + 2]).sum(-1) if abs(rel) <= 2 else 0.0
            scores[:, i, j] = (q[:, i] * k[:, j]).sum(-1) + extra
    p = scores.softmax(-1)
    o = p @ v
    for i in range(t):
        for j in range(t):
            if abs(j - i) <= 2:
                o[:, i] += p[:, i, j, None] * ev[j - i + 2]
    ref = attn.conv_o(o.transpose(1, 2).reshape(1, 8, t))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
