"""How intelligible are the model's spoken replies? Held-out spoken-dialogue turns → the LLM (decoded as the
pipeline does) → its reply units → the U2S in the reply's own style → pocketsphinx, scored against the reply
text the model wrote (the line `make demo` checks on one turn, here on many).

    python benchmarks/spoken_reply_wer.py [--model emova-tiny] [--detokenizer emova-tiny] [-n 60] [--out PATH]
                                          [--voices record female male]

`--voices`: speak the same replies in each listed voice — `record` (the voice the world gives the turn's reply,
the default), `female`, `male` — and report a WER per voice (the LLM runs once).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emova.eval.omni import MAX_NEW, Generator, _load, load_model
from emova.eval.u2s import Judge, wer
from emova.inference.json_repair import parse_answer
from emova.inference.messages import resolve_style
from emova.speech.detokenizer import SpeechDetokenizer
from emova.styles import Style


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="emova-tiny")
    ap.add_argument("--detokenizer", default="emova-tiny")
    ap.add_argument("--world", default="data_cache/world_units")
    ap.add_argument("--images", default="data_cache/world")
    ap.add_argument("-n", type=int, default=60)
    ap.add_argument("--out", default=None)
    ap.add_argument("--voices", nargs="+", default=["record"], choices=["record", "female", "male"])
    a = ap.parse_args(argv)
    recs = _load(Path(a.world), "dialogue_speech", a.n)
    model, proc = load_model(a.model)
    outs = Generator(model, proc, Path(a.images), 16).run(recs, MAX_NEW["dialogue"], "dialogue", hold=True,
                                                          structured=True)
    detok, judge = SpeechDetokenizer.from_pretrained(a.detokenizer), Judge()
    parsed = [parse_answer(o) for o in outs]
    no_units = sum(1 for p in parsed if not p.units or not p.text)
    per_voice = {}
    for voice in a.voices:
        refs, hyps = [], []
        for r, p in zip(recs, parsed):
            text = p.text or ""
            if not p.units or not text:
                refs.append(text or "-")
                hyps.append("")
                continue
            out_sp = [s for s in r["meta"]["speech"] if s["role"] == "output"]
            gender = voice if voice != "record" else (Style.parse(out_sp[0]["style"]).gender if out_sp else "female")
            refs.append(text)
            hyps.append(judge.transcribe(detok.decode(p.units, style=resolve_style(gender, p.emotion, p.pitch))))
        per_voice[voice] = {"reply_speech_wer": round(wer(refs, hyps), 4),
                            "examples": [{"reply": x, "heard": y} for x, y in list(zip(refs, hyps))[:6]]}
    first = per_voice[a.voices[0]]
    res = {"model": a.model, "n": len(recs), "reply_speech_wer": first["reply_speech_wer"], "voice": a.voices[0],
           "no_units": no_units, "examples": first["examples"]}
    if len(a.voices) > 1:
        res["per_voice"] = {v: x["reply_speech_wer"] for v, x in per_voice.items()}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
