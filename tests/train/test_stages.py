"""Stage trainable sets, learning-rate groups, LoRA, records → labelled batches, batch plans."""

from __future__ import annotations

import json

import pytest
import torch

from emova.data.omni_dataset import OmniDataset, batch_plan, collate, mix_records, record_to_messages
from emova.model.config_loader import load_model_config
from emova.model.modeling_emova import EmovaForConditionalGeneration
from emova.model.processor import IGNORE_INDEX, EmovaProcessor, build_image_processor
from emova.model.tokenizer_builder import build_tokenizer
from emova.train.stages import add_lora, apply_stage, merge_lora, param_groups, stage_spec, trainable_names
from tests.train.omni_micro import make_micro_world, write_micro_model


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    return make_micro_world(root / "world"), write_micro_model(root / "micro.yaml")


@pytest.fixture(scope="module")
def processor():
    return EmovaProcessor(build_tokenizer(), build_image_processor(3136, 3136))


def _model(micro) -> EmovaForConditionalGeneration:
    torch.manual_seed(0)
    return EmovaForConditionalGeneration(load_model_config(micro[1]).config)


def _all(model, prefix: str) -> set[str]:
    return {n for n, _ in model.named_parameters() if n.startswith(prefix)}


def test_trainable_sets_per_stage(micro):
    m = _model(micro)
    llm, proj, vit = _all(m, "language_model."), _all(m, "mm_projector."), _all(m, "vision_tower.")
    assert llm and proj and vit
    apply_stage(m, stage_spec(1, 2))
    assert trainable_names(m) == proj  # stage 1: projector only (paper)
    apply_stage(m, stage_spec(1, 2, train_vision_stage1=True))
    assert trainable_names(m) == proj | vit  # tiny-recipe flag: the random ViT trains too
    apply_stage(m, stage_spec(2, 2))
    upper_vit = _all(m, "vision_tower.blocks.1.") | _all(m, "vision_tower.merger.")
    assert trainable_names(m) == llm | proj | upper_vit  # upper half of the 2-block ViT + merger
    assert not trainable_names(m) & (_all(m, "vision_tower.blocks.0.") | _all(m, "vision_tower.patch_embed."))
    apply_stage(m, stage_spec(3, 2))
    assert trainable_names(m) == llm | proj | vit
    with pytest.raises(ValueError, match="stage must be one of"):
        stage_spec(4, 2)


def test_stage2_upper_half_of_a_deeper_vit():
    spec = stage_spec(2, 32)
    assert spec.vision_from_layer == 16 and spec.vision_lr_scale == 1.0


def test_vit_lr_is_ten_times_lower_in_stage3_only(micro):
    m = _model(micro)
    for stage, scale in ((2, 1.0), (3, 0.1)):
        spec = stage_spec(stage, 2)
        apply_stage(m, spec)
        groups = param_groups(m, lr=1e-3, weight_decay=0.01, spec=spec)
        by_param = {id(p): g for g in groups for p in g["params"]}
        for name, p in m.named_parameters():
            if not p.requires_grad:
                assert id(p) not in by_param
                continue
            g = by_param[id(p)]
            want = 1e-3 * (scale if name.startswith("vision_tower.") else 1.0)
            assert g["lr"] == pytest.approx(want) and g["base_lr"] == pytest.approx(want), name
            assert g["weight_decay"] == (0.01 if p.ndim >= 2 and "norm" not in name else 0.0), name
        assert sum(len(g["params"]) for g in groups) == len(trainable_names(m))


def test_lora_trains_adapters_and_merges_back(micro):
    m = _model(micro)
    peft_model = add_lora(m, r=4, alpha=8)
    apply_stage(peft_model, stage_spec(3, 2), lora=True)
    names = trainable_names(peft_model)
    lora = {n for n in names if "lora_" in n}
    assert lora and all(".q_proj." in n or ".v_proj." in n for n in lora)
    assert all("language_model" in n for n in lora)
    assert not {n for n in names if "language_model" in n and "lora_" not in n}  # LLM weights frozen
    assert any("mm_projector" in n for n in names) and any("vision_tower" in n for n in names)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)  # make the adapters matter
    ids = torch.randint(0, 700, (1, 12))
    with torch.no_grad():
        ref = peft_model(input_ids=ids).logits
        merged = merge_lora(peft_model)
        assert isinstance(merged, EmovaForConditionalGeneration)
        assert not any("lora_" in n for n, _ in merged.named_parameters())
        torch.testing.assert_close(merged(input_ids=ids).logits, ref, atol=1e-4, rtol=1e-4)


