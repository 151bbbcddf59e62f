from __future__ import annotations

import pytest
import torch

from emova.model.configuration_emova import EmovaConfig
from emova.model.modeling_emova import EmovaForConditionalGeneration
from emova.model.processor import EmovaProcessor, build_image_processor
from emova.model.tokenizer_builder import build_tokenizer

# a model even smaller than configs/model/tiny.yaml, sized for unit tests (vocab of the built tokenizer)
TEXT = {"model_type": "qwen2", "vocab_size": 4992, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 1024, "tie_word_embeddings": False}
VISION = {"model_type": "qwen2_vl_vision", "depth": 2, "embed_dim": 32, "num_heads": 2, "mlp_ratio": 2,
          "hidden_size": 48, "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
          "in_channels": 3, "hidden_act": "quick_gelu"}
IMAGE_TOKEN_ID = 4867


def make_config(**text_overrides: object) -> EmovaConfig:
    return EmovaConfig(text_config={**TEXT, **text_overrides}, vision_config=dict(VISION),
                       mm_projector_config={"type": "MLPProjector", "mlp_depth": 2},
                       image_token_index=IMAGE_TOKEN_ID)


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def processor(tokenizer):
    return EmovaProcessor(tokenizer, build_image_processor(56 * 56, 112 * 112))


@pytest.fixture(scope="session")
def model():
    torch.manual_seed(0)
    return EmovaForConditionalGeneration(make_config()).eval()
