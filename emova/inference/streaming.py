"""`Emova.chat(..., stream=True)`: text deltas while the reply text is generated, then audio chunks
while the reply's speech units are still being generated, then the full result.

One thread, no queues: the token generator is pulled by whoever needs the next token. In a spoken
turn the reply text is read incrementally from inside the JSON (`partial_string_field`); as soon as
the `"assistant response speech"` field opens, the remaining token stream is handed to
`detokenizer.decode_stream` as a lazy unit iterator, so the U2S decodes the first chunk while the LLM
has generated only a few units. In a text turn the text streams first, then the TTS pass streams units
into `decode_stream` the same way.

Events (`.type` is "text", "audio" or "final"): `TextDelta(text)`, `AudioChunk(audio, index)`,
`Final(result)`; `result.timings` holds `first_text_s`, `first_audio_s`, `total_s` (from the call).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any

from emova.audio import Audio
from emova.inference.json_repair import parse_answer, partial_string_field
from emova.inference.messages import resolve_style
from emova.speech.tokenizer import UNIT_RE

if TYPE_CHECKING:  # pragma: no cover
    from emova.inference.pipeline import ChatPlan, ChatResult, Emova

REPLY_TEXT_KEY = "assistant response text"
_SPEECH_OPEN = re.compile(r"assistant response speech\s*[\"\u201d']?\s*[:\uff1a]", re.IGNORECASE)


@dataclass
class TextDelta:
    text: str
    type: str = "text"


@dataclass
class AudioChunk:
    audio: Audio
    index: int
    type: str = "audio"


@dataclass
class Final:
    result: ChatResult
    type: str = "final"


Event = TextDelta | AudioChunk | Final


class _Clock:
    def __init__(self, started: float) -> None:
        self.started = started
        self.marks: dict[str, float] = {}

    def mark(self, name: str) -> None:
        self.marks.setdefault(name, time.perf_counter() - self.started)


def _audio_events(m: Emova, units: Iterable[int], style: Any, clock: _Clock, chunks: list[Audio]) -> Iterator[AudioChunk]:
    for chunk in m.detokenizer.decode_stream(units, style=style):
        clock.mark("first_audio_s")
        chunks.append(chunk)
        yield AudioChunk(chunk, len(chunks) - 1)


def _collect(units: Iterable[int], into: list[int]) -> Iterator[int]:
    for u in units:
        into.append(u)
        yield u


def stream_chat(m: Emova, plan: ChatPlan) -> Iterator[Event]:
    clock = _Clock(plan.started)
    chunks: list[Audio] = []
    if plan.mode == "spoken":
        result = yield from _stream_spoken(m, plan, clock, chunks)
    else:
        result = yield from _stream_text(m, plan, clock, chunks)
    from emova.inference.pipeline import concat_audio

    result.audio = concat_audio(chunks)
    clock.mark("total_s")
    result.timings.update(clock.marks)
    yield Final(result)


def _text_delta(current: str, emitted: str, clock: _Clock) -> tuple[TextDelta | None, str]:
    if current and current.startswith(emitted) and len(current) > len(emitted):
        clock.mark("first_text_s")
        return TextDelta(current[len(emitted):]), current
    return None, emitted


def _stream_spoken(m: Emova, plan: ChatPlan, clock: _Clock, chunks: list[Audio]) -> Iterator[Event]:
    tokens = iter(m._tokens(plan.inputs, plan.settings))
    ids: list[int] = []
    emitted, speech_open, first_unit_tok = "", False, None
    for tok in tokens:
        ids.append(tok)
        if tok in m._speech_ids:
            if speech_open and plan.speak:
                first_unit_tok = tok
                break
            continue
        raw = m._decode(ids)
        speech_open = speech_open or bool(_SPEECH_OPEN.search(raw))
        value, _ = partial_string_field(raw, REPLY_TEXT_KEY)
        delta, emitted = _text_delta(value or "", emitted, clock)
        if delta is not None:
            yield delta
    streamed: list[int] = []
    style = None
    if first_unit_tok is not None:
        so_far = parse_answer(m._decode(ids[:-1]))  # the labels come before the speech field
        style = resolve_style(plan.voice, so_far.emotion, so_far.pitch, plan.style_override)

        def units() -> Iterator[int]:
            yield m.processor.ids_to_units([first_unit_tok])[0]
            for t in tokens:
                ids.append(t)
                if t in m._speech_ids:
                    yield m.processor.ids_to_units([t])[0]
                elif re.search(r"[\"}]", m._decode([t])):  # the speech string (or object) closed
                    return

        yield from _audio_events(m, _collect(units(), streamed), style, clock, chunks)
    for tok in tokens:  # whatever follows the speech field
        ids.append(tok)
    raw = m._decode(ids)
    result = m.finish(plan, raw, units=streamed if first_unit_tok is not None else None, n_generated=len(ids))
    if style is not None:
        result.style = style
    elif plan.speak and result.units:  # units the repair found outside the speech field: speak them now
        yield from _audio_events(m, result.units, result.style, clock, chunks)
    return result


def _stream_text(m: Emova, plan: ChatPlan, clock: _Clock, chunks: list[Audio]) -> Iterator[Event]:
    ids: list[int] = []
    emitted = ""
    for tok in m._tokens(plan.inputs, plan.settings):
        ids.append(tok)
        if tok in m._speech_ids:
            continue
        current = UNIT_RE.sub("", m._decode(ids)).replace("<image>", "").lstrip()
        delta, emitted = _text_delta(current, emitted, clock)
        if delta is not None:
            yield delta
    result = m.finish(plan, m._decode(ids), units=[], n_generated=len(ids))
    if plan.speak and result.text:
        units: list[int] = []
        source = iter(m.tts_units(result.text, plan.settings))
        first = next(source, None)  # decode_stream may refuse an empty unit stream
        if first is not None:
            yield from _audio_events(m, _collect(chain([first], source), units), result.style, clock, chunks)
        result.units = units
        result.usage["completion_tokens"] += len(units)
    return result


__all__ = ["AudioChunk", "Event", "Final", "TextDelta", "stream_chat"]
