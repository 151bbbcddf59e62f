"""EMOVA's unit-to-speech decoder: VITS `SynthesizerTrn` as used by the official speech tokenizer (UVITS)."""

from emova.speech.vits.config import VitsConfig
from emova.speech.vits.synthesizer import SynthesizerTrn

__all__ = ["SynthesizerTrn", "VitsConfig"]
