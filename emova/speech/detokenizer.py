"""`SpeechDetokenizer`: speech units + a style → speech (EMOVA's U2S), batch and streaming.

A detokenizer directory (`emova/assets/emova-tiny/speech_detokenizer/`) holds
    config.json         format "emova-u2s-v1", the U2S / style encoder / vocoder configs, stream settings
    model.safetensors   u2s.*, style_encoder.*, vocoder.* [, refiner.*] (fp16), `prototypes` (126, 256) fp32 and, when
                        calibrated, `prototype_prosody` (126, 4) fp32: per-condition F0 level, duration,
                        F0 excursion and loudness corrections (`ProsodyOffsets`)
With a `refiner` (config key and weights), a flow-matching mel refiner (`emova.speech.refiner`) redraws the
U2S mel before the vocoder, in place of the global-variance post-filter.
An official EMOVA speech-tokenizer directory (UVITS decoder + `style_embedding`) is accepted too and is
run through `emova.convert.speech_tokenizer.load_official_speech_tokenizer`.

Units are always reduced first (consecutive duplicates removed), so raw 25 Hz units from
`SpeechTokenizer.encode` and reduced units from the LLM give the same result.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from emova.assets import read_config, resolve_model_dir
from emova.audio import Audio, as_audio, check_audio_path
from emova.safetensors_io import load_tensors
from emova.speech.refiner import MelRefiner, MelRefinerConfig
from emova.speech.style_encoder import (
    ProsodyOffsets,
    StyleEncoder,
    StyleEncoderConfig,
    StylePrototypes,
    check_emotion_strength,
)
from emova.speech.u2s import U2SConfig, U2SModel
from emova.speech.vocoder import VocoderConfig, build_vocoder, mel_frames
from emova.styles import Style

FORMAT = "emova-u2s-v1"
UNIT_PATTERN = "<|speech_N|>"


@dataclass
class StreamConfig:
    # units that must have arrived before the first chunk is made (the issue allows up to 10). 6 with 3 of
    # lookahead: 30 held-out awb sentences, pocketsphinx WER of the joined stream 0.606/0.597 (female/male)
    # next to decode's 0.610/0.632 and 10/4's 0.667/0.567; DTW-aligned log-mel L1 to decode 0.389/0.419
    # (10/4: 0.373/0.408); audio starts 4 units (~0.1 s of LLM decoding) sooner (docs/u2s.md)
    first_chunk_units: int = 6
    chunk_units: int = 24  # units per later chunk (the largest chunk when chunks grow)
    # later chunks double from the first one's size up to chunk_units, so audio made so far covers the time
    # the next, larger chunk takes to arrive — for an LLM that makes units not much faster than real time.
    # Off by default: emova-tiny makes units ~5x faster than real time, and on its 2026-12-02 U2S the smaller
    # chunks drifted further from decode (frame-by-frame log-mel L1 1.885 vs 1.700, 10 held-out sentences)
    grow_chunks: bool = False
    lookahead_units: int = 3  # right context a chunk waits for (not emitted with it)
    left_context_units: int = 32
    crossfade_samples: int = 256
    vocoder_margin_frames: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.lookahead_units < self.first_chunk_units <= 10:
            raise ValueError("stream config needs 0 <= lookahead_units < first_chunk_units <= 10")
        if not isinstance(self.grow_chunks, bool):
            raise ValueError(f"stream config: grow_chunks must be true or false, got {self.grow_chunks!r}")
        if self.chunk_units < 1 or self.left_context_units < 0 or self.crossfade_samples < 0:
            raise ValueError("stream config: chunk_units >= 1, left_context_units >= 0, crossfade_samples >= 0")

    @classmethod
    def from_dict(cls, d: dict) -> StreamConfig:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown stream config keys: {sorted(unknown)}")
        return cls(**d)


def parse_units(units: Iterable[int] | str | np.ndarray | torch.Tensor, n_units: int) -> list[int]:
    """Validate units (ints in [0, n_units), or a `<|speech_N|>…` string) and reduce them."""
    if isinstance(units, str):
        from emova.speech.tokenizer import UNIT_RE

        s = units.strip()
        found = [int(m) for m in UNIT_RE.findall(s)]
        if UNIT_RE.sub("", s).strip():
            raise ValueError(f"unit string must contain only {UNIT_PATTERN} tokens, got {s[:40]!r}")
        units = found
    elif isinstance(units, torch.Tensor):
        units = units.reshape(-1).tolist()
    elif isinstance(units, np.ndarray):
        units = units.reshape(-1).tolist()
    out: list[int] = []
    for u in units:
        if isinstance(u, (bool, np.bool_)) or not isinstance(u, (int, np.integer)):
            raise ValueError(f"speech units must be integers, got {u!r}")
        if not 0 <= int(u) < n_units:
            raise ValueError(f"speech unit {int(u)} out of range [0, {n_units})")
        out.append(int(u))
    if not out:
        raise ValueError("cannot decode an empty unit list; give at least one speech unit")
    return [u for i, u in enumerate(out) if i == 0 or u != out[i - 1]]


def frame_f0_hz(lf0: torch.Tensor | np.ndarray, voiced: torch.Tensor | np.ndarray) -> torch.Tensor:
    """F0 in Hz per frame (0 where unvoiced) from normalised log-F0 and voicing — a `U2SModel.infer` output's
    `lf0` / `voiced`, or a Praat track (`f0_track`) — for the vocoder."""
    from emova.speech.u2s import F0_REF, F0_SCALE

    lf0, voiced = torch.as_tensor(lf0).float(), torch.as_tensor(voiced)
    return torch.exp(lf0 * F0_SCALE + F0_REF) * (voiced > 0).float()


class SpeechDetokenizer:
    def __init__(self, u2s: U2SModel, style_encoder: StyleEncoder, vocoder: torch.nn.Module,
                 prototypes: StylePrototypes, stream: StreamConfig | None = None,
                 refiner: MelRefiner | None = None, emotion_strength: float = 1.0) -> None:
        self.u2s = u2s.eval()
        self.refiner = None if refiner is None else refiner.eval()
        self.style_encoder = style_encoder.eval()
        self.vocoder = vocoder.eval()
        self.vocoder_config: VocoderConfig = vocoder.cfg
        self.prototypes = prototypes
        self.stream_config = stream or StreamConfig()
        self.emotion_strength = emotion_strength
        self.config = u2s.cfg
        self.sample_rate = u2s.cfg.sample_rate

    @property
    def emotion_strength(self) -> float:
        """How vivid the emotions of `style=` are (StylePrototypes.vector): 1 the corpus average, 0 neutral, up
        to 3; config key `emotion_strength`; `decode(..., emotion_strength=)` overrides it per call."""
        return self._emotion_strength

    @emotion_strength.setter
    def emotion_strength(self, value: float) -> None:
        self._emotion_strength = check_emotion_strength(value)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path = "emova-tiny") -> SpeechDetokenizer:
        d = resolve_model_dir(name_or_path, "speech_detokenizer")
        meta = read_config(d, "speech detokenizer")
        if meta.get("format") != FORMAT:
            if "u2s_style2idx" in meta or "u2s_unit_type" in meta:
                from emova.speech.official_detokenizer import OfficialDetokenizer

                return OfficialDetokenizer.load(d)  # type: ignore[return-value]
            raise ValueError(f"{d / 'config.json'}: unsupported format {meta.get('format')!r}; expected {FORMAT!r} "
                             "or an official EMOVA speech-tokenizer config")
        unknown = set(meta) - {"format", "u2s", "style_encoder", "vocoder", "refiner", "stream", "sample_rate",
                               "styles", "info", "emotion_strength"}
        if unknown:
            raise ValueError(f"{d / 'config.json'}: unknown keys {sorted(unknown)}")
        u2s = U2SModel(U2SConfig.from_dict(meta["u2s"]))
        enc = StyleEncoder(StyleEncoderConfig.from_dict(meta["style_encoder"]))
        voc = build_vocoder(VocoderConfig.from_dict(meta["vocoder"]))
        refiner = MelRefiner(MelRefinerConfig.from_dict(meta["refiner"])) if meta.get("refiner") is not None else None
        if refiner is not None and refiner.cfg.mel_mean is None:
            raise ValueError(f"{d / 'config.json'}: the refiner config has no mel_mean / mel_std (an untrained refiner)")
        weights = d / "model.safetensors"
        if not weights.is_file():
            raise ValueError(f"{d}: missing model.safetensors")
        state = load_tensors(weights)
        modules = [("u2s.", u2s), ("style_encoder.", enc), ("vocoder.", voc)]
        if refiner is not None:
            modules.append(("refiner.", refiner))
        elif any(k.startswith("refiner.") for k in state):
            raise ValueError(f"{weights}: has refiner weights but config.json has no refiner config")
        for prefix, module in modules:
            sub = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
            try:
                missing, unexpected = module.load_state_dict(sub, strict=False)
            except RuntimeError as e:  # tensor shapes differ from what the config builds
                raise ValueError(f"{weights}: {prefix[:-1]} weights do not match the config "
                                 f"({str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else e})") from None
            if missing or unexpected:
                raise ValueError(f"{weights}: {prefix[:-1]} weights do not match the config "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
        if "prototypes" not in state:
            raise ValueError(f"{weights}: no style prototype table")
        pros = state.get("prototype_prosody")
        protos = StylePrototypes(state["prototypes"].float(), meta.get("info", {}).get("prototype_counts"),
                                 None if pros is None else pros.float())
        try:
            strength = check_emotion_strength(meta.get("emotion_strength", 1.0))
        except ValueError as e:
            raise ValueError(f"{d / 'config.json'}: {e}") from None
        return cls(u2s, enc, voc, protos, StreamConfig.from_dict(meta.get("stream", {})), refiner, strength)

    def save_pretrained(self, path: str | Path, dtype: torch.dtype = torch.float16, info: dict | None = None) -> Path:
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "sample_rate": self.sample_rate, "u2s": self.u2s.cfg.to_dict(),
                "style_encoder": self.style_encoder.cfg.to_dict(), "vocoder": self.vocoder_config.to_dict(),
                **({"refiner": self.refiner.cfg.to_dict()} if self.refiner is not None else {}),
                "stream": asdict(self.stream_config), "emotion_strength": self.emotion_strength,
                "styles": self.prototypes.keys,
                "info": {"prototype_counts": self.prototypes.counts, **(info or {})}}
        (d / "config.json").write_text(json.dumps(meta, indent=1))
        sd: dict[str, torch.Tensor] = {}
        modules = [("u2s.", self.u2s), ("style_encoder.", self.style_encoder), ("vocoder.", self.vocoder)]
        if self.refiner is not None:
            modules.append(("refiner.", self.refiner))
        for prefix, module in modules:
            for k, v in module.state_dict().items():
                sd[prefix + k] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
        sd["prototypes"] = self.prototypes.table.float().contiguous()
        if self.prototypes.prosody.abs().sum() > 0:
            sd["prototype_prosody"] = self.prototypes.prosody.float().contiguous()
        save_file(sd, str(d / "model.safetensors"))
        return d

    # ------------------------------------------------------------------ style
    @torch.no_grad()
    def style_vector(self, style: Style | str | None = None, reference: Audio | str | Path | None = None,
                     emotion_strength: float | None = None) -> torch.Tensor:
        """(1, 256) style vector: from `reference` audio when given, else the prototype of `style` at
        `emotion_strength` (default: the detokenizer's)."""
        if reference is not None:
            ref = as_audio(reference, self.sample_rate).validate_speech(max_seconds=60.0)
            mel = mel_frames(ref.samples, self.vocoder_config)[None]
            return self.style_encoder(mel)
        if style is None:
            style = Style()
        strength = self.emotion_strength if emotion_strength is None else emotion_strength
        return self.prototypes.vector(style, strength)[None]

    def _offsets(self, style: Style | str | None, reference: Audio | str | Path | None) -> ProsodyOffsets:
        """The condition's stored prosody corrections; none when a reference clip sets the style."""
        return ProsodyOffsets() if reference is not None else self.prototypes.offsets(style or Style())

    # ------------------------------------------------------------------ decoding
    @torch.no_grad()
    def _mel(self, units: list[int], g: torch.Tensor, length_scale: float = 1.0,
             offsets: ProsodyOffsets = ProsodyOffsets(), unit_offset: int = 0) -> dict[str, torch.Tensor]:
        """U2S (+ refiner) output for `units`; `unit_offset`: the position of units[0] in the whole utterance
        (a streamed window), which fixes the refiner's noise so chunks draw what the full decode draws."""
        out = self.u2s.infer(torch.tensor([units]), g, length_scale=length_scale, level_offset=offsets.level,
                             rate_offset=offsets.rate, spread_scale=math.exp(offsets.log_spread),
                             gv=self.refiner is None)
        out["mel"] = self.refine(out["mel"], out["lf0"], out["voiced"], g, out["unit_index"] + unit_offset)
        return out

    def refine(self, mel: torch.Tensor, lf0: torch.Tensor, voiced: torch.Tensor, g: torch.Tensor,
               unit_index: torch.Tensor) -> torch.Tensor:
        """The U2S mel (F, n_mels) as the vocoder gets it: redrawn by the refiner when there is one (F0, style
        and each frame's absolute unit position fix its draw), else unchanged."""
        return mel if self.refiner is None else self.refiner.refine(mel, lf0, voiced, g, unit_index)

    @torch.no_grad()
    def vocode(self, mel: torch.Tensor, gain_db: float = 0.0, f0_hz: torch.Tensor | None = None) -> np.ndarray:
        """(F, n_mels) log-mel [+ (F,) F0 in Hz, 0 unvoiced: needed by an F0-conditioned vocoder] → float32
        waveform of (F - 1) * hop samples (times the gain, clipped to ±1)."""
        if mel.shape[0] < 2:
            mel = torch.cat([mel, mel], 0)
            f0_hz = None if f0_hz is None else torch.cat([f0_hz, f0_hz])[:2]
        f0 = None if f0_hz is None else f0_hz[None].float()
        wave = self.vocoder(mel[None].float(), f0)[0]
        if gain_db:
            wave = wave * 10 ** (gain_db / 20)
        return wave.clamp(-1.0, 1.0).numpy().astype(np.float32)

    def decode(self, units: Iterable[int] | str, style: Style | str | None = None,
               reference: Audio | str | Path | None = None, length_scale: float = 1.0,
               emotion_strength: float | None = None) -> Audio:
        """Units (raw or reduced ids, or a unit string) + style → 16 kHz speech. A `reference` clip, when
        given, sets the style (voice, emotion, pitch, speed) instead of `style`. `emotion_strength` (0–3;
        default the detokenizer's `emotion_strength`) scales how far the emotion moves from neutral."""
        u = parse_units(units, self.config.n_units)
        if not 0.2 <= length_scale <= 5.0:
            raise ValueError(f"length_scale must be in [0.2, 5], got {length_scale}")
        g = self.style_vector(style, reference, emotion_strength)
        off = self._offsets(style, reference)
        out = self._mel(u, g, length_scale, off)
        return Audio(self.vocode(out["mel"], off.gain_db, frame_f0_hz(out["lf0"], out["voiced"])), self.sample_rate)

    def decode_stream(self, units: Iterable[int] | str, style: Style | str | None = None,
                      reference: Audio | str | Path | None = None,
                      emotion_strength: float | None = None) -> Iterator[Audio]:
        """Yield audio chunks as units arrive. The first chunk is made once `first_chunk_units` (≤ 10) units
        have arrived; later chunks have `chunk_units` (or double up to it: `grow_chunks`); each chunk is decoded
        with left context and a few units of lookahead, and seams are crossfaded over `crossfade_samples`."""
        sc = self.stream_config
        g = self.style_vector(style, reference, emotion_strength)
        offsets = self._offsets(style, reference)
        it = iter(units) if not isinstance(units, str) else iter(parse_units(units, self.config.n_units))
        buf: list[int] = []  # reduced units received so far
        done = False
        emitted = 0
        tail: np.ndarray | None = None
        any_unit = False

        def pull(n: int) -> None:
            nonlocal done, any_unit
            while not done and len(buf) < n:
                try:
                    u = next(it)
                except StopIteration:
                    done = True
                    break
                any_unit = True
                v = parse_units([u], self.config.n_units)[0]
                if not buf or buf[-1] != v:
                    buf.append(v)

        target = sc.first_chunk_units - sc.lookahead_units
        while True:
            pull(target + sc.lookahead_units)
            end = min(target, len(buf)) if not done else len(buf)
            if end <= emitted:
                if done:
                    break
                continue
            last = done and end == len(buf)
            wav = self._chunk(buf, emitted, end, g, last, offsets)
            if tail is not None and len(tail) and len(wav) >= len(tail):
                n = len(tail)
                fade = np.linspace(0.0, 1.0, n, dtype=np.float32)
                wav[:n] = tail * (1 - fade) + wav[:n] * fade
            xf = 0 if last else min(sc.crossfade_samples, len(wav) // 2)
            out, tail = (wav[: len(wav) - xf], wav[len(wav) - xf:]) if xf else (wav, None)
            size = end - emitted
            emitted = end
            if len(out):
                yield Audio(out, self.sample_rate)
            if last:
                break
            target = emitted + (min(sc.chunk_units, 2 * size) if sc.grow_chunks else sc.chunk_units)
        if not any_unit:
            raise ValueError("cannot decode an empty unit list; give at least one speech unit")

    def _chunk(self, buf: list[int], s: int, e: int, g: torch.Tensor, last: bool,
               offsets: ProsodyOffsets = ProsodyOffsets()) -> np.ndarray:
        """Audio of units [s, e) decoded in the window [s - left, e + lookahead) (plus crossfade tail)."""
        sc = self.stream_config
        hop = self.vocoder_config.hop
        w0 = max(0, s - sc.left_context_units)
        w1 = len(buf) if last else min(len(buf), e + sc.lookahead_units)
        out = self._mel(buf[w0:w1], g, offsets=offsets, unit_offset=w0)
        mel, uidx = out["mel"], out["unit_index"] + w0
        n_frames = mel.shape[0]
        f_s = int((uidx < s).sum())
        f_e = n_frames if last else int((uidx < e).sum())
        m = sc.vocoder_margin_frames
        v0, v1 = max(0, f_s - m), min(n_frames, f_e + m + 1)
        wave = self.vocode(mel[v0:v1], offsets.gain_db, frame_f0_hz(out["lf0"], out["voiced"])[v0:v1])
        a = (f_s - v0) * hop
        b = len(wave) if last else min(len(wave), (f_e - v0) * hop + sc.crossfade_samples)
        return wave[a:b].copy()


def decode_to_file(units: str | list[int], style: str | Style | None, out: str | Path,
                   model: str | Path = "emova-tiny", reference: str | Path | None = None) -> Path:
    """What `emova speech decode --units … --style … [--reference WAV] --out WAV` runs."""
    check_audio_path(out)
    detok = SpeechDetokenizer.from_pretrained(model)
    return detok.decode(units, style=style, reference=reference).save(out)
