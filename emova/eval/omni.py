"""`emova eval omni`: every acceptance suite of the omni-model issue, on held-out data, as JSON + a table.

    vqa        typed questions about held-out images: accuracy overall, per question type (colour, shape,
               count, position, reading), seen vs novel phrasings, short vs sentence answers
    text       typed questions without an image (arithmetic, facts): accuracy (no modality collapse)
    asr        held-out sentences spoken by the held-out voices → units → LLM (ASR prompt): WER, per voice
    fsdd       FSDD validation recordings (held out of training) → LLM: digit accuracy
    tts        held-out sentences → LLM (TTS prompt) → units → U2S → pocketsphinx: WER
    dialogue   spoken remarks and spoken questions about images (held-out voices) → the JSON answer:
               valid JSON with the seven keys in order, reply/user emotion accuracy, answer correctness
               (where the world defines one), user-transcript WER

Generation is greedy with the KV cache, batched (left padding; equal to one-by-one decoding), items
sorted by length. Records come from the filled held-out split (`emova train recipe tiny` writes it:
data_cache/world_units/heldout/*.json; images under data_cache/world).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from emova.data.omni_dataset import record_to_messages
from emova.data.world.images import COLORS, POSITIONS, SHAPES
from emova.data.world.questions import NUMBER_WORDS
from emova.model.prompts import ANSWER_KEYS
from emova.speech.tokenizer import UNIT_RE

SUITES = ("vqa", "text", "asr", "fsdd", "tts", "dialogue")
THRESHOLDS = {  # (metric path, comparison, value): the acceptance lines
    "vqa_accuracy": ("vqa.accuracy", ">=", 0.90),
    "asr_wer": ("asr.wer", "<=", 0.10),
    "asr_wer_greedy": ("asr.wer_greedy", "report", None),
    "fsdd_accuracy": ("fsdd.accuracy", ">=", 0.90),
    "fsdd_accuracy_greedy": ("fsdd.accuracy_greedy", "report", None),
    "tts_wer": ("tts.wer", "<=", 0.45),
    "dialogue_valid_json": ("dialogue.valid_json_keys_in_order", ">=", 0.98),
    "dialogue_valid_json_pipeline": ("dialogue.pipeline.valid_json_keys_in_order", "report", None),
    "dialogue_reply_emotion": ("dialogue.reply_emotion_accuracy", ">=", 0.90),
    "dialogue_answer": ("dialogue.answer_accuracy", ">=", 0.85),
    "dialogue_transcript_wer": ("dialogue.transcript_wer", "<=", 0.15),
    "dialogue_reply_emotion_pipeline": ("dialogue.pipeline.reply_emotion_accuracy", "report", None),
    "dialogue_answer_pipeline": ("dialogue.pipeline.answer_accuracy", "report", None),
    "dialogue_transcript_wer_pipeline": ("dialogue.pipeline.transcript_wer", "report", None),
    "text_accuracy": ("text.accuracy", "report", None),
}
MAX_NEW = {"vqa": 32, "text": 32, "asr": 48, "fsdd": 8, "tts": 320, "dialogue": 448}
_CATEGORY_WORDS = {
    "color": set(COLORS), "shape": set(SHAPES), "position": set(POSITIONS) | {"middle"},
    "count": set(NUMBER_WORDS) | {str(i) for i in range(10)} | {"no", "none"},
}


# ------------------------------------------------------------------------------------------ scoring
def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    from emova.eval.metrics import error_rate

    return error_rate([words(r) for r in refs], [words(h) for h in hyps])


def _singular(w: str) -> str:
    return w[:-1] if w.endswith("s") and w[:-1] in SHAPES else w


def answer_correct(pred: str, answer: str | None, aliases: Sequence[str] = (), qtype: str | None = None,
                   reference: str | None = None) -> bool:
    """A free-form answer is right when it equals the reference sentence, or names an accepted answer
    (whole words) and no competing value of the same kind (for 'what color…', no other colour)."""
    if reference is not None and words(pred) == words(reference):
        return True
    accepted = [words(a) for a in {answer or "", *aliases} if a]
    got = [_singular(w) for w in words(pred)]
    if not accepted or not got:
        return False
    hit = any(any(got[i : i + len(a)] == [_singular(w) for w in a] for i in range(len(got) - len(a) + 1))
              for a in accepted)
    if not hit:
        return False
    rivals = _CATEGORY_WORDS.get(qtype or "", set()) - {w for a in accepted for w in a}
    return not any(w in rivals for w in got)


def digit_of(text: str) -> int | None:
    for w in words(text):
        if w in NUMBER_WORDS:
            return NUMBER_WORDS.index(w)
        if w.isdigit() and len(w) == 1:
            return int(w)
        if w == "oh":
            return 0
    return None


def numbers_in(text: str) -> list[int]:
    """Numbers said in a text, as digits or number words, in order."""
    out = []
    for w in words(text):
        if w.isdigit():
            out.append(int(w))
        elif w in NUMBER_WORDS:
            out.append(NUMBER_WORDS.index(w))
    return out


def parse_dialogue(text: str) -> dict[str, Any]:
    """Strict: valid JSON object with exactly ANSWER_KEYS in order. Lenient fields (what the inference
    pipeline would recover) for the label and transcript metrics."""
    from emova.inference.json_repair import parse_answer

    strict = False
    try:
        obj = json.loads(text)
        strict = isinstance(obj, dict) and tuple(obj) == ANSWER_KEYS
        valid = isinstance(obj, dict)
    except json.JSONDecodeError:
        valid = False
    parsed = parse_answer(text)
    return {"valid_json": valid, "keys_in_order": strict, "fields": parsed.fields, "units": parsed.units}


def _rate(flags: Sequence[bool]) -> float | None:
    return round(sum(flags) / len(flags), 4) if flags else None


# --------------------------------------------------------------------------------------- generation
class Generator:
    """Batched greedy decoding of user turns (a record's first human turn) with the KV cache."""

    def __init__(self, model: Any, processor: Any, image_root: str | Path | None, batch_size: int = 16) -> None:
        self.model, self.processor, self.image_root, self.batch_size = model, processor, image_root, batch_size
        self.stop = [processor.im_end_id]
        eos = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        if isinstance(eos, int) and eos >= 0:
            self.stop.append(eos)

    def prompt(self, record: dict[str, Any]) -> dict[str, torch.Tensor]:
        msgs = record_to_messages({**record, "conversations": record["conversations"][:1]}, self.image_root)
        out = self.processor(msgs, add_generation_prompt=True)
        return out

    @torch.inference_mode()
    def run(self, records: Sequence[dict[str, Any]], max_new_tokens: int, desc: str = "",
            hold: bool = False, structured: bool = False, prefixes: Sequence[list[int]] | None = None) -> list[str]:
        """Greedy outputs; hold=True masks the stop ids while a spoken answer is unfinished (`AnswerGuard`);
        structured=True writes the answer's skeleton for the model (`Emova.structured_answers`); `prefixes`: tokens
        each output begins with, read with the prompt and counted as produced (`GenerationSettings.prefix`)."""
        feats = [self.prompt(r) for r in records]
        pre = [list(x) for x in prefixes] if prefixes is not None else [[] for _ in records]
        for f, x in zip(feats, pre):
            if x:
                add = torch.tensor([x], dtype=f["input_ids"].dtype)
                f["input_ids"] = torch.cat([f["input_ids"], add], 1)
                f["attention_mask"] = torch.cat([f["attention_mask"], torch.ones_like(add)], 1)
                f["labels"] = torch.cat([f["labels"], torch.full_like(add, -100)], 1)
        order = sorted(range(len(feats)), key=lambda i: feats[i]["input_ids"].shape[1])
        outs: dict[int, str] = {}
        pad = self.processor.tokenizer.pad_token_id
        for s in tqdm(range(0, len(order), self.batch_size), desc=desc, unit="batch", leave=False):
            idx = order[s : s + self.batch_size]
            batch = self.processor.pad([feats[i] for i in idx], padding_side="left")
            batch.pop("labels")
            width = batch["input_ids"].shape[1]
            starts = [width - len(pre[i]) for i in idx]  # where each row's output (its prefix first) begins
            procs = [_HoldUnfinished(self, starts)] if hold else []
            procs += [_ForceSkeleton(self, starts)] if structured else []
            extra = {"logits_processor": procs} if procs else {}
            gen = self.model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                      eos_token_id=self.stop, pad_token_id=pad, use_cache=True, **extra)
            new = gen[:, batch["input_ids"].shape[1]:]
            for i, row in zip(idx, new.tolist()):
                row = pre[i] + row[: next((k for k, t in enumerate(row) if t in self.stop), len(row))]
                outs[i] = self.processor.decode(row, skip_special_tokens=False)
        return [outs[i] for i in range(len(records))]

    def reader_inputs(self, records: Sequence[dict[str, Any]], reader: Any,
                      desc: str = "") -> Iterator[tuple[dict[str, torch.Tensor], torch.Tensor]]:
        """Each record's prompt (without labels) and the phone reader's log-probabilities of its (reduced) units;
        the pipeline reads a clip's raw units."""
        for r in tqdm(records, desc=desc, unit="item", leave=False):
            inputs = {k: v for k, v in self.prompt(r).items() if k != "labels"}
            yield inputs, reader.phone_log_probs(self.processor.string_to_units(r["conversations"][0]["value"]))

    def rescored(self, records: Sequence[dict[str, Any]], max_new_tokens: int, reader: Any, beams: int | None = None,
                 weight: float | None = None, rounds: int | None = None, desc: str = "") -> list[str]:
        """What `Emova.transcribe` answers (`emova.inference.rescoring.rescored_answer`, the pipeline's defaults
        where None)."""
        from emova.inference import rescoring as r

        beams = r.ASR_BEAMS if beams is None else beams
        weight = r.ASR_READER_WEIGHT if weight is None else weight
        rounds = r.ASR_REFINE_ROUNDS if rounds is None else rounds
        outs = []
        for inputs, lp in self.reader_inputs(records, reader, desc):
            got = r.rescored_answer(self.model, inputs, lp, beams, weight, max_new_tokens, self.stop,
                                    self.processor.tokenizer.pad_token_id, self.processor.im_end_id, self._clean,
                                    self.processor.tokenizer, rounds)
            outs.append(got.text if got is not None else "")
        return outs

    def _clean(self, ids: list[int]) -> str:
        return UNIT_RE.sub("", self.processor.decode(ids, skip_special_tokens=True)).strip()

    def transcript_prefixes(self, records: Sequence[dict[str, Any]], reader: Any, beams: int | None = None,
                            weight: float | None = None, rounds: int = 0, desc: str = "") -> list[list[int]]:
        """What `Emova.chat` writes before the model goes on with a spoken answer
        (`emova.inference.rescoring.transcript_prefix`)."""
        from emova.inference.rescoring import READER_WEIGHT, TRANSCRIPT_BEAMS, transcript_prefix

        beams = TRANSCRIPT_BEAMS if beams is None else beams
        weight = READER_WEIGHT if weight is None else weight
        return [transcript_prefix(self.model, inputs, self.processor.tokenizer, lp, beams, weight, self.stop,
                                  rounds=rounds) for inputs, lp in self.reader_inputs(records, reader, desc)]


