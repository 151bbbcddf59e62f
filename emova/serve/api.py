"""`emova serve`: an OpenAI-compatible HTTP API over `emova.inference.pipeline.Emova`.

    POST /v1/chat/completions    OpenAI Chat Completions; `input_audio` / `image_url` (data: URL) parts,
                                 `modalities: ["text", "audio"]`, `audio: {voice, format, emotion, pitch,
                                 speed}`, `stream: true` (SSE text and audio deltas, then `data: [DONE]`)
    POST /v1/audio/speech        {"input", "voice", "emotion", "pitch", "speed" (label or OpenAI's 0.25-4 rate),
                                 "response_format"} → audio
    POST /v1/audio/transcriptions multipart `file` → {"text"} (or text, verbose_json, srt, vtt)
    GET  /v1/models, GET /health

One generation at a time per model (an asyncio lock; the blocking model call runs in a worker thread; a
streamed turn runs ahead of the client on a thread of its own, `_EventPump`).
Every bad request gets a 4xx with `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from emova.audio import SAMPLE_RATE, Audio, AudioError, StreamResampler, pcm16_bytes
from emova.inference.pipeline import ContextLengthError, GenerationError
from emova.model.processor import to_rgb
from emova.styles import EMOTIONS, GENDERS, PITCHES, SPEEDS, Style

if TYPE_CHECKING:  # pragma: no cover
    from emova.inference.pipeline import Emova

AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")  # input_audio.format (libsndfile reads each; the bytes decide)
#: reply audio: `audio.format` of a chat request (OpenAI's names); a stream sends wav or pcm16 chunks
REPLY_FORMATS = ("wav", "pcm16", "mp3", "flac", "opus")
STREAM_FORMATS = ("wav", "pcm16")
#: `/v1/audio/speech` `response_format` → (Audio.to_bytes encoding, media type); "pcm" is OpenAI's raw PCM
SPEECH_FORMATS = {"wav": ("wav", "audio/wav"), "mp3": ("mp3", "audio/mpeg"), "flac": ("flac", "audio/flac"),
                  "opus": ("opus", "audio/ogg"), "pcm": ("pcm16", "audio/pcm")}
TRANSCRIPT_FORMATS = ("json", "text", "verbose_json", "srt", "vtt")
PCM_RATE = 24_000  # raw PCM is 24 kHz, 16-bit, mono, little-endian, as OpenAI sends it
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
ROLE_MAP = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_REPLY_CACHE = 256  # assistant audio ids remembered for multi-turn (`{"role": "assistant", "audio": {"id"}}`)


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ---------------------------------------------------------------------------------------- streaming
class _EventPump:
    """A streamed turn's events, produced on one worker thread as fast as the model makes them.

    The model's event iterator blocks (it generates); pulling it one event per event-loop round trip would
    make generation wait for the loop and the client after every text delta. Here a thread drains it into an
    asyncio queue, so the first audio chunk exists as early as it would in-process. `close()` (client gone,
    or done) stops the thread at the next event and closes the iterator there; errors arrive as items."""

    def __init__(self, make_events: Callable[[], Iterator[Any]], loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.queue = loop, asyncio.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(make_events,), name="emova-stream", daemon=True)
        self.thread.start()

    def _put(self, kind: str, item: Any = None) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, item))
        except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
            self.stop.set()

    def _run(self, make_events: Callable[[], Iterator[Any]]) -> None:
        events = None
        try:
            events = make_events()
            for ev in events:
                if self.stop.is_set():
                    break
                self._put("event", ev)
        except BaseException as e:  # noqa: BLE001 — handed to the consumer, which decides what it means
            self._put("error", e)
        finally:
            close = getattr(events, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 — a generator that fails to close has nothing left to send
                    pass
            self._put("end")

    async def next(self) -> Any:
        """The next event; None at the end; raises what the model raised."""
        kind, item = await self.queue.get()
        if kind == "error":
            raise item
        return item if kind == "event" else None

    async def close(self) -> None:
        self.stop.set()
        await run_in_threadpool(self.thread.join)


# ------------------------------------------------------------------------------------ request parsing
def _b64(data: Any, param: str) -> bytes:
    if not isinstance(data, str) or not data.strip():
        raise ApiError(400, f"{param} must be a non-empty base64 string", param, "invalid_base64")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", param, "invalid_base64") from None


def _decode_audio(raw: bytes, param: str, max_seconds: float) -> Audio:
    try:
        audio = Audio.from_bytes(raw, SAMPLE_RATE, what=param)
    except AudioError as e:
        raise ApiError(400, str(e), param, "invalid_audio") from None
    if audio.duration > max_seconds:
        raise ApiError(413, f"{param}: audio is {audio.duration:.1f} s; the limit is {max_seconds:g} s", param,
                       "audio_too_long")
    return audio


def _decode_image(url: Any, param: str, max_pixels: int) -> Any:
    from PIL import Image

    if isinstance(url, dict):
        url = url.get("url")
    if not isinstance(url, str) or not url.startswith("data:"):
        raise ApiError(400, f"{param}: only data: URLs are accepted (data:image/png;base64,...)", param,
                       "invalid_image_url")
    head, sep, data = url.partition(",")
    if not sep or not head.endswith(";base64"):
        raise ApiError(400, f"{param}: expected a base64 data URL (data:image/png;base64,...)", param,
                       "invalid_image_url")
    raw = _b64(data, param)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ApiError(413, f"{param}: image is {w}x{h} px; the limit is {max_pixels} pixels", param,
                               "image_too_large")
            if im.format not in IMAGE_FORMATS:
                raise ApiError(400, f"{param}: image format {im.format}; accepted: {', '.join(IMAGE_FORMATS)}",
                               param, "invalid_image")
            return to_rgb(im)
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise ApiError(413, f"{param}: image is far too large", param, "image_too_large") from None
    except Exception as e:  # noqa: BLE001 — PIL raises many types for bad data
        raise ApiError(400, f"{param}: cannot decode the image (PNG or JPEG): {e}", param, "invalid_image") from None


def _convert_part(part: Any, param: str, limits: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(part, dict):
        raise ApiError(400, f"{param} must be an object with a 'type'", param, "invalid_content")
    kind = part.get("type")
    if kind == "text":
        text = part.get("text")
        if not isinstance(text, str):
            raise ApiError(400, f"{param}.text must be a string", f"{param}.text", "invalid_content")
        return {"type": "text", "text": text}
    if kind == "image_url":
        return {"type": "image", "image": _decode_image(part.get("image_url"), f"{param}.image_url",
                                                        limits["max_image_pixels"])}
    if kind == "input_audio":
        spec = part.get("input_audio")
        p = f"{param}.input_audio"
        if not isinstance(spec, dict):
            raise ApiError(400, f"{p} must be an object {{'data': base64, 'format': 'wav'}}", p, "invalid_content")
        fmt = spec.get("format", "wav")
        if fmt not in AUDIO_FORMATS:
            raise ApiError(400, f"{p}.format {fmt!r} is not supported; accepted: {', '.join(AUDIO_FORMATS)}",
                           f"{p}.format", "unsupported_audio_format")
        raw = _b64(spec.get("data"), f"{p}.data")
        return {"type": "audio", "audio": _decode_audio(raw, f"{p}.data", limits["max_audio_seconds"])}
    raise ApiError(400, f"{param}: unknown content part type {kind!r}; accepted: text, image_url, input_audio",
                   f"{param}.type", "invalid_content")


def convert_messages(messages: Any, limits: dict[str, Any], replies: dict[str, str] | None = None) -> list[dict]:
    """OpenAI chat messages → the `Emova.chat` message shape (images as PIL, audio as emova.Audio)."""
    if not isinstance(messages, list):
        raise ApiError(400, "messages must be a list", "messages", "invalid_messages")
    if not messages:
        raise ApiError(400, "messages is empty; give at least one user message", "messages", "empty_messages")
    out = []
    for i, m in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(m, dict):
            raise ApiError(400, f"{param} must be an object with 'role' and 'content'", param, "invalid_messages")
        role = m.get("role")
        if role not in ROLE_MAP:
            raise ApiError(400, f"{param}.role {role!r} is not supported; accepted: {', '.join(ROLE_MAP)}",
                           f"{param}.role", "invalid_role")
        content = m.get("content")
        if content is None and role == "assistant" and isinstance(m.get("audio"), dict):
            content = (replies or {}).get(m["audio"].get("id"))
            if content is None:
                raise ApiError(400, f"{param}.audio.id is unknown to this server; send the text as content",
                               f"{param}.audio.id", "invalid_messages")
        if isinstance(content, str):
            parts: Any = content
        elif isinstance(content, list):
            parts = [_convert_part(p, f"{param}.content[{j}]", limits) for j, p in enumerate(content)]
        else:
            raise ApiError(400, f"{param}.content must be a string or a list of parts", f"{param}.content",
                           "invalid_content")
        out.append({"role": ROLE_MAP[role], "content": parts})
    return out


def _style_override(audio: Any, stream: bool = False) -> tuple[str, dict[str, str] | None, str]:
    """`audio: {voice, format, emotion, pitch, speed}` → (voice, style override, reply audio format)."""
    if audio is None:
        return "female", None, "wav"
    if not isinstance(audio, dict):
        raise ApiError(400, "audio must be an object {'voice', 'format'}", "audio", "invalid_audio_options")
    voice = audio.get("voice", "female")
    if voice not in GENDERS:
        raise ApiError(400, f"unknown voice {voice!r}; accepted: {', '.join(GENDERS)}", "audio.voice", "invalid_voice")
    fmt = audio.get("format", "wav")
    accepted = STREAM_FORMATS if stream else REPLY_FORMATS
    if fmt not in accepted:
        raise ApiError(400, f"audio.format {fmt!r} is not supported{' when streaming' if stream else ''}; "
                       f"accepted: {', '.join(accepted)}", "audio.format", "unsupported_audio_format")
    override = {}
    for name, allowed in (("emotion", EMOTIONS), ("pitch", PITCHES), ("speed", SPEEDS)):
        v = audio.get(name)
        if v is None:
            continue
        if v not in allowed:
            raise ApiError(400, f"unknown {name} {v!r}; accepted: {', '.join(allowed)}", f"audio.{name}",
                           f"invalid_{name}")
        override[name] = v
    return voice, override or None, fmt


def _int_opt(body: dict, *names: str) -> int | None:
    for n in names:
        v = body.get(n)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ApiError(400, f"{n} must be a positive integer", n, "invalid_value")
            return v
    return None


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    return body


def _multipart_file(content_type: str, raw: bytes) -> tuple[bytes, dict[str, str]]:
    """The `file` field and the text fields of a multipart/form-data body (stdlib parser)."""
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        raise ApiError(400, "expected a multipart/form-data body with a 'file' field", "file", "invalid_multipart")
    data, fields = None, {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if name == "file":
            data = payload
        elif name:
            fields[name] = payload.decode("utf-8", "replace")
    if data is None:
        raise ApiError(400, "the multipart body has no 'file' field", "file", "missing_file")
    return data, fields


# ---------------------------------------------------------------------------------------- responses
def encode_reply(audio: Audio, fmt: str) -> bytes:
    """Reply audio in a chat `audio.format` / speech `response_format` encoding; raw PCM at 24 kHz (OpenAI's)."""
    if fmt in ("pcm16", "pcm"):
        return audio.resample(PCM_RATE).to_bytes("pcm16")
    return audio.to_bytes(fmt)


def _audio_object(result: Any, audio_id: str, fmt: str = "wav") -> dict[str, Any] | None:
    if result.audio is None:
        return None
    return {"id": audio_id, "data": base64.b64encode(encode_reply(result.audio, fmt)).decode("ascii"),
            "expires_at": int(time.time()) + 3600, "transcript": result.text}


def _timestamp(seconds: float, sep: str) -> str:
    """SRT (`sep` ",") / WebVTT (".") time: HH:MM:SS,mmm."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def _usage(result: Any) -> dict[str, int]:
    """OpenAI's usage object from `ChatResult.usage` (prompt: text, image and speech-unit tokens)."""
    p, c = int(result.usage.get("prompt_tokens", 0)), int(result.usage.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _emova_object(result: Any) -> dict[str, Any]:
    return {"transcript": result.transcript, "user_emotion": result.user_emotion, "user_pitch": result.user_pitch,
            "emotion": result.emotion, "pitch": result.pitch, "style": str(result.style) if result.style else None,
            "mode": result.mode, "repairs": result.repairs, "timings": result.timings}


def create_app(model: Emova, model_id: str = "emova-tiny", max_body_bytes: int = 25_000_000,
               max_audio_seconds: float = 120, max_image_pixels: int = 4096 * 4096) -> FastAPI:
    app = FastAPI(title="emova", version="1")
    lock = asyncio.Lock()
    limits = {"max_audio_seconds": min(max_audio_seconds, getattr(model, "max_audio_seconds", max_audio_seconds)),
              "max_image_pixels": max_image_pixels}
    replies: OrderedDict[str, str] = OrderedDict()
    app.state.model, app.state.lock, app.state.replies = model, lock, replies

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(exc.status_code, str(exc.detail)).body(), status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(400, str(exc)).body(), status_code=400)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        err = ApiError(500, f"internal error: {type(exc).__name__}: {exc}", type="server_error", code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    @app.middleware("http")
    async def _body_limit(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None:
            try:
                n = int(length)
            except ValueError:
                return JSONResponse(ApiError(400, "bad Content-Length header", None, "invalid_header").body(), 400)
            if n > max_body_bytes:
                err = ApiError(413, f"the request body is {n} bytes; the limit is {max_body_bytes}", None,
                               "body_too_large")
                return JSONResponse(err.body(), status_code=413)
        return await call_next(request)

    async def read_body(request: Request) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                raise ApiError(413, f"the request body is over the limit of {max_body_bytes} bytes", None,
                               "body_too_large")
            chunks.append(chunk)
        return b"".join(chunks)

    async def locked(fn: Any, *args: Any, **kw: Any) -> Any:
        async with lock:
            return await run_in_threadpool(fn, *args, **kw)

    def model_error(e: Exception, param: str = "messages") -> ApiError:
        if isinstance(e, GenerationError):
            return ApiError(422, str(e), None, "generation_failed", type="generation_error")
        if isinstance(e, ContextLengthError):
            return ApiError(400, str(e), param, "context_length_exceeded")
        return ApiError(400, str(e), None, "invalid_request")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_id, "busy": lock.locked()}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": 0, "owned_by": "emova"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = _json_body(await read_body(request))
        msgs = convert_messages(body.get("messages"), limits, replies)
        modalities = body.get("modalities", ["text"])
        if not isinstance(modalities, list) or not modalities or any(m not in ("text", "audio") for m in modalities):
            raise ApiError(400, "modalities must be a list of 'text' and/or 'audio'", "modalities", "invalid_value")
        speak = "audio" in modalities
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be a boolean", "stream", "invalid_value")
        voice, override, audio_fmt = _style_override(body.get("audio"), stream)
        kw = {"voice": voice, "style_override": override, "speak": speak,
              "max_new_tokens": _int_opt(body, "max_completion_tokens", "max_tokens")}
        temp = body.get("temperature")
        if temp is not None:
            if not isinstance(temp, (int, float)) or isinstance(temp, bool) or not 0 <= temp <= 2:
                raise ApiError(400, "temperature must be a number in [0, 2]", "temperature", "invalid_value")
            kw["temperature"] = float(temp)
        if body.get("seed") is not None:
            seed = body["seed"]
            if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63:
                raise ApiError(400, "seed must be an integer in [0, 2^63)", "seed", "invalid_value")
            kw["seed"] = seed
        n = body.get("n", 1)
        if n != 1:
            raise ApiError(400, "only n=1 is supported", "n", "invalid_value")
        cid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        audio_id = f"audio_{uuid.uuid4().hex[:24]}"
        opts = body.get("stream_options")
        if opts is not None and (not stream or not isinstance(opts, dict)
                                 or not isinstance(opts.get("include_usage", False), bool)):
            raise ApiError(400, "stream_options must be an object {'include_usage': bool} and needs stream: true",
                           "stream_options", "invalid_value")
        if stream:
            return await _stream(msgs, kw, cid, created, audio_id, audio_fmt,
                                 bool((opts or {}).get("include_usage", False)))
        try:
            result = await locked(model.chat, msgs, **kw)
        except ValueError as e:
            raise model_error(e) from None
        _remember(audio_id, result)
        message = {"role": "assistant", "content": result.text, "refusal": None,
                   "audio": _audio_object(result, audio_id, audio_fmt) if speak else None}
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(result), "emova": _emova_object(result)}

    def _remember(audio_id: str, result: Any) -> None:
        replies[audio_id] = result.as_message()["content"]
        while len(replies) > _REPLY_CACHE:
            replies.popitem(last=False)

    async def _stream(msgs: list, kw: dict, cid: str, created: int, audio_id: str, fmt: str = "wav",
                      include_usage: bool = False) -> Any:
        await lock.acquire()
        pump = _EventPump(lambda: model.chat(msgs, stream=True, **kw), asyncio.get_running_loop())
        try:
            first = await pump.next()  # validation errors surface before the headers
        except ValueError as e:
            await pump.close()
            lock.release()
            raise model_error(e) from None
        except BaseException:
            await pump.close()
            lock.release()
            raise

        def chunk(delta: dict | None, finish: str | None = None, **extra: Any) -> str:
            """An SSE chunk; `delta=None` gives one without choices (the usage chunk)."""
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            c = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                 "choices": choices, **extra}
            return f"data: {json.dumps(c)}\n\n"

        pcm: StreamResampler | None = None  # pcm16 chunks: one 24 kHz stream, resampled without seams

        def audio_delta(a: Audio | None, index: int) -> str | None:
            """The SSE audio delta for chunk `a` (None at the end: what the pcm16 resampler still holds), if any."""
            nonlocal pcm
            if fmt != "pcm16":
                return None if a is None else chunk({"audio": {"id": audio_id, "index": index,
                                                               "data": base64.b64encode(a.to_bytes(fmt)).decode("ascii")}})
            if a is not None and pcm is None:
                pcm = StreamResampler(a.sample_rate, PCM_RATE)
            if pcm is None:
                return None
            y = pcm.push(a.samples) if a is not None else pcm.flush()
            if len(y) == 0:
                return None
            return chunk({"audio": {"id": audio_id, "index": index,
                                    "data": base64.b64encode(pcm16_bytes(y)).decode("ascii")}})

        async def sse() -> Any:
            try:
                yield chunk({"role": "assistant", "content": ""})
                n_audio = 0
                ev = first
                while ev is not None:
                    if ev.type == "text":
                        if ev.text:
                            yield chunk({"content": ev.text})
                    elif ev.type == "audio":
                        delta = audio_delta(ev.audio, ev.index)
                        n_audio = ev.index + 1
                        if delta is not None:
                            yield delta
                    else:
                        result = ev.result
                        _remember(audio_id, result)
                        tail = audio_delta(None, n_audio)
                        if tail is not None:
                            yield tail
                        if kw["speak"]:
                            yield chunk({"audio": {"id": audio_id, "transcript": result.text,
                                                   "expires_at": int(time.time()) + 3600}})
                        yield chunk({}, "stop", emova=_emova_object(result))
                        if include_usage:  # OpenAI's last chunk: no choices, the usage
                            yield chunk(None, usage=_usage(result))
                    ev = await pump.next()
            except Exception as e:  # noqa: BLE001 — headers are sent: report in-band
                err = ApiError(500, f"{type(e).__name__}: {e}", type="server_error", code="stream_error")
                yield f"data: {json.dumps(err.body())}\n\n"
            finally:
                try:
                    await pump.close()
                finally:
                    lock.release()
            yield "data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/audio/speech")
    async def speech(request: Request) -> Any:
        body = _json_body(await read_body(request))
        text = body.get("input")
        if not isinstance(text, str) or not text.strip():
            raise ApiError(400, "input must be a non-empty string", "input", "invalid_value")
        fmt = body.get("response_format", "wav")
        if fmt not in SPEECH_FORMATS:
            raise ApiError(400, f"response_format {fmt!r} is not supported; accepted: {', '.join(SPEECH_FORMATS)}",
                           "response_format", "unsupported_audio_format")
        voice = body.get("voice", "female")
        if voice not in GENDERS:
            raise ApiError(400, f"unknown voice {voice!r}; accepted: {', '.join(GENDERS)}", "voice", "invalid_voice")
        fields, rate = {"gender": voice}, 1.0
        speed = body.get("speed")
        if isinstance(speed, (int, float)) and not isinstance(speed, bool):  # OpenAI's speed: a rate, 0.25-4
            if not 0.25 <= speed <= 4.0:
                raise ApiError(400, f"speed {speed!r} is out of range; a number in [0.25, 4] or one of "
                               f"{', '.join(SPEEDS)}", "speed", "invalid_speed")
            rate, body = float(speed), {k: v for k, v in body.items() if k != "speed"}
        for name, allowed in (("emotion", EMOTIONS), ("pitch", PITCHES), ("speed", SPEEDS)):
            v = body.get(name)
            if v is not None:
                if v not in allowed:
                    raise ApiError(400, f"unknown {name} {v!r}; accepted: {', '.join(allowed)}"
                                   + (" or a number in [0.25, 4]" if name == "speed" else ""), name,
                                   f"invalid_{name}")
                fields[name] = v
        try:
            audio = await locked(model.synthesize, text, Style(**fields), rate=rate)
        except (ValueError, GenerationError) as e:
            raise model_error(e, "input") from None
        encoding, media_type = SPEECH_FORMATS[fmt]
        return Response(encode_reply(audio, encoding), media_type=media_type)

    @app.post("/v1/audio/transcriptions")
    async def transcriptions(request: Request) -> Any:
        raw = await read_body(request)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("multipart/form-data"):
            data, fields = _multipart_file(ctype, raw)
        elif ctype.startswith("audio/") or ctype == "application/octet-stream":
            data, fields = raw, {}
        else:
            raise ApiError(400, "send multipart/form-data with a 'file' field (or an audio/* body)", "file",
                           "invalid_multipart")
        fmt = fields.get("response_format", "json")
        if fmt not in TRANSCRIPT_FORMATS:
            raise ApiError(400, f"response_format {fmt!r}; accepted: {', '.join(TRANSCRIPT_FORMATS)}",
                           "response_format", "invalid_value")
        language = fields.get("language", "en").strip().lower()
        if language not in ("en", "english"):
            raise ApiError(400, f"language {language!r}: this model transcribes English only (en)", "language",
                           "unsupported_language")
        audio = _decode_audio(data, "file", limits["max_audio_seconds"])
        try:
            text = await locked(model.transcribe, audio)
        except ValueError as e:
            raise model_error(e, "file") from None
        if fmt == "text":
            return Response(text, media_type="text/plain")
        if fmt == "json":
            return {"text": text}
        start, end = audio.speech_span() or (0.0, audio.duration)  # one segment: the model gives no word times
        if fmt == "verbose_json":
            return {"task": "transcribe", "language": "english", "duration": round(audio.duration, 3), "text": text,
                    "segments": [{"id": 0, "seek": 0, "start": round(start, 3), "end": round(end, 3), "text": text,
                                  "tokens": [], "temperature": 0.0}]}
        if fmt == "srt":
            return Response(f"1\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n",
                            media_type="application/x-subrip")
        return Response(f"WEBVTT\n\n{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n",
                        media_type="text/vtt")

    return app


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - platforms without affinity masks
        return max(1, os.cpu_count() or 1)


