"""Vision towers. Qwen2-VL's native-resolution ViT (default) or SigLIP, both transformers' own classes.

The tower module is stored directly (no wrapper), so its parameter names are transformers' names
(`patch_embed.proj.weight`, `blocks.N.attn.qkv.weight`, `merger.mlp.2.weight`, …) — the same names the
released EMOVA checkpoints use below their own prefixes.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel
from transformers.models.siglip.modeling_siglip import SiglipVisionModel


def build_vision_tower(cfg: PreTrainedConfig) -> nn.Module:
    """Instantiate the tower for `cfg.model_type` (random init; weights come from a checkpoint)."""
    if cfg.model_type == "qwen2_vl_vision":
        return Qwen2VisionTransformerPretrainedModel._from_config(cfg)
    if cfg.model_type == "siglip_vision_model":
        return SiglipVisionModel._from_config(cfg)
    raise ValueError(f"unsupported vision tower {cfg.model_type!r}; accepted: qwen2_vl_vision, siglip_vision_model")


def tokens_per_image(cfg: PreTrainedConfig, image_grid_thw: torch.Tensor | None = None) -> list[int]:
    """How many vision tokens each image yields (= how many `<image>` placeholders it needs)."""
    if cfg.model_type == "qwen2_vl_vision":
        if image_grid_thw is None:
            raise ValueError("Qwen2-VL vision tower needs image_grid_thw (num_images, 3)")
        merge = int(cfg.spatial_merge_size) ** 2
        return [int(t * h * w) // merge for t, h, w in image_grid_thw.tolist()]
    n = (int(cfg.image_size) // int(cfg.patch_size)) ** 2
    count = 1 if image_grid_thw is None else len(image_grid_thw)
    return [n] * count


def encode_images(
    tower: nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None
) -> torch.Tensor:
    """Run the tower and return all images' tokens concatenated: (N_tokens_total, D_vision).

    Qwen2-VL: pixel_values (N_patches, C*T*P*P) flattened patches + image_grid_thw (num_images, 3);
    the 2x2-merged tokens come back as `pooler_output` (N_patches / 4, hidden_size).
    SigLIP: pixel_values (num_images, 3, H, W); every patch token is kept.
    """
    if isinstance(tower, Qwen2VisionTransformerPretrainedModel):
        if image_grid_thw is None:
            raise ValueError("image_grid_thw is required with the Qwen2-VL vision tower")
        out = tower(pixel_values.to(tower.get_dtype()), grid_thw=image_grid_thw)
        feats = out.pooler_output if hasattr(out, "pooler_output") else out
        return feats  # (N_merged, D)
    if isinstance(tower, SiglipVisionModel):
        hidden = tower(pixel_values=pixel_values.to(tower.dtype)).last_hidden_state  # (B, N, D)
        return hidden.reshape(-1, hidden.shape[-1])
    raise TypeError(f"unsupported vision tower {type(tower).__name__}")
