"""Where bundled models live and how names resolve to directories."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
BUNDLED = {"emova-tiny": ASSETS / "emova-tiny"}


def resolve_model_dir(name_or_path: str | Path, component: str | None = None) -> Path:
    """A bundled name (`emova-tiny`) or a local directory → the directory holding `component`."""
    s = str(name_or_path)
    base = BUNDLED.get(s, Path(s).expanduser())
    if not base.exists():
        known = ", ".join(BUNDLED)
        raise ValueError(f"no model at {s!r}: give a bundled name ({known}) or an existing local directory "
                         "(nothing is ever downloaded)")
    if component and (base / component).is_dir():
        return base / component
    return base
