"""EMOVA's trained prompts, verbatim.

Source: emova-ollm/EMOVA, `emova/serve/gradio_web_server.py` (`asr_format`, `tts_format`, `chat_format`),
the same `chat_format` is printed in `assets/docs/Data.md`; the default system prompt is `conv_qwen2` in
`emova/conversation.py`. The released models were trained on these exact strings, so they are kept as
they are — including the misspelling "follwing", the full-width comma (U+FF0C) before the last JSON key,
and the *literal* backslash-n pairs in CHAT_PROMPT (the original is a Python raw string r'...', so its
"\\n" are the two characters backslash and n, not newlines).
"""

from __future__ import annotations

ASR_PROMPT = "Please recognize the text corresponding to the follwing speech.\n"
TTS_PROMPT = "Please synthesize the speech corresponding to the follwing text.\n"

CHAT_PROMPT = (
    r"Please recognize the texts, emotion and pitch from the user question speech units and provide the texts, "
    r"emotion, pitch and speech units for the assistant response. \nEmotion should be chosen from "
    r'["neutral", "happy", "sad", "angry", "surprised", "disgusted", "fearful"]. \nPitch should be chosen from '
    r'["low", "normal", "high"].\nYour output should be in json format.\nAn output example is:\n'
    r'{"user question text": "", "user question emotion": "", "user question pitch": "", '
    r'"assistant response text": "", "assistant response emotion": "", "assistant response pitch": ""'
    "\uff0c"
    r'"assistant response speech": ""}\n\nuser question speech:'
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

#: keys of the spoken-dialogue answer, in the trained order
ANSWER_KEYS: tuple[str, ...] = (
    "user question text",
    "user question emotion",
    "user question pitch",
    "assistant response text",
    "assistant response emotion",
    "assistant response pitch",
    "assistant response speech",
)
EMOTIONS: tuple[str, ...] = ("neutral", "happy", "sad", "angry", "surprised", "disgusted", "fearful")
PITCHES: tuple[str, ...] = ("low", "normal", "high")


def asr_prompt(unit_string: str) -> str:
    """User turn for speech recognition: prompt + `<|speech_k|>…`."""
    return ASR_PROMPT + unit_string


def tts_prompt(text: str) -> str:
    """User turn for speech synthesis: prompt + the text to speak."""
    return TTS_PROMPT + text


def chat_prompt(unit_string: str) -> str:
    """User turn for emotional spoken dialogue: instruction + the user's speech units."""
    return CHAT_PROMPT + unit_string


def format_answer(values: dict[str, str]) -> str:
    """The assistant's JSON answer with exactly ANSWER_KEYS in order (compact `", "` separators, like
    `json.dumps`). Raises ValueError on missing or unknown keys."""
    import json

    missing = [k for k in ANSWER_KEYS if k not in values]
    extra = [k for k in values if k not in ANSWER_KEYS]
    if missing or extra:
        raise ValueError(f"answer keys: missing {missing}, unknown {extra}; expected {list(ANSWER_KEYS)}")
    return json.dumps({k: values[k] for k in ANSWER_KEYS}, ensure_ascii=False)
