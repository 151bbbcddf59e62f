"""Stage 3 with DeepSpeed ZeRO-3 (and, marked slow, torch FSDP2) on 2 CPU processes over gloo.

Flags from ../shared/NOTES.md: `accelerate launch --cpu` gives ONE process; real 2-process runs need
ACCELERATE_USE_CPU=1 + --multi_gpu. Needs deepspeed (`DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed`).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time

import pytest
import torch

from emova.data.omni_dataset import OmniDataset, collate, load_task_records
from emova.eval.bench_serve import free_port
from emova.model.config_loader import load_model_config
from emova.model.modeling_emova import EmovaForConditionalGeneration
from emova.model.processor import EmovaProcessor
from tests.train.omni_micro import make_micro_world, write_micro_model

pytest.importorskip("deepspeed", reason="DS_BUILD_OPS=0 pip install --no-build-isolation deepspeed")


def test_stage3_zero3_two_cpu_processes(tmp_path):
    world = make_micro_world(tmp_path / "world")
    model_yaml = write_micro_model(tmp_path / "micro.yaml")
    out = tmp_path / "run"
    cfg = tmp_path / "zero3.yaml"
    cfg.write_text(f"""
stage: 3
world_dir: {world}
model: {model_yaml}
out_dir: {out}
max_steps: 8
batch_size: 2
lr: 3.0e-3
warmup_steps: 2
save_every: 4
log_every: 1
bf16: false
engine: deepspeed
deepspeed_config: deepspeed_zero3.json
progress: false
""")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()),
           "-m", "emova.train.omni", "--stage", "3", "--config", str(cfg)]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert wall < 90, f"ZeRO-3 run took {wall:.0f} s"

    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["zero_stage"] == 3 and "DEEPSPEED" in info["distributed_type"]
    lrs = {g["name"]: g["lr"] for g in info["param_groups"]}
    assert lrs["vision_decay"] == pytest.approx(0.1 * lrs["main_decay"])  # stage 3: ViT at lr/10

    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv", newline=""))]
    assert len(losses) == 8
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    assert (out / "step-4" / "model.safetensors").exists() and (out / "step-8" / "state.json").exists()

    # the gathered ZeRO-3 weights reload into the plain model class, strictly, and carry the training
    model, loading = EmovaForConditionalGeneration.from_pretrained(out / "final", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    proc_ = EmovaProcessor.from_pretrained(out / "final")
    recs = load_task_records(world, "train", ["vqa", "asr", "dialogue_speech"])
    ds = OmniDataset(recs, proc_, image_root=world)
    batch = collate([ds[i] for i in range(len(recs))], proc_)
    torch.manual_seed(0)
    start = EmovaForConditionalGeneration(load_model_config(model_yaml).config)  # the run's initial weights
    with torch.no_grad():
        assert model.eval()(**batch).loss < start.eval()(**batch).loss - 0.2


@pytest.mark.slow
def test_stage3_fsdp2_two_cpu_processes(tmp_path):
    """torch FSDP2 (`fully_shard`) engine on 2 CPU processes: runs, learns, reloads."""
    world = make_micro_world(tmp_path / "world")
    model_yaml = write_micro_model(tmp_path / "micro.yaml")
    out = tmp_path / "run"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.getcwd() + os.pathsep + os.environ.get("PYTHONPATH", "")}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(free_port()), "-m", "emova.train.omni", "--stage", "3", "--set",
           f"world_dir={world}", f"model={model_yaml}", f"out_dir={out}", "max_steps=8", "batch_size=2", "lr=3e-3",
           "warmup_steps=2", "save_every=8", "log_every=1", "bf16=false", "engine=fsdp2", "progress=false"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    info = json.loads((out / "run_info.json").read_text())
    assert info["world_size"] == 2 and info["engine"] == "fsdp2"
    losses = [float(r["loss"]) for r in csv.DictReader(open(out / "log.csv", newline=""))]
    assert sum(losses[-2:]) / 2 < sum(losses[:2]) / 2 - 0.2, losses
    _, loading = EmovaForConditionalGeneration.from_pretrained(out / "final", output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
