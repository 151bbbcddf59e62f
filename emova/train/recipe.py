"""`emova train recipe tiny`: regenerate the bundled emova-tiny from a clean checkout, step by step.

    speech_corpus → s2u → u2s → world → world_speech → units → reader → world_speech_canonical → units_canonical
    → world_speech_canonical_kal16 → units_canonical_kal16 → vision → stage1 → stage2 → stage3 → stage3_cont
    → stage3_cont2 → stage3_cont3 → stage3_cont4 → stage3_cont5 → stage3_cont6 → stage3_cont7 → stage3_cont8
    → average → export

(`stage3_cont` and `stage3_cont2` are a second and a third leg of stage 3, both `tiny_stage3_cont.yaml`: same
data and trainable set, each from the previous leg's final weights with a fresh warmup and cosine schedule and
its own data order, seed = the leg number. `stage3_cont3` … `stage3_cont8`, `tiny_stage3_one_voice.yaml`, are
the fourth to ninth legs on worlds whose model speech is rendered in one voice, neutral — flite slt
(`world_speech_canonical` / `units_canonical`), then flite kal16 (`…_kal16`) five times; `ONE_VOICE_LEGS`.
`average` is the mean of the last legs' weights, `AVERAGED_LEGS`; `export` writes it to the bundle.)

Each step is skipped when its output exists (delete the output, or pass `force=[step]`, to redo it);
steps that train resume from their latest checkpoint when killed. The wall time of every step (and
whether it ran or was cached) goes to `{work_dir}/recipe_tiny_timings.json`.

Outputs: `emova/assets/emova-tiny/{speech_tokenizer, speech_detokenizer, llm}`; intermediate data in
`work_dir` (default data_cache/), runs in `runs_dir` (default runs/).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from emova.assets import ASSETS

STAGE3_LEGS = tuple(range(1, 9))  # stage 3's continuation legs, steps stage3_cont, stage3_cont2 … stage3_cont8


def _leg_name(n: int, leg: int) -> str:
    """The run name of stage n's leg: "3" (leg 0, the stage itself), "3_cont", "3_cont2", …"""
    return f"{n}" if leg == 0 else f"{n}_cont" if leg == 1 else f"{n}_cont{leg}"


LEG_STEPS = {leg: f"stage{_leg_name(3, leg)}" for leg in STAGE3_LEGS}  # leg → its recipe step
STEPS = ("speech_corpus", "s2u", "u2s", "world", "world_speech", "units", "reader", "world_speech_canonical",
         "units_canonical", "world_speech_canonical_kal16", "units_canonical_kal16", "vision", "stage1", "stage2", "stage3",
         *LEG_STEPS.values(), "average", "export")
PACKAGE = Path(__file__).resolve().parents[1]
DEFAULT_FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd"
# The last stage-3 legs and their data: worlds whose train-split model speech (TTS targets, spoken replies, corpus
# TTS pairs) is rendered in one voice, neutral (`emova.data.world_speech.output_style`), rather than in every
# training voice and the record's style: one unit sequence per sentence. Leg 3 (`stage3_cont3`) in flite slt
# (`OUTPUT_VOICE`), legs 4 to 8 (`stage3_cont4` … `stage3_cont8`) in flite kal16, whose units the U2S renders
# most intelligibly (docs/training.md, "Which voice speaks the model's speech").
ONE_VOICE_LEGS = {3: "flite:slt", 4: "flite:kal16", 5: "flite:kal16", 6: "flite:kal16", 7: "flite:kal16", 8: "flite:kal16"}
# The bundled LLM is the mean of these legs' final weights, the seventh to ninth (`emova.train.average`;
# docs/training.md, "Averaging the last legs"): chosen on the validation world (benchmarks/choose_checkpoint.py), where
# it beat the previous bundle (legs 6-7) on every suite it was compared on.
AVERAGED_LEGS = (6, 7, 8)


def _suffix(voice: str) -> str:
    """Directory suffix of a one-voice world: none for `OUTPUT_VOICE` (flite slt), else "_<voice name>"."""
    from emova.data.world_speech import OUTPUT_VOICE

    return "" if voice == OUTPUT_VOICE else "_" + voice.split(":")[-1]


