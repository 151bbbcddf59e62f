"""Audio: a mono float32 waveform with its sample rate; loading, resampling, features.

Everything that reads audio from outside goes through `Audio.load` / `Audio.from_bytes`, which
validate the input and raise `AudioError` (a `ValueError`) naming the problem.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from scipy.signal import resample_poly

SAMPLE_RATE = 16_000
N_MELS = 128
HOP = 160  # 10 ms at 16 kHz
WIN = 320  # 20 ms window
N_FFT = 512
MAX_SECONDS_DEFAULT = 600.0  # refuse longer inputs unless asked


class AudioError(ValueError):
    """Raised for audio input that cannot be used; the message says what was wrong."""


#: `Audio.to_bytes` formats written through libsndfile: name → (container, subtype)
ENCODINGS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"),
             "opus": ("OGG", "OPUS")}


#: `Audio.save` file extensions → encodings
SAVE_EXTENSIONS = {".wav": "wav", ".flac": "flac", ".mp3": "mp3", ".ogg": "opus", ".opus": "opus"}


def check_audio_path(path: str | Path) -> Path:
    """A path `Audio.save` can write (its extension names an encoding); checked before any work is done."""
    path = Path(path)
    if path.suffix.lower() not in SAVE_EXTENSIONS:
        raise AudioError(f"cannot save audio as {path.name!r}: use one of {', '.join(SAVE_EXTENSIONS)}")
    if path.is_dir():
        raise AudioError(f"cannot save audio as {path}: it is a directory")
    return path


def pcm16_bytes(x: np.ndarray) -> bytes:
    """float samples in [-1, 1] → raw little-endian int16 bytes."""
    return (np.clip(x, -1.0, 1.0) * 32767.0).round().astype("<i2").tobytes()


class StreamResampler:
    """Resamples a stream of chunks so that, joined, they equal the whole signal resampled at once (no seams).

    Each call returns the output for the input received so far, less the last `hold` input samples, which wait
    for the next chunk (their filter needs what follows); `flush()` returns the rest. ~2 ms of delay."""

    def __init__(self, rate_in: int, rate_out: int, hold: int = 64) -> None:
        g = math.gcd(int(rate_in), int(rate_out))
        self.up, self.down = int(rate_out) // g, int(rate_in) // g
        self.hold = hold - hold % self.down + self.down  # a multiple of `down`, so outputs stay on the grid
        self._buf = np.zeros(0, np.float64)  # input received but not yet turned into output
        self._ctx = np.zeros(0, np.float64)  # input already emitted, kept as left context
        self._done = False

    def _run(self, x: np.ndarray, n_out_in: int) -> np.ndarray:
        """Resample context + x; return the output of x's first `n_out_in` samples (a multiple of `down`)."""
        full = np.concatenate([self._ctx, x])
        y = resample_poly(full, self.up, self.down)
        a = len(self._ctx) * self.up // self.down
        return y[a: a + n_out_in * self.up // self.down]

    def push(self, x: np.ndarray) -> np.ndarray:
        if self._done:
            raise RuntimeError("StreamResampler: push after flush")
        self._buf = np.concatenate([self._buf, np.asarray(x, np.float64)])
        n = len(self._buf) - self.hold
        n -= n % self.down
        if n <= 0:
            return np.zeros(0, np.float32)
        y = self._run(self._buf, n)
        self._ctx = np.concatenate([self._ctx, self._buf[:n]])[-self.hold:]
        self._buf = self._buf[n:]
        return y.astype(np.float32)

    def flush(self) -> np.ndarray:
        self._done = True
        n = len(self._buf)
        if n == 0:
            return np.zeros(0, np.float32)
        pad = (-n) % self.down
        y = self._run(np.concatenate([self._buf, np.zeros(pad)]), n + pad)
        return y[: int(math.ceil(n * self.up / self.down))].astype(np.float32)


@dataclass
class Audio:
    samples: np.ndarray  # (T,) float32 in [-1, 1]
    sample_rate: int

    def __post_init__(self) -> None:
        s = np.asarray(self.samples)
        if s.ndim == 2:
            raise AudioError(
                f"audio has {s.shape[1] if s.shape[0] > s.shape[1] else s.shape[0]} channels; "
                "pass mono samples (Audio.load mixes stereo files down for you)"
            )
        if s.ndim != 1:
            raise AudioError(f"audio samples must be a 1-D array, got shape {s.shape}")
        if not np.issubdtype(s.dtype, np.number):
            raise AudioError(f"audio samples must be numeric, got dtype {s.dtype}")
        if not isinstance(self.sample_rate, (int, np.integer)) or not 1000 <= int(self.sample_rate) <= 384_000:
            raise AudioError(f"sample rate must be an integer in [1000, 384000] Hz, got {self.sample_rate!r}")
        s = s.astype(np.float32, copy=False)
        if not np.all(np.isfinite(s)):
            raise AudioError("audio contains NaN or infinite samples")
        self.samples = s
        self.sample_rate = int(self.sample_rate)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def load(cls, path: str | Path, sample_rate: int | None = None) -> Audio:
        """Read a WAV/FLAC/OGG file, mix to mono, optionally resample."""
        path = Path(path)
        if not path.exists():
            raise AudioError(f"audio file not found: {path}")
        if path.is_dir():
            raise AudioError(f"expected an audio file, got a directory: {path}")
        if path.stat().st_size == 0:
            raise AudioError(f"audio file is empty (0 bytes): {path}")
        try:
            data, sr = sf.read(str(path), dtype="float32", always_2d=True)
        except Exception as e:  # soundfile raises several types; name the file and the reason
            raise AudioError(f"cannot read {path} as audio (supported: WAV, FLAC, OGG): {e}") from None
        return cls._from_array(data, sr, str(path), sample_rate)

    @classmethod
    def from_bytes(cls, data: bytes, sample_rate: int | None = None, what: str = "audio") -> Audio:
        if not data:
            raise AudioError(f"{what} is empty (0 bytes)")
        try:
            arr, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
        except Exception as e:
            raise AudioError(f"cannot decode {what} (supported: WAV, FLAC, OGG): {e}") from None
        return cls._from_array(arr, sr, what, sample_rate)

    @classmethod
    def _from_array(cls, data: np.ndarray, sr: int, what: str, sample_rate: int | None) -> Audio:
        if data.shape[0] == 0:
            raise AudioError(f"{what} contains no samples")
        mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
        audio = cls(mono, sr)
        return audio.resample(sample_rate) if sample_rate else audio

    def save(self, path: str | Path) -> Path:
        """Write the clip; the extension picks the encoding: .wav (16-bit), .flac, .mp3, .ogg / .opus (Opus)."""
        path = check_audio_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.to_bytes(SAVE_EXTENSIONS[path.suffix.lower()]))
        return path

    def to_wav_bytes(self) -> bytes:
        return self.to_bytes("wav")

    def to_bytes(self, fmt: str = "wav") -> bytes:
        """Encode as `fmt`: "wav" (16-bit PCM), "flac", "mp3", "opus" (in Ogg), or "pcm16" (raw little-endian
        16-bit samples, no header, at this clip's rate)."""
        if fmt == "pcm16":
            return pcm16_bytes(self.samples)
        if fmt not in ENCODINGS:
            raise AudioError(f"unknown audio encoding {fmt!r}; accepted: {', '.join([*ENCODINGS, 'pcm16'])}")
        container, subtype = ENCODINGS[fmt]
        buf = io.BytesIO()
        sf.write(buf, np.clip(self.samples, -1.0, 1.0), self.sample_rate, format=container, subtype=subtype)
        return buf.getvalue()

    # ------------------------------------------------------------ transforms
    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    def resample(self, sample_rate: int) -> Audio:
        if sample_rate == self.sample_rate:
            return self
        g = math.gcd(int(sample_rate), self.sample_rate)
        up, down = int(sample_rate) // g, self.sample_rate // g
        out = resample_poly(self.samples.astype(np.float64), up, down).astype(np.float32)
        return Audio(out, int(sample_rate))

    def peak(self) -> float:
        return float(np.abs(self.samples).max()) if len(self.samples) else 0.0

    def is_silent(self, threshold_db: float = -50.0) -> bool:
        """True when the loudest 10 ms frame is below `threshold_db` dBFS."""
        if len(self.samples) == 0:
            return True
        hop = max(1, self.sample_rate // 100)
        n = len(self.samples) // hop
        if n == 0:
            rms = float(np.sqrt(np.mean(self.samples**2)))
        else:
            frames = self.samples[: n * hop].reshape(n, hop)
            rms = float(np.sqrt((frames**2).mean(axis=1)).max())
        return 20 * math.log10(rms + 1e-12) < threshold_db

    def _sound_frames(self, span_db: float = 40.0, floor_share: float = 0.25) -> np.ndarray | None:
        """Per 10 ms frame (20 ms windows), whether it holds sound above the background: frame energies, smoothed over
        3 frames, against the higher of `span_db` below the loud frames (99th percentile; for clean recordings) and
        `floor_share` of the way from the background (10th percentile) up to them (for recordings in noise).
        None when the clip is shorter than a window or digitally silent."""
        hop, win = max(1, self.sample_rate // 100), max(2, self.sample_rate // 50)
        x = self.samples.astype(np.float64)
        if len(x) < win:
            return None
        n = (len(x) - win) // hop + 1
        idx = np.arange(win)[None] + hop * np.arange(n)[:, None]
        e = 10 * np.log10(np.mean(x[idx] ** 2, axis=1) + 1e-10)
        if n >= 3:
            e = np.convolve(np.pad(e, 1, mode="edge"), np.ones(3) / 3, mode="valid")
        loud, floor = np.percentile(e, 99), np.percentile(e, 10)
        if loud <= -100.0 + 1e-6:
            return None
        return e > max(loud - span_db, floor + floor_share * (loud - floor))

    def speech_span(self, span_db: float = 40.0, floor_share: float = 0.25) -> tuple[float, float] | None:
        """(start, end) in seconds of the part that holds sound above the background (`_sound_frames`), or None
        when no frame does."""
        on = self._sound_frames(span_db, floor_share)
        if on is None or not on.any():
            return None
        hop, win = max(1, self.sample_rate // 100), max(2, self.sample_rate // 50)
        idx = np.nonzero(on)[0]
        return idx[0] * hop / self.sample_rate, min(len(self.samples), idx[-1] * hop + win) / self.sample_rate

    def shorten_pauses(self, keep_s: float = 0.05, tolerance_s: float = 0.25, fade_s: float = 0.005) -> Audio:
        """The clip with every pause inside its sound longer than `keep_s + tolerance_s` cut down to `keep_s` (its
        middle removed, the join crossfaded over `fade_s`). Returns self when no pause is that long.

        Training clips pause ~0.04 s at most inside (median; p99 0.16 s, for flite, espeak-ng and FSDD alike); a
        speaker who stops to think for a second makes a clip the models never heard."""
        on = self._sound_frames()
        if on is None or not on.any():
            return self
        hop, sr = max(1, self.sample_rate // 100), self.sample_rate
        idx = np.nonzero(on)[0]
        inner = on[idx[0]: idx[-1] + 1]
        cuts: list[tuple[int, int]] = []  # sample ranges to remove
        k = 0
        while k < len(inner):
            if inner[k]:
                k += 1
                continue
            j = k
            while j < len(inner) and not inner[j]:
                j += 1
            if (j - k) * hop / sr > keep_s + tolerance_s:
                a = (idx[0] + k) * hop + int(keep_s / 2 * sr)
                b = (idx[0] + j) * hop - int(keep_s / 2 * sr)
                cuts.append((a, b))
            k = j
        if not cuts:
            return self
        f = max(1, int(fade_s * sr))
        ramp = np.linspace(0.0, 1.0, f, dtype=np.float32)
        out, pos = [], 0
        for a, b in cuts:
            head = self.samples[pos:a].copy()
            tail_in = self.samples[b:b + f]
            n = min(f, len(head), len(tail_in))
            if n:
                head[-n:] = head[-n:] * (1 - ramp[-n:]) + tail_in[:n] * ramp[-n:]
            out.append(head)
            pos = b + n
        out.append(self.samples[pos:])
        return Audio(np.concatenate(out), sr)

    def trim_silence(self, lead_s: float = 0.2, trail_s: float = 0.2, tolerance_s: float = 0.1) -> Audio:
        """The clip with its leading and trailing silence (or background) cut down to `lead_s` / `trail_s` around
        the sound (`speech_span`). A side is cut only where its silence exceeds what is kept by more than
        `tolerance_s`, so a clip cut about that tightly already passes untouched. Returns self when nothing is cut
        or no sound is found.

        Speech models trained on tightly cut recordings (synthetic renderings, FSDD) hear a second of silence
        before a question as content; a microphone recording always has some."""
        span = self.speech_span()
        if span is None:
            return self
        sr, n = self.sample_rate, len(self.samples)
        a = max(0, int((span[0] - lead_s) * sr)) if span[0] > lead_s + tolerance_s else 0
        b = min(n, int(math.ceil((span[1] + trail_s) * sr))) if n / sr - span[1] > trail_s + tolerance_s else n
        if a == 0 and b == n:
            return self
        return Audio(self.samples[a:b].copy(), sr)

    def validate_speech(self, max_seconds: float = MAX_SECONDS_DEFAULT, min_seconds: float = 0.05) -> Audio:
        """Checks for speech inputs: not empty, not silent, not too long. Returns self."""
        if self.duration < min_seconds:
            raise AudioError(f"audio is too short ({self.duration * 1000:.0f} ms); need at least {min_seconds * 1000:.0f} ms")
        if self.duration > max_seconds:
            raise AudioError(f"audio is too long ({self.duration:.1f} s); the limit is {max_seconds:.0f} s")
        if self.is_silent():
            raise AudioError("audio is silent (no frame louder than -50 dBFS)")
        return self


def as_audio(x: str | Path | Audio, sample_rate: int | None = SAMPLE_RATE) -> Audio:
    """Accept a path or an Audio; return Audio at `sample_rate`."""
    if isinstance(x, Audio):
        return x.resample(sample_rate) if sample_rate else x
    if isinstance(x, (str, Path)):
        return Audio.load(x, sample_rate)
    raise AudioError(f"expected a path or an emova.Audio, got {type(x).__name__}")


@lru_cache(maxsize=8)
def _mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float | None) -> torch.Tensor:
    import librosa

    return torch.from_numpy(librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)).float()


def log_mel(
    wave: torch.Tensor | np.ndarray,
    sr: int = SAMPLE_RATE,
    n_mels: int = N_MELS,
    hop: int = HOP,
    win: int = WIN,
    n_fft: int = N_FFT,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> torch.Tensor:
    """Log-mel spectrogram. (T,) or (B, T) waveform → (n_mels, F) or (B, n_mels, F), F = T // hop + 1."""
    x = torch.as_tensor(wave, dtype=torch.float32)
    squeeze = x.dim() == 1
    if squeeze:
        x = x[None]
    window = torch.hann_window(win, device=x.device)
    spec = torch.stft(x, n_fft, hop_length=hop, win_length=win, window=window, center=True, return_complex=True)
    power = spec.real**2 + spec.imag**2  # (B, n_fft//2+1, F)
    mel = _mel_basis(sr, n_fft, n_mels, fmin, fmax).to(x.device) @ power
    out = torch.log(mel + 1e-6)
    return out[0] if squeeze else out


def f0_contour(audio: Audio, time_step: float = 0.01, floor: float = 60.0, ceiling: float = 600.0) -> np.ndarray:
    """F0 in Hz per `time_step` (0 where unvoiced), via Praat (parselmouth)."""
    import parselmouth

    snd = parselmouth.Sound(audio.samples.astype(np.float64), sampling_frequency=audio.sample_rate)
    pitch = snd.to_pitch(time_step=time_step, pitch_floor=floor, pitch_ceiling=ceiling)
    f0 = pitch.selected_array["frequency"]
    return np.asarray(f0, dtype=np.float32)


def median_f0(audio: Audio) -> float:
    f0 = f0_contour(audio)
    voiced = f0[f0 > 0]
    return float(np.median(voiced)) if len(voiced) else 0.0
