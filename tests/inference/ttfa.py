"""Time-to-first-audio of a spoken turn, streamed vs not streamed, measured in the same run.

    python -m tests.inference.ttfa --model emova-tiny --audio emova/assets/examples/question.wav [--image IMG]

Non-streamed, the first audio exists only when `chat` returns, so its time-to-first-audio is its total.
Prints JSON with p50/p95 per path and the ratio. A helper, not a timed unit test (CPU timings vary).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

from emova.inference.pipeline import Emova


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def measure_ttfa(m: Emova, messages: list[dict[str, Any]], runs: int = 5, warmup: int = 1,
                 **chat_kw: Any) -> dict[str, Any]:
    stream_first: list[float] = []
    stream_total: list[float] = []
    plain_total: list[float] = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        first = None
        for ev in m.chat(messages, stream=True, **chat_kw):
            if ev.type == "audio" and first is None:
                first = time.perf_counter() - t0
        total = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = m.chat(messages, **chat_kw)
        plain = time.perf_counter() - t0
        if i >= warmup:
            stream_first.append(first if first is not None else float("nan"))
            stream_total.append(total)
            plain_total.append(plain)
    got = [x for x in stream_first if x == x]
    out = {
        "runs": runs,
        "stream_first_audio_p50_s": _pct(got, 0.5) if got else None,
        "stream_first_audio_p95_s": _pct(got, 0.95) if got else None,
        "stream_total_p50_s": _pct(stream_total, 0.5),
        "nonstream_first_audio_p50_s": _pct(plain_total, 0.5),
        "nonstream_first_audio_p95_s": _pct(plain_total, 0.95),
        "runs_without_audio": runs - len(got),
        "reply_units": len(r.units),
    }
    if got:
        out["earlier_by_x"] = statistics.median(plain_total) / max(1e-9, statistics.median(got))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="emova-tiny")
    ap.add_argument("--audio", required=True)
    ap.add_argument("--image", default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--transcript-beams", type=int, nargs="*", default=None,
                    help="measure with each of these `Emova.transcript_beams` in turn (1: the LLM's own transcript)")
    a = ap.parse_args()
    m = Emova.from_pretrained(a.model)
    parts: list[dict[str, Any]] = [{"type": "image", "image": a.image}] if a.image else []
    parts.append({"type": "audio", "audio": a.audio})
    results = []
    for beams in a.transcript_beams or [m.transcript_beams]:  # e.g. 1 8 1 8: alternating, side by side
        m.transcript_beams = beams
        results.append({"transcript_beams": beams, **measure_ttfa(m, [{"role": "user", "content": parts}], a.runs,
                                                                  max_new_tokens=a.max_new_tokens)})
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
