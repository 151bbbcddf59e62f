"""The tiny world's speech: render every utterance its records ask for, encode it to units, fill the records.

    render_world_speech("data_cache/world", "train", "data_cache/world_speech")      # wav per speech key
    encode_world_speech("data_cache/world_speech", "train", tokenizer)                 # units-<tokenizer>.jsonl
    fill_world_units("data_cache/world", "train", "data_cache/world_speech", "data_cache/world_units")

Voices: the train split is spoken by `TRAIN_VOICES` (flite and espeak-ng, ~45% flite, the speaker
drawn per utterance from the style's gender, with per-utterance jitter), the held-out split ONLY by
`HELD_OUT_VOICES` (flite `awb` for male styles, espeak-ng `en-us+f4` for female ones), so every
evaluation of speech input is on voices never heard in training. Voice and jitter are a pure function of
the speech key, so a resumed run renders the same audio; the caches also record what each key says
(`content_digest`), so a key whose text or style changed is rendered and encoded again.

Model speech (`role == "output"`: TTS targets, spoken replies) is by default spoken like user speech, by a
voice drawn per key, in the record's style. With `canonical_outputs=True` the train split's model speech is
rendered by ONE voice in ONE style instead (`output_voice`, a training voice, default `OUTPUT_VOICE`; its neutral
`output_style`, no jitter), so a sentence has exactly one unit sequence to learn: the S2U's units of one sentence
differ between voices almost as much as between sentences, and with jitter or another style even within a voice
(`benchmarks/unit_consistency.py`). The record keeps its style — the U2S adds voice, emotion, pitch and speed
to the units, as it was trained to (its input units always come from neutral renderings). User speech keeps
every voice and style either way.

FSDD digits (real recordings) become ASR records from the speech corpus (`fsdd_train` for training,
`fsdd_val` for evaluation).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm import tqdm

from emova.data.speech.voices import (
    ESPEAK_TRAIN_VOICES,
    FLITE_TRAIN_VOICES,
    HELD_OUT_VOICES,
    TRAIN_VOICES,
    Voice,
    voice_by_key,
)
from emova.data.world.build import TASKS
from emova.data.world.formats import (
    SpeechRequest,
    fill_speech_units,
    load_records,
    records_needing_speech,
    units_to_string,
)
from emova.model.prompts import ASR_PROMPT, TTS_PROMPT
from emova.styles import Style

FLITE_SHARE = 0.45
# what the model's own speech is rendered in with canonical_outputs (a flite voice the U2S speaks; neutral)
OUTPUT_VOICE = "flite:slt"
OUTPUT_STYLE = "gender-female_emotion-neutral_speed-normal_pitch-normal"
FSDD_TASK = "fsdd_asr"


def _rng(key: str) -> random.Random:
    return random.Random(int(hashlib.md5(f"world-speech:{key}".encode()).hexdigest()[:12], 16))


def output_style(output_voice: str = OUTPUT_VOICE) -> str:
    """The style canonical model speech is rendered in: neutral, normal speed and pitch, the voice's gender
    (`OUTPUT_STYLE` for `OUTPUT_VOICE`)."""
    return str(Style(gender=voice_by_key(output_voice).gender))


def is_canonical(split: str, role: str, canonical_outputs: bool) -> bool:
    """Whether a request is rendered in the one output voice, neutral (train-split model speech)."""
    return canonical_outputs and role == "output" and split != "heldout"


def voice_for(key: str, style: str, split: str, role: str = "input",
              canonical_outputs: bool = False, output_voice: str = OUTPUT_VOICE) -> tuple[Voice, dict[str, float]]:
    """The voice (and jitter) that speaks `key`: training voices for train, held-out voices for heldout;
    with `canonical_outputs`, the train split's model speech (`role == "output"`) in `output_voice`."""
    if is_canonical(split, role, canonical_outputs):
        return voice_by_key(output_voice), {}
    gender = Style.parse(style).gender
    if split == "heldout":
        return next(v for v in HELD_OUT_VOICES if v.gender == gender), {}
    rng = _rng(key)
    pool = FLITE_TRAIN_VOICES if rng.random() < FLITE_SHARE else ESPEAK_TRAIN_VOICES
    voices = [v for v in pool if v.gender == gender] or [v for v in ESPEAK_TRAIN_VOICES if v.gender == gender]
    jitter = {"f0": rng.uniform(0.92, 1.08), "rate": rng.uniform(0.92, 1.08), "gain_db": rng.uniform(-3, 3)}
    return rng.choice(voices), jitter


