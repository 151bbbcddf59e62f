"""An anchor corpus: every training sentence of a speech corpus said once more by one voice, neutrally.

The voice-normalising S2U fine-tune (`emova.train.s2u_anchor`) teaches the tokenizer to give any voice's speech
the units the anchor voice's speech of the same words gets, so a new speaker is heard in units the LLM and the
U2S already know. Layout is a corpus directory's (`emova.data.speech.corpus`): wav/, parts/, manifest.jsonl;
split `anchor`, one group per distinct text, named `anchor_<index>`.
"""

from __future__ import annotations

import json
from pathlib import Path

from emova.data.speech.corpus import GroupPlan, read_manifest, render_plans
from emova.data.speech.voices import HELD_OUT_KEYS, voice_by_key
from emova.styles import Style

ANCHOR_VOICE = "flite:kal16"


def anchor_texts(corpus: str | Path, splits: tuple[str, ...]) -> list[str]:
    """The distinct texts of `splits`, in manifest order."""
    seen: dict[str, None] = {}
    for r in read_manifest(corpus, splits):
        seen.setdefault(r["text"], None)
    return list(seen)


def render_anchor_corpus(corpus: str | Path, out_dir: str | Path, splits: tuple[str, ...] = ("train", "fsdd_train"),
                         voice: str = ANCHOR_VOICE, workers: int = 2, progress: bool = True) -> Path:
    """Render each distinct text of `corpus`'s `splits` in `voice`, neutral style, normal pitch and speed.
    Resumable (one part file per text); returns the manifest path."""
    if voice in HELD_OUT_KEYS:
        raise ValueError(f"{voice} is a held-out voice; the anchor must be a training voice")
    v = voice_by_key(voice)
    style = str(Style(gender=v.gender))
    texts = anchor_texts(corpus, splits)
    if not texts:
        raise ValueError(f"corpus {corpus} has no rows in splits {list(splits)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "anchor_config.json").write_text(json.dumps({"corpus": str(corpus), "splits": list(splits),
                                                        "voice": voice, "n_texts": len(texts)}, indent=1))
    plans = [GroupPlan(f"anchor_{i:05d}", "anchor", t, voice, [style]) for i, t in enumerate(texts)]
    return render_plans(out, plans, workers, progress, f"rendering anchor ({voice})")
