"""Lean decoding vs the transformers forward, side by side in one process on the same spoken turns.

For each turn (the bundled demo question about the demo image, then `--world-turns` held-out spoken turns of the
tiny world) and each decoder, alternately, `--repeats` times: the non-streamed turn (`Emova.chat`: wall time and
generation time) and the streamed one (`chat(stream=True)`: time to the first audio chunk). Checks that both
decoders give the same reply. Prints a table and writes JSON.

    python benchmarks/decode_speed.py [--model emova-tiny] [--world-turns 10] [--repeats 3] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from emova import Emova
from emova.eval.bench_serve import world_turns

EXAMPLES = Path(__file__).resolve().parents[1] / "emova" / "assets" / "examples"


def _turn(m: Emova, wav: str, image: str | None, stream: bool) -> tuple[float, float | None, str]:
    from PIL import Image

    content: list[dict] = [{"type": "image", "image": Image.open(image)}] if image else []
    msgs = [{"role": "user", "content": [*content, {"type": "audio", "audio": wav}]}]
    t0 = time.perf_counter()
    if not stream:
        r = m.chat(msgs)
        return time.perf_counter() - t0, r.timings.get("generate_s"), r.text or ""
    first, text = None, ""
    for e in m.chat(msgs, stream=True):
        if e.type == "audio" and first is None:
            first = time.perf_counter() - t0
        if e.type == "final":
            text = e.result.text or ""
    return time.perf_counter() - t0, first, text


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="emova-tiny")
    ap.add_argument("--world-turns", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default="reports/decode_speed.json")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    m = Emova.from_pretrained(a.model)
    turns = [(str(EXAMPLES / "question.wav"), str(EXAMPLES / "image.png"))]
    if a.world_turns:
        turns += world_turns(a.world_turns)
    rows, same = [], 0
    for i, (wav, image) in enumerate(turns):
        res: dict[str, dict[str, list]] = {}
        for lean in (True, False):  # warm-up, then alternate
            m.lean_decoding = lean
            _turn(m, wav, image, False)
        for _ in range(a.repeats):
            for lean in (True, False):
                m.lean_decoding = lean
                r = res.setdefault("lean" if lean else "transformers", {"total": [], "generate": [], "ttfa": [], "text": []})
                total, gen, text = _turn(m, wav, image, False)
                _, first, _ = _turn(m, wav, image, True)
                for key, value in (("total", total), ("generate", gen), ("ttfa", first), ("text", text)):
                    r[key].append(value)
        med = {k: {q: statistics.median(v[q]) for q in ("total", "generate", "ttfa")} for k, v in res.items()}
        agree = res["lean"]["text"][0] == res["transformers"]["text"][0]
        same += agree
        rows.append({"turn": i, "wav": wav, "image": image, "same_reply": agree, **med})
        print(f"turn {i}: lean total {med['lean']['total']:.3f}s ttfa {med['lean']['ttfa']:.3f}s | transformers "
              f"total {med['transformers']['total']:.3f}s ttfa {med['transformers']['ttfa']:.3f}s | same reply {agree}",
              flush=True)
    summary = {}
    for k in ("lean", "transformers"):
        summary[k] = {q: statistics.median(r[k][q] for r in rows) for q in ("total", "generate", "ttfa")}
        summary[k]["streamed_vs_non_streamed"] = summary[k]["total"] / summary[k]["ttfa"]
    summary["speedup_total"] = summary["transformers"]["total"] / summary["lean"]["total"]
    summary["speedup_generate"] = summary["transformers"]["generate"] / summary["lean"]["generate"]
    summary["speedup_ttfa"] = summary["transformers"]["ttfa"] / summary["lean"]["ttfa"]
    out = {"model": a.model, "turns": len(turns), "repeats": a.repeats, "threads": torch.get_num_threads(),
           "same_reply": f"{same}/{len(turns)}", "median_over_turns": summary, "per_turn": rows}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(f"\n{'':14}{'lean':>10}{'transformers':>14}{'speedup':>9}")
    for q in ("total", "generate", "ttfa"):
        print(f"{q + ' p50 (s)':14}{summary['lean'][q]:10.3f}{summary['transformers'][q]:14.3f}"
              f"{summary['transformers'][q] / summary['lean'][q]:9.2f}")
    print(f"same reply: {same}/{len(turns)}; non-streamed ÷ first audio: lean "
          f"{summary['lean']['streamed_vs_non_streamed']:.2f}x, transformers "
          f"{summary['transformers']['streamed_vs_non_streamed']:.2f}x; written to {a.out}")


if __name__ == "__main__":
    main()
