import pytest
import torch

from emova.speech.u2s import U2SConfig, U2SModel, regulate_indices

SMALL = dict(dim=32, enc_layers=1, enc_heads=2, dec_layers=2, predictor_layers=1, style_dim=16)


def _model(seed: int = 0) -> U2SModel:
    torch.manual_seed(seed)
    m = U2SModel(U2SConfig.from_dict(SMALL)).eval()
    for mod in m.modules():  # FiLM starts at the identity; give it weights so the style acts everywhere
        if mod.__class__.__name__ == "FiLM":
            torch.nn.init.normal_(mod.proj.weight, 0, 0.3)
    return m


def test_config_is_validated():
    with pytest.raises(ValueError, match="unknown U2S config keys"):
        U2SConfig.from_dict({"dim": 32, "n_layer": 3})
    with pytest.raises(ValueError, match="divisible"):
        U2SConfig(dim=30, enc_heads=4)
    with pytest.raises(ValueError, match="odd"):
        U2SConfig(dec_kernel=4)
    with pytest.raises(ValueError, match="positive integer"):
        U2SConfig(n_mels=0)
    assert U2SConfig.from_dict(U2SConfig().to_dict()) == U2SConfig()
    assert U2SConfig().frames_per_unit == pytest.approx(2.5)


def test_regulate_indices_rounds_the_cumulative_sum():
    d = torch.tensor([[1.4, 1.4, 1.4, 0.0, 2.0], [3.0, 1.0, 0, 0, 0]])
    idx, n = regulate_indices(d, torch.tensor([5, 2]))
    assert n.tolist() == [6, 4]  # round(6.2) = 6: rounding errors do not accumulate
    assert idx[0, :6].tolist() == [0, 1, 1, 2, 4, 4]  # ends 1, 3, 4, 4, 6 → unit 3 gets no frame
    assert idx[1, :4].tolist() == [0, 0, 0, 1]


def test_forward_shapes_and_teacher_forced_lengths():
    m = _model()
    B, N = 2, 7
    units = torch.randint(0, 4096, (B, N))
    durs = torch.tensor([[2, 3, 1, 0, 4, 2, 1], [1, 1, 1, 1, 0, 0, 0]])
    n_units = torch.tensor([7, 4])
    Fr = int(durs.sum(1).max())
    o = m(units, n_units, torch.randn(B, 16), durs, torch.zeros(B, Fr), torch.ones(B, Fr))
    assert o["mel"].shape == (B, Fr, 80)
    assert o["log_dur"].shape == (B, N) and o["prosody"].shape == (B, 3)
    assert o["frame_mask"][1].sum() == 4 and o["frame_mask"][0].sum() == Fr
    assert (o["mel"][1, 4:] == 0).all()  # padding frames are masked


def test_length_scale_and_style_control_the_output():
    m = _model()
    units = torch.randint(0, 4096, (1, 20))
    s1, s2 = torch.randn(1, 16), torch.randn(1, 16)
    a = m.infer(units, s1)
    b = m.infer(units, s1, length_scale=2.0)
    assert abs(b["mel"].shape[0] - 2 * a["mel"].shape[0]) <= 2
    assert a["durations"].shape == (20,) and a["unit_index"].max() <= 19
    c = m.infer(units, s2)
    n = min(a["mel"].shape[0], c["mel"].shape[0])
    assert (a["mel"][:n] - c["mel"][:n]).abs().mean() > 1e-3  # the style reaches the mel


def test_f0_level_comes_from_the_prosody_head():
    m = _model()
    units = torch.randint(0, 4096, (1, 15))
    s = torch.randn(1, 16)
    with torch.no_grad():
        m.prosody[-1].bias.copy_(torch.tensor([0.0, 0.1, 0.0]))
        lo = m.infer(units, s)["lf0"]
        m.prosody[-1].bias.copy_(torch.tensor([0.8, 0.1, 0.0]))
        hi = m.infer(units, s)["lf0"]
    assert torch.allclose(hi - lo, torch.full_like(lo, 0.8), atol=1e-4)