def wav_name(key: str) -> str:
    return key.replace("/", "__") + ".wav"


def content_digest(text: str, style: str, voice: str | None = None) -> str:
    """What a speech key says and how: the world's caches (wav index, units) hold it next to every key, so
    a key whose record now says something else (e.g. a question drawn for another scene once the world has
    more images) is rendered and encoded again instead of being served stale audio. `voice` is given only
    where the voice is not the per-key draw (canonical model speech), so those keys are re-rendered too."""
    tail = f"\x00{voice}" if voice else ""
    return hashlib.sha1(f"{text}\x00{style}{tail}".encode()).hexdigest()[:16]


def request_digest(req: SpeechRequest, split: str, canonical_outputs: bool = False,
                   output_voice: str = OUTPUT_VOICE) -> str:
    """`content_digest` of one request as rendered with these settings."""
    if is_canonical(split, req.role, canonical_outputs):
        return content_digest(req.text, output_style(output_voice), output_voice)
    return content_digest(req.text, req.style)


def _check_output_voice(output_voice: str) -> None:
    """The model's own speech may only be a training voice: a held-out voice stays unheard in training."""
    if output_voice not in {v.key for v in TRAIN_VOICES}:
        raise ValueError(f"output voice {output_voice!r} is not a training voice (e.g. "
                         f"{', '.join(v.key for v in FLITE_TRAIN_VOICES)})")


def _render_one(args: tuple[str, str, str, str, str, str, bool, str]) -> str:
    from emova.data.speech.render import Jitter, synthesize

    key, text, style, split, out, role, canonical, output_voice = args
    path = Path(out) / wav_name(key)
    voice, jit = voice_for(key, style, split, role, canonical, output_voice)
    if is_canonical(split, role, canonical):
        style = output_style(output_voice)
    audio = synthesize(text, voice, Style.parse(style), Jitter(**jit) if jit else Jitter())
    tmp = path.with_name(path.stem + ".tmp.wav")
    audio.save(tmp)
    tmp.replace(path)  # atomic: a killed run never leaves half a file
    return key


def _read_index(path: Path) -> dict[str, dict[str, Any]]:
    """JSON lines with a "key" each; the last line of a key wins (caches are appended to)."""
    rows: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[row["key"]] = row
    return rows


def speech_requests(world_dir: str | Path, split: str, tasks: Iterable[str] = TASKS) -> list[SpeechRequest]:
    records = [r for t in tasks for r in load_records(Path(world_dir) / split / f"{t}.json")]
    return records_needing_speech(records)


def render_world_speech(world_dir: str | Path, split: str, out_dir: str | Path, workers: int = 2,
                        progress: bool = True, canonical_outputs: bool = False, output_voice: str = OUTPUT_VOICE) -> Path:
    """Render every speech request of a split to `out_dir/{split}/wav/*.wav`. `wav/index.jsonl` records what
    each file says (`content_digest`): a file is reused only while its request still says the same.
    `canonical_outputs`: the train split's model speech in `output_voice` (a training voice), neutral."""
    _check_output_voice(output_voice)
    reqs = speech_requests(world_dir, split)
    wav_dir = Path(out_dir) / split / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    index_path = wav_dir / "index.jsonl"
    index = _read_index(index_path)
    digest = {r.key: request_digest(r, split, canonical_outputs, output_voice) for r in reqs}
    todo = [(r.key, r.text, r.style, split, str(wav_dir), r.role, canonical_outputs, output_voice) for r in reqs
            if index.get(r.key, {}).get("digest") != digest[r.key] or not (wav_dir / wav_name(r.key)).exists()]
    bar = tqdm(total=len(reqs), initial=len(reqs) - len(todo), desc=f"rendering {split} speech", unit="utt",
               disable=not progress)
    with open(index_path, "a") as idx:
        def done(key: str) -> None:
            idx.write(json.dumps({"key": key, "digest": digest[key]}) + "\n")
            idx.flush()
            bar.update()

        if workers <= 1:
            for a in todo:
                done(_render_one(a))
        elif todo:
            with ProcessPoolExecutor(workers) as ex:
                for key in ex.map(_render_one, todo, chunksize=16):
                    done(key)
    bar.close()
    return wav_dir


