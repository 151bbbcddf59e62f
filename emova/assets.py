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


def read_config(directory: str | Path, what: str) -> dict:
    """`directory/config.json` as a dict; a clear ValueError when it is missing, not JSON or not an object."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise ValueError(f"{directory} is not a {what} directory (no config.json)")
    return read_json_object(path)


def read_json_object(path: str | Path) -> dict:
    """A JSON file holding an object, as a dict; a clear ValueError naming the file when it is missing,
    unreadable, not JSON or not an object."""
    import json

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data
