"""EMOVA's multimodal LM: config, model, processor, prompts, size configs (see docs/running_official_models.md)."""

from emova.model.config_loader import ModelSpec, count_parameters, load_model_config, meta_model
from emova.model.configuration_emova import EmovaConfig
from emova.model.modeling_emova import EmovaForConditionalGeneration, register_auto_classes
from emova.model.processor import (
    IGNORE_INDEX,
    EmovaProcessor,
    TokenizationMismatchError,
    build_image_processor,
    reduce_units,
    speech_token_ids_from_added_tokens,
)
from emova.model.tokenizer_builder import build_tokenizer

__all__ = [
    "IGNORE_INDEX", "EmovaConfig", "EmovaForConditionalGeneration", "EmovaProcessor", "ModelSpec",
    "TokenizationMismatchError", "build_image_processor", "build_tokenizer", "count_parameters",
    "load_model_config", "meta_model", "reduce_units", "register_auto_classes", "speech_token_ids_from_added_tokens",
]