def _start(starts: int | Sequence[int], row: int) -> int:
    """Where row `row`'s output begins: one index for the batch, or one per row."""
    return starts if isinstance(starts, int) else starts[row]


class _HoldUnfinished:
    """A transformers logits processor: in rows whose greedy pick is a stop id while their answer is
    unfinished (`emova.inference.drafting.AnswerGuard`), the stop ids are masked — the pipeline's rule."""

    def __init__(self, gen: Generator, starts: int | Sequence[int]) -> None:
        from emova.inference.drafting import AnswerGuard

        self.guard, self.stop, self.starts = AnswerGuard(gen.processor), set(gen.stop), starts

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for row in range(scores.shape[0]):
            if int(scores[row].argmax()) not in self.stop:
                continue
            produced = input_ids[row, _start(self.starts, row):].tolist()
            if not self.stop & set(produced) and self.guard(produced):  # a finished row stays finished
                scores[row, sorted(self.stop)] = float("-inf")
        return scores


class _ForceSkeleton:
    """A transformers logits processor: in rows where a value of the spoken answer has just closed (or a label
    value can only become one label), only the next token of what must follow (`AnswerDrafter`) is allowed,
    and where an emotion/pitch value opens, only the first tokens of its labels (`AnswerDrafter.allowed`) —
    the pipeline's structured answers (`GenerationSettings.draft_is_constraint` + `allow`), one token per step."""

    def __init__(self, gen: Generator, starts: int | Sequence[int]) -> None:
        from emova.inference.drafting import AnswerDrafter

        self.drafter, self.stop, self.starts = AnswerDrafter(gen.processor), set(gen.stop), starts

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for row in range(scores.shape[0]):
            produced = input_ids[row, _start(self.starts, row):].tolist()
            if self.stop & set(produced):
                continue  # finished (padding follows)
            keep = self.drafter(produced)[:1] or self.drafter.allowed(produced)
            if keep:
                kept = scores[row, keep].clone()
                scores[row] = float("-inf")
                scores[row, keep] = kept
        return scores


