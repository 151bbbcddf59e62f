"""The OpenAI-compatible HTTP API over a tiny random Emova: every bad request is a 4xx with an OpenAI
error body (and the server keeps answering), chat with audio in and out, SSE streaming, speech and
transcriptions, and the official `openai` client against a live uvicorn server."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from emova.audio import Audio
from emova.model.prompts import format_answer
from emova.serve.api import create_app
from tests.inference.conftest import Feed, emova, image, ours_dir, speech  # noqa: F401 — fixtures
from tests.serve.live import live_uvicorn

ANSWER = {
    "user question text": "I lost my dog", "user question emotion": "sad", "user question pitch": "low",
    "assistant response text": "I am so sorry for your loss.", "assistant response emotion": "sad",
    "assistant response pitch": "low", "assistant response speech": "".join(f"<|speech_{u}|>" for u in range(40, 70)),
}  # fmt: skip
UNITS = "".join(f"<|speech_{u}|>" for u in range(10, 40))


@pytest.fixture(scope="module")
def app(emova):  # noqa: F811
    return create_app(emova, max_body_bytes=2_000_000, max_audio_seconds=5, max_image_pixels=200 * 200)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app) as c:
        yield c


@pytest.fixture
def answer(emova, monkeypatch):  # noqa: F811
    """The model answers the fixed spoken-dialogue JSON (and TTS units for any second call)."""
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER), UNITS))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wav_b64(audio: Audio) -> str:
    return b64(audio.to_wav_bytes())


def png_url(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + b64(buf.getvalue())


def audio_part(data: str, fmt: str = "wav") -> dict:
    return {"type": "input_audio", "input_audio": {"data": data, "format": fmt}}


def chat_body(speech_, **kw) -> dict:  # noqa: F811
    return {"model": "emova-tiny", "modalities": ["text", "audio"], "audio": {"voice": "female", "format": "wav"},
            "messages": [{"role": "user", "content": [audio_part(wav_b64(speech_))]}], **kw}


def assert_error(r, status: int | None = None, param: str | None = None) -> dict:
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    if status is not None:
        assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    assert isinstance(err["message"], str) and err["message"]
    if param is not None:
        assert err["param"] == param
    return err


# ---------------------------------------------------------------------------------------- bad requests
def _bad_cases(speech_):  # noqa: F811
    wav = wav_b64(speech_)
    long = Audio(np.tile(speech_.samples, 6), speech_.sample_rate)  # 7.2 s > 5 s limit
    big_img = Image.new("RGB", (300, 300), (10, 20, 30))
    user = lambda *parts: {"messages": [{"role": "user", "content": list(parts)}]}  # noqa: E731
    return {
        "malformed_json": (b'{"messages": [', 400, None),
        "not_an_object": (b"[1, 2]", 400, None),
        "bad_base64": (user(audio_part("@@not base64!!")), 400, "messages[0].content[0].input_audio.data"),
        "non_audio_bytes": (user(audio_part(b64(b"hello, I am not a wav file" * 20))), 400,
                            "messages[0].content[0].input_audio.data"),
        "unsupported_format": (user(audio_part(wav, "aac")), 400, "messages[0].content[0].input_audio.format"),
        "format_not_the_bytes": (user(audio_part(b64(b"ID3 this is not an mp3 at all" * 20), "mp3")), 400,
                                 "messages[0].content[0].input_audio.data"),
        "oversized_audio": (user(audio_part(wav_b64(long))), 413, "messages[0].content[0].input_audio.data"),
        "oversized_image": (user({"type": "image_url", "image_url": {"url": png_url(big_img)}},
                                 {"type": "text", "text": "what is this?"}), 413,
                            "messages[0].content[0].image_url"),
        "bad_image_bytes": (user({"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(b"xx")}}),
                            400, "messages[0].content[0].image_url"),
        "remote_image_url": (user({"type": "image_url", "image_url": {"url": "http://example.com/a.png"}}), 400,
                             "messages[0].content[0].image_url"),
        "unknown_voice": ({**user(audio_part(wav)), "audio": {"voice": "alloy", "format": "wav"}}, 400, "audio.voice"),
        "unknown_emotion": ({**user(audio_part(wav)), "audio": {"voice": "male", "emotion": "ecstatic"}}, 400,
                            "audio.emotion"),
        "unknown_pitch": ({**user(audio_part(wav)), "audio": {"voice": "male", "pitch": "ultra"}}, 400, "audio.pitch"),
        "unsupported_output_format": ({**user(audio_part(wav)), "audio": {"voice": "male", "format": "aac"}}, 400,
                                      "audio.format"),
        "unstreamable_output_format": ({**user(audio_part(wav)), "stream": True,
                                        "audio": {"voice": "male", "format": "mp3"}}, 400, "audio.format"),
        "empty_messages": ({"messages": []}, 400, "messages"),
        "missing_messages": ({"model": "emova-tiny"}, 400, "messages"),
        "wrong_role": ({"messages": [{"role": "tool", "content": "hi"}]}, 400, "messages[0].role"),
        "last_not_user": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
                          400, None),
        "empty_content": ({"messages": [{"role": "user", "content": ""}]}, 400, None),
        "unknown_part": (user({"type": "video_url", "video_url": "x"}), 400, "messages[0].content[0].type"),
        "bad_modalities": ({**user(audio_part(wav)), "modalities": ["smell"]}, 400, "modalities"),
    }


CASES = list(_bad_cases(Audio(np.zeros(16), 16000)))  # names only; bodies are built with the real speech


@pytest.mark.parametrize("case", CASES)
def test_bad_chat_request(client, speech, case):  # noqa: F811
    body, status, param = _bad_cases(speech)[case]
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/v1/chat/completions", content=data, headers={"Content-Type": "application/json"})
    assert_error(r, status, param)
    assert client.get("/health").json()["status"] == "ok"


def test_oversized_body(client):
    r = client.post("/v1/chat/completions", content=b"x" * 2_000_001, headers={"Content-Type": "application/json"})
    assert_error(r, 413)
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("body,param", [
    ({"input": ""}, "input"), ({"input": "hi", "voice": "alloy"}, "voice"),
    ({"input": "hi", "emotion": "ecstatic"}, "emotion"), ({"input": "hi", "response_format": "aac"}, "response_format"),
    ({"input": "hi", "speed": 4.5}, "speed"), ({"input": "hi", "speed": 0.1}, "speed"), ({"input": "hi", "speed": "warp"}, "speed"),
    ({"input": "hi", "speed": True}, "speed"),
])  # fmt: skip
def test_bad_speech_request(client, body, param):
    assert_error(client.post("/v1/audio/speech", json=body), 400, param)
    assert client.get("/health").status_code == 200


@pytest.mark.parametrize("fmt", ["verbose_json", "srt", "vtt"])
def test_transcription_formats(client, emova, speech, monkeypatch, fmt):  # noqa: F811
    """OpenAI's other response formats: one segment over the speech (the model gives no word timings)."""
    monkeypatch.setattr(emova, "_tokens", Feed(emova, "what color is the circle"))
    monkeypatch.setattr(emova, "asr_beams", 1)  # greedy: the transcript is what `_tokens` feeds
    padded = Audio(np.concatenate([np.zeros(8000, np.float32), speech.samples]), 16000)  # speech from 0.5 s
    r = client.post("/v1/audio/transcriptions", data={"model": "emova-tiny", "response_format": fmt,
                                                      "language": "en"},
                    files={"file": ("q.wav", padded.to_wav_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    if fmt == "verbose_json":
        v = r.json()
        assert v["text"] == "what color is the circle" and v["language"] == "english"
        assert v["duration"] == pytest.approx(padded.duration, abs=0.01)
        (seg,) = v["segments"]
        assert seg["start"] == pytest.approx(0.5, abs=0.03) and seg["end"] == pytest.approx(padded.duration, abs=0.03)
    else:
        lines = r.text.splitlines()
        stamp = lines[1] if fmt == "srt" else lines[2]
        assert lines[0] == ("1" if fmt == "srt" else "WEBVTT") and lines[-1] == "what color is the circle"
        start, end = (int(t[6:8]) + int(t[9:12]) / 1000 for t in stamp.split(" --> "))
        assert stamp[8] == ("," if fmt == "srt" else ".") and stamp[:6] == "00:00:"
        assert start == pytest.approx(0.5, abs=0.03) and end == pytest.approx(padded.duration, abs=0.03)


def test_bad_transcription_request(client):
    assert_error(client.post("/v1/audio/transcriptions", files={"file": ("a.wav", b"not audio", "audio/wav")}), 400,
                 "file")
    for field, value in (("response_format", "docx"), ("language", "fr")):
        assert_error(client.post("/v1/audio/transcriptions", data={field: value},
                                 files={"file": ("a.wav", b"RIFF", "audio/wav")}), 400, field)
    assert_error(client.post("/v1/audio/transcriptions", data={"model": "x"}, files={"other": ("a", b"1")}), 400)
    assert_error(client.post("/v1/audio/transcriptions", json={"file": "x"}), 400)


def test_unknown_route_is_openai_error(client):
    assert_error(client.get("/v1/nothing"), 404)


# ------------------------------------------------------------------------------------------ happy paths
def test_health_and_models(client):
    assert client.get("/health").json()["status"] == "ok"
    data = client.get("/v1/models").json()
    assert data["object"] == "list" and data["data"][0]["id"] == "emova-tiny"


def test_chat_audio_in_audio_out(client, speech, image, answer):  # noqa: F811
    body = chat_body(speech)
    body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": png_url(image)}})
    body["audio"]["emotion"] = "happy"
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    d = r.json()
    msg = d["choices"][0]["message"]
    assert d["object"] == "chat.completion" and msg["role"] == "assistant"
    assert msg["content"] == ANSWER["assistant response text"]
    assert msg["audio"]["transcript"] == msg["content"] and msg["audio"]["id"]
    wav = Audio.from_bytes(base64.b64decode(msg["audio"]["data"]))
    assert wav.duration > 0
    e = d["emova"]
    assert e["transcript"] == "I lost my dog" and e["user_emotion"] == "sad" and e["emotion"] == "sad"
    assert e["style"] == "gender-female_emotion-happy_speed-normal_pitch-low"  # override beats the label
    # multi-turn: the assistant audio id stands for the previous reply
    body2 = {"messages": [*body["messages"], {"role": "assistant", "audio": {"id": msg["audio"]["id"]}},
                          {"role": "user", "content": "Thanks."}]}
    r2 = client.post("/v1/chat/completions", json=body2)
    assert r2.status_code == 200 and r2.json()["choices"][0]["message"]["audio"] is None  # text only


def test_chat_text_only_no_audio(client, emova, monkeypatch):  # noqa: F811
    monkeypatch.setattr(emova, "_tokens", Feed(emova, "Hello there.", UNITS))
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}]})
    msg = r.json()["choices"][0]["message"]
    assert msg["content"] == "Hello there." and msg["audio"] is None


