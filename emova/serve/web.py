"""`emova web`: a Gradio page over `emova.inference.pipeline.Emova`.

Record from the microphone or upload a clip, optionally add an image and typed text, pick the voice
and (optionally) the reply's emotion, pitch and speed; the page shows what emova heard (transcript and
the user's emotion/pitch), its reply text and style labels, plays the reply and keeps the conversation
(multi-turn, through `Emova.chat`'s message history).

    demo = create_web(Emova.from_pretrained("emova-tiny"))
    demo.queue(default_concurrency_limit=1).launch(server_port=7860)

All logic lives in `WebChat.turn` (plain Python, tested without a browser); the Gradio callbacks only
move values in and out. Bad input (unreadable audio, an oversized image, silence, ...) ends up as a
message in the status box and the conversation stays as it was.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from emova.inference.messages import load_image
from emova.inference.pipeline import GenerationError
from emova.styles import EMOTIONS, GENDERS, PITCHES, SPEEDS, Style

if TYPE_CHECKING:  # pragma: no cover
    import gradio as gr

    from emova.inference.pipeline import ChatResult, Emova

AUTO = "auto"  # "let the model choose" in the style pickers


def style_override(emotion: str | None = None, pitch: str | None = None,
                   speed: str | None = None) -> dict[str, str] | None:
    """The pickers' values → `Emova.chat(style_override=...)`; "auto"/None/"" leave a field to the model."""
    out = {k: v for k, v in (("emotion", emotion), ("pitch", pitch), ("speed", speed)) if v not in (None, "", AUTO)}
    if out:
        Style().replace(**out)  # unknown labels raise ValueError naming the field and the accepted values
    return out or None


def labels(result: ChatResult) -> dict[str, Any]:
    """The style labels of a turn, as the page shows them."""
    return {"user emotion": result.user_emotion, "user pitch": result.user_pitch,
            "reply emotion": result.emotion, "reply pitch": result.pitch,
            "reply style": str(result.style) if result.style else None, "mode": result.mode,
            "repairs": result.repairs}


@dataclass
class Conversation:
    """One browser session's history: what `Emova.chat` gets next time, and what the chat box shows."""

    messages: list[dict[str, Any]] = field(default_factory=list)
    shown: list[dict[str, Any]] = field(default_factory=list)
    image_key: str | None = None  # the image already in the conversation (it is sent once)


@dataclass
class TurnView:
    """What one turn puts on the page."""

    transcript: str = ""
    text: str = ""
    labels: dict[str, Any] | None = None
    audio: tuple[int, np.ndarray] | None = None  # (sample rate, int16 samples) for gr.Audio
    status: str = ""
    ok: bool = False


def _file_key(path: str) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _short(message: str, *paths: str | None) -> str:
    """Upload paths are long server-side temp names; show the file name the user knows."""
    for p in paths:
        if p:
            message = message.replace(str(p), Path(p).name)
    return message


def _int16(samples: np.ndarray) -> np.ndarray:
    return (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)


class WebChat:
    """The page's behaviour, independent of Gradio: one call per submitted turn."""

    def __init__(self, model: Emova, max_new_tokens: int | None = None) -> None:
        self.model = model
        self.max_new_tokens = max_new_tokens

    def turn(self, conv: Conversation | None, audio: str | None, image: str | None, text: str | None,
             voice: str = "female", emotion: str | None = AUTO, pitch: str | None = AUTO,
             speed: str | None = AUTO) -> tuple[Conversation, TurnView]:
        """Run one user turn. Returns the new conversation (the old one unchanged on error) and the view."""
        conv = conv or Conversation()
        text = (text or "").strip()
        try:
            if not (audio or text):
                raise ValueError("record or upload a spoken question, or type one")
            override = style_override(emotion, pitch, speed)
            content: list[dict[str, Any]] = []
            image_key = conv.image_key
            if image:
                key = _file_key(image)
                if key != conv.image_key:  # a new picture joins the conversation once
                    content.append({"type": "image", "image": load_image(image, "image")})
                    image_key = key
            if audio:
                content.append({"type": "audio", "audio": self.model_audio(audio)})
            if text:
                content.append({"type": "text", "text": text})
            user = {"role": "user", "content": content}
            result = self.model.chat(conv.messages + [user], voice=voice, style_override=override,
                                     max_new_tokens=self.max_new_tokens)
        except (ValueError, GenerationError) as e:  # AudioError is a ValueError
            return conv, TurnView(status=f"Error: {_short(str(e), audio, image)}")
        except Exception as e:  # noqa: BLE001 — the page must stay up; say what happened
            return conv, TurnView(status=f"Error (internal): {type(e).__name__}: {_short(str(e), audio, image)}")
        return self._record(conv, user, image_key, result, audio is not None, text)

    def model_audio(self, path: str) -> Any:
        """Load and check the clip now, so a bad file is reported as the audio's problem."""
        from emova.inference.messages import load_audio

        return load_audio(path, "audio", getattr(self.model, "max_audio_seconds", 300.0))

    def _record(self, conv: Conversation, user: dict[str, Any], image_key: str | None, result: ChatResult,
                spoken: bool, text: str) -> tuple[Conversation, TurnView]:
        said = result.transcript if result.transcript else ""
        user_line = " ".join(s for s in (f"[speech] {said or '(not transcribed)'}" if spoken else "", text) if s)
        if image_key != conv.image_key:
            user_line = "[image] " + user_line
        tags = ", ".join(x for x in (result.emotion, result.pitch) if x)
        reply_line = result.text + (f"  _({tags})_" if tags else "")
        new = Conversation(conv.messages + [user, result.as_message()],
                           conv.shown + [{"role": "user", "content": user_line},
                                         {"role": "assistant", "content": reply_line or "(no text)"}],
                           image_key)
        audio = None if result.audio is None else (result.audio.sample_rate, _int16(result.audio.samples))
        status = "Replied" + ("" if audio is not None else " (no speech in the reply)")
        if result.repairs:
            status += f"; repaired the model's answer: {'; '.join(result.repairs)}"
        return new, TurnView(said, result.text, labels(result), audio, status, True)