@dataclass
class RecipePaths:
    work: Path
    runs: Path
    assets: Path
    fsdd: Path | None

    @property
    def corpus(self) -> Path:
        return self.work / "speech"

    @property
    def world(self) -> Path:
        return self.work / "world"

    @property
    def world_speech(self) -> Path:
        return self.work / "world_speech"

    @property
    def world_units(self) -> Path:
        return self.work / "world_units"

    def speech_dir(self, voice: str | None = None) -> Path:
        """The world's speech; with `voice`, the one-voice world whose model speech that voice speaks."""
        return self.world_speech if voice is None else self.work / f"world_speech_canonical{_suffix(voice)}"

    def units_dir(self, voice: str | None = None) -> Path:
        return self.world_units if voice is None else self.work / f"world_units_canonical{_suffix(voice)}"

    @property
    def tokenizer(self) -> Path:
        return self.assets / "speech_tokenizer"

    @property
    def detokenizer(self) -> Path:
        return self.assets / "speech_detokenizer"

    @property
    def llm(self) -> Path:
        return self.assets / "llm"

    def stage(self, n: int | str) -> Path:
        return self.runs / "omni" / f"stage{n}"

    @property
    def vision(self) -> Path:
        return self.runs / "omni" / "vision"


# ----------------------------------------------------------------------------------------------- steps
def _speech_corpus(p: RecipePaths) -> None:
    from emova.data.speech.corpus import CorpusConfig, render_corpus

    render_corpus(p.corpus, CorpusConfig(fsdd_dir=str(p.fsdd) if p.fsdd else None), workers=2)


def _s2u(p: RecipePaths) -> None:
    from emova.train.s2u import S2UTrainConfig, export_s2u, train_s2u

    cfg = S2UTrainConfig.load(PACKAGE / "configs" / "s2u_tiny.yaml", corpus=str(p.corpus), out_dir=str(p.runs / "s2u"))
    run = train_s2u(cfg)
    export_s2u(run / "final", p.tokenizer)


def _u2s(p: RecipePaths) -> None:
    try:
        from emova.train.u2s import U2STrainConfig, train_u2s
    except ImportError as e:  # the hook: the recipe runs on without a detokenizer (TTS eval then skips)
        raise _Hook(f"emova.train.u2s is not available ({e}); train the U2S separately") from None
    cfg = U2STrainConfig.load(PACKAGE / "configs" / "u2s_tiny.yaml", corpus=str(p.corpus), tokenizer=str(p.tokenizer),
                              cache_dir=str(p.work / "u2s"), out_dir=str(p.runs / "u2s"), export_dir=str(p.detokenizer))
    train_u2s(cfg)


def _world(p: RecipePaths) -> None:
    from emova.data.world import build_world

    for split in ("train", "heldout"):
        build_world(p.world, split)


def _world_speech(p: RecipePaths, voice: str | None = None) -> None:
    """The world's speech; with `voice`, its one-voice version (the train split's model speech in `voice`)."""
    from emova.data.world_speech import OUTPUT_VOICE, render_world_speech

    out = p.speech_dir(voice)
    for split in ("heldout", "train"):
        render_world_speech(p.world, split, out, workers=2, canonical_outputs=voice is not None,
                            output_voice=voice or OUTPUT_VOICE)
    (out / "done").write_text("ok\n")


def _units(p: RecipePaths, voice: str | None = None) -> None:
    from emova.data.world_speech import (
        FSDD_TASK,
        OUTPUT_VOICE,
        encode_world_speech,
        fill_world_units,
        fsdd_asr_records,
        speech_requests,
    )
    from emova.speech.tokenizer import SpeechTokenizer

    tok = SpeechTokenizer.from_pretrained(p.tokenizer)
    speech, dest = p.speech_dir(voice), p.units_dir(voice)
    for split, fsdd_split in (("heldout", "fsdd_val"), ("train", "fsdd_train")):
        units = encode_world_speech(speech, split, tok, speech_requests(p.world, split), canonical_outputs=voice is not None,
                                    output_voice=voice or OUTPUT_VOICE)
        out = fill_world_units(p.world, split, units, dest)
        if p.fsdd:
            (out / f"{FSDD_TASK}.json").write_text(json.dumps(fsdd_asr_records(p.corpus, fsdd_split, tok)))
    _corpus_units(p, tok, voice)
    (dest / "done").write_text("ok\n")


