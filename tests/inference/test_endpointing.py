"""User speech is cut to its sound before the speech tokenizer reads it (`Emova.trim_silence`); what that is
worth is measured by benchmarks/asr_padding_probe.py."""

import numpy as np
import pytest

from emova import Audio, Emova
from emova.assets import resolve_model_dir


@pytest.fixture(scope="module")
def tiny() -> Emova:
    return Emova.from_pretrained("emova-tiny")


def test_the_speech_tokenizer_reads_the_question_without_the_silence_around_it(tiny, monkeypatch):
    q = Audio.load(resolve_model_dir("emova-tiny").parent / "examples" / "question.wav", 16000)
    sr, rng = 16000, np.random.default_rng(0)
    padded = np.concatenate([np.zeros(sr), q.samples, np.zeros(int(1.5 * sr))]).astype(np.float32)
    noisy = padded + rng.normal(0, 10 ** (-50 / 20), len(padded)).astype(np.float32)
    start, end = q.speech_span()
    lead, trail = tiny.silence_margins
    heard: list[float] = []
    encode = tiny.speech_tokenizer.encode
    monkeypatch.setattr(tiny.speech_tokenizer, "encode", lambda a: heard.append(a.duration) or encode(a))
    for x in (padded, noisy):
        tiny.transcribe(Audio(x, sr))
        assert heard[-1] == pytest.approx(end - start + lead + trail, abs=0.03)
    spoken = tiny.chat([{"role": "user", "content": [{"type": "audio", "audio": Audio(padded, sr)}]}], speak=False)
    assert heard[-1] == pytest.approx(end - start + lead + trail, abs=0.03) and spoken.mode == "spoken"
    pause = int(0.3 * sr) + int(np.argmin(np.abs(q.samples[int(0.3 * sr): int(1.2 * sr)])))  # a quiet point inside
    paused = np.concatenate([q.samples[:pause], np.zeros(sr, np.float32), q.samples[pause:]])
    tiny.transcribe(Audio(paused, sr))
    assert heard[-1] < q.duration + 0.2  # the 1 s pause cut down to `max_pause_s`
    monkeypatch.setattr(tiny, "trim_silence", False)
    tiny.transcribe(Audio(padded, sr))
    assert heard[-1] == pytest.approx(len(padded) / sr)


@pytest.mark.parametrize("bad", [(0.1,), (-0.1, 0.1), ("a", 0.1), 0.1, (0.1, 9.0), (True, 0.1), (float("nan"), 0.1)])
def test_bad_silence_margins_are_named(tiny, monkeypatch, bad):
    monkeypatch.setattr(tiny, "silence_margins", bad)
    q = Audio.load(resolve_model_dir("emova-tiny").parent / "examples" / "question.wav", 16000)
    with pytest.raises(ValueError, match="silence_margins"):
        tiny.transcribe(q)


@pytest.mark.parametrize("bad", [0.0, -1, 9.0, "0.1", True])
def test_bad_max_pause_is_named(tiny, monkeypatch, bad):
    monkeypatch.setattr(tiny, "max_pause_s", bad)
    q = Audio.load(resolve_model_dir("emova-tiny").parent / "examples" / "question.wav", 16000)
    with pytest.raises(ValueError, match="max_pause_s"):
        tiny.transcribe(q)
