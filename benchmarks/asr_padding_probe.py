"""Does a recording's silence, background or pauses change what the model hears? ASR through the LLM, with the
pipeline's front end off and on.

    python benchmarks/asr_padding_probe.py [--model emova-tiny] [-n 60] [--margins 0.3:0.3 0.1:0.1]
        [--conditions clean silence background noise20 pause] [--out reports/asr_padding_probe.json]

Microphone recordings start and end with silence or background noise, and people pause; the corpus and the world's
clips are cut tightly (flite ~0.2 s of lead-in, espeak-ng none, FSDD ~0.02 s; pauses inside ~0.04 s). On held-out
clips — `n` held-out sentences of the held-out voices (`heldout_per`: flite `awb` and espeak-ng `en-us+f4`,
alternating) and `n` FSDD validation recordings — `Emova.transcribe` is scored on the clips as they are (clean);
with 0.5–1.5 s of digital silence added before and after (silence); with that much of the clip's own background,
white noise at the level of its quietest 10 % of frames, as a microphone's room would add (background); with
silence padding under white noise at 20 dB SNR (noise20); and with a 0.5–1.5 s pause inside (pause) — each with
the pipeline's front end off (`Emova.trim_silence = False`) and on at each lead:trail margin (`Audio.trim_silence`,
0.1 s tolerance; pauses cut by `Audio.shorten_pauses`). Sentences are scored by WER, FSDD digits by whether the
reply says the digit. The same padding and noise for every setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from emova import Audio, Emova
from emova.data.speech.corpus import read_manifest
from emova.eval.metrics import error_rate
from emova.eval.u2s import words


def pad(x: np.ndarray, rng: np.random.Generator, sr: int, kind: str) -> np.ndarray:
    """`kind`: "silence", "background" (noise at the clip's own quietest level), "noise20" (silence + 20 dB), or
    "pause" (0.5-1.5 s of silence inside, at the quietest frame of the middle 40 %: most likely between words)."""
    if kind == "pause":
        hop = sr // 100
        n = len(x) // hop
        e = np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1))
        k = int(n * 0.3) + int(np.argmin(e[int(n * 0.3): int(n * 0.7)]))
        return np.concatenate([x[: k * hop], np.zeros(int(rng.uniform(0.5, 1.5) * sr), np.float32), x[k * hop:]])
    lead, trail = (int(rng.uniform(0.5, 1.5) * sr) for _ in range(2))
    if kind == "background":
        hop = sr // 100
        n = len(x) // hop
        level = float(np.percentile(np.sqrt((x[: n * hop].reshape(n, hop) ** 2).mean(1)), 10))
        return np.concatenate([rng.normal(0, level, lead), x, rng.normal(0, level, trail)]).astype(np.float32)
    y = np.concatenate([np.zeros(lead, np.float32), x, np.zeros(trail, np.float32)])
    if kind == "noise20":
        snr_db = 20.0
        active = x[np.abs(x) > 0.01 * np.abs(x).max()]
        power = float(np.mean(active**2)) if len(active) else float(np.mean(x**2))
        y = y + rng.normal(0.0, np.sqrt(power / 10 ** (snr_db / 10)), len(y)).astype(np.float32)
    return np.clip(y, -1.0, 1.0).astype(np.float32)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emova-tiny")
    p.add_argument("--corpus", default="data_cache/speech")
    p.add_argument("-n", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--conditions", nargs="*", default=["clean", "silence", "background", "noise20", "pause"],
                   choices=["clean", "silence", "background", "noise20", "pause"])
    p.add_argument("--margins", nargs="*", default=["0.3:0.3", "0.2:0.2", "0.1:0.1"], help="lead:trail seconds kept")
    p.add_argument("--out", default="reports/asr_padding_probe.json")
    a = p.parse_args(argv)
    corpus = Path(a.corpus)
    rows = read_manifest(corpus, ("heldout_per",))
    awb = [r for r in rows if r["voice"] == "flite:awb"]
    f4 = [r for r in rows if r["voice"] != "flite:awb"]
    sent = [r for pair in zip(awb, f4) for r in pair][: a.n]
    fsdd = read_manifest(corpus, ("fsdd_val",))[: a.n]
    if len(sent) < a.n or len(fsdd) < a.n:
        raise SystemExit(f"{corpus}: too few held-out clips for -n {a.n}")
    m = Emova.from_pretrained(a.model)
    margins = [tuple(float(v) for v in mg.split(":")) for mg in a.margins]
    settings = [("raw", None)] + [(f"trim{lead:g}:{trail:g}", (lead, trail)) for lead, trail in margins]
    res: dict = {"model": a.model, "n": a.n, "seed": a.seed, "sentence_wer": {}, "sentence_wer_awb": {},
                 "sentence_wer_f4": {}, "fsdd_accuracy": {}}
    for cond in a.conditions:
        for name, mg in settings:
            m.trim_silence = mg is not None
            m.silence_margins = mg or m.silence_margins
            rng = np.random.default_rng(a.seed)
            hyps, refs, hits = [], [], 0
            for r in sent:
                x = Audio.load(corpus / r["path"], 16000).samples
                x = x if cond == "clean" else pad(x, rng, 16000, cond)
                hyps.append(words(m.transcribe(Audio(x, 16000))))
                refs.append(words(r["text"]))
            for r in fsdd:
                x = Audio.load(corpus / r["path"], 16000).samples
                x = x if cond == "clean" else pad(x, rng, 16000, cond)
                hits += int(r["text"].lower() in words(m.transcribe(Audio(x, 16000))))
            key = f"{cond}/{name}"
            res["sentence_wer"][key] = round(error_rate(refs, hyps), 3)
            res["sentence_wer_awb"][key] = round(error_rate(refs[0::2], hyps[0::2]), 3)
            res["sentence_wer_f4"][key] = round(error_rate(refs[1::2], hyps[1::2]), 3)
            res["fsdd_accuracy"][key] = round(hits / len(fsdd), 3)
            print(f"{key:24s} sentence WER {res['sentence_wer'][key]:.3f} (awb {res['sentence_wer_awb'][key]:.3f}, "
                  f"f4 {res['sentence_wer_f4'][key]:.3f})  FSDD {res['fsdd_accuracy'][key]:.3f}", flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
