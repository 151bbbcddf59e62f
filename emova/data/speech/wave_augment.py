"""Waveform augmentation of real recordings: varied copies of a clip that say the same words.

The LLM reads FSDD's training recordings perfectly (every one of 300 sampled: accuracy 1.0) and the held-out
validation recordings of the same six speakers at 0.877: it has learned those clips' unit sequences, not the digits.
Speed perturbation (Ko et al., 2015; Kaldi's 0.9 / 1.0 / 1.1 copies) is the standard answer for a small real-speech
set; here each copy draws, deterministically from (seed, clip id, copy index):

* speed: resampling by a factor s, which changes tempo and pitch together, as a faster or slower talker would;
* pitch (with probability `p_pitch`): F0 × a factor by Praat PSOLA (`emova.train.u2s_augment.shift_f0`), formants
  and timing kept;
* tempo (with probability `p_tempo`): duration × a factor by Praat PSOLA with a duration tier, pitch kept;
* noise (with probability `p_noise`): white noise at an SNR drawn in `noise_snr_db`, against the clip's RMS;
and the result is peak-normalised to 0.9, as the corpus's recordings are (the S2U normalises its log-mel per
utterance, so the level itself needs no augmenting).

A copy is an `Audio` at the input's rate; `augment_wave` is a pure function of its arguments.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from emova.audio import Audio


def _range(name: str, v: Any, lo: float, hi: float) -> tuple[float, float]:
    if (not isinstance(v, (list, tuple)) or len(v) != 2 or not all(isinstance(x, (int, float)) for x in v)
            or not lo <= v[0] <= v[1] <= hi):
        raise ValueError(f"wave augment {name} must be [low, high] with {lo} <= low <= high <= {hi}, got {v!r}")
    return float(v[0]), float(v[1])


@dataclass(frozen=True)
class WaveAugment:
    speed: tuple[float, float] = (0.88, 1.12)
    pitch: tuple[float, float] = (0.85, 1.18)
    tempo: tuple[float, float] = (0.88, 1.15)
    noise_snr_db: tuple[float, float] = (15.0, 40.0)
    p_pitch: float = 0.5
    p_tempo: float = 0.5
    p_noise: float = 0.5

    def __post_init__(self) -> None:
        for name, lo, hi in (("speed", 0.5, 2.0), ("pitch", 0.5, 2.0), ("tempo", 0.5, 2.0),
                             ("noise_snr_db", -10.0, 80.0)):
            object.__setattr__(self, name, _range(name, getattr(self, name), lo, hi))
        for name in ("p_pitch", "p_tempo", "p_noise"):
            p = getattr(self, name)
            if not isinstance(p, (int, float)) or not 0.0 <= p <= 1.0:
                raise ValueError(f"wave augment {name} must be a probability in [0, 1], got {p!r}")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> WaveAugment:
        from emova.yaml_io import config_kwargs

        d = config_kwargs(cls, dict(d or {}), None, "wave augment")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def draw(self, key: str, seed: int = 0) -> dict[str, float]:
        """The transformation of one copy (`key` names it: clip id and copy index), reproducibly."""
        h = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big")
        rng = random.Random(h)
        out = {"speed": rng.uniform(*self.speed), "seed": rng.randrange(2**31)}
        if rng.random() < self.p_pitch:
            out["pitch"] = rng.uniform(*self.pitch)
        if rng.random() < self.p_tempo:
            out["tempo"] = rng.uniform(*self.tempo)
        if rng.random() < self.p_noise:
            out["snr_db"] = rng.uniform(*self.noise_snr_db)
        return out


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play `wave` `factor` times faster (shorter and higher for factor > 1): polyphase resampling."""
    from scipy.signal import resample_poly

    if factor == 1.0:
        return wave
    r = Fraction(factor).limit_denominator(200)
    return resample_poly(wave, r.denominator, r.numerator).astype(np.float32)


def change_tempo(wave: np.ndarray, sr: int, factor: float, floor: float = 60.0, ceiling: float = 600.0) -> np.ndarray:
    """Duration × `factor`, pitch kept: Praat PSOLA with a constant duration tier. Praat places the pulses of unvoiced
    stretches at random: run it inside `u2s_augment.praat_seeded` for a reproducible copy."""
    from parselmouth.praat import call

    from emova.train.u2s_augment import psola

    def edit(snd: Any, manip: Any) -> None:
        tier = call("Create DurationTier", "tempo", snd.xmin, snd.xmax)
        call(tier, "Add point", (snd.xmin + snd.xmax) / 2, float(factor))
        call([manip, tier], "Replace duration tier")

    return psola(wave, sr, edit, floor, ceiling)


def augment_wave(audio: Audio, t: dict[str, float]) -> Audio:
    """Apply one drawn transformation (`WaveAugment.draw`) to a clip."""
    from emova.train.u2s_augment import praat_seeded, shift_f0

    w = audio.samples.astype(np.float32)
    if not len(w):
        raise ValueError("cannot augment an empty clip")
    if "pitch" in t or "tempo" in t:
        with praat_seeded(int(t.get("seed", 0))):  # this copy's PSOLA pulses, reproducibly
            if "pitch" in t:
                w = shift_f0(w, audio.sample_rate, t["pitch"])
            if "tempo" in t:
                w = change_tempo(w, audio.sample_rate, t["tempo"])
    w = change_speed(w, t.get("speed", 1.0))
    if "snr_db" in t:
        rms = float(np.sqrt(np.mean(w.astype(np.float64) ** 2)))
        noise = np.random.default_rng(int(t.get("seed", 0))).standard_normal(len(w)).astype(np.float32)
        w = w + noise * (rms / 10 ** (t["snr_db"] / 20.0))
    peak = float(np.abs(w).max())
    w = w * (0.9 / peak) if peak > 0 else w
    return Audio(w.astype(np.float32), audio.sample_rate)
