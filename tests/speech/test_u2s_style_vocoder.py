import numpy as np
import pytest
import torch

from emova.speech.style_encoder import StyleEncoder, StyleEncoderConfig, StylePrototypes, style_label_ids
from emova.speech.vocoder import (
    GriffinLim,
    VocoderConfig,
    build_vocoder,
    mel_frames,
    multi_resolution_stft_loss,
)
from emova.styles import Style, all_styles


def test_style_encoder_gives_unit_vectors_and_respects_lengths():
    torch.manual_seed(0)
    enc = StyleEncoder(StyleEncoderConfig(hidden=32, style_dim=24)).eval()
    mel = torch.randn(2, 50, 80)
    v = enc(mel, torch.tensor([50, 30]))
    assert v.shape == (2, 24)
    assert torch.allclose(v.norm(dim=-1), torch.ones(2), atol=1e-5)
    mel2 = mel.clone()
    mel2[1, 30:] = 99.0  # padding must not matter
    assert torch.allclose(enc(mel2, torch.tensor([50, 30]))[1], v[1], atol=1e-5)
    with pytest.raises(ValueError, match="log-mel"):
        enc(torch.randn(1, 50, 64))
    logits = enc.label_logits(v)
    assert logits["emotion"].shape == (2, 7) and logits["gender"].shape == (2, 2)


def test_prototype_table_lookup_and_errors():
    table = torch.randn(126, 8)
    p = StylePrototypes(table)
    s = Style(gender="male", emotion="sad", pitch="high", speed="fast")
    i = [str(x) for x in all_styles()].index(str(s))
    assert torch.allclose(p.vector(s), torch.nn.functional.normalize(table[i], dim=0))
    assert torch.equal(p.vector(str(s)), p.vector(s))
    assert p.keys[41] == "gender-female_emotion-neutral_speed-normal_pitch-normal"  # official order
    with pytest.raises(ValueError, match="malformed"):
        p.vector("female, happy")
    with pytest.raises(ValueError, match="unknown emotion"):
        p.vector("gender-female_emotion-bored_speed-normal_pitch-normal")
    with pytest.raises(ValueError, match="126 rows"):
        StylePrototypes(torch.randn(10, 8))


def test_prototypes_are_means_and_missing_styles_are_composed():
    base = Style(gender="female")
    rows = [(0, str(base)), (1, str(base)), (2, str(base.replace(pitch="high"))), (3, str(Style(gender="male")))]
    vecs = torch.eye(4, 6)

    p = StylePrototypes.build(lambda ids: vecs[ids], rows)
    expect = torch.nn.functional.normalize(vecs[0] + vecs[1], dim=0)
    assert torch.allclose(p.vector(base), expect, atol=1e-6)
    assert p.counts[41] == 2
    # never rendered: female + high pitch + sad → composed from the female base and the high-pitch offset
    composed = p.vector(base.replace(pitch="high", emotion="sad"))
    assert composed @ vecs[2] > 0.3 and torch.isfinite(composed).all()
    assert style_label_ids(base.replace(emotion="angry")) == {"gender": 0, "emotion": 3, "pitch": 1, "speed": 1}


def test_vocos_and_hifigan_output_lengths():
    torch.manual_seed(0)
    mel = torch.randn(2, 21, 80) - 5
    for cfg in (VocoderConfig(dim=32, intermediate=64, layers=2),
                VocoderConfig(kind="hifigan", upsample_initial_channel=16)):
        y = build_vocoder(cfg)(mel)
        assert y.shape == (2, 20 * 256)
        assert torch.isfinite(y).all()
    with pytest.raises(ValueError, match="unknown vocoder kind"):
        VocoderConfig(kind="wavenet")
    with pytest.raises(ValueError, match="unknown vocoder config keys"):
        VocoderConfig.from_dict({"dims": 3})


def _harmonic(f0: float, seconds: float = 1.0) -> np.ndarray:
    t = np.arange(int(16000 * seconds)) / 16000
    x = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 20)) * 0.1
    return (x + np.random.default_rng(0).normal(0, 0.003, len(t))).astype(np.float32)


def test_griffin_lim_reconstructs_the_mel_of_a_signal():
    cfg = VocoderConfig(gl_iters=24)
    mel = mel_frames(_harmonic(150), cfg)[None]
    y = GriffinLim(cfg)(mel)[0]
    assert y.shape[0] == (mel.shape[1] - 1) * 256
    d_same = (mel_frames(y, cfg)[5:-5] - mel[0, 5:-5]).abs().mean()
    d_other = (mel_frames(_harmonic(210), cfg)[5:-5] - mel[0, 5:-5]).abs().mean()
    assert d_same < 0.5 * d_other


def test_stft_loss_is_zero_for_identical_and_grows_with_error():
    x = torch.randn(2, 4096) * 0.1
    assert multi_resolution_stft_loss(x, x) < 1e-4
    assert multi_resolution_stft_loss(x + 0.05 * torch.randn_like(x), x) > multi_resolution_stft_loss(
        x + 0.005 * torch.randn_like(x), x)


def test_f0_conditioned_vocos_needs_the_f0_and_starts_as_its_mel_only_source():
    base = VocoderConfig(dim=32, intermediate=64, layers=1)
    plain = build_vocoder(base).eval()
    grown = build_vocoder(VocoderConfig(dim=32, intermediate=64, layers=1, f0_input=True)).eval()
    missing, unexpected = grown.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("f0_") for k in missing)
    mel = torch.randn(2, 40, 80) - 5.0
    f0 = torch.full((2, 40), 80.0)
    f0[:, :8] = 0.0  # unvoiced frames
    with torch.no_grad():
        assert torch.equal(grown(mel, f0), plain(mel))  # zero-initialised: the same vocoder until it trains
    with pytest.raises(ValueError, match="F0 of every mel frame"):
        grown(mel)
    with pytest.raises(ValueError, match="F0 of every mel frame"):
        grown(mel, f0[:, :10])
    comb = grown.harmonic_comb(f0)
    assert comb.shape == (2, 513, 40) and comb[:, :, :8].abs().max() == 0
    bins = grown.bin_hz
    on = (bins % 80.0 == 0)  # exact harmonics of 80 Hz on the 15.625 Hz bin grid
    assert torch.allclose(comb[0, on, 10], torch.ones(int(on.sum())))
    # it learns to use the F0: a step on a voiced signal moves its output
    opt = torch.optim.Adam(grown.parameters(), 1e-2)
    t = torch.arange(39 * 256) / 16000
    x = (0.3 * torch.sin(2 * torch.pi * 80 * t))[None].repeat(2, 1)
    before = [p.detach().clone() for p in (grown.f0_in.weight, grown.f0_gain.weight)]
    loss = multi_resolution_stft_loss(grown.train()(mel, f0)[:, : x.shape[1]], x)
    loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, (grown.f0_in.weight, grown.f0_gain.weight)))
    with pytest.raises(ValueError, match="f0_input"):
        VocoderConfig(kind="hifigan", f0_input=True)
    f0_cfg = VocoderConfig(f0_input=True)  # switching kind (Griffin-Lim in the eval) drops the F0 input
    assert not f0_cfg.with_kind("griffin_lim").f0_input and f0_cfg.with_kind("vocos").f0_input
    assert f0_cfg.with_kind("griffin_lim").n_mels == f0_cfg.n_mels
