"""Would warping a new speaker's mel axis at inference (VTLN-style, as the S2U's training augmentation warps it)
make its units easier to read? Held-out ASR clips of the tiny world (held-out voices) → S2U with the mel axis
warped by each factor → the S2U's CTC phone head; phone error rate per voice for every fixed factor, for the
factor each clip's CTC confidence (mean max log-probability) picks, and for the best factor per clip (oracle).

    python benchmarks/s2u_vtln_probe.py [--world data_cache/world_val_4242_units]
                                        [--speech data_cache/world_val_4242_speech] [-n 80]

The reference phones are `text_to_phones` of the sentence, not the renderer's own phone string, so absolute
PERs are higher than `emova eval s2u`'s; compare rows with each other.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import torch

from emova.argtypes import positive_int
from emova.audio import Audio
from emova.data.speech.phones import ctc_collapse, ids_to_phones, text_to_phones
from emova.eval.omni import _voice_of
from emova.speech.features import s2u_features
from emova.speech.tokenizer import SpeechTokenizer

FACTORS = (0.88, 0.91, 0.94, 0.97, 1.0, 1.03, 1.06, 1.09, 1.12)


def warp_mel(mel: torch.Tensor, factor: float) -> torch.Tensor:
    """(M, F) log-mel with its mel axis stretched by `factor` (linear interpolation between bins)."""
    m = mel.shape[0]
    src = torch.clamp(torch.arange(m, dtype=torch.float32) / factor, 0, m - 1)
    lo = src.floor().long()
    hi = torch.clamp(lo + 1, max=m - 1)
    frac = (src - lo)[:, None]
    return mel[lo] * (1 - frac) + mel[hi] * frac


def edit_distance(a: list[str], b: list[str]) -> int:
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[0], i
        for j in range(1, len(b) + 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] != b[j - 1]))
    return d[len(b)]


@torch.inference_mode()
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="data_cache/world_val_4242_units")
    ap.add_argument("--speech", default="data_cache/world_val_4242_speech")
    ap.add_argument("--tokenizer", default="emova-tiny")
    ap.add_argument("-n", type=positive_int, default=80)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    tok = SpeechTokenizer.from_pretrained(a.tokenizer)
    recs = json.loads((Path(a.world) / "heldout" / "asr.json").read_text())[: a.n]
    errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in recs:
        sp = r["meta"]["speech"][0]
        wav = Path(a.speech) / "heldout" / "wav" / f"{sp['key'].replace('/', '__')}.wav"
        voice, ref = _voice_of(r), list(text_to_phones(sp["text"]))
        samples = tok._prepare(Audio.load(wav)).samples
        mel, lens = s2u_features(torch.from_numpy(samples)[None], torch.tensor([len(samples)]))
        scored = {}
        for f in FACTORS:
            out = tok.model.encode(warp_mel(mel[0], f)[None], lens)
            q = out["q"][0, : int(out["lengths"][0])]
            logp = tok.model.ctc_logits(q[None], torch.zeros(1, len(q), dtype=torch.bool))[0].log_softmax(-1)
            hyp = ids_to_phones(ctc_collapse(logp.argmax(-1).tolist()))
            scored[f] = (float(logp.max(-1).values.mean()), edit_distance(hyp, ref))
        e = errors[voice]
        for f in FACTORS:
            e[str(f)] += scored[f][1]
        e["confidence_pick"] += scored[max(FACTORS, key=lambda f: scored[f][0])][1]
        e["oracle_pick"] += min(v[1] for v in scored.values())
        e["phones"] += len(ref)
    res = {v: {k: round(x / e["phones"], 3) for k, x in e.items() if k != "phones"} | {"phones": e["phones"]}
           for v, e in errors.items()}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps({"n": len(recs), "world": a.world, "per": res}, indent=1))


if __name__ == "__main__":
    main()
