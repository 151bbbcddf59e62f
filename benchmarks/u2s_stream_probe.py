"""How faithful is streamed speech to the whole-utterance decode, per stream config?

    python benchmarks/u2s_stream_probe.py [-n 30] [--configs 10/4,6/3,6/2,4/1] [--out reports/u2s_stream_probe.json]

Held-out `awb` sentences 100..100+n of `heldout_per` (the `emova eval u2s` suite uses 0..49) → bundled S2U
units → the detokenizer's `decode` and its `decode_stream` under each first-chunk/lookahead setting (the
other stream settings as bundled), neutral style, each gender. Per setting: pocketsphinx WER of the joined
stream, log-mel L1 to the decode frame by frame (timing drift included) and along the DTW alignment (timing
set aside), and the frame-by-frame L1 of the first 0.25 s alone.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.eval.u2s import Judge, add_probe_args, log_mel_distance, log_mel_dtw_distance, wer
from emova.speech.detokenizer import SpeechDetokenizer
from emova.styles import Style
from emova.train.u2s_data import load_tokenizer


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(p, n=30)
    p.add_argument("--configs", default="10/4,6/3,6/2,4/1", help="first_chunk_units/lookahead_units, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/u2s_stream_probe.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = Path(a.corpus)
    tok, detok = load_tokenizer(a.tokenizer), SpeechDetokenizer.from_pretrained(a.model)
    bundled = detok.stream_config
    configs = {}
    for spec in a.configs.split(","):
        first, look = (int(x) for x in spec.split("/"))
        configs[spec] = replace(bundled, first_chunk_units=first, lookahead_units=look)  # validates
    rows = [r for r in read_manifest(corpus, ("heldout_per",)) if r["voice"] == "flite:awb"][100 : 100 + a.n]
    if len(rows) < a.n:
        raise SystemExit(f"only {len(rows)} held-out awb sentences from 100 on in {corpus}")
    refs = [r["text"] for r in rows]
    units = [tok.reduce(list(u)) for u in tok.encode_batch([Audio.load(corpus / r["path"]) for r in rows])]
    judge = Judge()
    head = int(0.25 * detok.sample_rate)
    res: dict = {"sentences": a.n, "bundled": f"{bundled.first_chunk_units}/{bundled.lookahead_units}"}
    for gender in ("female", "male"):
        style = Style(gender=gender)
        full = [detok.decode(u, style) for u in units]
        res[f"{gender}/decode"] = {"wer": wer(refs, [judge.transcribe(x) for x in full])}
        for name, sc in configs.items():
            detok.stream_config = sc
            joined = [Audio(np.concatenate([c.samples for c in detok.decode_stream(iter(u), style)]), detok.sample_rate)
                      for u in units]
            res[f"{gender}/{name}"] = {
                "wer": wer(refs, [judge.transcribe(x) for x in joined]),
                "log_mel_l1": float(np.mean([log_mel_distance(x, f) for x, f in zip(joined, full)])),
                "log_mel_dtw_l1": float(np.mean([log_mel_dtw_distance(x, f) for x, f in zip(joined, full)])),
                "first_250ms_log_mel_l1": float(np.mean([
                    log_mel_distance(Audio(x.samples[:head], x.sample_rate), Audio(f.samples[:head], f.sample_rate))
                    for x, f in zip(joined, full)]))}
            print(gender, name, json.dumps(res[f"{gender}/{name}"]), flush=True)
        detok.stream_config = bundled
    print(json.dumps(res, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
