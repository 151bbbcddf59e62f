"""How many unit sequences does one sentence of the LLM's speech targets have? A data-consistency probe.

    python benchmarks/unit_consistency.py [--records data_cache/world_units/train/tts.json] [--out PATH]

The world's TTS records (and spoken replies) repeat sentences. For every pair of records that say the same
sentence, the normalised edit distance between their target units (reduced S2U units) is measured, split by
whether the two renderings came from the same voice or from different ones; pairs of *different* sentences
give the scale. If renderings of one sentence by different voices are nearly as far apart as different
sentences, a text → units target drawn from many voices is close to unpredictable from the text, and the
LLM's TTS cannot converge on one sequence (what `world_speech.canonical_outputs` addresses).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
import statistics
from collections import defaultdict
from pathlib import Path

from emova.data.world_speech import OUTPUT_STYLE, OUTPUT_VOICE, voice_for
from emova.eval.metrics import normalised_edit_distance


def _units(text: str) -> list[int]:
    return [int(u) for u in re.findall(r"<\|speech_(\d+)\|>", text)]


def target_groups(records: list[dict], canonical_outputs: bool) -> dict[str, list[tuple[str, list[int]]]]:
    """{sentence: [(voice key, target units), ...]} over the records' model-speech targets."""
    groups: dict[str, list[tuple[str, list[int]]]] = defaultdict(list)
    for r in records:
        outs = [s for s in (r.get("meta") or {}).get("speech", []) if s["role"] == "output"]
        if not outs:
            continue
        sp = outs[0]
        voice = voice_for(sp["key"], sp["style"], "train", "output", canonical_outputs)[0].key
        units = _units(r["conversations"][-1]["value"])
        if units:
            groups[sp["text"]].append((voice, units))
    return groups


def measure(groups: dict[str, list[tuple[str, list[int]]]], max_pairs: int = 3000, seed: int = 0) -> dict:
    rng = random.Random(seed)
    same, diff = [], []
    for lst in groups.values():
        for (v1, u1), (v2, u2) in itertools.combinations(lst, 2):
            (same if v1 == v2 else diff).append((u1, u2))
    singles = [lst[0][1] for lst in groups.values()]
    other = [(rng.choice(singles), rng.choice(singles)) for _ in range(max_pairs)] if len(singles) > 1 else []
    out = {"sentences": len(groups), "records": sum(len(v) for v in groups.values())}
    for name, pairs in (("same_sentence_same_voice", same), ("same_sentence_other_voice", diff),
                        ("different_sentences", [p for p in other if p[0] is not p[1]])):
        pairs = rng.sample(pairs, max_pairs) if len(pairs) > max_pairs else pairs
        d = [normalised_edit_distance(a, b) for a, b in pairs]
        out[name] = {"pairs": len(d), "median": round(statistics.median(d), 4) if d else None}
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", default="data_cache/world_units/train/tts.json")
    ap.add_argument("--canonical-outputs", action="store_true",
                    help="the records were rendered with world_speech canonical_outputs (voice attribution)")
    ap.add_argument("--max-pairs", type=int, default=3000)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    path = Path(a.records)
    if not path.is_file():
        raise SystemExit(f"no records file at {path} (emova train recipe tiny --steps … units writes it)")
    records = json.loads(path.read_text())
    res = {"records_file": str(path), "canonical_outputs": a.canonical_outputs, "output_voice": OUTPUT_VOICE, "output_style": OUTPUT_STYLE,
           **measure(target_groups(records, a.canonical_outputs), a.max_pairs)}
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
