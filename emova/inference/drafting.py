"""Draft tokens for speculative decoding of EMOVA's spoken-dialogue answer.

The answer is one JSON object with `ANSWER_KEYS` in a fixed order (`format_answer`): about half of its
non-unit tokens are the skeleton — `{"user question text": "`, `", "user question emotion": "`, … — which
the model has to produce one forward pass per token although nothing about them is in doubt. The
drafter reads the text generated so far, works out where in the skeleton it stands and, when the next
characters are skeleton (a value just closed, or the answer has not begun), proposes their tokens.
`generate_tokens` checks a whole proposal in one forward pass and keeps the longest prefix the model
itself would have produced, so greedy output is unchanged; only the number of sequential passes drops
(which is what the time to the first reply unit, and so the time to first audio, is made of).

The emotion and pitch values are labels: once the value written so far can only become one label, the
drafter proposes the rest of it (and the skeleton after it), and `AnswerDrafter.allowed` names the tokens
that may open a label still open to choice — with `Emova.structured_answers` the pipeline keeps the model
to those (`GenerationSettings.allow`), so a label value is always one of `EMOTIONS` / `PITCHES`; the
speech value likewise holds units only, up to its closing quote.
"""

from __future__ import annotations

import re
from typing import Any

from emova.inference.json_repair import LABELS, _read_string
from emova.model.prompts import ANSWER_KEYS


def _opener(key: str) -> str:
    return f'"{key}": "'


_OPENERS = re.compile("|".join(re.escape(_opener(k)) for k in ANSWER_KEYS))


def _last_value(body: str) -> tuple[list[str], str, int, bool] | None:
    """Where an answer prefix stands: the keys opened so far, the last value (so far), where its string
    ends, and whether it is closed; None before the first key."""
    openers = list(_OPENERS.finditer(body))
    if not openers:
        return None
    value, end, closed = _read_string(body, openers[-1].end() - 1)  # the opener ends with the value's quote
    return [m.group(0)[1:-4] for m in openers], value, end, closed


def _after(n_keys: int) -> str:
    """The skeleton that follows the value of the n_keys-th key."""
    return "}" if n_keys == len(ANSWER_KEYS) else ", " + _opener(ANSWER_KEYS[n_keys])


def _open_value(text: str) -> tuple[str, str] | None:
    """(key, value so far) when an answer prefix that follows the format stops inside a value; else None."""
    at = _last_value(text.lstrip())
    if at is None or at[3] or at[0] != list(ANSWER_KEYS[: len(at[0])]):
        return None
    return at[0][-1], at[1]


def _label_endings(key: str, value: str) -> list[str]:
    """Inside the open value of `key`: each way it may still end (the rest of a label it can become, the
    closing quote and the skeleton after it); [] for a free-text value or one already off every label."""
    labels = LABELS.get(key, ())
    after = '"' + _after(ANSWER_KEYS.index(key) + 1) if labels else ""
    return [lab[len(value):] + after for lab in labels if lab.startswith(value)]


def label_endings(text: str) -> list[str]:
    """The ways an answer prefix that stops inside a label value (an emotion or a pitch) may go on to the
    next key; [] anywhere else."""
    at = _open_value(text)
    return _label_endings(*at) if at else []


def skeleton_continuation(text: str) -> str | None:
    """The characters that must follow `text` (a prefix of an answer): the skeleton after a closed value,
    or the rest of a label value once only one label can complete it (and the skeleton after that); None
    inside a free-text value, where a label is still open to choice, or off the format (nothing proposed)."""
    body = text.lstrip()
    first = "{" + _opener(ANSWER_KEYS[0])
    at = _last_value(body)
    if at is None:
        return first[len(body):] if first.startswith(body) else None
    keys, value, end, closed = at
    if not closed:
        ordered = keys == list(ANSWER_KEYS[: len(keys)])
        endings = _label_endings(keys[-1], value) if ordered else []
        return endings[0] if len(endings) == 1 else None
    tail, expected = body[end:], _after(ANSWER_KEYS.index(keys[-1]) + 1)
    return expected[len(tail):] if expected.startswith(tail) and len(tail) < len(expected) else None


