"""The lean decoder computes what the transformers forward computes, and says which models it cannot run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emova.inference.fast_decode import LeanDecoder, lean_unsupported
from emova.inference.generation import (
    GenerationSettings,
    _LeanRunner,
    _runner,
    _TransformersRunner,
    generate_tokens,
)
from emova.model.modeling_emova import EmovaForConditionalGeneration
from tests.model.conftest import make_config


def _prompt(emova, image):
    inputs = emova._encode([{"role": "user", "content": "Describe the image, then say more."}], [image])
    return {k: v for k, v in inputs.items() if k in ("input_ids", "pixel_values", "image_grid_thw")}


def _random_model(seed: int = 0) -> EmovaForConditionalGeneration:
    """The tiny test model with every bias and norm weight drawn too (initialisation leaves them 0 / 1)."""
    torch.manual_seed(seed)
    model = EmovaForConditionalGeneration(make_config()).eval()
    with torch.no_grad():
        for name, p in model.language_model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("cache", ["static", "dynamic"])
def test_logits_match_transformers(emova, image, cache):
    model = _random_model()
    inputs = _prompt(emova, image)
    settings = GenerationSettings(max_new_tokens=40, cache=cache)
    ref, lean = _TransformersRunner(model, inputs, settings), _LeanRunner(model, inputs, settings)
    with torch.inference_mode():
        torch.testing.assert_close(lean.prefill(), ref.prefill(), atol=1e-4, rtol=1e-4)
        g = torch.Generator().manual_seed(0)
        for n in (1, 1, 4, 1, 3, 2, 1):  # single tokens and multi-token (draft) steps, some partly cropped
            ids = torch.randint(0, 4000, (n,), generator=g).tolist()
            torch.testing.assert_close(lean.step(ids), ref.step(ids), atol=1e-4, rtol=1e-4)
            if n > 2:
                lean.crop(n - 2)
                ref.crop(n - 2)
        assert lean.decoder.length == ref.cache.get_seq_length()


def test_generation_uses_the_lean_decoder_and_gives_the_same_tokens(emova, image, monkeypatch):
    inputs = _prompt(emova, image)
    slow = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=30, lean=False)))
    steps = []
    forward = LeanDecoder.forward
    monkeypatch.setattr(LeanDecoder, "forward", lambda self, h, keep=1: steps.append(h.shape[0]) or forward(self, h, keep))
    fast = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=30)))
    assert fast == slow
    assert len(steps) == 30 and steps[0] == inputs["input_ids"].shape[1]  # the prompt, then one pass per token


def test_bf16_model_matches_its_transformers_forward(image, emova):
    torch.manual_seed(1)
    model = EmovaForConditionalGeneration(make_config()).eval().to(torch.bfloat16)
    inputs = _prompt(emova, image)
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    settings = GenerationSettings(max_new_tokens=8)
    ref, lean = _TransformersRunner(model, inputs, settings), _LeanRunner(model, inputs, settings)
    with torch.inference_mode():
        torch.testing.assert_close(lean.prefill().float(), ref.prefill().float(), atol=0.1, rtol=0.05)
        torch.testing.assert_close(lean.step([5, 6]).float(), ref.step([5, 6]).float(), atol=0.1, rtol=0.05)


class _Wrapped(nn.Linear):
    """Stands for a LoRA or quantised layer: a Linear subclass whose forward adds something."""


@pytest.mark.parametrize(("overrides", "reason"), [
    ({"model_type": "llama"}, "text model type 'llama'"),
    ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope type"),
    ({"use_sliding_window": True, "sliding_window": 16}, "sliding-window"),
    ({"hidden_act": "gelu"}, "activation"),
])
def test_unsupported_models_keep_the_transformers_forward(overrides, reason):
    torch.manual_seed(0)
    model = EmovaForConditionalGeneration(make_config(**overrides)).eval()
    why = lean_unsupported(model)
    assert why is not None and reason in why
    ids = {"input_ids": torch.tensor([[1, 2, 3]])}
    assert isinstance(_runner(model, ids, GenerationSettings(max_new_tokens=2)), _TransformersRunner)
    with pytest.raises(ValueError, match="cannot run this model"):
        LeanDecoder(model, 8)


def test_wrapped_layers_keep_the_transformers_forward():
    torch.manual_seed(0)
    model = EmovaForConditionalGeneration(make_config()).eval()
    assert lean_unsupported(model) is None
    layer = model.language_model.model.layers[1].mlp
    old = layer.up_proj
    layer.up_proj = _Wrapped(old.in_features, old.out_features, bias=False)
    assert "layer 1 mlp.up_proj is a _Wrapped" in lean_unsupported(model)
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    lora = peft.get_peft_model(EmovaForConditionalGeneration(make_config()).eval(),
                               peft.LoraConfig(r=2, target_modules=["q_proj"]))
    assert lean_unsupported(lora) is not None


def test_cache_bounds_are_errors(emova):
    dec = LeanDecoder(emova.model, 4)
    dec.step([1, 2, 3])
    with pytest.raises(ValueError, match="holds 4 positions; 5 asked"):
        dec.step([4, 5])
    with pytest.raises(ValueError, match="cannot crop 4 of 3"):
        dec.crop(4)
    dec.crop(2)
    assert dec.length == 1 and dec.step([7]).shape == (1, emova.model.config.text_config.vocab_size)
