"""U2S training data: units from the *neutral* rendering of each group, mels from *every* rendering.

The corpus renders each sentence in one voice several times: once in the neutral style
(`gender-G_emotion-neutral_speed-normal_pitch-normal`) and in other styles. U2S examples are

    input   reduced S2U units of the neutral rendering A             (what an LLM / an S2U gives us)
    target  log-mel, log-F0 and voicing of a rendering B of the group (B = A included)
    style   B's style (its reference mel goes through the style encoder; its labels train the heads)
    timing  frames of B per reduced unit of A, from a DTW between A's and B's MFCCs

So the model learns to produce B's speed, pitch and emotion from neutral-rate units: if units and
target came from the same rendering, a slow rendering would just have more units, and the duration
predictor would never learn that `speed-slow` means longer units.

The cache is written in shards (`shard-00000.npz`…), each written atomically; a killed run resumes.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct
from tqdm import tqdm

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.speech.fsq import FSQ
from emova.speech.style_encoder import style_label_ids
from emova.speech.u2s import F0_REF, F0_SCALE
from emova.speech.vocoder import VocoderConfig, mel_frames
from emova.styles import Style

SAMPLES_PER_UNIT = 640


def load_tokenizer(spec: str):
    """A bundled name / tokenizer directory, or an S2U run directory (latest checkpoint)."""
    from emova.speech.tokenizer import SpeechTokenizer

    p = Path(spec)
    if p.is_dir() and (p / "model_config.json").exists() and not (p / "config.json").exists():
        from emova.speech.s2u import S2UConfig, S2UModel
        from emova.train.checkpoint import latest_checkpoint, load_checkpoint

        model = S2UModel(S2UConfig.from_dict(json.loads((p / "model_config.json").read_text())))
        ck = p / "final" if (p / "final" / "state.json").exists() else latest_checkpoint(p)
        if ck is None:
            raise ValueError(f"no checkpoint in S2U run directory {p}")
        load_checkpoint(ck, model)
        return SpeechTokenizer(model)
    return SpeechTokenizer.from_pretrained(spec)


def plan_groups(corpus: str | Path, splits: tuple[str, ...], max_groups: int | None,
                voices: list[str] | tuple[str, ...] | None = None) -> list[list[dict]]:
    """Groups that have a neutral rendering, neutral first; only renderings of `voices` (glob patterns on
    the voice key; None: all) are kept."""
    rows = [r for r in read_manifest(corpus, splits) if voice_matches(r["voice"], voices)]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    out = []
    for g in groups.values():
        neutral = [r for r in g if r["style"] == str(Style(gender=r["gender"]))]
        if neutral:
            out.append(neutral[:1] + [r for r in g if r is not neutral[0]])
    return out[:max_groups] if max_groups else out


def f0_track(wave: np.ndarray, sr: int, hop: int, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised log-F0 per mel frame (interpolated through unvoiced frames) and voicing (0/1)."""
    import parselmouth

    snd = parselmouth.Sound(wave.astype(np.float64), sampling_frequency=sr)
    pitch = snd.to_pitch(time_step=hop / sr, pitch_floor=60.0, pitch_ceiling=700.0)
    f0 = pitch.selected_array["frequency"]
    times = pitch.xs()
    t = np.arange(n_frames) * hop / sr
    voiced_src = f0 > 0
    if voiced_src.sum() < 2:
        return np.zeros(n_frames, np.float32), np.zeros(n_frames, np.uint8)
    lf = (np.log(f0[voiced_src]) - F0_REF) / F0_SCALE
    lf0 = np.interp(t, times[voiced_src], lf).astype(np.float32)
    voiced = np.interp(t, times, voiced_src.astype(np.float32)) > 0.5
    return lf0, voiced.astype(np.uint8)


