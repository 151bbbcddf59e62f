import json

import numpy as np
import pytest
import torch

from emova.audio import Audio
from emova.speech.detokenizer import SpeechDetokenizer, StreamConfig, parse_units
from emova.speech.style_encoder import StyleEncoder, StyleEncoderConfig, StylePrototypes
from emova.speech.u2s import U2SConfig, U2SModel
from emova.speech.vocoder import VocoderConfig, build_vocoder, mel_frames
from emova.styles import Style


def make_detok(kind: str = "vocos") -> SpeechDetokenizer:
    torch.manual_seed(0)
    u2s = U2SModel(U2SConfig(dim=32, enc_layers=1, dec_layers=2, predictor_layers=1))
    for mod in u2s.modules():
        if mod.__class__.__name__ == "FiLM":
            torch.nn.init.normal_(mod.proj.weight, 0, 0.3)
    with torch.no_grad():  # ~2.5 frames per unit, as a trained model gives
        u2s.duration.out.bias.fill_(1.25)
        u2s.duration.out.weight.mul_(0.01)
    enc = StyleEncoder(StyleEncoderConfig(hidden=32))
    voc = build_vocoder(VocoderConfig(kind=kind, dim=32, intermediate=64, layers=2, gl_iters=4))
    return SpeechDetokenizer(u2s, enc, voc, StylePrototypes(torch.randn(126, 256)))


@pytest.fixture(scope="module")
def detok():
    return make_detok()


UNITS = [int(u) for u in np.random.default_rng(0).integers(0, 4096, 60)]


def test_decode_returns_16k_audio_of_the_predicted_length(detok):
    a = detok.decode(UNITS[:30], Style())
    assert a.sample_rate == 16000 and a.samples.dtype == np.float32
    assert 0.5 < a.duration < 2.5  # ~30 units x 40 ms
    assert np.abs(a.samples).max() <= 1.0
    longer = detok.decode(UNITS[:30], Style(), length_scale=2.0)
    assert abs(longer.duration / a.duration - 2.0) < 0.1


def test_units_are_reduced_and_strings_accepted(detok):
    raw = [5, 5, 5, 9, 9, 17, 5]
    assert parse_units(raw, 4096) == [5, 9, 17, 5]
    a = detok.decode(raw)
    b = detok.decode([5, 9, 17, 5])
    c = detok.decode("<|speech_5|><|speech_9|> <|speech_17|><|speech_5|>")
    assert np.array_equal(a.samples, b.samples) and np.array_equal(b.samples, c.samples)


def test_style_and_reference_change_the_output(detok):
    a = detok.decode(UNITS[:30], "gender-female_emotion-neutral_speed-normal_pitch-normal")
    b = detok.decode(UNITS[:30], Style(gender="male", emotion="angry"))
    n = min(len(a.samples), len(b.samples))
    assert not np.allclose(a.samples[:n], b.samples[:n], atol=1e-3)
    t = np.arange(16000) / 16000
    ref = Audio((0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32), 16000)
    g = detok.style_vector(reference=ref)
    assert g.shape == (1, 256) and abs(float(g.norm()) - 1) < 1e-4
    assert not torch.allclose(g, detok.style_vector(Style()))
    assert detok.decode(UNITS[:10], reference=ref).duration > 0


@pytest.mark.parametrize("bad, match", [
    (dict(units=[]), "empty"),
    (dict(units=[1, 4096]), "out of range"),
    (dict(units=[-3]), "out of range"),
    (dict(units=[1.5]), "integers"),
    (dict(units=[True]), "integers"),
    (dict(units="<|speech_1|> hello"), "only"),
    (dict(units=[1, 2], style="gender-female_emotion-happy"), "malformed"),
    (dict(units=[1, 2], style="gender-robot_emotion-happy_speed-normal_pitch-normal"), "unknown gender"),
    (dict(units=[1, 2], style="gender-female_emotion-bored_speed-normal_pitch-normal"), "unknown emotion"),
    (dict(units=[1, 2], style=42), "Style or a condition string"),
    (dict(units=[1, 2], length_scale=0.0), "length_scale"),
])
def test_bad_input_raises_clear_value_errors(detok, bad, match):
    with pytest.raises(ValueError, match=match):
        detok.decode(**bad)


