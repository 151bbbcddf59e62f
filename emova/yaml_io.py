"""Reading YAML config files with errors that name the file and the problem (never a parser traceback)."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


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



def config_kwargs(cls: type, data: dict[str, Any], overrides: dict[str, Any] | None, where: Any) -> dict[str, Any]:
    """`data` with `overrides` (None values ignored) on top, as keyword arguments of dataclass `cls`; an unknown
    key is a ValueError naming `where` (the config file) and the keys `cls` knows."""
    data = {**data, **{k: v for k, v in (overrides or {}).items() if v is not None}}
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return data


def load_dataclass_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Dataclass `cls` from the mapping in YAML file `path`, `overrides` on top (`config_kwargs`)."""
    return cls(**config_kwargs(cls, read_yaml_mapping(path), overrides, path))


__all__ = ["config_kwargs", "load_dataclass_config", "parse_yaml", "read_yaml_mapping"]
