"""EmovaConfig: one composite config = LLM (`text_config`) + vision tower (`vision_config`) + projector.

Field names follow the released HF checkpoints (`model_type: "emova"`, `text_config`, `vision_config`,
`mm_projector_config {type: MLPProjector, mlp_depth: 2}`, `image_token_index`), so an official
`config.json` maps onto this class after `emova.convert.model.official_config_to_ours` has normalised
the vision part (their `vision_config.model_type` is "qwen2_vl" plus wrapper-only keys).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import PreTrainedConfig, SubConfigSpec

#: vision tower families we can build (config model_type → human name)
VISION_MODEL_TYPES = {"qwen2_vl_vision": "Qwen2-VL ViT", "siglip_vision_model": "SigLIP"}
PROJECTOR_TYPES = ("MLPProjector",)
_PROJECTOR_KEYS = {"type", "mlp_depth", "trainable"}  # `trainable` appears in the official configs


def validate_projector_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Return a normalised copy of `mm_projector_config`; unknown keys or values raise ValueError."""
    unknown = set(cfg) - _PROJECTOR_KEYS
    if unknown:
        raise ValueError(f"mm_projector_config: unknown keys {sorted(unknown)}; accepted: {sorted(_PROJECTOR_KEYS)}")
    out = {"type": cfg.get("type", "MLPProjector"), "mlp_depth": int(cfg.get("mlp_depth", 2))}
    if out["type"] not in PROJECTOR_TYPES:
        raise ValueError(f"mm_projector_config.type={out['type']!r}; accepted: {list(PROJECTOR_TYPES)}")
    if out["mlp_depth"] < 1:
        raise ValueError(f"mm_projector_config.mlp_depth must be >= 1, got {out['mlp_depth']}")
    if "trainable" in cfg:
        out["trainable"] = bool(cfg["trainable"])
    return out


@strict
class EmovaConfig(PreTrainedConfig):
    """Composite config. `text_config`: any causal-LM config (qwen2 by default);
    `vision_config`: `qwen2_vl_vision` (default) or `siglip_vision_model`."""

    model_type = "emova"
    attribute_map = {"image_token_id": "image_token_index"}
    sub_configs_defaults = {
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2"),
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="qwen2_vl_vision"),
    }

    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    mm_projector_config: dict | None = None
    image_token_index: int = 155761  # Qwen2.5 + 4096 speech tokens: `<image>` follows `<|speech_4095|>`
    ignore_index: int = -100
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.mm_projector_config = validate_projector_config(dict(self.mm_projector_config or {}))
        vt = self.vision_config.model_type
        if vt not in VISION_MODEL_TYPES:
            raise ValueError(
                f"vision_config.model_type={vt!r} is not supported; accepted: {sorted(VISION_MODEL_TYPES)}"
            )
        # the LLM's tying decides for the whole model (the released 3B ties, 7B/72B do not)
        self.tie_word_embeddings = bool(getattr(self.text_config, "tie_word_embeddings", False))
        vocab = int(self.text_config.vocab_size)
        if not 0 <= self.image_token_index < vocab:
            raise ValueError(f"image_token_index={self.image_token_index} must lie inside the vocabulary [0, {vocab})")

    # ---- derived sizes -------------------------------------------------------------------------
    @property
    def vision_output_size(self) -> int:
        """Width of one vision token entering the projector (Qwen2-VL: the 2x2 merger's output)."""
        return int(self.vision_config.hidden_size)

    @property
    def hidden_size(self) -> int:  # the LLM width; generate() and PEFT look for it
        return int(self.text_config.hidden_size)


__all__ = ["EmovaConfig", "validate_projector_config", "VISION_MODEL_TYPES"]