CORPUS_TASKS = ("corpus_asr", "corpus_tts")


def _reader(p: RecipePaths) -> None:
    """The unit reader of the tokenizer's units (emova.train.reader), exported into the tokenizer's directory."""
    from emova.speech.tokenizer import SpeechTokenizer
    from emova.train.reader import ReaderTrainConfig, export_reader, train_reader

    run = p.runs / "reader"
    meta = run / "units_meta.json"
    if meta.exists():  # a run on the units of an earlier tokenizer is set aside (kept), not resumed
        old = json.loads(meta.read_text()).get("tokenizer_fingerprint")
        if old != SpeechTokenizer.from_pretrained(p.tokenizer).fingerprint:
            aside = run.with_name(f"reader-{old}")
            k = 1
            while aside.exists():
                aside, k = run.with_name(f"reader-{old}-{k}"), k + 1
            print(f"[recipe] reader: {run} read another tokenizer's units; moved to {aside}", flush=True)
            run.rename(aside)
    cfg = ReaderTrainConfig.load(PACKAGE / "configs" / "reader_tiny.yaml", tokenizer=str(p.tokenizer),
                                 corpus=str(p.corpus), world_units=str(p.world_units),
                                 world_speech=str(p.world_speech), heldout_world=str(p.world), out_dir=str(run))
    export_reader(train_reader(cfg), p.tokenizer)


def _corpus_units(p: RecipePaths, tok: Any, voice: str | None = None) -> None:
    """The speech corpus's training renderings as ASR/TTS pairs (EMOVA's stage-2 speech-text data): 7,000
    more sentences than the world's own, minus every sentence the world's held-out split says or answers
    (TTS pairs only in `voice`, when given)."""
    from emova.data.world_speech import corpus_speech_records, heldout_texts

    train = p.units_dir(voice) / "train"
    asr, tts = corpus_speech_records(p.corpus, tok, heldout_texts(p.world),
                                     tts_voices=[voice] if voice is not None else None)
    for task, recs in zip(CORPUS_TASKS, (asr, tts)):
        (train / f"{task}.json").write_text(json.dumps(recs))
    print(f"[recipe] units: {len(asr)} corpus ASR and {len(tts)} corpus TTS pairs", flush=True)


def _vision(p: RecipePaths) -> None:
    from emova.train.vision_pretrain import VisionPretrainConfig, train_vision

    train_vision(VisionPretrainConfig.load("vision_tiny", out_dir=str(p.vision)))


def _stage(n: int, leg: int = 0) -> Callable[[RecipePaths], None]:
    """Stage n's runner (config `tiny_stage{n}`); leg k > 0 is the same stage again (`tiny_stage{n}_cont`, seed k)
    from the previous leg's final weights; stage 3's legs in `ONE_VOICE_LEGS` train on a one-voice world
    (`tiny_stage3_one_voice`)."""
    voice = ONE_VOICE_LEGS.get(leg) if n == 3 else None
    config = "tiny_stage3_one_voice" if voice else f"tiny_stage{n}_cont" if leg else f"tiny_stage{n}"

    def run(p: RecipePaths) -> None:
        from emova.train.omni import OmniTrainConfig, train_stage

        units = p.units_dir(voice)
        over: dict[str, Any] = {"world_dir": str(units), "image_root": str(p.world),
                                "out_dir": str(p.stage(_leg_name(n, leg)))}
        if leg:
            over["init_from"] = str(p.stage(_leg_name(n, leg - 1)) / "final")
            over["seed"] = leg
        elif n > 1:
            over["init_from"] = str(p.stage(n - 1) / "final")
        else:
            over["vision_init_from"] = str(p.vision / "final")
        if n > 1:  # FSDD digits and the corpus pairs, where the units step made them
            extra = [units / "train" / f"{t}.json" for t in ("fsdd_asr", *CORPUS_TASKS)]
            over["extra_records"] = [str(f) for f in extra if f.exists()]
        train_stage(n, OmniTrainConfig.load(config, **over))

    return run


