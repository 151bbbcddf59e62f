"""How much the spoken-dialogue answers depend on the transcript the turn begins with, on the held-out world.

    python benchmarks/answer_probe.py [-n 200] [--modes gold rescored none] [--beams 8] [--weight 1.0]

Every held-out spoken question about an image (`vqa_speech`, the records whose world defines an answer) is decoded
as the pipeline decodes it (answer held open until its JSON is complete, skeleton written for the model), its
"user question text" written before the model goes on:

- gold: the sentence that was actually said (an upper bound: what a perfect recogniser would give);
- rescored: the best of the LLM's `--beams` transcripts by the phone reader (`Generator.transcript_prefixes`, as
  `Emova.chat`);
- none: the model's own greedy transcript.

Reports per mode the transcript WER, answer accuracy (overall and per question type) and reply-emotion accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from emova.eval.omni import MAX_NEW, Generator, _answer_of, _dialogue_metrics, _load, load_model
from emova.inference.rescoring import READER_WEIGHT, TRANSCRIPT_BEAMS
from emova.model.prompts import ANSWER_KEYS
from emova.speech.tokenizer import SpeechTokenizer


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=200)
    p.add_argument("--modes", nargs="+", default=["gold", "rescored", "none"], choices=["gold", "rescored", "none"])
    p.add_argument("--beams", type=int, default=TRANSCRIPT_BEAMS)
    p.add_argument("--weight", type=float, default=READER_WEIGHT)
    p.add_argument("--world", default="data_cache/world_units")
    p.add_argument("--images", default="data_cache/world", help="the folder the records' image paths start from")
    p.add_argument("--speech-tokenizer", default="emova-tiny", help="the tokenizer whose phone reader rescores")
    p.add_argument("--out", default="reports/answer_probe.json")
    a = p.parse_args(argv)
    model, proc = load_model("emova-tiny")
    reader = SpeechTokenizer.from_pretrained(a.speech_tokenizer)
    gen = Generator(model, proc, a.images, batch_size=16)
    recs = [r for r in _load(Path(a.world), "vqa_speech", None) if (r.get("meta") or {}).get("answer")][: a.n]
    tok = proc.tokenizer
    res: dict = {"n": len(recs), "beams": a.beams, "weight": a.weight, "modes": {}}
    for mode in a.modes:
        t0 = time.perf_counter()
        prefixes = None
        if mode == "gold":
            prefixes = [tok.encode("{" + f'"{ANSWER_KEYS[0]}": "' + json.loads(_answer_of(r))[ANSWER_KEYS[0]]
                                   + f'", "{ANSWER_KEYS[1]}": "', add_special_tokens=False) for r in recs]
        elif mode == "rescored":
            prefixes = gen.transcript_prefixes(recs, reader, a.beams, a.weight)
        prefix_s = time.perf_counter() - t0
        outs = gen.run(recs, MAX_NEW["dialogue"], f"answers, {mode}", hold=True, structured=True, prefixes=prefixes)
        m = _dialogue_metrics(recs, outs)
        res["modes"][mode] = {"transcript_wer": m["transcript_wer"], "answer_accuracy": m["answer_accuracy"],
                              "reply_emotion_accuracy": m["reply_emotion_accuracy"],
                              "valid_json_keys_in_order": m["valid_json_keys_in_order"],
                              "per_qtype": {k.split("/")[-1]: v for k, v in m.items() if k.startswith("answer/qtype/")},
                              "transcript_seconds_per_item": round(prefix_s / len(recs), 3)}
        print(mode, json.dumps(res["modes"][mode]), flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