# -------------------------------------------------------------------------------------------- suites
def _load(world_dir: Path, task: str, max_items: int | None) -> list[dict[str, Any]]:
    path = world_dir / "heldout" / f"{task}.json"
    if not path.exists():
        raise FileNotFoundError(f"no held-out records at {path}; run `emova train recipe tiny --steps world "
                                "world_speech units` first")
    recs = json.loads(path.read_text(encoding="utf-8"))
    if any("<<speech:" in t["value"] for r in recs for t in r["conversations"]):
        raise ValueError(f"{path}: speech placeholders are not filled")
    return recs[:max_items] if max_items else recs


def _answer_of(rec: dict[str, Any]) -> str:
    return rec["conversations"][1]["value"]


def suite_vqa(gen: Generator, world_dir: Path, max_items: int | None) -> dict[str, Any]:
    recs = _load(world_dir, "vqa", max_items)
    preds = gen.run(recs, MAX_NEW["vqa"], "vqa")
    groups: dict[str, list[bool]] = defaultdict(list)
    examples = []
    for r, p in zip(recs, preds):
        m = r["meta"]
        ok = answer_correct(p, m["answer"], m.get("aliases", []), m["qtype"], _answer_of(r))
        groups["all"].append(ok)
        groups[f"qtype/{m['qtype']}"].append(ok)
        groups["phrasing/" + ("novel" if m.get("novel_phrasing") else "seen")].append(ok)
        groups[f"form/{m.get('answer_form', '?')}"].append(ok)
        if not ok and len(examples) < 8:
            examples.append({"id": r["id"], "expected": _answer_of(r), "got": p})
    return {"n": len(recs), "accuracy": _rate(groups.pop("all")),
            **{k: {"accuracy": _rate(v), "n": len(v)} for k, v in sorted(groups.items())}, "errors": examples}


