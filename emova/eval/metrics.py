"""Small, dependency-free metrics shared by the evaluation suites."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance between two sequences (of phones, units, words…)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def normalised_edit_distance(a: Sequence, b: Sequence) -> float:
    """Edit distance / length of the longer sequence, in [0, 1]."""
    n = max(len(a), len(b))
    return edit_distance(a, b) / n if n else 0.0


def error_rate(refs: list[Sequence], hyps: list[Sequence]) -> float:
    """Corpus-level error rate: total edits / total reference length (PER, WER…)."""
    if len(refs) != len(hyps):
        raise ValueError("refs and hyps differ in length")
    total = sum(len(r) for r in refs)
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / max(1, total)


def unit_perplexity(units: list[list[int]]) -> float:
    """exp(entropy) of how often each unit is used, over all frames."""
    c = Counter(u for seq in units for u in seq)
    n = sum(c.values())
    if n == 0:
        return 0.0
    h = -sum(v / n * math.log(v / n) for v in c.values())
    return math.exp(h)
