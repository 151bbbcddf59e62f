import numpy as np
import pytest
import soundfile as sf

from emova.audio import Audio, AudioError, log_mel, median_f0


def test_load_resamples_and_mixes_stereo(tmp_path, tone):
    stereo = np.stack([tone.samples, tone.samples * 0.5], 1)
    p = tmp_path / "s.wav"
    sf.write(p, stereo, 16000)
    a = Audio.load(p, 8000)
    assert a.sample_rate == 8000 and len(a.samples) == 8000
    assert np.allclose(Audio.load(p).samples, stereo.mean(1), atol=1e-4)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resample_rates_preserve_duration_and_pitch(tmp_path, tone, sr):
    p = tmp_path / "x.wav"
    tone.resample(sr).save(p)
    a = Audio.load(p, 16000)
    assert abs(a.duration - 1.0) < 0.002
    assert abs(median_f0(a) - 150) < 3


def test_bad_files_are_refused_clearly(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        Audio.load(empty)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"this is not audio at all" * 50)
    with pytest.raises(AudioError, match="cannot read"):
        Audio.load(junk)
    with pytest.raises(AudioError, match="not found"):
        Audio.load(tmp_path / "missing.wav")


def test_truncated_wav_is_refused_or_read(tmp_path, tone):
    p = tmp_path / "t.wav"
    tone.save(p)
    data = p.read_bytes()
    cut = tmp_path / "cut.wav"
    cut.write_bytes(data[:30])  # header cut in the middle
    with pytest.raises(AudioError):
        Audio.load(cut)
    cut2 = tmp_path / "cut2.wav"
    cut2.write_bytes(data[: len(data) // 2])  # payload cut: soundfile reads what is there
    a = Audio.load(cut2)
    assert 0.3 < a.duration < 0.6


def test_validation_catches_silence_and_length(tone):
    with pytest.raises(AudioError, match="silent"):
        Audio(np.zeros(16000, np.float32), 16000).validate_speech()
    with pytest.raises(AudioError, match="too short"):
        Audio(tone.samples[:100], 16000).validate_speech()
    with pytest.raises(AudioError, match="too long"):
        tone.validate_speech(max_seconds=0.5)
    with pytest.raises(AudioError, match="NaN"):
        Audio(np.array([0.0, np.nan], np.float32), 16000)
    with pytest.raises(AudioError, match="channels"):
        Audio(np.zeros((100, 2), np.float32), 16000)


def test_log_mel_shape_and_frame_rate(tone):
    m = log_mel(tone.samples)
    assert m.shape == (128, 16000 // 160 + 1)
    # the 150 Hz harmonic stack puts most energy in low bins
    assert m[:20].mean() > m[-20:].mean()


def _burst(sr: int = 16000, seconds: float = 0.8) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


@pytest.mark.parametrize("noise_db", [None, -45.0, -30.0])
def test_speech_span_finds_the_sound_in_silence_or_background(noise_db):
    sr, x = 16000, _burst()
    y = np.concatenate([np.zeros(sr), x, np.zeros(int(1.5 * sr))]).astype(np.float32)
    if noise_db is not None:
        y = y + np.random.default_rng(0).normal(0, 10 ** (noise_db / 20), len(y)).astype(np.float32)
    start, end = Audio(y, sr).speech_span()
    assert abs(start - 1.0) < 0.03 and abs(end - 1.8) < 0.03
    trimmed = Audio(y, sr).trim_silence(lead_s=0.1, trail_s=0.2)
    assert abs(trimmed.duration - (0.8 + 0.1 + 0.2)) < 0.06


def test_trim_silence_keeps_clips_that_are_already_cut_and_refuses_nothing():
    sr, x = 16000, _burst()
    tight = Audio(np.concatenate([np.zeros(int(0.25 * sr)), x, np.zeros(int(0.28 * sr))]).astype(np.float32), sr)
    assert tight.trim_silence() is tight  # within 0.1 s of the default 0.2 s kept: untouched, bit for bit
    assert tight.trim_silence(tolerance_s=0.0).duration == pytest.approx(0.2 + 0.8 + 0.2, abs=0.03)
    over = Audio(np.concatenate([np.zeros(int(0.35 * sr)), x]).astype(np.float32), sr).trim_silence()
    assert over.duration == pytest.approx(0.2 + 0.8, abs=0.03)  # 0.15 s more than kept: cut
    silent = Audio(np.zeros(sr, np.float32), sr)
    assert silent.speech_span() is None and silent.trim_silence() is silent
    assert Audio(np.zeros(10, np.float32), sr).trim_silence().duration == 10 / sr  # shorter than a frame
    long_lead = Audio(np.concatenate([np.zeros(2 * sr), x]).astype(np.float32), sr).trim_silence()
    assert abs(long_lead.duration - (0.2 + 0.8)) < 0.03 and np.array_equal(long_lead.samples[-len(x):], x)


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_encodings_read_back(fmt):
    x = _burst()
    a = Audio.from_bytes(Audio(x, 16000).to_bytes(fmt))
    assert a.sample_rate == 16000 and abs(a.duration - 0.8) < 0.08
    assert abs(median_f0(a) - 180) < 5


def test_pcm16_and_unknown_encodings():
    x = np.array([0.0, 0.5, -1.0, 2.0], np.float32)
    assert np.array_equal(np.frombuffer(Audio(x, 16000).to_bytes("pcm16"), "<i2"), [0, 16384, -32767, 32767])
    with pytest.raises(AudioError, match="aac"):
        Audio(x, 16000).to_bytes("aac")


@pytest.mark.parametrize("rates", [(16000, 24000), (22050, 24000), (24000, 16000)])
def test_stream_resampler_equals_resampling_the_whole(rates):
    from scipy.signal import resample_poly

    from emova.audio import StreamResampler

    rng = np.random.default_rng(1)
    x = rng.normal(0, 0.3, 20011)
    r, out, i = StreamResampler(*rates), [], 0
    for n in (1, 3, 700, 5000, 64, 9000):
        out.append(r.push(x[i:i + n]))
        i += n
    out.append(r.push(x[i:]))
    out.append(r.flush())
    g = np.gcd(*rates)
    ref = resample_poly(x, rates[1] // g, rates[0] // g)
    y = np.concatenate(out)
    assert len(y) == len(ref) and np.abs(y - ref).max() < 1e-5
    with pytest.raises(RuntimeError):
        r.push(x[:10])


@pytest.mark.parametrize("ext", [".wav", ".flac", ".mp3", ".ogg", ".opus", ".WAV"])
def test_save_encodes_by_extension(tmp_path, ext):
    p = Audio(_burst(), 16000).save(tmp_path / f"reply{ext}")
    assert abs(Audio.load(p).duration - 0.8) < 0.08


def test_save_refuses_an_unknown_extension(tmp_path):
    with pytest.raises(AudioError, match="reply.txt"):
        Audio(_burst(), 16000).save(tmp_path / "reply.txt")
    assert not (tmp_path / "reply.txt").exists()


def test_shorten_pauses_cuts_long_pauses_inside_the_sound_and_leaves_short_ones():
    sr, x = 16000, _burst()
    gap = lambda s: np.zeros(int(s * sr), np.float32)  # noqa: E731
    long = Audio(np.concatenate([gap(0.2), x, gap(1.0), x, gap(0.2)]), sr)
    out = long.shorten_pauses(keep_s=0.05)
    assert out.duration == pytest.approx(0.2 + 0.8 + 0.05 + 0.8 + 0.2, abs=0.03)  # the edges are trim_silence's
    short = Audio(np.concatenate([x, gap(0.12), x]), sr)
    assert short.shorten_pauses(keep_s=0.05) is short  # within keep + 0.1 s tolerance: untouched
    joins = np.abs(np.diff(out.samples)).max()
    assert joins <= np.abs(np.diff(x)).max() + 1e-6  # crossfaded: no step bigger than the signal's own
    silent = Audio(np.zeros(sr, np.float32), sr)
    assert silent.shorten_pauses() is silent