def encode_world_speech(speech_dir: str | Path, split: str, tokenizer: Any, requests: list[SpeechRequest],
                        batch: int = 32, progress: bool = True, canonical_outputs: bool = False,
                        output_voice: str = OUTPUT_VOICE) -> dict[str, list[int]]:
    """Reduced units per speech key, cached in `speech_dir/{split}/units-<tokenizer fingerprint>.jsonl` (appended;
    resumable; one file per tokenizer) with the `content_digest` they were made from: a row counts only while its
    request still says the same."""
    base = Path(speech_dir) / split
    cache = base / f"units-{tokenizer.fingerprint}.jsonl"
    digest = {r.key: request_digest(r, split, canonical_outputs, output_voice) for r in requests}
    done = {k: row["units"] for k, row in _read_index(cache).items() if row.get("digest") == digest.get(k)}
    todo = [r.key for r in requests if r.key not in done]
    with open(cache, "a") as f, tqdm(total=len(requests), initial=len(requests) - len(todo),
                                     desc=f"encoding {split} speech", unit="utt", disable=not progress) as bar:
        for s in range(0, len(todo), batch):
            keys = todo[s : s + batch]
            units = tokenizer.encode_batch([base / "wav" / wav_name(k) for k in keys])
            for k, u in zip(keys, units):
                done[k] = tokenizer.reduce(u)
                f.write(json.dumps({"key": k, "digest": digest[k], "units": done[k]}) + "\n")
            f.flush()
            bar.update(len(keys))
    return {r.key: done[r.key] for r in requests}


def fill_world_units(world_dir: str | Path, split: str, units: dict[str, list[int]], out_dir: str | Path) -> Path:
    """Write `out_dir/{split}/{task}.json` = the world's records with units in place of placeholders
    (+ scenes.json). Images stay in world_dir (train with image_root=world_dir)."""
    out = Path(out_dir) / split
    out.mkdir(parents=True, exist_ok=True)
    for task in TASKS:
        recs = load_records(Path(world_dir) / split / f"{task}.json")
        filled = fill_speech_units(recs, units)
        tmp = out / f"{task}.json.tmp"
        tmp.write_text(json.dumps(filled, ensure_ascii=False), encoding="utf-8")
        tmp.replace(out / f"{task}.json")
    scenes = Path(world_dir) / split / "scenes.json"
    if scenes.exists():
        (out / "scenes.json").write_text(scenes.read_text(encoding="utf-8"), encoding="utf-8")
    return out


