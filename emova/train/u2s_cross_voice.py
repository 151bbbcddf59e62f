"""Cross-voice inputs for the U2S: the units of *another* voice saying the same sentence.

The U2S learns from pairs (units of a group's neutral rendering → mel of any rendering of that group), so the
units it reads in training always come from the voice it speaks. But the S2U's units of one sentence differ
between voices almost as much as between sentences (`benchmarks/unit_consistency.py`: median normalised edit
distance 0.838 for the same sentence in another voice), and at inference the units come from elsewhere: a
held-out speaker (`emova eval u2s` reads the held-out `awb` voice's units) or the LLM. A decoder that only ever
read its own voice's units has not had to learn what different unit sequences of the same words have in
common.

This stage adds, for a share of the cached groups of the speaking voices, one neutral rendering of the same
sentence by another training voice (`source_voices`, glob patterns; held-out voices are refused), encoded by
the same tokenizer and reduced; each rendering of the group is then paired with those units, timed by a DTW
between the two renderings' MFCCs (`u2s_data.align_durations`, as the cross-style pairs are). The target side
(mel, F0, voicing, style, voice) is the cached item itself. Shards are `aug-<tag>-00000.npz` next to the cache's
own, written atomically and resumable; `U2SData(..., augment=[tag])` reads them like the F0-augmented copies.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.data.speech.render import synthesize
from emova.data.speech.voices import HELD_OUT_KEYS, TRAIN_VOICES, voice_by_key
from emova.speech.vocoder import VocoderConfig, mel_frames
from emova.styles import Style
from emova.train.u2s_data import (
    U2SData,
    align_durations,
    load_tokenizer,
    reduce_with_index,
    run_shard_jobs,
    voice_matches,
    write_shard,
)
from emova.yaml_io import config_kwargs


@dataclass(frozen=True)
class CrossVoice:
    source_voices: tuple[str, ...] = ("*",)  # training voices that may say the sentence (never the target's own)
    share: float = 1.0  # share of the speaking voices' groups that get a cross-voice copy
    seed: int = 0

    def __post_init__(self) -> None:
        sv = self.source_voices
        if not isinstance(sv, (list, tuple)) or not sv or not all(isinstance(v, str) and v for v in sv):
            raise ValueError(f"cross_voice.source_voices must be a non-empty list of glob patterns, got {sv!r}")
        object.__setattr__(self, "source_voices", tuple(sv))
        if isinstance(self.share, bool) or not isinstance(self.share, (int, float)) or not 0.0 < self.share <= 1.0:
            raise ValueError(f"cross_voice.share must be in (0, 1], got {self.share!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"cross_voice.seed must be an integer, got {self.seed!r}")
        if not self.candidates():
            raise ValueError(f"cross_voice.source_voices {list(sv)} match no training voice")

    @classmethod
    def from_dict(cls, d: dict) -> CrossVoice:
        if not isinstance(d, dict):
            raise ValueError(f"cross_voice must be a mapping, got {d!r}")
        return cls(**config_kwargs(cls, d, None, "cross_voice"))

    def candidates(self) -> list[str]:
        """Training voice keys the patterns match (held-out voices are never among them)."""
        return [v.key for v in TRAIN_VOICES if voice_matches(v.key, self.source_voices) and v.key not in HELD_OUT_KEYS]

    @property
    def tag(self) -> str:
        digest = hashlib.sha1("|".join(self.source_voices).encode()).hexdigest()[:8]
        return f"xv-s{self.share:.3f}-r{self.seed}-v{digest}"

    def source_for(self, group: str, target_voice: str) -> str:
        """The voice that says `group`'s sentence: drawn reproducibly from (seed, group), never the target."""
        pool = [v for v in self.candidates() if v != target_voice]
        if not pool:
            raise ValueError(f"cross_voice: no source voice other than {target_voice} in {list(self.source_voices)}")
        h = int(hashlib.sha1(f"{self.seed}|{group}".encode()).hexdigest()[:12], 16)
        return pool[h % len(pool)]


_TOK = None


def _init(tok_spec: str) -> None:
    global _TOK
    torch.set_num_threads(1)
    _TOK = load_tokenizer(tok_spec)