def suite_text(gen: Generator, world_dir: Path, max_items: int | None) -> dict[str, Any]:
    recs = [r for r in _load(world_dir, "text_qa", None) if r["meta"].get("answer")]
    recs = recs[:max_items] if max_items else recs
    preds = gen.run(recs, MAX_NEW["text"], "text")
    per_kind: dict[str, list[bool]] = defaultdict(list)
    flags, examples = [], []
    for r, p in zip(recs, preds):
        m = r["meta"]
        ans = str(m["answer"])
        if ans.isdigit():  # "4 times 2 is 8.": the result is the last number said
            nums = numbers_in(p)
            ok = bool(nums) and nums[-1] == int(ans)
        else:
            ok = answer_correct(p, ans, [ans], None, _answer_of(r))
        flags.append(ok)
        per_kind[m.get("kind", "?")].append(ok)
        if not ok and len(examples) < 8:
            examples.append({"id": r["id"], "expected": _answer_of(r), "got": p})
    return {"n": len(recs), "accuracy": _rate(flags),
            **{f"kind/{k}": {"accuracy": _rate(v), "n": len(v)} for k, v in sorted(per_kind.items())},
            "errors": examples}


def _voice_of(rec: dict[str, Any]) -> str:
    from emova.data.world_speech import voice_for

    sp = (rec.get("meta") or {}).get("speech") or []
    inputs = [s for s in sp if s["role"] == "input"]
    return voice_for(inputs[0]["key"], inputs[0]["style"], "heldout")[0].key if inputs else "?"


def _transcripts(gen: Generator, recs: list[dict[str, Any]], task: str, reader: Any | None) -> tuple[list[str], dict]:
    """The LLM's greedy transcripts, and — with a phone reader — the rescored ones the pipeline gives (returned
    first); the other is reported beside them."""
    greedy = gen.run(recs, MAX_NEW[task], task)
    if reader is None:
        return greedy, {"rescored": False}
    return gen.rescored(recs, MAX_NEW[task], reader, desc=f"{task} (rescored)"), {"rescored": True, "greedy": greedy}


