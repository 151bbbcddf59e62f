"""LLaVA-style records → EmovaProcessor → padded batches, for the three training stages.

    records = load_task_records("data/world_units", "train", ["vqa", "asr", "tts"])  # units filled in
    ds = OmniDataset(records, image_root="data/world_units", processor=processor, max_length=1024)
    plan = batch_plan(ds.lengths, batch_size=16, seed=0, epoch=0)        # [[idx, ...], ...], deterministic
    batch = collate([ds[i] for i in plan[0]], processor)                  # input_ids/labels/… (B, T)

A record is `{"id", "image"?, "conversations": [{"from": "human"|"gpt", "value"}], "meta"?}` — the
format of EMOVA's released data and of `emova.data.world`. The first human turn of an image record
opens with `<image>\\n`; the processor puts it back at the same place (and expands it to one token
per vision token). Records still holding `<<speech:KEY>>` placeholders are refused: render and encode
their speech first (`emova.data.world.fill_speech_units`).

Batches are grouped by length (sorted inside shuffled windows), which keeps padding low on CPU, and
are a pure function of (lengths, batch_size, seed, epoch): a resumed run skips the batches it already
did and sees exactly what an uninterrupted run would have seen.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from emova.model.processor import EmovaProcessor

IMAGE_PREFIX = "<image>\n"
_ROLE = {"human": "user", "gpt": "assistant", "system": "system"}


def record_to_messages(record: dict[str, Any], image_root: str | Path | None = None) -> list[dict[str, Any]]:
    """A LLaVA-style record → processor messages. The image (if any) becomes an image part of the first
    user turn; `<image>\\n` is dropped from the text because the processor writes it back there."""
    rid = record.get("id", "?")
    messages: list[dict[str, Any]] = []
    image = record.get("image")
    for i, turn in enumerate(record["conversations"]):
        role = _ROLE.get(turn["from"])
        if role is None:
            raise ValueError(f"record {rid!r}: turn {i} is from {turn['from']!r}; expected human, gpt or system")
        value = str(turn["value"])
        if "<<speech:" in value:
            raise ValueError(f"record {rid!r}: speech placeholders are not filled; run fill_speech_units first")
        if image is not None and role == "user" and not any(m["role"] == "user" for m in messages):
            path = Path(image_root) / image if image_root is not None else Path(image)
            text = value.removeprefix(IMAGE_PREFIX)
            messages.append({"role": "user", "content": [{"type": "image", "image": str(path)},
                                                         {"type": "text", "text": text}]})
        else:
            messages.append({"role": role, "content": value})
    return messages


def load_task_records(world_dir: str | Path, split: str, tasks: Sequence[str]) -> list[dict[str, Any]]:
    """Concatenate `{world_dir}/{split}/{task}.json` for the tasks, in order (no image check: fast)."""
    out: list[dict[str, Any]] = []
    for task in tasks:
        path = Path(world_dir) / split / f"{task}.json"
        if not path.exists():
            raise FileNotFoundError(f"no records for task {task!r} at {path}")
        data = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of records")
        out += data
    return out


def mix_records(by_task: dict[str, list[dict[str, Any]]], weights: dict[str, float] | None, seed: int) -> list[dict]:
    """Resample each task's records to `weight x its size` (weight 1 = as is, 0.5 = a random half,
    2 = every record twice); deterministic for a seed."""
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for task, recs in by_task.items():
        w = 1.0 if weights is None else float(weights.get(task, 1.0))
        if w < 0:
            raise ValueError(f"task weight for {task!r} must be >= 0, got {w}")
        whole, frac = int(w), w - int(w)
        out += recs * whole
        out += rng.sample(recs, round(frac * len(recs)))
    return out


class OmniDataset(torch.utils.data.Dataset):
    """Tokenised conversations. `lengths[i]` is item i's token count (images expanded), computed once."""

    def __init__(self, records: Sequence[dict[str, Any]], processor: EmovaProcessor,
                 image_root: str | Path | None = None, max_length: int | None = None) -> None:
        self.records = list(records)
        self.processor = processor
        self.image_root = image_root
        self.max_length = max_length
        self._lengths: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rec = self.records[i]
        out = self.processor(record_to_messages(rec, self.image_root))
        n = out["input_ids"].shape[1]
        if self.max_length is not None and n > self.max_length:
            if "pixel_values" in out:
                raise ValueError(f"record {rec.get('id')!r}: {n} tokens > max_length {self.max_length} "
                                 "(an image record cannot be truncated)")
            for k in ("input_ids", "attention_mask", "labels"):
                out[k] = out[k][:, : self.max_length]
        return out

    @property
    def lengths(self) -> list[int]:
        if self._lengths is None:
            self._lengths = [self._length(r) for r in self.records]
        return self._lengths

    def _length(self, rec: dict[str, Any]) -> int:
        """Token count without decoding the image: text tokens + vision tokens of a 224x224-class image."""
        msgs = record_to_messages(rec, self.image_root)
        n_img = 1 if rec.get("image") else 0
        text, _, _ = self.processor.render(
            [{**m, "content": m["content"][1]["text"]} if isinstance(m["content"], list) else m for m in msgs],
            num_images=n_img)
        n = len(self.processor.tokenizer(text, add_special_tokens=False)["input_ids"])
        if n_img:
            n += self._image_tokens() - 1
        return min(n, self.max_length) if self.max_length else n

    def _image_tokens(self) -> int:
        ip = self.processor.image_processor
        if ip is None:
            raise ValueError("image records need a processor with an image processor")
        # the tiny world's images are 224x224; the Qwen2-VL resizer keeps them at 16x16 patches
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

        h, w = smart_resize(224, 224, factor=ip.patch_size * ip.merge_size,
                            min_pixels=ip.size["shortest_edge"], max_pixels=ip.size["longest_edge"])
        return (h // ip.patch_size) * (w // ip.patch_size) // ip.merge_size**2


def batch_plan(lengths: Sequence[int], batch_size: int, seed: int, epoch: int, window: int = 50) -> list[list[int]]:
    """Shuffled batches of similar length: shuffle, sort inside windows of `window` batches, cut, shuffle
    the batches. Deterministic for (lengths, batch_size, seed, epoch)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(f"omni-batches:{seed}:{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    span = batch_size * window
    batches: list[list[int]] = []
    for s in range(0, len(order), span):
        chunk = sorted(order[s : s + span], key=lambda i: lengths[i])
        batches += [chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(features: Sequence[dict[str, torch.Tensor]], processor: EmovaProcessor) -> dict[str, torch.Tensor]:
    """Right-pad a list of processor outputs into one batch (labels -100 on padding)."""
    return processor.pad(list(features), padding_side="right")


__all__ = ["OmniDataset", "batch_plan", "collate", "load_task_records", "mix_records", "record_to_messages"]
