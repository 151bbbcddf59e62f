"""One training loop for EMOVA's three stages, on accelerate, with three engines.

    cfg = OmniTrainConfig.load("emova/configs/train/tiny_stage3.yaml", out_dir="runs/s3")
    final_dir = train_stage(3, cfg)          # a save_pretrained directory (model + processor)

Engines (`engine:`):
- `ddp`       accelerate's default: one process, or DDP over N processes (gloo on CPU, NCCL on GPU).
- `deepspeed` DeepSpeed ZeRO through accelerate; `deepspeed_config:` names a JSON in
              emova/configs/train/ (ZeRO-2 for stage 1, ZeRO-3 for stages 2-3, as the paper trains).
- `fsdp2`     torch's `fully_shard` per decoder layer / ViT block (accelerate's FSDP plugin silently
              runs DDP on CPU, so we shard ourselves).

Every micro-batch runs the vision tower and projector, on a 1-token dummy image when the batch has no
image, with a zero weight: under ZeRO-3 / FSDP2 every rank must run the same modules in the same order
(parameters are gathered per module), and under DDP every parameter then gets a gradient.

Resume: `step-N/` checkpoints (safetensors model; AdamW state too with the ddp engine; JSON step and data
position) every `save_every` steps; a restarted run continues from the latest one with the same batches
it would have seen. With deepspeed/fsdp2 the optimizer moments restart from zero on resume (their
sharded states are pickled by those libraries; we keep checkpoints pickle-free).
Logs: `log.csv` (step, epoch, lr, loss, tokens/s, …) and `loss.png`; progress with tqdm on rank 0.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from emova.data.omni_dataset import OmniDataset, batch_plan, collate, load_task_records, mix_records
from emova.model.config_loader import load_model_config
from emova.model.modeling_emova import EmovaForConditionalGeneration
from emova.model.processor import EmovaProcessor, build_image_processor
from emova.model.tokenizer_builder import build_tokenizer
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from emova.train.engines import (
    StateDictHolder,
    deepspeed_config,
    deepspeed_initialize,
    full_state_dict,
    fully_shard_module,
    make_accelerator,
    shutdown_distributed,
    zero_stage,
)
from emova.train.plots import plot_log
from emova.train.stages import (
    STAGE_TASKS,
    STAGES,
    TrainableSpec,
    add_lora,
    apply_stage,
    merge_lora,
    param_groups,
    stage_spec,
    vision_depth,
)
from emova.yaml_io import config_kwargs, parse_yaml, read_yaml_mapping

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "train"
ENGINES = ("ddp", "deepspeed", "fsdp2")
ATTN_IMPLEMENTATIONS = ("eager", "sdpa", "flash_attention_2")


@dataclass
class OmniTrainConfig:
    """One stage's training run. YAML keys = these fields; unknown keys are errors."""

    stage: int = 3
    world_dir: str = "data_cache/world_units"  # records with speech units filled in
    image_root: str | None = None  # where record image paths point into (default: world_dir)
    split: str = "train"
    tasks: list[str] | None = None  # default: STAGE_TASKS[stage]
    task_weights: dict[str, float] = field(default_factory=dict)  # resampling factor per task
    extra_records: list[str] = field(default_factory=list)  # more record JSON files (e.g. FSDD ASR)
    max_records: int | None = None  # cap after mixing (smoke runs)
    model: str = "tiny"  # model config (name or yaml) for a from-scratch start
    init_from: str | None = None  # a save_pretrained directory (the previous stage's final/)
    vision_init_from: str | None = None  # pretrained vision tower (emova.train.vision_pretrain) for a fresh start
    out_dir: str = "runs/omni/stage3"
    max_steps: int = 1000
    max_minutes: float | None = None  # wall-clock budget: stop early (the cosine follows whichever ends first)
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    weight_decay: float = 0.0
    vision_lr_scale: float = 0.1  # stage 3: the ViT's lr multiplier
    train_vision_stage1: bool = False  # tiny recipe: no pretrained ViT offline, so stage 1 trains it too
    from_scratch: bool = False  # tiny recipe: neither tower is pretrained (stage 1 trains the LLM, stage 2 the whole ViT)
    num_workers: int = 0  # DataLoader worker processes that tokenise and load images ahead of the step
    max_length: int = 1024
    lora_r: int = 0  # > 0: LoRA on the LLM's q/v projections instead of full LLM training; merged at the end
    lora_alpha: int = 16
    lora_dropout: float = 0.0
    gradient_checkpointing: bool = False
    attn_implementation: str | None = None  # the LLM's attention while training: eager | sdpa (None: as loaded)
    bf16: bool = True  # autocast (ddp/fsdp2); bf16 mode with deepspeed
    engine: str = "ddp"
    deepspeed_config: str | None = None  # JSON file name in emova/configs/train/ or a path
    fsdp_config: str = "fsdp2.yaml"  # engine fsdp2: which blocks are shard units (emova/configs/train/)
    grad_clip: float = 1.0
    seed: int = 0
    save_every: int = 200
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}; accepted: {list(ENGINES)}")
        if self.engine == "deepspeed" and not self.deepspeed_config:
            raise ValueError("engine 'deepspeed' needs deepspeed_config (e.g. deepspeed_zero3.json)")
        for k in ("max_steps", "batch_size", "grad_accum", "save_every", "log_every", "keep_checkpoints"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if int(self.num_workers) < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")
        if self.lr <= 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ValueError("need lr > 0 and 0 <= min_lr_ratio <= 1")
        if self.attn_implementation not in (None, *ATTN_IMPLEMENTATIONS):
            raise ValueError(f"attn_implementation {self.attn_implementation!r}; accepted: "
                             f"{list(ATTN_IMPLEMENTATIONS)} (or leave it unset)")
        if self.vision_init_from and self.init_from:
            raise ValueError("vision_init_from is for a fresh start; with init_from the vision tower comes from "
                             f"that checkpoint ({self.init_from}); drop one of them")

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> OmniTrainConfig:
        """YAML file (or a name in emova/configs/train/) + keyword overrides (None values are ignored)."""
        return cls(**config_data(cls, path, overrides))

    def stage_tasks(self) -> list[str]:
        return list(self.tasks) if self.tasks else list(STAGE_TASKS[self.stage])


def config_data(cls: type, path: str | Path | None, overrides: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of dataclass `cls` from a YAML file (or a name in emova/configs/train/) and
    overrides (None values ignored); a non-mapping file or an unknown key is an error naming it."""
    data = read_yaml_mapping(resolve_config(path)) if path is not None else {}
    return config_kwargs(cls, data, overrides, path)


def resolve_config(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.exists():
        return p
    for cand in (CONFIG_DIR / str(name_or_path), CONFIG_DIR / f"{name_or_path}.yaml"):
        if cand.exists():
            return cand
    known = sorted(q.name for q in CONFIG_DIR.glob("*"))
    raise FileNotFoundError(f"no training config {str(name_or_path)!r}; give a path or one of {known}")


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`["lr=1e-4", "tasks=[asr, tts]"]` → {"lr": 0.0001, "tasks": ["asr", "tts"]} (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in pairs or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} must look like key=value")
        k, v = item.split("=", 1)
        value = parse_yaml(v, f"override {item!r}")
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                value = float(value)
            except ValueError:
                pass
        out[k.strip()] = value
    return out


# ------------------------------------------------------------------------------------ model + data
class OmniLossModule(nn.Module):
    """What the engines wrap: batch → mean token loss. Runs the vision path on a dummy image when the batch
    has none (weight 0), so every rank runs every module (ZeRO-3/FSDP2) and every parameter gets a grad."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        # One module order for every batch — embeddings → ViT → projector → LLM — so that ZeRO-3/FSDP2
        # issue the same all-gathers on every rank whatever each rank's batch holds (a text-only batch
        # encodes a 1-token dummy image at weight 0).
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        ids = batch["input_ids"]
        embeds = base.get_input_embeddings()(ids)  # (B, T, D)
        if "pixel_values" in batch:
            feats = base.get_image_features(batch["pixel_values"], batch.get("image_grid_thw"))  # (N, D)
            embeds = base.merge_image_features(ids, embeds, feats)
            extra = None
        else:
            feats = base.get_image_features(*self._dummy_image(base, embeds.device))  # (1, D)
            extra = 0.0 * feats.float().sum()
        loss = self.supervised_loss(base, embeds, batch["attention_mask"], batch["labels"])
        return loss if extra is None else loss + extra

    @staticmethod
    def supervised_loss(base: nn.Module, embeds: torch.Tensor, attention_mask: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy over the supervised positions — what the LM's own `labels=` loss
        computes — with the output head and the softmax run on those positions only (about a third of the
        tokens: prompts, images and user speech carry no loss). Measured: `benchmarks/train_step.py`."""
        lm = base.language_model
        hidden = lm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask, use_cache=False)
        hidden = hidden.last_hidden_state[:, :-1]  # (B, T-1, D): position t predicts token t+1
        target = labels[:, 1:]
        keep = target != -100
        head = lm.get_output_embeddings()
        if not bool(keep.any()):  # nothing supervised: a zero that still reaches every parameter
            return 0.0 * head(hidden[:, :1]).float().sum()
        logits = head(hidden[keep]).float()  # (N_supervised, V)
        return nn.functional.cross_entropy(logits, target[keep])

    @staticmethod
    def _dummy_image(base: nn.Module, device: torch.device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Inputs for the smallest image the tower accepts (Qwen2-VL: one merged token)."""
        vcfg = base.config.vision_config
        if vcfg.model_type == "qwen2_vl_vision":
            m = int(vcfg.spatial_merge_size)
            width = int(vcfg.in_channels) * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2
            return torch.zeros(m * m, width, device=device), torch.tensor([[1, m, m]], device=device)
        size = int(vcfg.image_size)
        return torch.zeros(1, int(vcfg.num_channels), size, size, device=device), None


def build_processor(cfg: OmniTrainConfig) -> EmovaProcessor:
    """The processor saved with `init_from`, else the offline tokenizer + the model config's image settings."""
    if cfg.init_from and (Path(cfg.init_from) / "tokenizer_config.json").exists():
        proc = EmovaProcessor.from_pretrained(cfg.init_from)
        if proc.image_processor is not None:
            return proc
    spec = load_model_config(cfg.model)
    image = spec.image_processor or {"min_pixels": 3136, "max_pixels": 50176}
    return EmovaProcessor(_offline_tokenizer(), build_image_processor(**image))


@functools.lru_cache(maxsize=1)
def _offline_tokenizer() -> Any:
    """The offline BPE is deterministic and takes seconds to train: build it once per process."""
    return build_tokenizer()


def build_model(cfg: OmniTrainConfig) -> nn.Module:
    """From `init_from` (previous stage) or from the model config; LoRA-wrapped when lora_r > 0."""
    if cfg.init_from:
        model = EmovaForConditionalGeneration.from_pretrained(cfg.init_from, dtype=torch.float32)
    else:
        torch.manual_seed(cfg.seed)
        model = EmovaForConditionalGeneration(load_model_config(cfg.model).config)
        if cfg.vision_init_from:
            from emova.train.vision_pretrain import load_vision_tower

            load_vision_tower(model.vision_tower, cfg.vision_init_from)
    model.config.use_cache = False
    if cfg.attn_implementation:
        model.language_model.set_attn_implementation(cfg.attn_implementation)
    if cfg.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora_r > 0:
        return add_lora(model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout)
    return model


def build_stage_model(cfg: OmniTrainConfig) -> tuple[nn.Module, TrainableSpec]:
    """`build_model` with the stage's trainable parameters set (`cfg.stage`): what the stage loop trains."""
    model = build_model(cfg)
    spec = stage_spec(cfg.stage, vision_depth(model), train_vision_stage1=cfg.train_vision_stage1,
                      vision_lr_scale=cfg.vision_lr_scale, from_scratch=cfg.from_scratch)
    apply_stage(model, spec, lora=cfg.lora_r > 0)
    return model, spec


def build_dataset(cfg: OmniTrainConfig, processor: EmovaProcessor) -> OmniDataset:
    by_task = {t: load_task_records(cfg.world_dir, cfg.split, [t]) for t in cfg.stage_tasks()}
    for path in cfg.extra_records:
        by_task[Path(path).stem] = json.loads(Path(path).read_text(encoding="utf-8"))
    records = mix_records(by_task, cfg.task_weights, cfg.seed)
    if cfg.max_records is not None:
        import random

        random.Random(cfg.seed).shuffle(records)
        records = records[: cfg.max_records]
    if not records:
        raise ValueError(f"no training records for tasks {cfg.stage_tasks()} in {cfg.world_dir}/{cfg.split}")
    return OmniDataset(records, processor, image_root=cfg.image_root or cfg.world_dir, max_length=cfg.max_length)


def lr_factor(step: int, cfg: OmniTrainConfig, elapsed_s: float = 0.0) -> float:
    """Linear warmup, then cosine down to min_lr_ratio over the steps or the time budget, whichever is
    used up first."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    p = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    if cfg.max_minutes:
        p = max(p, min(1.0, elapsed_s / (60.0 * cfg.max_minutes)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * p))


# ---------------------------------------------------------------------------------------- the loop
class _Collate:
    """Record indices → one padded micro-batch (a top-level class so DataLoader workers can pickle it)."""

    def __init__(self, dataset: OmniDataset, processor: Any) -> None:
        self.dataset, self.processor = dataset, processor

    def __call__(self, idx: list[int]) -> dict[str, torch.Tensor]:
        return collate([self.dataset[i] for i in idx], self.processor)


def _micro_batches(plan: list[list[int]], start: int, stop: int, world: int, rank: int, grad_accum: int,
                   fetch: _Collate, workers: int) -> Any:
    """This rank's micro-batches from plan position `start` on, in the order the step loop takes them;
    with `workers` > 0 they are prepared ahead in DataLoader worker processes."""
    per_step = world * grad_accum
    seq = [plan[p + m * world + rank] for p in range(start, stop - per_step + 1, per_step) for m in range(grad_accum)]
    if workers <= 0:
        return (fetch(idx) for idx in seq)
    from torch.utils.data import DataLoader

    return iter(DataLoader(seq, batch_size=None, collate_fn=fetch, num_workers=workers, prefetch_factor=4))


def train_stage(stage: int, cfg: OmniTrainConfig) -> Path:
    """Train (or resume) one stage; returns `out_dir/final` (save_pretrained model + processor).
    `stage` overrides cfg.stage (both are accepted so the CLI can say `--stage 2 --config …`)."""
    if stage != cfg.stage:
        cfg = OmniTrainConfig(**{**asdict(cfg), "stage": stage})
    acc = make_accelerator(cfg.bf16, cfg.engine, cfg.grad_accum)
    out = Path(cfg.out_dir)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=1))
    processor = build_processor(cfg)
    model, spec = build_stage_model(cfg)
    module = OmniLossModule(model)

    step, epoch, batch_pos, elapsed0 = 0, 0, 0, 0.0
    ck = latest_checkpoint(out)
    meta: dict[str, Any] = {}
    if ck is not None:
        meta = load_checkpoint(ck, model, None)  # weights before wrapping; optimizer below
        step, epoch, batch_pos = int(meta["step"]), int(meta["epoch"]), int(meta["batch_pos"])
        elapsed0 = float(meta.get("elapsed_s", 0.0))
    if cfg.engine == "fsdp2":
        fully_shard_module(module, resolve_config(cfg.fsdp_config))
    groups = param_groups(module.model, cfg.lr, cfg.weight_decay, spec)
    base_lrs = [g["base_lr"] for g in groups]
    log_group = next(i for i, g in enumerate(groups) if not g["name"].startswith("vision"))
    group_sizes = [sum(int(p.numel()) for p in g["params"]) for g in groups]  # before ZeRO-3 partitions them
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-8)
    if ck is not None and cfg.engine == "ddp" and "optimizer" in meta:
        load_checkpoint(ck, _StateDictHolderModule(model), opt)
    if ck is not None and acc.is_main_process:
        print(f"resuming stage {stage} from {ck} (step {step})")
    if cfg.engine == "fsdp2":
        wrapped = module
    elif cfg.engine == "deepspeed":
        ds = deepspeed_config(resolve_config(str(cfg.deepspeed_config)), cfg.batch_size, cfg.grad_accum,
                              acc.num_processes, cfg.grad_clip, cfg.bf16)
        wrapped, opt = deepspeed_initialize(module, opt, ds)
    else:
        wrapped, opt = acc.prepare(module, opt)

    if acc.is_main_process:  # what actually runs: engine, processes, and the optimizer's groups after wrapping
        info = {"stage": stage, "engine": cfg.engine, "world_size": acc.num_processes,
                "distributed_type": "DEEPSPEED" if cfg.engine == "deepspeed" else str(acc.distributed_type),
                "zero_stage": zero_stage(wrapped),
                "param_groups": [{"name": g0["name"], "lr": float(g["lr"]), "n_params": n}
                                 for g, g0, n in zip(opt.param_groups, groups, group_sizes)],
                "trainable": sum(group_sizes)}
        (out / "run_info.json").write_text(json.dumps(info, indent=1))
    dataset = build_dataset(cfg, processor)
    lengths = dataset.lengths
    world, rank = acc.num_processes, acc.process_index
    per_step = world * cfg.grad_accum
    log_path = out / "log.csv"
    writer, logf = None, None
    if acc.is_main_process:
        new_log = step == 0 or not log_path.exists()
        if not new_log:  # rows logged after the checkpoint we resume from would be repeated: drop them
            rows = list(csv.reader(open(log_path, newline="")))
            kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerows(kept)
        logf = open(log_path, "w" if new_log else "a", newline="")
        writer = csv.writer(logf)
        if new_log:
            writer.writerow(["step", "epoch", "lr", "loss", "tokens", "tok_per_s", "sec_per_step", "elapsed_s"])
    bar = tqdm(total=cfg.max_steps, initial=step, desc=f"stage {stage}", unit="step",
               disable=not (cfg.progress and acc.is_main_process))
    t0 = t_last = time.time()
    tokens_since = 0

    def elapsed() -> float:  # the same value on every rank (the lr depends on it)
        e = elapsed0 + time.time() - t0
        if world > 1 and cfg.max_minutes:
            e = float(acc.reduce(torch.tensor(e, device=acc.device), reduction="mean"))
        return e

    def finished(e: float) -> bool:
        return step >= cfg.max_steps or (cfg.max_minutes is not None and e >= 60.0 * cfg.max_minutes)

    wrapped.train()
    el = elapsed()
    while not finished(el):
        plan = batch_plan(lengths, cfg.batch_size, cfg.seed, epoch)
        n_usable = len(plan) - len(plan) % per_step
        if n_usable == 0:
            raise ValueError(f"{len(plan)} batches cannot fill one step of {per_step} micro-batches")
        micro_batches = _micro_batches(plan, batch_pos, n_usable, world, rank, cfg.grad_accum,
                                       _Collate(dataset, processor), cfg.num_workers)
        while batch_pos + per_step <= n_usable and not finished(el):
            lr_now = lr_factor(step, cfg, el)
            for g, base_lr in zip(opt.param_groups, base_lrs):
                g["lr"] = base_lr * lr_now
            step_loss = torch.zeros(())
            for _micro in range(cfg.grad_accum):
                batch = next(micro_batches)
                batch = {k: v.to(acc.device) for k, v in batch.items()}
                tokens_since += int((batch["labels"] != -100).sum()) * world
                if cfg.engine == "deepspeed":  # the engine accumulates, clips and steps at the boundary
                    loss = wrapped(batch)
                    wrapped.backward(loss)
                    wrapped.step()
                elif cfg.engine == "fsdp2":
                    with acc.autocast():
                        loss = wrapped(batch)
                    (loss / cfg.grad_accum).backward()
                else:
                    with acc.accumulate(wrapped), acc.autocast():
                        loss = wrapped(batch)
                        acc.backward(loss)
                        if acc.sync_gradients and cfg.engine == "ddp":
                            acc.clip_grad_norm_(wrapped.parameters(), cfg.grad_clip)
                        opt.step()
                        opt.zero_grad(set_to_none=True)
                step_loss += loss.detach().float().cpu() / cfg.grad_accum
            if cfg.engine == "fsdp2":
                torch.nn.utils.clip_grad_norm_([p for p in wrapped.parameters() if p.grad is not None], cfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            batch_pos += per_step
            step += 1
            mean_loss = float(acc.reduce(step_loss.to(acc.device), reduction="mean")) if world > 1 else float(step_loss)
            bar.update()
            el = elapsed()
            last = finished(el)
            if writer is not None and (step % cfg.log_every == 0 or last):
                now = time.time()
                n_steps = step % cfg.log_every or cfg.log_every
                writer.writerow([step, epoch, f"{base_lrs[log_group] * lr_now:.3e}", f"{mean_loss:.4f}",
                                 tokens_since, f"{tokens_since / max(1e-9, now - t_last):.0f}",
                                 f"{(now - t_last) / n_steps:.3f}", f"{el:.1f}"])
                logf.flush()  # type: ignore[union-attr]
                t_last, tokens_since = now, 0
                bar.set_postfix(loss=f"{mean_loss:.3f}")
            if step % cfg.save_every == 0 or last:
                state = {"step": step, "epoch": epoch, "batch_pos": batch_pos, "stage": stage, "engine": cfg.engine,
                         "elapsed_s": round(el, 3)}
                _save_step(cfg, acc, wrapped, module, opt, out / f"step-{step}", state)
        if batch_pos + per_step > n_usable:
            epoch, batch_pos = epoch + 1, 0
    bar.close()
    if logf is not None:
        logf.close()
        plot_loss(log_path)
    final = out / "final"
    sd = full_state_dict(cfg.engine, acc, wrapped, module)
    if acc.is_main_process:
        export_model(cfg, sd, processor, final)
    acc.wait_for_everyone()
    return final


class _StateDictHolderModule(nn.Module):
    """Lets `load_checkpoint` restore only the optimizer (the weights were loaded before wrapping)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._m = [model]

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:  # noqa: ARG002
        return None


def _save_step(cfg: OmniTrainConfig, acc: Any, wrapped: nn.Module, module: OmniLossModule,
               opt: torch.optim.Optimizer, path: Path, state: dict[str, Any]) -> None:
    sd = full_state_dict(cfg.engine, acc, wrapped, module)
    if acc.is_main_process:
        inner_opt = getattr(opt, "optimizer", opt) if cfg.engine == "ddp" else None
        save_checkpoint(path, StateDictHolder(sd), inner_opt, state)  # type: ignore[arg-type]
        old = sorted((p for p in path.parent.glob("step-*") if p.name.split("-")[1].isdigit()),
                     key=lambda p: int(p.name.split("-")[1]))
        for p in old[: -cfg.keep_checkpoints]:
            shutil.rmtree(p, ignore_errors=True)
    acc.wait_for_everyone()


def export_model(cfg: OmniTrainConfig, state_dict: dict[str, torch.Tensor], processor: EmovaProcessor,
                 out_dir: Path) -> Path:
    """A fresh model (LoRA-wrapped like the trained one) ← the full state dict; LoRA merged; saved with
    save_pretrained (safetensors) next to the processor."""
    model = build_model(OmniTrainConfig(**{**asdict(cfg), "gradient_checkpointing": False}))
    model.load_state_dict(state_dict, strict=True)
    plain = merge_lora(model)
    plain.config.use_cache = True
    plain.save_pretrained(str(out_dir))
    processor.save_pretrained(out_dir)
    return out_dir


def plot_loss(log_path: Path) -> None:
    """`loss.png` next to the CSV (skipped when matplotlib is absent)."""
    plot_log(log_path, ("loss",), out=log_path.with_name("loss.png"), ylabel="mean token loss")


def main(argv: list[str] | None = None) -> int:
    """`[accelerate launch …] python -m emova.train.omni --stage 3 --config tiny_stage3 [--set key=value …]`."""
    import argparse

    ap = argparse.ArgumentParser(description="Train one EMOVA stage (resumes from the latest checkpoint).")
    ap.add_argument("--stage", type=int, choices=STAGES, required=True)
    ap.add_argument("--config", default=None, help="YAML path or a name in emova/configs/train/")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config keys")
    a = ap.parse_args(argv)
    final = train_stage_cli(a.stage, a.config, a.set)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final model: {final}", flush=True)
    if distributed:
        shutdown_distributed()
        os._exit(0)
    return 0


def train_stage_cli(stage: int, config: str | None = None, overrides: list[str] | None = None) -> Path:
    """`emova train --stage N --config C [--set k=v …]`: load the config, apply overrides, train."""
    cfg = OmniTrainConfig.load(config, **{**parse_overrides(overrides), "stage": stage})
    return train_stage(stage, cfg)


if __name__ == "__main__":
    raise SystemExit(main())