def _sse(text: str) -> list:
    lines = [ln[6:] for ln in text.splitlines() if ln.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [json.loads(ln) for ln in lines[:-1]]


def test_chat_stream(client, speech, answer):  # noqa: F811
    with client.stream("POST", "/v1/chat/completions", json=chat_body(speech, stream=True)) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        chunks = _sse(r.read().decode())
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(d.get("content") or "" for d in deltas)
    assert text == ANSWER["assistant response text"]
    audio = [d["audio"]["data"] for d in deltas if "data" in d.get("audio", {})]
    assert audio and all(Audio.from_bytes(base64.b64decode(a)).duration > 0 for a in audio)
    first_audio = next(i for i, d in enumerate(deltas) if "data" in d.get("audio", {}))
    last_text = max(i for i, d in enumerate(deltas) if d.get("content"))
    assert last_text < first_audio
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop" and chunks[-1]["emova"]["emotion"] == "sad"


def test_random_weights_never_500(client, speech, image):  # noqa: F811
    body = chat_body(speech, max_tokens=24)
    body["messages"][0]["content"].insert(0, {"type": "image_url", "image_url": {"url": png_url(image)}})
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["choices"][0]["message"]["content"], str)
    with client.stream("POST", "/v1/chat/completions", json=chat_body(speech, max_tokens=24, stream=True)) as r:
        assert r.status_code == 200
        assert _sse(r.read().decode())[-1]["choices"][0]["finish_reason"] == "stop"


