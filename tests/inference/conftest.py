from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image

from emova.audio import Audio
from emova.inference.pipeline import Emova
from tests.inference.builders import official_layout_dir, our_layout_dir


@pytest.fixture(scope="session")
def ours_dir(tmp_path_factory):
    return our_layout_dir(tmp_path_factory.mktemp("emova_ours"))


@pytest.fixture(scope="session")
def official_dir(tmp_path_factory):
    return official_layout_dir(tmp_path_factory.mktemp("emova_official"), "official-hf")


@pytest.fixture(scope="session")
def emova(ours_dir) -> Emova:
    return Emova.from_pretrained(ours_dir)


@pytest.fixture(scope="session")
def speech() -> Audio:
    """1.2 s of a speech-like harmonic signal with a syllable-rate envelope, 16 kHz."""
    sr = 16000
    t = np.arange(int(1.2 * sr)) / sr
    f0 = 130 + 30 * np.sin(2 * np.pi * 1.3 * t)
    x = sum(np.sin(2 * np.pi * k * np.cumsum(f0) / sr) / k for k in range(1, 6))
    return Audio((0.2 * x * (1.2 + np.sin(2 * np.pi * 4 * t))).astype(np.float32), sr)


@pytest.fixture(scope="session")
def image() -> Image.Image:
    img = Image.new("RGB", (96, 80), (240, 240, 235))
    img.paste((220, 30, 30), (20, 20, 60, 60))
    return img


class Feed:
    """Force-feed a fixed model output through `Emova._tokens`; counts the tokens pulled."""

    def __init__(self, emova: Emova, *texts: str) -> None:
        tok = emova.processor.tokenizer
        self.outputs = [tok.encode(t, add_special_tokens=False) for t in texts]
        self.calls = 0
        self.pulled = 0
        self.prompts: list[str] = []
        self.emova = emova

    def __call__(self, inputs, settings) -> Iterator[int]:
        self.prompts.append(self.emova.processor.decode(inputs["input_ids"][0], skip_special_tokens=False))
        ids = self.outputs[min(self.calls, len(self.outputs) - 1)]
        self.calls += 1
        for t in ids[: settings.max_new_tokens]:
            self.pulled += 1
            yield t


class RecordingDetok:
    """Wraps a detokenizer and records what it was asked to say, and how."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.calls: list[tuple[str, list[int], str]] = []

    def decode(self, units, style=None, reference=None):
        self.calls.append(("decode", list(units), str(style)))
        return self.inner.decode(units, style=style, reference=reference)

    def decode_stream(self, units, style=None):
        seen: list[int] = []
        self.calls.append(("stream", seen, str(style)))

        def tee():
            for u in units:
                seen.append(u)
                yield u

        yield from self.inner.decode_stream(tee(), style=style)
