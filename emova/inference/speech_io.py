"""The speech ends of the pipeline: what `Emova` needs from a speech tokenizer and a detokenizer.

`UnitEncoder` (speech → units) and `Detokenizer` (units + style → speech) are protocols, so our own
`SpeechTokenizer` / `SpeechDetokenizer` and the official EMOVA speech tokenizer (one checkpoint holding
both the S2U encoder and the VITS U2S decoder) plug in alike. `load_unit_encoder` / `load_detokenizer`
choose by what a directory's `config.json` says, never by its name.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from emova.assets import read_config
from emova.audio import SAMPLE_RATE, Audio, as_audio
from emova.speech.official_detokenizer import OfficialDetokenizer  # one adapter for both sides
from emova.styles import Style

OUR_S2U_FORMAT = "emova-s2u-v1"
DEFAULT_MAX_AUDIO_SECONDS = 300.0


@runtime_checkable
class UnitEncoder(Protocol):
    def encode(self, audio: str | Path | Audio) -> list[int]:
        """Raw 25 Hz units in [0, 4096)."""
        ...


@runtime_checkable
class Detokenizer(Protocol):
    def decode(self, units: Sequence[int], style: Style | str = ..., reference: Audio | None = None) -> Audio:
        ...

    def decode_stream(self, units: Iterable[int], style: Style | str = ...) -> Iterator[Audio]:
        ...


# ------------------------------------------------------------------------- official speech tokenizer
class OfficialUnitEncoder:
    """`UnitEncoder` over the official checkpoint's S2U encoder (validates audio like ours does)."""

    def __init__(self, model: Any, max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS) -> None:
        self.model = model
        self.max_seconds = max_seconds

    def encode(self, audio: str | Path | Audio) -> list[int]:
        a = as_audio(audio, SAMPLE_RATE).validate_speech(max_seconds=self.max_seconds)
        return [int(u) for u in self.model.encode(a.samples)]


# ----------------------------------------------------------------------------------------- loading
def is_official_speech_tokenizer(path: str | Path) -> bool:
    """True for an `emova_speech_tokenizer_hf`-layout directory (config with `u2s_style2idx`)."""
    p = Path(path)
    if not (p / "config.json").is_file():
        return False
    try:
        return "u2s_style2idx" in json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (json.JSONDecodeError, OSError, TypeError):
        return False


def _official(path: Path, device: str) -> Any:
    from emova.convert.speech_tokenizer import load_official_speech_tokenizer

    return load_official_speech_tokenizer(path, device=device)


def load_speech_pair(tokenizer_dir: str | Path, detokenizer_dir: str | Path, device: str = "cpu",
                     max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS) -> tuple[UnitEncoder, Detokenizer]:
    """Both speech ends; one official checkpoint used for both sides is loaded once."""
    t, d = Path(tokenizer_dir), Path(detokenizer_dir)
    if t.resolve() == d.resolve() and is_official_speech_tokenizer(t):
        model = _official(t, device)
        return OfficialUnitEncoder(model, max_seconds=max_seconds), OfficialDetokenizer(model)
    return load_unit_encoder(t, device, max_seconds), load_detokenizer(d, device)


def load_unit_encoder(path: str | Path, device: str = "cpu",
                      max_seconds: float = DEFAULT_MAX_AUDIO_SECONDS) -> UnitEncoder:
    """Our `SpeechTokenizer` directory or an official speech-tokenizer directory → a UnitEncoder."""
    p = Path(path)
    cfg = read_config(p, "speech tokenizer")
    if cfg.get("format") == OUR_S2U_FORMAT:
        from emova.speech.tokenizer import SpeechTokenizer

        return SpeechTokenizer.from_pretrained(p, max_seconds=max_seconds)
    if "u2s_style2idx" in cfg:
        return OfficialUnitEncoder(_official(p, device), max_seconds=max_seconds)
    raise ValueError(f"{p}/config.json is neither our speech tokenizer (format {OUR_S2U_FORMAT!r}) nor the "
                     f"official EMOVA speech tokenizer (u2s_style2idx)")


def load_detokenizer(path: str | Path, device: str = "cpu") -> Detokenizer:
    """Our `SpeechDetokenizer` directory or an official speech-tokenizer directory → a Detokenizer."""
    p = Path(path)
    cfg = read_config(p, "speech detokenizer")
    if "u2s_style2idx" in cfg:
        return OfficialDetokenizer(_official(p, device))
    try:
        from emova.speech.detokenizer import SpeechDetokenizer
    except ImportError as e:  # the module is built separately; say what is missing
        raise ValueError(f"{p} holds our speech detokenizer format, but emova.speech.detokenizer is not "
                         f"available ({e})") from None
    return SpeechDetokenizer.from_pretrained(p)


__all__ = ["Detokenizer", "UnitEncoder", "OfficialDetokenizer", "OfficialUnitEncoder", "load_detokenizer",
           "load_speech_pair", "load_unit_encoder", "is_official_speech_tokenizer"]