def test_stream_bad_request_is_4xx_before_streaming(client):
    r = client.post("/v1/chat/completions", json={"stream": True, "messages": [], "audio": {"voice": "female"}})
    assert_error(r, 400, "messages")


def test_speech(client, emova, monkeypatch):  # noqa: F811
    monkeypatch.setattr(emova, "_tokens", Feed(emova, UNITS))
    r = client.post("/v1/audio/speech", json={"model": "emova-tiny", "input": "Hello!", "voice": "male",
                                              "emotion": "happy", "pitch": "high"})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
    assert Audio.from_bytes(r.content).duration > 0


def test_usage_counts_the_tokens_read_and_written(client, emova, speech, monkeypatch):  # noqa: F811
    """`usage` is the real count (not zeros): the answer's tokens, and the prompt's with its speech units; a stream
    with `stream_options.include_usage` ends with OpenAI's usage chunk (no choices), the same numbers."""
    feed = Feed(emova, format_answer(ANSWER))
    monkeypatch.setattr(emova, "_tokens", feed)
    r = client.post("/v1/chat/completions", json=chat_body(speech))
    usage = r.json()["usage"]
    n_prompt = len(emova.processor.tokenizer.encode(feed.prompts[0], add_special_tokens=False))
    assert usage == {"prompt_tokens": n_prompt, "completion_tokens": feed.pulled,
                     "total_tokens": n_prompt + feed.pulled}
    assert n_prompt > len(ANSWER["assistant response speech"]) // 20 and feed.pulled > 30
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    with client.stream("POST", "/v1/chat/completions",
                       json=chat_body(speech, stream=True, stream_options={"include_usage": True})) as s:
        events = _sse(s.read().decode())
    assert events[-1]["choices"] == [] and events[-1]["usage"] == usage
    assert all("usage" not in e for e in events[:-1])
    assert_error(client.post("/v1/chat/completions", json=chat_body(speech, stream_options={"include_usage": True})),
                 400, "stream_options")


