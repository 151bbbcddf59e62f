"""Model sizes as data: `emova/configs/model/*.yaml` → validated EmovaConfig (+ image settings), and parameter
counts on the meta device (nothing is allocated)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig

from emova.model.configuration_emova import EmovaConfig
from emova.yaml_io import read_yaml_mapping

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"
_TOP_KEYS = {"name", "description", "text_config", "vision_config", "mm_projector_config",
             "image_token_index", "image_processor", "official"}
_IMAGE_KEYS = {"min_pixels", "max_pixels", "patch_size", "merge_size", "temporal_patch_size"}
_OFFICIAL_KEYS = {"hf_repo", "train_repo", "params", "params_source", "notes"}


@dataclass
class ModelSpec:
    """One model size: the EmovaConfig plus what is not part of it."""

    name: str
    config: EmovaConfig
    image_processor: dict[str, int] = field(default_factory=dict)
    official: dict[str, Any] = field(default_factory=dict)
    description: str = ""


def _check_keys(where: str, got: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(got) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; accepted: {sorted(allowed)}")


def _check_sub_config(where: str, data: dict[str, Any]) -> None:
    """Every key must be a field of the named transformers config class (typos are errors)."""
    if "model_type" not in data:
        raise ValueError(f"{where}: model_type is required")
    reference = AutoConfig.for_model(data["model_type"])
    unknown = sorted(k for k in data if k != "model_type" and not hasattr(reference, k))
    if unknown:
        raise ValueError(f"{where}: keys {unknown} are not fields of {type(reference).__name__}")


def resolve_config_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no model config {str(name_or_path)!r}; give a .yaml path or one of {known}")


def load_model_config(name_or_path: str | Path) -> ModelSpec:
    """Load `emova/configs/model/<name>.yaml` (or a path) and validate it; unknown keys are errors."""
    path = resolve_config_path(name_or_path)
    data = read_yaml_mapping(path)
    _check_keys(str(path), data, _TOP_KEYS)
    for key in ("text_config", "vision_config"):
        if not isinstance(data.get(key), dict):
            raise ValueError(f"{path}: {key} (a mapping) is required")
        _check_sub_config(f"{path}:{key}", data[key])
    image = dict(data.get("image_processor") or {})
    _check_keys(f"{path}:image_processor", image, _IMAGE_KEYS)
    official = dict(data.get("official") or {})
    _check_keys(f"{path}:official", official, _OFFICIAL_KEYS)
    config = EmovaConfig(
        text_config=dict(data["text_config"]),
        vision_config=dict(data["vision_config"]),
        mm_projector_config=dict(data.get("mm_projector_config") or {}),
        image_token_index=int(data["image_token_index"]),
    )
    return ModelSpec(str(data.get("name", path.stem)), config, image, official, str(data.get("description", "")))


def count_parameters(config: EmovaConfig) -> dict[str, int]:
    """Instantiate on the meta device and count parameters (tied weights once), per part and in total."""
    from emova.model.modeling_emova import EmovaForConditionalGeneration

    with torch.device("meta"):
        model = EmovaForConditionalGeneration(config)
    parts = {
        "vision_tower": model.vision_tower,
        "mm_projector": model.mm_projector,
        "language_model": model.language_model,
    }
    counts = {name: sum(p.numel() for p in mod.parameters()) for name, mod in parts.items()}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


def meta_model(config: EmovaConfig) -> torch.nn.Module:
    """An EmovaForConditionalGeneration on the meta device (for key/shape checks)."""
    from emova.model.modeling_emova import EmovaForConditionalGeneration

    with torch.device("meta"):
        return EmovaForConditionalGeneration(config)
