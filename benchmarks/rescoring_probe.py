"""How much the speech tokenizer's phone reader gains by choosing among the LLM's candidates, on the held-out world.

    python benchmarks/rescoring_probe.py --task asr  [-n 200] [--beams 8] [--out reports/rescoring_probe_asr.json]
    python benchmarks/rescoring_probe.py --task fsdd [-n 300] [--beams 8]
    python benchmarks/rescoring_probe.py --task tts  [-n 30] [--samples 8] [--temperature 0.8]

asr / fsdd: the LLM's `--beams` best transcripts (beam search) of each held-out record, each scored by its
teacher-forced log-likelihood and by the reader's CTC log-likelihood of its phones given the record's units; the WER
(digit accuracy for fsdd) of the greedy transcript, of the beam's first, of `llm + w · reader` for a sweep of w, and
of the best candidate in hindsight (the oracle). The pipeline's weight (1.0) was fixed before this was run; the sweep
shows how much the choice matters.

tts: the greedy unit sequence and `--samples` sampled ones for each held-out TTS text, each spoken by the bundled
U2S in the record's style and heard by pocketsphinx; the WER of the greedy one, of a random sample, of the one the
reader finds most likely to spell the text (from the units), of the one whose U2S speech the S2U + reader find most
likely (closed loop), and of the oracle. (Measured 2026-12-07: no gain worth the compute; not in the pipeline.)
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from emova.eval.omni import MAX_NEW, Generator, _answer_of, _load, digit_of, load_model, wer
from emova.inference.rescoring import Rescored, choose, phone_log_likelihood, rescored_answer
from emova.speech.tokenizer import SpeechTokenizer

WEIGHTS = (0.0, 0.1, 0.3, 0.5, 1.0, 2.0, 5.0, 100.0)


def _score(task: str, refs: list[str], hyps: list[str]) -> float:
    if task == "fsdd":
        return round(sum(digit_of(h) == digit_of(r) for r, h in zip(refs, hyps)) / len(refs), 4)
    return round(wer(refs, hyps), 4)


def probe_transcripts(task: str, n: int, beams: int, world: Path) -> dict:
    model, proc = load_model("emova-tiny")
    reader = SpeechTokenizer.from_pretrained("emova-tiny")
    gen = Generator(model, proc, None, batch_size=16)
    recs = _load(world, "fsdd_asr" if task == "fsdd" else "asr", n)
    greedy = gen.run(recs, MAX_NEW[task], task)
    rows = []
    for i, (r, (inputs, lp)) in enumerate(zip(recs, gen.reader_inputs(recs, reader))):
        got = rescored_answer(model, inputs, lp, beams, 1.0, MAX_NEW[task], gen.stop, proc.tokenizer.pad_token_id,
                              proc.im_end_id, gen._clean, proc.tokenizer,
                              rounds=0)  # the beams alone, every one with both scores
        if got is None:  # no beam came out: an empty transcript
            got = Rescored("", [""], [0.0], [float("-inf")], 0)
        rows.append({"ref": _answer_of(r), "greedy": greedy[i].strip(), "texts": got.candidates, "llm": got.llm,
                     "reader": got.reader})
        if i % 20 == 0:
            print(f"{i}/{len(recs)}", flush=True)
    refs = [x["ref"] for x in rows]
    metric = "accuracy" if task == "fsdd" else "wer"
    res = {"task": task, "n": len(rows), "beams": beams, "metric": metric,
           "greedy": _score(task, refs, [x["greedy"] for x in rows]),
           "beam_first": _score(task, refs, [x["texts"][0] for x in rows]),
           "weights": {str(w): _score(task, refs, [x["texts"][choose(x["llm"], x["reader"], w)] for x in rows])
                       for w in WEIGHTS}}
    if task == "fsdd":
        res["oracle"] = round(sum(any(digit_of(t) == digit_of(x["ref"]) for t in x["texts"]) for x in rows) / len(rows), 4)
    else:
        errs = sum(min(wer([x["ref"]], [t]) * len(x["ref"].split()) for t in x["texts"]) for x in rows)
        res["oracle"] = round(errs / sum(len(x["ref"].split()) for x in rows), 4)
    return res


def probe_tts(n: int, samples: int, temperature: float, world: Path) -> dict:
    from emova.eval.u2s import Judge
    from emova.speech.detokenizer import SpeechDetokenizer

    model, proc = load_model("emova-tiny")
    reader = SpeechTokenizer.from_pretrained("emova-tiny")
    detok = SpeechDetokenizer.from_pretrained("emova-tiny")
    judge = Judge()
    gen = Generator(model, proc, None, batch_size=16)
    recs = _load(world, "tts", n)
    greedy = [proc.string_to_units(p) for p in gen.run(recs, MAX_NEW["tts"], "tts")]
    torch.manual_seed(0)
    rows = []
    for i, r in enumerate(recs):
        text, style = r["meta"]["speech"][0]["text"], r["meta"]["speech"][0]["style"]
        inputs = {k: v for k, v in gen.prompt(r).items() if k != "labels"}
        out = model.generate(**inputs, max_new_tokens=MAX_NEW["tts"], do_sample=True, temperature=temperature,
                             top_k=0, top_p=1.0, num_return_sequences=samples, eos_token_id=gen.stop,
                             pad_token_id=proc.tokenizer.pad_token_id, use_cache=True)
        cands = [greedy[i]]
        for row in out[:, inputs["input_ids"].shape[1]:].tolist():
            row = row[: next((k for k, t in enumerate(row) if t in gen.stop), len(row))]
            cands.append(proc.string_to_units(proc.decode(row, skip_special_tokens=False)))
        hyps, from_units, closed = [], [], []
        for units in cands:
            if not units:
                hyps.append("")
                from_units.append(-math.inf)
                closed.append(-math.inf)
                continue
            audio = detok.decode(units, style=style)
            hyps.append(judge.transcribe(audio))
            from_units.append(phone_log_likelihood(reader.phone_log_probs(units), text))
            closed.append(phone_log_likelihood(reader.phone_log_probs(reader.encode(audio)), text))
        rows.append({"ref": text, "hyps": hyps, "from_units": from_units, "closed_loop": closed})
        if i % 5 == 0:
            print(f"{i}/{len(recs)}", flush=True)
    refs = [x["ref"] for x in rows]

    def best(key: str) -> list[str]:
        return [x["hyps"][max(range(len(x["hyps"])), key=lambda j: x[key][j])] for x in rows]

    errs = sum(min(wer([x["ref"]], [h]) * len(x["ref"].split()) for h in x["hyps"]) for x in rows)
    return {"task": "tts", "n": len(rows), "samples": samples, "temperature": temperature,
            "greedy": round(wer(refs, [x["hyps"][0] for x in rows]), 4),
            "first_sample": round(wer(refs, [x["hyps"][1] for x in rows]), 4),
            "reader_on_units": round(wer(refs, best("from_units")), 4),
            "reader_closed_loop": round(wer(refs, best("closed_loop")), 4),
            "oracle": round(errs / sum(len(x["ref"].split()) for x in rows), 4)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=["asr", "fsdd", "tts"], required=True)
    p.add_argument("-n", type=int, default=None, help="records (default: asr 200, fsdd 300, tts 30)")
    p.add_argument("--beams", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--world", default="data_cache/world_units")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    world = Path(a.world)
    if a.task == "tts":
        res = probe_tts(a.n or 30, a.samples, a.temperature, world)
    else:
        res = probe_transcripts(a.task, a.n or (300 if a.task == "fsdd" else 200), a.beams, world)
    print(json.dumps(res, indent=1))
    out = Path(a.out or f"reports/rescoring_probe_{a.task}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