def test_speech_openai_speed_is_a_rate(client, emova, monkeypatch):  # noqa: F811
    """OpenAI's `speed` is a number (0.25-4): the speech is that many times faster, pitch kept; our labels still
    work (`"speed": "fast"`)."""
    long_units = "".join(f"<|speech_{u}|>" for u in range(10, 130))
    durations = {}
    for speed in (1.0, 2.0, 0.5, "fast"):
        monkeypatch.setattr(emova, "_tokens", Feed(emova, long_units))
        r = client.post("/v1/audio/speech", json={"input": "Hello there!", "voice": "male", "speed": speed})
        assert r.status_code == 200, r.text
        durations[speed] = Audio.from_bytes(r.content).duration
    assert durations[1.0] > 0.06  # long enough for the PSOLA path (shorter clips are resampled)
    assert durations[2.0] == pytest.approx(durations[1.0] / 2, rel=0.1)
    assert durations[0.5] == pytest.approx(durations[1.0] * 2, rel=0.1)


@pytest.mark.parametrize("fmt,media,rate", [("mp3", "audio/mpeg", 16000), ("flac", "audio/flac", 16000),
                                             ("opus", "audio/ogg", 16000), ("pcm", "audio/pcm", 24000)])
def test_speech_formats(client, emova, monkeypatch, fmt, media, rate):  # noqa: F811
    """OpenAI's response formats: encoded files, or raw 16-bit PCM at 24 kHz (OpenAI's rate) for "pcm"."""
    monkeypatch.setattr(emova, "_tokens", Feed(emova, UNITS))
    wav = client.post("/v1/audio/speech", json={"input": "Hello!", "voice": "male"})
    monkeypatch.setattr(emova, "_tokens", Feed(emova, UNITS))
    r = client.post("/v1/audio/speech", json={"input": "Hello!", "voice": "male", "response_format": fmt})
    assert r.status_code == 200 and r.headers["content-type"] == media
    ref = Audio.from_bytes(wav.content)
    if fmt == "pcm":
        got = Audio(np.frombuffer(r.content, "<i2").astype(np.float32) / 32767, rate)
    else:
        got = Audio.from_bytes(r.content)
    assert got.sample_rate == rate and abs(got.duration - ref.duration) < 0.08


