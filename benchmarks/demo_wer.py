"""Issue 5's demo line: how well pocketsphinx hears `make demo`'s reply against the reply text it printed.

    make demo && python benchmarks/demo_wer.py demo_out [--json]

Reads DIR/demo.json (the printed dialogue) and DIR/reply.wav, transcribes the WAV with the project's judge
(`emova.eval.u2s.Judge`: pocketsphinx's bundled English model, each clip heard as by a fresh decoder) and prints the
reply text, what was heard and the WER (bar: ≤ 0.5).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def demo_wer(out_dir: str | Path) -> dict[str, object]:
    from emova.audio import Audio
    from emova.eval.u2s import Judge, wer

    d = Path(out_dir)
    for f in ("demo.json", "reply.wav"):
        if not (d / f).is_file():
            raise FileNotFoundError(f"{d / f} not found: run `emova demo --out {d}` first")
    try:
        shown = json.loads((d / "demo.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{d / 'demo.json'} is not JSON: {e}") from None
    text = shown.get("text") if isinstance(shown, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"{d / 'demo.json'} has no reply text (key 'text')")
    heard = Judge().transcribe(Audio.load(d / "reply.wav"))
    return {"reply_text": text, "heard": heard, "wer": wer([text], [heard]), "bar": 0.5}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", nargs="?", default="demo_out")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    try:
        r = demo_wer(a.out_dir)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r, indent=1))
    else:
        ok = "✓" if float(r["wer"]) <= 0.5 else "✗"  # type: ignore[arg-type]
        print(f"reply: {r['reply_text']!r}\nheard: {r['heard']!r}\nWER {float(r['wer']):.3f} {ok} (bar ≤ 0.5)")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
