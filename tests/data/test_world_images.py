import io
import random

import numpy as np
import pytest
from _world_pixels import pixel_objects

from emova.data.world.images import (
    COLORS,
    IMAGE_SIZE,
    POSITIONS,
    Scene,
    make_image,
    random_scene,
    render_scene,
    scene_split,
)


def _png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_same_seed_same_bytes_other_seed_other_image():
    a, sa = make_image(random.Random(7))
    b, sb = make_image(random.Random(7))
    c, _ = make_image(random.Random(8))
    assert _png(a) == _png(b) and sa == sb
    assert _png(a) != _png(c)


def test_pixels_agree_with_scene():
    rng = random.Random(0)
    for _ in range(60):
        img, scene = make_image(rng, text_prob=0.5)
        assert img.size == (IMAGE_SIZE, IMAGE_SIZE) and img.mode == "RGB"
        assert 1 <= len(scene.objects) <= 5
        assert len({o.position for o in scene.objects}) == len(scene.objects)  # one object per slot
        got = sorted(pixel_objects(img))
        want = sorted((o.shape, o.color, o.position) for o in scene.objects)
        assert got == want


def test_objects_and_text_never_overlap():
    rng = random.Random(1)
    for _ in range(200):
        s = random_scene(rng, text_prob=0.6)
        boxes = [o.bbox for o in s.objects] + ([s.text_bbox] if s.text_bbox else [])
        for i, p in enumerate(boxes):
            assert 0 <= p[0] and 0 <= p[1] and p[2] < IMAGE_SIZE and p[3] < IMAGE_SIZE
            for q in boxes[i + 1 :]:
                assert p[2] < q[0] or q[2] < p[0] or p[3] < q[1] or q[3] < p[1], (p, q)


def test_text_is_drawn_large_and_dark():
    rng = random.Random(2)
    n = 0
    while n < 10:
        img, s = make_image(rng, text_prob=1.0)
        x0, y0, x1, y1 = s.text_bbox
        assert y1 - y0 >= 16  # legible: at least 16 px tall
        ink = (np.asarray(img)[y0 : y1 + 1, x0 : x1 + 1].astype(int).sum(-1) < 300).sum()
        assert ink > 40
        n += 1


def test_variety_of_colours_shapes_positions_and_text():
    rng = random.Random(3)
    scenes = [random_scene(rng) for _ in range(300)]
    objs = [o for s in scenes for o in s.objects]
    assert {o.color for o in objs} == set(COLORS)
    assert {o.position for o in objs} == set(POSITIONS)
    assert {o.shape for o in objs} == {"circle", "square", "triangle"}
    kinds = {s.text_kind for s in scenes}
    assert kinds == {None, "word", "digit"}
    assert {len(s.objects) for s in scenes} == {1, 2, 3, 4, 5}
    assert len({s.background for s in scenes}) > 50


def test_scene_dict_round_trip_and_render():
    s = random_scene(random.Random(4), text_prob=1.0)
    d = s.to_dict()
    back = Scene.from_dict(d)
    assert back == s
    assert _png(render_scene(back)) == _png(render_scene(s))


def test_split_partition_is_respected():
    rng = random.Random(5)
    for split in ("train", "heldout"):
        for _ in range(30):
            assert scene_split(random_scene(rng, split=split)) == split
    with pytest.raises(ValueError, match="split"):
        random_scene(rng, split="test")
