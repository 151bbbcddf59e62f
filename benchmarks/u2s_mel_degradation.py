"""Which mel errors cost intelligibility? Controlled degradations of real mels, judged by pocketsphinx.

    python benchmarks/u2s_mel_degradation.py [--model emova-tiny] [-n 20] [--out docs/results/u2s_mel_degradation.json]

On `n` held-out sentences of the held-out flite `awb` voice, every row vocodes a mel through the
detokenizer's vocoder (with the clip's own Praat F0) and reports pocketsphinx's WER:
  * the ground-truth mel, then the same mel smoothed over 3 / 5 frames in time, over 3 / 5 bins in
    frequency, with Gaussian noise of mean absolute size ~0.7 (the U2S's L1 on training items), and with
    its per-bin spread compressed to 0.8;
  * the U2S's teacher-forced mel (the clip's own durations, F0 and reference style) and hybrids: the real
    mel with one band of bins (0-20, 20-40, 40-60, 60-80, 0-40, 40-80) taken from the U2S, and the real
    spectral shape with the U2S's frame energy (and the reverse).
A row that hurts a lot names an error that matters; the U2S rows say where its output departs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from emova.audio import Audio
from emova.eval.u2s import Judge, add_probe_args, heldout_awb_rows, wer
from emova.eval.u2s_diagnose import teacher_forced_clip
from emova.speech.detokenizer import SpeechDetokenizer, frame_f0_hz
from emova.train.u2s_data import load_tokenizer


def smooth(m: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Moving average of a (F, n_mels) mel over k frames (dim 0) or k bins (dim 1), edges replicated."""
    x = m.T if dim == 0 else m  # rows are what is averaged along
    w = torch.ones(1, 1, k) / k
    y = F.conv1d(F.pad(x[:, None], (k // 2, k // 2), mode="replicate"), w)[:, 0]
    return y.T if dim == 0 else y


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(p)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="reports/u2s_mel_degradation.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = Path(a.corpus)
    try:
        rows = heldout_awb_rows(corpus, a.n)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    clips = [Audio.load(corpus / r["path"]) for r in rows]
    refs = [r["text"] for r in rows]
    detok = SpeechDetokenizer.from_pretrained(a.model)
    judge, tok = Judge(), load_tokenizer(a.tokenizer)
    raws = [np.asarray(u) for u in tok.encode_batch(clips)]
    triples = []
    for c, r in zip(clips, raws):
        t = teacher_forced_clip(detok, c, r)
        triples.append((t["real"], t["mel"], frame_f0_hz(t["lf0"], t["voiced"])))
    res: dict = {"model": a.model, "n_sentences": a.n, "wer": {},
                 "teacher_forced_l1": round(float(np.mean([(g - u).abs().mean().item() for g, u, _ in triples])), 3)}
    noise = torch.Generator().manual_seed(0)

    def row(name: str, fn) -> None:
        audios = [Audio(detok.vocode(fn(g, u), f0_hz=f), detok.sample_rate) for g, u, f in triples]
        res["wer"][name] = round(wer(refs, [judge.transcribe(x) for x in audios]), 3)
        print(f"{name:28s} WER {res['wer'][name]:.3f}", flush=True)

    row("real", lambda g, u: g)
    row("real_time_avg3", lambda g, u: smooth(g, 3, 0))
    row("real_time_avg5", lambda g, u: smooth(g, 5, 0))
    row("real_freq_avg3", lambda g, u: smooth(g, 3, 1))
    row("real_freq_avg5", lambda g, u: smooth(g, 5, 1))
    row("real_noise_l1_0.7", lambda g, u: g + 0.88 * torch.randn(g.shape, generator=noise))
    row("real_spread_0.8", lambda g, u: g.mean(0, keepdim=True) + 0.8 * (g - g.mean(0, keepdim=True)))
    row("u2s_teacher_forced", lambda g, u: u)
    for lo, hi in ((0, 20), (20, 40), (40, 60), (60, 80), (0, 40), (40, 80)):
        def band(g: torch.Tensor, u: torch.Tensor, lo: int = lo, hi: int = hi) -> torch.Tensor:
            m = g.clone()
            m[:, lo:hi] = u[:, lo:hi]
            return m
        row(f"real_with_u2s_bins_{lo}_{hi}", band)
    row("real_shape_u2s_energy", lambda g, u: g - g.mean(1, keepdim=True) + u.mean(1, keepdim=True))
    row("u2s_shape_real_energy", lambda g, u: u - u.mean(1, keepdim=True) + g.mean(1, keepdim=True))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
