"""Checking chat messages before anything reaches the model.

Accepted shape (SPEC.md)::

    [{"role": "system" | "user" | "assistant",
      "content": str | [{"type": "text", "text": str},
                        {"type": "image", "image": path | PIL.Image.Image},
                        {"type": "audio", "audio": path | emova.Audio}]}, ...]

Every problem raises a `ValueError` (audio problems: `emova.AudioError`, a ValueError) that names the
message, the part and what is accepted. Images are opened and size-checked here; audio is loaded,
resampled to 16 kHz and checked (not empty, not silent, not too long) here.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from emova.audio import SAMPLE_RATE, Audio, AudioError, as_audio
from emova.model.processor import to_rgb
from emova.styles import EMOTIONS, GENDERS, PITCHES, Style

ROLES = ("system", "user", "assistant")
PART_TYPES = ("text", "image", "audio")
MAX_IMAGE_SIDE = 4096
MAX_IMAGE_BYTES = 20 * 1024 * 1024


@dataclass
class Turn:
    """One checked message: its role, text pieces, loaded images and audio (16 kHz)."""

    role: str
    texts: list[str] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    audios: list[Audio] = field(default_factory=list)


def load_image(image: Any, where: str = "image") -> Image.Image:
    """A path or PIL image → RGB PIL image, refusing unreadable or oversized input."""
    if isinstance(image, Image.Image):
        img = image
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"{where}: image file not found: {path}")
        size = path.stat().st_size
        if size == 0:
            raise ValueError(f"{where}: image file is empty: {path}")
        if size > MAX_IMAGE_BYTES:
            raise ValueError(f"{where}: image file is {size / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB")
        try:
            with Image.open(path) as im:
                if max(im.size) > MAX_IMAGE_SIDE:
                    raise ValueError(f"{where}: image is {im.size[0]}x{im.size[1]} px; the limit is "
                                     f"{MAX_IMAGE_SIDE} px per side")
                img = to_rgb(im)
        except Image.DecompressionBombError:
            raise ValueError(f"{where}: image {path} is far too large (decompression bomb guard)") from None
        except ValueError:
            raise
        except Exception as e:  # PIL raises several types for bad files
            raise ValueError(f"{where}: cannot read {path} as an image (PNG, JPEG, ... ): {e}") from None
    else:
        raise ValueError(f"{where}: expected a file path or a PIL.Image.Image, got {type(image).__name__}")
    if min(img.size) < 1:
        raise ValueError(f"{where}: image has no pixels ({img.size[0]}x{img.size[1]})")
    if max(img.size) > MAX_IMAGE_SIDE:
        raise ValueError(f"{where}: image is {img.size[0]}x{img.size[1]} px; the limit is {MAX_IMAGE_SIDE} px per side")
    return to_rgb(img)


def load_audio(audio: Any, where: str = "audio", max_seconds: float = 300.0) -> Audio:
    """A path or Audio → validated mono 16 kHz Audio (AudioError names the problem)."""
    if not isinstance(audio, (str, os.PathLike, Audio)):
        raise AudioError(f"{where}: expected a file path or an emova.Audio, got {type(audio).__name__}")
    try:
        a = as_audio(Path(audio) if isinstance(audio, os.PathLike) else audio, SAMPLE_RATE)
        return a.validate_speech(max_seconds=max_seconds)
    except AudioError as e:
        raise AudioError(f"{where}: {e}") from None


def check_messages(messages: Any, max_audio_seconds: float = 300.0) -> list[Turn]:
    """Validate and load a conversation. The last message must come from the user."""
    if isinstance(messages, dict):
        messages = [messages]
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role': ..., 'content': ...} dicts")
    if not messages:
        raise ValueError("messages is empty; give at least one user message")
    turns: list[Turn] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where} must be a dict with 'role' and 'content', got {type(m).__name__}")
        unknown = sorted(set(m) - {"role", "content"})
        if unknown:
            raise ValueError(f"{where}: unknown field(s) {unknown}; accepted: role, content")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"{where}: role {role!r}; accepted: {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise ValueError(f"{where}: a system message may only come first")
        turns.append(_check_content(m.get("content"), role, where, max_audio_seconds))
    if turns[-1].role != "user":
        raise ValueError(f"the last message must come from the user, not {turns[-1].role!r}")
    return turns


def _check_content(content: Any, role: str, where: str, max_audio_seconds: float) -> Turn:
    turn = Turn(role)
    if isinstance(content, str):
        if not content.strip():
            raise ValueError(f"{where}: content is empty")
        turn.texts.append(content)
        return turn
    if not isinstance(content, Sequence) or isinstance(content, bytes):
        raise ValueError(f"{where}: content must be a string or a list of parts, got {type(content).__name__}")
    if not content:
        raise ValueError(f"{where}: content is an empty list")
    for j, part in enumerate(content):
        pw = f"{where}.content[{j}]"
        if not isinstance(part, dict):
            raise ValueError(f"{pw} must be a dict with a 'type', got {type(part).__name__}")
        kind = part.get("type")
        if kind not in PART_TYPES:
            raise ValueError(f"{pw}: unknown part type {kind!r}; accepted: {', '.join(PART_TYPES)}")
        if kind not in part:
            raise ValueError(f"{pw}: a {kind!r} part needs a {kind!r} field")
        if role != "user" and kind != "text":
            raise ValueError(f"{pw}: {role} messages may only hold text, not {kind}")
        value = part[kind]
        if kind == "text":
            if not isinstance(value, str):
                raise ValueError(f"{pw}: text must be a string, got {type(value).__name__}")
            if value.strip():
                turn.texts.append(value)
        elif kind == "image":
            turn.images.append(load_image(value, pw))
        else:
            turn.audios.append(load_audio(value, pw, max_audio_seconds))
    if len(turn.audios) > 1:
        raise ValueError(f"{where}: one audio part per message is supported, got {len(turn.audios)}")
    if not (turn.texts or turn.images or turn.audios):
        raise ValueError(f"{where}: content holds only empty text")
    return turn


def resolve_style(voice: str, emotion: str | None, pitch: str | None,
                  override: Style | dict[str, Any] | str | None = None) -> Style:
    """The reply's speaking style: `voice` (gender) + the model's labels (neutral/normal where missing),
    then `override`: a Style (used as it is), a dict of fields to change, a condition string, or a bare
    emotion name."""
    if voice not in GENDERS:
        raise ValueError(f"unknown voice {voice!r}; expected one of {', '.join(GENDERS)}")
    base = Style(gender=voice, emotion=emotion if emotion in EMOTIONS else "neutral",
                 pitch=pitch if pitch in PITCHES else "normal")
    if override is None:
        return base
    if isinstance(override, Style):
        return override
    if isinstance(override, dict):
        allowed = {"gender", "emotion", "pitch", "speed"}
        unknown = sorted(set(override) - allowed)
        if unknown:
            raise ValueError(f"style_override: unknown field(s) {unknown}; accepted: {', '.join(sorted(allowed))}")
        return base.replace(**{k: v for k, v in override.items()})
    if isinstance(override, str):
        s = override.strip()
        if s.startswith("gender-"):
            return Style.parse(s)
        if s in EMOTIONS:
            return base.replace(emotion=s)
        raise ValueError(f"style_override {override!r}: give a condition string "
                         f"('gender-female_emotion-happy_speed-normal_pitch-high'), an emotion "
                         f"({', '.join(EMOTIONS)}), a dict of fields or a Style")
    raise ValueError(f"style_override must be a Style, dict or str, got {type(override).__name__}")


__all__ = ["Turn", "check_messages", "load_audio", "load_image", "resolve_style", "MAX_IMAGE_SIDE",
           "MAX_IMAGE_BYTES"]
