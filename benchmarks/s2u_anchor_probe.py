"""Does a speech tokenizer hear held-out voices in the anchor voice's units, and does the U2S then say them more
intelligibly? Held-out sentences of the held-out voices (`heldout_per`, from index `--start`, not the first 50 that
`emova eval u2s` scores) for each tokenizer:

    unit distance   edit distance between the reduced units of the held-out voice's clip and the reference
                    tokenizer's (the first one given) units of the anchor voice saying the same sentence, divided by
                    the latter's length (0 = the same units)
    WER             clip → tokenizer → bundled U2S (neutral, each gender) → pocketsphinx (flite `awb` only,
                    the voice `emova eval u2s` scores); the anchor voice's own rendering through the reference
                    tokenizer is the ceiling row

    python benchmarks/s2u_anchor_probe.py --tokenizers emova-tiny runs/s2u_anchor/export [-n 40] [--start 100]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emova.argtypes import positive_int
from emova.data.speech.anchor import ANCHOR_VOICE
from emova.data.speech.corpus import read_manifest
from emova.data.speech.render import synthesize
from emova.data.speech.voices import voice_by_key
from emova.eval.metrics import edit_distance
from emova.eval.u2s import Judge, wer
from emova.speech.detokenizer import SpeechDetokenizer
from emova.speech.tokenizer import SpeechTokenizer
from emova.styles import Style

VOICES = ("flite:awb", "espeak:en-us+f4")


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizers", nargs="+", default=["emova-tiny"])
    ap.add_argument("--detokenizer", default="emova-tiny")
    ap.add_argument("--corpus", default="data_cache/speech")
    ap.add_argument("-n", type=positive_int, default=40)
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.start < 50:
        raise SystemExit("--start must be >= 50: the first 50 awb sentences are `emova eval u2s`'s")
    torch.set_num_threads(2)
    rows = {v: [r for r in read_manifest(a.corpus, ("heldout_per",)) if r["voice"] == v][a.start : a.start + a.n]
            for v in VOICES}
    anchor_voice = voice_by_key(ANCHOR_VOICE)
    anchor_style = Style(gender=anchor_voice.gender)
    toks = [SpeechTokenizer.from_pretrained(t) for t in a.tokenizers]
    detok = SpeechDetokenizer.from_pretrained(a.detokenizer)
    judge = Judge()
    report: dict = {"n": a.n, "start": a.start, "anchor": ANCHOR_VOICE, "tokenizers": {}}
    anchors = {v: [synthesize(r["text"], anchor_voice, anchor_style) for r in rows[v]] for v in VOICES}
    ref_units = {v: [toks[0].reduce(toks[0].encode(x)) for x in anchors[v]] for v in VOICES}
    awb_refs = [r["text"] for r in rows["flite:awb"]]
    ceiling = {}
    for g in ("female", "male"):
        hyps = [judge.transcribe(detok.decode(u, style=Style(gender=g))) for u in ref_units["flite:awb"]]
        ceiling[g] = round(wer(awb_refs, hyps), 3)
    report["anchor_through_reference_wer"] = ceiling
    print(f"anchor voice through {a.tokenizers[0]} → U2S WER female/male {ceiling['female']}/{ceiling['male']}")
    for name, tok in zip(a.tokenizers, toks):
        entry: dict = {}
        for v in VOICES:
            units = [tok.reduce(tok.encode(Path(a.corpus) / r["path"])) for r in rows[v]]
            d = sum(edit_distance(u, ru) for u, ru in zip(units, ref_units[v])) / sum(len(ru) for ru in ref_units[v])
            entry[f"unit_distance_{v}"] = round(d, 3)
            if v == "flite:awb":
                for g in ("female", "male"):
                    hyps = [judge.transcribe(detok.decode(u, style=Style(gender=g))) for u in units]
                    entry[f"wer_awb_{g}"] = round(wer(awb_refs, hyps), 3)
        report["tokenizers"][name] = entry
        print(name, json.dumps(entry))
    if a.out:
        Path(a.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
