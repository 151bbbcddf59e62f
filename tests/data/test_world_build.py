import hashlib
import json
from pathlib import Path

import pytest
from _world_pixels import pixel_objects, solve
from PIL import Image

from emova.data.world.build import TASKS, WorldSizes, build_world, load_split
from emova.data.world.dialogues import normalise
from emova.data.world.formats import load_records, records_needing_speech
from emova.data.world.images import Scene, scene_split

SMALL = WorldSizes(n_images=40, questions_per_image=2, n_vqa_speech=8, n_dialogues=21, n_text_qa=20, n_asr=12, n_tts=12)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("world")
    build_world(root, "train", sizes=SMALL, progress=False)
    build_world(root, "heldout", sizes=SMALL, progress=False)
    return root


def test_same_seed_same_bytes_and_resume(world, tmp_path):
    build_world(tmp_path, "train", sizes=SMALL, progress=False)
    build_world(tmp_path, "heldout", sizes=SMALL, progress=False)
    assert _digest(tmp_path) == _digest(world)
    (tmp_path / "train" / "vqa.json").unlink()
    (tmp_path / "images" / "train_00003.png").unlink()
    build_world(tmp_path, "train", sizes=SMALL, progress=False)  # resumes: rebuilds only what is missing
    assert _digest(tmp_path) == _digest(world)


def test_other_settings_are_refused(world):
    with pytest.raises(ValueError, match="other settings"):
        build_world(world, "train", sizes=SMALL, seed=5, progress=False)
    with pytest.raises(ValueError, match="unknown split"):
        build_world(world, "test", progress=False)


def test_other_seed_gives_other_world(tmp_path):
    sz = WorldSizes(n_images=5, questions_per_image=1, n_vqa_speech=0, n_dialogues=0, n_text_qa=0, n_asr=0, n_tts=0)
    a = build_world(tmp_path / "a", "train", sizes=sz, seed=1, progress=False)
    b = build_world(tmp_path / "b", "train", sizes=sz, seed=2, progress=False)
    assert a["scenes"].read_bytes() != b["scenes"].read_bytes()


def test_every_file_validates_and_lists_speech(world):
    for split in ("train", "heldout"):
        for task in TASKS:
            recs = load_records(world / split / f"{task}.json", image_root=world)
            assert recs, (split, task)
            reqs = records_needing_speech(recs)
            if task in ("vqa_speech", "dialogue_speech", "asr", "tts"):
                assert len(reqs) == len(recs) * (2 if "speech" in task else 1)
            else:
                assert reqs == []
    assert set(load_split(world, "heldout")) == set(TASKS)
    manifest = json.loads((world / "train" / "manifest.json").read_text())
    assert manifest["split"] == "train" and manifest["sizes"]["n_images"] == 40


def test_heldout_is_disjoint_from_train(world):
    scenes = {s: [Scene.from_dict(d) for d in json.loads((world / s / "scenes.json").read_text())]
              for s in ("train", "heldout")}
    sigs = {s: {x.signature() for x in v} for s, v in scenes.items()}
    assert not sigs["train"] & sigs["heldout"]
    assert all(scene_split(x) == s for s, v in scenes.items() for x in v)
    imgs = {s: {hashlib.sha256(p.read_bytes()).digest() for p in (world / "images").glob(f"{s}_*.png")}
            for s in ("train", "heldout")}
    assert len(imgs["heldout"]) == 40 and not imgs["train"] & imgs["heldout"]

    def user_texts(split: str, task: str) -> set[str]:
        out = set()
        for r in json.loads((world / split / f"{task}.json").read_text()):
            if r.get("speech"):
                out |= {normalise(s["text"]) for s in r["speech"] if s["role"] == "input" or task == "tts"}
            else:
                out.add(normalise(r["conversations"][0]["value"].split("\n")[0]))
        return out

    for task in ("dialogue_speech", "text_qa", "asr", "tts"):
        assert not user_texts("train", task) & user_texts("heldout", task), task


def test_built_answers_match_the_pixels(world):
    for split in ("train", "heldout"):
        recs = json.loads((world / split / "vqa.json").read_text())
        cache: dict[str, list] = {}
        forms = set()
        for r in recs:
            m = r["meta"]
            if r["image"] not in cache:
                cache[r["image"]] = pixel_objects(Image.open(world / r["image"]).convert("RGB"))
            if m["qtype"] != "reading":
                assert solve(m["question"], m["qtype"], cache[r["image"]]) == m["answer"]
            answer = r["conversations"][1]["value"]
            assert answer == (m["answer"] if m["answer_form"] == "short" else m["sentence"])
            forms.add(m["answer_form"])
        assert forms == {"short", "sentence"}
