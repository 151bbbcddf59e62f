"""Vision-tower pretraining for the tiny recipe (the step before stage 1).

EMOVA starts from Qwen2-VL's ViT, pretrained on a great deal of labelled images. No pretrained ViT
exists offline, and a ViT that only ever learns through a from-scratch LLM barely learns to see
(docs/training.md: held-out VQA 0.33, 0.47 even on training images). This step gives the tiny ViT
what a pretrained tower brings: features from which the picture's content can be read off.

It trains the tower's own classes (`build_vision_tower`, so the weights load straight into
`EmovaForConditionalGeneration.vision_tower`) with small linear heads on every 2x2-merged token — the
tokens the projector hands to the LLM — and dense labels that follow from the picture alone:

| head   | per merged token (28x28 px cell)                                            |
|--------|-----------------------------------------------------------------------------|
| shape  | none / circle / square / triangle of the object covering the cell           |
| colour | none / one of the 7 palette colours of that object                          |
| slot   | none / left / right / top / bottom / center: which object the cell belongs to |
| centre | whether the object's centre pixel lies in the cell (one token per object)   |
| text   | none / which word or digit, for cells the written text covers                 |

Images are fresh training-split scenes drawn from their own seed stream (`random_scene(split="train")`),
so no held-out composition is ever seen; accuracies are reported on held-out-split scenes. The heads
are dropped at export: `final/vision_tower.safetensors` holds the tower alone, under transformers'
parameter names, and stage 1 loads it with `vision_init_from`.

    emova train vision [--config vision_tiny] [--out-dir runs/omni/vision] [--max-steps N] [--max-minutes M]
    python -m emova.train.vision_pretrain …   (the same)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shutil
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from emova.data.world.images import (
    COLORS,
    DIGITS,
    IMAGE_SIZE,
    POSITIONS,
    SHAPES,
    WORDS,
    Scene,
    _draw_shape,
    random_scene,
    render_scene,
)
from emova.model.config_loader import load_model_config
from emova.model.processor import build_image_processor
from emova.model.vision import build_vision_tower, encode_images
from emova.safetensors_io import load_tensors
from emova.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

HEADS: dict[str, tuple[str, ...]] = {
    "shape": ("none", *SHAPES),
    "colour": ("none", *COLORS),
    "slot": ("none", *POSITIONS),
    "centre": ("no", "yes"),
    "text": ("none", *(w.upper() for w in WORDS), *DIGITS),
}
MIN_OBJECT_FRACTION = 0.15  # a cell belongs to an object when the object covers >= 15 % of it
MIN_TEXT_FRACTION = 0.10  # ... to the text when the text's box covers >= 10 % of it
TOWER_FILE = "vision_tower.safetensors"
# the sparse heads: an object centre is 1 token in ~13 per object, text ~4 tokens in 64 of half the images;
# unweighted, "none" wins (measured: text right on 18 % of its tokens after 700 steps)
POSITIVE_WEIGHT = {"centre": 4.0, "text": 4.0}


@dataclass
class VisionPretrainConfig:
    model: str = "tiny"  # model config whose vision_config and image settings are used
    out_dir: str = "runs/omni/vision"
    max_steps: int = 3000
    max_minutes: float | None = 10.0
    batch_size: int = 32
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.01
    text_prob: float = 0.5  # more text than the world's 0.35: reading is the hardest head
    seed: int = 0
    eval_images: int = 256
    save_every: int = 250
    log_every: int = 25
    progress: bool = True

    def __post_init__(self) -> None:
        for k in ("max_steps", "batch_size", "save_every", "log_every", "eval_images"):
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0 (or None), got {self.max_minutes}")
        if not 0 <= self.text_prob <= 1:
            raise ValueError(f"text_prob must lie in [0, 1], got {self.text_prob}")

    @classmethod
    def load(cls, path: str | Path | None = None, **overrides: Any) -> VisionPretrainConfig:
        """YAML file (or a name in emova/configs/train/) + keyword overrides (None values are ignored)."""
        from emova.train.omni import config_data

        return cls(**config_data(cls, path, overrides))


# ------------------------------------------------------------------------------------------- labels
def cell_labels(scene: Scene, grid: int) -> dict[str, torch.Tensor]:
    """Dense labels for the `grid` x `grid` merged tokens of a scene, row-major (the order the Qwen2-VL
    processor and merger emit them in). Each value is a LongTensor (grid*grid,) indexing HEADS[name]."""
    cell = IMAGE_SIZE // grid
    # object index + 1 per pixel, drawn with the same primitives as the picture
    mask_img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (0, 0, 0))
    draw = ImageDraw.Draw(mask_img)
    for k, obj in enumerate(scene.objects):
        _draw_shape(draw, replace(obj, rgb=(k + 1, k + 1, k + 1)))
    mask = np.asarray(mask_img)[:, :, 0].astype(np.int64)
    n_obj = len(scene.objects)
    # pixel counts per (cell, object): (grid, grid, n_obj + 1)
    blocks = mask[: grid * cell, : grid * cell].reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3)
    counts = np.stack([(blocks == k).sum(axis=(2, 3)) for k in range(n_obj + 1)], axis=-1)
    owner = counts[:, :, 1:].argmax(-1) if n_obj else np.zeros((grid, grid), dtype=np.int64)
    covered = (counts[:, :, 1:].max(-1) if n_obj else np.zeros((grid, grid))) >= MIN_OBJECT_FRACTION * cell * cell
    out = {name: torch.zeros(grid * grid, dtype=torch.long) for name in HEADS}
    for r in range(grid):
        for c in range(grid):
            i = r * grid + c
            if covered[r, c]:
                obj = scene.objects[int(owner[r, c])]
                out["shape"][i] = HEADS["shape"].index(obj.shape)
                out["colour"][i] = HEADS["colour"].index(obj.color)
                out["slot"][i] = HEADS["slot"].index(obj.position)
    for obj in scene.objects:
        cx, cy = obj.center
        out["centre"][min(cy // cell, grid - 1) * grid + min(cx // cell, grid - 1)] = 1
    if scene.text is not None and scene.text_bbox is not None:
        x0, y0, x1, y1 = scene.text_bbox
        label = HEADS["text"].index(scene.text.upper())
        for r in range(grid):
            for c in range(grid):
                ox = max(0, min(x1 + 1, (c + 1) * cell) - max(x0, c * cell))
                oy = max(0, min(y1 + 1, (r + 1) * cell) - max(y0, r * cell))
                if ox * oy >= MIN_TEXT_FRACTION * cell * cell:
                    out["text"][r * grid + c] = label
    return out


# -------------------------------------------------------------------------------------------- model
class VisionPretrainer(nn.Module):
    """The tower + one linear head per label kind on its merged tokens."""

    def __init__(self, vision_config: Any) -> None:
        super().__init__()
        self.tower = build_vision_tower(vision_config)
        dim = int(vision_config.hidden_size)
        self.heads = nn.ModuleDict({name: nn.Linear(dim, len(classes)) for name, classes in HEADS.items()})

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = encode_images(self.tower, pixel_values, grid_thw)  # (N_tokens, D)
        return {name: head(feats) for name, head in self.heads.items()}


class SceneBatches:
    """Deterministic batches of fresh training-split scenes: batch b is a pure function of (seed, b)."""

    def __init__(self, cfg: VisionPretrainConfig, image_settings: dict[str, Any], split: str = "train") -> None:
        self.cfg, self.split = cfg, split
        self.processor = build_image_processor(**image_settings)
        merge = int(self.processor.merge_size)
        patch = int(self.processor.patch_size)
        self.grid = IMAGE_SIZE // (patch * merge)
        if self.grid * patch * merge != IMAGE_SIZE:
            raise ValueError(f"the image settings do not tile {IMAGE_SIZE}px images into whole merged tokens")

    def scenes(self, b: int, n: int) -> list[Scene]:
        return [random_scene(random.Random(f"emova-vision:{self.cfg.seed}:{self.split}:{b}:{i}"),
                             text_prob=self.cfg.text_prob, split=self.split) for i in range(n)]

    def batch(self, b: int, n: int | None = None) -> dict[str, Any]:
        scenes = self.scenes(b, n or self.cfg.batch_size)
        vis = self.processor(images=[render_scene(s) for s in scenes], return_tensors="pt")
        grid = vis["image_grid_thw"]
        if any(int(h) // 2 != self.grid or int(w) // 2 != self.grid for _, h, w in grid.tolist()):
            raise ValueError(f"the image processor resized {IMAGE_SIZE}px images (grid {grid[0].tolist()})")
        labels = [cell_labels(s, self.grid) for s in scenes]
        return {"pixel_values": vis["pixel_values"], "grid_thw": grid,
                "labels": {k: torch.cat([lab[k] for lab in labels]) for k in HEADS}}


def _to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {"pixel_values": batch["pixel_values"].to(device), "grid_thw": batch["grid_thw"].to(device),
            "labels": {k: v.to(device) for k, v in batch["labels"].items()}}


def head_losses(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-entropy per head; the sparse heads weight their positive classes by POSITIVE_WEIGHT."""
    out = {}
    for k, classes in HEADS.items():
        weight = None
        if k in POSITIVE_WEIGHT:
            weight = torch.full((len(classes),), POSITIVE_WEIGHT[k], device=logits[k].device)
            weight[0] = 1.0
        out[k] = F.cross_entropy(logits[k].float(), labels[k], weight=weight)
    return out


