"""How well phone readers read the units of held-out voices, and what that does to the choice of a transcript.

    python benchmarks/reader_probe.py [--readers s2u runs/reader/step-6000 …] [-n 200]
                                      [--world data_cache/world_val_4242_units] [--speech data_cache/world_val_4242_speech]
                                      [--pools POOLS.json] [--out reports/reader_probe.json]

For each held-out ASR clip of a world (by default the *validation* world, seed 4242: held-out voices, other
sentences than the held-out world's), each reader reads the record's reduced units (what `emova eval omni` gives
the rescorer) and the raw units of the clip (what `Emova.transcribe` gives it); greedy CTC phone error rate against
`text_to_phones` of the sentence, per voice.

`--pools` (a JSON of {"refs": [...], "pools": [[[llm, reader, text, round], ...], ...]} for the same records, in
order: the candidates one `Generator.rescored` run wrote) re-chooses every pool with each reader's scores, over a
grid of reader weight × per-word bonus: how the WER would move with that reader, the candidates held fixed.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch

from emova.audio import Audio
from emova.data.speech.phones import ctc_collapse, ids_to_phones, text_to_phones
from emova.eval.metrics import edit_distance
from emova.eval.omni import _voice_of, wer, words
from emova.inference.rescoring import phone_log_likelihood
from emova.model.processor import EmovaProcessor
from emova.speech.tokenizer import SpeechTokenizer


def load_reader(spec: str, tok: SpeechTokenizer):
    """'s2u': the tokenizer's own CTC side; a directory: a `UnitReader` (exported, or a training checkpoint)."""
    if spec == "s2u":
        return tok.speech_ctc_log_probs
    from emova.speech.reader import UnitReader

    p = Path(spec)
    if (p / "state.json").is_file():  # a training checkpoint: its run's config
        from emova.train.reader import reader_from_checkpoint

        model = reader_from_checkpoint(p)
    else:
        model = UnitReader.load(p)
    return model.log_probs


@torch.inference_mode()
def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readers", nargs="+", default=["s2u"])
    ap.add_argument("--world", default="data_cache/world_val_4242_units")
    ap.add_argument("--speech", default="data_cache/world_val_4242_speech")
    ap.add_argument("--tokenizer", default="emova-tiny")
    ap.add_argument("-n", type=int, default=200)
    ap.add_argument("--pools", default=None)
    ap.add_argument("--out", default="reports/reader_probe.json")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    tok = SpeechTokenizer.from_pretrained(a.tokenizer)
    recs = json.loads((Path(a.world) / "heldout" / "asr.json").read_text())[: a.n]
    reduced, raw, refs, voices = [], [], [], []
    for r in recs:
        sp = r["meta"]["speech"][0]
        reduced.append(EmovaProcessor.string_to_units(r["conversations"][0]["value"]))
        wav = Path(a.speech) / "heldout" / "wav" / f"{sp['key'].replace('/', '__')}.wav"
        raw.append(tok.encode(Audio.load(wav)))
        refs.append(sp["text"])
        voices.append(_voice_of(r))
    res: dict = {"world": a.world, "n": len(recs), "readers": {}}
    pools = json.loads(Path(a.pools).read_text()) if a.pools else None
    if pools is not None and pools["refs"] != refs:
        raise SystemExit(f"{a.pools} is not for these records (its refs differ)")
    for spec in a.readers:
        read = load_reader(spec, tok)
        row: dict = {}
        for form, seqs in (("reduced", reduced), ("raw", raw)):
            err, tot = defaultdict(int), defaultdict(int)
            for units, ref, v in zip(seqs, refs, voices):
                target = list(text_to_phones(ref))
                hyp = ids_to_phones(ctc_collapse(read(units).argmax(-1).tolist()))
                for key in (v, "all"):
                    err[key] += edit_distance(hyp, target)
                    tot[key] += len(target)
            row[f"per_{form}"] = {k: round(err[k] / tot[k], 4) for k in sorted(err)}
        if pools is not None:
            grid = {}
            scored = []
            for units, pool in zip(reduced, pools["pools"]):
                lp = read(units)
                scored.append([(llm, phone_log_likelihood(lp, t), t) for llm, _, t, _ in pool])
            for w in (0.25, 0.5, 0.75, 1.0, 1.5):
                for bonus in (0, 2, 4, 6, 8):
                    picks = [max(s, key=lambda c: c[0] + w * c[1] + bonus * len(words(c[2])) if math.isfinite(c[1])
                                 else -math.inf)[2] for s in scored]
                    grid[f"w{w}_bonus{bonus}"] = round(wer(refs, picks), 4)
            oracle = [min((c[2] for c in s), key=lambda t, ref=ref: wer([ref], [t])) for s, ref in zip(scored, refs)]
            row["pool_wer"] = grid
            row["pool_oracle_wer"] = round(wer(refs, oracle), 4)
            row["pool_best"] = min(grid.items(), key=lambda kv: kv[1])
        res["readers"][spec] = row
        print(spec, json.dumps(row)[:600], flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
