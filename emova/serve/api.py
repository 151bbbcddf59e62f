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
import json
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from emova.audio import Audio, StreamResampler, pcm16_bytes
from emova.inference.pipeline import ContextLengthError, GenerationError
from emova.serve.wire import (
    PCM_RATE,
    SPEECH_FORMATS,
    TRANSCRIPT_FORMATS,
    ApiError,
    audio_object,
    convert_messages,
    decode_audio,
    emova_object,
    encode_reply,
    int_option,
    json_body,
    multipart_file,
    reply_audio_options,
    speech_request,
    transcript_reply,
    usage_object,
)
from emova.styles import Style

if TYPE_CHECKING:  # pragma: no cover
    from emova.inference.pipeline import Emova

_REPLY_CACHE = 256  # assistant audio ids remembered for multi-turn (`{"role": "assistant", "audio": {"id"}}`)


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
        body = json_body(await read_body(request))
        msgs = convert_messages(body.get("messages"), limits, replies)
        modalities = body.get("modalities", ["text"])
        if not isinstance(modalities, list) or not modalities or any(m not in ("text", "audio") for m in modalities):
            raise ApiError(400, "modalities must be a list of 'text' and/or 'audio'", "modalities", "invalid_value")
        speak = "audio" in modalities
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise ApiError(400, "stream must be a boolean", "stream", "invalid_value")
        voice, override, audio_fmt = reply_audio_options(body.get("audio"), stream)
        kw = {"voice": voice, "style_override": override, "speak": speak,
              "max_new_tokens": int_option(body, "max_completion_tokens", "max_tokens")}
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
                   "audio": audio_object(result, audio_id, audio_fmt) if speak else None}
        return {"id": cid, "object": "chat.completion", "created": created, "model": model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": "stop", "logprobs": None}],
                "usage": usage_object(result), "emova": emova_object(result)}

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
                        yield chunk({}, "stop", emova=emova_object(result))
                        if include_usage:  # OpenAI's last chunk: no choices, the usage
                            yield chunk(None, usage=usage_object(result))
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
        text, fmt, fields, rate = speech_request(json_body(await read_body(request)))
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
            data, fields = multipart_file(ctype, raw)
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
        audio = decode_audio(data, "file", limits["max_audio_seconds"])
        try:
            text = await locked(model.transcribe, audio)
        except ValueError as e:
            raise model_error(e, "file") from None
        reply, media_type = transcript_reply(text, audio, fmt)
        return reply if media_type is None else Response(reply, media_type=media_type)

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
