"""EmovaProcessor: chat template, tokenisation with label masks, images, speech units.

Template (Qwen2 ChatML, as `conv_qwen2` in the original):
    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>user\\n<image>\\n{text}<|im_end|>\\n          (`<image>\\n` opens the first user turn)
    <|im_start|>assistant\\n{answer}<|im_end|>\\n
Learned tokens (labels != -100): every assistant `{answer}<|im_end|>\\n`, nothing else — the span the
original `preprocess_mpt` leaves unmasked. Labels are assigned from character offsets of ONE tokenisation
of the whole text; a token crossing a learned/unlearned boundary raises `TokenizationMismatchError`
(the original printed a warning and trained on nothing).
Each `<image>` token is then repeated once per vision token of its image (t*h*w / merge²).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import (  # pillow backend: no torchvision
    Qwen2VLImageProcessorPil as Qwen2VLImageProcessor,
)

from emova.assets import read_json_object
from emova.model.prompts import DEFAULT_SYSTEM_PROMPT

IGNORE_INDEX = -100
IMAGE_TOKEN = "<image>"
NUM_SPEECH_UNITS = 4096
PROCESSOR_FILE = "emova_processor.json"
_SPEECH_RE = re.compile(r"<\|speech_(\d+)\|>")
_ROLES = ("system", "user", "assistant")
# Qwen2-VL / OpenAI-CLIP normalisation (the Qwen2VLImageProcessor defaults, written out so they are fixed)
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


class TokenizationMismatchError(ValueError):
    """The tokenised template and the label mask disagree (a token crosses a learned-span boundary)."""


def reduce_units(units: Iterable[int]) -> list[int]:
    """Remove consecutive duplicates: [5, 5, 7, 7, 5] → [5, 7, 5]."""
    out: list[int] = []
    for u in units:
        if not out or out[-1] != u:
            out.append(int(u))
    return out


def build_image_processor(
    min_pixels: int, max_pixels: int, patch_size: int = 14, merge_size: int = 2, temporal_patch_size: int = 2
) -> Qwen2VLImageProcessor:
    """Qwen2-VL image processor built offline from arguments (no hub)."""
    if not 0 < min_pixels <= max_pixels:
        raise ValueError(f"need 0 < min_pixels <= max_pixels, got {min_pixels}, {max_pixels}")
    return Qwen2VLImageProcessor(
        min_pixels=min_pixels,
        max_pixels=max_pixels,
        patch_size=patch_size,
        merge_size=merge_size,
        temporal_patch_size=temporal_patch_size,
        image_mean=list(IMAGE_MEAN),
        image_std=list(IMAGE_STD),
    )


def speech_token_ids_from_added_tokens(path: str | Path, num_units: int = NUM_SPEECH_UNITS) -> list[int]:
    """Read `<|speech_k|>` ids from a checkpoint's added_tokens.json (file or its directory); index k → id."""
    path = Path(path)
    if path.is_dir():
        path = path / "added_tokens.json"
    table: dict[str, int] = json.loads(path.read_text(encoding="utf-8"))
    return _speech_ids_from_table(table, num_units, source=str(path))


def _speech_ids_from_table(table: dict[str, int], num_units: int, source: str) -> list[int]:
    ids: dict[int, int] = {}
    for token, idx in table.items():
        m = _SPEECH_RE.fullmatch(token)
        if m:
            ids[int(m.group(1))] = int(idx)
    missing = [k for k in range(num_units) if k not in ids]
    if missing:
        raise ValueError(f"{source}: {len(missing)} speech tokens missing, e.g. <|speech_{missing[0]}|>")
    return [ids[k] for k in range(num_units)]