def test_mp3_input_and_pcm16_reply_chunks_join_without_seams(client, emova, speech, monkeypatch):  # noqa: F811
    """An mp3 question (OpenAI's other input format) is heard; a pcm16 stream is one 24 kHz signal: its chunks
    joined equal the wav stream's chunks joined and resampled as a whole (no seam at any chunk boundary)."""
    import soundfile as sf
    from scipy.signal import resample_poly

    buf = io.BytesIO()
    sf.write(buf, speech.samples, speech.sample_rate, format="MP3")
    body = chat_body(speech, audio={"voice": "female", "format": "pcm16"})
    body["messages"][0]["content"] = [audio_part(b64(buf.getvalue()), "mp3")]
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    whole = client.post("/v1/chat/completions", json=body)
    assert whole.status_code == 200, whole.text
    pcm_whole = np.frombuffer(base64.b64decode(whole.json()["choices"][0]["message"]["audio"]["data"]), "<i2")
    assert pcm_whole.size > 0

    def stream_chunks(fmt: str) -> list[bytes]:
        monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
        b = {**body, "stream": True, "audio": {"voice": "female", "format": fmt}}
        with client.stream("POST", "/v1/chat/completions", json=b) as r:
            events = _sse(r.read().decode())
        data = [e["choices"][0]["delta"].get("audio", {}).get("data") for e in events if "choices" in e]
        return [base64.b64decode(d) for d in data if d]

    wav = [Audio.from_bytes(c) for c in stream_chunks("wav")]
    pcm = np.concatenate([np.frombuffer(c, "<i2") for c in stream_chunks("pcm16")]).astype(np.float64) / 32767
    assert len(wav) > 1 and all(a.sample_rate == 16000 for a in wav)
    ref = resample_poly(np.concatenate([a.samples for a in wav]).astype(np.float64), 3, 2)
    assert len(pcm) == len(ref)
    assert np.abs(pcm - np.clip(ref, -1, 1)).max() < 3e-4  # 16-bit steps (the wav chunks are 16-bit too)


