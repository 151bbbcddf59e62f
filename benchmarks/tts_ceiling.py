"""What WER could TTS through the LLM reach with this U2S? A ceiling for issue 4's TTS line.

    python benchmarks/tts_ceiling.py [--world data_cache/world] [--detokenizer emova-tiny] [-n 60]
                                     [--output-voice flite:slt] [--out PATH]

Takes the held-out TTS sentences, renders each as canonical model speech (`--output-voice`, default
`world_speech.OUTPUT_VOICE`, neutral: the unit sequence an LLM trained with `canonical_outputs` in that voice
learns to emit), encodes it with the bundled S2U, decodes the units with the U2S in the record's style and
judges the audio with pocketsphinx against the sentence; the renderings themselves are judged too. A perfect LLM would score the first number.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emova.data.speech.render import synthesize
from emova.data.speech.voices import voice_by_key
from emova.data.world.formats import load_records
from emova.data.world_speech import OUTPUT_VOICE, output_style
from emova.eval.u2s import Judge, wer
from emova.speech.detokenizer import SpeechDetokenizer
from emova.speech.tokenizer import SpeechTokenizer
from emova.styles import Style


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", default="data_cache/world", help="the built world (records with speech keys)")
    ap.add_argument("--tokenizer", default="emova-tiny")
    ap.add_argument("--detokenizer", default="emova-tiny")
    ap.add_argument("-n", type=int, default=60)
    ap.add_argument("--output-voice", default=OUTPUT_VOICE, help="the one voice of the model's speech")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    path = Path(a.world) / "heldout" / "tts.json"
    if not path.is_file():
        raise SystemExit(f"no held-out TTS records at {path} (emova train recipe tiny --steps world)")
    recs = load_records(path)[: a.n]
    tok, detok = SpeechTokenizer.from_pretrained(a.tokenizer), SpeechDetokenizer.from_pretrained(a.detokenizer)
    try:
        voice, canon = voice_by_key(a.output_voice), Style.parse(output_style(a.output_voice))
    except (KeyError, ValueError) as e:
        raise SystemExit(f"--output-voice: {e}") from None
    judge = Judge()
    refs, via_u2s, direct = [], [], []
    for r in recs:
        sp = r["speech"][0]
        audio = synthesize(sp["text"], voice, canon)
        units = tok.reduce(tok.encode_batch([audio])[0])
        refs.append(sp["text"])
        via_u2s.append(judge.transcribe(detok.decode(units, style=sp["style"])))
        direct.append(judge.transcribe(audio))
    res = {"n": len(refs), "output_voice": a.output_voice, "u2s_wer": round(wer(refs, via_u2s), 4),
           "rendering_wer": round(wer(refs, direct), 4)}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
