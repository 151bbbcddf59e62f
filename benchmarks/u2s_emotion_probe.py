"""A larger emotion probe for speech detokenizers than the 160 clips of `emova eval u2s`.

Same classifier and prosodic features as the suite (`emova.eval.u2s`: trained on corpus renderings only),
applied to the U2S output for units of held-out sentences the suite does not use (the corpus's
`heldout_probe` split, neutral renderings of the chosen voices), every main emotion, both genders.
Compare detokenizers side by side in one run:

    python benchmarks/u2s_emotion_probe.py emova-tiny runs/u2s_f0aug/export_cp --n 34
    python benchmarks/u2s_emotion_probe.py emova-tiny --strengths 1 1.25 1.5 2 2.5   # emotion_strength sweep

Prints the 4-way accuracy (overall and per gender) of each and writes a JSON (--out). With `--wer`, pocketsphinx
also transcribes every clip: the WER per emotion, i.e. what a stronger emotion costs in intelligibility.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from emova.audio import Audio
from emova.data.speech.corpus import read_manifest
from emova.eval.u2s import MAIN_EMOTIONS, Judge, prosodic_features, train_emotion_classifier, wer
from emova.speech.detokenizer import SpeechDetokenizer
from emova.styles import Style
from emova.train.u2s_data import load_tokenizer


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("models", nargs="+", help="detokenizer names or directories")
    p.add_argument("--tokenizer", default="emova-tiny")
    p.add_argument("--corpus", default="data_cache/speech")
    p.add_argument("--split", default="heldout_probe")
    p.add_argument("--voices", nargs="+", default=["flite:kal16", "flite:slt"])
    p.add_argument("--n", type=int, default=34, help="sentences")
    p.add_argument("--strengths", type=float, nargs="+", default=None,
                   help="emotion_strength values to decode with (default: each model's own)")
    p.add_argument("--wer", action="store_true", help="also the pocketsphinx WER of each emotion's clips")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="reports/u2s_emotion_probe.json")
    a = p.parse_args(argv)
    if a.n < 1:
        p.error("--n must be >= 1")
    torch.set_num_threads(a.threads)
    corpus = Path(a.corpus)
    rows = [r for r in read_manifest(corpus, (a.split,))
            if r["voice"] in a.voices and r["style"] == str(Style(gender=r["gender"]))][: a.n]
    if not rows:
        raise SystemExit(f"no neutral renderings of {a.voices} in split {a.split} of {corpus}")
    clf, _ = train_emotion_classifier(corpus, classes=MAIN_EMOTIONS)
    tok = load_tokenizer(a.tokenizer)
    units = [tok.reduce(u) for u in tok.encode_batch([Audio.load(corpus / r["path"]) for r in rows])]
    judge = Judge() if a.wer else None
    res: dict = {"split": a.split, "voices": a.voices, "n_sentences": len(rows), "models": {}}
    for model in a.models:
        detok = SpeechDetokenizer.from_pretrained(model)
        for strength in a.strengths or [detok.emotion_strength]:
            name = model if a.strengths is None else f"{model}@{strength:g}"
            feats, truth, genders, refs, heard = [], [], [], [], []
            for g in ("female", "male"):
                for e in MAIN_EMOTIONS:
                    for r, u in zip(rows, units):
                        audio = detok.decode(u, Style(gender=g, emotion=e), emotion_strength=strength)
                        feats.append(prosodic_features(audio, len(r["phones"].split()), g))
                        if judge is not None:
                            refs.append(r["text"])
                            heard.append(judge.transcribe(audio))
                        truth.append(e)
                        genders.append(g)
            ok = clf.predict(np.array(feats)) == np.array(truth)
            gen = np.array(genders)
            res["models"][name] = {"clips": len(ok), "emotion_strength": strength, "accuracy_4way": float(ok.mean()),
                                   **{f"accuracy_4way_{g}": float(ok[gen == g].mean()) for g in ("female", "male")}}
            if judge is not None:
                res["models"][name]["wer"] = {e: wer([t for t, y in zip(refs, truth) if y == e],
                                                     [h for h, y in zip(heard, truth) if y == e]) for e in MAIN_EMOTIONS}
            m = res["models"][name]
            print(f"{name}: 4-way {m['accuracy_4way']:.3f} (female {m['accuracy_4way_female']:.3f}, "
                  f"male {m['accuracy_4way_male']:.3f}) on {m['clips']} clips"
                  + (" | WER " + " ".join(f"{e} {v:.3f}" for e, v in m["wer"].items()) if "wer" in m else ""),
                  flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