def create_web(model: Emova, title: str = "emova", max_new_tokens: int | None = None) -> gr.Blocks:
    """The Gradio app for `model` (an `Emova`, or anything with its `chat`). Launch it yourself, or use
    `launch_web`."""
    import gradio as gr

    chat = WebChat(model, max_new_tokens)
    pick = ["auto", *EMOTIONS]
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}: talk about a picture, hear the answer with emotion")
        state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                audio_in = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Your question (speech)",
                                    elem_id="emova-audio-in")
                image_in = gr.Image(type="filepath", sources=["upload", "clipboard"], label="Image (optional)",
                                    elem_id="emova-image-in", height=220,
                                    image_mode=None)  # keep alpha: the pipeline lays transparency on white
                text_in = gr.Textbox(label="Typed text (optional)", placeholder="or type a question",
                                     elem_id="emova-text-in", lines=1)
                with gr.Row():
                    voice = gr.Radio(list(GENDERS), value="female", label="Voice", elem_id="emova-voice")
                    emotion = gr.Dropdown(pick, value=AUTO, label="Emotion", elem_id="emova-emotion")
                with gr.Row():
                    pitch = gr.Dropdown([AUTO, *PITCHES], value=AUTO, label="Pitch", elem_id="emova-pitch")
                    speed = gr.Dropdown([AUTO, *SPEEDS], value=AUTO, label="Speed", elem_id="emova-speed")
                with gr.Row():
                    send = gr.Button("Send", variant="primary", elem_id="emova-send")
                    clear = gr.Button("New conversation", elem_id="emova-clear")
            with gr.Column(scale=1):
                status = gr.Markdown("", elem_id="emova-status")
                transcript = gr.Textbox(label="You said (transcript)", interactive=False, elem_id="emova-transcript")
                reply = gr.Textbox(label="emova replied", interactive=False, elem_id="emova-reply-text")
                reply_audio = gr.Audio(label="Reply speech", type="numpy", interactive=False, autoplay=False,
                                       elem_id="emova-reply-audio")
                style_labels = gr.JSON(label="Style labels", elem_id="emova-labels")
                history = gr.Chatbot(label="Conversation", elem_id="emova-chat", height=300)

        def on_send(conv, a, img, txt, v, e, p, s):  # noqa: ANN001 — Gradio passes component values
            conv, view = chat.turn(conv, a, img, txt, v, e, p, s)
            shown = conv.shown
            if not view.ok:  # keep the inputs so the user can fix them
                return conv, shown, gr.update(), gr.update(), gr.update(), gr.update(), view.status, \
                    gr.update(), gr.update()
            return conv, shown, view.transcript, view.text, view.audio, view.labels, view.status, None, ""

        def on_clear():
            return None, [], "", "", None, None, "", None, ""

        outputs = [state, history, transcript, reply, reply_audio, style_labels, status, audio_in, text_in]
        inputs = [state, audio_in, image_in, text_in, voice, emotion, pitch, speed]
        send.click(on_send, inputs, outputs, api_name="chat")
        text_in.submit(on_send, inputs, outputs, api_name=False)
        clear.click(on_clear, None, outputs, api_name=False)
    return demo


def launch_web(model: str = "emova-tiny", host: str = "127.0.0.1", port: int = 7860, device: str = "cpu",
               share: bool = False, threads: int | str | None = "auto", **launch_kw: Any) -> None:
    """Load `model` (bundled name or directory) and serve the page until interrupted, with
    `emova.serve.api.server_threads(threads)` intra-op threads (a core is left to the web server)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import torch

    from emova.inference.pipeline import Emova
    from emova.serve.api import server_threads

    torch.set_num_threads(server_threads(threads))

    m = Emova.from_pretrained(model, device=device)
    demo = create_web(m, title=f"emova ({Path(str(model)).name})")
    demo.queue(default_concurrency_limit=1).launch(server_name=host, server_port=port, share=share,
                                                   **launch_kw)


__all__ = ["Conversation", "TurnView", "WebChat", "create_web", "launch_web", "style_override"]
