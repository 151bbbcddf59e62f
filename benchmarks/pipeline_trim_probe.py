"""What the pipeline's silence trimming does to the held-out world's own speech (the audio `emova eval omni` reads
as pre-encoded units): ASR and spoken turns through `Emova`, trimming off and at each margin.

    python benchmarks/pipeline_trim_probe.py [--world data_cache/world] [--speech data_cache/world_speech]
        [--asr 200] [--dialogue 100] [--margins 0.3:0.3 0.05:0.1] [--out reports/pipeline_trim_probe.json]

`emova eval omni` feeds the LLM units encoded from the whole clips; a user's clip goes through `Emova`, which cuts
it to its sound first (`Emova.trim_silence`, `silence_margins`). This runs the held-out ASR records
(`m.transcribe`) and the first spoken-dialogue turns (`dialogue_speech` with no image, `vqa_speech` with one;
`m.chat(..., speak=False)`) from their WAVs, and reports ASR WER, the transcript WER of the spoken turns, their
reply-emotion accuracy and correct answers (where the world defines one) for each setting.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emova import Audio, Emova
from emova.data.world_speech import wav_name
from emova.eval.metrics import error_rate
from emova.eval.omni import answer_correct
from emova.eval.u2s import words


def _load(world: Path, name: str, n: int) -> list[dict]:
    path = world / "heldout" / f"{name}.json"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: build the world first (emova train recipe tiny --steps world "
                         "world_speech)")
    return json.loads(path.read_text())[:n]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="emova-tiny")
    p.add_argument("--world", default="data_cache/world")
    p.add_argument("--speech", default="data_cache/world_speech")
    p.add_argument("--asr", type=int, default=200)
    p.add_argument("--dialogue", type=int, default=100, help="turns of each dialogue suite (with / without image)")
    p.add_argument("--margins", nargs="*", default=["0.3:0.3", "0.05:0.1"], help="lead:trail seconds kept")
    p.add_argument("--out", default="reports/pipeline_trim_probe.json")
    a = p.parse_args(argv)
    world, wavs = Path(a.world), Path(a.speech) / "heldout" / "wav"
    asr = _load(world, "asr", a.asr)
    turns = _load(world, "dialogue_speech", a.dialogue) + _load(world, "vqa_speech", a.dialogue)

    def clip(rec: dict, role: str) -> Audio:
        key = next(s["key"] for s in rec["speech"] if s["role"] == role)
        return Audio.load(wavs / wav_name(key), 16000)

    m = Emova.from_pretrained(a.model)
    settings = [("raw", None)] + [(f"trim{mg}", tuple(float(v) for v in mg.split(":"))) for mg in a.margins]
    res: dict = {"model": a.model, "n_asr": len(asr), "n_turns": len(turns), "rows": {}}
    for name, mg in settings:
        m.trim_silence = mg is not None
        m.silence_margins = mg or m.silence_margins
        hyps = [words(m.transcribe(clip(r, "input"))) for r in asr]
        refs = [words(r["conversations"][1]["value"]) for r in asr]
        t_refs, t_hyps, emo, answers = [], [], [], []
        for r in turns:
            want = json.loads(r["conversations"][1]["value"])
            content = [{"type": "audio", "audio": clip(r, "input")}]
            if r.get("image"):
                content.insert(0, {"type": "image", "image": str(world / r["image"])})
            out = m.chat([{"role": "user", "content": content}], speak=False)
            t_refs.append(words(want["user question text"]))
            t_hyps.append(words(out.transcript or ""))
            emo.append(out.emotion == want["assistant response emotion"])
            meta = r.get("meta") or {}
            if meta.get("answer"):
                answers.append(answer_correct(out.text, meta["answer"], meta.get("aliases", []), meta.get("qtype"),
                                              want["assistant response text"]))
        row = {"asr_wer": round(error_rate(refs, hyps), 3), "transcript_wer": round(error_rate(t_refs, t_hyps), 3),
               "reply_emotion": round(sum(emo) / len(emo), 3),
               "answer": round(sum(answers) / len(answers), 3) if answers else None, "n_answers": len(answers)}
        res["rows"][name] = row
        print(name, row, flush=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
