"""`SpeechDetokenizer` behaviour on top of an official EMOVA speech-tokenizer checkpoint (UVITS decoder,
126-row `style_embedding`), loaded strictly by `emova.convert.speech_tokenizer`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from emova.audio import Audio, as_audio
from emova.speech.detokenizer import parse_units
from emova.styles import Style


class OfficialDetokenizer:
    first_chunk = 8  # units in the first streamed chunk
    max_chunk = 64

    def __init__(self, model) -> None:  # model: emova.convert.speech_tokenizer.OfficialSpeechTokenizer
        self.model = model.eval()
        self.sample_rate = model.sample_rate
        self.n_units = model.config.u2s.n_units

    @classmethod
    def load(cls, path: str | Path) -> OfficialDetokenizer:
        from emova.convert.speech_tokenizer import load_official_speech_tokenizer

        return cls(load_official_speech_tokenizer(path))

    def save_pretrained(self, path: str | Path) -> Path:
        from emova.convert.speech_tokenizer import save_speech_tokenizer

        return save_speech_tokenizer(self.model, path)

    @torch.no_grad()
    def style_vector(self, style: Style | str | None = None, reference: Audio | str | Path | None = None) -> torch.Tensor:
        if reference is None:
            return self.model.style_vector(style or Style())[None]
        cfg = self.model.config.u2s
        ref = as_audio(reference, cfg.sampling_rate).validate_speech(max_seconds=60.0)
        x = torch.from_numpy(ref.samples)[None]
        pad = (cfg.filter_length - cfg.hop_length) // 2
        x = torch.nn.functional.pad(x[None], (pad, pad), mode="reflect")[0]
        spec = torch.stft(x, cfg.filter_length, cfg.hop_length, cfg.filter_length, torch.hann_window(cfg.filter_length),
                          center=False, return_complex=True)
        mag = torch.sqrt(spec.real**2 + spec.imag**2 + 1e-6)  # (1, F, T) linear spectrogram as in VITS
        return self.model.decoder.style_from_spectrogram(mag, torch.tensor([mag.shape[-1]]))

    @torch.no_grad()
    def decode(self, units: Iterable[int] | str, style: Style | str | None = None,
               reference: Audio | str | Path | None = None, length_scale: float = 1.0) -> Audio:
        u = parse_units(units, self.n_units)
        g = self.style_vector(style, reference)[0]
        wave = self.model.decoder.infer(u, g, length_scale=length_scale)
        return Audio(wave.float().clamp(-1, 1).numpy().astype(np.float32), self.sample_rate)

    def decode_stream(self, units: Iterable[int] | str, style: Style | str | None = None,
                      reference: Audio | str | Path | None = None, chunk_units: int | None = None,
                      crossfade_ms: float = 10.0) -> Iterator[Audio]:
        """Decode as units arrive: the stream is read lazily and cut at unit boundaries — a short first
        chunk (`chunk_units`, default `first_chunk`) so audio starts early, then doubling chunks up to
        `max_chunk`. Each chunk is decoded on its own; neighbours are joined with a linear crossfade
        (each chunk's tail is held back until the next one arrives)."""
        g_style = style if reference is None else None
        n_fade = int(self.sample_rate * crossfade_ms / 1000)
        held: np.ndarray | None = None
        size = chunk_units or self.first_chunk
        if size < 1:
            raise ValueError("chunk_units must be >= 1")
        source = parse_units(units, self.n_units) if isinstance(units, str) else units
        buf: list[int] = []

        def render(chunk: list[int], last: bool) -> Audio | None:
            nonlocal held
            wave = self.decode(chunk, g_style, reference).samples
            if held is not None:
                if len(wave) >= len(held):
                    ramp = np.linspace(0.0, 1.0, len(held), dtype=np.float32)
                    wave = np.concatenate([held * (1 - ramp) + wave[: len(held)] * ramp, wave[len(held):]])
                else:
                    wave = np.concatenate([held, wave])
            if not last and n_fade and len(wave) > 2 * n_fade:
                held, wave = wave[-n_fade:], wave[:-n_fade]
            else:
                held = None
            return Audio(wave, self.sample_rate) if len(wave) else None

        seen = False
        for u in source:
            seen = True
            buf.append(u)
            if len(buf) >= size:
                out = render(buf, last=False)
                buf, size = [], min(2 * size, max(self.max_chunk, size))
                if out is not None:
                    yield out
        if not seen:
            raise ValueError("cannot synthesise an empty unit sequence")
        if buf:
            out = render(buf, last=True)
            if out is not None:
                yield out
        elif held is not None:
            yield Audio(held, self.sample_rate)