def suite_asr(gen: Generator, world_dir: Path, max_items: int | None, reader: Any | None = None) -> dict[str, Any]:
    recs = _load(world_dir, "asr", max_items)
    preds, extra = _transcripts(gen, recs, "asr", reader)
    refs = [_answer_of(r) for r in recs]
    if extra["rescored"]:
        extra["wer_greedy"] = round(wer(refs, extra.pop("greedy")), 4)
    # per held-out voice, and per kind of sentence (image question, remark, reply: the world's `meta.source`)
    groups: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for r, ref, p in zip(recs, refs, preds):
        for g in (f"voice/{_voice_of(r)}", f"source/{(r.get('meta') or {}).get('source', '?')}"):
            groups[g][0].append(ref)
            groups[g][1].append(p)
    return {"n": len(recs), "wer": round(wer(refs, preds), 4), **extra,
            **{k: {"wer": round(wer(*v), 4), "n": len(v[0])} for k, v in sorted(groups.items())},
            "examples": [{"ref": a, "hyp": b} for a, b in list(zip(refs, preds))[:5]]}


def suite_fsdd(gen: Generator, world_dir: Path, max_items: int | None, reader: Any | None = None) -> dict[str, Any]:
    recs = _load(world_dir, "fsdd_asr", max_items)
    preds, extra = _transcripts(gen, recs, "fsdd", reader)
    flags = [digit_of(p) == digit_of(_answer_of(r)) for r, p in zip(recs, preds)]
    if extra["rescored"]:
        extra["accuracy_greedy"] = _rate([digit_of(p) == digit_of(_answer_of(r))
                                          for r, p in zip(recs, extra.pop("greedy"))])
    speakers: dict[str, list[bool]] = defaultdict(list)
    for r, ok in zip(recs, flags):
        speakers[str((r.get("meta") or {}).get("speaker", "?"))].append(ok)
    errors = [{"id": r["id"], "expected": _answer_of(r), "got": p} for r, p, ok in zip(recs, preds, flags) if not ok]
    return {"n": len(recs), "accuracy": _rate(flags), **extra,
            **{f"speaker/{k}": {"accuracy": _rate(v), "n": len(v)} for k, v in sorted(speakers.items())},
            "confusions": dict(Counter(f"{e['expected']} → {e['got'].strip().lower()[:24]}" for e in errors)
                               .most_common()),
            "errors": errors[:50]}


def suite_tts(gen: Generator, world_dir: Path, max_items: int | None, detokenizer: str | None) -> dict[str, Any]:
    from emova.eval.u2s import Judge

    if detokenizer is None:
        return {"skipped": "no speech detokenizer given"}
    from emova.speech.detokenizer import SpeechDetokenizer

    try:
        detok = SpeechDetokenizer.from_pretrained(detokenizer)
    except ValueError as e:
        return {"skipped": f"speech detokenizer unavailable: {e}"}
    recs = _load(world_dir, "tts", max_items)
    preds = gen.run(recs, MAX_NEW["tts"], "tts")
    judge = Judge()
    refs, hyps, n_units, empty = [], [], [], 0
    for r, p in zip(recs, preds):
        units = gen.processor.string_to_units(p)
        text = r["meta"]["speech"][0]["text"] if r["meta"].get("speech") else r["conversations"][0]["value"]
        refs.append(text)
        n_units.append(len(units))
        if not units:
            empty += 1
            hyps.append("")
            continue
        style = r["meta"]["speech"][0]["style"] if r["meta"].get("speech") else None
        hyps.append(judge.transcribe(detok.decode(units, style=style)))
    return {"n": len(recs), "wer": round(wer(refs, hyps), 4), "empty_outputs": empty,
            "mean_units": round(sum(n_units) / max(1, len(n_units)), 1),
            "examples": [{"ref": a, "hyp": b} for a, b in list(zip(refs, hyps))[:5]]}


