"""Emova end to end on tiny random models: our layout and the official one; shapes and flow, plus
force-fed outputs where the content must be exact (parsing, style choice, voice, overrides)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from emova.audio import Audio
from emova.inference.generation import GenerationSettings, generate_tokens
from emova.inference.pipeline import ChatResult, Emova
from emova.model.prompts import ASR_PROMPT, CHAT_PROMPT, TTS_PROMPT, format_answer
from emova.styles import Style
from tests.inference.builders import official_layout_dir
from tests.inference.conftest import Feed, RecordingDetok

ANSWER = {
    "user question text": "I lost my dog", "user question emotion": "sad", "user question pitch": "low",
    "assistant response text": "I am so sorry for your loss.", "assistant response emotion": "sad",
    "assistant response pitch": "low", "assistant response speech": "".join(f"<|speech_{u}|>" for u in range(40, 70)),
}  # fmt: skip


def audio_msg(speech, *extra):
    return [{"role": "user", "content": [*extra, {"type": "audio", "audio": speech}]}]


def check_result(r: ChatResult, mode: str) -> None:
    assert isinstance(r, ChatResult) and r.mode == mode
    assert isinstance(r.text, str) and isinstance(r.raw, str) and isinstance(r.repairs, list)
    assert all(isinstance(u, int) and 0 <= u < 4096 for u in r.units)
    if r.units:
        assert isinstance(r.audio, Audio) and len(r.audio.samples) > 0 and r.audio.sample_rate > 0
    else:
        assert r.audio is None
    assert isinstance(r.style, Style)
    d = r.to_dict()
    assert set(d) >= {"transcript", "user_emotion", "user_pitch", "text", "emotion", "pitch", "units", "raw"}


# ------------------------------------------------------------------------- random weights, real flow
def test_chat_text(emova):
    r = emova.chat([{"role": "user", "content": "How are you today?"}], max_new_tokens=24)
    check_result(r, "text")
    assert r.transcript is None and r.emotion is None


def test_chat_image_and_text(emova, image):
    r = emova.chat([{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": "What color is the square?"}]}],
                   max_new_tokens=24)
    check_result(r, "text")


@pytest.mark.parametrize("with_image", [False, True])
def test_chat_audio(emova, speech, image, with_image):
    extra = [{"type": "image", "image": image}] if with_image else []
    r = emova.chat(audio_msg(speech, *extra), max_new_tokens=48)
    check_result(r, "spoken")
    assert r.repairs  # random weights never write the JSON: the repair says what it did


def test_chat_multi_turn_history_reaches_the_prompt(emova, speech, monkeypatch):
    first = emova.chat(audio_msg(speech), max_new_tokens=16)
    feed = Feed(emova, format_answer(ANSWER))
    monkeypatch.setattr(emova, "_tokens", feed)
    history = [{"role": "system", "content": "Be kind."}, *audio_msg(speech), first.as_message(),
               {"role": "user", "content": "And what should I do now?"}]
    r = emova.chat(history, max_new_tokens=400)
    prompt = feed.prompts[0]
    assert prompt.startswith("<|im_start|>system\nBe kind.<|im_end|>")
    assert prompt.count("<|im_start|>user") == 2 and prompt.count("<|im_start|>assistant") == 2
    assert CHAT_PROMPT in prompt and "And what should I do now?" in prompt
    assert r.mode == "text"  # the last user turn is typed


def test_stream_random_weights_flow(emova, speech):
    events = list(emova.chat(audio_msg(speech), max_new_tokens=48, stream=True))
    kinds = [e.type for e in events]
    assert kinds[-1] == "final" and kinds.count("final") == 1
    assert kinds == sorted(kinds, key=["text", "audio", "final"].index)  # text, then audio, then final
    r = events[-1].result
    check_result(r, "spoken")
    chunks = [e.audio for e in events if e.type == "audio"]
    if chunks:
        assert len(r.audio.samples) == sum(len(c.samples) for c in chunks)


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_kv_cached_loop_equals_transformers_generate(emova, image, cache):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    ours = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=12, cache=cache)))
    with torch.no_grad():
        ref = emova.model.generate(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                                   pixel_values=inputs["pixel_values"], image_grid_thw=inputs["image_grid_thw"],
                                   max_new_tokens=12, min_new_tokens=12, do_sample=False)
    assert ours == ref[0, inputs["input_ids"].shape[1]:].tolist()


def test_transcribe_synthesize_answer(emova, speech, image, monkeypatch):
    assert isinstance(emova.transcribe(speech), str)
    assert isinstance(emova.answer(image, "What shape is red?"), str)
    feed = Feed(emova, "hello there", "<|speech_5|><|speech_9|><|speech_5|><|speech_11|>")
    monkeypatch.setattr(emova, "_tokens", feed)
    monkeypatch.setattr(emova, "asr_beams", 1)  # the greedy path reads `_tokens` (rescoring: test_rescoring.py)
    assert emova.transcribe(speech) == "hello there"
    assert feed.prompts[0].split("<|im_start|>user\n")[1].startswith(ASR_PROMPT + "<|speech_")
    rec = RecordingDetok(emova.detokenizer)
    monkeypatch.setattr(emova, "detokenizer", rec)
    a = emova.synthesize("hello", style="gender-male_emotion-angry_speed-fast_pitch-high")
    assert isinstance(a, Audio) and len(a.samples) > 0
    assert rec.calls == [("decode", [5, 9, 5, 11], "gender-male_emotion-angry_speed-fast_pitch-high")]
    assert TTS_PROMPT + "hello" in feed.prompts[-1]


# ------------------------------------------------------------------------- force-fed, exact content
def test_spoken_answer_is_parsed_and_labels_drive_the_style(emova, speech, monkeypatch):
    feed = Feed(emova, format_answer(ANSWER))
    rec = RecordingDetok(emova.detokenizer)
    monkeypatch.setattr(emova, "_tokens", feed)
    monkeypatch.setattr(emova, "detokenizer", rec)
    r = emova.chat(audio_msg(speech), voice="male")
    assert (r.transcript, r.user_emotion, r.user_pitch) == ("I lost my dog", "sad", "low")
    assert (r.text, r.emotion, r.pitch) == ("I am so sorry for your loss.", "sad", "low")
    assert r.units == list(range(40, 70)) and r.repairs == []
    assert str(r.style) == "gender-male_emotion-sad_speed-normal_pitch-low"
    assert rec.calls == [("decode", list(range(40, 70)), str(r.style))]
    user_turn = feed.prompts[0].split("<|im_start|>user\n")[1]
    assert user_turn.startswith(CHAT_PROMPT + "<|speech_")


@pytest.mark.parametrize("override, expected", [
    ({"emotion": "happy"}, "gender-female_emotion-happy_speed-normal_pitch-low"),
    ("angry", "gender-female_emotion-angry_speed-normal_pitch-low"),
    ("gender-male_emotion-surprised_speed-fast_pitch-high", "gender-male_emotion-surprised_speed-fast_pitch-high"),
    (Style(gender="male", emotion="fearful"), "gender-male_emotion-fearful_speed-normal_pitch-normal"),
])  # fmt: skip
def test_style_override(emova, speech, monkeypatch, override, expected):
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    rec = RecordingDetok(emova.detokenizer)
    monkeypatch.setattr(emova, "detokenizer", rec)
    r = emova.chat(audio_msg(speech), style_override=override)
    assert str(r.style) == expected and rec.calls[0][2] == expected
    assert r.emotion == "sad"  # the model's own label is still reported


def test_truncated_answer_is_repaired_and_still_spoken(emova, speech, monkeypatch):
    text = format_answer(ANSWER)
    monkeypatch.setattr(emova, "_tokens", Feed(emova, text[: text.index("<|speech_60|>")]))
    r = emova.chat(audio_msg(speech))
    assert r.text == ANSWER["assistant response text"] and r.units == list(range(40, 60))
    assert r.repaired and any("unterminated" in x for x in r.repairs)
    assert isinstance(r.audio, Audio)


def test_text_turn_is_spoken_through_the_tts_prompt(emova, monkeypatch):
    feed = Feed(emova, "The circle is red.", "<|speech_3|><|speech_4|><|speech_8|>")
    monkeypatch.setattr(emova, "_tokens", feed)
    rec = RecordingDetok(emova.detokenizer)
    monkeypatch.setattr(emova, "detokenizer", rec)
    r = emova.chat([{"role": "user", "content": "What color is the circle?"}], voice="male")
    assert r.text == "The circle is red." and r.units == [3, 4, 8]
    assert rec.calls == [("decode", [3, 4, 8], "gender-male_emotion-neutral_speed-normal_pitch-normal")]
    assert feed.prompts[1].endswith(f"<|im_start|>user\n{TTS_PROMPT}The circle is red.<|im_end|>\n<|im_start|>assistant\n")
    silent = emova.chat([{"role": "user", "content": "hi"}], speak=False)
    assert silent.audio is None and silent.units == []


def test_stream_spoken_text_then_audio_during_generation(emova, speech, monkeypatch):
    feed = Feed(emova, format_answer(ANSWER))
    monkeypatch.setattr(emova, "_tokens", feed)
    rec = RecordingDetok(emova.detokenizer)
    monkeypatch.setattr(emova, "detokenizer", rec)
    total = len(feed.outputs[0])
    events, pulled_at_first_audio = [], None
    for ev in emova.chat(audio_msg(speech), voice="male", stream=True):
        if ev.type == "audio" and pulled_at_first_audio is None:
            pulled_at_first_audio = feed.pulled
        events.append(ev)
    kinds = [e.type for e in events]
    assert kinds[0] == "text" and kinds[-1] == "final" and "audio" in kinds
    assert kinds == sorted(kinds, key=["text", "audio", "final"].index)
    assert "".join(e.text for e in events if e.type == "text") == ANSWER["assistant response text"]
    assert pulled_at_first_audio < total - 10  # audio began while units were still being generated
    r = events[-1].result
    assert r.units == list(range(40, 70)) and r.text == ANSWER["assistant response text"]
    assert str(r.style) == "gender-male_emotion-sad_speed-normal_pitch-low"
    assert rec.calls[0][0] == "stream" and rec.calls[0][1] == list(range(40, 70)) and rec.calls[0][2] == str(r.style)
    assert len(r.audio.samples) == sum(len(e.audio.samples) for e in events if e.type == "audio")
    assert r.timings["first_text_s"] <= r.timings["first_audio_s"] <= r.timings["total_s"]


def test_stream_text_turn(emova, monkeypatch):
    monkeypatch.setattr(emova, "_tokens", Feed(emova, "There are three shapes.", "<|speech_1|>" * 1 + "<|speech_2|><|speech_3|>" * 12))
    events = list(emova.chat([{"role": "user", "content": "How many shapes?"}], stream=True))
    kinds = [e.type for e in events]
    assert kinds == sorted(kinds, key=["text", "audio", "final"].index) and kinds.count("audio") >= 2
    assert "".join(e.text for e in events if e.type == "text") == "There are three shapes."
    assert len(events[-1].result.units) == 25


# ------------------------------------------------------------------------------- official layout
def test_official_layout_end_to_end(official_dir, speech, image):
    m = Emova.from_pretrained(official_dir)
    assert type(m.detokenizer).__name__ == "OfficialDetokenizer"
    for msgs, mode in ((audio_msg(speech, {"type": "image", "image": image}), "spoken"),
                       ([{"role": "user", "content": "hello"}], "text")):
        check_result(m.chat(msgs, max_new_tokens=32), mode)
    events = list(m.chat(audio_msg(speech), max_new_tokens=32, stream=True))
    assert events[-1].type == "final"
    check_result(events[-1].result, "spoken")


def test_official_train_layout_with_separate_speech_tokenizer(tmp_path, speech):
    root = official_layout_dir(tmp_path / "m", "official-train")
    shutil.move(root / "speech_tokenizer", tmp_path / "st")
    with pytest.raises(ValueError, match="no speech tokenizer"):
        Emova.from_pretrained(root)
    m = Emova.from_pretrained(root, speech_tokenizer=tmp_path / "st")
    check_result(m.chat(audio_msg(speech), max_new_tokens=24), "spoken")


def test_from_pretrained_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="no model at"):
        Emova.from_pretrained(tmp_path / "missing")
    with pytest.raises(ValueError, match="not an emova model directory"):
        Emova.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(ValueError, match="not an EMOVA checkpoint"):
        Emova.from_pretrained(tmp_path)


def test_official_decode_stream_adapter_is_lazy_and_crossfades(official_dir):
    from emova.inference.speech_io import Detokenizer, OfficialDetokenizer, load_detokenizer

    detok = load_detokenizer(official_dir / "speech_tokenizer")
    assert isinstance(detok, OfficialDetokenizer) and isinstance(detok, Detokenizer)
    pulled = []

    def units():
        for u in range(100, 160):
            pulled.append(u)
            yield u

    stream = detok.decode_stream(units(), style="gender-female_emotion-happy_speed-normal_pitch-high")
    first = next(stream)
    assert len(pulled) == detok.first_chunk  # the first chunk needs only the first few units
    chunks = [first, *stream]
    assert len(chunks) >= 3 and all(isinstance(c, Audio) and len(c.samples) for c in chunks)
    assert all(np.isfinite(c.samples).all() for c in chunks)
    with pytest.raises(ValueError, match="too short"):  # a reference clip is validated like any input
        detok.decode([1, 2], reference=Audio(np.zeros(100, np.float32), 16000))


def test_our_layout_uses_our_detokenizer_when_built(emova, ours_dir):
    import json

    fmt = json.loads((ours_dir / "speech_detokenizer" / "config.json").read_text()).get("format")
    expected = "SpeechDetokenizer" if fmt == "emova-u2s-v1" else "OfficialDetokenizer"
    assert type(emova.detokenizer).__name__ == expected
    assert type(emova.speech_tokenizer).__name__ == "SpeechTokenizer"


def test_ttfa_helper(emova, speech, monkeypatch):
    from tests.inference.ttfa import measure_ttfa

    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    out = measure_ttfa(emova, audio_msg(speech), runs=2, warmup=0)
    assert out["runs_without_audio"] == 0 and out["reply_units"] == 30
    assert 0 < out["stream_first_audio_p50_s"] <= out["stream_total_p50_s"]


def test_file_inputs_and_a_text_turn_without_units(emova, speech, image, tmp_path, monkeypatch):
    wav, png = tmp_path / "q.wav", tmp_path / "img.png"
    speech.resample(22050).save(wav)
    image.save(png)
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    r = emova.chat(audio_msg(str(wav), {"type": "image", "image": png}, {"type": "text", "text": "Listen:"}))
    assert r.units == list(range(40, 70)) and isinstance(r.audio, Audio)
    monkeypatch.setattr(emova, "_tokens", Feed(emova, "Just text.", "no units at all"))
    events = list(emova.chat([{"role": "user", "content": "hi"}], stream=True))
    assert {e.type for e in events[:-1]} == {"text"} and events[-1].type == "final"
    assert events[-1].result.audio is None and events[-1].result.units == []


def test_one_official_checkpoint_serves_both_speech_ends(official_dir):
    from emova.inference.speech_io import load_speech_pair

    enc, dec = load_speech_pair(official_dir / "speech_tokenizer", official_dir / "speech_tokenizer")
    assert enc.model is dec.model


def test_half_precision_checkpoint_runs_in_fp32_on_cpu_unless_asked():
    """The bundled weights are stored in fp16; on a CPU the pipeline computes in fp32 (fp16 matmuls are
    emulated and several times slower there) unless a dtype is given."""
    m = Emova.from_pretrained("emova-tiny")
    assert next(m.model.parameters()).dtype == torch.float32
    m16 = Emova.from_pretrained("emova-tiny", dtype="float16")
    assert next(m16.model.parameters()).dtype == torch.float16