def test_stream_errors(detok):
    with pytest.raises(ValueError, match="empty"):
        list(detok.decode_stream(iter([])))
    with pytest.raises(ValueError, match="out of range"):
        list(detok.decode_stream(iter([1, 2, 3, 5000])))
    with pytest.raises(ValueError):
        StreamConfig(first_chunk_units=12)


def test_first_chunk_needs_at_most_10_units(detok):
    pulled = []

    def source():
        for u in UNITS:
            pulled.append(u)
            yield u

    gen = detok.decode_stream(source(), Style())
    first = next(gen)
    assert len(pulled) <= 10 and first.duration > 0.05
    rest = list(gen)
    assert len(pulled) == len(UNITS) and len(rest) >= 2


def test_later_chunks_double_up_to_chunk_units(detok):
    from dataclasses import replace

    def pulled_at_each_chunk(d, units):
        pulled, marks = [], []

        def source():
            for u in units:
                pulled.append(u)
                yield u

        for _ in d.decode_stream(source(), Style()):
            marks.append(len(pulled))
        return marks

    units = [u for i in range(120) for u in [(37 * i) % 4096]]  # 120 distinct units: no reduction
    sc = replace(detok.stream_config, grow_chunks=True)
    growing = SpeechDetokenizer(detok.u2s, detok.style_encoder, detok.vocoder, detok.prototypes, stream=sc)
    marks = pulled_at_each_chunk(growing, units)
    # units arrived when each chunk came out: first_chunk, then emitted + next size + lookahead
    first = sc.first_chunk_units - sc.lookahead_units
    want, emitted, size = [sc.first_chunk_units], first, first
    while emitted + min(sc.chunk_units, 2 * size) + sc.lookahead_units < len(units):
        size = min(sc.chunk_units, 2 * size)
        emitted += size
        want.append(emitted + sc.lookahead_units)
    assert marks[: len(want)] == want and marks[-1] == len(units)
    fixed = SpeechDetokenizer(detok.u2s, detok.style_encoder, detok.vocoder, detok.prototypes,
                              stream=replace(sc, grow_chunks=False))
    assert pulled_at_each_chunk(fixed, units)[:3] == [sc.first_chunk_units, first + sc.chunk_units + sc.lookahead_units,
                                                       first + 2 * sc.chunk_units + sc.lookahead_units]
    with pytest.raises(ValueError, match="grow_chunks"):
        StreamConfig(grow_chunks="yes")


def test_stream_matches_decode(detok):
    full = detok.decode(UNITS, Style())
    chunks = list(detok.decode_stream(iter(UNITS), Style()))
    joined = np.concatenate([c.samples for c in chunks])
    assert abs(len(joined) / len(full.samples) - 1) < 0.1
    ma, mb = mel_frames(joined, detok.vocoder_config), mel_frames(full.samples, detok.vocoder_config)
    n = min(len(ma), len(mb))
    d_stream = (ma[:n] - mb[:n]).abs().mean()
    other = detok.decode(UNITS[::-1], Style())
    mo = mel_frames(other.samples, detok.vocoder_config)
    m = min(len(mo), len(mb))
    assert d_stream < 0.5 * (mo[:m] - mb[:m]).abs().mean()


def test_save_and_load_roundtrip(detok, tmp_path):
    d = detok.save_pretrained(tmp_path / "detok", dtype=torch.float32)
    meta = json.loads((d / "config.json").read_text())
    assert meta["format"] == "emova-u2s-v1" and len(meta["styles"]) == 126
    back = SpeechDetokenizer.from_pretrained(d)
    assert np.allclose(back.decode(UNITS[:20]).samples, detok.decode(UNITS[:20]).samples, atol=1e-5)
    half = SpeechDetokenizer.from_pretrained(detok.save_pretrained(tmp_path / "half"))  # fp16 weights
    a, b = half.decode(UNITS[:20]), detok.decode(UNITS[:20])
    assert abs(len(a.samples) - len(b.samples)) <= 256


