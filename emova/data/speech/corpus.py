"""The speech corpus: plan, render in parallel (resumable), write a JSONL manifest.

Layout of a corpus directory:
    wav/{id}.wav         16 kHz mono PCM16
    parts/{group}.json   the manifest rows of one rendered group (what makes rendering resumable)
    manifest.jsonl       every row, in plan order: id, split, group, text, phones, voice, gender,
                         style, duration, path (relative)

A *group* is one sentence spoken by one voice in several styles. Groups are what the tokenizer's
style-invariance objective learns from (same content, same voice, different prosody).

Splits:
    train          training voices, training sentences, several styles per group
    heldout_per    held-out voices (flite awb, espeak en-us+f4), held-out sentences, neutral style
    heldout_style  held-out sentences, 6 voices (the 2 held-out + 4 training ones), 4 styles each:
                   base, pitch-only change, rate-only change, emotion+pitch+rate change
    heldout_probe  held-out sentences, the same 6 voices, 3 renderings each: random pitch (neutral),
                   random emotion (normal pitch), random everything — for the style probes
    fsdd_train / fsdd_val   real recordings of digits (FSDD training split; indices 45-49 held out as val)
"""

from __future__ import annotations

import json
import random
import re
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from emova.audio import SAMPLE_RATE, Audio
from emova.data.speech.phones import text_to_phones
from emova.data.speech.render import Jitter, synthesize
from emova.data.speech.sentences import generate_sentences
from emova.data.speech.voices import (
    ESPEAK_TRAIN_VOICES,
    FLITE_TRAIN_VOICES,
    HELD_OUT_VOICES,
    Voice,
    voice_by_key,
)
from emova.styles import EMOTIONS, PITCHES, SPEEDS, Style

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FSDD_VAL_INDICES = range(45, 50)


@dataclass
class CorpusConfig:
    n_train_sentences: int = 7000
    styles_per_group: int = 3
    flite_share: float = 0.45  # fraction of training groups spoken by flite voices
    n_heldout_per: int = 200  # sentences per held-out voice
    n_heldout_style: int = 180
    n_heldout_probe: int = 240
    seed: int = 1234
    heldout_seed: int = 987_654
    fsdd_dir: str | None = None

    def __post_init__(self) -> None:
        if self.n_train_sentences < 0 or self.styles_per_group < 1:
            raise ValueError("n_train_sentences must be >= 0 and styles_per_group >= 1")
        if not 0.0 <= self.flite_share <= 1.0:
            raise ValueError(f"flite_share must be in [0, 1], got {self.flite_share}")


@dataclass
class GroupPlan:
    group: str
    split: str
    text: str
    voice: str
    styles: list[str]
    jitter: dict = field(default_factory=dict)
    source: str | None = None  # a recording to take instead of synthesising (FSDD)


def _random_style(rng: random.Random, gender: str) -> Style:
    return Style(gender=gender, emotion=rng.choice(EMOTIONS), pitch=rng.choice(PITCHES), speed=rng.choice(SPEEDS))


def plan_corpus(cfg: CorpusConfig) -> list[GroupPlan]:
    rng = random.Random(cfg.seed)
    train_sents = generate_sentences(cfg.n_train_sentences, seed=cfg.seed)
    plans: list[GroupPlan] = []
    for i, text in enumerate(train_sents):
        pool = FLITE_TRAIN_VOICES if rng.random() < cfg.flite_share else ESPEAK_TRAIN_VOICES
        voice = rng.choice(pool)
        styles = {str(Style(gender=voice.gender))}
        while len(styles) < cfg.styles_per_group:
            styles.add(str(_random_style(rng, voice.gender)))
        jit = Jitter(f0=rng.uniform(0.9, 1.1), rate=rng.uniform(0.9, 1.1), gain_db=rng.uniform(-4, 4))
        plans.append(GroupPlan(f"train{i:06d}", "train", text, voice.key, sorted(styles), asdict(jit)))

    hrng = random.Random(cfg.heldout_seed)
    n_per, n_sty = cfg.n_heldout_per * 2, cfg.n_heldout_style
    held = generate_sentences(n_per + n_sty + cfg.n_heldout_probe, seed=cfg.heldout_seed, exclude=set(train_sents))
    per_sents, style_sents, probe_sents = held[:n_per], held[n_per : n_per + n_sty], held[n_per + n_sty :]
    for i, text in enumerate(per_sents):
        voice = HELD_OUT_VOICES[i % 2]
        plans.append(GroupPlan(f"hper{i:05d}", "heldout_per", text, voice.key, [str(Style(gender=voice.gender))]))
    style_voices = list(HELD_OUT_VOICES) + [voice_by_key(k) for k in
                                            ("flite:slt", "flite:kal16", "espeak:en-us+m3", "espeak:en-gb+f2")]
    for i, text in enumerate(style_sents):
        voice = style_voices[i % len(style_voices)]
        g = voice.gender
        base = Style(gender=g)
        pitch_only = base.replace(pitch=hrng.choice(["low", "high"]))
        rate_only = base.replace(speed=hrng.choice(["slow", "fast"]))
        both = Style(gender=g, emotion=hrng.choice(EMOTIONS[1:]), pitch=hrng.choice(["low", "high"]),
                     speed=hrng.choice(["slow", "fast"]))
        styles = [str(base), str(pitch_only), str(rate_only), str(both)]
        plans.append(GroupPlan(f"hsty{i:05d}", "heldout_style", text, voice.key, styles))

    prng = random.Random(cfg.heldout_seed + 1)
    for i, text in enumerate(probe_sents):
        voice = style_voices[i % len(style_voices)]
        g = voice.gender
        styles = [str(Style(gender=g, pitch=prng.choice(PITCHES))),  # pitch varies alone
                  str(Style(gender=g, emotion=prng.choice(EMOTIONS))),  # emotion varies alone
                  str(_random_style(prng, g))]
        plans.append(GroupPlan(f"hprb{i:05d}", "heldout_probe", text, voice.key, styles))

    if cfg.fsdd_dir:
        plans += _fsdd_plans(Path(cfg.fsdd_dir))
    return plans


