"""Voices and prosody: who speaks, and how each style label sounds.

Every emotion is one row of `EMOTION_PROSODY` (F0 level, F0 range, rate, energy); pitch and speed
labels multiply F0 level and rate. Engines: flite (distinct real-recorded speakers) and espeak-ng
(many accents x voice variants). The held-out voices of SPEC.md never appear in `TRAIN_VOICES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from emova.styles import Style


@dataclass(frozen=True)
class Prosody:
    f0: float  # multiplier on the speaker's base F0
    f0_range: float  # multiplier on the F0 excursion
    rate: float  # multiplier on speaking rate (>1 faster)
    energy_db: float  # loudness change


# One table for all engines. Values chosen to match the usual acoustic correlates of each emotion.
EMOTION_PROSODY: dict[str, Prosody] = {
    "neutral": Prosody(1.00, 1.00, 1.00, 0.0),
    "happy": Prosody(1.15, 1.60, 1.10, 2.0),
    "sad": Prosody(0.88, 0.45, 0.78, -5.0),
    "angry": Prosody(1.08, 1.35, 1.18, 6.0),
    "surprised": Prosody(1.28, 1.90, 1.00, 3.0),
    "disgusted": Prosody(0.93, 0.80, 0.85, -1.0),
    "fearful": Prosody(1.22, 0.70, 1.22, -3.0),
}
PITCH_FACTOR = {"low": 0.80, "normal": 1.00, "high": 1.25}
SPEED_FACTOR = {"slow": 0.75, "normal": 1.00, "fast": 1.33}


def style_prosody(style: Style) -> Prosody:
    """Combined prosody for a style (emotion profile x pitch label x speed label)."""
    e = EMOTION_PROSODY[style.emotion]
    return Prosody(e.f0 * PITCH_FACTOR[style.pitch], e.f0_range, e.rate * SPEED_FACTOR[style.speed], e.energy_db)


@dataclass(frozen=True)
class Voice:
    engine: str  # "flite" | "espeak"
    name: str  # flite voice, or espeak "accent+variant"
    gender: str
    base_f0: float  # Hz, typical median F0

    @property
    def key(self) -> str:
        return f"{self.engine}:{self.name}"


_FLITE = [Voice("flite", "slt", "female", 175.0), Voice("flite", "rms", "male", 105.0),
          Voice("flite", "kal16", "male", 105.0), Voice("flite", "kal", "male", 105.0)]
_ACCENTS = ["en-us", "en-gb", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan",
            "en-gb-x-gbcwmd"]
_FEMALE_VARIANTS = ["f1", "f2", "f3", "f5", "Annie", "anika", "linda", "steph", "belinda", "shelby", "Alicia",
                    "Andrea", "aunty", "grandma"]
_MALE_VARIANTS = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "klatt", "klatt2", "klatt3", "adam", "david",
                  "edward", "john", "paul", "travis", "victor", "max", "iven", "Mike", "norbert", "quincy", "grandpa"]

HELD_OUT_VOICES: tuple[Voice, ...] = (Voice("flite", "awb", "male", 110.0), Voice("espeak", "en-us+f4", "female", 200.0))
HELD_OUT_KEYS = frozenset(v.key for v in HELD_OUT_VOICES)


def _espeak_voices() -> list[Voice]:
    out = []
    for acc in _ACCENTS:
        out += [Voice("espeak", f"{acc}+{v}", "female", 200.0) for v in _FEMALE_VARIANTS]
        out += [Voice("espeak", f"{acc}+{v}", "male", 110.0) for v in _MALE_VARIANTS]
    return out


FLITE_TRAIN_VOICES: tuple[Voice, ...] = tuple(_FLITE)
ESPEAK_TRAIN_VOICES: tuple[Voice, ...] = tuple(_espeak_voices())
TRAIN_VOICES: tuple[Voice, ...] = FLITE_TRAIN_VOICES + ESPEAK_TRAIN_VOICES
assert not HELD_OUT_KEYS & {v.key for v in TRAIN_VOICES}
assert not any(v.name.endswith("+f4") for v in ESPEAK_TRAIN_VOICES)


def voice_by_key(key: str) -> Voice:
    for v in TRAIN_VOICES + HELD_OUT_VOICES:
        if v.key == key:
            return v
    raise ValueError(f"unknown voice {key!r}")
