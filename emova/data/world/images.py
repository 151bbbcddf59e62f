"""Tiny-world images: 224x224 pictures of 1-5 filled shapes, sometimes with one word or digit.

Layout. Five fixed slots form a plus sign — `left`, `right`, `top`, `bottom`, `center` — and every
shape sits in its own slot (a few pixels of jitter), so a shape's position is its slot and shapes
never overlap. The optional word or digit is drawn in one of the four corners, which no slot reaches.

A scene is plain data (`Scene`), drawn by `render_scene`; `random_scene` samples one from a
`random.Random`. Held-out scenes are kept apart from training scenes by `scene_split`, a stable hash
of the scene's composition (shapes, colours, positions, text): the same composition never appears
in both splits, whatever the seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field

from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 224
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 50),
    "blue": (30, 70, 220),
    "yellow": (235, 205, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
    "black": (20, 20, 20),
}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
# Slot centres (x, y). Neighbouring slots are 72 px apart; a shape is at most 60 px wide plus jitter.
SLOT_CENTERS: dict[str, tuple[int, int]] = {
    "left": (40, 112),
    "right": (184, 112),
    "top": (112, 40),
    "bottom": (112, 184),
    "center": (112, 112),
}
CORNERS: tuple[str, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")
CORNER_BOX = 72  # the square in each corner (inset 3 px) that text may use; slots never reach it
_CORNER_INSET = 3
WORDS: tuple[str, ...] = (
    "cat", "dog", "sun", "cup", "hat", "key", "box", "pen", "car", "bus", "map", "egg",
    "bed", "fox", "owl", "pig", "cow", "bee", "toy", "jam", "bag", "net", "bat", "van",
)  # fmt: skip
DIGITS: tuple[str, ...] = tuple(str(d) for d in range(10))
HELDOUT_FRACTION_DEN = 5  # one composition in five belongs to the held-out split

_HALF_MIN, _HALF_MAX, _JITTER = 20, 28, 5


@dataclass(frozen=True)
class SceneObject:
    """One filled shape. `bbox` is (x0, y0, x1, y1), inclusive pixel coordinates."""

    shape: str
    color: str
    position: str
    bbox: tuple[int, int, int, int]
    rgb: tuple[int, int, int]

    @property
    def center(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.bbox
        return ((x0 + x1) // 2, (y0 + y1) // 2)


@dataclass(frozen=True)
class Scene:
    """Everything drawn in one image. `text` is an upper-case word or a digit, or None."""

    objects: tuple[SceneObject, ...]
    background: tuple[int, int, int]
    text: str | None = None
    text_corner: str | None = None
    text_bbox: tuple[int, int, int, int] | None = None
    text_rgb: tuple[int, int, int] = (30, 30, 30)
    font_size: int = 32
    meta: dict = field(default_factory=dict, compare=False)

    @property
    def text_kind(self) -> str | None:
        """'digit', 'word' or None."""
        if self.text is None:
            return None
        return "digit" if self.text.isdigit() else "word"

    def signature(self) -> str:
        """The composition, independent of jitter and colour noise: what the split hash is taken of."""
        objs = ",".join(sorted(f"{o.color}-{o.shape}@{o.position}" for o in self.objects))
        return f"{objs}|text={self.text or ''}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("meta")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        objects = tuple(
            SceneObject(
                shape=o["shape"], color=o["color"], position=o["position"],
                bbox=tuple(o["bbox"]), rgb=tuple(o["rgb"]),
            )  # fmt: skip
            for o in d["objects"]
        )
        return cls(
            objects=objects,
            background=tuple(d["background"]),
            text=d.get("text"),
            text_corner=d.get("text_corner"),
            text_bbox=tuple(d["text_bbox"]) if d.get("text_bbox") is not None else None,
            text_rgb=tuple(d.get("text_rgb", (30, 30, 30))),
            font_size=int(d.get("font_size", 32)),
        )


def stable_bucket(key: str, buckets: int) -> int:
    """A bucket in [0, buckets) from an md5 of `key`; the same on every machine and Python run."""
    return int.from_bytes(hashlib.md5(key.encode("utf-8")).digest()[:8], "big") % buckets


def split_of_key(key: str) -> str:
    """'heldout' for one key in `HELDOUT_FRACTION_DEN`, else 'train' (stable across runs)."""
    return "heldout" if stable_bucket(key, HELDOUT_FRACTION_DEN) == 0 else "train"


def scene_split(scene: Scene) -> str:
    """Which split a scene's composition belongs to."""
    return split_of_key("scene:" + scene.signature())


def _noisy(rgb: tuple[int, int, int], rng: random.Random, amount: int) -> tuple[int, int, int]:
    return tuple(max(0, min(255, c + rng.randint(-amount, amount))) for c in rgb)  # type: ignore[return-value]


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    # Pillow's bundled font: no files needed, identical on every machine with FreeType.
    return ImageFont.load_default(size=size)


