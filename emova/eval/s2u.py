"""`emova eval s2u`: what the speech tokenizer's units carry, on held-out speech only.

Reports (JSON + a printed table):
  per            CTC greedy phone error rate per held-out voice (heldout_per split)
  invariance     median normalised edit distance of reduced units: same sentence + voice in two
                 styles (pitch-only, rate-only, both) vs two different sentences, and their ratios
  probes         linear probes (logistic regression, 5-fold CV grouped by sentence) predicting pitch,
                 emotion and speaker from bag-of-units vs from mean/std log-mel; chance = majority class
  usage          unit perplexity over all held-out frames; units per 40 ms check
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from emova.audio import Audio, log_mel
from emova.data.speech.corpus import read_manifest
from emova.eval.metrics import error_rate, normalised_edit_distance, unit_perplexity
from emova.speech.tokenizer import SpeechTokenizer


def _encode_rows(tok: SpeechTokenizer, root: Path, rows: list[dict], progress: bool) -> list[list[int]]:
    out = []
    for i in tqdm(range(0, len(rows), 16), desc="encoding", disable=not progress):
        out += tok.encode_batch([Audio.load(root / r["path"]) for r in rows[i : i + 16]])
    return out


def _probe(X: np.ndarray, y: list[str], groups: list[str]) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_arr = np.array(y)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))
    n_splits = min(5, len(set(groups)))
    if n_splits < 2 or len(set(y)) < 2:
        raise ValueError(f"too few held-out items for a probe ({len(y)} items, {len(set(groups))} sentences)")
    pred = cross_val_predict(clf, X, y_arr, groups=groups, cv=GroupKFold(n_splits=n_splits))
    values, counts = np.unique(y_arr, return_counts=True)
    return {"accuracy": float((pred == y_arr).mean()), "chance": float(counts.max() / counts.sum()),
            "n": int(len(y_arr)), "classes": int(len(values))}


def _style_of(row: dict, field: str) -> str:
    return row["style"].split(f"{field}-")[1].split("_")[0]


def _balance(idx: list[int], labels: list[str], seed: int = 0) -> list[int]:
    """Keep the same number of items per class (deterministic), so chance is 1 / classes."""
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, y in zip(idx, labels):
        by.setdefault(y, []).append(i)
    n = min(len(v) for v in by.values())
    return sorted(i for v in by.values() for i in rng.choice(v, n, replace=False).tolist())


def _speaker_normalise(X: np.ndarray, speakers: list[str]) -> np.ndarray:
    """Subtract each speaker's mean feature vector (unsupervised: no labels used)."""
    X = X.copy()
    spk = np.array(speakers)
    for s in np.unique(spk):
        X[spk == s] -= X[spk == s].mean(0)
    return X


def _style_probes(root: Path, rows: list[dict], units: list[list[int]], codebook: int) -> dict:
    """Pitch is probed where only pitch (and rate) vary (neutral emotion); emotion where pitch is normal.
    Features are speaker-normalised for these two, so a probe has to read the style, not the voice."""
    bag = _bag_of_units(units, codebook)
    mel = _mel_stats(root, rows)
    voices = [r["voice"] for r in rows]
    sentence = [r["group"] for r in rows]
    pitch_idx = [i for i, r in enumerate(rows) if _style_of(r, "emotion") == "neutral"]
    emo_idx = [i for i, r in enumerate(rows) if _style_of(r, "pitch") == "normal" and _style_of(r, "speed") == "normal"]
    out = {}
    for label, idx, field in (("pitch", pitch_idx, "pitch"), ("emotion", emo_idx, "emotion"),
                              ("speaker", list(range(len(rows))), None)):
        idx = _balance(idx, [voices[i] if field is None else _style_of(rows[i], field) for i in idx])
        y = [voices[i] if field is None else _style_of(rows[i], field) for i in idx]
        grp = [sentence[i] for i in idx]
        res = {}
        for name, X in (("units", bag), ("mel_stats", mel)):
            Xi = X[idx]
            if field is not None:
                Xi = _speaker_normalise(Xi, [voices[i] for i in idx])
            res[name] = _probe(Xi, y, grp)
        res["speaker_normalised"] = field is not None
        out[label] = res
    return out


def _bag_of_units(units: list[list[int]], size: int) -> np.ndarray:
    X = np.zeros((len(units), size), dtype=np.float32)
    for i, u in enumerate(units):
        np.add.at(X[i], np.array(u), 1.0)
        X[i] /= max(1, len(u))
    keep = X.sum(0) > 0  # drop never-used units (keeps the probe well-posed)
    return np.sqrt(X[:, keep])


def _mel_stats(root: Path, rows: list[dict]) -> np.ndarray:
    feats = []
    for r in rows:
        m = log_mel(Audio.load(root / r["path"]).samples)
        feats.append(torch.cat([m.mean(-1), m.std(-1)]).numpy())
    return np.stack(feats)


