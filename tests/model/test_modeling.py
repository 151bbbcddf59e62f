from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

from emova.model.modeling_emova import EmovaForConditionalGeneration
from tests.model.conftest import IMAGE_TOKEN_ID, make_config


def _image_inputs(processor, add_generation_prompt=True):
    img = Image.new("RGB", (56, 56), (10, 200, 10))
    msgs = [{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Color?"}]}]
    return processor(msgs, add_generation_prompt=add_generation_prompt)


def test_masked_scatter_places_features(model, processor):
    batch = _image_inputs(processor)
    ids = batch["input_ids"]
    feats = model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])  # (N, D)
    embeds = model.get_input_embeddings()(ids)
    merged = model.merge_image_features(ids, embeds, feats)
    pos = ids[0] == IMAGE_TOKEN_ID
    assert torch.equal(merged[0, pos], feats)  # features in order, at the placeholders
    assert torch.equal(merged[0, ~pos], embeds[0, ~pos])  # text untouched


def test_count_mismatch_is_a_clear_error(model, processor):
    batch = _image_inputs(processor)
    ids = batch["input_ids"].clone()
    ids[0, (ids[0] == IMAGE_TOKEN_ID).nonzero()[0]] = 5  # drop one placeholder
    with pytest.raises(ValueError, match="Image features and image tokens do not match"):
        model(input_ids=ids, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
    with pytest.raises(ValueError, match="no pixel_values"):
        model(input_ids=batch["input_ids"])


def test_save_load_auto_classes(model, tmp_path, processor):
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "emova"
    batch = _image_inputs(processor)
    ref = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    for auto in (AutoModelForCausalLM, AutoModelForImageTextToText):
        loaded = auto.from_pretrained(tmp_path).eval()
        assert isinstance(loaded, EmovaForConditionalGeneration)
        torch.testing.assert_close(loaded(**{k: v for k, v in batch.items() if k != "labels"}).logits, ref)


def test_tied_embeddings_save_load(tmp_path):
    m = EmovaForConditionalGeneration(make_config(tie_word_embeddings=True))
    lm = m.language_model
    assert lm.lm_head.weight.data_ptr() == lm.model.embed_tokens.weight.data_ptr()
    m.save_pretrained(tmp_path)
    m2 = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(m2.language_model.lm_head.weight, lm.model.embed_tokens.weight)


def test_generate_with_image_and_units(model, processor):
    batch = _image_inputs(processor)
    labels = batch.pop("labels")
    assert (labels == -100).all()
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 6)
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    # greedy generate == step-by-step argmax without cache (checks the image reaches every step)
    ids = batch["input_ids"]
    for _ in range(3):
        logits = model(input_ids=ids, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"]).logits
        ids = torch.cat([ids, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    text = processor([{"role": "user", "content": [{"type": "units", "units": [1, 1, 2]}]}], add_generation_prompt=True)
    out2 = model.generate(input_ids=text["input_ids"], attention_mask=text["attention_mask"], max_new_tokens=4,
                          do_sample=False)
    assert out2.shape[1] == text["input_ids"].shape[1] + 4


def test_set_trainable(model):
    model.set_trainable(llm=False, projector=True, vision=True, vision_from_layer=1)
    assert not any(p.requires_grad for p in model.language_model.parameters())
    assert all(p.requires_grad for p in model.mm_projector.parameters())
    assert not any(p.requires_grad for p in model.vision_tower.blocks[0].parameters())
    assert all(p.requires_grad for p in model.vision_tower.blocks[1].parameters())
    assert not model.vision_tower.patch_embed.proj.weight.requires_grad
    model.set_trainable(llm=True, projector=True, vision=True)