def _fit_size(text: str, size: int) -> int:
    """The largest font size <= `size` at which `text` fits inside a corner box."""
    while size > 8:
        left, top, right, bottom = _font(size).getbbox(text)
        if right - left <= CORNER_BOX - 2 and bottom - top <= CORNER_BOX - 2:
            return size
        size -= 1
    return size


def _place_text(text: str, corner: str, size: int) -> tuple[int, int, tuple[int, int, int, int]]:
    """Top-left draw origin and the resulting ink bbox of `text` centred in `corner`'s box."""
    font = _font(size)
    left, top, right, bottom = font.getbbox(text)
    w, h = right - left, bottom - top
    box_x0 = _CORNER_INSET if corner.endswith("left") else IMAGE_SIZE - _CORNER_INSET - CORNER_BOX
    box_y0 = _CORNER_INSET if corner.startswith("top") else IMAGE_SIZE - _CORNER_INSET - CORNER_BOX
    x = box_x0 + (CORNER_BOX - w) // 2 - left
    y = box_y0 + (CORNER_BOX - h) // 2 - top
    return x, y, (x + left, y + top, x + right - 1, y + bottom - 1)


def random_scene(
    rng: random.Random,
    n_objects: int | None = None,
    text_prob: float = 0.35,
    split: str | None = None,
    max_tries: int = 1000,
) -> Scene:
    """Sample a scene. With `split` given, resample until the composition belongs to that split."""
    if split not in (None, "train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    if n_objects is not None and not 1 <= n_objects <= len(POSITIONS):
        raise ValueError(f"n_objects must be in 1..{len(POSITIONS)}, got {n_objects}")
    for _ in range(max_tries):
        scene = _sample_scene(rng, n_objects, text_prob)
        if split is None or scene_split(scene) == split:
            return scene
    raise RuntimeError(f"no scene of split {split!r} found in {max_tries} tries")


def _sample_scene(rng: random.Random, n_objects: int | None, text_prob: float) -> Scene:
    n = n_objects if n_objects is not None else rng.randint(1, len(POSITIONS))
    positions = rng.sample(POSITIONS, n)
    background = (rng.randint(232, 255), rng.randint(232, 255), rng.randint(232, 255))
    objects = []
    for pos in positions:
        shape = rng.choice(SHAPES)
        color = rng.choice(list(COLORS))
        half = rng.randint(_HALF_MIN, _HALF_MAX)
        sx, sy = SLOT_CENTERS[pos]
        cx, cy = sx + rng.randint(-_JITTER, _JITTER), sy + rng.randint(-_JITTER, _JITTER)
        bbox = (cx - half, cy - half, cx + half, cy + half)
        objects.append(SceneObject(shape, color, pos, bbox, _noisy(COLORS[color], rng, 12)))
    text = corner = text_bbox = None
    size = 32
    text_rgb = (30, 30, 30)
    if rng.random() < text_prob:
        text = rng.choice(DIGITS) if rng.random() < 0.4 else rng.choice(WORDS).upper()
        corner = rng.choice(CORNERS)
        size = _fit_size(text, rng.randint(44, 56) if text.isdigit() else rng.randint(30, 36))
        text_rgb = _noisy((30, 30, 40), rng, 20)
        _, _, text_bbox = _place_text(text, corner, size)
    return Scene(tuple(objects), background, text, corner, text_bbox, text_rgb, size)


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject) -> None:
    x0, y0, x1, y1 = obj.bbox
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=obj.rgb)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=obj.rgb)
    elif obj.shape == "triangle":
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=obj.rgb)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}; expected one of {', '.join(SHAPES)}")


def render_scene(scene: Scene) -> Image.Image:
    """Draw a scene as a 224x224 RGB image (no anti-aliasing: object centres hold the exact colour)."""
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        _draw_shape(draw, obj)
    if scene.text is not None:
        x, y, _ = _place_text(scene.text, scene.text_corner or "top-left", scene.font_size)
        draw.text((x, y), scene.text, fill=scene.text_rgb, font=_font(scene.font_size))
    return img


def make_image(
    rng: random.Random, split: str | None = None, text_prob: float = 0.35
) -> tuple[Image.Image, Scene]:
    """Sample a scene (of `split`, if given) and render it: (PIL image, scene description)."""
    scene = random_scene(rng, text_prob=text_prob, split=split)
    return render_scene(scene), scene


def nearest_color(rgb: tuple[int, int, int]) -> str:
    """The palette colour name closest to an RGB triple."""
    return min(COLORS, key=lambda c: sum((a - b) ** 2 for a, b in zip(COLORS[c], rgb)))


def position_of_point(x: float, y: float) -> str:
    """The slot a pixel belongs to — the rule that makes positions derivable from the picture."""
    return min(SLOT_CENTERS, key=lambda p: (SLOT_CENTERS[p][0] - x) ** 2 + (SLOT_CENTERS[p][1] - y) ** 2)
