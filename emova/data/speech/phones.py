"""One phone set for the whole project: espeak-ng's en-us phoneme mnemonics (`espeak-ng -x`).

The transcript of a text is what `espeak-ng -q -x --sep=_ -v en-us` prints, with stress and
syllable marks removed and allophone variant digits folded (`@2` → `@`, `O2` → `O`), so that a
word's phones do not depend on which engine or voice spoke it. Word boundaries are dropped.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache

# The inventory (stress/variant marks removed). Index 0 is reserved for the CTC blank.
PHONES: tuple[str, ...] = (
    "@", "@L", "3", "3:", "A:", "A@", "E", "I", "I@", "O", "O:", "O@", "OI", "U", "U@", "V", "a", "a#", "aI",
    "aI@", "aU", "aa", "b", "d", "dZ", "D", "e@", "eI", "f", "g", "h", "i", "i:", "i@", "j", "k", "l", "m", "n",
    "N", "oU", "p", "r", "r-", "s", "S", "t", "tS", "T", "u:", "v", "w", "z", "Z", "x", "?", "n-", "m-", "l-",
    "0", "t#", "I#", "o@", "A", "e", "o", "u", "aI3", "W",
)
BLANK = 0
PHONE_TO_ID = {p: i + 1 for i, p in enumerate(PHONES)}
VOCAB_SIZE = len(PHONES) + 1

def _normalise(token: str) -> list[str]:
    tok = token.replace("'", "").replace(",", "").replace("%", "").replace("=", "")
    if not tok:
        return []
    if tok in PHONE_TO_ID:
        return [tok]
    stripped = tok.rstrip("0123456789")
    if stripped in PHONE_TO_ID:
        return [stripped]
    # espeak sometimes glues two mnemonics (e.g. "aI3"); split greedily by longest known prefix
    out: list[str] = []
    i = 0
    while i < len(stripped):
        for j in range(len(stripped), i, -1):
            if stripped[i:j] in PHONE_TO_ID:
                out.append(stripped[i:j])
                i = j
                break
        else:
            i += 1  # unknown symbol: dropped (rare: punctuation-like marks)
    return out


@lru_cache(maxsize=65536)
def text_to_phones(text: str) -> tuple[str, ...]:
    """Phones of `text` (en-us espeak-ng transcription)."""
    if not text.strip():
        raise ValueError("cannot transcribe empty text")
    proc = subprocess.run(
        ["espeak-ng", "-q", "-x", "--sep=_", "-v", "en-us", text], capture_output=True, text=True, check=True
    )
    phones: list[str] = []
    for word in proc.stdout.split():
        for token in word.split("_"):
            phones.extend(_normalise(token))
    return tuple(phones)


def phones_to_ids(phones: tuple[str, ...] | list[str]) -> list[int]:
    return [PHONE_TO_ID[p] for p in phones]


def ctc_collapse(best: list[int]) -> list[int]:
    """Greedy CTC decoding of per-frame argmax ids: merge repeats, drop blanks."""
    return [b for k, b in enumerate(best) if b != BLANK and (k == 0 or b != best[k - 1])]


def ids_to_phones(ids: list[int]) -> list[str]:
    return [PHONES[i - 1] for i in ids if i != BLANK]
