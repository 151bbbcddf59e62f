"""Texts become phones through espeak-ng: in process through its library where it agrees with the program, or
through the `espeak-ng` program (`emova.data.speech.phones`)."""

from __future__ import annotations

import pytest

from emova.data.speech import phones as P

SENTENCES = [
    "What color is the circle?",
    "I am sorry. I know how much the final exam meant to you.",
    "Eww, that is so gross!",
    "Zero plus eight is eight.",
    "Guess what, I just saw a bear in the park!",
    "Tell me where the square is; it's 7 o'clock — don't worry.",
]


@pytest.fixture(autouse=True)
def _fresh_caches():
    P.text_to_phones.cache_clear()
    yield
    P.text_to_phones.cache_clear()


def test_the_library_gives_what_the_program_prints():
    lib = P._library()
    assert lib is not None, "libespeak-ng is installed with espeak-ng (apt) and should be used"
    for text in SENTENCES:
        assert " ".join(lib.lines(text)).split() == P._program_output(text).split(), text


def test_phones_are_the_same_with_and_without_the_library(monkeypatch):
    with_lib = [P.text_to_phones(t) for t in SENTENCES]
    assert all(with_lib) and with_lib[0] == ("w", "V", "t", "k", "V", "l", "3", "r-", "I", "z", "D", "@", "s", "3:",
                                             "k", "@L")
    P.text_to_phones.cache_clear()
    monkeypatch.setattr(P, "_library", lambda: None)
    assert [P.text_to_phones(t) for t in SENTENCES] == with_lib
    assert P.phonemizer_available()
    with pytest.raises(ValueError, match="empty"):
        P.text_to_phones("  ")


def test_a_library_that_disagrees_with_the_program_is_not_used(monkeypatch):
    P._library.cache_clear()
    try:
        monkeypatch.setattr(P._EspeakLibrary, "lines", lambda self, text: ["w_'V_t"])
        assert P._library() is None
        assert P.text_to_phones("What color is the circle?")[:4] == ("w", "V", "t", "k")  # the program's answer
    finally:
        P._library.cache_clear()
