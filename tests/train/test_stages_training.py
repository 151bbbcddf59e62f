"""The stage loop on a micro model: loss falls, the final model reloads, resume continues exactly."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from emova.data.omni_dataset import OmniDataset, collate, load_task_records
from emova.model.config_loader import load_model_config
from emova.model.modeling_emova import EmovaForConditionalGeneration
from emova.model.processor import EmovaProcessor
from emova.train.omni import OmniTrainConfig, _offline_tokenizer, parse_overrides, train_stage
from tests.train.omni_micro import make_micro_world, write_micro_model


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro_train")
    _offline_tokenizer()  # built once per process (seconds), here rather than inside the first test
    return make_micro_world(root / "world"), write_micro_model(root / "micro.yaml")


def _cfg(micro, out, **kw) -> OmniTrainConfig:
    base = dict(stage=3, world_dir=str(micro[0]), model=str(micro[1]), out_dir=str(out), max_steps=8, batch_size=4,
                lr=3e-3, warmup_steps=2, save_every=5, log_every=1, bf16=False, progress=False)
    return OmniTrainConfig(**{**base, **kw})


def _log(out) -> list[dict]:
    return list(csv.DictReader(open(out / "log.csv", newline="")))


def test_stage3_loss_falls_and_final_model_reloads(micro, tmp_path):
    final = train_stage(3, _cfg(micro, tmp_path / "s3", batch_size=2, max_steps=6, lr=1e-2, warmup_steps=1))
    rows = _log(tmp_path / "s3")
    assert [int(r["step"]) for r in rows] == list(range(1, 7))
    losses = [float(r["loss"]) for r in rows]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3
    assert (tmp_path / "s3" / "loss.png").stat().st_size > 1000
    info = json.loads((tmp_path / "s3" / "run_info.json").read_text())
    assert info["world_size"] == 1 and {g["name"] for g in info["param_groups"]} >= {"main_decay", "vision_decay"}
    # the final directory is a complete model: weights + processor; its loss is the trained one
    model = EmovaForConditionalGeneration.from_pretrained(final).eval()
    proc = EmovaProcessor.from_pretrained(final)
    recs = load_task_records(micro[0], "train", ["vqa", "asr"])
    batch = collate([OmniDataset(recs, proc, image_root=micro[0])[i] for i in range(len(recs))], proc)
    fresh = EmovaForConditionalGeneration(model.config).eval()
    with torch.no_grad():
        assert model(**batch).loss < fresh(**batch).loss - 0.3


def test_stage1_only_moves_the_projector(micro, tmp_path):
    cfg = _cfg(micro, tmp_path / "s1", stage=1, tasks=["caption"], max_steps=3)
    train_stage(1, cfg)
    torch.manual_seed(cfg.seed)
    start = EmovaForConditionalGeneration(load_model_config(micro[1]).config)  # same seed → the initial weights
    end = load_file(str(tmp_path / "s1" / "final" / "model.safetensors"))
    for name, p in start.state_dict().items():
        moved = not torch.equal(p, end[name])
        assert moved == name.startswith("mm_projector."), name


def test_resume_continues_from_the_latest_checkpoint(micro, tmp_path):
    out = tmp_path / "run"
    train_stage(3, _cfg(micro, out, max_steps=4, save_every=2, batch_size=2))
    ref = load_file(str(out / "final" / "model.safetensors"))
    # simulate a kill just before the step-4 checkpoint: resume from step-2; the log still has rows 3-4
    shutil.rmtree(out / "step-4")
    shutil.rmtree(out / "final")
    train_stage(3, _cfg(micro, out, max_steps=4, save_every=2, batch_size=2))
    assert [int(r["step"]) for r in _log(out)] == list(range(1, 5))
    again = load_file(str(out / "final" / "model.safetensors"))
    for k, v in ref.items():  # same batches, same optimizer state → the same weights
        torch.testing.assert_close(again[k], v, atol=1e-6, rtol=1e-5)
    state = json.loads((out / "step-4" / "state.json").read_text())
    assert state["step"] == 4 and "optimizer" in state


def test_dataloader_workers_give_the_same_run(micro, tmp_path):
    a = train_stage(3, _cfg(micro, tmp_path / "w0", max_steps=3, batch_size=2))
    b = train_stage(3, _cfg(micro, tmp_path / "w2", max_steps=3, batch_size=2, num_workers=2))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k, v in wa.items():  # the same batches in the same order, prepared in worker processes
        torch.testing.assert_close(wb[k], v, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="num_workers"):
        _cfg(micro, tmp_path / "bad", num_workers=-1)


def test_config_validation_and_overrides(tmp_path):
    assert parse_overrides(["lr=1e-4", "tasks=[asr, tts]", "bf16=false"]) == {
        "lr": 1e-4, "tasks": ["asr", "tts"], "bf16": False}
    p = tmp_path / "c.yaml"
    p.write_text("stage: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        OmniTrainConfig.load(p)
    with pytest.raises(ValueError, match="engine"):
        OmniTrainConfig(engine="horovod")
    with pytest.raises(ValueError, match="deepspeed_config"):
        OmniTrainConfig(engine="deepspeed")
    for stage in (1, 2, 3):
        cfg = OmniTrainConfig.load(f"tiny_stage{stage}")
        assert cfg.stage == stage and cfg.engine == "ddp"


def test_time_budget_stops_early_and_saves(micro, tmp_path):
    from emova.train.omni import lr_factor

    final = train_stage(3, _cfg(micro, tmp_path / "t", max_steps=1000, max_minutes=0.0005, save_every=1000))
    rows = _log(tmp_path / "t")
    assert 1 <= int(rows[-1]["step"]) < 20 and (final / "model.safetensors").exists()
    state = json.loads((tmp_path / "t" / f"step-{rows[-1]['step']}" / "state.json").read_text())
    assert state["elapsed_s"] >= 0.03
    cfg = _cfg(micro, tmp_path, max_steps=1000, warmup_steps=0, max_minutes=10, min_lr_ratio=0.0)
    assert lr_factor(10, cfg, elapsed_s=300) == pytest.approx(0.5, abs=0.02)  # half the time: half-way down
    assert lr_factor(10, cfg, elapsed_s=600) == pytest.approx(0.0, abs=1e-6)


def test_lora_bf16_checkpointing_stage2_exports_a_merged_plain_model(micro, tmp_path):
    cfg = _cfg(micro, tmp_path / "lora", stage=2, tasks=["vqa", "asr"], max_steps=3, lora_r=4, lora_alpha=8,
               bf16=True, gradient_checkpointing=True, lr=1e-2)
    final = train_stage(2, cfg)
    end = load_file(str(final / "model.safetensors"))
    assert not any("lora" in k for k in end)  # merged: a plain EmovaForConditionalGeneration checkpoint
    torch.manual_seed(cfg.seed)
    start = EmovaForConditionalGeneration(load_model_config(micro[1]).config).state_dict()
    for name, p in start.items():
        moved = not torch.equal(p, end[name])
        if name.startswith("language_model."):  # only the LoRA targets change (adapters folded in)
            assert moved == (".q_proj.weight" in name or ".v_proj.weight" in name), name
        elif name.startswith("vision_tower."):  # stage 2: upper half of the ViT (+ merger) only
            assert moved == (name.startswith(("vision_tower.blocks.1.", "vision_tower.merger."))), name
        else:
            assert moved, name  # the projector trains


def test_loss_on_supervised_positions_equals_the_lm_loss(micro):
    """OmniLossModule runs the output head on the supervised positions only: same loss and gradients as the
    LM's own `labels=` loss, also with a batch that has no supervised token at all."""
    from emova.train.omni import OmniLossModule

    torch.manual_seed(0)
    model = EmovaForConditionalGeneration(load_model_config(micro[1]).config)
    proc = EmovaProcessor(_offline_tokenizer(), None)
    recs = load_task_records(micro[0], "train", ["asr", "tts"])
    batch = collate([OmniDataset(recs, proc)[i] for i in range(4)], proc)
    assert (batch["labels"] == -100).any() and (batch["labels"] != -100).any()
    ours = OmniLossModule(model)(batch)
    ours.backward()
    g_ours = {n: p.grad.clone() for n, p in model.language_model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    ref.backward()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    for n, p in model.language_model.named_parameters():
        torch.testing.assert_close(g_ours[n], p.grad, atol=1e-5, rtol=1e-4, msg=n)
    none = {**batch, "labels": torch.full_like(batch["labels"], -100)}
    zero = OmniLossModule(model)(none)
    assert float(zero.detach()) == 0.0 and zero.requires_grad


def test_attention_implementation_option(micro, tmp_path):
    with pytest.raises(ValueError, match="attn_implementation"):
        _cfg(micro, tmp_path / "bad", attn_implementation="fast")
    a = train_stage(3, _cfg(micro, tmp_path / "sdpa", max_steps=2, batch_size=2, attn_implementation="sdpa"))
    b = train_stage(3, _cfg(micro, tmp_path / "eager", max_steps=2, batch_size=2, attn_implementation="eager"))
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    for k, v in wa.items():  # the same run up to float rounding
        torch.testing.assert_close(wb[k], v, atol=1e-4, rtol=1e-3)
    assert "eager" not in (b / "config.json").read_text()  # a training setting, not part of the exported model
