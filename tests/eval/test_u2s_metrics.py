"""The distances `emova eval u2s` reports for streaming behave as their names say."""

import numpy as np

from emova.audio import Audio
from emova.eval.u2s import log_mel_distance, log_mel_dtw_distance

SR = 16000


def _tones(freqs: list[float], seg_s: list[float]) -> Audio:
    parts = []
    for f, d in zip(freqs, seg_s):
        t = np.arange(int(SR * d)) / SR
        parts.append(0.3 * np.sin(2 * np.pi * f * t))
    return Audio(np.concatenate(parts).astype(np.float32), SR)


def test_dtw_distance_sets_timing_aside_but_not_sound():
    a = _tones([300, 900, 500], [0.3, 0.3, 0.3])
    slower = _tones([300, 900, 500], [0.45, 0.2, 0.35])  # same sounds, other timing
    other = _tones([1500, 200, 2500], [0.3, 0.3, 0.3])  # other sounds, same timing
    assert log_mel_dtw_distance(a, a) == 0.0
    # frame by frame, the retimed clip looks far off; aligned, it is close
    assert log_mel_dtw_distance(a, slower) < 0.5 * log_mel_distance(a, slower)
    assert log_mel_dtw_distance(a, other) > 3 * log_mel_dtw_distance(a, slower)


def test_distances_of_an_empty_clip_are_nan():
    empty, tone = Audio(np.zeros(0, np.float32), SR), _tones([300], [0.2])
    assert np.isnan(log_mel_dtw_distance(empty, tone)) and np.isnan(log_mel_distance(tone, empty))


def test_the_judge_hears_a_clip_the_same_whatever_it_heard_before():
    """pocketsphinx's front end keeps state between utterances: without a reset, one FSDD clip decoded after the
    bundled question is heard as "here are" instead of "you are". `Judge` hears every clip as a new decoder would."""
    import pytest

    pytest.importorskip("pocketsphinx")
    from pathlib import Path

    from emova.eval.u2s import Judge

    fsdd = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"
    clip = fsdd / "0_jackson_21.wav"
    if not clip.exists():
        pytest.skip("FSDD recordings not beside the checkout")
    question = Audio.load(Path(__file__).resolve().parents[2] / "emova" / "assets" / "examples" / "question.wav")
    alone = Judge().transcribe(Audio.load(clip))
    judge = Judge()
    judge.transcribe(question)
    assert judge.transcribe(Audio.load(clip)) == alone
    assert judge.transcribe(question) == Judge().transcribe(question)
