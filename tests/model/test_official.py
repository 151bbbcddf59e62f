"""Official checkpoint layouts: strict loading, bit-exact round trips, equality with transformers' parts."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLVisionConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VisionTransformerPretrainedModel

from emova.convert.model import CheckpointMismatchError, convert_checkpoint, load_emova_model
from tests.model.conftest import IMAGE_TOKEN_ID, TEXT, VISION
from tests.model.official_schema import official_manifest

VIS_OFFICIAL = {k: v for k, v in VISION.items() if k != "model_type"}


def write_official(path, layout, tie=False, drop=None, dtype=torch.float32):
    """A random official-layout checkpoint built from the schema (not from our code)."""
    text = {**TEXT, "tie_word_embeddings": tie}
    g = torch.Generator().manual_seed(1)
    state = {k: (torch.randn(shape, generator=g) * 0.05).to(dtype) for k, shape in official_manifest(text, VIS_OFFICIAL, layout).items()}
    for k in [k for k in state if k.endswith("norm.weight") or "layernorm" in k or k.endswith("norm1.weight") or k.endswith("norm2.weight")]:
        state[k] = 1 + state[k]
    if drop:
        state.pop(drop)
    vision = {**VIS_OFFICIAL, "model_type": "qwen2_vl", "type": "Qwen2VisionTower", "trainable": True,
              "pretrained_model_name_or_path": "Emova-ollm/qwen2vit600m", "max_pixels": 12544}
    qwen = {k: v for k, v in text.items() if k != "model_type"}
    if layout == "official-hf":
        cfg = {"architectures": ["EMOVAForConditionalGeneration"], "model_type": "emova",
               "text_config": {**qwen, "model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"]},
               "vision_config": vision, "mm_projector_config": {"type": "MLPProjector", "mlp_depth": 2, "trainable": True},
               "image_token_index": IMAGE_TOKEN_ID, "ignore_index": -100, "tie_word_embeddings": tie}
    else:
        cfg = {**qwen, "architectures": ["EmovaQwen2ForCausalLM"], "model_type": "emova_qwen2",
               "mm_vision_tower": vision, "mm_projector": {"type": "MLPProjector", "mlp_depth": 2},
               "mm_hidden_size": VISION["hidden_size"], "image_aspect_ratio": "native_anyres", "version": "qwen2",
               "image_token_index": IMAGE_TOKEN_ID}
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    save_file(state, str(path / "model.safetensors"))
    return state


@pytest.mark.parametrize("layout", ["official-hf", "official-train"])
@pytest.mark.parametrize("tie", [False, True])
def test_official_layout_loads_strictly_and_round_trips(tmp_path, layout, tie):
    theirs = write_official(tmp_path / "src", layout, tie=tie, dtype=torch.bfloat16)
    model = load_emova_model(tmp_path / "src")
    assert model.config.tie_word_embeddings == tie
    convert_checkpoint(tmp_path / "src", tmp_path / "ours", to="emova")
    convert_checkpoint(tmp_path / "ours", tmp_path / "back", to=layout)
    back = load_file(str(tmp_path / "back" / "model.safetensors"))
    assert set(back) == set(theirs)
    for k, t in theirs.items():  # bit-exact, dtype kept
        assert back[k].dtype == t.dtype and torch.equal(back[k].view(torch.int16), t.view(torch.int16)), k
    other = "official-train" if layout == "official-hf" else "official-hf"
    convert_checkpoint(tmp_path / "back", tmp_path / "other", to=other)
    assert len(load_file(str(tmp_path / "other" / "model.safetensors"))) == len(theirs)


@pytest.mark.parametrize("layout", ["official-hf", "official-train"])
def test_missing_or_extra_keys_are_listed(tmp_path, layout):
    key = "vision_tower.blocks.1.mlp.fc2.bias" if layout == "official-hf" else "model.layers.1.mlp.up_proj.weight"
    write_official(tmp_path / "a", layout, drop=key)
    with pytest.raises(CheckpointMismatchError, match=r"1 missing \[.*(blocks\.1\.mlp\.fc2\.bias|layers\.1\.mlp\.up_proj)"):
        load_emova_model(tmp_path / "a")
    write_official(tmp_path / "b", layout)
    state = load_file(str(tmp_path / "b" / "model.safetensors"))
    prefix = "mm_projector." if layout == "official-hf" else "model.mm_projector."
    state[prefix + "4.weight"] = torch.zeros(2, 2)
    save_file(state, str(tmp_path / "b" / "model.safetensors"))
    with pytest.raises(CheckpointMismatchError, match=r"1 unexpected \[.*mm_projector\.4\.weight"):
        load_emova_model(tmp_path / "b")


def test_matches_reference_composition_of_transformers_classes(tmp_path, processor):
    """Our model == Qwen2ForCausalLM + Qwen2VisionTransformerPretrainedModel + plain MLP, same weights."""
    state = write_official(tmp_path / "ckpt", "official-train")
    ours = load_emova_model(tmp_path / "ckpt")
    vit = Qwen2VisionTransformerPretrainedModel(Qwen2VLVisionConfig(**VIS_OFFICIAL)).eval()
    vit.load_state_dict({k[len("model.vision_tower.vision_tower."):]: v for k, v in state.items()
                         if k.startswith("model.vision_tower.vision_tower.")}, strict=True)
    mlp = nn.Sequential(nn.Linear(VISION["hidden_size"], TEXT["hidden_size"]), nn.GELU(),
                        nn.Linear(TEXT["hidden_size"], TEXT["hidden_size"]))
    mlp.load_state_dict({k[len("model.mm_projector."):]: v for k, v in state.items() if k.startswith("model.mm_projector.")})
    llm = Qwen2ForCausalLM(Qwen2Config(**{k: v for k, v in TEXT.items() if k != "model_type"})).eval()
    llm.load_state_dict({k: v for k, v in state.items() if k.startswith("model.") and "vision_tower" not in k
                         and "mm_projector" not in k} | {"lm_head.weight": state["lm_head.weight"]}, strict=True)

    from PIL import Image
    img = Image.new("RGB", (84, 56), (30, 60, 200))
    batch = processor([{"role": "user", "content": [{"type": "image", "image": img}, {"type": "text", "text": "Shape?"}]}],
                      add_generation_prompt=True)
    ids, pv, grid = batch["input_ids"], batch["pixel_values"], batch["image_grid_thw"]
    with torch.no_grad():
        ref_vis = vit(pv, grid_thw=grid).pooler_output
        ref_proj = mlp(ref_vis)
        emb = llm.get_input_embeddings()(ids).clone()
        emb[ids == IMAGE_TOKEN_ID] = ref_proj
        ref_logits = llm(inputs_embeds=emb).logits
        from emova.model.vision import encode_images
        our_vis = encode_images(ours.vision_tower, pv, grid)
        our_proj = ours.get_image_features(pv, grid)
        our_logits = ours(input_ids=ids, pixel_values=pv, image_grid_thw=grid).logits
        text_ids = processor([{"role": "user", "content": "hello"}])["input_ids"]
        torch.testing.assert_close(ours(input_ids=text_ids).logits, llm(input_ids=text_ids).logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(our_vis, ref_vis, atol=1e-5, rtol=0)
    torch.testing.assert_close(our_proj, ref_proj, atol=1e-5, rtol=0)
    torch.testing.assert_close(our_logits, ref_logits, atol=1e-5, rtol=0)


def test_convert_names_what_is_wrong_with_the_source(tmp_path):
    with pytest.raises(ValueError, match="no such checkpoint directory"):
        convert_checkpoint(tmp_path / "missing", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a checkpoint directory \\(no config.json\\)"):
        convert_checkpoint(tmp_path / "empty", tmp_path / "out")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="invalid JSON"):
        convert_checkpoint(bad, tmp_path / "out")
    (bad / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected a JSON object"):
        convert_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
