"""Speaking styles: the condition string EMOVA's U2S is keyed by.

`gender-{female|male}_emotion-{E}_speed-{slow|normal|fast}_pitch-{low|normal|high}`
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product

GENDERS: tuple[str, ...] = ("female", "male")
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised", "disgusted", "fearful")
SPEEDS: tuple[str, ...] = ("slow", "normal", "fast")
PITCHES: tuple[str, ...] = ("low", "normal", "high")

_FIELDS = {"gender": GENDERS, "emotion": EMOTIONS, "speed": SPEEDS, "pitch": PITCHES}
_COND_RE = re.compile(r"^gender-(\w+)_emotion-(\w+)_speed-(\w+)_pitch-(\w+)$")


@dataclass(frozen=True)
class Style:
    """How a reply should sound. Every field is validated against the closed label sets."""

    gender: str = "female"
    emotion: str = "neutral"
    pitch: str = "normal"
    speed: str = "normal"

    def __post_init__(self) -> None:
        for name, allowed in _FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, str) or value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")

    @classmethod
    def parse(cls, condition: str | Style) -> Style:
        """Parse a condition string such as `gender-female_emotion-happy_speed-normal_pitch-high`."""
        if isinstance(condition, Style):
            return condition
        if not isinstance(condition, str):
            raise ValueError(f"style must be a Style or a condition string, got {type(condition).__name__}")
        m = _COND_RE.match(condition.strip())
        if m is None:
            raise ValueError(
                f"malformed style string {condition!r}; expected "
                "'gender-{female|male}_emotion-{E}_speed-{slow|normal|fast}_pitch-{low|normal|high}'"
            )
        gender, emotion, speed, pitch = m.groups()
        return cls(gender=gender, emotion=emotion, pitch=pitch, speed=speed)

    def __str__(self) -> str:
        return f"gender-{self.gender}_emotion-{self.emotion}_speed-{self.speed}_pitch-{self.pitch}"

    def replace(self, **changes: str | None) -> Style:
        """A copy with some fields changed; `None` values keep the current field."""
        fields = {k: getattr(self, k) for k in _FIELDS}
        for k, v in changes.items():
            if k not in _FIELDS:
                raise ValueError(f"unknown style field {k!r}; expected one of {', '.join(_FIELDS)}")
            if v is not None:
                fields[k] = v
        return Style(**fields)


def all_styles() -> list[Style]:
    """All 2 x 7 x 3 x 3 = 126 styles, in the order of the official `u2s_style2idx` table:
    the condition strings sorted alphabetically (index 41 = female, neutral, normal, normal)."""
    styles = [Style(gender=g, emotion=e, speed=s, pitch=p) for g, e, s, p in product(GENDERS, EMOTIONS, SPEEDS, PITCHES)]
    return sorted(styles, key=str)
