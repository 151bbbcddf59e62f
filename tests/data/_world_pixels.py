"""Test helper: read a tiny-world image back into (shape, colour, position) from its pixels alone,
and answer a question from that reading — an independent check of the generator's answers."""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

from emova.data.world.images import COLORS, SLOT_CENTERS, nearest_color, position_of_point

_PLURAL = {"circles": "circle", "squares": "square", "triangles": "triangle"}


def pixel_objects(img: Image.Image) -> list[tuple[str, str, str]]:
    """(shape, colour, position) of every shape, found by looking at each slot's pixels."""
    a = np.asarray(img).astype(int)
    bg = a[0, 0]
    found = []
    for sx, sy in SLOT_CENTERS.values():
        px = a[sy, sx]
        if np.abs(px - bg).max() < 40:
            continue
        win = a[sy - 36 : sy + 37, sx - 36 : sx + 37]
        mask = (win == px).all(axis=-1)
        ys, xs = np.nonzero(mask)
        area = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
        fill = mask.sum() / area
        shape = "square" if fill > 0.95 else "circle" if fill > 0.7 else "triangle" if 0.4 < fill < 0.6 else "?"
        pos = position_of_point(sx - 36 + xs.mean(), sy - 36 + ys.mean())
        found.append((shape, nearest_color(tuple(px)), pos))
    return found


def solve(question: str, qtype: str, objects: list[tuple[str, str, str]]) -> str:
    """Answer a question from pixel objects; asserts the question is unambiguous."""
    words = re.findall(r"[a-z]+", question.lower())
    colors = [w for w in words if w in COLORS]
    shapes = [w for w in words if w in ("circle", "square", "triangle")]
    plurals = [_PLURAL[w] for w in words if w in _PLURAL]
    if qtype == "count":
        if plurals:
            return str(sum(o[0] == plurals[0] for o in objects))
        if colors:
            return str(sum(o[1] == colors[0] for o in objects))
        return str(len(objects))
    if qtype == "color":
        hits = [o for o in objects if o[0] == shapes[0]]
        assert len(hits) == 1, (question, objects)
        return hits[0][1]
    if qtype == "shape":
        hits = [o for o in objects if o[1] == colors[0]]
        assert len(hits) == 1, (question, objects)
        return hits[0][0]
    if qtype == "position":
        hits = [o for o in objects if (not shapes or o[0] == shapes[0]) and (not colors or o[1] == colors[0])]
        assert len(hits) == 1, (question, objects)
        return hits[0][2]
    raise ValueError(qtype)