def server_threads(value: int | str | None = "auto") -> int:
    """torch's intra-op threads for a serving process: an int >= 1, or "auto" (None): `OMP_NUM_THREADS` when it
    is set to a positive integer, else the usable cores minus one, at least 1. The core left over runs the
    HTTP side — the event loop, SSE framing, WAV and base64 encoding, the next request's parsing. On the 2-core
    machine the bench runs on, one thread was a little faster and steadier than two (docs/serving.md,
    "Threads")."""
    if value is None or value == "auto":
        env = os.environ.get("OMP_NUM_THREADS", "").strip()
        if env.isdigit() and int(env) >= 1:
            return int(env)
        return max(1, usable_cores() - 1)
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}") from None
    if n < 1 or str(value).strip() != str(n):
        raise ValueError(f"threads must be a positive integer or 'auto', got {value!r}")
    return n


def serve(model: str = "emova-tiny", host: str = "127.0.0.1", port: int = 8000, device: str = "cpu",
          threads: int | str | None = "auto", **limits: Any) -> None:
    """Load `model` (bundled name or directory) and serve it with uvicorn until interrupted, with
    `server_threads(threads)` intra-op threads."""
    import torch
    import uvicorn

    from emova.inference.pipeline import Emova

    n = server_threads(threads)
    torch.set_num_threads(n)
    print(f"emova serve: {n} intra-op thread(s) of {usable_cores()} usable core(s)", flush=True)
    m = Emova.from_pretrained(model, device=device)
    model_id = Path(str(model)).name or "emova"
    uvicorn.run(create_app(m, model_id=model_id, **limits), host=host, port=port, log_level="info")


__all__ = ["ApiError", "convert_messages", "create_app", "serve", "server_threads", "usable_cores"]
