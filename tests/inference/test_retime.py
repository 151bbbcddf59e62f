"""`Emova.synthesize(..., rate=)`: OpenAI's speed, applied after the U2S with the pitch kept."""

import numpy as np
import pytest

from emova.audio import Audio, median_f0
from emova.inference.pipeline import retime


@pytest.mark.parametrize("rate", [0.5, 1.5, 3.0])
def test_retime_changes_length_not_pitch(rate):
    sr = 16000
    t = np.arange(sr) / sr
    x = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 5)).astype(np.float32) * 0.2
    y = retime(Audio(x, sr), rate)
    assert y.duration == pytest.approx(1.0 / rate, rel=0.05)
    assert median_f0(y) == pytest.approx(140, rel=0.05)
    assert np.array_equal(retime(Audio(x, sr), rate).samples, y.samples)  # seeded: the same call, the same samples


def test_a_clip_too_short_for_psola_is_resampled():
    y = retime(Audio(np.ones(400, np.float32) * 0.1, 16000), 2.0)
    assert len(y.samples) == 200


@pytest.mark.parametrize("bad", [0.1, 5, True, "fast", float("nan")])
def test_bad_rates_are_refused_before_generation(emova, bad):  # noqa: F811
    with pytest.raises(ValueError, match="rate"):
        emova.synthesize("hello", rate=bad)
