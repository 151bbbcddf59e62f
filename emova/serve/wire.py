"""The OpenAI wire format of `emova serve`: request parsing and validation, reply encoding.

Everything a request carries is checked here and refused with an `ApiError` (an HTTP status and OpenAI's
`{"error": {"message", "type", "param", "code"}}` body) naming the field; `emova.serve.api` holds the routes.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import time
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from emova.audio import SAMPLE_RATE, Audio, AudioError
from emova.model.processor import to_rgb
from emova.styles import EMOTIONS, GENDERS, PITCHES, SPEEDS

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


class ApiError(Exception):
    """A request the server refuses: HTTP status + OpenAI-style error body."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


# ------------------------------------------------------------------------------------ request parsing
def _b64(data: Any, param: str) -> bytes:
    if not isinstance(data, str) or not data.strip():
        raise ApiError(400, f"{param} must be a non-empty base64 string", param, "invalid_base64")
    try:
        return base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param} is not valid base64", param, "invalid_base64") from None


def decode_audio(raw: bytes, param: str, max_seconds: float) -> Audio:
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
        return {"type": "audio", "audio": decode_audio(raw, f"{p}.data", limits["max_audio_seconds"])}
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


def reply_audio_options(audio: Any, stream: bool = False) -> tuple[str, dict[str, str] | None, str]:
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
    override = style_labels(audio, "audio.")
    return voice, override or None, fmt


def style_labels(source: dict[str, Any], prefix: str = "", speed_hint: str = "") -> dict[str, str]:
    """The emotion / pitch / speed labels `source` sets (each checked; `prefix` and `speed_hint` go into errors)."""
    labels = {}
    for name, allowed in (("emotion", EMOTIONS), ("pitch", PITCHES), ("speed", SPEEDS)):
        v = source.get(name)
        if v is None:
            continue
        if v not in allowed:
            raise ApiError(400, f"unknown {name} {v!r}; accepted: {', '.join(allowed)}"
                           + (speed_hint if name == "speed" else ""), f"{prefix}{name}", f"invalid_{name}")
        labels[name] = v
    return labels


def speech_request(body: dict[str, Any]) -> tuple[str, str, dict[str, str], float]:
    """A `/v1/audio/speech` body → (text, response_format, Style fields, rate). `speed` is OpenAI's number (0.25–4,
    a rate applied after the U2S) or one of our labels (the U2S's style)."""
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
    if isinstance(speed, (int, float)) and not isinstance(speed, bool):
        if not 0.25 <= speed <= 4.0:
            raise ApiError(400, f"speed {speed!r} is out of range; a number in [0.25, 4] or one of "
                           f"{', '.join(SPEEDS)}", "speed", "invalid_speed")
        rate, body = float(speed), {k: v for k, v in body.items() if k != "speed"}
    fields.update(style_labels(body, speed_hint=" or a number in [0.25, 4]"))
    return text, fmt, fields, rate


def int_option(body: dict, *names: str) -> int | None:
    for n in names:
        v = body.get(n)
        if v is not None:
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ApiError(400, f"{n} must be a positive integer", n, "invalid_value")
            return v
    return None


def json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON: {e}", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object", None, "invalid_json")
    return body


def multipart_file(content_type: str, raw: bytes) -> tuple[bytes, dict[str, str]]:
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


def audio_object(result: Any, audio_id: str, fmt: str = "wav") -> dict[str, Any] | None:
    if result.audio is None:
        return None
    return {"id": audio_id, "data": base64.b64encode(encode_reply(result.audio, fmt)).decode("ascii"),
            "expires_at": int(time.time()) + 3600, "transcript": result.text}


def _timestamp(seconds: float, sep: str) -> str:
    """SRT (`sep` ",") / WebVTT (".") time: HH:MM:SS,mmm."""
    ms = int(round(seconds * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d}{sep}{ms % 1000:03d}"


def transcript_reply(text: str, audio: Audio, fmt: str) -> tuple[Any, str | None]:
    """A transcription in one of `TRANSCRIPT_FORMATS`: (body, media type; None for JSON). The timed formats carry one
    segment over the clip's sound (`Audio.speech_span`): the model gives no word timings."""
    if fmt == "text":
        return text, "text/plain"
    if fmt == "json":
        return {"text": text}, None
    start, end = audio.speech_span() or (0.0, audio.duration)
    if fmt == "verbose_json":
        return {"task": "transcribe", "language": "english", "duration": round(audio.duration, 3), "text": text,
                "segments": [{"id": 0, "seek": 0, "start": round(start, 3), "end": round(end, 3), "text": text,
                              "tokens": [], "temperature": 0.0}]}, None
    if fmt == "srt":
        return f"1\n{_timestamp(start, ',')} --> {_timestamp(end, ',')}\n{text}\n", "application/x-subrip"
    return f"WEBVTT\n\n{_timestamp(start, '.')} --> {_timestamp(end, '.')}\n{text}\n", "text/vtt"


def usage_object(result: Any) -> dict[str, int]:
    """OpenAI's usage object from `ChatResult.usage` (prompt: text, image and speech-unit tokens)."""
    p, c = int(result.usage.get("prompt_tokens", 0)), int(result.usage.get("completion_tokens", 0))
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def emova_object(result: Any) -> dict[str, Any]:
    return {"transcript": result.transcript, "user_emotion": result.user_emotion, "user_pitch": result.user_pitch,
            "emotion": result.emotion, "pitch": result.pitch, "style": str(result.style) if result.style else None,
            "mode": result.mode, "repairs": result.repairs, "timings": result.timings}