def _mfcc(mel: np.ndarray) -> np.ndarray:
    c = dct(mel, type=2, norm="ortho", axis=-1)[:, 1:20]
    c = (c - c.mean(0)) / (c.std(0) + 1e-5)
    return c / (np.linalg.norm(c, axis=1, keepdims=True) + 1e-8)


def reduce_with_index(raw: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Raw 25 Hz units → (reduced units, index of each raw unit's reduced unit): [5, 5, 9, 5] → ([5, 9, 5], [0, 0, 1, 2])."""
    raw = np.asarray(raw)
    change = np.concatenate([[True], raw[1:] != raw[:-1]])
    return raw[change], np.cumsum(change) - 1


def align_durations(mel_a: np.ndarray, mel_b: np.ndarray, raw_to_red: np.ndarray, n_red: int, hop: int,
                    sr: int, same: bool) -> np.ndarray:
    """Frames of B per reduced unit of A. A's frame j lies in 25 Hz unit floor(j * hop / 640)."""
    import librosa

    if same:
        match = np.arange(len(mel_b))
    else:
        cost = 1.0 - _mfcc(mel_b) @ _mfcc(mel_a).T  # (F_b, F_a)
        _, wp = librosa.sequence.dtw(C=cost.astype(np.float64), backtrack=True)
        wp = wp[::-1]
        sums = np.zeros(len(mel_b))
        cnt = np.zeros(len(mel_b))
        np.add.at(sums, wp[:, 0], wp[:, 1])
        np.add.at(cnt, wp[:, 0], 1)
        match = np.round(sums / np.maximum(cnt, 1)).astype(int)
    scale = hop * 16_000 / sr / SAMPLES_PER_UNIT
    raw = np.clip((match * scale).astype(int), 0, len(raw_to_red) - 1)
    return np.bincount(raw_to_red[raw], minlength=n_red).astype(np.int16)


_TOK = None


def _init_worker(tok_spec: str) -> None:
    global _TOK
    torch.set_num_threads(1)
    _TOK = load_tokenizer(tok_spec)


def _make_shard(args: tuple[list[list[dict]], str, str, dict]) -> str:
    groups, root, out_path, vcfg_d = args
    vcfg = VocoderConfig.from_dict(vcfg_d)
    root_p = Path(root)
    waves = [[Audio.load(root_p / r["path"], vcfg.sample_rate).samples for r in g] for g in groups]
    a_units = _TOK.encode_batch([Audio(w[0], vcfg.sample_rate) for w in waves])
    mels, lf0s, vuvs, units, durs, meta = [], [], [], [], [], []
    for g, w, raw in zip(groups, waves, a_units):
        red, raw_to_red = reduce_with_index(raw)
        gm = [mel_frames(x, vcfg).numpy() for x in w]
        for k, (r, x, m) in enumerate(zip(g, w, gm)):
            d = align_durations(gm[0], m, raw_to_red, len(red), vcfg.hop, vcfg.sample_rate, same=(k == 0))
            lf0, vuv = f0_track(x, vcfg.sample_rate, vcfg.hop, len(m))
            mels.append(m.astype(np.float16))
            lf0s.append(lf0)
            vuvs.append(vuv)
            units.append(red.astype(np.int16))
            durs.append(d)
            meta.append({"id": r["id"], "style": r["style"], "voice": r["voice"], "group": r["group"], "exact": k == 0})
    return write_shard(out_path, mels, lf0s, vuvs, units, durs, meta)


def write_shard(out_path: str, mels: list, lf0s: list, vuvs: list, units: list, durs: list, meta: list[dict]) -> str:
    """One cache shard: per-item arrays concatenated with their offsets, written atomically."""
    tmp = out_path + ".tmp.npz"
    np.savez(tmp, mel=np.concatenate(mels), lf0=np.concatenate(lf0s), vuv=np.concatenate(vuvs),
             mel_off=np.cumsum([0] + [len(m) for m in mels]), units=np.concatenate(units),
             durs=np.concatenate(durs), unit_off=np.cumsum([0] + [len(u) for u in units]),
             meta=np.array(json.dumps(meta)))
    os.replace(tmp, out_path)
    return out_path


MEL_KEYS = ("sample_rate", "n_fft", "hop", "win", "n_mels")


def _feature_settings(info: dict) -> dict:
    """What a cache's contents depend on: of the vocoder config only the mel settings (the vocoder's own
    architecture, e.g. an F0 input, does not change the cached features)."""
    voc = info.get("vocoder", {})
    return {**info, "vocoder": {k: voc.get(k) for k in MEL_KEYS}}


def prepare_cache(corpus: str, cache_dir: str, tokenizer: str, vcfg: VocoderConfig, splits: tuple[str, ...],
                  max_groups: int | None = None, shard_groups: int = 200, workers: int = 2,
                  progress: bool = True, voices: list[str] | tuple[str, ...] | None = None) -> Path:
    """Encode, align and featurise the corpus once; resumable shard by shard."""
    out = Path(cache_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {"corpus": str(corpus), "tokenizer": tokenizer, "splits": list(splits), "max_groups": max_groups,
            "vocoder": vcfg.to_dict(), "shard_groups": shard_groups}
    if voices is not None:
        info["voices"] = list(voices)
    info_path = out / "info.json"
    if info_path.exists() and _feature_settings(json.loads(info_path.read_text())) != _feature_settings(info):
        raise ValueError(f"{out} holds a cache made with other settings; delete it or pick another cache_dir")
    info_path.write_text(json.dumps(info, indent=1))
    groups = plan_groups(corpus, splits, max_groups, voices)
    if not groups:
        raise ValueError(f"corpus {corpus} has no groups with a neutral rendering in splits {splits}"
                         + (f" of voices {list(voices)}" if voices is not None else ""))
    shards = [groups[i : i + shard_groups] for i in range(0, len(groups), shard_groups)]
    todo = [(s, str(corpus), str(out / f"shard-{k:05d}.npz"), vcfg.to_dict()) for k, s in enumerate(shards)
            if not (out / f"shard-{k:05d}.npz").exists()]
    bar = tqdm(total=len(shards), initial=len(shards) - len(todo), desc="u2s cache", unit="shard",
               disable=not progress)
    run_shard_jobs(_make_shard, todo, workers, bar, _init_worker, (tokenizer,))
    bar.close()
    (out / "done.json").write_text(json.dumps({"n_shards": len(shards), "n_groups": len(groups)}))
    return out


def run_shard_jobs(fn: Callable[[Any], Any], jobs: list, workers: int, bar: tqdm,
                   init: Callable[..., None] | None = None, initargs: tuple = ()) -> None:
    """Run `fn` on every job, ticking `bar` once per job: in this process (after `init(*initargs)`) with one
    worker, else in a pool of `workers` processes that each run `init` first. Workers pin torch to one thread;
    run here, that setting is undone after, so later stages keep their own thread count."""
    if not jobs:
        return
    if workers <= 1:
        threads = torch.get_num_threads()
        try:
            if init is not None:
                init(*initargs)
            for j in jobs:
                fn(j)
                bar.update()
        finally:
            torch.set_num_threads(threads)
        return
    with ProcessPoolExecutor(workers, initializer=init, initargs=initargs) as ex:
        for _ in ex.map(fn, jobs):
            bar.update()


def voice_matches(voice: str, patterns: list[str] | tuple[str, ...] | None) -> bool:
    """Whether a corpus voice key (`flite:slt`, `espeak:en-us+f1`) matches any glob pattern (None: all)."""
    return patterns is None or any(fnmatch.fnmatchcase(voice, p) for p in patterns)


class U2SData:
    """Every cached item in memory; length-bucketed batches. `voices` (glob patterns on the voice key)
    keeps only the renderings of those voices; `augment` (tags) adds those augmented shards."""

    def __init__(self, cache_dir: str | Path, voices: list[str] | tuple[str, ...] | None = None,
                 augment: list[str] | tuple[str, ...] = ()) -> None:
        files = sorted(Path(cache_dir).glob("shard-*.npz"))
        files = [f for f in files if ".tmp" not in f.name]
        if not files:
            raise ValueError(f"no U2S cache shards in {cache_dir}; run the prepare stage first")
        for tag in augment:  # augmented copies (`emova.train.u2s_augment`), written by the prepare stage
            # exactly five digits: a tag that extends another one (a voice filter) names other shards
            extra = sorted(Path(cache_dir).glob(f"aug-{tag}-{'[0-9]' * 5}.npz"))
            if not extra:
                raise ValueError(f"no augmented U2S shards aug-{tag}-*.npz in {cache_dir}; run the prepare stage")
            files += extra
        self.mel, self.lf0, self.vuv, self.units, self.durs, self.meta = [], [], [], [], [], []
        for f in files:
            with np.load(f) as z:  # read every array once; items are views into them
                arrays = {k: z[k] for k in ("mel", "lf0", "vuv", "units", "durs", "mel_off", "unit_off", "meta")}
            mo, uo = arrays["mel_off"], arrays["unit_off"]
            for i in range(len(mo) - 1):
                for name, store, off in (("mel", self.mel, mo), ("lf0", self.lf0, mo), ("vuv", self.vuv, mo),
                                         ("units", self.units, uo), ("durs", self.durs, uo)):
                    store.append(arrays[name][off[i] : off[i + 1]])
            self.meta += json.loads(str(arrays["meta"]))
        if voices is not None:
            keep = [i for i, m in enumerate(self.meta) if voice_matches(m["voice"], voices)]
            if not keep:
                raise ValueError(f"no cached U2S items of voices {list(voices)} in {cache_dir}")
            for name in ("mel", "lf0", "vuv", "units", "durs", "meta"):
                setattr(self, name, [getattr(self, name)[i] for i in keep])
        self.labels = [style_label_ids(m["style"]) for m in self.meta]
        # timed by its own units (the group's neutral rendering) rather than by DTW; caches written before
        # the flag existed: the neutral style, of which each group has exactly one
        self.exact = [bool(m.get("exact", m["style"] == str(Style(gender=Style.parse(m["style"]).gender))))
                      for m in self.meta]
        self.by_style: dict[str, list[int]] = {}
        for i, m in enumerate(self.meta):
            self.by_style.setdefault(m["style"], []).append(i)
        self.stats = [self._stats(i) for i in range(len(self.meta))]

    def __len__(self) -> int:
        return len(self.meta)

    def _stats(self, i: int) -> tuple[float, float, float]:
        v = self.vuv[i] > 0
        lf = self.lf0[i][v] if v.sum() >= 3 else self.lf0[i]
        mean_dur = float(np.log1p(self.durs[i].astype(np.float32)).mean())
        med = float(np.median(lf))  # robust: pitch trackers make octave errors
        spread = 1.4826 * float(np.median(np.abs(lf - med)))
        return med, max(spread, 0.02), mean_dur

    def batches(self, epoch: int, seed: int, batch_frames: int) -> list[list[int]]:
        rng = random.Random(seed * 1000 + epoch)
        order = list(range(len(self)))
        rng.shuffle(order)
        out: list[list[int]] = []
        for s in range(0, len(order), 512):
            bucket = sorted(order[s : s + 512], key=lambda i: len(self.mel[i]))
            cur: list[int] = []
            for i in bucket:
                if cur and len(self.mel[i]) * (len(cur) + 1) > batch_frames:
                    out.append(cur)
                    cur = []
                cur.append(i)
            if cur:
                out.append(cur)
        rng.shuffle(out)
        return out

    def collate(self, idx: list[int], rng: random.Random, other_ref_p: float = 0.25,
                max_ref_frames: int = 256) -> dict[str, torch.Tensor]:
        B = len(idx)
        N = max(len(self.units[i]) for i in idx)
        Fr = max(len(self.mel[i]) for i in idx)
        units = torch.zeros(B, N, dtype=torch.long)
        durs = torch.zeros(B, N)
        n_units = torch.zeros(B, dtype=torch.long)
        mel = torch.zeros(B, Fr, self.mel[idx[0]].shape[1])
        lf0, vuv, z = torch.zeros(B, Fr), torch.zeros(B, Fr), torch.zeros(B, Fr)
        refs, ref_lens = [], []
        for b, i in enumerate(idx):
            n, f = len(self.units[i]), len(self.mel[i])
            units[b, :n] = torch.from_numpy(self.units[i].astype(np.int64))
            durs[b, :n] = torch.from_numpy(self.durs[i].astype(np.float32))
            n_units[b] = n
            mel[b, :f] = torch.from_numpy(self.mel[i].astype(np.float32))
            lf0[b, :f] = torch.from_numpy(self.lf0[i])
            vuv[b, :f] = torch.from_numpy(self.vuv[i].astype(np.float32))
            m, s, _ = self.stats[i]
            z[b, :f] = ((lf0[b, :f] - m) / s).clamp(-4.0, 4.0)  # octave errors of the tracker are outliers
            j = i
            if rng.random() < other_ref_p:
                j = rng.choice(self.by_style[self.meta[i]["style"]])
            r = self.mel[j]
            if len(r) > max_ref_frames:
                o = rng.randrange(0, len(r) - max_ref_frames)
                r = r[o : o + max_ref_frames]
            refs.append(torch.from_numpy(r.astype(np.float32)))
            ref_lens.append(len(r))
        ref = torch.nn.utils.rnn.pad_sequence(refs, batch_first=True)
        labels = {k: torch.tensor([self.labels[i][k] for i in idx]) for k in self.labels[idx[0]]}
        # the neutral rendering is timed exactly (its own units); the others by DTW against it
        exact = torch.tensor([self.exact[i] for i in idx])
        stats = torch.tensor([self.stats[i] for i in idx], dtype=torch.float32)
        return {"units": units, "n_units": n_units, "durs": durs, "mel": mel, "lf0": lf0, "vuv": vuv,
                "f0_shape": z, "ref": ref, "ref_lens": torch.tensor(ref_lens), "labels": labels, "stats": stats,
                "exact": exact}


def mean_frames_per_unit(data: U2SData) -> float:
    tot_f = sum(len(m) for m in data.mel)
    tot_u = sum(len(u) for u in data.units)
    return tot_f / max(1, tot_u) if tot_u else math.nan


def perturb_units(units: torch.Tensor, n_units: torch.Tensor, p: float, levels: list[int],
                  gen: torch.Generator) -> torch.Tensor:
    """Move a share `p` of the real units to a neighbouring FSQ code: one digit (of `levels`) one step up or
    down, reflected at the edges. Padding is left alone."""
    if p <= 0:
        return units
    fsq = FSQ(levels)
    real = torch.arange(units.shape[1])[None] < n_units[:, None]
    hit = (torch.rand(units.shape, generator=gen) < p) & real
    digit = torch.randint(0, len(levels), units.shape, generator=gen)
    step = (torch.randint(0, 2, units.shape, generator=gen) * 2 - 1)[..., None] * F.one_hot(digit, len(levels))
    codes = fsq.indices_to_codes(units)  # digits centred on 0: [-L//2, L - 1 - L//2]
    lo, hi = -(fsq.levels // 2), fsq.levels - 1 - fsq.levels // 2
    moved = codes + step
    moved = torch.where((moved < lo) | (moved > hi), codes - step, moved)
    return torch.where(hit, fsq.codes_to_indices(moved), units)
