"""Parse EMOVA's spoken-dialogue answer — one JSON object with `ANSWER_KEYS` — whatever the model wrote.

The trained answer looks like::

    {"user question text": "...", "user question emotion": "neutral", "user question pitch": "normal",
     "assistant response text": "...", "assistant response emotion": "happy", "assistant response pitch": "high",
     "assistant response speech": "<|speech_12|><|speech_7|>..."}

(the released prompt's example puts a full-width comma `，` before the last key; both are accepted as is).
A model, especially a small or an interrupted one, may also write: stray text before or after the object,
a truncated object (`max_new_tokens` reached), an unterminated string, missing or unknown keys, unquoted
values, speech units outside the quotes, labels outside the closed sets. `parse_answer` never raises on
model output: it returns what it could recover plus `repairs`, one human-readable line per fix.

`partial_string_field` reads a string field from a prefix of the answer while it is being generated
(streaming text deltas).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from emova.model.prompts import ANSWER_KEYS, EMOTIONS, PITCHES

NUM_UNITS = 4096
SPEECH_KEY = "assistant response speech"
TEXT_KEYS = ("user question text", "assistant response text")
LABELS: dict[str, tuple[str, ...]] = {
    "user question emotion": EMOTIONS,
    "user question pitch": PITCHES,
    "assistant response emotion": EMOTIONS,
    "assistant response pitch": PITCHES,
}
_UNIT_RE = re.compile(r"<\|speech_(\d+)\|>")
_FULLWIDTH_SEP_RE = re.compile(r'"\s*\uff0c\s*"')
# a key, quoted or not (also with curly quotes), followed by a colon (ASCII or full-width)
_KEY_RE = re.compile(
    r"[\"\u201c\u201d']?\s*(" + "|".join(re.escape(k) for k in ANSWER_KEYS) + r")\s*[\"\u201c\u201d']?\s*[:\uff1a]",
    re.IGNORECASE,
)
_VALUE_TRAIL = " \t\r\n,\uff0c}"


@dataclass
class ParsedAnswer:
    """The recovered fields (None where missing or unusable), the reply units and what was repaired."""

    fields: dict[str, str | None] = field(default_factory=lambda: dict.fromkeys(ANSWER_KEYS))
    units: list[int] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)

    @property
    def transcript(self) -> str | None:
        return self.fields["user question text"]

    @property
    def user_emotion(self) -> str | None:
        return self.fields["user question emotion"]

    @property
    def user_pitch(self) -> str | None:
        return self.fields["user question pitch"]

    @property
    def text(self) -> str | None:
        return self.fields["assistant response text"]

    @property
    def emotion(self) -> str | None:
        return self.fields["assistant response emotion"]

    @property
    def pitch(self) -> str | None:
        return self.fields["assistant response pitch"]


# ---------------------------------------------------------------------------------------- helpers
def units_in(text: str) -> tuple[list[int], int]:
    """All `<|speech_k|>` units in text (k < 4096) and how many out-of-range ones were dropped."""
    units, bad = [], 0
    for m in _UNIT_RE.finditer(text):
        k = int(m.group(1))
        if k < NUM_UNITS:
            units.append(k)
        else:
            bad += 1
    return units, bad


def _loose_unescape(body: str) -> str:
    """JSON string body → text; tolerates bad escapes and a dangling backslash."""
    try:
        return json.loads('"' + body + '"')
    except (json.JSONDecodeError, ValueError):
        pass
    out, i = [], 0
    simple = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", '"': '"', "\\": "\\", "/": "/"}
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt in simple:
                out.append(simple[nxt])
                i += 2
                continue
            if nxt == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6] or ""):
                out.append(chr(int(body[i + 2 : i + 6], 16)))
                i += 6
                continue
            out.append(nxt)
            i += 2
            continue
        if c == "\\":  # dangling backslash at the end (truncation)
            break
        out.append(c)
        i += 1
    return "".join(out)


def _read_string(s: str, start: int) -> tuple[str, int, bool]:
    """Read a JSON string whose opening quote is at s[start]. Returns (body, end index after the closing
    quote or len(s), terminated)."""
    i = start + 1
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == '"':
            return s[start + 1 : i], i + 1, True
        i += 1
    return s[start + 1 :], len(s), False


def _normalise_label(key: str, value: str, repairs: list[str]) -> str | None:
    allowed = LABELS[key]
    v = value.strip().strip("\"'").strip().lower()
    if v in allowed:
        if v != value:
            repairs.append(f"normalised {key} {value!r} to {v!r}")
        return v
    if not v:
        repairs.append(f"{key} is empty")
        return None
    matches = [a for a in allowed if a.startswith(v) or v.startswith(a)]
    if len(matches) == 1:
        repairs.append(f"read {key} {value!r} as {matches[0]!r}")
        return matches[0]
    repairs.append(f"unknown {key} {value!r} (accepted: {', '.join(allowed)}); left unset")
    return None


def _finish(fields: dict[str, str | None], speech: str | None, stray_units: list[int], repairs: list[str]) -> ParsedAnswer:
    """Shared post-processing: labels, speech units, text fields free of unit tokens."""
    out = ParsedAnswer(repairs=repairs)
    for key in ANSWER_KEYS:
        if key == SPEECH_KEY:
            continue
        value = fields.get(key)
        if value is None:
            repairs.append(f"missing {key!r}")
            continue
        if key in LABELS:
            out.fields[key] = _normalise_label(key, value, repairs)
            continue
        units, _ = units_in(value)
        if units:
            stray_units.extend(units)
            value = _UNIT_RE.sub("", value)
            repairs.append(f"removed {len(units)} speech unit(s) from {key!r}")
        out.fields[key] = value
    if speech is None:
        if stray_units:
            repairs.append(f"missing {SPEECH_KEY!r}; used {len(stray_units)} speech unit(s) found outside it")
            out.units = stray_units
        else:
            repairs.append(f"missing {SPEECH_KEY!r}")
        return out
    units, bad = units_in(speech)
    if bad:
        repairs.append(f"dropped {bad} speech unit(s) outside [0, {NUM_UNITS})")
    leftover = _UNIT_RE.sub("", speech).strip()
    if leftover:
        repairs.append(f"ignored non-unit text in {SPEECH_KEY!r}: {leftover[:40]!r}")
    if not units and stray_units:
        repairs.append(f"{SPEECH_KEY!r} holds no units; used {len(stray_units)} found outside it")
        units = stray_units
    elif stray_units:
        repairs.append(f"ignored {len(stray_units)} speech unit(s) outside {SPEECH_KEY!r}")
    out.units = units
    out.fields[SPEECH_KEY] = "".join(f"<|speech_{u}|>" for u in units)
    return out


# ------------------------------------------------------------------------------------- strict path
def _strict(text: str) -> ParsedAnswer | None:
    """The well-formed case (possibly with stray text around the object); None if it is not JSON."""
    start = text.find("{")
    if start < 0:
        return None
    body = _FULLWIDTH_SEP_RE.sub('", "', text[start:])
    try:
        obj, end = json.JSONDecoder().raw_decode(body)
    except (json.JSONDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(obj, dict):
        return None
    repairs: list[str] = []
    if text[:start].strip():
        repairs.append(f"ignored {len(text[:start].strip())} character(s) before the JSON object")
    if body[end:].strip():
        repairs.append(f"ignored {len(body[end:].strip())} character(s) after the JSON object")
    fields: dict[str, str | None] = {}
    lower = {str(k).strip().lower(): k for k in obj}
    for key in ANSWER_KEYS:
        if key in obj:
            raw_key = key
        elif key in lower:
            raw_key = lower[key]
            repairs.append(f"matched key {raw_key!r} to {key!r}")
        else:
            continue
        value = obj[raw_key]
        if not isinstance(value, str):
            repairs.append(f"{key!r} was {type(value).__name__}, not a string")
            value = "" if value is None else (json.dumps(value) if isinstance(value, (list, dict)) else str(value))
        fields[key] = value
    unknown = [k for k in obj if str(k).strip().lower() not in ANSWER_KEYS]
    if unknown:
        repairs.append(f"ignored unknown key(s) {unknown[:5]}")
    speech = fields.pop(SPEECH_KEY, None)
    stray = units_in(text[:start])[0] + units_in(body[end:])[0]  # units written outside the object
    return _finish(fields, speech, stray, repairs)


# ------------------------------------------------------------------------------------ lenient path
def _lenient(text: str) -> ParsedAnswer:
    repairs = ["the answer is not valid JSON; recovered fields by key"]
    found: list[tuple[int, int, str]] = []  # (key start, value start, canonical key)
    seen: set[str] = set()
    for m in _KEY_RE.finditer(text):
        key = m.group(1).lower()
        if key in seen:
            repairs.append(f"ignored a repeated {key!r}")
            continue
        seen.add(key)
        found.append((m.start(), m.end(), key))
    if not found:
        units, _ = units_in(text)
        plain = _UNIT_RE.sub("", text).strip()
        if plain.startswith("{"):  # a JSON answer cut off before its first key
            repairs[0] = "the JSON answer holds no answer keys; nothing recovered"
            return _finish({}, None, units, repairs)
        repairs[0] = "no answer keys found; used the whole output as the reply text"
        fields: dict[str, str | None] = {"assistant response text": plain}
        return _finish(fields, None, units, repairs)
    before = text[: found[0][0]].strip().lstrip("{").strip()
    if before:
        repairs.append(f"ignored {len(before)} character(s) before the first key")
    fields = {}
    speech: str | None = None
    stray: list[int] = []
    for i, (_, vstart, key) in enumerate(found):
        vend = found[i + 1][0] if i + 1 < len(found) else len(text)
        region = text[vstart:vend]
        stripped = region.lstrip()
        if stripped.startswith('"'):
            body, end, terminated = _read_string(stripped, 0)
            value = _loose_unescape(body)
            if not terminated:
                value = value.rstrip(_VALUE_TRAIL) if key != SPEECH_KEY else value
                repairs.append(f"unterminated string for {key!r}")
            tail = stripped[end:].strip(_VALUE_TRAIL)
            if tail:
                tail_units, _ = units_in(tail)
                if key == SPEECH_KEY:
                    value += tail
                    if tail_units:
                        repairs.append(f"{len(tail_units)} speech unit(s) after the closing quote of {key!r}")
                else:
                    stray.extend(tail_units)
                    repairs.append(f"ignored text after the value of {key!r}: {tail[:40]!r}")
        else:
            value = stripped.rstrip(_VALUE_TRAIL).strip().strip('"')
            if value:
                repairs.append(f"unquoted value for {key!r}")
            if key in LABELS:  # a bare label ends at the first separator
                value = re.split(r"[\s,\uff0c}]", value, maxsplit=1)[0] if value else value
        if key == SPEECH_KEY:
            speech = value
        else:
            fields[key] = value
    return _finish(fields, speech, stray, repairs)


# ------------------------------------------------------------------------------------------ public
def parse_answer(text: str) -> ParsedAnswer:
    """Parse the model's dialogue answer. Never raises on any string; see `ParsedAnswer.repairs`."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    if not text.strip():
        out = _finish({}, None, [], ["the answer is empty"])
        return out
    try:
        strict = _strict(text)
        if strict is not None:
            return strict
        return _lenient(text)
    except Exception as exc:  # noqa: BLE001 — the contract is "never raises on model output"
        out = ParsedAnswer(repairs=[f"could not parse the answer ({type(exc).__name__}: {exc}); nothing recovered"])
        out.units, _ = units_in(text)
        return out


def partial_string_field(text: str, key: str) -> tuple[str | None, bool]:
    """The value of string field `key` in a (possibly truncated) answer prefix: (value so far, complete).
    (None, False) while the key or its opening quote has not appeared yet. A trailing partial escape
    is held back, so successive calls on growing prefixes give growing values."""
    m = None
    for cand in _KEY_RE.finditer(text):
        if cand.group(1).lower() == key:
            m = cand
            break
    if m is None:
        return None, False
    rest = text[m.end() :]
    lead = len(rest) - len(rest.lstrip())
    if not rest[lead:].startswith('"'):
        return None, False
    body, _, terminated = _read_string(rest, lead)
    if not terminated:
        tail = re.search(r"(\\+)(u[0-9a-fA-F]{0,3})?$", body)  # an escape not finished yet
        if tail and len(tail.group(1)) % 2 == 1:
            body = body[: tail.end(1) - 1]
    return _loose_unescape(body), terminated


__all__ = ["ParsedAnswer", "parse_answer", "partial_string_field", "units_in", "LABELS", "SPEECH_KEY"]
