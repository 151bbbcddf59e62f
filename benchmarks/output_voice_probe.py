"""Which training voice should speak the model's own speech? A probe of how intelligibly each voice's units
come back through the U2S.

    python benchmarks/output_voice_probe.py [--model emova-tiny] [-n 40] [--seed 913577] [--out PATH]

The one-voice legs of stage 3 teach the LLM to answer with the units of ONE voice (`world_speech`,
`canonical_outputs`). The U2S then renders those units in whatever style the reply asks for, so the best
output voice is the one whose units the U2S turns back into words most reliably. For every flite training
voice: `n` sentences from the corpus generator under a seed no corpus uses (none of the corpus's training
sentences), rendered neutral → S2U units (reduced) → U2S (neutral, female and male) → pocketsphinx WER, next
to the WER of the renderings themselves.
Held-out voices are never probed (they never speak training data).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from emova.data.speech.corpus import CorpusConfig
from emova.data.speech.render import synthesize
from emova.data.speech.sentences import generate_sentences
from emova.data.speech.voices import FLITE_TRAIN_VOICES
from emova.eval.u2s import Judge, wer
from emova.model.processor import reduce_units
from emova.speech.detokenizer import SpeechDetokenizer
from emova.speech.tokenizer import SpeechTokenizer
from emova.styles import Style


def probe(model: str, n: int, seed: int, voices: list[str],
          u2s_checkpoint: str | None = None) -> dict[str, dict[str, float]]:
    cfg = CorpusConfig()
    corpus = set(generate_sentences(cfg.n_train_sentences, seed=cfg.seed))  # none the U2S or S2U trained on
    sentences = generate_sentences(n, seed=seed, exclude=corpus)
    tok, det, judge = SpeechTokenizer.from_pretrained(model), SpeechDetokenizer.from_pretrained(model), Judge()
    if u2s_checkpoint:  # a training run's U2S inside the model's detokenizer (its prototypes, calibration, vocoder)
        from emova.eval.u2s_diagnose import swap_u2s_weights

        swap_u2s_weights(det, u2s_checkpoint)
    out: dict[str, dict[str, float]] = {}
    for voice in FLITE_TRAIN_VOICES:
        if voice.key not in voices:
            continue
        hyps: dict[str, list[str]] = {"recording": [], "u2s_female": [], "u2s_male": []}
        n_units = 0
        for s in sentences:
            audio = synthesize(s, voice, Style(gender=voice.gender))
            units = reduce_units(tok.encode(audio))
            n_units += len(units)
            hyps["recording"].append(judge.transcribe(audio))
            for g in ("female", "male"):
                hyps[f"u2s_{g}"].append(judge.transcribe(det.decode(units, style=Style(gender=g))))
        row = {f"wer_{k}": round(wer(sentences, h), 3) for k, h in hyps.items()}
        row["wer_u2s_mean"] = round((row["wer_u2s_female"] + row["wer_u2s_male"]) / 2, 3)
        row["units_per_sentence"] = round(n_units / n, 1)
        out[voice.key] = row
        print(voice.key, row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="emova-tiny", help="speech tokenizer + detokenizer (bundled name or dir)")
    ap.add_argument("-n", type=int, default=40, help="sentences per voice")
    ap.add_argument("--seed", type=int, default=913577, help="sentence generator seed (not one a corpus uses)")
    ap.add_argument("--voices", nargs="*", default=[v.key for v in FLITE_TRAIN_VOICES])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--u2s-checkpoint", default=None, help="a U2S training checkpoint (runs/<run>/u2s/step-N) to probe")
    ap.add_argument("--out", default="docs/results/output_voice_probe.json")
    a = ap.parse_args()
    if a.n < 1:
        raise SystemExit("-n must be at least 1")
    torch.set_num_threads(a.threads)
    res = {"model": a.model, "u2s_checkpoint": a.u2s_checkpoint, "n": a.n, "seed": a.seed,
           "voices": probe(a.model, a.n, a.seed, a.voices, a.u2s_checkpoint)}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    print(f"written: {a.out}")


if __name__ == "__main__":
    main()
