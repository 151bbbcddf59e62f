from __future__ import annotations

import json

import pytest

from emova.model import prompts
from emova.model.processor import EmovaProcessor, reduce_units, speech_token_ids_from_added_tokens
from emova.model.tokenizer_builder import IMAGE_TOKEN, padded_vocab_size


def test_prompts_verbatim():
    assert prompts.ASR_PROMPT == "Please recognize the text corresponding to the follwing speech.\n"
    assert prompts.TTS_PROMPT == "Please synthesize the speech corresponding to the follwing text.\n"
    p = prompts.CHAT_PROMPT
    assert p.startswith("Please recognize the texts, emotion and pitch from the user question speech units")
    assert '"assistant response pitch": ""\uff0c"assistant response speech": ""}' in p  # full-width comma
    assert "\\nEmotion should be chosen from" in p and "\n" not in p  # raw string: literal backslash-n
    assert p.endswith("}\\n\\nuser question speech:")
    # the official line (emova/serve/gradio_web_server.py, `chat_format = r'...'`), copied separately
    official = r'Please recognize the texts, emotion and pitch from the user question speech units and provide the texts, emotion, pitch and speech units for the assistant response. \nEmotion should be chosen from ["neutral", "happy", "sad", "angry", "surprised", "disgusted", "fearful"]. \nPitch should be chosen from ["low", "normal", "high"].\nYour output should be in json format.\nAn output example is:\n{"user question text": "", "user question emotion": "", "user question pitch": "", "assistant response text": "", "assistant response emotion": "", "assistant response pitch": ""，"assistant response speech": ""}\n\nuser question speech:'  # noqa: E501
    assert p == official


def test_answer_format_keys_in_order():
    values = {k: str(i) for i, k in enumerate(reversed(prompts.ANSWER_KEYS))}
    assert list(json.loads(prompts.format_answer(values))) == list(prompts.ANSWER_KEYS)
    with pytest.raises(ValueError, match="missing"):
        prompts.format_answer({"user question text": "x"})


def test_tokenizer_layout(tokenizer):
    vocab = tokenizer.get_vocab()
    assert len(tokenizer) == 4868 and padded_vocab_size(len(tokenizer)) == 4992
    assert vocab["<|speech_0|>"] + 4095 == vocab["<|speech_4095|>"]
    assert vocab[IMAGE_TOKEN] == vocab["<|speech_4095|>"] + 1 == 4867
    s = "<|speech_3|><|speech_4095|>"
    ids = tokenizer(s, add_special_tokens=False).input_ids
    assert ids == [vocab["<|speech_3|>"], vocab["<|speech_4095|>"]]
    assert tokenizer.decode(ids, skip_special_tokens=True) == s  # speech tokens survive skip_special


def test_units_round_trip(processor):
    assert reduce_units([5, 5, 7, 7, 5]) == [5, 7, 5]
    s = processor.units_to_string([12, 12, 7])
    assert s == "<|speech_12|><|speech_7|>"
    assert processor.string_to_units("x" + s + "}") == [12, 7]
    ids = processor.tokenizer(s, add_special_tokens=False).input_ids
    assert processor.ids_to_units(ids) == [12, 7]
    with pytest.raises(ValueError, match="speech units"):
        processor.units_to_string([4096])


def test_speech_ids_from_added_tokens_not_sequential(tmp_path, tokenizer):
    table = {f"<|speech_{k}|>": 1000 + (k * 7919) % 4096 for k in range(4096)}  # a permutation
    table["<image>"] = 9999
    (tmp_path / "added_tokens.json").write_text(json.dumps(table))
    ids = speech_token_ids_from_added_tokens(tmp_path)
    assert ids[1] == 1000 + 7919 % 4096 and len(set(ids)) == 4096
    p = EmovaProcessor(tokenizer, speech_token_ids=ids)
    assert p.ids_to_units([ids[42], ids[7]]) == [42, 7]
    del table["<|speech_9|>"]
    (tmp_path / "added_tokens.json").write_text(json.dumps(table))
    with pytest.raises(ValueError, match="speech_9"):
        speech_token_ids_from_added_tokens(tmp_path)
