"""Compare candidate LLMs on a *validation world* — the held-out split's generator with another seed, spoken by the
held-out voices only — so that choosing between checkpoints (legs, averages) does not look at the held-out world
whose numbers `emova eval omni` reports.

    python benchmarks/choose_checkpoint.py NAME=MODEL_DIR [NAME=MODEL_DIR …] [--seed 4242] [--max-items 150]
        [--work data_cache] [--out PATH] [--suites vqa dialogue …]

MODEL_DIR is anything `emova eval omni --model` takes (a bundle directory with llm/, or `emova-tiny`). The validation
world (images, speech, units) is built once under `{work}/world_val_{seed}*` and reused; FSDD is not part of it
(its validation split is the one `emova eval omni` uses). Prints one table, writes the acceptance values per model.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from emova.eval.omni import evaluate_omni

SUITES = ("vqa", "text", "asr", "tts", "dialogue")


def build_validation_world(work: Path, seed: int) -> tuple[Path, Path]:
    """(units dir, image root) of the validation world, built on first use."""
    from emova.data.world import build_world
    from emova.data.world.build import DEFAULT_SEEDS
    from emova.data.world_speech import (
        encode_world_speech,
        fill_world_units,
        render_world_speech,
        speech_requests,
    )
    from emova.speech.tokenizer import SpeechTokenizer

    if seed in DEFAULT_SEEDS.values():
        raise ValueError(f"seed {seed} is a seed of the train or held-out world; pick another")
    world, speech, units = (work / f"world_val_{seed}{s}" for s in ("", "_speech", "_units"))
    if not (units / "done").exists():
        if not (world / "heldout" / "manifest.json").exists():
            build_world(world, "heldout", seed=seed)
        render_world_speech(world, "heldout", speech, workers=2)
        tok = SpeechTokenizer.from_pretrained("emova-tiny")
        fill_world_units(world, "heldout", encode_world_speech(speech, "heldout", tok, speech_requests(world, "heldout")),
                         units)
        (units / "done").write_text("ok\n")
    return units, world


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+", metavar="NAME=MODEL_DIR")
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--max-items", type=int, default=150)
    ap.add_argument("--work", default="data_cache")
    ap.add_argument("--out", default="reports/choose_checkpoint.json")
    ap.add_argument("--suites", nargs="+", default=list(SUITES), choices=SUITES,
                    help="a subset to compare on (tts is the slow one)")
    a = ap.parse_args(argv)
    pairs = [m.split("=", 1) for m in a.models]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise SystemExit("each model is NAME=MODEL_DIR")
    units, images = build_validation_world(Path(a.work), a.seed)
    table: dict[str, dict[str, float | None]] = {}
    for name, model in pairs:
        rep = evaluate_omni(model, units, images, out=None, suites=a.suites, max_items=a.max_items)
        table[name] = {k: v["value"] for k, v in rep["acceptance"].items() if v["value"] is not None}
    keys = list(next(iter(table.values())))
    print(f"{'':32}" + "".join(f"{n:>12}" for n in table))
    for k in keys:
        print(f"{k:32}" + "".join(f"{table[n].get(k, float('nan')):12.3f}" for n in table))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps({"seed": a.seed, "max_items": a.max_items, "suites": a.suites,
                                       "models": dict(pairs), "acceptance": table}, indent=1))


if __name__ == "__main__":
    main()
