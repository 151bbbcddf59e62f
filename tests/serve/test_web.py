"""The web page's behaviour without a browser (`WebChat.turn`): a spoken turn shows transcript, reply, labels
and audio; the pickers override the style; history reaches the model on the next turn; bad input becomes a
message and leaves the conversation as it was. The Gradio app itself builds and exposes the chat endpoint."""

from __future__ import annotations

import numpy as np
import pytest

from emova.model.prompts import format_answer
from emova.serve.web import AUTO, WebChat, create_web, style_override
from tests.inference.conftest import Feed, RecordingDetok, emova, image, ours_dir, speech  # noqa: F401
from tests.serve.test_api import ANSWER, UNITS


@pytest.fixture
def feed(emova, monkeypatch):  # noqa: F811
    f = Feed(emova, format_answer(ANSWER), UNITS)
    monkeypatch.setattr(emova, "_tokens", f)
    return f


@pytest.fixture
def files(tmp_path, speech, image):  # noqa: F811
    wav, png = tmp_path / "q.wav", tmp_path / "i.png"
    speech.save(wav)
    image.save(png)
    return str(wav), str(png)


def test_spoken_turn_shows_everything(emova, feed, files):  # noqa: F811
    wav, png = files
    conv, view = WebChat(emova).turn(None, wav, png, "", "male")
    assert view.ok and view.status.startswith("Replied")
    assert view.transcript == ANSWER["user question text"]
    assert view.text == ANSWER["assistant response text"]
    assert view.labels["reply emotion"] == "sad" and view.labels["user pitch"] == "low"
    assert view.labels["reply style"] == "gender-male_emotion-sad_speed-normal_pitch-low"
    sr, samples = view.audio
    assert sr > 0 and samples.dtype == np.int16 and samples.size > 0
    assert [m["role"] for m in conv.shown] == ["user", "assistant"]
    assert conv.shown[0]["content"].startswith("[image] [speech] I lost my dog")
    assert "<image>" in feed.prompts[0]


def test_style_pickers_override_the_model(emova, feed, files, monkeypatch):  # noqa: F811
    rec = RecordingDetok(emova.detokenizer)
    monkeypatch.setattr(emova, "detokenizer", rec)
    _, view = WebChat(emova).turn(None, files[0], None, None, "female", "happy", "high", AUTO)
    assert view.ok
    assert rec.calls[-1][2] == "gender-female_emotion-happy_speed-normal_pitch-high"
    assert view.labels["reply emotion"] == "sad"  # the model's own label is still shown
    assert view.labels["reply style"] == "gender-female_emotion-happy_speed-normal_pitch-high"


def test_history_reaches_the_model_and_image_is_sent_once(emova, feed, files):  # noqa: F811
    wav, png = files
    chat = WebChat(emova)
    conv, _ = chat.turn(None, wav, png, None)
    conv, view = chat.turn(conv, None, png, "and now?")  # same picture still in the box
    assert view.ok and len(conv.messages) == 4 and len(conv.shown) == 4
    second = feed.prompts[1]
    assert second.count("<image>") == feed.prompts[0].count("<image>") > 0  # not attached a second time
    assert ANSWER["assistant response text"] in second and "and now?" in second
    assert conv.messages[1]["role"] == "assistant"


@pytest.mark.parametrize("case", ["not_audio", "silent", "nothing", "bad_voice", "bad_emotion", "bad_image"])
def test_bad_input_is_a_message(emova, feed, files, tmp_path, case):  # noqa: F811
    wav, png = files
    bad = tmp_path / "bad.wav"
    args = dict(audio=wav, image=None, text=None, voice="female", emotion=AUTO)
    if case == "not_audio":
        bad.write_bytes(b"this is not a wav file" * 50)
        args["audio"] = str(bad)
    elif case == "silent":
        from emova.audio import Audio

        Audio(np.zeros(16000, np.float32), 16000).save(bad)
        args["audio"] = str(bad)
    elif case == "nothing":
        args["audio"] = None
    elif case == "bad_voice":
        args["voice"] = "robot"
    elif case == "bad_emotion":
        args["emotion"] = "ecstatic"
    else:
        (tmp_path / "bad.png").write_bytes(b"no png here")
        args["image"] = str(tmp_path / "bad.png")
    chat = WebChat(emova)
    conv0, _ = chat.turn(None, wav, None, None)
    conv, view = chat.turn(conv0, **args)
    assert not view.ok and view.status.startswith("Error: ") and len(view.status) > 20
    assert conv is conv0 and len(conv.messages) == 2
    assert feed.calls == 1  # the model never saw the bad turn
    want = {"not_audio": "audio", "silent": "silent", "nothing": "record or upload", "bad_voice": "robot",
            "bad_emotion": "ecstatic", "bad_image": "image"}[case]
    assert want in view.status.lower()


def test_style_override_values():
    assert style_override(AUTO, None, "") is None
    assert style_override("angry", AUTO, "fast") == {"emotion": "angry", "speed": "fast"}
    with pytest.raises(ValueError, match="pitch"):
        style_override(pitch="ultra")


def test_gradio_app_builds(emova):  # noqa: F811
    demo = create_web(emova)
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"emova-audio-in", "emova-image-in", "emova-send", "emova-reply-audio", "emova-chat"} <= ids
    assert any(getattr(fn, "api_name", None) == "chat" for fn in demo.fns.values())