def suite_dialogue(gen: Generator, world_dir: Path, max_items: int | None, reader: Any | None = None) -> dict[str, Any]:
    """The spoken-dialogue suite on the model's raw output; under `pipeline`, the same turns decoded as the
    pipeline does: the transcript chosen among the LLM's beams by the phone reader (`Emova.transcript_beams`; with a
    reader), no stop before the answer's JSON is complete (`Emova.hold_unfinished`) and the skeleton written for
    the model (`Emova.structured_answers`)."""
    recs = _load(world_dir, "dialogue_speech", max_items) + _load(world_dir, "vqa_speech", max_items)
    from emova.inference.json_repair import parse_answer

    preds = gen.run(recs, MAX_NEW["dialogue"], "dialogue")
    out = _dialogue_metrics(recs, preds)
    # every turn again: the forced skeleton is tokenised canonically, which may differ from the model's own
    # split of the same characters even where its raw output was in order
    prefixes = gen.transcript_prefixes(recs, reader, desc="dialogue, transcripts") if reader is not None else None
    piped = gen.run(recs, MAX_NEW["dialogue"], "dialogue, pipeline", hold=True, structured=True, prefixes=prefixes)
    pipe = _dialogue_metrics(recs, piped)
    out["pipeline"] = {k: v for k, v in pipe.items() if not isinstance(v, dict)}
    out["pipeline"]["rescored_transcripts"] = prefixes is not None
    out["pipeline"]["outputs_changed"] = _rate([a != b for a, b in zip(preds, piped)])
    out["pipeline"]["needed_repair"] = _rate([bool(parse_answer(p).repairs) for p in piped])
    return out


def _dialogue_metrics(recs: Sequence[dict[str, Any]], preds: Sequence[str]) -> dict[str, Any]:
    valid, ordered, reply_emo, user_emo, answers, with_units = [], [], [], [], [], []
    refs, hyps, examples = [], [], []
    per_source: dict[str, list[bool]] = defaultdict(list)
    for r, p in zip(recs, preds):
        want = json.loads(_answer_of(r))
        got = parse_dialogue(p)
        f = got["fields"]
        valid.append(got["valid_json"])
        ordered.append(got["valid_json"] and got["keys_in_order"])
        reply_emo.append(f.get("assistant response emotion") == want["assistant response emotion"])
        user_emo.append(f.get("user question emotion") == want["user question emotion"])
        with_units.append(bool(got["units"]))
        refs.append(want["user question text"])
        hyps.append(f.get("user question text") or "")
        source = "image" if r.get("image") else "speech_only"
        per_source[f"reply_emotion/{source}"].append(reply_emo[-1])
        m = r.get("meta") or {}
        if m.get("answer"):
            ok = answer_correct(f.get("assistant response text") or "", m["answer"], m.get("aliases", []),
                                m.get("qtype"), want["assistant response text"])
            answers.append(ok)
            per_source[f"answer/qtype/{m.get('qtype')}"].append(ok)
        if not ordered[-1] and len(examples) < 5:
            examples.append({"id": r["id"], "got": p[:400]})
    return {"n": len(recs), "valid_json": _rate(valid), "valid_json_keys_in_order": _rate(ordered),
            "reply_emotion_accuracy": _rate(reply_emo), "user_emotion_accuracy": _rate(user_emo),
            "answer_accuracy": _rate(answers), "n_with_answer": len(answers),
            "transcript_wer": round(wer(refs, hyps), 4), "reply_has_units": _rate(with_units),
            **{k: {"accuracy": _rate(v), "n": len(v)} for k, v in sorted(per_source.items())},
            "invalid_examples": examples}