def fsdd_asr_records(corpus_dir: str | Path, split: str, tokenizer: Any, copies: int = 0,
                     augment: Any = None, seed: int = 0) -> list[dict[str, Any]]:
    """ASR records from the speech corpus' FSDD rows (`fsdd_train` or `fsdd_val`): digit word as answer.

    With `copies` > 0, instead `copies` augmented versions of every recording (`emova.data.speech.wave_augment`;
    `augment` a `WaveAugment`, default ranges when None), ids `…-aug<k>`, each record's transformation in its meta."""
    from emova.audio import Audio
    from emova.data.speech.corpus import read_manifest
    from emova.data.speech.wave_augment import WaveAugment, augment_wave

    if not isinstance(copies, int) or copies < 0:
        raise ValueError(f"copies must be a non-negative integer, got {copies!r}")
    rows = read_manifest(corpus_dir, (split,))
    if not rows:
        raise ValueError(f"the speech corpus at {corpus_dir} has no {split} rows (render it with --fsdd)")
    if not copies:
        items = [(r, f"{FSDD_TASK}-{r['id']}", None) for r in rows]
        units = tokenizer.encode_batch([Path(corpus_dir) / r["path"] for r in rows])
    else:
        aug = augment if augment is not None else WaveAugment()
        items, units = [], []
        for start in tqdm(range(0, len(rows), 64), desc=f"augment {split} x{copies}", unit="batch"):
            clips = []
            for r in rows[start : start + 64]:
                audio = Audio.load(Path(corpus_dir) / r["path"])
                for k in range(copies):
                    t = aug.draw(f"{r['id']}/{k}", seed)
                    items.append((r, f"{FSDD_TASK}-{r['id']}-aug{k}", t))
                    clips.append(augment_wave(audio, t))
            units += tokenizer.encode_batch(clips)
    out = []
    for (r, rid, t), u in zip(items, units):
        unit_str = units_to_string([int(k) for k in tokenizer.reduce(u)])
        meta = {"source": "fsdd", "split": split, "speaker": r["voice"], "answer": r["text"]}
        if t is not None:
            meta["augment"] = {k: round(v, 4) for k, v in t.items() if k != "seed"}
        out.append({"id": rid, "conversations": [{"from": "human", "value": ASR_PROMPT + unit_str},
                                                 {"from": "gpt", "value": r["text"]}], "meta": meta})
    return out


def heldout_texts(world_dir: str | Path) -> set[str]:
    """Every sentence said or answered in the world's held-out split (to keep out of training data)."""
    out: set[str] = set()
    for f in sorted((Path(world_dir) / "heldout").glob("*.json")):
        recs = json.loads(f.read_text())
        if not isinstance(recs, list):
            continue
        for r in recs:
            for t in r.get("conversations", []):
                out.add(_norm(t.get("value", "")))
            for sp in (r.get("meta") or {}).get("speech", []) or []:
                out.add(_norm(sp.get("text", "")))
    return out


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def corpus_speech_records(corpus_dir: str | Path, tokenizer: Any, exclude: set[str] | None = None,
                          split: str = "train", tts_voices: Iterable[str] | None = None,
                          ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """ASR and TTS pairs from the speech corpus (EMOVA's stage-2 speech-text data): every rendering of a
    sentence is an ASR record (units → text, style-invariant), the neutral rendering of each group a TTS
    record (text → units) — only of the voices in `tts_voices` when given (e.g. `[OUTPUT_VOICE]`).
    Sentences in `exclude` (normalised; e.g. `heldout_texts(world)`) are dropped."""
    from emova.data.speech.corpus import read_manifest

    exclude = exclude or set()
    tts_keys = set(tts_voices) if tts_voices is not None else None
    rows = [r for r in read_manifest(corpus_dir, (split,)) if _norm(r["text"]) not in exclude]
    if not rows:
        raise ValueError(f"the speech corpus at {corpus_dir} has no usable {split} rows")
    units = tokenizer.encode_batch([Path(corpus_dir) / r["path"] for r in rows])
    asr, tts, seen = [], [], set()
    neutral = "emotion-neutral_speed-normal_pitch-normal"
    for r, u in zip(rows, units):
        unit_str = units_to_string([int(k) for k in tokenizer.reduce(u)])
        meta = {"source": "speech_corpus", "voice": r["voice"], "style": r["style"], "answer": r["text"]}
        asr.append({"id": f"corpus_asr-{r['id']}", "meta": meta,
                    "conversations": [{"from": "human", "value": ASR_PROMPT + unit_str},
                                      {"from": "gpt", "value": r["text"]}]})
        if r["style"].endswith(neutral) and r["group"] not in seen and (tts_keys is None or r["voice"] in tts_keys):
            seen.add(r["group"])
            tts.append({"id": f"corpus_tts-{r['id']}", "meta": meta,
                        "conversations": [{"from": "human", "value": TTS_PROMPT + r["text"]},
                                          {"from": "gpt", "value": unit_str}]})
    return asr, tts


__all__ = ["OUTPUT_STYLE", "OUTPUT_VOICE", "corpus_speech_records", "encode_world_speech", "fill_world_units",
           "fsdd_asr_records", "heldout_texts", "is_canonical", "output_style", "render_world_speech", "request_digest",
           "speech_requests", "voice_for"]
