"""EMOVA's three training stages: what trains, at which learning rate (paper §3.3, Table 9).

| stage | name                                   | trains                                       | data (tiny world)                |
|-------|----------------------------------------|----------------------------------------------|----------------------------------|
| 1     | vision-language pre-alignment          | projector (+ the whole ViT if `train_vision_stage1`) | captions                  |
| 2     | omni-modal text-centric alignment      | LLM + projector + upper half of the ViT (blocks >= depth//2, merger) | image-text + ASR + TTS |
| 3     | omni-modal instruction tuning          | everything; the ViT at lr x `vision_lr_scale` (0.1) | all tasks incl. spoken dialogue |

`train_vision_stage1` exists for the tiny recipe only: the paper starts from a pretrained Qwen2-VL ViT,
and no pretrained ViT exists offline, so the tiny ViT would otherwise stay random through stage 1.
`from_scratch` (also tiny recipe only) goes one step further, for an LLM that is not pretrained either:
stage 1 then trains the LLM too (a frozen random LLM gives the projector nothing to align to — the caption
loss stays at chance), and stage 2 trains the whole ViT, not its upper half.

With LoRA (`lora_r > 0`) the LLM's trainable set is the LoRA adapters on its q/v projections instead of
its full weights (EMOVA's public recipe trains the full LLM; LoRA is an option for big models on small
hardware); `merge_lora` folds them back so the saved model is a plain `EmovaForConditionalGeneration`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from emova.model.modeling_emova import EmovaForConditionalGeneration

STAGES = (1, 2, 3)
STAGE_NAMES = {1: "vision-language pre-alignment", 2: "omni-modal text-centric alignment",
               3: "omni-modal instruction tuning"}
#: tiny-world tasks per stage (the recipe's defaults; configs may override)
STAGE_TASKS: dict[int, tuple[str, ...]] = {
    1: ("caption",),
    2: ("caption", "vqa", "asr", "tts", "text_qa"),
    3: ("caption", "vqa", "vqa_speech", "dialogue_speech", "text_qa", "asr", "tts"),
}
LORA_TARGETS = r".*language_model\..*\.(q_proj|v_proj)$"


@dataclass(frozen=True)
class TrainableSpec:
    """Which parts of the model train in a stage, and the ViT's learning-rate multiplier."""

    llm: bool
    projector: bool
    vision: bool
    vision_from_layer: int | None = None  # train ViT blocks >= this (and the merger); None = all of it
    vision_lr_scale: float = 1.0


def stage_spec(stage: int, vision_depth: int, *, train_vision_stage1: bool = False,
               vision_lr_scale: float = 0.1, from_scratch: bool = False) -> TrainableSpec:
    """The paper's trainable set for `stage` on a ViT with `vision_depth` blocks (`from_scratch`: the
    tiny recipe's variant for towers that are not pretrained, see the module docstring)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    if stage == 1:
        return TrainableSpec(llm=from_scratch, projector=True, vision=train_vision_stage1 or from_scratch)
    if stage == 2:
        return TrainableSpec(llm=True, projector=True, vision=True,
                             vision_from_layer=None if from_scratch else vision_depth // 2)
    if not 0 < vision_lr_scale <= 1:
        raise ValueError(f"vision_lr_scale must lie in (0, 1], got {vision_lr_scale}")
    return TrainableSpec(llm=True, projector=True, vision=True, vision_lr_scale=vision_lr_scale)


def _base(model: nn.Module) -> EmovaForConditionalGeneration:
    """The EmovaForConditionalGeneration inside a (possibly PEFT-wrapped) model."""
    if isinstance(model, EmovaForConditionalGeneration):
        return model
    inner = model.get_base_model() if hasattr(model, "get_base_model") else None
    if isinstance(inner, EmovaForConditionalGeneration):
        return inner
    raise TypeError(f"expected an EmovaForConditionalGeneration (or a PEFT wrapper of one), got {type(model).__name__}")


def vision_depth(model: nn.Module) -> int:
    blocks = getattr(_base(model).vision_tower, "blocks", None)
    if blocks is not None:
        return len(blocks)
    return int(getattr(_base(model).config.vision_config, "num_hidden_layers", 0))


def apply_stage(model: nn.Module, spec: TrainableSpec, lora: bool = False) -> None:
    """Set requires_grad per `spec`. With LoRA the LLM's own weights stay frozen and only the adapters
    (parameters named `lora_`) train."""
    base = _base(model)
    base.set_trainable(llm=spec.llm and not lora, projector=spec.projector, vision=spec.vision,
                       vision_from_layer=spec.vision_from_layer)
    for name, p in base.language_model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(spec.llm and lora)


def param_groups(model: nn.Module, lr: float, weight_decay: float, spec: TrainableSpec) -> list[dict[str, Any]]:
    """AdamW groups over the trainable parameters: (decay, no-decay) x (ViT, rest); the ViT groups get
    lr x spec.vision_lr_scale. Each group carries `name` and `base_lr` (schedules multiply base_lr).
    Biases, norms and 1-d tensors get no weight decay."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_vision = "vision_tower." in name
        decay = p.ndim >= 2 and "norm" not in name.lower()
        groups.setdefault((is_vision, decay), []).append(p)
    out = []
    for (is_vision, decay), params in sorted(groups.items()):
        g_lr = lr * (spec.vision_lr_scale if is_vision else 1.0)
        out.append({"params": params, "lr": g_lr, "base_lr": g_lr, "weight_decay": weight_decay if decay else 0.0,
                    "name": f"{'vision' if is_vision else 'main'}_{'decay' if decay else 'no_decay'}"})
    if not out:
        raise ValueError("no trainable parameters: check the stage's trainable set")
    return out


def trainable_names(model: nn.Module) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def add_lora(model: EmovaForConditionalGeneration, r: int, alpha: int, dropout: float = 0.0) -> nn.Module:
    """Wrap with PEFT LoRA on the LLM's q/v projections (not the ViT's). Returns the PeftModel."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=LORA_TARGETS, bias="none")
    return get_peft_model(model, cfg)


def merge_lora(model: nn.Module) -> EmovaForConditionalGeneration:
    """Fold LoRA adapters into the base weights; a plain model is returned unchanged."""
    if hasattr(model, "merge_and_unload"):
        merged = model.merge_and_unload()
        if not isinstance(merged, EmovaForConditionalGeneration):
            raise TypeError(f"merging LoRA gave {type(merged).__name__}")
        return merged
    return _base(model)


__all__ = ["LORA_TARGETS", "STAGES", "STAGE_NAMES", "STAGE_TASKS", "TrainableSpec", "add_lora", "apply_stage",
           "merge_lora", "param_groups", "stage_spec", "trainable_names", "vision_depth"]
