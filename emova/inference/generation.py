"""KV-cached token generation, one token at a time, for batch size 1.

A plain loop over the model's forward with a `DynamicCache`: the prompt (and its images) once, then one
token per step. It is a generator, so callers (the streaming path) see every token as it is made.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import DynamicCache, StaticCache


@dataclass
class GenerationSettings:
    """Decoding settings. temperature 0 = greedy (the default: deterministic)."""

    max_new_tokens: int = 1024
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    cache: str = "static"  # "static": preallocated (prompt + max_new_tokens), no per-step concatenation

    def __post_init__(self) -> None:
        if self.cache not in ("static", "dynamic"):
            raise ValueError(f"cache must be 'static' or 'dynamic', got {self.cache!r}")
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")


def _pick(logits: torch.Tensor, s: GenerationSettings, gen: torch.Generator | None) -> int:
    """logits (V,) → next token id."""
    if s.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float() / s.temperature, dim=-1)
    if s.top_p < 1:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < s.top_p  # always keeps the top token
        probs = torch.zeros_like(probs).scatter_(0, idx[keep], sorted_p[keep])
    return int(torch.multinomial(probs, 1, generator=gen))


@torch.inference_mode()
def generate_tokens(
    model: Any, inputs: dict[str, torch.Tensor], stop_ids: set[int], settings: GenerationSettings
) -> Iterator[int]:
    """Yield new token ids until a stop id (not yielded) or max_new_tokens. `inputs`: the processor's
    output for ONE conversation (input_ids (1, T) [, pixel_values, image_grid_thw])."""
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    ids = inputs["input_ids"].to(device)
    kwargs: dict[str, Any] = {}
    if "pixel_values" in inputs:
        kwargs["pixel_values"] = inputs["pixel_values"].to(device, dtype)
        kwargs["image_grid_thw"] = inputs["image_grid_thw"].to(device)
    gen = None
    if settings.seed is not None:
        gen = torch.Generator(device=device).manual_seed(settings.seed)
    text_config = model.config.get_text_config()
    if settings.cache == "static":
        cache = StaticCache(config=text_config, max_cache_len=ids.shape[1] + settings.max_new_tokens)
    else:
        cache = DynamicCache(config=text_config)
    out = model(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1, **kwargs)
    for _ in range(settings.max_new_tokens):
        token = _pick(out.logits[0, -1], settings, gen)
        if token in stop_ids:
            return
        yield token
        step = torch.tensor([[token]], device=device)
        out = model(input_ids=step, cache=cache, use_cache=True, logits_to_keep=1)


__all__ = ["GenerationSettings", "generate_tokens"]