def test_loading_refuses_bad_directories(tmp_path, detok):
    with pytest.raises(ValueError, match="no model"):
        SpeechDetokenizer.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no config.json"):
        SpeechDetokenizer.from_pretrained(tmp_path / "empty")
    d = detok.save_pretrained(tmp_path / "x", dtype=torch.float32)
    meta = json.loads((d / "config.json").read_text())
    meta["u2s"]["n_layerz"] = 3
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unknown U2S config keys"):
        SpeechDetokenizer.from_pretrained(d)
    meta["format"] = "something-else"
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="unsupported format"):
        SpeechDetokenizer.from_pretrained(d)


def test_griffin_lim_detokenizer_streams_too():
    d = make_detok("griffin_lim")
    chunks = list(d.decode_stream(iter(UNITS[:30]), Style(gender="male")))
    assert len(chunks) >= 2 and all(np.isfinite(c.samples).all() for c in chunks)


def test_condition_prosody_offsets_shift_that_condition_only(tmp_path):
    from emova.speech.style_encoder import ProsodyOffsets

    detok = make_detok()
    sad = Style(gender="male", emotion="sad")
    base_sad, base_neutral = detok.decode(UNITS[:30], sad), detok.decode(UNITS[:30], Style())
    g = detok.style_vector(sad)
    plain = detok._mel(UNITS[:30], g)
    shifted = detok._mel(UNITS[:30], g, offsets=ProsodyOffsets(level=0.3))
    assert torch.allclose(shifted["lf0"], plain["lf0"] + 0.3, atol=1e-5)  # the level moves by the offset
    wide = detok._mel(UNITS[:30], g, offsets=ProsodyOffsets(log_spread=float(np.log(2.0))))
    dev, dev2 = plain["lf0"] - plain["lf0"].mean(), wide["lf0"] - wide["lf0"].mean()
    assert torch.allclose(dev2, 2 * dev, atol=1e-4)  # the excursion doubles around the level
    table = torch.zeros(126, 4)
    table[detok.prototypes.index[str(sad)]] = torch.tensor([0.3, 0.4, 0.0, -6.0])
    detok.prototypes.prosody = table
    assert detok.prototypes.offsets(sad) == pytest.approx((0.3, 0.4, 0.0, -6.0))
    longer = detok.decode(UNITS[:30], sad)
    assert longer.duration > 1.2 * base_sad.duration  # log(1 + frames) + 0.4 per unit
    no_gain = detok.vocode(detok._mel(UNITS[:30], g, offsets=ProsodyOffsets(0.3, 0.4, 0.0, 0.0))["mel"])
    assert np.abs(longer.samples).max() == pytest.approx(np.abs(no_gain).max() * 10 ** (-6 / 20), rel=1e-3)
    assert np.array_equal(detok.decode(UNITS[:30], Style()).samples, base_neutral.samples)  # other rows untouched
    streamed = np.concatenate([c.samples for c in detok.decode_stream(iter(UNITS[:30]), sad)])
    assert abs(len(streamed) / len(longer.samples) - 1) < 0.1  # streaming applies the same offsets
    assert abs(np.abs(streamed).max() / np.abs(longer.samples).max() - 1) < 0.2
    ref = Audio(np.sin(np.arange(16000) * 0.05).astype(np.float32) * 0.3, 16000)
    with_ref = detok.decode(UNITS[:30], sad, reference=ref)
    detok.prototypes.prosody = torch.zeros(126, 4)
    assert np.array_equal(detok.decode(UNITS[:30], sad, reference=ref).samples, with_ref.samples)  # a clip: no table
    detok.prototypes.prosody = table
    back = SpeechDetokenizer.from_pretrained(detok.save_pretrained(tmp_path / "d", dtype=torch.float32))
    assert torch.equal(back.prototypes.prosody, table)
    assert np.allclose(back.decode(UNITS[:30], sad).samples, longer.samples, atol=1e-5)
    with pytest.raises(ValueError, match="prosody table"):
        StylePrototypes(torch.randn(126, 256), prosody=torch.zeros(126, 2))
    with pytest.raises(ValueError, match="prosody table"):
        StylePrototypes(torch.randn(126, 256), prosody=torch.full((126, 4), float("nan")))


