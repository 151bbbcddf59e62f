"""Reading YAML config files with errors that name the file and the problem (never a parser traceback)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def parse_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load(text)`; a syntax error becomes a ValueError naming `where`, the line and the problem."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML{at}: {problem}") from None


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The mapping at the top of a YAML file ({} for an empty file); unreadable files, syntax errors and
    anything but a mapping are ValueErrors naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such config file") from None
    except (IsADirectoryError, UnicodeDecodeError, PermissionError) as e:
        raise ValueError(f"{path}: cannot read it as a YAML config ({type(e).__name__})") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys at the top, got {type(data).__name__}")
    return data


__all__ = ["parse_yaml", "read_yaml_mapping"]


def load_dataclass_config(cls, path, overrides: dict | None = None):
    """`cls(**mapping)` from a YAML file, with `overrides` (None values ignored) on top; unknown keys are named."""
    from dataclasses import fields

    data = read_yaml_mapping(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)}; known: {sorted(known)}")
    return cls(**data)
