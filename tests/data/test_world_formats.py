import json

import pytest

from emova.data.world.formats import (
    ASR_PROMPT,
    DIALOGUE_KEYS,
    SPOKEN_DIALOGUE_PROMPT,
    TTS_PROMPT,
    RecordError,
    asr_record,
    fill_speech_units,
    image_record,
    load_records,
    records_needing_speech,
    save_records,
    speech_units_in,
    spoken_dialogue_record,
    text_record,
    tts_record,
    validate_record,
)

F = "gender-female_emotion-happy_speed-normal_pitch-high"
M = "gender-male_emotion-neutral_speed-normal_pitch-normal"


def _records() -> list[dict]:
    return [
        image_record("img-1", "images/a.png", [("What color is the circle?", "The circle is red.")]),
        text_record("txt-1", "What is two plus three?", "Two plus three is five."),
        asr_record("asr-1", "I lost my dog.", M),
        tts_record("tts-1", "Hello there.", M),
        spoken_dialogue_record("dlg-1", "I won!", "happy", "high", F, "Congratulations!", "happy", "high", F),
        spoken_dialogue_record("vsq-1", "Where is the circle?", "neutral", "normal", M,
                               "The circle is on the left.", "neutral", "normal", M, image="images/a.png"),
    ]


def test_official_prompt_facts():
    assert "follwing" in ASR_PROMPT and "follwing" in TTS_PROMPT
    assert "\uff0c" in SPOKEN_DIALOGUE_PROMPT and SPOKEN_DIALOGUE_PROMPT.endswith("user question speech:")
    assert "\\nEmotion" in SPOKEN_DIALOGUE_PROMPT  # literal backslash-n, as in the official raw string
    assert DIALOGUE_KEYS[0] == "user question text" and DIALOGUE_KEYS[-1] == "assistant response speech"


def test_shapes_of_records():
    recs = {r["id"]: r for r in _records()}
    for r in recs.values():
        validate_record(r)
    assert recs["img-1"]["conversations"][0]["value"].startswith("<image>\nWhat color")
    assert "image" not in recs["dlg-1"]
    assert recs["vsq-1"]["conversations"][0]["value"].startswith("<image>\n" + SPOKEN_DIALOGUE_PROMPT)
    ans = json.loads(recs["dlg-1"]["conversations"][1]["value"])
    assert tuple(ans) == DIALOGUE_KEYS and ans["assistant response emotion"] == "happy"


def test_json_round_trip(tmp_path):
    recs = _records()
    save_records(tmp_path / "r.json", recs)
    assert load_records(tmp_path / "r.json") == recs


def test_speech_hand_off():
    recs = _records()
    reqs = records_needing_speech(recs)
    assert [r.key for r in reqs] == ["asr-1/in", "tts-1/out", "dlg-1/user", "dlg-1/reply", "vsq-1/user", "vsq-1/reply"]
    assert {r.role for r in reqs} == {"input", "output"}
    by_key = {r.key: r for r in reqs}
    assert by_key["dlg-1/user"].text == "I won!" and by_key["dlg-1/user"].style == F
    units = {r.key: [i, i + 7, 4095] for i, r in enumerate(reqs)}
    units["tts-1/out"] = "<|speech_5|><|speech_9|>"
    filled = fill_speech_units(recs, units)
    for r in filled:
        validate_record(r)
        assert "speech" not in r and "<<speech:" not in json.dumps(r)
    d = {r["id"]: r for r in filled}
    assert speech_units_in(d["asr-1"]["conversations"][0]["value"]) == [0, 7, 4095]
    assert d["asr-1"]["conversations"][0]["value"].startswith(ASR_PROMPT + "<|speech_0|>")
    assert d["tts-1"]["conversations"][1]["value"] == "<|speech_5|><|speech_9|>"
    ans = json.loads(d["dlg-1"]["conversations"][1]["value"])
    assert speech_units_in(ans["assistant response speech"]) == [3, 10, 4095]
    assert d["dlg-1"]["meta"]["speech"][1]["style"] == F
    assert records_needing_speech(filled) == []
    assert recs[2]["conversations"][0]["value"].endswith("<<speech:asr-1/in>>")  # input untouched


def test_fill_errors_name_record_and_key():
    recs = _records()
    with pytest.raises(RecordError, match=r"'dlg-1'.*dlg-1/reply"):
        fill_speech_units(recs, {r.key: [1] for r in records_needing_speech(recs) if r.key != "dlg-1/reply"})
    with pytest.raises(ValueError, match="4096"):
        fill_speech_units(recs[2:3], {"asr-1/in": [4096]})
    with pytest.raises(RecordError, match="empty or malformed"):
        fill_speech_units(recs[2:3], {"asr-1/in": []})


def _broken(mutate) -> dict:
    rec = _records()[4]
    mutate(rec)
    return rec


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.pop("id"), "without a non-empty string 'id'"),
        (lambda r: r.update(extra=1), "unknown field"),
        (lambda r: r["conversations"].append({"from": "human", "value": "and?"}), "human/gpt pairs"),
        (lambda r: r["conversations"][0].update({"from": "user"}), "expected 'human'"),
        (lambda r: r["conversations"][1].update(value=""), "empty"),
        (lambda r: r.update(image="/abs/a.png"), "relative path"),
        (lambda r: r.update(image="images/a.png"), "exactly one '<image>"),
        (lambda r: r["conversations"][1].update(value="not json"), "not valid JSON"),
        (lambda r: r["conversations"][1].update(value=json.dumps({"a": 1})), "exactly the keys"),
        (lambda r: r["conversations"][1].update(value=r["conversations"][1]["value"].replace('"happy"', '"joyful"', 1)),
         "user question emotion"),
        (lambda r: r["speech"][0].update(style="gender-robot"), "malformed style"),
        (lambda r: r["speech"].pop(), "no 'speech' entry"),
        (lambda r: r["speech"].append({"key": "x", "text": "hi", "style": M, "role": "input"}), "not used"),
    ],
)
def test_validation_errors_name_the_record_and_problem(mutate, message):
    rec = _broken(mutate)
    with pytest.raises(RecordError, match=message) as e:
        validate_record(rec)
    if "id" in rec:
        assert "dlg-1" in str(e.value)


def test_load_errors(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(RecordError, match="bad.json: not valid JSON"):
        load_records(p)
    p.write_text(json.dumps([_records()[1], _records()[1]]))
    with pytest.raises(RecordError, match="'txt-1': duplicate id"):
        load_records(p)
    p.write_text(json.dumps([_records()[0]]))
    with pytest.raises(RecordError, match="'img-1': image file 'images/a.png' not found"):
        load_records(p, image_root=tmp_path)
