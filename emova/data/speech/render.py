"""Text + voice + style → 16 kHz speech, with flite or espeak-ng.

`synthesize(text, voice, style, jitter)` renders one utterance; `emova.data.speech.corpus` plans
and renders whole corpora with it.
"""

from __future__ import annotations

import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

from emova.audio import SAMPLE_RATE, Audio
from emova.data.speech.voices import Voice, style_prosody
from emova.styles import Style


@dataclass(frozen=True)
class Jitter:
    """Per-speaker-instance variation on top of the style (keeps a 'voice' from being one point)."""

    f0: float = 1.0
    rate: float = 1.0
    gain_db: float = 0.0


def _range_keyword(mult: float) -> str:
    for kw, hi in (("x-low", 0.6), ("low", 0.9), ("medium", 1.2), ("high", 1.6)):
        if mult < hi:
            return kw
    return "x-high"


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")


def synthesize(text: str, voice: Voice, style: Style, jitter: Jitter = Jitter()) -> Audio:
    """Render `text` in `voice` with the prosody of `style`; returns 16 kHz mono audio."""
    pros = style_prosody(style)
    f0 = voice.base_f0 * pros.f0 * jitter.f0
    rate = pros.rate * jitter.rate
    with tempfile.TemporaryDirectory(prefix="emova-tts-") as tmp:
        wav = os.path.join(tmp, "out.wav")
        if voice.engine == "espeak":
            # espeak pitch 0..99 (50 = voice default); ~60 steps per octave measured on en-us
            p = int(np.clip(50 + 60 * math.log2(f0 / voice.base_f0), 0, 99))
            speed = int(np.clip(165 * rate, 80, 450))
            ssml = f'<speak><prosody range="{_range_keyword(pros.f0_range)}">{escape(text)}</prosody></speak>'
            _run(["espeak-ng", "-m", "-v", voice.name, "-p", str(p), "-s", str(speed), "-w", wav, ssml])
        elif voice.engine == "flite":
            cmd = ["flite", "-voice", voice.name, "-t", text, "-o", wav,
                   "--setf", f"duration_stretch={1.0 / rate:.3f}",
                   "--setf", f"int_f0_target_stddev={max(2.0, 22.0 * pros.f0_range):.1f}"]
            if voice.name != "rms":  # rms ignores the F0 target: shifted with sox below
                cmd += ["--setf", f"int_f0_target_mean={f0:.1f}"]
            _run(cmd)
            if voice.name == "rms" and abs(f0 / voice.base_f0 - 1) > 0.01:
                shifted = os.path.join(tmp, "shifted.wav")
                cents = 1200 * math.log2(f0 / voice.base_f0)
                _run(["sox", wav, shifted, "pitch", f"{cents:.0f}"])
                wav = shifted
        else:
            raise ValueError(f"unknown TTS engine {voice.engine!r}")
        audio = Audio.load(wav, SAMPLE_RATE)
    gain = 10 ** ((pros.energy_db + jitter.gain_db) / 20)
    # bring engines to a common level (-20 dBFS RMS) before the emotion's energy change
    rms = float(np.sqrt(np.mean(audio.samples**2))) + 1e-9
    samples = audio.samples * (0.1 / rms) * gain
    peak = float(np.abs(samples).max())
    if peak > 0.99:
        samples = samples * (0.99 / peak)
    return Audio(samples.astype(np.float32), SAMPLE_RATE)
