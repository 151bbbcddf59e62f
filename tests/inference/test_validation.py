"""Bad input gets a ValueError naming the problem, before any generation runs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from emova.audio import Audio, AudioError
from emova.inference.messages import resolve_style


@pytest.fixture
def strict(emova, monkeypatch):
    """The model must never be reached by a bad request."""

    def boom(*_a, **_k):
        raise AssertionError("generation ran for a bad request")

    monkeypatch.setattr(emova, "_tokens", boom)
    return emova


def user(*parts):
    return [{"role": "user", "content": list(parts)}]


@pytest.mark.parametrize("messages, match", [
    ([], "messages is empty"),
    ("hello", "must be a list"),
    ([{"role": "robot", "content": "hi"}], "role 'robot'"),
    ([{"role": "user", "content": "hi", "name": "x"}], "unknown field"),
    ([{"role": "user", "content": "   "}], "content is empty"),
    ([{"role": "user", "content": []}], "empty list"),
    ([{"role": "user", "content": [{"type": "video", "video": "x.mp4"}]}], "unknown part type 'video'"),
    ([{"role": "user", "content": [{"type": "image"}]}], "needs a 'image' field"),
    ([{"role": "user", "content": [{"type": "text", "text": 3}]}], "text must be a string"),
    ([{"role": "user", "content": [{"type": "text", "text": ""}]}], "only empty text"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}], "last message must come from the user"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}, {"role": "user", "content": "c"}],
     "system message may only come first"),
    ([{"role": "assistant", "content": [{"type": "image", "image": Image.new("RGB", (8, 8))}]},
      {"role": "user", "content": "hi"}], "assistant messages may only hold text"),
    ([{"role": "user", "content": [{"type": "image", "image": 42}]}], "expected a file path or a PIL"),
])  # fmt: skip
def test_bad_messages(strict, messages, match):
    with pytest.raises(ValueError, match=match):
        strict.chat(messages)


def test_bad_images(strict, tmp_path):
    with pytest.raises(ValueError, match="image file not found"):
        strict.chat(user({"type": "image", "image": str(tmp_path / "nope.png")}))
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really an image")
    with pytest.raises(ValueError, match="cannot read .* as an image"):
        strict.chat(user({"type": "image", "image": junk}))
    with pytest.raises(ValueError, match="limit is 4096 px"):
        strict.chat(user({"type": "image", "image": Image.new("RGB", (5000, 16))}))
    big = tmp_path / "big.png"
    Image.new("RGB", (4100, 8)).save(big)
    with pytest.raises(ValueError, match="limit is 4096 px"):
        strict.answer(big, "what?")
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (21 * 1024 * 1024))
    with pytest.raises(ValueError, match="limit is 20 MB"):
        strict.chat(user({"type": "image", "image": huge}))


def test_bad_audio(strict, tmp_path, speech, monkeypatch):
    silent = Audio(np.zeros(16000, np.float32), 16000)
    with pytest.raises(AudioError, match=r"content\[0\]: audio is silent"):
        strict.chat(user({"type": "audio", "audio": silent}))
    notaudio = tmp_path / "x.wav"
    notaudio.write_bytes(b"RIFF....WAVEfmt junk")
    with pytest.raises(AudioError, match="cannot read"):
        strict.chat(user({"type": "audio", "audio": notaudio}))
    with pytest.raises(AudioError, match="expected a file path or an emova.Audio"):
        strict.chat(user({"type": "audio", "audio": np.zeros(10)}))
    with pytest.raises(ValueError, match="one audio part per message"):
        strict.chat(user({"type": "audio", "audio": speech}, {"type": "audio", "audio": speech}))
    monkeypatch.setattr(strict, "max_audio_seconds", 0.5)
    with pytest.raises(AudioError, match="too long"):
        strict.chat(user({"type": "audio", "audio": speech}))
    with pytest.raises(AudioError, match="too long"):
        strict.transcribe(speech)


def test_bad_voice_and_styles(strict):
    msgs = [{"role": "user", "content": "hi"}]
    with pytest.raises(ValueError, match="unknown voice 'robot'"):
        strict.chat(msgs, voice="robot")
    with pytest.raises(ValueError, match="unknown emotion 'joyful'"):
        strict.chat(msgs, style_override={"emotion": "joyful"})
    with pytest.raises(ValueError, match="unknown pitch 'very high'"):
        strict.chat(msgs, style_override={"pitch": "very high"})
    with pytest.raises(ValueError, match="unknown field"):
        strict.chat(msgs, style_override={"mood": "happy"})
    with pytest.raises(ValueError, match="style_override 'cheerful'"):
        strict.chat(msgs, style_override="cheerful")
    with pytest.raises(ValueError, match="malformed style string"):
        strict.synthesize("hi", style="happy voice")
    with pytest.raises(ValueError, match="empty"):
        strict.synthesize("  ")
    with pytest.raises(ValueError, match="question is empty"):
        strict.answer(Image.new("RGB", (32, 32)), "")
    with pytest.raises(ValueError, match="max_new_tokens"):
        strict.chat(msgs, max_new_tokens=0)


def test_resolve_style_defaults_and_bad_labels():
    assert str(resolve_style("male", "happy", "high")) == "gender-male_emotion-happy_speed-normal_pitch-high"
    assert str(resolve_style("female", None, "weird")) == "gender-female_emotion-neutral_speed-normal_pitch-normal"
    assert str(resolve_style("female", "sad", "low", {"speed": "slow"})) == "gender-female_emotion-sad_speed-slow_pitch-low"


def test_from_pretrained_bad_dtype(ours_dir):
    from emova.inference.pipeline import Emova

    with pytest.raises(ValueError, match="dtype 'float8'"):
        Emova.from_pretrained(ours_dir, dtype="float8")


def _broken_copy(src, dst, part, damage):
    import shutil

    shutil.copytree(src, dst)
    damage(dst / part)
    return dst


def _truncate(path):
    path.write_bytes(path.read_bytes()[:500])


@pytest.mark.parametrize("part, damage, match", [
    ("llm/model.safetensors", _truncate, r"llm/model.safetensors: not a readable safetensors file"),
    ("speech_tokenizer/model.safetensors", _truncate, r"speech_tokenizer/model.safetensors: not a readable safetensors"),
    ("speech_detokenizer/model.safetensors", _truncate, r"speech_detokenizer/model.safetensors: not a readable"),
    ("llm/config.json", lambda p: p.write_text("{oops"), r"llm/config.json: invalid JSON"),
    ("llm/tokenizer.json", lambda p: p.write_text("{oops"), r"llm: cannot load the tokenizer"),
    ("speech_tokenizer/config.json", lambda p: p.write_text("[1]"), r"speech_tokenizer/config.json: expected a JSON object"),
])  # fmt: skip
def test_broken_checkpoints_name_the_file(ours_dir, tmp_path, part, damage, match):
    from emova.inference.pipeline import Emova

    d = _broken_copy(ours_dir, tmp_path / "broken", part, damage)
    with pytest.raises(ValueError, match=match):
        Emova.from_pretrained(d)


def test_speech_tokenizer_weights_of_another_size_are_named(ours_dir, tmp_path):
    import json

    from emova.speech.tokenizer import SpeechTokenizer

    def wider(p):
        meta = json.loads(p.read_text())
        meta["s2u"]["post_dim"] *= 2
        p.write_text(json.dumps(meta))

    d = _broken_copy(ours_dir, tmp_path / "broken", "speech_tokenizer/config.json", wider)
    with pytest.raises(ValueError, match=r"does not match the config \(\d+ tensor shapes differ"):
        SpeechTokenizer.from_pretrained(d / "speech_tokenizer")


def test_a_conversation_longer_than_the_context_is_refused_before_generation(strict):
    from emova.inference.pipeline import ContextLengthError

    limit = strict.context_length
    assert limit and limit > 100
    with pytest.raises(ContextLengthError, match=rf"tokens long .* at most {limit} positions"):
        strict.chat([{"role": "user", "content": "hello " * (limit + 10)}], speak=False)


def test_generation_stops_where_the_context_ends(emova, monkeypatch):
    from emova.inference.generation import GenerationSettings, generate_tokens

    inputs = emova._encode([{"role": "user", "content": "hello there"}])
    n = int(inputs["input_ids"].shape[1])
    no_stop: set[int] = set()  # the random test model: only the budget ends its output
    assert len(list(generate_tokens(emova.model, inputs, no_stop, GenerationSettings(max_new_tokens=10)))) == 10
    monkeypatch.setattr(emova.model.config.get_text_config(), "max_position_embeddings", n + 3)
    assert len(list(generate_tokens(emova.model, inputs, no_stop, GenerationSettings(max_new_tokens=10)))) == 3
    monkeypatch.setattr(emova.model.config.get_text_config(), "max_position_embeddings", n)
    with pytest.raises(ValueError, match="reads at most"):
        list(generate_tokens(emova.model, inputs, no_stop, GenerationSettings(max_new_tokens=10)))


def test_from_pretrained_names_a_device_it_cannot_use(ours_dir):
    import torch

    from emova.inference.pipeline import Emova, usable_device

    with pytest.raises(ValueError, match="device 'tpu' cannot be used here"):
        Emova.from_pretrained(ours_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device 'cuda:0' cannot be used here"):
            Emova.from_pretrained(ours_dir, device="cuda:0")
    assert usable_device("cpu") == torch.device("cpu")
