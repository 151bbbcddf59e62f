"""Loss curves: every training loop logs a CSV a person can plot, and we plot it for them."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_log(log_path: str | Path, keys: tuple[str, ...], out: str | Path | None = None,
             ylabel: str | None = None) -> Path | None:
    """Plot columns `keys` of a training CSV against `step` (log scale) as a PNG.

    Blank cells (a term not active yet) are gaps; a column filled in at most half the rows (one logged every few
    steps) is drawn as its points, joined. Returns the PNG path, or None when matplotlib is
    absent or the log is empty."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    log_path = Path(log_path)
    rows = list(csv.DictReader(open(log_path, newline="")))
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for k in keys:
        vals = [max(1e-4, float(r[k])) if r.get(k) not in (None, "") else float("nan") for r in rows]
        present = [(s, v) for s, v in zip(steps, vals) if v == v]
        if present and len(present) <= len(rows) // 2:  # logged every few rows (a validation loss): join its points
            ax.plot(*zip(*present), marker="o", markersize=3, label=k)
        else:
            ax.plot(steps, vals, label=k)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    png = Path(out) if out else log_path.with_suffix(".png")
    fig.savefig(png)
    plt.close(fig)
    return png
