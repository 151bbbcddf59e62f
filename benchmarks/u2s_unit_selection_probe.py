"""Do the speech units carry the words? Each unit rendered by a real recorded segment of that unit.

    python benchmarks/u2s_unit_selection_probe.py [-n 20] [--inventory 800] [--out reports/u2s_unit_selection_probe.json]

Unit-selection synthesis (concatenative TTS) over S2U units: an inventory of real mel segments, one per
reduced unit of `--inventory` neutral training renderings of flite `slt` (female) / `rms` (male), each segment
the frames the U2S's forced aligner gives that unit in its own recording, keyed by its code and its left and
right neighbours. For a held-out sentence's units, each unit takes one of the `--candidates` segments of the
same code with the best-matching neighbours (codes never seen in the inventory borrow from codes one FSQ
level away), and a Viterbi search picks the chain with the smoothest joins (a join between segments that
were consecutive in one recording costs nothing). The segments are stretched to the bundled U2S's predicted
durations, and vocoded with the bundled vocoder and the U2S's F0, so only the spectral content differs from
the U2S's own output. Pocketsphinx judges both.

If the units carried the sounds and the U2S's smear hid them, real segments of the right units would bring
the words back; if recordings of the same unit sound different, the unit alone does not say the sound.
Sentences: held-out `awb` sentences 100..100+n of `heldout_per` (the `emova eval u2s` suite uses 0..49).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import numpy as np
import torch

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.eval.u2s import Judge, add_probe_args, wer
from emova.speech.detokenizer import SpeechDetokenizer, frame_f0_hz
from emova.speech.vocoder import mel_frames
from emova.styles import Style
from emova.train.u2s_data import align_durations, load_tokenizer, reduce_with_index

INVENTORY_VOICES = {"female": "flite:slt", "male": "flite:rms"}


def build_inventory(rows: list[dict], corpus: Path, tok, detok: SpeechDetokenizer, voice: str, n: int,
                    cache: Path | None) -> dict[str, np.ndarray]:
    """Mel frames of `n` neutral training renderings of `voice`, cut into one segment per reduced unit."""
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            return {k: z[k] for k in z.files}
    vc = detok.vocoder_config
    cand = [r for r in rows if r["voice"] == voice and r["style"] == str(Style(gender=r["gender"]))]
    random.Random(0).shuffle(cand)
    cand = cand[:n]
    mels, code, left, right, utt, start, dur = [], [], [], [], [], [], []
    offset = 0
    for k in range(0, len(cand), 32):
        batch = cand[k : k + 32]
        clips = [Audio.load(corpus / r["path"]) for r in batch]
        for j, (clip, raw) in enumerate(zip(clips, tok.encode_batch(clips))):
            red, raw_to_red = reduce_with_index(raw)
            m = mel_frames(clip.samples, vc).numpy()
            d = align_durations(m, m, raw_to_red, len(red), vc.hop, vc.sample_rate, same=True).astype(int)
            s = np.concatenate([[0], np.cumsum(d)[:-1]])
            for i in range(len(red)):
                if d[i] > 0:
                    code.append(red[i])
                    left.append(red[i - 1] if i else -1)
                    right.append(red[i + 1] if i + 1 < len(red) else -1)
                    utt.append(k + j)
                    start.append(offset + s[i])
                    dur.append(d[i])
            mels.append(m)
            offset += len(m)
        print(f"inventory {voice}: {k + len(batch)}/{len(cand)} recordings", file=sys.stderr, flush=True)
    inv = {"mel": np.concatenate(mels).astype(np.float32), "code": np.array(code), "left": np.array(left),
           "right": np.array(right), "utt": np.array(utt), "start": np.array(start), "dur": np.array(dur)}
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **inv)
    return inv


def fsq_neighbours(c: int, levels: int = 8, dims: int = 4) -> list[int]:
    """Codes one step away on one FSQ dimension (the tiny S2U: 4 dimensions of 8 levels = 4096 codes)."""
    bits = levels.bit_length() - 1
    out = []
    for k in range(dims):
        digit = (c >> (bits * k)) & (levels - 1)
        for step in (-1, 1):
            if 0 <= digit + step < levels:
                out.append(c + step * (1 << (bits * k)))
    return out


def select(inv: dict[str, np.ndarray], by_code: dict[int, np.ndarray], units: list[int], candidates: int,
           w_context: float, w_join: float) -> list[int]:
    """Inventory segment per unit: target cost (context mismatch, unseen code) + join cost, by Viterbi."""
    cands, target = [], []
    for i, c in enumerate(units):
        left = units[i - 1] if i else -1
        right = units[i + 1] if i + 1 < len(units) else -1
        pool, penalty = by_code.get(int(c)), 0.0
        if pool is None:
            near = [by_code[n] for n in fsq_neighbours(int(c)) if n in by_code]
            pool, penalty = (np.concatenate(near) if near else np.arange(min(len(inv["code"]), 1000))), 2.0
        cost = penalty + w_context * ((inv["left"][pool] != left).astype(float) + (inv["right"][pool] != right))
        order = np.lexsort((np.random.RandomState(i).rand(len(pool)), cost))[:candidates]
        cands.append(pool[order])
        target.append(cost[order])
    mel, start, dur, utt = inv["mel"], inv["start"], inv["dur"], inv["utt"]
    acc, back = target[0].copy(), []
    for i in range(1, len(units)):
        prev, cur = cands[i - 1], cands[i]
        join = np.abs(mel[start[prev] + dur[prev] - 1][:, None, :] - mel[start[cur]][None, :, :]).mean(-1)
        natural = (utt[prev][:, None] == utt[cur][None, :]) & ((start[prev] + dur[prev])[:, None] == start[cur][None, :])
        total = acc[:, None] + np.where(natural, 0.0, w_join * join)
        b = total.argmin(0)
        back.append(b)
        acc = total[b, np.arange(len(b))] + target[i]
    path = [int(acc.argmin())]
    for b in reversed(back):
        path.append(int(b[path[-1]]))
    path.reverse()
    return [int(cands[i][p]) for i, p in enumerate(path)]


def render(inv: dict[str, np.ndarray], chosen: list[int], durations: np.ndarray) -> torch.Tensor:
    """The chosen segments, each stretched (nearest frame) to its predicted duration."""
    out = []
    for s, d in zip(chosen, durations):
        if d > 0:
            seg = inv["mel"][inv["start"][s] : inv["start"][s] + inv["dur"][s]]
            out.append(seg[(np.arange(d) * len(seg) / d).astype(int)])
    return torch.from_numpy(np.concatenate(out))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_probe_args(p)
    p.add_argument("--inventory", type=int, default=800, help="neutral training renderings per voice")
    p.add_argument("--candidates", type=int, default=40, help="segments per unit the Viterbi search considers")
    p.add_argument("--w-context", type=float, default=1.0, help="target cost per mismatched neighbour")
    p.add_argument("--w-join", type=float, default=1.0, help="weight of the log-mel jump at a join")
    p.add_argument("--cache", default="data_cache/probes", help="where inventories are kept between runs")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/u2s_unit_selection_probe.json")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    corpus = Path(a.corpus)
    tok, detok = load_tokenizer(a.tokenizer), SpeechDetokenizer.from_pretrained(a.model)
    rows = [r for r in read_manifest(corpus, ("heldout_per",)) if r["voice"] == "flite:awb"][100 : 100 + a.n]
    if len(rows) < a.n:
        raise SystemExit(f"only {len(rows)} held-out awb sentences from 100 on in {corpus}")
    clips, refs = [Audio.load(corpus / r["path"]) for r in rows], [r["text"] for r in rows]
    units = [tok.reduce(list(u)) for u in tok.encode_batch(clips)]
    judge = Judge()
    train = read_manifest(corpus, ("train",))
    res: dict = {"sentences": a.n, "settings": {k: v for k, v in vars(a).items() if k not in ("out", "cache")}}
    res["wer_originals"] = wer(refs, [judge.transcribe(c) for c in clips])
    for gender, voice in INVENTORY_VOICES.items():
        cache = Path(a.cache) / f"unit_inventory_{voice.replace(':', '_')}_{a.inventory}.npz" if a.cache else None
        inv = build_inventory(train, corpus, tok, detok, voice, a.inventory, cache)
        by_code: dict[int, list[int]] = {}
        for i, c in enumerate(inv["code"]):
            by_code.setdefault(int(c), []).append(i)
        by = {c: np.array(v) for c, v in by_code.items()}
        style = Style(gender=gender)
        g, off = detok.style_vector(style), detok._offsets(style, None)
        u2s, selected = [], []
        for u in units:
            o = detok._mel(u, g, offsets=off)
            f0 = frame_f0_hz(o["lf0"], o["voiced"])
            u2s.append(Audio(detok.vocode(o["mel"], off.gain_db, f0), detok.sample_rate))
            durations = np.bincount(o["unit_index"].numpy(), minlength=len(u))
            mel = render(inv, select(inv, by, u, a.candidates, a.w_context, a.w_join), durations)
            n = min(len(mel), len(f0))
            selected.append(Audio(detok.vocode(mel[:n], off.gain_db, f0[:n]), detok.sample_rate))
        seen = float(np.mean([c in by for us in units for c in us]))
        res[gender] = {"inventory_voice": voice, "inventory_segments": int(len(inv["code"])),
                       "inventory_distinct_codes": len(by), "test_units_with_code_in_inventory": seen,
                       "wer_u2s": wer(refs, [judge.transcribe(x) for x in u2s]),
                       "wer_unit_selection": wer(refs, [judge.transcribe(x) for x in selected])}
        print(gender, json.dumps(res[gender]), flush=True)
    print(json.dumps(res, indent=1))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