class EmovaProcessor:
    """Turns conversations (+ images, + speech units) into model inputs, and model outputs back."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_processor: Qwen2VLImageProcessor | None = None,
        system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
        speech_token_ids: Sequence[int] | None = None,
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.system_prompt = system_prompt
        vocab = tokenizer.get_vocab()
        for tok in ("<|im_start|>", "<|im_end|>", IMAGE_TOKEN):
            if tok not in vocab:
                raise ValueError(f"tokenizer lacks {tok!r}; EMOVA needs <|im_start|>, <|im_end|> and <image>")
        self.image_token_id = int(vocab[IMAGE_TOKEN])
        self.im_end_id = int(vocab["<|im_end|>"])
        ids = list(speech_token_ids) if speech_token_ids is not None else _speech_ids_from_table(
            vocab, NUM_SPEECH_UNITS, source="tokenizer vocabulary")
        self.speech_token_ids: list[int] = ids  # unit k → token id
        self._id_to_unit = {tid: k for k, tid in enumerate(ids)}

    # ---- persistence -----------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path) -> EmovaProcessor:
        """Load tokenizer (+ `emova_processor.json` image settings) from a local directory only."""
        path = Path(path)
        try:
            tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot load the tokenizer ({e})") from None
        except Exception as e:  # the tokenizers library raises a bare Exception for a malformed tokenizer.json
            raise ValueError(f"{path}: cannot load the tokenizer (tokenizer.json: {e})") from None
        settings: dict[str, Any] = {}
        if (path / PROCESSOR_FILE).exists():
            settings = read_json_object(path / PROCESSOR_FILE)
        speech_ids = None
        if (path / "added_tokens.json").exists():  # official checkpoints: the ids come from here
            speech_ids = speech_token_ids_from_added_tokens(path)
        image = settings.get("image_processor")
        return cls(
            tok,
            build_image_processor(**image) if image else None,
            system_prompt=settings.get("system_prompt", DEFAULT_SYSTEM_PROMPT),
            speech_token_ids=speech_ids,
        )

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        settings: dict[str, Any] = {"system_prompt": self.system_prompt}
        if self.image_processor is not None:
            ip = self.image_processor
            settings["image_processor"] = {
                "min_pixels": int(ip.size["shortest_edge"]),
                "max_pixels": int(ip.size["longest_edge"]),
                "patch_size": int(ip.patch_size),
                "merge_size": int(ip.merge_size),
                "temporal_patch_size": int(ip.temporal_patch_size),
            }
        (path / PROCESSOR_FILE).write_text(json.dumps(settings, indent=2), encoding="utf-8")

    # ---- speech units ----------------------------------------------------------------------------
    def units_to_string(self, units: Iterable[int], reduce: bool = True) -> str:
        """[12, 12, 7] → '<|speech_12|><|speech_7|>' (consecutive duplicates removed unless reduce=False)."""
        units = [int(u) for u in units]
        bad = [u for u in units if not 0 <= u < len(self.speech_token_ids)]
        if bad:
            raise ValueError(f"speech units must lie in [0, {len(self.speech_token_ids)}), got {bad[:5]}")
        return "".join(f"<|speech_{u}|>" for u in (reduce_units(units) if reduce else units))

    @staticmethod
    def string_to_units(text: str) -> list[int]:
        """All `<|speech_k|>` in text, in order (other text ignored)."""
        return [int(m) for m in _SPEECH_RE.findall(text)]

    def ids_to_units(self, ids: Iterable[int]) -> list[int]:
        """Speech-unit token ids → units (other ids ignored)."""
        return [self._id_to_unit[int(i)] for i in ids if int(i) in self._id_to_unit]

    def decode(self, ids: Iterable[int] | torch.Tensor, skip_special_tokens: bool = True) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    # ---- template --------------------------------------------------------------------------------
    def _content_text(self, content: str | list[dict[str, Any]], images: list[Any]) -> str:
        if isinstance(content, str):
            return content.replace(IMAGE_TOKEN, "")
        pieces: list[str] = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                pieces.append(str(part["text"]).replace(IMAGE_TOKEN, ""))
            elif kind == "image":
                images.append(part.get("image"))
            elif kind == "units":
                pieces.append(self.units_to_string(part["units"], reduce=part.get("reduce", True)))
            else:
                raise ValueError(f"unknown content part type {kind!r}; accepted: text, image, units")
        return "".join(pieces)

    def render(
        self,
        messages: Sequence[dict[str, Any]],
        num_images: int = 0,
        add_generation_prompt: bool = False,
    ) -> tuple[str, list[tuple[int, int]], list[Any]]:
        """Template text, the learned character spans, and the inline images found in `messages`.
        `num_images` counts images passed besides inline parts; all get `<image>\\n` at the first user turn."""
        inline: list[Any] = []
        turns: list[tuple[str, str]] = []
        for m in messages:
            role = m.get("role")
            if role not in _ROLES:
                raise ValueError(f"message role {role!r}; accepted: {list(_ROLES)}")
            turns.append((role, self._content_text(m["content"], inline)))
        if turns and turns[0][0] != "system" and self.system_prompt is not None:
            turns.insert(0, ("system", self.system_prompt))
        n_img = num_images + len(inline)
        users = [i for i, (r, _) in enumerate(turns) if r == "user"]
        if n_img and not users:
            raise ValueError("images need a user turn to attach to")
        text, spans = "", []
        for i, (role, body) in enumerate(turns):
            if n_img and i == users[0]:
                body = f"{IMAGE_TOKEN}\n" * n_img + body.strip()
            text += f"<|im_start|>{role}\n"
            if role == "assistant":
                start = len(text)
                text += f"{body}<|im_end|>\n"
                spans.append((start, len(text)))
            else:
                text += f"{body}<|im_end|>\n"
        if add_generation_prompt:
            text += "<|im_start|>assistant\n"
        return text, spans, inline

    # ---- main entry ------------------------------------------------------------------------------
    def __call__(
        self,
        messages: Sequence[dict[str, Any]],
        images: Sequence[Image.Image | str | Path] | None = None,
        add_generation_prompt: bool = False,
    ) -> dict[str, torch.Tensor]:
        """One conversation → {input_ids (1, T), attention_mask (1, T), labels (1, T)
        [, pixel_values (N_patches, C*T*P*P), image_grid_thw (num_images, 3)]}."""
        images = list(images or [])
        text, spans, inline = self.render(messages, num_images=len(images), add_generation_prompt=add_generation_prompt)
        all_images = [im for im in inline + images if im is not None]
        if len(all_images) != len(inline) + len(images):
            raise ValueError("an image content part has no 'image' value")
        enc = self.tokenizer(text, return_offsets_mapping=True, add_special_tokens=False)
        ids: list[int] = enc["input_ids"]
        labels = self._labels_from_spans(ids, enc["offset_mapping"], spans)
        out: dict[str, torch.Tensor] = {}
        if all_images:
            if self.image_processor is None:
                raise ValueError("this processor has no image processor; build it with image settings")
            pil = [_load_image(im) for im in all_images]
            vis = self.image_processor(images=pil, return_tensors="pt")
            grid = vis["image_grid_thw"]  # (num_images, 3)
            counts = [int(t * h * w) // self.image_processor.merge_size**2 for t, h, w in grid.tolist()]
            ids, labels = self._expand_image_tokens(ids, labels, counts)
            out["pixel_values"], out["image_grid_thw"] = vis["pixel_values"], grid
        elif ids.count(self.image_token_id):
            raise ValueError("the text holds <image> tokens but no images were given")
        out["input_ids"] = torch.tensor([ids], dtype=torch.long)
        out["attention_mask"] = torch.ones_like(out["input_ids"])
        out["labels"] = torch.tensor([labels], dtype=torch.long)
        return out

    def _labels_from_spans(
        self, ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]
    ) -> list[int]:
        labels = [IGNORE_INDEX] * len(ids)
        for i, (s, e) in enumerate(offsets):
            for a, b in spans:
                if a <= s and e <= b and e > s:
                    labels[i] = ids[i]
                elif s < b and e > a:  # overlaps the span without lying inside it
                    raise TokenizationMismatchError(
                        f"token {i} (chars {s}-{e}, id {ids[i]}) crosses the learned span {a}-{b}; "
                        f"the template and the label mask would disagree"
                    )
        return labels

    def _expand_image_tokens(
        self, ids: list[int], labels: list[int], counts: list[int]
    ) -> tuple[list[int], list[int]]:
        positions = [i for i, t in enumerate(ids) if t == self.image_token_id]
        if len(positions) != len(counts):
            raise ValueError(f"{len(positions)} <image> tokens in the text but {len(counts)} images")
        new_ids: list[int] = []
        new_labels: list[int] = []
        k = 0
        for t, lab in zip(ids, labels):
            if t == self.image_token_id:
                new_ids += [t] * counts[k]
                new_labels += [IGNORE_INDEX] * counts[k]
                k += 1
            else:
                new_ids.append(t)
                new_labels.append(lab)
        return new_ids, new_labels

    def pad(self, features: Sequence[dict[str, torch.Tensor]], padding_side: str = "right") -> dict[str, torch.Tensor]:
        """Batch single-conversation outputs: pad ids (pad token), labels (-100), attention_mask (0);
        concatenate pixel_values / image_grid_thw in batch order (the order masked_scatter fills)."""
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.im_end_id
        width = max(f["input_ids"].shape[1] for f in features)
        batch: dict[str, list[torch.Tensor]] = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            n = width - f["input_ids"].shape[1]
            for key, value in (("input_ids", pad_id), ("attention_mask", 0), ("labels", IGNORE_INDEX)):
                fill = torch.full((1, n), value, dtype=torch.long)
                parts = [fill, f[key]] if padding_side == "left" else [f[key], fill]
                batch[key].append(torch.cat(parts, dim=1))
        out = {k: torch.cat(v, dim=0) for k, v in batch.items()}  # (B, T)
        with_images = [f for f in features if "pixel_values" in f]
        if with_images:
            out["pixel_values"] = torch.cat([f["pixel_values"] for f in with_images], dim=0)
            out["image_grid_thw"] = torch.cat([f["image_grid_thw"] for f in with_images], dim=0)
        return out


def to_rgb(image: Image.Image) -> Image.Image:
    """An image as RGB; transparent pixels are laid on white (as a browser shows them), not turned into whatever
    colour they happen to store (often black: PIL's plain `convert("RGB")` drops the alpha channel). Always a new,
    loaded image (so a file's image outlives its `with Image.open(...)` block)."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _load_image(image: Image.Image | str | Path) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)
    try:
        with Image.open(image) as im:
            return to_rgb(im)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read image {image!s}: {exc}") from exc
