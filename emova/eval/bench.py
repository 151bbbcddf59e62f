"""`emova bench s2u`: real-time factor of the speech tokenizer (seconds of compute per second of audio)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from emova.audio import SAMPLE_RATE, Audio
from emova.speech.s2u import CONFIGS, S2UModel
from emova.speech.tokenizer import SpeechTokenizer


def _speechlike(seconds: float, seed: int = 0) -> Audio:
    """Deterministic non-silent test signal (harmonic tone with a moving pitch + noise)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 140 + 30 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / SAMPLE_RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.1 + rng.normal(0, 0.01, len(t))
    return Audio(x.astype(np.float32), SAMPLE_RATE)


def _rtf(tok: SpeechTokenizer, audio: Audio, repeats: int) -> float:
    tok.encode(audio)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        tok.encode(audio)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) / audio.duration


def bench_s2u(model: str = "emova-tiny", threads: int = 2, seconds: float = 10.0, repeats: int = 5,
              out: str | None = None) -> dict:
    torch.set_num_threads(threads)
    audio = _speechlike(seconds)
    res = {"threads": threads, "audio_seconds": seconds, "repeats": repeats}
    tok = SpeechTokenizer.from_pretrained(model)
    res["tiny"] = {"params": sum(p.numel() for p in tok.model.parameters()), "rtf": _rtf(tok, audio, repeats)}
    big = SpeechTokenizer(S2UModel(CONFIGS["emova"]))  # original dimensions, random weights: speed only
    res["emova_size"] = {"params": sum(p.numel() for p in big.model.parameters()), "rtf": _rtf(big, audio, repeats)}
    print(f"S2U speed on {threads} threads, {seconds:.0f} s audio (median of {repeats})")
    for k in ("tiny", "emova_size"):
        print(f"  {k:10s} {res[k]['params'] / 1e6:7.2f}M params   RTF {res[k]['rtf']:.4f}")
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(res, indent=1))
    return res