def _average(p: RecipePaths) -> None:
    from emova.train.average import average_checkpoints

    average_checkpoints([p.stage(_leg_name(3, leg)) / "final" for leg in AVERAGED_LEGS], p.stage("3_avg") / "final")


def _export(p: RecipePaths) -> None:
    export_llm(p.stage("3_avg") / "final", p.llm)


_RUNNERS: dict[str, Callable[[RecipePaths], None]] = {
    "speech_corpus": _speech_corpus, "s2u": _s2u, "u2s": _u2s, "world": _world, "world_speech": _world_speech,
    "units": _units, "reader": _reader, "world_speech_canonical": lambda p: _world_speech(p, ONE_VOICE_LEGS[3]),
    "units_canonical": lambda p: _units(p, ONE_VOICE_LEGS[3]),
    "world_speech_canonical_kal16": lambda p: _world_speech(p, ONE_VOICE_LEGS[4]),
    "units_canonical_kal16": lambda p: _units(p, ONE_VOICE_LEGS[4]),
    "vision": _vision, "stage1": _stage(1), "stage2": _stage(2), "stage3": _stage(3),
    **{step: _stage(3, leg=leg) for leg, step in LEG_STEPS.items()},
    "average": _average, "export": _export,
}  # fmt: skip


def _outputs(p: RecipePaths) -> dict[str, Path]:
    """The file whose existence means a step is done."""
    return {
        "speech_corpus": p.corpus / "manifest.jsonl",
        "s2u": p.tokenizer / "model.safetensors",
        "u2s": p.detokenizer / "model.safetensors",
        "world": p.world / "heldout" / "tts.json",
        "world_speech": p.world_speech / "done",
        "units": p.world_units / "done",
        "reader": p.tokenizer / "reader.safetensors",
        "world_speech_canonical": p.speech_dir(ONE_VOICE_LEGS[3]) / "done",
        "units_canonical": p.units_dir(ONE_VOICE_LEGS[3]) / "done",
        "world_speech_canonical_kal16": p.speech_dir(ONE_VOICE_LEGS[4]) / "done",
        "units_canonical_kal16": p.units_dir(ONE_VOICE_LEGS[4]) / "done",
        "vision": p.vision / "final" / "vision_tower.safetensors",
        "stage1": p.stage(1) / "final" / "model.safetensors",
        "stage2": p.stage(2) / "final" / "model.safetensors",
        "stage3": p.stage(3) / "final" / "model.safetensors",
        **{step: p.stage(_leg_name(3, leg)) / "final" / "model.safetensors" for leg, step in LEG_STEPS.items()},
        "average": p.stage("3_avg") / "final" / "model.safetensors",
        "export": p.llm / "model.safetensors",
    }


# A cached step is redone when a step it is made from finished after it: stage 3 rerun into runs/ while the
# assets directory still held the previous export. (Not the stages themselves: a stage directory holds its
# checkpoints, and a stage redone there resumes from them; retrain a stage into a fresh --runs-dir.)
_DEPENDS: dict[str, tuple[str, ...]] = {"average": tuple(LEG_STEPS[leg] for leg in AVERAGED_LEGS),
                                        "export": ("average",)}


class _Hook(RuntimeError):
    """A step whose implementation is not there yet: recorded, skipped, the recipe goes on."""


TIE_MARGIN = 0.01  # logits this close: a probability ratio under 1.01


