"""F0 augmentation of the U2S cache: pitch-shifted copies of training renderings, relabelled.

The pitch labels mean "×0.8 / ×1.25 of normal" (`emova.data.speech.voices.PITCH_FACTOR`), but a TTS engine
realises less than it is asked: flite's male voices render `pitch-low` only ~1/1.16 below normal, so no male
training rendering goes much below ~85 Hz. A decoder that never saw such frames cannot draw them: asked for
72 Hz, the bundled U2S draws harmonics at ~84 Hz whatever vocoder renders its mel (Griffin-Lim included).

This stage adds, for renderings of one gender at one pitch label, a copy whose F0 is multiplied by
`factor` with Praat's PSOLA (pitch-synchronous overlap-add: the spectral envelope — formants, phones — and
the timing stay, so the copy keeps its source's units and unit durations exactly) and gives it the pitch
label that factor means (`normal` × 0.8 → `low`). Each copy gets the source's emotion, speed and voice.
Shards are written next to the cache's own (`aug-<tag>-00000.npz`, the waveforms under `aug-<tag>/`, for the
vocoder), atomically, resumable; `U2SData(..., augment=[tag])` reads them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.speech.vocoder import VocoderConfig, mel_frames
from emova.styles import GENDERS, PITCHES, Style
from emova.train.u2s_data import U2SData, f0_track, run_shard_jobs, voice_matches, write_shard


@dataclass(frozen=True)
class F0Augment:
    gender: str = "male"
    from_pitch: str = "normal"  # renderings with this pitch label are copied …
    to_pitch: str = "low"  # … and the copy gets this one
    factor: float = 0.8  # F0 multiplier (the corpus's low/normal factor)
    share: float = 1.0  # share of the matching renderings that get a copy
    seed: int = 0
    voices: tuple[str, ...] | None = None  # glob patterns on the voice key (None: every voice)

    def __post_init__(self) -> None:
        if self.gender not in GENDERS:
            raise ValueError(f"f0_augment.gender must be one of {list(GENDERS)}, got {self.gender!r}")
        for k in ("from_pitch", "to_pitch"):
            if getattr(self, k) not in PITCHES:
                raise ValueError(f"f0_augment.{k} must be one of {list(PITCHES)}, got {getattr(self, k)!r}")
        if not isinstance(self.factor, (int, float)) or not 0.5 <= self.factor <= 2.0 or self.factor == 1.0:
            raise ValueError(f"f0_augment.factor must be a number in [0.5, 2] other than 1, got {self.factor!r}")
        if not isinstance(self.share, (int, float)) or not 0.0 < self.share <= 1.0:
            raise ValueError(f"f0_augment.share must be in (0, 1], got {self.share!r}")
        if self.voices is not None:
            if (not isinstance(self.voices, (list, tuple)) or not self.voices
                    or not all(isinstance(v, str) and v for v in self.voices)):
                raise ValueError(f"f0_augment.voices must be a non-empty list of glob patterns, got {self.voices!r}")
            object.__setattr__(self, "voices", tuple(self.voices))

    @classmethod
    def from_dict(cls, d: dict) -> F0Augment:
        if not isinstance(d, dict):
            raise ValueError(f"f0_augment must be a mapping, got {d!r}")
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown f0_augment keys {sorted(unknown)}; known: {sorted(f.name for f in fields(cls))}")
        return cls(**d)

    @property
    def tag(self) -> str:
        """Names the shards: every setting that changes what they hold."""
        tag = f"f0-{self.gender}-{self.from_pitch}-x{self.factor:.3f}-{self.to_pitch}-s{self.share:.3f}-r{self.seed}"
        if self.voices is not None:  # a short stable digest of the patterns keeps the name a file name
            tag += "-v" + hashlib.sha1("|".join(self.voices).encode()).hexdigest()[:8]
        return tag

    def matches(self, style: str, voice: str) -> bool:
        st = Style.parse(style)
        return st.gender == self.gender and st.pitch == self.from_pitch and voice_matches(voice, self.voices)

    def relabel(self, style: str) -> str:
        st = Style.parse(style)
        return str(Style(gender=st.gender, emotion=st.emotion, speed=st.speed, pitch=self.to_pitch))


@contextmanager
def praat_seeded(seed: int) -> Iterator[None]:
    """Praat's overlap-add places the pulses of unvoiced stretches at random: inside this block its generator is
    seeded (reproducible PSOLA output), and unseeded again after."""
    import parselmouth

    parselmouth.praat.run(f"random_initializeWithSeedUnsafelyButPredictably ({int(seed)})")
    try:
        yield
    finally:
        parselmouth.praat.run("random_initializeSafelyAndUnpredictably ()")


def psola(wave: np.ndarray, sr: int, edit: Callable[[Any, Any], None], floor: float = 60.0,
          ceiling: float = 600.0) -> np.ndarray:
    """Praat PSOLA resynthesis of `wave` after `edit(sound, manipulation)` has changed the manipulation's tiers;
    float32, scaled down only where it would clip."""
    import parselmouth
    from parselmouth.praat import call

    snd = parselmouth.Sound(wave.astype(np.float64), sampling_frequency=sr)
    manip = call(snd, "To Manipulation", 0.01, floor, ceiling)
    edit(snd, manip)
    out = call(manip, "Get resynthesis (overlap-add)").values[0].astype(np.float32)
    peak = float(np.abs(out).max()) if len(out) else 0.0
    return out / peak * 0.99 if peak > 0.99 else out


def shift_f0(wave: np.ndarray, sr: int, factor: float, floor: float = 60.0, ceiling: float = 600.0) -> np.ndarray:
    """The waveform with every F0 point multiplied by `factor` (Praat PSOLA); same length, same formants."""
    from parselmouth.praat import call

    def edit(snd: Any, manip: Any) -> None:
        tier = call(manip, "Extract pitch tier")
        call(tier, "Multiply frequencies", snd.xmin, snd.xmax, float(factor))
        call([tier, manip], "Replace pitch tier")

    out = psola(wave, sr, edit, floor, ceiling)
    if len(out) != len(wave):  # Praat keeps the duration; guard the sample count anyway
        out = np.pad(out, (0, max(0, len(wave) - len(out))))[: len(wave)]
    return out


def _aug_shard(args: tuple[list[dict], str, str, str, dict, dict]) -> str:
    items, corpus, cache_dir, out_path, vcfg_d, aug_d = args
    torch.set_num_threads(1)
    vcfg, aug = VocoderConfig.from_dict(vcfg_d), F0Augment.from_dict(aug_d)
    wav_dir = Path(cache_dir) / f"aug-{aug.tag}"
    wav_dir.mkdir(parents=True, exist_ok=True)
    mels, lf0s, vuvs, units, durs, meta = [], [], [], [], [], []
    for it in items:
        x = shift_f0(Audio.load(Path(corpus) / it["path"], vcfg.sample_rate).samples, vcfg.sample_rate, aug.factor)
        m = mel_frames(x, vcfg).numpy()
        n = int(it["mel_len"])
        m = m[:n] if len(m) >= n else np.concatenate([m, np.repeat(m[-1:], n - len(m), 0)])
        lf0, vuv = f0_track(x, vcfg.sample_rate, vcfg.hop, n)
        rel = f"aug-{aug.tag}/{it['id']}.wav"
        Audio(x, vcfg.sample_rate).save(Path(cache_dir) / rel)
        mels.append(m.astype(np.float16))
        lf0s.append(lf0)
        vuvs.append(vuv)
        units.append(np.asarray(it["units"], np.int16))
        durs.append(np.asarray(it["durs"], np.int16))
        meta.append({"id": f"{it['id']}@{aug.tag}", "style": aug.relabel(it["style"]), "voice": it["voice"],
                     "group": it["group"], "exact": it["exact"], "wav": rel, "augment": aug.tag,
                     "source": it["id"]})
    return write_shard(out_path, mels, lf0s, vuvs, units, durs, meta)


def augment_cache(cache_dir: str | Path, corpus: str | Path, aug: F0Augment, vcfg: VocoderConfig,
                  shard_items: int = 250, workers: int = 2, progress: bool = True) -> str:
    """Write the augmented shards of `aug` for the cache's matching items (resumable); returns the tag."""
    cache = Path(cache_dir)
    info_path = cache / f"aug-{aug.tag}.json"
    if info_path.exists():  # all written already: nothing to load
        n = json.loads(info_path.read_text()).get("n_shards", -1)
        if n > 0 and all((cache / f"aug-{aug.tag}-{k:05d}.npz").exists() for k in range(n)):
            return aug.tag
    data = U2SData(cache)
    paths = {r["id"]: r["path"] for r in read_manifest(corpus)}
    todo_ids = [i for i, m in enumerate(data.meta) if aug.matches(m["style"], m["voice"])]
    random.Random(aug.seed).shuffle(todo_ids)
    todo_ids = sorted(todo_ids[: round(len(todo_ids) * aug.share)])
    if not todo_ids:
        raise ValueError(f"f0_augment: no cached renderings of gender {aug.gender} with pitch {aug.from_pitch} "
                         f"{'' if aug.voices is None else f'of voices {list(aug.voices)} '}in {cache}")
    missing = [data.meta[i]["id"] for i in todo_ids if data.meta[i]["id"] not in paths]
    if missing:
        raise ValueError(f"f0_augment: {len(missing)} cached items are not in {corpus}'s manifest "
                         f"(e.g. {missing[0]}); the cache was made from another corpus")
    items = [{**data.meta[i], "path": paths[data.meta[i]["id"]], "mel_len": len(data.mel[i]),
              "units": data.units[i].tolist(), "durs": data.durs[i].tolist()} for i in todo_ids]
    shards = [items[s : s + shard_items] for s in range(0, len(items), shard_items)]
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(aug).items() if v is not None}
    info = {"augment": spec, "n_items": len(items), "n_shards": len(shards)}
    if info_path.exists() and json.loads(info_path.read_text()) != info:
        raise ValueError(f"{info_path} describes other augmented shards; delete aug-{aug.tag}* to rebuild them")
    info_path.write_text(json.dumps(info, indent=1))
    jobs = [(s, str(corpus), str(cache), str(cache / f"aug-{aug.tag}-{k:05d}.npz"), vcfg.to_dict(), spec)
            for k, s in enumerate(shards) if not (cache / f"aug-{aug.tag}-{k:05d}.npz").exists()]
    bar = tqdm(total=len(shards), initial=len(shards) - len(jobs), desc=f"f0 augment x{aug.factor}", unit="shard",
               disable=not progress)
    run_shard_jobs(_aug_shard, jobs, workers, bar)
    bar.close()
    return aug.tag
