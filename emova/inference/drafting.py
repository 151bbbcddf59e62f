"""Draft tokens for speculative decoding of EMOVA's spoken-dialogue answer.

The answer is one JSON object with `ANSWER_KEYS` in a fixed order (`format_answer`): about half of its
non-unit tokens are the skeleton — `{"user question text": "`, `", "user question emotion": "`, … — which
the model has to produce one forward pass per token although nothing about them is in doubt. The
drafter reads the text generated so far, works out where in the skeleton it stands and, when the next
characters are skeleton (a value just closed, or the answer has not begun), proposes their tokens.
`generate_tokens` checks a whole proposal in one forward pass and keeps the longest prefix the model
itself would have produced, so greedy output is unchanged; only the number of sequential passes drops
(which is what the time to the first reply unit, and so the time to first audio, is made of).
"""

from __future__ import annotations

import re
from typing import Any

from emova.inference.json_repair import _read_string
from emova.model.prompts import ANSWER_KEYS


def _opener(key: str) -> str:
    return f'"{key}": "'


_OPENERS = re.compile("|".join(re.escape(_opener(k)) for k in ANSWER_KEYS))


def _last_value(body: str) -> tuple[list[str], int, bool] | None:
    """Where an answer prefix stands: the keys opened so far, where the last value's string ends, and
    whether it is closed; None before the first key."""
    openers = list(_OPENERS.finditer(body))
    if not openers:
        return None
    _, end, closed = _read_string(body, openers[-1].end() - 1)  # the opener ends with the value's opening quote
    return [m.group(0)[1:-4] for m in openers], end, closed


def _after(n_keys: int) -> str:
    """The skeleton that follows the value of the n_keys-th key."""
    return "}" if n_keys == len(ANSWER_KEYS) else ", " + _opener(ANSWER_KEYS[n_keys])


def skeleton_continuation(text: str) -> str | None:
    """The skeleton characters that must follow `text` (a prefix of an answer), or None when the text
    is inside a value (or does not follow the format, in which case nothing is proposed)."""
    body = text.lstrip()
    first = "{" + _opener(ANSWER_KEYS[0])
    at = _last_value(body)
    if at is None:
        return first[len(body):] if first.startswith(body) else None
    keys, end, closed = at
    if not closed:
        return None  # inside the value
    tail, expected = body[end:], _after(ANSWER_KEYS.index(keys[-1]) + 1)
    return expected[len(tail):] if expected.startswith(tail) and len(tail) < len(expected) else None


class AnswerDrafter:
    """`drafter(produced_ids) -> proposed next ids` for the spoken-dialogue answer (see module doc)."""

    def __init__(self, processor: Any, max_draft: int = 16) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self._units = set(processor.speech_token_ids)
        self.max_draft = max_draft
        self.proposed = 0  # counters, for benchmarks and tests
        self.calls = 0

    def __call__(self, produced: list[int]) -> list[int]:
        self.calls += 1
        if produced and produced[-1] in self._units:
            return []  # inside the speech value: nothing to propose, and no need to decode everything again
        text = self.processor.decode(produced, skip_special_tokens=True)
        cont = skeleton_continuation(text)
        if not cont:
            return []
        # Re-tokenise text + continuation: BPE may merge the continuation's first characters with the
        # last generated ones; propose only what extends the ids already produced.
        full = self.tokenizer.encode(text + cont, add_special_tokens=False)
        if full[: len(produced)] == produced:
            draft = full[len(produced):]
        else:
            draft = self.tokenizer.encode(cont, add_special_tokens=False)
        draft = draft[: self.max_draft]
        self.proposed += len(draft)
        return draft


def answer_unfinished(text: str) -> bool:
    """True while `text` is an unfinished answer that follows the format: the keys so far are ANSWER_KEYS in
    order and the closing brace has not come. Text off the format gives False (the model may stop)."""
    body = text.lstrip()
    first = "{" + _opener(ANSWER_KEYS[0])
    if not body.startswith(first):
        return first.startswith(body)  # the answer has not begun (or has begun right)
    keys, end, closed = _last_value(body)  # never None here: `first` holds an opener
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


__all__ = ["AnswerDrafter", "AnswerGuard", "answer_unfinished", "skeleton_continuation"]