class AnswerDrafter:
    """`drafter(produced_ids) -> proposed next ids` for the spoken-dialogue answer (see module doc)."""

    def __init__(self, processor: Any, max_draft: int = 16) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._units = set(processor.speech_token_ids)
        self._unit_ids = sorted(self._units)
        quote = self.tokenizer.encode('<|speech_0|>"', add_special_tokens=False)[-1]  # closes the speech value
        self._after_unit = self._unit_ids + [quote]
        self.max_draft = max_draft
        self.proposed = 0  # counters, for benchmarks and tests
        self.calls = 0
        self._decoded: tuple[list[int], str] = ([], "")  # the last decode: the drafter and `allowed` share it

    def __call__(self, produced: list[int]) -> list[int]:
        self.calls += 1
        if produced and produced[-1] in self._units:
            return []  # inside the speech value: nothing to propose, and no need to decode everything again
        text = self._text(produced)
        cont = skeleton_continuation(text)
        if not cont:
            return []
        draft = self._extension(produced, text, cont)[: self.max_draft]
        self.proposed += len(draft)
        return draft

    def allowed(self, produced: list[int]) -> list[int] | None:
        """The only token ids that may come next (for `GenerationSettings.allow`): inside an emotion or pitch
        value still open to choice, the first token of each label it can become; in the speech value, units
        (and, once one is there, its closing quote); None anywhere else."""
        if produced and produced[-1] in self._units:
            return self._after_unit  # units come only in the speech value: more of them, or its end
        text = self._text(produced)
        at = _open_value(text)
        if at == (ANSWER_KEYS[-1], ""):
            return self._unit_ids  # the speech value has just opened: it begins with a unit
        endings = _label_endings(*at) if at else []
        if len(endings) < 2:
            return None  # free text, off the format, or one way left (which the drafter writes)
        firsts = {ext[0] for e in endings if (ext := self._extension(produced, text, e))}
        return sorted(firsts) or None

    def _text(self, produced: list[int]) -> str:
        """`produced` decoded; the pipeline and the eval ask the drafter and `allowed` at the same position."""
        if self._decoded[0] != produced:
            self._decoded = (list(produced), self.processor.decode(produced, skip_special_tokens=True))
        return self._decoded[1]

    def _extension(self, produced: list[int], text: str, cont: str) -> list[int]:
        """The ids of `cont` after `produced` (whose text is `text`). BPE may merge the continuation's first
        characters with the last generated ones: re-tokenise text + continuation and keep what extends
        the ids already produced."""
        full = self.tokenizer.encode(text + cont, add_special_tokens=False)
        if full[: len(produced)] == produced:
            return full[len(produced):]
        return self.tokenizer.encode(cont, add_special_tokens=False)


def answer_unfinished(text: str) -> bool:
    """True while `text` is an unfinished answer that follows the format: the keys so far are ANSWER_KEYS in
    order and the closing brace has not come. Text off the format gives False (the model may stop)."""
    body = text.lstrip()
    first = "{" + _opener(ANSWER_KEYS[0])
    if not body.startswith(first):
        return first.startswith(body)  # the answer has not begun (or has begun right)
    keys, _, end, closed = _last_value(body)  # never None here: `first` holds an opener
    if keys != list(ANSWER_KEYS[: len(keys)]):
        return False  # a key repeated, skipped or out of order: off the format
    if not closed:
        return True  # inside a value
    tail = body[end:]
    if len(keys) < len(ANSWER_KEYS):
        return _after(len(keys)).startswith(tail)  # on the way to the next key
    return tail.strip() == ""  # after the last value, only the closing brace may end it


class AnswerGuard:
    """`guard(produced_ids) -> bool`: True while the spoken answer may not end (`answer_unfinished`); for
    `GenerationSettings.hold_stop`."""

    def __init__(self, processor: Any) -> None:
        self.processor = processor
        self._units = set(processor.speech_token_ids)

    def __call__(self, produced: list[int]) -> bool:
        if produced and produced[-1] in self._units:
            return True  # inside the speech value
        return answer_unfinished(self.processor.decode(produced, skip_special_tokens=True))


__all__ = ["AnswerDrafter", "AnswerGuard", "answer_unfinished", "label_endings",
           "skeleton_continuation"]