def _fsdd_plans(root: Path) -> list[GroupPlan]:
    rec = root / "recordings"
    if not rec.is_dir():
        raise ValueError(f"FSDD directory {root} has no recordings/ folder")
    plans = []
    for path in sorted(rec.glob("*.wav")):
        m = re.fullmatch(r"(\d)_([a-z]+)_(\d+)\.wav", path.name)
        if not m:
            continue
        digit, speaker, idx = int(m.group(1)), m.group(2), int(m.group(3))
        if idx < 5:  # the dataset's own test split: never used
            continue
        split = "fsdd_val" if idx in FSDD_VAL_INDICES else "fsdd_train"
        plans.append(GroupPlan(f"fsdd_{digit}_{speaker}_{idx}", split, DIGIT_WORDS[digit], f"fsdd:{speaker}",
                               [str(Style(gender="male"))], source=str(path)))
    return plans


def _render_group(args: tuple[GroupPlan, str]) -> list[dict]:
    plan, out_dir = args
    out = Path(out_dir)
    phones = " ".join(text_to_phones(plan.text))
    rows = []
    for k, style_str in enumerate(plan.styles):
        uid = f"{plan.group}_{k}"
        wav_path = out / "wav" / f"{uid}.wav"
        if plan.source:
            audio = Audio.load(plan.source, SAMPLE_RATE)
            peak = audio.peak()
            audio = Audio(audio.samples * (0.9 / peak) if peak > 0 else audio.samples, SAMPLE_RATE)
            gender = "male"
        else:
            voice: Voice = voice_by_key(plan.voice)
            audio = synthesize(plan.text, voice, Style.parse(style_str), Jitter(**plan.jitter) if plan.jitter else Jitter())
            gender = voice.gender
        audio.save(wav_path)
        rows.append(dict(id=uid, split=plan.split, group=plan.group, text=plan.text, phones=phones,
                         voice=plan.voice, gender=gender, style=style_str, duration=round(audio.duration, 4),
                         path=f"wav/{uid}.wav"))
    part = out / "parts" / f"{plan.group}.json"
    tmp = part.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows))
    tmp.replace(part)  # atomic: a killed run never leaves a half-written part
    return rows


def render_corpus(out_dir: str | Path, cfg: CorpusConfig, workers: int = 2, progress: bool = True) -> Path:
    """Render every planned group not yet rendered, then write manifest.jsonl. Safe to re-run after a kill."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "corpus_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    return render_plans(out, plan_corpus(cfg), workers, progress, "rendering speech")


def render_plans(out_dir: str | Path, plans: list[GroupPlan], workers: int = 2, progress: bool = True,
                 desc: str = "rendering speech") -> Path:
    """Render every group of `plans` not yet rendered into `out_dir` (wav/ + parts/), then write manifest.jsonl in
    plan order. Safe to re-run after a kill."""
    out = Path(out_dir)
    (out / "wav").mkdir(parents=True, exist_ok=True)
    (out / "parts").mkdir(exist_ok=True)
    todo = [p for p in plans if not (out / "parts" / f"{p.group}.json").exists()]
    bar = tqdm(total=len(plans), initial=len(plans) - len(todo), desc=desc, unit="group", disable=not progress)
    if todo:
        if workers <= 1:
            for p in todo:
                _render_group((p, str(out)))
                bar.update()
        else:
            with ProcessPoolExecutor(workers) as ex:
                for _ in ex.map(_render_group, [(p, str(out)) for p in todo], chunksize=8):
                    bar.update()
    bar.close()
    manifest = out / "manifest.jsonl"
    with open(manifest.with_suffix(".tmp"), "w") as f:
        for p in plans:
            for row in json.loads((out / "parts" / f"{p.group}.json").read_text()):
                f.write(json.dumps(row) + "\n")
    manifest.with_suffix(".tmp").replace(manifest)
    return manifest


def read_manifest(path: str | Path, splits: tuple[str, ...] | None = None) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    if not path.exists():
        raise ValueError(f"no corpus manifest at {path}; render one with `emova data speech --out DIR`")
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            if splits is None or row["split"] in splits:
                rows.append(row)
    return rows