def test_records_to_batches_mask_all_but_assistant_turns(micro, processor):
    world = micro[0]
    recs = json.loads((world / "train" / "vqa.json").read_text()) + json.loads((world / "train" / "dialogue_speech.json").read_text())
    ds = OmniDataset(recs, processor, image_root=world)
    for i, rec in enumerate(recs):
        item = ds[i]
        ids, labels = item["input_ids"][0], item["labels"][0]
        learned = labels != IGNORE_INDEX
        assert processor.decode(ids[learned], skip_special_tokens=False) == rec["conversations"][1]["value"] + "<|im_end|>\n"
        assert ds.lengths[i] == ids.shape[0]  # the length estimate (no image decoding) is exact
        if rec.get("image"):
            n_img = int((ids == processor.image_token_id).sum())
            assert n_img == int(item["image_grid_thw"].prod()) // 4 and not learned[ids == processor.image_token_id].any()
    batch = collate([ds[0], ds[len(recs) - 1]], processor)
    assert batch["input_ids"].shape[0] == 2 and "pixel_values" in batch
    pad = batch["attention_mask"] == 0
    assert (batch["labels"][pad] == IGNORE_INDEX).all()


def test_unfilled_speech_placeholders_are_refused():
    from emova.data.world.formats import asr_record

    rec = asr_record("asr-x", "hello", "gender-female_emotion-neutral_speed-normal_pitch-normal")
    with pytest.raises(ValueError, match="not filled"):
        record_to_messages(rec)


def test_image_record_messages_keep_image_first_turn(micro):
    world = micro[0]
    rec = json.loads((world / "train" / "vqa.json").read_text())[0]
    msgs = record_to_messages(rec, world)
    assert msgs[0]["role"] == "user" and msgs[0]["content"][0]["type"] == "image"
    assert msgs[0]["content"][1]["text"] == "What color is it?" and msgs[1] == {"role": "assistant", "content": rec["conversations"][1]["value"]}


def test_batch_plan_is_deterministic_and_complete():
    lengths = [5, 50, 7, 49, 6, 51, 8, 48, 9, 47, 4, 52]
    a = batch_plan(lengths, 2, seed=1, epoch=0, window=10)
    assert a == batch_plan(lengths, 2, seed=1, epoch=0, window=10)
    assert a != batch_plan(lengths, 2, seed=1, epoch=1, window=10)
    assert sorted(i for b in a for i in b) == list(range(12))
    for b in a:  # length-grouped: no batch mixes a short and a long item
        assert len({lengths[i] > 20 for i in b}) == 1


def test_mix_records_weights():
    by_task = {"a": [{"id": f"a{i}"} for i in range(10)], "b": [{"id": f"b{i}"} for i in range(10)]}
    mixed = mix_records(by_task, {"a": 0.5, "b": 2.0}, seed=0)
    ids = [r["id"] for r in mixed]
    assert sum(i.startswith("a") for i in ids) == 5 and len(set(i for i in ids if i.startswith("a"))) == 5
    assert sum(i.startswith("b") for i in ids) == 20
    assert mixed == mix_records(by_task, {"a": 0.5, "b": 2.0}, seed=0)


def test_from_scratch_trains_the_llm_in_stage1_and_the_whole_vit_in_stage2(micro):
    m = _model(micro)
    llm, proj, vit = _all(m, "language_model."), _all(m, "mm_projector."), _all(m, "vision_tower.")
    apply_stage(m, stage_spec(1, 2, from_scratch=True))
    assert trainable_names(m) == llm | proj | vit
    apply_stage(m, stage_spec(2, 2, from_scratch=True))
    assert trainable_names(m) == llm | proj | vit
