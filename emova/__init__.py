"""emova: EMOVA — an omni-modal LLM that sees, hears and speaks with vivid emotions."""

from __future__ import annotations

from typing import TYPE_CHECKING

from emova.styles import Style

__version__ = "0.1.0"

__all__ = ["Audio", "AudioError", "Style", "SpeechTokenizer", "SpeechDetokenizer", "Emova", "__version__"]

_LAZY = {  # torch and scipy load with the first of these, not with `import emova` (the CLI's --help stays fast)
    "Audio": "emova.audio",
    "AudioError": "emova.audio",
    "SpeechTokenizer": "emova.speech.tokenizer",
    "SpeechDetokenizer": "emova.speech.detokenizer",
    "Emova": "emova.inference.pipeline",
}


def __getattr__(name: str):  # lazy: importing emova stays cheap
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'emova' has no attribute {name!r}")


if TYPE_CHECKING:  # pragma: no cover
    from emova.audio import Audio, AudioError
    from emova.inference.pipeline import Emova
    from emova.speech.detokenizer import SpeechDetokenizer
    from emova.speech.tokenizer import SpeechTokenizer
