"""EmovaForConditionalGeneration: vision tower → MLP projector → causal LM, by composition.

    pixel_values ──► vision_tower ──► mm_projector ──┐ masked_scatter into the `<image>` positions
    input_ids ─────► language_model.get_input_embeddings() ─┴─► language_model (any causal LM) ──► logits

Speech needs no module: speech units are ordinary vocabulary tokens `<|speech_k|>`.
Parameter names: `vision_tower.*` (transformers' Qwen2-VL ViT names), `mm_projector.{0,2}.*`,
`language_model.model.*`, `language_model.lm_head.weight`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    GenerationMixin,
    PreTrainedModel,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

from emova.model.configuration_emova import EmovaConfig
from emova.model.projector import build_projector
from emova.model.vision import build_vision_tower, encode_images


class EmovaPreTrainedModel(PreTrainedModel):
    config_class = EmovaConfig
    base_model_prefix = ""
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "Qwen2VLVisionBlock", "SiglipEncoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = float(getattr(self.config.get_text_config(), "initializer_range", 0.02))
        if isinstance(module, nn.Linear):
            module.weight.normal_(mean=0.0, std=std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(mean=0.0, std=std)
        else:
            super()._init_weights(module)


class EmovaForConditionalGeneration(EmovaPreTrainedModel, GenerationMixin):
    """The EMOVA omni-modal LM. Works with and without images; `generate` accepts pixel_values."""

    def __init__(self, config: EmovaConfig) -> None:
        super().__init__(config)
        self.vision_tower = build_vision_tower(config.vision_config)
        self.mm_projector = build_projector(
            config.mm_projector_config, config.vision_output_size, config.text_config.hidden_size
        )
        self.language_model = AutoModelForCausalLM.from_config(config.text_config)
        if config.tie_word_embeddings:
            self._tied_weights_keys = {"language_model.lm_head.weight": "language_model.model.embed_tokens.weight"}
        self.post_init()

    # ---- plumbing the generation / PEFT / resize code expects ----------------------------------
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    def get_decoder(self) -> nn.Module:
        return self.language_model.get_decoder()

    # ---- vision ----------------------------------------------------------------------------------
    def get_image_features(
        self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Projected image tokens of all images, concatenated: (N_image_tokens, D_llm)."""
        feats = encode_images(self.vision_tower, pixel_values, image_grid_thw)  # (N, D_vision)
        proj_dtype = next(self.mm_projector.parameters()).dtype
        return self.mm_projector(feats.to(proj_dtype))  # (N, D_llm)

    def merge_image_features(
        self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor, image_features: torch.Tensor
    ) -> torch.Tensor:
        """Write image_features (N, D) into the N `<image>` positions of inputs_embeds (B, T, D)."""
        mask = input_ids == self.config.image_token_index  # (B, T)
        n_tokens, n_features = int(mask.sum()), int(image_features.shape[0])
        if n_tokens != n_features:
            raise ValueError(
                f"Image features and image tokens do not match: input_ids hold {n_tokens} `<image>` tokens "
                f"(id {self.config.image_token_index}) but the images give {n_features} features. Build inputs "
                f"with EmovaProcessor, which repeats `<image>` once per vision token."
            )
        mask3 = mask.unsqueeze(-1).expand_as(inputs_embeds)  # (B, T, D)
        return inputs_embeds.masked_scatter(mask3, image_features.to(inputs_embeds.device, inputs_embeds.dtype))

    def embed_inputs(
        self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None, check_images: bool = True,
    ) -> torch.Tensor:
        """input_ids (B, T) → the LLM's input embeddings (B, T, D), image features written into the `<image>`
        positions; without pixel_values, `<image>` tokens are an error when `check_images` (a prompt, not a
        continuation of one)."""
        embeds = self.get_input_embeddings()(input_ids)
        if pixel_values is not None:
            return self.merge_image_features(input_ids, embeds, self.get_image_features(pixel_values, image_grid_thw))
        n_img = int((input_ids == self.config.image_token_index).sum()) if check_images else 0
        if n_img:
            raise ValueError(f"input_ids hold {n_img} `<image>` tokens but no pixel_values were given")
        return embeds

    # ---- forward / generate ----------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Any | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if cache is None and "past_key_values" in kwargs:
            cache = kwargs.pop("past_key_values")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            prefill = cache is None or cache.get_seq_length() == 0
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grid_thw, check_images=prefill)
        elif pixel_values is not None:
            raise ValueError("pixel_values need input_ids (to find the `<image>` positions), not inputs_embeds")
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: Any | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        is_first_iteration: bool | None = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(
            input_ids,
            cache=cache,
            attention_mask=attention_mask,
            inputs_embeds=inputs_embeds,
            is_first_iteration=is_first_iteration,
            **kwargs,
        )
        if not is_first_iteration and kwargs.get("use_cache", True):
            # images were consumed at prefill; generate only drops pixel_values by itself
            inputs.pop("pixel_values", None)
            inputs.pop("image_grid_thw", None)
        return inputs

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: torch.LongTensor | None = None,
        **model_kwargs: Any,
    ) -> tuple[torch.LongTensor | None, dict[str, Any]]:
        """generate's row expansion (beam search, num_return_sequences) repeats every tensor row by row, which for
        pixel_values (one row per *patch*) would interleave the patches of each image; the images of each sample are
        repeated as whole blocks instead."""
        pixel_values = model_kwargs.pop("pixel_values", None)
        grid = model_kwargs.pop("image_grid_thw", None)
        out_ids, model_kwargs = super()._expand_inputs_for_generation(expand_size, is_encoder_decoder, input_ids,
                                                                      **model_kwargs)
        if pixel_values is not None and grid is not None and input_ids is not None and expand_size > 1:
            pixel_values, grid = self._repeat_images(input_ids, pixel_values, grid, expand_size)
        if pixel_values is not None:
            model_kwargs["pixel_values"] = pixel_values
        if grid is not None:
            model_kwargs["image_grid_thw"] = grid
        return out_ids, model_kwargs

    def _repeat_images(self, input_ids: torch.Tensor, pixel_values: torch.Tensor, grid: torch.Tensor,
                       n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Each sample's images (its rows of pixel_values and image_grid_thw, in order) repeated n times as a block."""
        needs = (input_ids == self.config.image_token_index).sum(1).tolist()  # image tokens per sample
        patches = [int(p) for p in grid.prod(-1).tolist()]
        per_token = sum(patches) // max(1, sum(needs))  # patches per image token (the merge factor)
        values, grids, img, row = [], [], 0, 0
        for need in needs:
            first_img, first_row, got = img, row, 0
            while got < need and img < len(patches):
                got, row, img = got + patches[img] // per_token, row + patches[img], img + 1
            values += [pixel_values[first_row:row]] * n
            grids += [grid[first_img:img]] * n
        return torch.cat(values), torch.cat(grids)

    # ---- which parts train -----------------------------------------------------------------------
    def set_trainable(
        self, *, llm: bool, projector: bool, vision: bool, vision_from_layer: int | None = None
    ) -> None:
        """Freeze/unfreeze the three parts. `vision_from_layer=k` trains ViT blocks >= k plus the merger
        (EMOVA stage 2 trains the upper half of the ViT)."""
        self.language_model.requires_grad_(llm)
        self.mm_projector.requires_grad_(projector)
        self.vision_tower.requires_grad_(vision and vision_from_layer is None)
        if vision and vision_from_layer is not None:
            blocks = getattr(self.vision_tower, "blocks", None)
            if blocks is None:
                raise ValueError("vision_from_layer is only supported for the Qwen2-VL vision tower")
            for i, block in enumerate(blocks):
                block.requires_grad_(i >= vision_from_layer)
            self.vision_tower.merger.requires_grad_(True)


def register_auto_classes() -> None:
    """Make `AutoConfig` / `AutoModelForCausalLM` / `AutoModelForImageTextToText` know `emova` (idempotent)."""
    try:
        AutoConfig.register("emova", EmovaConfig)
    except ValueError:
        pass  # already registered
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        try:
            auto.register(EmovaConfig, EmovaForConditionalGeneration)
        except ValueError:
            pass


register_auto_classes()

__all__ = ["EmovaForConditionalGeneration", "EmovaPreTrainedModel", "register_auto_classes"]