def evaluate_s2u(tokenizer: SpeechTokenizer, corpus: str | Path, max_items: int | None = None,
                 progress: bool = True) -> dict:
    root = Path(corpus)
    report: dict = {"corpus": str(root)}

    # 1. phone error rate per held-out voice
    rows = read_manifest(root, ("heldout_per",))[:max_items]
    per: dict[str, dict] = {}
    for voice in sorted({r["voice"] for r in rows}):
        vr = [r for r in rows if r["voice"] == voice]
        hyps = [tokenizer.recognize_phones(Audio.load(root / r["path"])) for r in tqdm(vr, desc=f"PER {voice}", disable=not progress)]
        per[voice] = {"per": error_rate([r["phones"].split() for r in vr], hyps), "n": len(vr)}
    report["per"] = per

    # 2. style invariance of reduced units
    srows = read_manifest(root, ("heldout_style",))[: (max_items or 10**9) * 4]
    sunits = _encode_rows(tokenizer, root, srows, progress)
    by_group: dict[str, list[int]] = {}
    for i, r in enumerate(srows):
        by_group.setdefault(r["group"], []).append(i)
    red = [tokenizer.reduce(u) for u in sunits]
    kinds = ["pitch_only", "rate_only", "both"]
    same: dict[str, list[float]] = {k: [] for k in kinds}
    diff: list[float] = []
    groups = list(by_group.values())
    for gi, g in enumerate(groups):
        for k, idx in zip(kinds, g[1:]):
            same[k].append(normalised_edit_distance(red[g[0]], red[idx]))
        # a different sentence by the same voice (groups cycle through the voices)
        other = next((h for h in groups[gi + 1 :] if srows[h[0]]["voice"] == srows[g[0]]["voice"]), None)
        if other is not None:
            diff.append(normalised_edit_distance(red[g[0]], red[other[0]]))
    med_diff = statistics.median(diff) if diff else float("nan")
    inv = {"different_sentences": {"median": med_diff, "pairs": len(diff)}}
    for k in kinds:
        m = statistics.median(same[k]) if same[k] else float("nan")
        inv[k] = {"median": m, "ratio": m / med_diff if diff else float("nan"), "pairs": len(same[k])}
    all_same = [x for k in kinds for x in same[k]]
    inv["all_styles"] = {"median": statistics.median(all_same), "ratio": statistics.median(all_same) / med_diff,
                         "pairs": len(all_same)}
    report["invariance"] = inv

    # 3. probes: units vs mel statistics, on every held-out style/probe utterance
    prows = read_manifest(root, ("heldout_probe",))
    if max_items:
        prows = prows[: max_items * 3]
    punits = _encode_rows(tokenizer, root, prows, progress)
    probes = _style_probes(root, srows + prows, sunits + punits, tokenizer.codebook_size)
    report["probes"] = probes

    # 4. usage and timing
    all_units = sunits + punits
    durations = [r["duration"] for r in srows + prows]
    off = [abs(len(u) - d * 25) for u, d in zip(all_units, durations)]
    report["usage"] = {"perplexity": unit_perplexity(all_units), "distinct_units": len({x for u in all_units for x in u}),
                       "max_abs_units_minus_25hz": float(max(off)), "frames": int(sum(len(u) for u in all_units))}
    return report


def format_report(r: dict) -> str:
    lines = ["S2U evaluation (held-out data)", "", "phone error rate (CTC greedy)"]
    for v, x in r["per"].items():
        lines.append(f"  {v:28s} PER {x['per'] * 100:6.2f}%   n={x['n']}")
    inv = r["invariance"]
    lines += ["", "style invariance: median normalised edit distance of reduced units"]
    lines.append(f"  different sentences          {inv['different_sentences']['median']:.3f}")
    for k in ("pitch_only", "rate_only", "both", "all_styles"):
        lines.append(f"  same sentence, {k:13s} {inv[k]['median']:.3f}   ratio {inv[k]['ratio']:.3f}")
    lines += ["", "linear probes (accuracy; chance = majority class)", "  label     units    mel-stats  chance"]
    for k, p in r["probes"].items():
        lines.append(f"  {k:8s} {p['units']['accuracy'] * 100:6.1f}%  {p['mel_stats']['accuracy'] * 100:6.1f}%    "
                     f"{p['units']['chance'] * 100:5.1f}%")
    u = r["usage"]
    lines += ["", f"unit perplexity {u['perplexity']:.1f} ({u['distinct_units']} distinct units over {u['frames']} frames)",
              f"max |units - 25 Hz x duration| = {u['max_abs_units_minus_25hz']:.2f}"]
    return "\n".join(lines)


def run_eval_s2u(model: str, corpus: str, out: str | None, max_items: int | None = None) -> dict:
    tok = SpeechTokenizer.from_pretrained(model)
    report = evaluate_s2u(tok, corpus, max_items=max_items)
    text = format_report(report)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(report, indent=1))
    return report
