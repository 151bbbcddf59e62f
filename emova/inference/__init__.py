"""Inference: the `Emova` pipeline, JSON answer parsing/repair, streaming events (see docs/python_api.md)."""

from emova.inference.json_repair import ParsedAnswer, parse_answer
from emova.inference.pipeline import ChatResult, Emova, GenerationError
from emova.inference.streaming import AudioChunk, Final, TextDelta

__all__ = ["AudioChunk", "ChatResult", "Emova", "Final", "GenerationError", "ParsedAnswer", "TextDelta", "parse_answer"]
