"""Vision-tower pretraining: dense labels follow the picture, training resumes, the tower loads into stage 1."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from emova.data.world.images import COLORS, SLOT_CENTERS, Scene, SceneObject
from emova.train.omni import OmniTrainConfig, build_model
from emova.train.vision_pretrain import (
    HEADS,
    TOWER_FILE,
    VisionPretrainConfig,
    VisionPretrainer,
    cell_labels,
    load_vision_tower,
    train_vision,
)
from tests.train.omni_micro import MICRO_MODEL

# the micro model with 224 px images kept whole (8x8 merged tokens), as the tiny model has
MICRO_224 = MICRO_MODEL.replace("image_processor: {min_pixels: 3136, max_pixels: 3136}",
                                "image_processor: {min_pixels: 3136, max_pixels: 50176}")


def _obj(shape: str, color: str, pos: str, half: int = 24) -> SceneObject:
    cx, cy = SLOT_CENTERS[pos]
    return SceneObject(shape, color, pos, (cx - half, cy - half, cx + half, cy + half), COLORS[color])


def test_cell_labels_follow_the_picture():
    scene = Scene(objects=(_obj("square", "red", "left"), _obj("circle", "blue", "center")),
                  background=(250, 250, 250), text="7", text_corner="top-right", text_bbox=(180, 10, 200, 50))
    lab = {k: v.view(8, 8) for k, v in cell_labels(scene, 8).items()}
    # the left square spans x 16..64, y 88..136: columns 0-2 (>= 15 % covered), rows 3-4
    assert lab["shape"][3, 1] == HEADS["shape"].index("square") and lab["colour"][4, 0] == HEADS["colour"].index("red")
    assert lab["slot"][3, 1] == HEADS["slot"].index("left")
    assert lab["shape"][3, 3] == HEADS["shape"].index("circle") and lab["slot"][4, 4] == HEADS["slot"].index("center")
    assert lab["shape"][0, 0] == 0 and lab["colour"][7, 7] == 0 and lab["slot"][0, 4] == 0  # background
    # one centre token per object: (40,112) → row 4, col 1; (112,112) → row 4, col 4
    assert lab["centre"].sum() == 2 and lab["centre"][4, 1] == 1 and lab["centre"][4, 4] == 1
    # the text box x 180..200, y 10..50 covers cells (0,6), (0,7), (1,6), (1,7)
    seven = HEADS["text"].index("7")
    assert {tuple(ix.tolist()) for ix in (lab["text"] == seven).nonzero()} == {(0, 6), (0, 7), (1, 6), (1, 7)}
    assert int((lab["text"] != 0).sum()) == 4


def test_cell_labels_triangle_tip_is_not_its_bbox():
    """Labels come from the drawn pixels, not the bounding box: a triangle's empty upper corners stay
    background where a square with the same box is labelled (14 px cells make the difference visible)."""
    tri = cell_labels(Scene(objects=(_obj("triangle", "green", "center", half=27),), background=(240,) * 3), 16)
    sq = cell_labels(Scene(objects=(_obj("square", "green", "center", half=27),), background=(240,) * 3), 16)
    tri, sq = tri["shape"].view(16, 16), sq["shape"].view(16, 16)
    # box 85..139: the top-left cell of the box (x, y 84..97) is empty for the triangle, full for the square
    assert sq[6, 6] == HEADS["shape"].index("square") and tri[6, 6] == 0
    assert tri[9, 6] == tri[9, 9] == HEADS["shape"].index("triangle")  # the base row is covered
    assert int((tri != 0).sum()) < int((sq != 0).sum())


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="batch_size"):
        VisionPretrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="text_prob"):
        VisionPretrainConfig(text_prob=1.5)
    with pytest.raises(ValueError, match="unknown keys"):
        VisionPretrainConfig.load("vision_tiny", nonsense=1)
    assert VisionPretrainConfig.load("vision_tiny").model == "tiny"
    with pytest.raises(ValueError, match="vision_init_from is for a fresh start"):
        OmniTrainConfig(init_from="runs/a", vision_init_from="runs/b")


def test_train_resume_export_and_load_into_stage1(tmp_path, capsys):
    model_cfg = tmp_path / "micro.yaml"
    model_cfg.write_text(MICRO_224)
    cfg = VisionPretrainConfig(model=str(model_cfg), out_dir=str(tmp_path / "vision"), max_steps=4, max_minutes=None,
                               batch_size=2, save_every=2, log_every=1, eval_images=4, progress=False)
    final = train_vision(cfg)
    rows = (tmp_path / "vision" / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4
    metrics = json.loads((final / "metrics.json").read_text())
    assert metrics["steps"] == 4 and 0 <= metrics["heldout"]["colour"] <= 1
    # killed after step 4 was logged but before its checkpoint: the rerun resumes from step-2, with more
    # steps, and the log holds each step once
    import shutil

    shutil.rmtree(tmp_path / "vision" / "step-4")
    cfg.max_steps = 6
    capsys.readouterr()
    train_vision(cfg)
    assert "step-2 (step 2," in capsys.readouterr().out
    rows = (tmp_path / "vision" / "log.csv").read_text().strip().splitlines()
    assert [int(r.split(",")[0]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6]
    tower = load_file(str(final / TOWER_FILE))
    assert tower and all(not k.startswith("heads") for k in tower)

    stage1 = OmniTrainConfig(stage=1, model=str(model_cfg), vision_init_from=str(final))
    model = build_model(stage1)
    for k, v in model.vision_tower.state_dict().items():
        assert torch.equal(v, tower[k]), k


def test_load_vision_tower_refuses_a_mismatch(tmp_path):
    from emova.model.config_loader import load_model_config

    model_cfg = tmp_path / "micro.yaml"
    model_cfg.write_text(MICRO_224)
    tower = VisionPretrainer(load_model_config(str(model_cfg)).config.vision_config).tower
    with pytest.raises(FileNotFoundError, match="no pretrained vision tower"):
        load_vision_tower(tower, tmp_path / "nowhere")
    bad = {k: v for k, v in tower.state_dict().items() if "blocks.1." not in k}
    bad["patch_embed.proj.weight"] = torch.zeros(3, 3)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError, match="does not fit this vision tower"):
        load_vision_tower(tower, tmp_path / "bad.safetensors")