def test_emotion_strength_moves_emotions_away_from_neutral(tmp_path):
    protos = StylePrototypes(torch.randn(126, 256))
    happy, neutral = Style(gender="male", emotion="happy", pitch="high"), Style(gender="male", pitch="high")
    v, n = protos.vector(happy), protos.vector(neutral)
    assert torch.equal(protos.vector(happy, 1.0), v)  # 1: the table itself
    torch.testing.assert_close(protos.vector(happy, 0.0), n)  # 0: the same voice said neutrally
    strong = protos.vector(happy, 2.0)
    torch.testing.assert_close(strong, torch.nn.functional.normalize(2 * v - n, dim=-1))
    assert torch.dot(strong, n) < torch.dot(v, n)  # further from neutral, still a unit vector
    assert torch.equal(protos.vector(neutral, 2.5), n)  # neutral has nowhere to go
    for bad in (-0.5, 3.5, float("nan"), "1.5", True):
        with pytest.raises(ValueError, match="emotion_strength"):
            protos.vector(happy, bad)
    # the detokenizer's default comes from its config, a call may override it, and it survives save/load
    d = make_detok()
    d.prototypes = protos
    d.emotion_strength = 2.0
    units = UNITS[:20]
    a = d.decode(units, happy).samples
    np.testing.assert_allclose(a, d.decode(units, happy, emotion_strength=2.0).samples)
    assert not np.allclose(a, d.decode(units, happy, emotion_strength=1.0).samples)
    loaded = SpeechDetokenizer.from_pretrained(d.save_pretrained(tmp_path / "d"))
    assert loaded.emotion_strength == 2.0
    with pytest.raises(ValueError, match="emotion_strength"):
        d.decode(units, happy, emotion_strength=9)
    with pytest.raises(ValueError, match="emotion_strength"):
        list(d.decode_stream(iter(units), happy, emotion_strength=-1))
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    (tmp_path / "d" / "config.json").write_text(json.dumps({**cfg, "emotion_strength": "loud"}))
    with pytest.raises(ValueError, match="config.json.*emotion_strength"):
        SpeechDetokenizer.from_pretrained(tmp_path / "d")
    with pytest.raises(ValueError, match="emotion_strength"):
        d.emotion_strength = 4


@pytest.mark.parametrize("given, expected", [
    ("<|speech_3|><|speech_7|>", "<|speech_3|><|speech_7|>"),
    ("3 7 7 9", [3, 7, 7, 9]), ("3,7, 9", [3, 7, 9]), ("[3, 7]", [3, 7]), ('{"units": [5, 6]}', [5, 6]),
])
def test_cli_units_argument_forms(given, expected):
    from emova.cli import units_argument

    assert units_argument(given) == expected


@pytest.mark.parametrize("given, match", [
    ("1 2 x", "expected '<\\|speech_N\\|>"), ("[1, 2", "not valid JSON"), ('{"x": 1}', "JSON must be a list"),
    ("@/nonexistent/units.txt", "no such file"), ("", "expected"),
])
def test_cli_units_argument_refuses_bad_forms(given, match):
    from emova.cli import units_argument

    with pytest.raises(ValueError, match=match):
        units_argument(given)


def test_cli_speech_decode_reads_encode_json_and_reports_errors(detok, tmp_path, capsys):
    from emova.cli import main

    d = detok.save_pretrained(tmp_path / "detok", dtype=torch.float32)
    (tmp_path / "u.json").write_text(json.dumps({"units": UNITS[:12]}))  # what `emova speech encode --json` prints
    out = tmp_path / "o.wav"
    assert main(["speech", "decode", "--units", f"@{tmp_path / 'u.json'}", "--out", str(out), "--model", str(d)]) == 0
    assert Audio.load(out).duration > 0
    assert main(["speech", "decode", "--units", "1 2 99999", "--out", str(out), "--model", str(d)]) == 2
    err = capsys.readouterr().err
    assert "out of range" in err and "Traceback" not in err
