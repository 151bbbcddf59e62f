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
                      reference: Audio | str | Path | None = None, chunk_units: int = 10,
                      crossfade: int = 512) -> Iterator[Audio]:
        """Chunks of `chunk_units` units decoded independently, joined with a crossfade."""
        u = parse_units(list(units) if not isinstance(units, str) else units, self.n_units)
        tail: np.ndarray | None = None
        for s in range(0, len(u), chunk_units):
            wav = self.decode(u[s : s + chunk_units], style, reference).samples.copy()
            if tail is not None and len(wav) >= len(tail):
                fade = np.linspace(0, 1, len(tail), dtype=np.float32)
                wav[: len(tail)] = tail * (1 - fade) + wav[: len(tail)] * fade
            last = s + chunk_units >= len(u)
            xf = 0 if last else min(crossfade, len(wav) // 2)
            tail = wav[len(wav) - xf:] if xf else None
            yield Audio(wav[: len(wav) - xf], self.sample_rate)
