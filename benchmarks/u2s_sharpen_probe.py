"""Does sharpening the U2S's mel in time bring back words? A probe of temporal post-filters, judged by pocketsphinx.

    python benchmarks/u2s_sharpen_probe.py [--model emova-tiny] [-n 20] [--first 100] [--out reports/u2s_sharpen_probe.json]

The U2S is an L1 regression, and its mel is smeared in time: a real mel averaged over 5 frames is heard as badly
as the U2S's (docs/u2s.md, "Which errors cost the words"). An unsharp mask along time,
    mel' = mel + alpha * (mel - moving_average_k(mel)),
undoes part of a blur. On `n` held-out sentences of the held-out flite `awb` voice (from index `first`: 100 keeps
clear of `emova eval u2s`'s first 50), each row decodes the clip's S2U units in the default female / male styles,
applies the filter to the U2S mel and vocodes it with the U2S's own F0; also the real mel blurred over 5 frames,
then sharpened, as a control of how much of a blur the filter can undo.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from u2s_mel_degradation import smooth  # a sibling script: run this one as `python benchmarks/…`

from emova.audio import Audio
from emova.eval.u2s import Judge, add_probe_args, heldout_awb_rows, wer
from emova.eval.u2s_diagnose import teacher_forced_clip
from emova.speech.detokenizer import SpeechDetokenizer, frame_f0_hz
from emova.styles import Style
from emova.train.u2s_data import load_tokenizer


def moving_average(m: torch.Tensor, k: int) -> torch.Tensor:
    """(F, n_mels) → the same, averaged over k frames in time, edges replicated (the degradation probe's blur)."""
    return smooth(m, k, 0)


def sharpen(m: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    return m + alpha * (m - moving_average(m, k))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(p)
    p.add_argument("--first", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--filters", nargs="*", default=["3:0.5", "3:1.0", "5:0.5", "5:1.0", "5:1.5", "7:1.0"],
                   help="k:alpha pairs")
    p.add_argument("--out", default="reports/u2s_sharpen_probe.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = Path(a.corpus)
    try:
        rows = heldout_awb_rows(corpus, a.n, a.first)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    clips = [Audio.load(corpus / r["path"]) for r in rows]
    refs = [r["text"] for r in rows]
    detok = SpeechDetokenizer.from_pretrained(a.model)
    judge, tok = Judge(), load_tokenizer(a.tokenizer)
    raws = tok.encode_batch(clips)  # once: the U2S rows read them reduced, the control teacher-forced
    units = [tok.reduce(u) for u in raws]
    filters = [(int(f.split(":")[0]), float(f.split(":")[1])) for f in a.filters]
    res: dict = {"model": a.model, "sentences": f"awb heldout_per {a.first}..{a.first + a.n - 1}", "wer": {}}

    def judge_rows(name: str, items: list[tuple[torch.Tensor, torch.Tensor, float]]) -> None:
        hyps = [judge.transcribe(Audio(detok.vocode(m, gain, f0_hz=f0), detok.sample_rate)) for m, f0, gain in items]
        res["wer"][name] = round(wer(refs, hyps), 3)
        print(f"{name:32s} WER {res['wer'][name]:.3f}", flush=True)

    for g in ("female", "male"):
        style = Style(gender=g)
        vec, off = detok.style_vector(style), detok._offsets(style, None)
        outs = [detok._mel(u, vec, 1.0, off) for u in units]
        base = [(o["mel"], frame_f0_hz(o["lf0"], o["voiced"]), off.gain_db) for o in outs]
        judge_rows(f"{g}_u2s", base)
        for k, al in filters:
            judge_rows(f"{g}_sharpen_k{k}_a{al}", [(sharpen(m, k, al), f0, gn) for m, f0, gn in base])
    # control: how much of a 5-frame blur of the real mel does the filter undo?
    real = []
    for c, u in zip(clips, raws):
        t = teacher_forced_clip(detok, c, np.asarray(u))
        real.append((t["real"], frame_f0_hz(t["lf0"], t["voiced"]), 0.0))
    judge_rows("real", real)
    judge_rows("real_blur5", [(moving_average(m, 5), f0, 0.0) for m, f0, _ in real])
    for k, al in filters:
        judge_rows(f"real_blur5_sharpen_k{k}_a{al}", [(sharpen(moving_average(m, 5), k, al), f0, 0.0)
                                                      for m, f0, _ in real])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