@torch.no_grad()
def evaluate(model: VisionPretrainer, data: SceneBatches, n_images: int) -> dict[str, float]:
    """Per-head token accuracy on `data`'s split; for the sparse heads also the accuracy on the tokens
    that carry something (an object, a centre, text), which chance cannot inflate."""
    model.eval()
    hit: dict[str, float] = {}
    tot: dict[str, float] = {}
    per = 64
    for b in range(math.ceil(n_images / per)):
        batch = _to(data.batch(10_000_000 + b, min(per, n_images - b * per)), next(model.parameters()).device)
        logits = model(batch["pixel_values"], batch["grid_thw"])
        for k in HEADS:
            lab = batch["labels"][k]
            pred = logits[k].argmax(-1)
            for name, sel in ((k, torch.ones_like(lab, dtype=torch.bool)), (f"{k}_on_positive", lab != 0)):
                hit[name] = hit.get(name, 0.0) + float((pred[sel] == lab[sel]).sum())
                tot[name] = tot.get(name, 0.0) + float(sel.sum())
    model.train()
    return {k: round(hit[k] / tot[k], 4) for k in hit if tot[k] > 0}


# -------------------------------------------------------------------------------------------- train
def _lr_at(cfg: VisionPretrainConfig, step: int, total: int) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = min(1.0, (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train_vision(cfg: VisionPretrainConfig) -> Path:
    """Train (resuming from the latest `step-N/` in out_dir), evaluate on held-out-split scenes, export
    `final/vision_tower.safetensors` + `final/metrics.json`. Returns the final directory."""
    from tqdm import tqdm

    spec = load_model_config(cfg.model)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = VisionPretrainer(spec.config.vision_config).to(device)
    decay = [p for n, p in model.named_parameters() if p.dim() > 1]
    no_decay = [p for n, p in model.named_parameters() if p.dim() <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    data = SceneBatches(cfg, spec.image_processor, "train")
    step, elapsed = 0, 0.0
    ck = latest_checkpoint(out)
    if ck is not None:
        meta = load_checkpoint(ck, model, opt)
        step, elapsed = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
        print(f"resuming from {ck} (step {step}, {elapsed / 60:.1f} min done)", flush=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    budget_s = cfg.max_minutes * 60 if cfg.max_minutes else math.inf
    # the schedule follows whichever ends first: steps, or the time budget at the measured pace
    log_path = out / "log.csv"
    new_log = not log_path.exists() or step == 0
    if not new_log:  # rows logged after the checkpoint we resume from will be logged again
        rows = log_path.read_text().splitlines()
        log_path.write_text("\n".join([rows[0], *(r for r in rows[1:] if int(r.split(",")[0]) <= step)]) + "\n")
    with open(log_path, "w" if new_log else "a", newline="") as fh:
        writer = csv.writer(fh)
        if new_log:
            writer.writerow(["step", "lr", "loss", *(f"loss_{k}" for k in HEADS), "s_per_step", "elapsed_s"])
        bar = tqdm(total=cfg.max_steps, initial=step, desc="vision pretrain", disable=not cfg.progress)
        t_last = time.perf_counter()
        while step < cfg.max_steps and elapsed < budget_s:
            pace = elapsed / step if step else None
            total = cfg.max_steps if not pace or budget_s == math.inf else min(cfg.max_steps, int(budget_s / pace))
            lr = _lr_at(cfg, step, max(total, step + 1))
            for g in opt.param_groups:
                g["lr"] = lr
            batch = _to(data.batch(step), device)
            logits = model(batch["pixel_values"], batch["grid_thw"])
            parts = head_losses(logits, batch["labels"])
            loss = sum(parts.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            now = time.perf_counter()
            dt, t_last = now - t_last, now
            elapsed += dt
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                writer.writerow([step, f"{lr:.3e}", f"{loss.item():.4f}", *(f"{v.item():.4f}" for v in parts.values()),
                                 f"{dt:.3f}", f"{elapsed:.1f}"])
                fh.flush()
            if step % cfg.save_every == 0:
                save_checkpoint(out / f"step-{step}", model, opt, {"step": step, "elapsed_s": elapsed})
                for old in sorted(out.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))[:-2]:
                    shutil.rmtree(old, ignore_errors=True)
        bar.close()
    final = out / "final"
    final.mkdir(exist_ok=True)
    for part, name in ((model.tower, TOWER_FILE), (model.heads, "heads.safetensors")):
        save_file({k: v.detach().cpu().contiguous() for k, v in part.state_dict().items()}, str(final / name))
    metrics = {"steps": step, "minutes": round(elapsed / 60, 2),
               "heldout": evaluate(model, SceneBatches(cfg, spec.image_processor, "heldout"), cfg.eval_images)}
    (final / "metrics.json").write_text(json.dumps(metrics, indent=1))
    print(json.dumps(metrics), flush=True)
    return final


def load_vision_tower(tower: nn.Module, path: str | Path) -> None:
    """Load pretrained tower weights (a `final/` directory or the safetensors file) into `tower`; every
    key must match (a different vision_config is an error that names the mismatching keys)."""
    path = Path(path)
    file = path / TOWER_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no pretrained vision tower at {file} (run `python -m emova.train.vision_pretrain`)")
    state = load_tensors(file)
    own = tower.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{file} does not fit this vision tower: missing {missing[:5]}, unexpected {unexpected[:5]}, "
                         f"shape mismatch {wrong[:5]} (was it trained with the same vision_config?)")
    tower.load_state_dict(state, strict=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="emova train vision", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="vision_tiny", help="YAML (or a name in emova/configs/train/)")
    for f in fields(VisionPretrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type == "bool":
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None)
        elif f.name == "max_minutes":
            p.add_argument(flag, type=float, default=None)
        else:
            p.add_argument(flag, type={"int": int, "float": float}.get(str(f.type), str), default=None)
    a = vars(p.parse_args(argv))
    cfg = VisionPretrainConfig.load(a.pop("config"), **a)
    train_vision(cfg)


if __name__ == "__main__":
    main()
