"""The tokenised template and the label mask must agree exactly; any disagreement fails here."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from emova.model.processor import IGNORE_INDEX, TokenizationMismatchError
from emova.model.prompts import CHAT_PROMPT, TTS_PROMPT

CONVERSATIONS = [
    [{"role": "user", "content": "What color is the circle?"}, {"role": "assistant", "content": "The circle is red."}],
    [{"role": "user", "content": [{"type": "text", "text": CHAT_PROMPT}, {"type": "units", "units": [3, 3, 9, 1]}]},
     {"role": "assistant", "content": '{"user question text": "hi", "assistant response speech": "<|speech_5|><|speech_6|>"}'}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": TTS_PROMPT + "hello there"},
     {"role": "assistant", "content": "<|speech_1|><|speech_2|>"}, {"role": "user", "content": "again?"},
     {"role": "assistant", "content": " Sure, 42 times!\n"}],
]


@pytest.mark.parametrize("messages", CONVERSATIONS)
def test_labels_are_exactly_the_assistant_turns(processor, messages):
    out = processor(messages)
    ids, labels = out["input_ids"][0], out["labels"][0]
    text, _, _ = processor.render(messages)
    # 1. the ids are the tokenisation of the whole rendered template, nothing added or lost
    assert ids.tolist() == processor.tokenizer(text, add_special_tokens=False).input_ids
    # 2. labelled positions carry their own id, the rest -100
    learned = labels != IGNORE_INDEX
    assert torch.equal(labels[learned], ids[learned])
    # 3. the learned tokens decode to exactly the assistant answers + "<|im_end|>\n", in order
    expected = "".join(m["content"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant")
    assert processor.decode(ids[learned], skip_special_tokens=False) == expected
    # 4. and the unlearned part is everything else: removing each answer from the text gives it back
    rest = text
    for m in messages:
        if m["role"] == "assistant":
            rest = rest.replace("assistant\n" + m["content"] + "<|im_end|>\n", "assistant\n", 1)
    assert processor.decode(ids[~learned], skip_special_tokens=False) == rest


def test_template_text_and_units_reduced(processor):
    msgs = [{"role": "user", "content": [{"type": "units", "units": [7, 7, 7, 2]}]}]
    text, spans, _ = processor.render(msgs, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\n<|speech_7|><|speech_2|><|im_end|>\n<|im_start|>assistant\n")
    assert spans == []
    assert (processor(msgs, add_generation_prompt=True)["labels"] == IGNORE_INDEX).all()


def test_boundary_crossing_token_is_an_error(processor):
    # a BPE that merged the header's "\n" with an answer's leading "\n" would give a token that is half
    # prompt, half answer: the mask cannot be exact, so the processor refuses instead of guessing
    text = "<|im_start|>assistant\n\nok<|im_end|>\n"
    span = (len("<|im_start|>assistant\n"), len(text))
    offsets = [(0, 12), (12, 21), (21, 23), (23, 25), (25, 35), (35, 36)]  # token 2 = "\n\n" crosses 22
    with pytest.raises(TokenizationMismatchError, match="crosses the learned span"):
        processor._labels_from_spans([1, 2, 3, 4, 5, 6], offsets, [span])
    ok = [(0, 12), (12, 21), (21, 22), (22, 23), (23, 25), (25, 35), (35, 36)]
    assert processor._labels_from_spans(list(range(7)), ok, [span]) == [-100, -100, -100, 3, 4, 5, 6]


def test_image_opens_first_user_turn_and_is_expanded(processor):
    img = Image.new("RGB", (112, 84), (200, 30, 30))
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is it?"}, {"type": "image", "image": img}]},
            {"role": "assistant", "content": "A red square."}, {"role": "user", "content": "Sure?"}]
    text, _, _ = processor.render(msgs, num_images=0)
    assert "<|im_start|>user\n<image>\nWhat is it?<|im_end|>" in text
    out = processor(msgs)
    t, h, w = out["image_grid_thw"][0].tolist()
    n = t * h * w // 4
    ids = out["input_ids"][0]
    pos = (ids == processor.image_token_id).nonzero().flatten()
    assert len(pos) == n and pos.max() - pos.min() + 1 == n  # one contiguous run
    assert out["pixel_values"].shape == (t * h * w, 3 * 2 * 14 * 14)
    assert (out["labels"][0][pos] == IGNORE_INDEX).all()
    learned = out["labels"][0] != IGNORE_INDEX
    assert processor.decode(ids[learned], skip_special_tokens=False) == "A red square.<|im_end|>\n"


def test_pad_batches(processor):
    a = processor(CONVERSATIONS[0])
    b = processor(CONVERSATIONS[2])
    batch = processor.pad([a, b], padding_side="left")
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][0, 0] == 0
    assert batch["labels"][0, 0] == IGNORE_INDEX
    assert torch.equal(batch["input_ids"][1], b["input_ids"][0])