def test_f0_embedding_buckets_and_unvoiced_row():
    m = _model()
    lf0 = torch.tensor([[-2.0, 0.0, 0.5, 0.5]])
    e = m.f0_embedding(lf0, torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert e.shape == (1, 4, 32)
    assert not torch.equal(e[0, 0], e[0, 1])
    assert torch.equal(e[0, 3], m.f0_emb.weight[m.cfg.f0_bins])  # unvoiced frames share one row


def test_prosody_calibration_scales_level_and_speed():
    m = _model()
    units = torch.randint(0, 4096, (1, 30))
    s = torch.randn(1, 16)
    base = m.infer(units, s)
    head = m.prosody(s)[0].detach()
    m.cfg.level_gain, m.cfg.level_bias = 2.0, 0.3  # level = 0.3 + 2 * head level
    lev = m.infer(units, s)
    assert torch.allclose(lev["durations"], base["durations"])
    assert torch.allclose(lev["lf0"] - base["lf0"], torch.full_like(base["lf0"], float(head[0]) + 0.3), atol=1e-4)
    m.cfg.level_gain, m.cfg.level_bias = 1.0, 0.0
    m.cfg.rate_gain, m.cfg.rate_center, m.cfg.rate_bias = 1.0, 0.0, 0.5  # log(1 + frames) += head log-dur + 0.5
    slow = m.infer(units, s)
    raw = torch.log(base["durations"] + 1)
    expect = (torch.exp(raw + float(head[2]) + 0.5) - 1).clamp(min=0)
    ok = base["durations"] > 0  # clamped units have no raw value to compare
    assert torch.allclose(slow["durations"][ok], expect[ok], atol=1e-3)


def test_frame_positions_place_each_frame_inside_its_unit():
    from emova.speech.u2s import frame_positions

    d = torch.tensor([[2.0, 3.0, 0.0]])
    n = torch.tensor([2])
    idx, nf = regulate_indices(d, n)
    pos = frame_positions(d, n, idx)[0]
    assert nf.tolist() == [5] and pos.shape == (5, 4)
    assert pos[:, 0].tolist() == pytest.approx([0.25, 0.75, 1 / 6, 0.5, 5 / 6])  # fraction at the frame centre
    assert (pos[:, 1] * 8).tolist() == pytest.approx([0, 1, 0, 1, 2])  # frames since the start
    assert (pos[:, 2] * 8).tolist() == pytest.approx([1, 0, 2, 1, 0])  # frames to the end
    assert (pos[:, 3] * 8).tolist() == pytest.approx([2, 2, 3, 3, 3])  # unit length


def test_frame_position_starts_as_the_identity_and_then_acts():
    torch.manual_seed(0)
    base = U2SModel(U2SConfig.from_dict(SMALL)).eval()
    torch.manual_seed(0)
    pos = U2SModel(U2SConfig.from_dict({**SMALL, "frame_position": True})).eval()
    pos.load_state_dict(base.state_dict(), strict=False)
    units, style = torch.tensor([[5, 9, 2, 7]]), torch.randn(1, 16)
    a, b = base.infer(units, style), pos.infer(units, style)
    assert torch.equal(a["mel"], b["mel"])  # zero-initialised: same output as without it
    torch.nn.init.normal_(pos.frame_pos.weight, 0, 1.0)
    c = pos.infer(units, style)
    assert torch.equal(c["durations"], a["durations"]) and not torch.allclose(c["mel"], a["mel"])


def test_gv_postfilter_scales_each_bin_around_its_mean():
    import math

    m = _model()
    units, style = torch.tensor([[5, 9, 2, 7, 11]]), torch.randn(1, 16)
    plain = m.infer(units, style)["mel"]
    mean = [float(x) for x in torch.linspace(-8, -2, 80)]
    m.cfg.gv_mean, m.cfg.gv_scale = mean, [1.0] * 80
    assert torch.allclose(m.infer(units, style)["mel"], plain.clamp(min=math.log(1e-6)), atol=1e-5)
    m.cfg.gv_scale = [1.5] * 80
    filtered = m.infer(units, style)["mel"]
    mu = torch.tensor(mean)
    assert torch.allclose(filtered, (mu + 1.5 * (plain - mu)).clamp(min=math.log(1e-6)), atol=1e-5)
    m.cfg.gv_mean = m.cfg.gv_scale = None
    with pytest.raises(ValueError, match="together"):
        U2SConfig(gv_mean=[0.0] * 80)
    with pytest.raises(ValueError, match="80 finite"):
        U2SConfig(gv_mean=[0.0] * 79, gv_scale=[1.0] * 79)
    with pytest.raises(ValueError, match=r"\[0.5, 2\]"):
        U2SConfig(gv_mean=[0.0] * 80, gv_scale=[3.0] * 80)
