"""One phone set for the whole project: espeak-ng's en-us phoneme mnemonics (`espeak-ng -x`).

The transcript of a text is what `espeak-ng -q -x --sep=_ -v en-us` prints, with stress and
syllable marks removed and allophone variant digits folded (`@2` → `@`, `O2` → `O`), so that a
word's phones do not depend on which engine or voice spoke it. Word boundaries are dropped.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
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


class _EspeakLibrary:
    """espeak-ng's own library (libespeak-ng, which the `espeak-ng` program is a front end of), called in process:
    `espeak_TextToPhonemes` gives, clause by clause, the lines `espeak-ng -q -x --sep=_` prints, in ~0.2–0.4 ms a
    sentence instead of the ~25–50 ms a new process costs (this VM). It is used only after it gave exactly the program's output
    on a check sentence; otherwise (no library, another version's quirks) the program runs as before."""

    _CHECK = "What color is the circle? Eww, I am sorry; seven plus two is nine."

    def __init__(self) -> None:
        import ctypes
        import ctypes.util

        self._ctypes = ctypes
        self._lock = threading.Lock()  # the library keeps global state: one text at a time
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        lib = ctypes.cdll.LoadLibrary(name)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        if lib.espeak_Initialize(0x02, 0, None, 0) <= 0:  # AUDIO_OUTPUT_SYNCHRONOUS: no sound device is opened
            raise OSError("espeak_Initialize failed")
        if lib.espeak_SetVoiceByName(b"en-us") != 0:
            raise OSError("espeak-ng has no en-us voice")
        self._lib = lib

    def lines(self, text: str) -> list[str]:
        ctypes = self._ctypes
        buf = ctypes.create_string_buffer(text.encode("utf-8"))
        ptr = ctypes.c_void_p(ctypes.addressof(buf))
        out: list[str] = []
        with self._lock:
            while ptr.value:  # 1: UTF-8 text; phonemes as -x mnemonics, '_' between a word's phonemes
                got = self._lib.espeak_TextToPhonemes(ctypes.byref(ptr), 1, ord("_") << 8)
                if got:
                    out.append(got.decode("utf-8"))
        return out


@lru_cache(maxsize=1)
def _library() -> _EspeakLibrary | None:
    """The in-process phonemizer, or None where it is missing or disagrees with the `espeak-ng` program."""
    try:
        lib = _EspeakLibrary()
        if " ".join(lib.lines(_EspeakLibrary._CHECK)).split() != _program_output(_EspeakLibrary._CHECK).split():
            return None
        return lib
    except (OSError, AttributeError, subprocess.SubprocessError, FileNotFoundError):
        return None


def _program_output(text: str) -> str:
    return subprocess.run(["espeak-ng", "-q", "-x", "--sep=_", "-v", "en-us", text], capture_output=True, text=True,
                          check=True).stdout


def phonemizer_available() -> bool:
    """Whether texts can become phones here (espeak-ng's library or program)."""
    return _library() is not None or shutil.which("espeak-ng") is not None


@lru_cache(maxsize=65536)
def text_to_phones(text: str) -> tuple[str, ...]:
    """Phones of `text` (en-us espeak-ng transcription)."""
    if not text.strip():
        raise ValueError("cannot transcribe empty text")
    lib = _library()
    out = " ".join(lib.lines(text)) if lib is not None else _program_output(text)
    phones: list[str] = []
    for word in out.split():
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
