"""Build a split of the tiny world: PNG images plus one JSON file of records per task.

    build_world("data/world", split="train")      # ~3,000 images and ~24,500 records
    build_world("data/world", split="heldout")    # other seed, disjoint compositions and sentences

Layout under `out_dir`:

    images/{split}_{i:05d}.png
    {split}/manifest.json        what was built, with which seed and sizes
    {split}/scenes.json          the scene description of every image (for evaluation)
    {split}/caption.json         stage 1: image → caption
    {split}/vqa.json             typed questions about images (short or full-sentence answers)
    {split}/vqa_speech.json      spoken questions about images → spoken-dialogue JSON answer
    {split}/dialogue_speech.json emotional spoken remarks → spoken-dialogue JSON answer
    {split}/text_qa.json         typed arithmetic, facts and remarks
    {split}/asr.json, tts.json   speech ↔ text

Speech records carry text + style and placeholders (see `formats.records_needing_speech`).
Deterministic: every item draws from its own `random.Random` seeded by (seed, split, task, index),
so a resumed build (existing files are skipped) writes the same bytes as a fresh one.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tqdm import tqdm

from emova.data.world import dialogues as dlg
from emova.data.world.formats import (
    asr_record,
    image_record,
    load_records,
    save_records,
    spoken_dialogue_record,
    text_record,
    tts_record,
)
from emova.data.world.images import Scene, random_scene, render_scene
from emova.data.world.questions import (
    CAPTION_PROMPTS,
    SHORT_ANSWER_SUFFIX,
    caption,
    questions_for_scene,
)
from emova.styles import EMOTIONS, GENDERS, PITCHES, SPEEDS, Style

SPLITS = ("train", "heldout")
DEFAULT_SEEDS = {"train": 1234, "heldout": 987654}
TASKS = ("caption", "vqa", "vqa_speech", "dialogue_speech", "text_qa", "asr", "tts")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class WorldSizes:
    """How many items of each kind a split holds."""

    n_images: int = 3000
    questions_per_image: int = 3
    n_vqa_speech: int = 1500
    n_dialogues: int = 3000
    n_text_qa: int = 2000
    n_asr: int = 3000
    n_tts: int = 3000
    text_prob: float = 0.35  # share of images that carry a word or digit
    short_answer_prob: float = 0.5  # share of typed questions asking for a one-word answer

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if v < 0:
                raise ValueError(f"WorldSizes.{k} must be >= 0, got {v}")
        if self.n_images == 0 and self.n_vqa_speech:
            raise ValueError("n_vqa_speech > 0 needs images (n_images > 0)")


DEFAULT_SIZES: dict[str, WorldSizes] = {
    "train": WorldSizes(),
    "heldout": WorldSizes(n_images=300, n_vqa_speech=200, n_dialogues=350, n_text_qa=300, n_asr=200, n_tts=200),
}


def _rng(seed: int, split: str, task: str, i: int) -> random.Random:
    return random.Random(f"emova-world:{seed}:{split}:{task}:{i}")


def image_path(split: str, i: int) -> str:
    """Path of image `i` relative to the world folder."""
    return f"images/{split}_{i:05d}.png"


def scene_for(seed: int, split: str, i: int, text_prob: float = 0.35) -> Scene:
    """The scene of image `i` of a split: a pure function of (seed, split, i)."""
    return random_scene(_rng(seed, split, "scene", i), text_prob=text_prob, split=split)


def _random_style(rng: random.Random) -> str:
    return str(Style(rng.choice(GENDERS), rng.choice(EMOTIONS), rng.choice(PITCHES), rng.choice(SPEEDS)))


# ------------------------------------------------------------------------------------ record makers
def _caption_records(split: str, seed: int, scenes: list[Scene], sz: WorldSizes) -> list[dict]:
    out = []
    for i, scene in enumerate(scenes):
        rng = _rng(seed, split, "caption", i)
        text = caption(scene, rng)
        out.append(image_record(f"caption-{split}-{i:05d}", image_path(split, i),
                                [(rng.choice(CAPTION_PROMPTS), text)], meta={"scene": i}))
    return out


def _vqa_records(split: str, seed: int, scenes: list[Scene], sz: WorldSizes) -> list[dict]:
    out = []
    for i, scene in enumerate(scenes):
        rng = _rng(seed, split, "vqa", i)
        for j, qa in enumerate(questions_for_scene(scene, rng, sz.questions_per_image, split)):
            short = rng.random() < sz.short_answer_prob
            q = qa.question + SHORT_ANSWER_SUFFIX if short else qa.question
            a = qa.answer if short else qa.sentence
            meta = {"scene": i, **qa.to_dict(), "answer_form": "short" if short else "sentence"}
            out.append(image_record(f"vqa-{split}-{i:05d}-{j}", image_path(split, i), [(q, a)], meta=meta))
    return out


def _vqa_speech_records(split: str, seed: int, scenes: list[Scene], sz: WorldSizes) -> list[dict]:
    out = []
    for k in range(sz.n_vqa_speech):
        rng = _rng(seed, split, "vqa_speech", k)
        i = rng.randrange(len(scenes))
        qa = questions_for_scene(scenes[i], rng, 1, split, spoken=True)[0]
        user_style = dlg.style_for("neutral", rng.choice(GENDERS))
        reply_style = dlg.style_for("neutral", rng.choice(GENDERS))
        out.append(spoken_dialogue_record(
            f"vqa_speech-{split}-{k:05d}", qa.question, "neutral", "normal", user_style,
            qa.sentence, "neutral", "normal", reply_style, image=image_path(split, i),
            meta={"scene": i, **qa.to_dict()},
        ))  # fmt: skip
    return out


def _dialogue_records(split: str, seed: int, scenes: list[Scene], sz: WorldSizes) -> list[dict]:
    out = []
    for k in range(sz.n_dialogues):
        rng = _rng(seed, split, "dialogue", k)
        ex = dlg.sample_exchange(rng, split, emotion=EMOTIONS[k % len(EMOTIONS)])
        user_style = dlg.style_for(ex.user_emotion, rng.choice(GENDERS), ex.user_pitch)
        reply_style = dlg.style_for(ex.reply_emotion, rng.choice(GENDERS), ex.reply_pitch)
        out.append(spoken_dialogue_record(
            f"dialogue_speech-{split}-{k:05d}", ex.user_text, ex.user_emotion, ex.user_pitch, user_style,
            ex.reply_text, ex.reply_emotion, ex.reply_pitch, reply_style, meta={"kind": ex.kind},
        ))  # fmt: skip
    return out


def _text_qa_records(split: str, seed: int, scenes: list[Scene], sz: WorldSizes) -> list[dict]:
    out = []
    for k in range(sz.n_text_qa):
        rng = _rng(seed, split, "text_qa", k)
        ex = dlg.sample_text_qa(rng, split)
        short = ex.short_answer is not None and rng.random() < sz.short_answer_prob
        q = ex.user_text + SHORT_ANSWER_SUFFIX if short else ex.user_text
        a = ex.short_answer if short and ex.short_answer else ex.reply_text
        meta = {"kind": ex.kind, "answer": ex.short_answer, "sentence": ex.reply_text,
                "reply_emotion": ex.reply_emotion, "answer_form": "short" if short else "sentence"}
        out.append(text_record(f"text_qa-{split}-{k:05d}", q, a, meta=meta))
    return out


def _utterance(rng: random.Random, split: str, scenes: list[Scene]) -> tuple[str, str]:
    """A sentence to speak (of `split`, by `dialogues.sentence_split`) and where it came from:
    image questions, remarks or replies."""
    for _ in range(1000):
        u = rng.random()
        if u < 0.3 and scenes:
            text = questions_for_scene(rng.choice(scenes), rng, 1, split, spoken=True)[0].question
            source = "image_question"
        else:
            ex = dlg.sample_exchange(rng, split)
            text, source = (ex.user_text, "remark") if u < 0.65 else (ex.reply_text, "reply")
        if dlg.sentence_split(text) == split:
            return text, source
    raise RuntimeError(f"no utterance of split {split!r} found")


def _asr_records(split: str, seed: int, scenes: list[Scene], sz: WorldSizes) -> list[dict]:
    out = []
    for k in range(sz.n_asr):
        rng = _rng(seed, split, "asr", k)
        text, source = _utterance(rng, split, scenes)
        out.append(asr_record(f"asr-{split}-{k:05d}", text, _random_style(rng), meta={"source": source}))
    return out


def _tts_records(split: str, seed: int, scenes: list[Scene], sz: WorldSizes) -> list[dict]:
    out = []
    for k in range(sz.n_tts):
        rng = _rng(seed, split, "tts", k)
        text, source = _utterance(rng, split, scenes)
        style = dlg.style_for("neutral", rng.choice(GENDERS))
        out.append(tts_record(f"tts-{split}-{k:05d}", text, style, meta={"source": source}))
    return out


_MAKERS: dict[str, Callable[[str, int, list[Scene], WorldSizes], list[dict]]] = {
    "caption": _caption_records,
    "vqa": _vqa_records,
    "vqa_speech": _vqa_speech_records,
    "dialogue_speech": _dialogue_records,
    "text_qa": _text_qa_records,
    "asr": _asr_records,
    "tts": _tts_records,
}


# ------------------------------------------------------------------------------------------- build
def build_world(
    out_dir: str | Path,
    split: str = "train",
    n_images: int | None = None,
    seed: int | None = None,
    sizes: WorldSizes | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Write one split of the tiny world under `out_dir`; returns {task: path of its JSON file}
    plus "scenes" and "manifest". Existing outputs are kept (resume); a manifest that disagrees
    with the requested seed/sizes is an error, not a silent mix."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    seed = DEFAULT_SEEDS[split] if seed is None else int(seed)
    sz = sizes or DEFAULT_SIZES[split]
    if n_images is not None:
        sz = replace(sz, n_images=int(n_images))
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / split).mkdir(parents=True, exist_ok=True)

    manifest = {"format_version": FORMAT_VERSION, "split": split, "seed": seed, "sizes": asdict(sz),
                "tasks": list(TASKS)}
    mpath = out / split / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text(encoding="utf-8"))
        if old != manifest:
            diff = sorted(k for k in manifest if old.get(k) != manifest[k])
            raise ValueError(f"{mpath} was built with other settings ({', '.join(diff)} differ); "
                             "use another out_dir or delete the old split")
    else:
        mpath.write_text(json.dumps(manifest, indent=1), encoding="utf-8")

    scenes = [scene_for(seed, split, i, sz.text_prob) for i in range(sz.n_images)]
    for i in tqdm(range(sz.n_images), desc=f"{split} images", disable=not progress, unit="img"):
        p = out / image_path(split, i)
        if not p.exists():
            tmp = p.with_name(p.stem + ".tmp.png")
            render_scene(scenes[i]).save(tmp, format="PNG")
            tmp.replace(p)

    paths: dict[str, Path] = {"manifest": mpath, "scenes": out / split / "scenes.json"}
    if not paths["scenes"].exists():
        rows = [{"image": image_path(split, i), **s.to_dict()} for i, s in enumerate(scenes)]
        tmp = paths["scenes"].with_suffix(".tmp")
        tmp.write_text(json.dumps(rows, indent=1), encoding="utf-8")
        tmp.replace(paths["scenes"])

    for task in tqdm(TASKS, desc=f"{split} records", disable=not progress, unit="task"):
        paths[task] = out / split / f"{task}.json"
        if not paths[task].exists():
            save_records(paths[task], _MAKERS[task](split, seed, scenes, sz))
    return paths


def load_split(out_dir: str | Path, split: str, tasks: tuple[str, ...] = TASKS) -> dict[str, list[dict]]:
    """The validated records of a built split, {task: records} (image paths checked under out_dir)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected some of {', '.join(TASKS)}")
    return {t: load_records(Path(out_dir) / split / f"{t}.json", image_root=out_dir) for t in tasks}


def main(argv: list[str] | None = None) -> None:
    """`python -m emova.data.world.build OUT_DIR [--split S] [--n-images N] [--seed K]`."""
    import argparse

    ap = argparse.ArgumentParser(description="Build the tiny world (images + JSON records).")
    ap.add_argument("out_dir")
    ap.add_argument("--split", choices=SPLITS, default=None, help="default: both splits")
    ap.add_argument("--n-images", type=int, default=None)
    ap.add_argument("--seed", type=int, default=None)
    args = ap.parse_args(argv)
    for split in [args.split] if args.split else list(SPLITS):
        for task, path in build_world(args.out_dir, split, args.n_images, args.seed).items():
            print(f"{split:8s} {task:16s} {path}")


if __name__ == "__main__":
    main()
