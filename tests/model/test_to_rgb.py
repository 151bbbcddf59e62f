"""Images with transparency are laid on white, not on whatever colour their transparent pixels store."""

import numpy as np
import pytest
from PIL import Image

from emova.inference.messages import load_image
from emova.model.processor import to_rgb


def _shape_on_transparent_black() -> Image.Image:
    a = np.zeros((32, 32, 4), np.uint8)  # transparent pixels stored as black, as drawing programs do
    a[8:24, 8:24] = (200, 40, 160, 255)  # an opaque purple square
    a[0:4, 0:4] = (0, 200, 0, 128)  # a half-transparent green corner
    return Image.fromarray(a, "RGBA")


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_laid_on_white(tmp_path, mode):
    im = _shape_on_transparent_black()
    if mode == "LA":
        im = im.convert("LA")
    elif mode == "P":
        im = im.convert("RGBA").convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
        im.info["transparency"] = im.getpixel((31, 31))  # the background's palette index
    out = np.asarray(to_rgb(im))
    assert out.shape == (32, 32, 3)
    assert (out[20, 30] == 255).all()  # transparent background → white, not black
    assert out[16, 16].max() < 255  # the opaque square keeps its colour
    if mode == "RGBA":
        assert tuple(out[16, 16]) == (200, 40, 160)
        assert np.abs(out[1, 1].astype(int) - (127, 227, 127)).max() <= 1  # half green over white
        im.save(tmp_path / "t.png")
        assert np.array_equal(np.asarray(load_image(tmp_path / "t.png")), out)  # the pipeline's loader does the same
        assert np.array_equal(np.asarray(load_image(im)), out)


def test_rgb_images_are_untouched():
    im = Image.new("RGB", (8, 8), (10, 20, 30))
    assert np.array_equal(np.asarray(to_rgb(im)), np.asarray(im))
    assert np.asarray(to_rgb(im.convert("L"))).shape == (8, 8, 3)
