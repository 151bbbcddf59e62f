"""Parsing the model's dialogue JSON: exact on good answers, never raising, honest about repairs."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emova.inference.json_repair import parse_answer, partial_string_field
from emova.model.prompts import ANSWER_KEYS, EMOTIONS, PITCHES, format_answer

UNITS = [12, 7, 4095, 0, 7]
GOOD = {
    "user question text": "what color is the circle?",
    "user question emotion": "neutral",
    "user question pitch": "low",
    "assistant response text": 'The circle is "red", see\nthe image.',
    "assistant response emotion": "happy",
    "assistant response pitch": "high",
    "assistant response speech": "".join(f"<|speech_{u}|>" for u in UNITS),
}


def check_good(p) -> None:
    assert p.transcript == GOOD["user question text"]
    assert (p.user_emotion, p.user_pitch, p.emotion, p.pitch) == ("neutral", "low", "happy", "high")
    assert p.text == GOOD["assistant response text"]
    assert p.units == UNITS


def test_well_formed_answer_is_exact_and_unrepaired():
    p = parse_answer(format_answer(GOOD))
    check_good(p)
    assert p.repairs == []


def test_fullwidth_comma_of_the_released_prompt_is_accepted():
    text = format_answer(GOOD).replace(', "assistant response speech"', '\uff0c"assistant response speech"')
    assert "\uff0c" in text
    p = parse_answer(text)
    check_good(p)
    assert p.repairs == []


def test_stray_text_around_the_object():
    p = parse_answer("Sure, here it is:\n" + format_answer(GOOD) + "\nHope that helps<|im_end|>")
    check_good(p)
    assert any("before the JSON object" in r for r in p.repairs)
    assert any("after the JSON object" in r for r in p.repairs)


def test_truncated_inside_the_speech_units():
    text = format_answer(GOOD)
    cut = text[: text.index("<|speech_4095|>") + 8]  # mid-token
    p = parse_answer(cut)
    assert p.text == GOOD["assistant response text"] and p.emotion == "happy"
    assert p.units == [12, 7]
    assert any("unterminated" in r for r in p.repairs)


def test_truncated_inside_the_reply_text_keeps_the_prefix():
    text = format_answer(GOOD)
    cut = text[: text.index("see")]
    p = parse_answer(cut)
    assert p.transcript == GOOD["user question text"]
    assert GOOD["assistant response text"].startswith(p.text) and p.text.startswith("The circle is")
    assert p.units == [] and p.emotion is None
    assert any("missing 'assistant response speech'" in r for r in p.repairs)


def test_units_outside_quotes_and_unquoted_values():
    text = ('{"user question text": "hi", "user question emotion": Sad, "user question pitch": "normal", '
            '"assistant response text": "oh no", "assistant response emotion": "sad", '
            '"assistant response pitch": "low", "assistant response speech": <|speech_5|><|speech_6|>}')
    p = parse_answer(text)
    assert p.units == [5, 6] and p.user_emotion == "sad" and p.text == "oh no"
    assert any("unquoted value for 'assistant response speech'" in r for r in p.repairs)
    after = format_answer({**GOOD, "assistant response speech": ""}) + "<|speech_9|><|speech_8|>"
    p = parse_answer(after)
    assert p.units == [9, 8]
    assert any("outside" in r for r in p.repairs)


def test_missing_unknown_and_non_string_fields():
    obj = {k: v for k, v in GOOD.items() if k != "user question pitch"}
    obj["assistant response emotion"] = "Happy"
    obj["extra"] = 1
    obj["user question text"] = 42
    p = parse_answer(json.dumps(obj))
    assert p.user_pitch is None and p.emotion == "happy" and p.transcript == "42"
    joined = " | ".join(p.repairs)
    assert "missing 'user question pitch'" in joined and "unknown key" in joined and "not a string" in joined


@pytest.mark.parametrize("label, expected", [("HAPPY", "happy"), (" sad ", "sad"), ("surpr", "surprised"),
                                             ("joyful", None), ("", None)])
def test_emotion_labels_are_normalised_or_refused(label, expected):
    p = parse_answer(format_answer({**GOOD, "assistant response emotion": label}))
    assert p.emotion == expected
    assert (p.repairs == []) == (label == expected)


def test_units_out_of_range_and_garbage_in_the_speech_field():
    p = parse_answer(format_answer({**GOOD, "assistant response speech": "<|speech_1|>uh<|speech_5000|><|speech_2|>"}))
    assert p.units == [1, 2]
    assert any("outside [0, 4096)" in r for r in p.repairs) and any("non-unit text" in r for r in p.repairs)


def test_units_inside_the_text_fields_are_removed():
    p = parse_answer(format_answer({**GOOD, "assistant response text": "hi<|speech_3|> there"}))
    assert p.text == "hi there" and p.units == UNITS
    assert any("removed 1 speech unit" in r for r in p.repairs)


@pytest.mark.parametrize("text", ["", "   ", "no json at all", "{", "}", '{"assistant response text"', "[1, 2]",
                                  '{"assistant response text": "\\', '"' * 50, "{" * 500, "\x00\uffff",
                                  '{"a": {"b": [1, {"c": null}]}}', "<|speech_1|>" * 3])
def test_odd_outputs_never_raise(text):
    p = parse_answer(text)
    assert set(p.fields) == set(ANSWER_KEYS) and isinstance(p.units, list) and p.repairs


def test_no_keys_uses_the_whole_output_as_reply():
    p = parse_answer("The circle is red. <|speech_4|><|speech_5|>")
    assert p.text == "The circle is red." and p.units == [4, 5]
    assert "no answer keys" in p.repairs[0]


def test_every_truncation_of_a_good_answer():
    text = format_answer(GOOD)
    for n in range(len(text) + 1):
        p = parse_answer(text[:n])
        if p.text is not None:
            assert GOOD["assistant response text"].startswith(p.text.rstrip()) or p.text == "", (n, p.text)
        assert all(u in UNITS for u in p.units)
        if n == len(text):
            assert p.repairs == []


# ------------------------------------------------------------------------------------ fuzzing
label = st.sampled_from(EMOTIONS)
pitch = st.sampled_from(PITCHES)
free_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
units = st.lists(st.integers(0, 4095), max_size=30)


@st.composite
def answers(draw):
    values = {
        "user question text": draw(free_text), "user question emotion": draw(label), "user question pitch": draw(pitch),
        "assistant response text": draw(free_text), "assistant response emotion": draw(label),
        "assistant response pitch": draw(pitch),
    }  # fmt: skip
    us = draw(units)
    values["assistant response speech"] = "".join(f"<|speech_{u}|>" for u in us)
    return values, us


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=300))
def test_fuzz_arbitrary_text_never_raises(text):
    p = parse_answer(text)
    assert set(p.fields) == set(ANSWER_KEYS)
    assert all(isinstance(u, int) and 0 <= u < 4096 for u in p.units)
    for key in ("assistant response emotion", "user question emotion"):
        assert p.fields[key] in (None, *EMOTIONS)


@settings(max_examples=200, deadline=None)
@given(answers())
def test_fuzz_well_formed_answers_round_trip(drawn):
    values, us = drawn
    if any("<|speech_" in values[k] for k in ("user question text", "assistant response text")):
        return
    p = parse_answer(format_answer(values))
    assert p.text == values["assistant response text"] and p.transcript == values["user question text"]
    assert p.units == us and p.emotion == values["assistant response emotion"]


@settings(max_examples=200, deadline=None)
@given(answers(), st.floats(0, 1), st.text(max_size=20), st.text(max_size=20))
def test_fuzz_truncated_and_wrapped_answers_never_raise(drawn, frac, before, after):
    values, us = drawn
    text = format_answer(values)
    cut = before + text[: int(len(text) * frac)] + (after if frac == 1 else "")
    p = parse_answer(cut)
    assert all(0 <= u < 4096 for u in p.units)
    if "<|speech_" not in before + after:
        assert p.units == us[: len(p.units)]  # units only ever come from the reply's speech field


@settings(max_examples=100, deadline=None)
@given(answers())
def test_fuzz_partial_reply_text_grows_monotonically(drawn):
    values, _ = drawn
    text = format_answer(values)
    prev = ""
    for n in range(len(text) + 1):
        value, done = partial_string_field(text[:n], "assistant response text")
        if value is None:
            continue
        assert value.startswith(prev), (n, prev, value)
        assert values["assistant response text"].startswith(value)
        prev = value
        if done:
            assert value == values["assistant response text"]
    assert prev == values["assistant response text"]
