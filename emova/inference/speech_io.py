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

import numpy as np

from emova.audio import SAMPLE_RATE, Audio, as_audio
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


class OfficialDetokenizer:
    """`Detokenizer` over the official checkpoint's VITS U2S (`OfficialSpeechTokenizer.decode`).

    `decode_stream` cuts the unit stream at unit boundaries — a short first chunk so audio starts early,
    then growing chunks — decodes each chunk on its own, and joins neighbours with a short linear
    crossfade (the tail of each chunk is held back until the next one arrives)."""

    def __init__(self, model: Any, first_chunk: int = 8, max_chunk: int = 64, crossfade_ms: float = 10.0) -> None:
        if first_chunk < 1 or max_chunk < first_chunk:
            raise ValueError("need 1 <= first_chunk <= max_chunk")
        self.model = model
        self.first_chunk = first_chunk
        self.max_chunk = max_chunk
        self.crossfade_ms = crossfade_ms

    @property
    def sample_rate(self) -> int:
        return int(self.model.sample_rate)

    def decode(self, units: Sequence[int], style: Style | str = Style(), reference: Audio | None = None) -> Audio:
        if reference is not None:
            raise ValueError("the official speech tokenizer is driven by style labels; reference audio is not "
                             "supported here — pass style= (a Style or a condition string)")
        units = [int(u) for u in units]
        if not units:
            raise ValueError("cannot synthesise an empty unit sequence")
        wave, sr = self.model.decode(units, str(Style.parse(style)))
        return Audio(np.asarray(wave, dtype=np.float32), int(sr))

    def decode_stream(self, units: Iterable[int], style: Style | str = Style()) -> Iterator[Audio]:
        style = Style.parse(style)
        n_fade = int(self.sample_rate * self.crossfade_ms / 1000)
        held: np.ndarray | None = None  # tail of the previous chunk, to be crossfaded
        size = self.first_chunk
        buf: list[int] = []

        def render(chunk: list[int], last: bool) -> Audio | None:
            nonlocal held
            wave = self.decode(chunk, style).samples
            if held is not None:
                if len(wave) >= len(held):  # linear crossfade over the held tail
                    ramp = np.linspace(0.0, 1.0, len(held), dtype=np.float32)
                    wave = np.concatenate([held * (1 - ramp) + wave[: len(held)] * ramp, wave[len(held):]])
                else:
                    wave = np.concatenate([held, wave])
            if not last and n_fade and len(wave) > 2 * n_fade:
                held, wave = wave[-n_fade:], wave[:-n_fade]
            else:
                held = None
            return Audio(wave, self.sample_rate) if len(wave) else None

        for u in units:
            buf.append(int(u))
            if len(buf) >= size:
                out = render(buf, last=False)
                buf, size = [], min(2 * size, self.max_chunk)
                if out is not None:
                    yield out
        if buf:
            out = render(buf, last=True)
            if out is not None:
                yield out
        elif held is not None:
            yield Audio(held, self.sample_rate)


# ----------------------------------------------------------------------------------------- loading
def _read_config(path: Path, what: str) -> dict[str, Any]:
    cfg = path / "config.json"
    if not cfg.is_file():
        raise ValueError(f"{path} is not a {what} directory (no config.json)")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{cfg}: expected a JSON object")
    return data


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
    cfg = _read_config(p, "speech tokenizer")
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
    cfg = _read_config(p, "speech detokenizer")
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
