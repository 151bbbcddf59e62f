"""LLaVA-style JSON records, as EMOVA's released datasets use them, and the speech hand-off.

A record is `{"id": str, "image": "images/x.png" (optional), "conversations": [{"from": "human",
"value": ...}, {"from": "gpt", "value": ...}, ...]}`; the first human turn of an image record starts
with `<image>\\n`. Tiny-world records add two fields of their own: `meta` (answers, labels,
template ids — for evaluation) and, until audio is rendered, `speech`.

Speech hand-off. Records that hold speech are written with the TEXT to say and the STYLE to say it
in, and a placeholder `<<speech:KEY>>` where the unit string will go:

    "speech": [{"key": "dlg-train-00001/user", "text": "I lost my dog.", "role": "input",
                "style": "gender-female_emotion-sad_speed-slow_pitch-low"}, ...]

`records_needing_speech(records)` lists what must be rendered (one `SpeechRequest` per key);
the speech side renders each request, tokenizes it and calls
`fill_speech_units(records, {key: units})`, which swaps every placeholder for
`<|speech_i|>…` and moves `speech` into `meta["speech"]`. Role "input" is what the user says (goes
into a human turn: ASR, spoken questions); role "output" is what the model says (goes into a gpt
turn: TTS targets, `assistant response speech`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from emova.model.prompts import ANSWER_KEYS, ASR_PROMPT, CHAT_PROMPT, TTS_PROMPT
from emova.styles import EMOTIONS, PITCHES, Style

IMAGE_TOKEN = "<image>"
# The trained prompts, verbatim (misspelling, literal backslash-n pairs and full-width comma included),
# and the answer keys in order: one source of truth, shared with the model's processor.
SPOKEN_DIALOGUE_PROMPT = CHAT_PROMPT
DIALOGUE_KEYS: tuple[str, ...] = ANSWER_KEYS
SPEECH_ROLES = ("input", "output")
RECORD_FIELDS = frozenset({"id", "image", "conversations", "speech", "meta"})

_PLACEHOLDER_RE = re.compile(r"<<speech:([A-Za-z0-9_.:/-]+)>>")
_UNITS_RE = re.compile(r"^(?:<\|speech_(\d+)\|>)+$")
_UNIT_RE = re.compile(r"<\|speech_(\d+)\|>")
N_UNITS = 4096


class RecordError(ValueError):
    """A record that breaks the format; the message names the record id and the problem."""


@dataclass(frozen=True)
class SpeechRequest:
    """One utterance to render: say `text` in `style`; its units replace `<<speech:key>>`."""

    key: str
    text: str
    style: str
    role: str  # "input" (user speech) or "output" (model speech)
    record_id: str


def placeholder(key: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9_.:/-]+", key):
        raise ValueError(f"speech key {key!r} may only use letters, digits and _ . : / -")
    return f"<<speech:{key}>>"


def units_to_string(units: Sequence[int]) -> str:
    """`[12, 7]` → `<|speech_12|><|speech_7|>` (no reduction: pass reduced units)."""
    bad = [u for u in units if not isinstance(u, int) or not 0 <= u < N_UNITS]
    if bad:
        raise ValueError(f"speech units must be ints in [0, {N_UNITS}); got {bad[:5]}")
    return "".join(f"<|speech_{u}|>" for u in units)


# ------------------------------------------------------------------------------------------ builders
def _turns(*values: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": v} for i, v in enumerate(values)]


def _speech(key: str, text: str, style: str | Style, role: str) -> dict:
    return {"key": key, "text": text, "style": str(Style.parse(style)), "role": role}


def image_record(rid: str, image: str, turns: Sequence[tuple[str, str]], meta: dict | None = None) -> dict:
    """An image conversation: [(question, answer), ...]; `<image>\\n` opens the first question."""
    values: list[str] = []
    for i, (q, a) in enumerate(turns):
        values += [(IMAGE_TOKEN + "\n" + q) if i == 0 else q, a]
    return {"id": rid, "image": image, "conversations": _turns(*values), "meta": meta or {}}


def text_record(rid: str, question: str, answer: str, meta: dict | None = None) -> dict:
    """A typed question and its typed answer, no image."""
    return {"id": rid, "conversations": _turns(question, answer), "meta": meta or {}}


def asr_record(rid: str, text: str, style: str | Style, meta: dict | None = None) -> dict:
    """Speech in (rendered from `text` in `style`), its transcript out."""
    key = f"{rid}/in"
    return {
        "id": rid, "conversations": _turns(ASR_PROMPT + placeholder(key), text),
        "speech": [_speech(key, text, style, "input")], "meta": meta or {},
    }  # fmt: skip


def tts_record(rid: str, text: str, style: str | Style, meta: dict | None = None) -> dict:
    """Text in, speech units out (the units are content only; `style` is how to render them)."""
    key = f"{rid}/out"
    return {
        "id": rid, "conversations": _turns(TTS_PROMPT + text, placeholder(key)),
        "speech": [_speech(key, text, style, "output")], "meta": meta or {},
    }  # fmt: skip


def dialogue_answer(
    user_text: str, user_emotion: str, user_pitch: str,
    reply_text: str, reply_emotion: str, reply_pitch: str, reply_speech: str,
) -> str:  # fmt: skip
    """The gpt turn of a spoken dialogue: one JSON object with `DIALOGUE_KEYS` in order."""
    values = (user_text, user_emotion, user_pitch, reply_text, reply_emotion, reply_pitch, reply_speech)
    return json.dumps(dict(zip(DIALOGUE_KEYS, values)), ensure_ascii=False)


def spoken_dialogue_record(
    rid: str,
    user_text: str, user_emotion: str, user_pitch: str, user_style: str | Style,
    reply_text: str, reply_emotion: str, reply_pitch: str, reply_style: str | Style,
    image: str | None = None,
    meta: dict | None = None,
) -> dict:  # fmt: skip
    """A spoken turn (optionally about an image) answered with the JSON of `DIALOGUE_KEYS`."""
    uk, rk = f"{rid}/user", f"{rid}/reply"
    human = (IMAGE_TOKEN + "\n" if image else "") + SPOKEN_DIALOGUE_PROMPT + placeholder(uk)
    gpt = dialogue_answer(user_text, user_emotion, user_pitch, reply_text, reply_emotion, reply_pitch,
                          placeholder(rk))
    rec = {
        "id": rid, "conversations": _turns(human, gpt),
        "speech": [_speech(uk, user_text, user_style, "input"), _speech(rk, reply_text, reply_style, "output")],
        "meta": meta or {},
    }  # fmt: skip
    if image:
        rec = {"id": rid, "image": image, **{k: v for k, v in rec.items() if k != "id"}}
    return rec


# ---------------------------------------------------------------------------------------- hand-off
def records_needing_speech(records: Iterable[Mapping]) -> list[SpeechRequest]:
    """Every utterance still to render, one per key, in record order."""
    out: dict[str, SpeechRequest] = {}
    for rec in records:
        for s in rec.get("speech", []):
            req = SpeechRequest(s["key"], s["text"], s["style"], s["role"], str(rec["id"]))
            if s["key"] in out and (out[s["key"]].text, out[s["key"]].style) != (req.text, req.style):
                raise RecordError(f"record {rec['id']!r}: speech key {s['key']!r} is used for two different utterances")
            out.setdefault(s["key"], req)
    return list(out.values())


def _substitute(value: str, strings: Mapping[str, str]) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: strings.get(m.group(1), m.group(0)), value)


def fill_speech_units(records: Iterable[Mapping], units_by_key: Mapping[str, str | Sequence[int]]) -> list[dict]:
    """Copies of `records` with every `<<speech:KEY>>` replaced by the units of KEY.

    `units_by_key` maps key → unit string (`<|speech_3|>…`) or list of unit ids (already reduced).
    Raises RecordError naming the record and the keys that have no units. The `speech` field moves
    to `meta["speech"]`, so the text and style that were rendered stay on record.
    """
    filled = []
    for rec in records:
        rec = json.loads(json.dumps(rec))  # deep copy
        speech = rec.pop("speech", [])
        missing = [s["key"] for s in speech if s["key"] not in units_by_key]
        if missing:
            raise RecordError(f"record {rec.get('id')!r}: no speech units for key(s) {', '.join(missing)}")
        strings = {}
        for s in speech:
            units = units_by_key[s["key"]]
            strings[s["key"]] = units if isinstance(units, str) else units_to_string(list(units))
            if not _UNITS_RE.match(strings[s["key"]]):
                raise RecordError(f"record {rec.get('id')!r}: units for {s['key']!r} are empty or malformed")
        for turn in rec["conversations"]:
            turn["value"] = _substitute(turn["value"], strings)
        if speech:
            rec.setdefault("meta", {})["speech"] = speech
        filled.append(rec)
    return filled


# -------------------------------------------------------------------------------------- validation
def _fail(rid: object, problem: str) -> None:
    raise RecordError(f"record {rid!r}: {problem}")


def _check_dialogue_answer(rid: object, value: str) -> None:
    try:
        obj = json.loads(value)
    except json.JSONDecodeError as e:
        _fail(rid, f"spoken-dialogue answer is not valid JSON ({e.msg} at char {e.pos})")
    if not isinstance(obj, dict) or tuple(obj) != DIALOGUE_KEYS:
        _fail(rid, f"spoken-dialogue answer must have exactly the keys {list(DIALOGUE_KEYS)} in order, "
                   f"got {list(obj) if isinstance(obj, dict) else type(obj).__name__}")
    for k in ("user question emotion", "assistant response emotion"):
        if obj[k] not in EMOTIONS:
            _fail(rid, f"{k!r} is {obj[k]!r}; expected one of {', '.join(EMOTIONS)}")
    for k in ("user question pitch", "assistant response pitch"):
        if obj[k] not in PITCHES:
            _fail(rid, f"{k!r} is {obj[k]!r}; expected one of {', '.join(PITCHES)}")
    sp = obj["assistant response speech"]
    if not isinstance(sp, str) or not (_PLACEHOLDER_RE.fullmatch(sp) or _UNITS_RE.match(sp)):
        _fail(rid, "'assistant response speech' must be a speech placeholder or a unit string")


def validate_record(rec: object, image_root: str | os.PathLike | None = None) -> None:
    """Raise RecordError (naming the id and the problem) unless `rec` is a well-formed record."""
    if not isinstance(rec, dict):
        raise RecordError(f"record must be a JSON object, got {type(rec).__name__}")
    rid = rec.get("id")
    if not isinstance(rid, str) or not rid:
        raise RecordError(f"record without a non-empty string 'id' (keys: {sorted(rec)})")
    unknown = set(rec) - RECORD_FIELDS
    if unknown:
        _fail(rid, f"unknown field(s) {sorted(unknown)}; allowed: {sorted(RECORD_FIELDS)}")
    image = rec.get("image")
    if image is not None:
        if not isinstance(image, str) or not image or os.path.isabs(image) or ".." in Path(image).parts:
            _fail(rid, f"'image' must be a relative path inside the data folder, got {image!r}")
        if image_root is not None and not (Path(image_root) / image).is_file():
            _fail(rid, f"image file {image!r} not found under {str(image_root)!r}")
    conv = rec.get("conversations")
    if not isinstance(conv, list) or len(conv) < 2:
        _fail(rid, "'conversations' must be a list of at least one human and one gpt turn")
    if len(conv) % 2:
        _fail(rid, f"'conversations' has {len(conv)} turns; expected human/gpt pairs")
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or set(turn) != {"from", "value"}:
            _fail(rid, f"turn {i} must be an object with exactly 'from' and 'value'")
        want = "human" if i % 2 == 0 else "gpt"
        if turn["from"] != want:
            _fail(rid, f"turn {i} is from {turn['from']!r}; expected {want!r} (turns alternate, human first)")
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            _fail(rid, f"turn {i} has an empty or non-string value")
    n_img = sum(t["value"].count(IMAGE_TOKEN) for t in conv)
    if image is not None and (n_img != 1 or not conv[0]["value"].startswith(IMAGE_TOKEN + "\n")):
        _fail(rid, f"an image record needs exactly one '{IMAGE_TOKEN}\\n' opening the first turn (found {n_img})")
    if image is None and n_img:
        _fail(rid, f"'{IMAGE_TOKEN}' appears but the record has no 'image'")
    for i in range(0, len(conv), 2):
        q = conv[i]["value"]
        if q.removeprefix(IMAGE_TOKEN + "\n").startswith(SPOKEN_DIALOGUE_PROMPT):
            _check_dialogue_answer(rid, conv[i + 1]["value"])
    speech = rec.get("speech", [])
    if not isinstance(speech, list):
        _fail(rid, "'speech' must be a list")
    keys = set()
    for s in speech:
        if not isinstance(s, dict) or set(s) != {"key", "text", "style", "role"}:
            _fail(rid, "each 'speech' entry needs exactly 'key', 'text', 'style', 'role'")
        if s["role"] not in SPEECH_ROLES:
            _fail(rid, f"speech {s['key']!r} has role {s['role']!r}; expected 'input' or 'output'")
        if not isinstance(s["text"], str) or not s["text"].strip():
            _fail(rid, f"speech {s['key']!r} has no text")
        try:
            Style.parse(s["style"])
        except ValueError as e:
            _fail(rid, f"speech {s['key']!r}: {e}")
        keys.add(s["key"])
    used = {m for t in conv for m in _PLACEHOLDER_RE.findall(t["value"])}
    if used - keys:
        _fail(rid, f"placeholder(s) {sorted(used - keys)} have no 'speech' entry")
    if keys - used:
        _fail(rid, f"'speech' entries {sorted(keys - used)} are not used in any turn")
    if "meta" in rec and not isinstance(rec["meta"], dict):
        _fail(rid, "'meta' must be an object")


def save_records(path: str | os.PathLike, records: Sequence[dict]) -> None:
    """Validate and write a JSON list atomically (a temporary file renamed into place)."""
    seen: set[str] = set()
    for rec in records:
        validate_record(rec)
        if rec["id"] in seen:
            raise RecordError(f"record {rec['id']!r}: duplicate id")
        seen.add(rec["id"])
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(list(records), ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def load_records(path: str | os.PathLike, image_root: str | os.PathLike | None = None) -> list[dict]:
    """Read and validate a JSON list of records; RecordError names the file, record and problem."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise RecordError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
    seen: set[str] = set()
    for rec in data:
        try:
            validate_record(rec, image_root)
        except RecordError as e:
            raise RecordError(f"{path}: {e}") from None
        if rec["id"] in seen:
            raise RecordError(f"{path}: record {rec['id']!r}: duplicate id")
        seen.add(rec["id"])
    return data


def speech_units_in(value: str) -> list[int]:
    """The unit ids in a string (e.g. a filled turn)."""
    return [int(u) for u in _UNIT_RE.findall(value)]
