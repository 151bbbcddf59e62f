"""Can the U2S architecture speak intelligibly when it fits its data? A capacity probe.

    python benchmarks/u2s_overfit_probe.py [--model emova-tiny] [--voice flite:slt] [--items 100] [--minutes 12]

Takes `items` neutral *training* renderings of one voice from the U2S cache, scores the detokenizer on 20 of
them (default style of the voice's gender, predicted durations and F0 — what `decode` does) with
pocketsphinx next to the recordings themselves, continues its U2S + style encoder on those items only for
`minutes` (the u2s stage's losses, lr 3e-4, batch 16, bf16), and scores again. Nothing is saved: the
bundled weights stay as they are. If fitting the items closely makes them intelligible, the architecture
is not the limit on them and the full-data fit (compute) is.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.eval.u2s import Judge, wer
from emova.speech.detokenizer import SpeechDetokenizer
from emova.styles import Style
from emova.train.accel import autocast_bf16
from emova.train.u2s import U2SBundle, U2STrainConfig, u2s_losses
from emova.train.u2s_data import U2SData


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emova-tiny")
    p.add_argument("--cache", default="data_cache/u2s_flite", help="a U2S cache (the prepare stage's shards)")
    p.add_argument("--corpus", default="data_cache/speech")
    p.add_argument("--voice", default="flite:slt")
    p.add_argument("--items", type=int, default=100)
    p.add_argument("--minutes", type=float, default=12.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="reports/u2s_overfit_probe.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    detok = SpeechDetokenizer.from_pretrained(a.model)
    data = U2SData(a.cache, [a.voice])
    ids = [i for i in range(len(data)) if data.exact[i]]
    random.Random(0).shuffle(ids)
    ids = ids[: a.items]
    rows = {r["id"]: r for r in read_manifest(Path(a.corpus), ("train",))}
    scored = ids[:20]
    refs = [rows[data.meta[i]["id"]]["text"] for i in scored]
    gender = Style.parse(data.meta[scored[0]]["style"]).gender
    judge = Judge()
    res: dict = {"model": a.model, "voice": a.voice, "items": len(ids), "scored": len(scored), "minutes": a.minutes}

    def score() -> float:
        hyps = [judge.transcribe(detok.decode(data.units[i].astype(np.int64).tolist(), Style(gender=gender)))
                for i in scored]
        return round(wer(refs, hyps), 3)

    res["wer_recordings"] = round(wer(refs, [judge.transcribe(Audio.load(Path(a.corpus) / rows[data.meta[i]["id"]]["path"]))
                                             for i in scored]), 3)
    res["wer_before"] = score()
    print(f"recordings WER {res['wer_recordings']:.3f}   U2S before {res['wer_before']:.3f}", flush=True)
    bundle = U2SBundle(detok.u2s.cfg, detok.style_encoder.cfg)
    bundle.u2s, bundle.style_encoder = detok.u2s, detok.style_encoder
    bundle.train()
    cfg = U2STrainConfig(cache_dir=a.cache, model=detok.u2s.cfg.to_dict())
    opt = torch.optim.AdamW(bundle.parameters(), lr=3e-4, weight_decay=0.01)
    bf16 = autocast_bf16(True) and not torch.cuda.is_available()
    t0, step, mel = time.time(), 0, []
    while time.time() - t0 < 60 * a.minutes:
        rng = random.Random(step)
        batch = data.collate(rng.sample(ids, min(16, len(ids))), rng, 0.0)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            losses = u2s_losses(bundle, batch, cfg)
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        torch.nn.utils.clip_grad_norm_(bundle.parameters(), 1.0)
        opt.step()
        step += 1
        mel.append(losses["mel"].item())
        if step % 100 == 0:
            print(f"step {step}: mel L1 {np.mean(mel[-50:]):.3f}", flush=True)
    bundle.eval()
    res.update(steps=step, mel_l1_first_50=round(float(np.mean(mel[:50])), 3),
               mel_l1_last_50=round(float(np.mean(mel[-50:])), 3), wer_after=score())
    print(f"after {step} steps: mel L1 {res['mel_l1_first_50']} -> {res['mel_l1_last_50']}, WER {res['wer_after']:.3f}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