def export_llm(src: str | Path, dst: str | Path, check_tokens: int = 48) -> dict[str, Any]:
    """Save the stage-3 model to `dst` in fp16 when that is lossless for greedy decoding, else fp32; the processor
    goes along. Returns what was done.

    Lossless: on a probe sequence, max |Δlogit| < 0.05 and the same argmax wherever the fp32 model makes a choice.
    A position whose top two fp32 logits are within `TIE_MARGIN` of each other is a tie (the two tokens' probabilities
    differ by under 1 %; which one fp32 picks is down to its own rounding), so a flip there is counted in
    `export_info.json`, not disqualifying."""
    from emova.model.modeling_emova import EmovaForConditionalGeneration
    from emova.model.processor import EmovaProcessor

    model = EmovaForConditionalGeneration.from_pretrained(src, dtype=torch.float32).eval()
    proc = EmovaProcessor.from_pretrained(src)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, int(model.config.text_config.vocab_size) - 128, (2, check_tokens), generator=g)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        half = EmovaForConditionalGeneration.from_pretrained(src, dtype=torch.float16).eval()
        test = half.float()(input_ids=ids).logits
    diff = float((ref - test).abs().max())
    flips = ref.argmax(-1) != test.argmax(-1)
    top2 = ref.topk(2, dim=-1).values
    ties = (top2[..., 0] - top2[..., 1]) < TIE_MARGIN
    same_argmax = bool(not (flips & ~ties).any())
    use_fp16 = same_argmax and diff < 0.05
    out = (EmovaForConditionalGeneration.from_pretrained(src, dtype=torch.float16) if use_fp16 else model)
    Path(dst).mkdir(parents=True, exist_ok=True)
    out.save_pretrained(str(dst))
    proc.save_pretrained(dst)
    info = {"dtype": "float16" if use_fp16 else "float32", "max_abs_logit_diff_fp16": diff,
            "fp16_same_argmax": same_argmax, "fp16_argmax_flips_at_ties": int((flips & ties).sum()),
            "source": str(src)}
    (Path(dst) / "export_info.json").write_text(json.dumps(info, indent=1))
    return info


def run_recipe(name: str = "tiny", work_dir: str = "data_cache", runs_dir: str = "runs",
               assets_dir: str | None = None, fsdd_dir: str | None = None, steps: list[str] | None = None,
               force: list[str] | None = None) -> dict[str, Any]:
    """`emova train recipe tiny [--work-dir D] [--runs-dir R] [--assets-dir A] [--fsdd F] [--steps …] [--force …]`.

    Runs `steps` (default: all, in order), skipping those whose output exists unless named in `force`.
    Returns and writes the timings JSON."""
    if name != "tiny":
        raise ValueError(f"unknown recipe {name!r}; available: tiny")
    chosen = list(steps or STEPS)
    bad = [s for s in chosen + list(force or []) if s not in STEPS]
    if bad:
        raise ValueError(f"unknown recipe step(s) {bad}; steps: {', '.join(STEPS)}")
    fsdd = Path(fsdd_dir) if fsdd_dir else (DEFAULT_FSDD if (DEFAULT_FSDD / "recordings").is_dir() else None)
    paths = RecipePaths(Path(work_dir), Path(runs_dir), Path(assets_dir) if assets_dir else ASSETS / "emova-tiny", fsdd)
    paths.work.mkdir(parents=True, exist_ok=True)
    timing_path = paths.work / f"recipe_{name}_timings.json"
    timings: dict[str, Any] = json.loads(timing_path.read_text()) if timing_path.exists() else {}
    outputs = _outputs(paths)
    for step in STEPS:
        if step not in chosen:
            continue
        newer = [d for d in _DEPENDS.get(step, ()) if outputs[d].exists() and outputs[step].exists()
                 and outputs[d].stat().st_mtime > outputs[step].stat().st_mtime]
        if newer:
            print(f"[recipe] {step}: redoing, {', '.join(newer)} is newer than {outputs[step]}", flush=True)
        if outputs[step].exists() and step not in (force or []) and not newer:
            print(f"[recipe] {step}: cached ({outputs[step]})", flush=True)
            timings.setdefault(step, {"status": "cached"})
            continue
        print(f"[recipe] {step}: running", flush=True)
        t0 = time.time()
        try:
            _RUNNERS[step](paths)
            status = "ran"
        except _Hook as e:
            status = f"hook: {e}"
            print(f"[recipe] {step}: skipped — {e}", flush=True)
        timings[step] = {"status": status, "seconds": round(time.time() - t0, 1),
                         "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        timing_path.write_text(json.dumps(timings, indent=1))
    timings["total_seconds_ran"] = round(sum(v.get("seconds", 0.0) for k, v in timings.items()
                                             if isinstance(v, dict) and v.get("status") == "ran"), 1)
    timing_path.write_text(json.dumps(timings, indent=1))
    return timings


__all__ = ["STEPS", "export_llm", "run_recipe"]