def _xv_shard(args: tuple[list[dict], str, str, dict, dict]) -> str:
    groups, cache_dir, out_path, vcfg_d, cv_d = args
    vcfg, cv = VocoderConfig.from_dict(vcfg_d), CrossVoice.from_dict(cv_d)
    wav_dir = Path(cache_dir) / f"aug-{cv.tag}"
    wav_dir.mkdir(parents=True, exist_ok=True)
    sources = []
    for g in groups:
        voice = voice_by_key(g["source_voice"])
        wav = wav_dir / f"{g['group']}.wav"
        if wav.exists():
            audio = Audio.load(wav, vcfg.sample_rate)
        else:
            audio = synthesize(g["text"], voice, Style(gender=voice.gender))
            audio.save(wav)
        sources.append(audio)
    raw_units = _TOK.encode_batch(sources)
    mels, lf0s, vuvs, units, durs, meta = [], [], [], [], [], []
    for g, audio, raw in zip(groups, sources, raw_units):
        red, raw_to_red = reduce_with_index(raw)
        src_mel = mel_frames(audio.samples, vcfg).numpy()
        for it in g["items"]:
            tgt = np.asarray(it["mel"], np.float32)
            d = align_durations(src_mel, tgt, raw_to_red, len(red), vcfg.hop, vcfg.sample_rate, same=False)
            mels.append(tgt.astype(np.float16))
            lf0s.append(np.asarray(it["lf0"], np.float32))
            vuvs.append(np.asarray(it["vuv"], np.uint8))
            units.append(red.astype(np.int16))
            durs.append(d)
            meta.append({"id": f"{it['id']}@{cv.tag}", "style": it["style"], "voice": it["voice"],
                         "group": g["group"], "exact": False, "augment": cv.tag, "source": it["id"],
                         "source_voice": g["source_voice"]})
    return write_shard(out_path, mels, lf0s, vuvs, units, durs, meta)


def cross_voice_cache(cache_dir: str | Path, corpus: str | Path, cv: CrossVoice, vcfg: VocoderConfig, tokenizer: str,
                      voices: list[str] | tuple[str, ...] | None = None, shard_groups: int = 100, workers: int = 2,
                      progress: bool = True) -> str:
    """Write the cross-voice shards of `cv` for the cache's groups of `voices` (resumable); returns the tag."""
    cache = Path(cache_dir)
    info_path = cache / f"aug-{cv.tag}.json"
    if info_path.exists():
        n = json.loads(info_path.read_text()).get("n_shards", -1)
        if n > 0 and all((cache / f"aug-{cv.tag}-{k:05d}.npz").exists() for k in range(n)):
            return cv.tag
    data = U2SData(cache, voices)
    texts = {r["id"]: r["text"] for r in read_manifest(corpus)}
    by_group: dict[str, list[int]] = {}
    for i, m in enumerate(data.meta):
        by_group.setdefault(m["group"], []).append(i)
    names = sorted(by_group)
    random.Random(cv.seed).shuffle(names)
    names = sorted(names[: round(len(names) * cv.share)])
    if not names:
        raise ValueError(f"cross_voice: no cached groups{'' if voices is None else f' of voices {list(voices)}'} in {cache}")
    missing = [data.meta[by_group[n][0]]["id"] for n in names if data.meta[by_group[n][0]]["id"] not in texts]
    if missing:
        raise ValueError(f"cross_voice: {len(missing)} cached items are not in {corpus}'s manifest "
                         f"(e.g. {missing[0]}); the cache was made from another corpus")
    groups = []
    for n in names:
        first = data.meta[by_group[n][0]]
        groups.append({"group": n, "text": texts[first["id"]], "source_voice": cv.source_for(n, first["voice"]),
                       "items": [{"id": data.meta[i]["id"], "style": data.meta[i]["style"], "voice": data.meta[i]["voice"],
                                  "mel": data.mel[i], "lf0": data.lf0[i], "vuv": data.vuv[i]} for i in by_group[n]]})
    shards = [groups[s : s + shard_groups] for s in range(0, len(groups), shard_groups)]
    spec = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cv).items()}
    info = {"cross_voice": spec, "tokenizer": tokenizer, "n_groups": len(groups), "n_shards": len(shards)}
    if info_path.exists() and json.loads(info_path.read_text()) != info:
        raise ValueError(f"{info_path} describes other cross-voice shards; delete aug-{cv.tag}* to rebuild them")
    info_path.write_text(json.dumps(info, indent=1))
    jobs = [(s, str(cache), str(cache / f"aug-{cv.tag}-{k:05d}.npz"), vcfg.to_dict(), spec)
            for k, s in enumerate(shards) if not (cache / f"aug-{cv.tag}-{k:05d}.npz").exists()]
    bar = tqdm(total=len(shards), initial=len(shards) - len(jobs), desc="cross-voice units", unit="shard",
               disable=not progress)
    run_shard_jobs(_xv_shard, jobs, workers, bar, _init, (tokenizer,))
    bar.close()
    return cv.tag


__all__ = ["CrossVoice", "cross_voice_cache"]