def test_transcriptions(client, emova, speech, monkeypatch):  # noqa: F811
    monkeypatch.setattr(emova, "_tokens", Feed(emova, "what color is the circle"))
    monkeypatch.setattr(emova, "asr_beams", 1)  # greedy: the transcript is what `_tokens` feeds
    r = client.post("/v1/audio/transcriptions", data={"model": "emova-tiny"},
                    files={"file": ("q.wav", speech.to_wav_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    assert r.json() == {"text": "what color is the circle"}


# --------------------------------------------------------------------------- official client, live server
@pytest.fixture
def live_server(emova):  # noqa: F811
    app = create_app(emova)  # its own app: the asyncio lock lives in the server's event loop
    with live_uvicorn(app) as url:
        yield f"{url}/v1"


def test_openai_client(live_server, emova, speech, monkeypatch):  # noqa: F811
    from openai import BadRequestError, OpenAI

    client = OpenAI(base_url=live_server, api_key="unused", max_retries=0, timeout=30)
    assert [m.id for m in client.models.list()] == ["emova-tiny"]
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    r = client.chat.completions.create(
        model="emova-tiny", modalities=["text", "audio"], audio={"voice": "female", "format": "wav"},
        messages=[{"role": "user", "content": [audio_part(wav_b64(speech))]}])
    msg = r.choices[0].message
    assert msg.content == ANSWER["assistant response text"] and msg.audio.transcript == msg.content
    assert Audio.from_bytes(base64.b64decode(msg.audio.data)).duration > 0
    assert r.model_extra["emova"]["transcript"] == "I lost my dog"
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    stream = client.chat.completions.create(
        model="emova-tiny", modalities=["text", "audio"], audio={"voice": "male", "format": "wav"}, stream=True,
        messages=[{"role": "user", "content": [audio_part(wav_b64(speech))]}])
    text, n_audio = "", 0
    for c in stream:
        d = c.choices[0].delta
        text += d.content or ""
        audio = getattr(d, "audio", None) or (d.model_extra or {}).get("audio")  # typed in newer clients
        data = audio.get("data") if isinstance(audio, dict) else getattr(audio, "data", None)
        if data:
            assert Audio.from_bytes(base64.b64decode(data)).duration > 0
            n_audio += 1
    assert text == ANSWER["assistant response text"] and n_audio > 0
    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    stream = client.chat.completions.create(  # OpenAI's streaming audio format: raw 24 kHz pcm16 deltas
        model="emova-tiny", modalities=["text", "audio"], audio={"voice": "female", "format": "pcm16"}, stream=True,
        messages=[{"role": "user", "content": [audio_part(wav_b64(speech))]}])
    pcm = b""
    for c in stream:
        audio = getattr(c.choices[0].delta, "audio", None) or (c.choices[0].delta.model_extra or {}).get("audio")
        data = audio.get("data") if isinstance(audio, dict) else getattr(audio, "data", None)
        pcm += base64.b64decode(data) if data else b""
    assert len(pcm) > 0 and len(pcm) % 2 == 0
    with pytest.raises(BadRequestError) as e:
        client.chat.completions.create(model="emova-tiny", messages=[])
    assert e.value.status_code == 400


def test_concurrent_requests_queue(live_server, emova, speech, monkeypatch):  # noqa: F811
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    inner, state = emova.chat, {"now": 0, "max": 0}

    def counting_chat(*a, **kw):
        state["now"] += 1
        state["max"] = max(state["max"], state["now"])
        time.sleep(0.02)
        try:
            return inner(*a, **kw)
        finally:
            state["now"] -= 1

    monkeypatch.setattr(emova, "chat", counting_chat)
    body = chat_body(speech)
    with ThreadPoolExecutor(6) as pool:
        rs = list(pool.map(lambda _: httpx.post(f"{live_server}/chat/completions", json=body, timeout=60), range(6)))
    assert [r.status_code for r in rs] == [200] * 6
    assert all(r.json()["choices"][0]["message"]["content"] == ANSWER["assistant response text"] for r in rs)
    assert state["max"] == 1  # one generation at a time
    assert httpx.get(live_server.removesuffix("/v1") + "/health").json()["busy"] is False


def test_stream_client_disconnect_frees_the_model(live_server, emova, speech, monkeypatch):  # noqa: F811
    import httpx

    monkeypatch.setattr(emova, "_tokens", Feed(emova, format_answer(ANSWER)))
    with httpx.stream("POST", f"{live_server}/chat/completions", json=chat_body(speech, stream=True), timeout=60) as r:
        assert r.status_code == 200
        next(r.iter_lines())  # read one event, then hang up
    health = live_server.removesuffix("/v1") + "/health"
    deadline = time.time() + 10
    while httpx.get(health).json()["busy"] and time.time() < deadline:
        time.sleep(0.05)
    assert httpx.get(health).json()["busy"] is False
    r = httpx.post(f"{live_server}/chat/completions", json=chat_body(speech), timeout=60)
    assert r.status_code == 200


def test_speech_without_units_is_422_not_500(client, emova, monkeypatch):  # noqa: F811
    monkeypatch.setattr(emova, "_tokens", Feed(emova, "no speech here"))
    r = client.post("/v1/audio/speech", json={"input": "Hello!"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "generation_failed"
    assert client.get("/health").status_code == 200


def test_a_conversation_longer_than_the_context_is_a_400(client, emova):  # noqa: F811
    words = "hello " * (emova.context_length + 10)
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": words}],
                                                  "modalities": ["text"]})
    err = assert_error(r, 400, "messages")
    assert err["code"] == "context_length_exceeded" and "tokens long" in err["message"]
    err = assert_error(client.post("/v1/audio/speech", json={"input": words}), 400, "input")
    assert err["code"] == "context_length_exceeded"
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("seed, ok", [(0, True), (7, True), (2**63 - 1, True), (-1, False), (2**63, False),
                                      ("x", False), (True, False)])
def test_seed_is_any_integer_openai_accepts(client, emova, monkeypatch, seed, ok):  # noqa: F811
    monkeypatch.setattr(emova, "_tokens", Feed(emova, "Hello there.", UNITS))
    r = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "Hi"}], "seed": seed})
    if ok:
        assert r.status_code == 200, r.text
    else:
        assert_error(r, 400, "seed")
