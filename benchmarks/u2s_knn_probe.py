"""Does frame selection bring back the words? Each U2S mel frame replaced by its nearest real frames.

    python benchmarks/u2s_knn_probe.py [--model emova-tiny] [-n 20] [--bank 1500] [--out docs/results/u2s_knn_probe.json]

kNN-VC-style post-processing: a bank of real log-mel frames of the speaking voices (training-split
renderings of flite `slt` for the female voice, `rms` + `kal16` for the male one, every style; digital
silence dropped) and, for every frame the U2S draws, the mean of its k nearest bank frames (squared L2 on
the log-mel; optionally with the frame's normalised log-F0 and voicing as extra coordinates, `w_f0`, or
with the neighbouring frames stacked, `ctx`). The result goes through the detokenizer's own vocoder with
the U2S's F0 and pocketsphinx judges it. If the U2S's smear hid the right sound behind an average, a real
frame near it would restore it; if the smear already lost it, the nearest real frame is the wrong one.

Sentences: held-out `awb` sentences 100..100+n of `heldout_per` (the `emova eval u2s` suite uses 0..49),
neutral style, each gender.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import numpy as np
import torch

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.eval.u2s import Judge, add_probe_args, wer
from emova.speech.detokenizer import SpeechDetokenizer, frame_f0_hz
from emova.speech.vocoder import mel_frames
from emova.styles import Style
from emova.train.u2s_data import f0_track, load_tokenizer

BANK_VOICES = {"female": ("flite:slt",), "male": ("flite:rms", "flite:kal16")}
VARIANTS = ({"k": 1}, {"k": 4}, {"k": 8}, {"k": 4, "w_f0": 3.0}, {"k": 4, "ctx": 1})


def frame_bank(rows: list[dict], corpus: Path, detok: SpeechDetokenizer, voices: tuple[str, ...], n: int,
               seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(frames, n_mels) log-mel, normalised log-F0 and voicing of `n` random training renderings of `voices`."""
    vc = detok.vocoder_config
    cand = [r for r in rows if r["split"] == "train" and r["voice"] in voices]
    random.Random(seed).shuffle(cand)
    mels, lf0s, voiced = [], [], []
    for r in cand[:n]:
        a = Audio.load(corpus / r["path"])
        m = mel_frames(torch.from_numpy(a.samples), vc)
        lf, v = f0_track(a.samples, a.sample_rate, vc.hop, m.shape[0])
        keep = m.max(1).values > np.log(1e-4)
        mels.append(m[keep])
        lf0s.append(torch.from_numpy(lf)[keep])
        voiced.append(torch.from_numpy(v)[keep].float())
    return torch.cat(mels), torch.cat(lf0s), torch.cat(voiced)


def features(mel: torch.Tensor, lf0: torch.Tensor, voiced: torch.Tensor, w_f0: float = 0.0, ctx: int = 0) -> torch.Tensor:
    """What frames are matched on: the log-mel (+ ctx neighbours each side) (+ w_f0-weighted F0 and voicing)."""
    parts = [mel] + [torch.roll(mel, s, 0) for s in range(-ctx, ctx + 1) if s]
    if w_f0:
        parts += [w_f0 * (lf0 * voiced)[:, None], w_f0 * voiced[:, None]]
    return torch.cat(parts, 1)


def nearest_mean(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the `values` rows whose `keys` are the k nearest (squared L2) to each query row."""
    d = (query * query).sum(1, keepdim=True) - 2 * query @ keys.T + (keys * keys).sum(1)[None]
    return values[d.topk(k, largest=False).indices].mean(1)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(p)
    p.add_argument("--bank", type=int, default=1500, help="training renderings per gender in the bank")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/u2s_knn_probe.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = Path(a.corpus)
    rows = read_manifest(corpus)
    dev = [r for r in rows if r["split"] == "heldout_per" and r["voice"] == "flite:awb"][100:100 + a.n]
    if len(dev) < a.n:
        raise SystemExit(f"{corpus} has too few held-out awb sentences for rows 100..{100 + a.n}")
    detok = SpeechDetokenizer.from_pretrained(a.model)
    tok, judge = load_tokenizer(a.tokenizer), Judge()
    banks = {g: frame_bank(rows, corpus, detok, vs, a.bank) for g, vs in BANK_VOICES.items()}
    originals = [Audio.load(corpus / r["path"]) for r in dev]
    units = [tok.reduce(u) for u in tok.encode_batch(originals)]
    refs = [r["text"] for r in dev]
    res: dict = {"n": a.n, "bank_frames": {g: int(b[0].shape[0]) for g, b in banks.items()},
                 "flite_originals_wer": wer(refs, [judge.transcribe(x) for x in originals]), "rows": {}}
    decoded = {}
    for g in banks:  # the U2S's own output, decoded once per gender
        s = Style(gender=g)
        vec, off = detok.style_vector(s), detok._offsets(s, None)
        decoded[g] = [(detok._mel(u, vec, 1.0, off), off.gain_db) for u in units]
    for v in ({},) + VARIANTS:
        name = "u2s" if not v else "knn " + " ".join(f"{k}={x}" for k, x in v.items())
        opts = {k: x for k, x in v.items() if k != "k"}
        row = {}
        for g, (bm, blf, bv) in banks.items():
            keys = features(bm, blf, bv, **opts) if v else None
            hyps = []
            for out, gain in decoded[g]:
                mel = out["mel"] if not v else nearest_mean(features(out["mel"], out["lf0"], out["voiced"], **opts),
                                                            keys, bm, v["k"])
                wav = detok.vocode(mel, gain, frame_f0_hz(out["lf0"], out["voiced"]))
                hyps.append(judge.transcribe(Audio(wav, detok.sample_rate)))
            row[g] = round(wer(refs, hyps), 4)
        res["rows"][name] = row
        print(f"{name:24s} female {row['female']:.3f}  male {row['male']:.3f}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