# ----------------------------------------------------------------------------------------- top level
def _lookup(results: dict[str, Any], path: str) -> Any:
    cur: Any = results
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def acceptance(results: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for name, (path, op, thr) in THRESHOLDS.items():
        v = _lookup(results, path)
        ok = None if v is None or op == "report" else (v >= thr if op == ">=" else v <= thr)
        out[name] = {"value": v, "threshold": None if thr is None else f"{op} {thr}", "pass": ok}
    return out


def format_table(report: dict[str, Any]) -> str:
    lines = [f"{'acceptance':34s} {'value':>8s}  {'target':>8s}  result", "-" * 64]
    for name, a in report["acceptance"].items():
        v = "—" if a["value"] is None else f"{a['value']:.3f}"
        res = "report" if a["threshold"] is None else ("n/a" if a["pass"] is None else ("PASS" if a["pass"] else "FAIL"))
        lines.append(f"{name:34s} {v:>8s}  {a['threshold'] or '':>8s}  {res}")
    vqa = report["suites"].get("vqa", {})
    per = [f"{k.split('/')[1]} {v['accuracy']:.2f}" for k, v in vqa.items() if k.startswith("qtype/") and v["accuracy"] is not None]
    if per:
        lines.append("vqa per type: " + ", ".join(per))
    return "\n".join(lines)


def load_model(model: str | Path, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """A save_pretrained directory, or a bundled name (`emova-tiny` → its llm/)."""
    from emova.assets import resolve_model_dir
    from emova.model.modeling_emova import EmovaForConditionalGeneration
    from emova.model.processor import EmovaProcessor

    d = resolve_model_dir(model, "llm")
    m = EmovaForConditionalGeneration.from_pretrained(d, dtype=dtype).eval()
    m.config.use_cache = True
    return m, EmovaProcessor.from_pretrained(d)


def _run_suite(s: str, gen: Generator, world: Path, max_items: int | None, detokenizer: str | None,
               reader: Any | None = None) -> dict:
    if s == "vqa":
        return suite_vqa(gen, world, max_items)
    if s == "text":
        return suite_text(gen, world, max_items)
    if s == "asr":
        return suite_asr(gen, world, max_items, reader)
    if s == "fsdd":
        return suite_fsdd(gen, world, max_items, reader)
    if s == "tts":
        return suite_tts(gen, world, max_items, detokenizer)
    return suite_dialogue(gen, world, max_items, reader)


def _phone_reader(speech_tokenizer: str | None) -> Any | None:
    """Our speech tokenizer (its CTC phone reader) for rescoring, or None (none given, or no espeak-ng)."""
    from emova.inference.rescoring import phonemizer_available

    if speech_tokenizer is None:
        return None
    if not phonemizer_available():
        print("espeak-ng not found: ASR and FSDD are scored on greedy transcripts only")
        return None
    from emova.speech.tokenizer import SpeechTokenizer

    return SpeechTokenizer.from_pretrained(speech_tokenizer)


def evaluate_omni(model_dir: str | Path = "emova-tiny", world_dir: str | Path = "data_cache/world_units",
                  image_root: str | Path | None = "data_cache/world", detokenizer: str | None = "emova-tiny",
                  out: str | Path | None = "reports/eval_omni.json", suites: Sequence[str] | None = None,
                  max_items: int | None = None, batch_size: int = 16, threads: int | None = None,
                  speech_tokenizer: str | None = "emova-tiny") -> dict[str, Any]:
    """`emova eval omni [--model M] [--world-dir W] [--image-root I] [--detokenizer D] [--speech-tokenizer S]
    [--out F] [--suites …] [--max-items N] [--batch-size B]`: run the suites, write JSON, print the table.
    With a speech tokenizer that has a phone reader (and espeak-ng), the ASR and FSDD suites score the pipeline's
    rescored transcripts (`Emova.transcribe`) and report the LLM's greedy ones beside them; None: greedy only."""
    chosen = list(suites or SUITES)
    bad = [s for s in chosen if s not in SUITES]
    if bad:
        raise ValueError(f"unknown suite(s) {bad}; available: {', '.join(SUITES)}")
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be a positive integer (or None for all), got {max_items!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    world = Path(world_dir)
    if not (world / "heldout").is_dir():
        raise ValueError(f"no held-out world at {world} (expected {world / 'heldout'}); build it with "
                         "`emova train recipe tiny --steps world world_speech units`")
    if threads:
        torch.set_num_threads(threads)
    model, processor = load_model(model_dir)
    gen = Generator(model, processor, image_root if image_root is not None else world, batch_size)
    reader = _phone_reader(speech_tokenizer) if {"asr", "fsdd", "dialogue"} & set(chosen) else None
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for s in chosen:
        t0 = time.time()
        try:
            results[s] = _run_suite(s, gen, world, max_items, detokenizer, reader)
        except FileNotFoundError as e:  # that suite's held-out data was not built: say so, run the others
            results[s] = {"skipped": str(e)}
        timings[s] = round(time.time() - t0, 1)
    report = {"model": str(model_dir), "world_dir": str(world), "max_items": max_items, "suites": results,
              "seconds": timings}
    report["acceptance"] = acceptance(results)
    skipped = {s: r["skipped"] for s, r in results.items() if isinstance(r, dict) and "skipped" in r}
    if skipped and len(skipped) == len(chosen):
        raise ValueError("every suite was skipped: " + "; ".join(f"{s}: {why}" for s, why in skipped.items()))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1, ensure_ascii=False))
    print(format_table(report))
    for s, why in skipped.items():
        print(f"skipped {s}: {why}")
    return report


__all__ = ["SUITES", "Generator", "acceptance", "answer_correct", "evaluate_omni", "format_table", "parse_dialogue"]
