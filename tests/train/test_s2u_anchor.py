import json

import numpy as np
import pytest
import torch

from emova.data.speech.anchor import render_anchor_corpus
from emova.data.speech.corpus import CorpusConfig, read_manifest, render_corpus
from emova.speech.tokenizer import SpeechTokenizer
from emova.train.s2u import S2UTrainConfig, export_s2u, train_s2u
from emova.train.s2u_anchor import S2UAnchorConfig, train_s2u_anchor

SMALL = dict(conv_channels=32, blocks=[{"layers": 1, "dim": 32, "heads": 2}], post_dim=32, post_layers=1,
             post_heads=2, dropout=0.0)
CORPUS = CorpusConfig(n_train_sentences=6, n_heldout_per=1, n_heldout_style=6, n_heldout_probe=6)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("anchor")
    render_corpus(root / "corpus", CORPUS, workers=1, progress=False)
    run = train_s2u(S2UTrainConfig(corpus=str(root / "corpus"), out_dir=str(root / "s2u"), model=SMALL,
                                   splits=["train"], max_steps=8, batch_seconds=30, lr=3e-3, warmup_steps=2,
                                   cons_start_step=2, save_every=8, log_every=2, bf16=False), progress=False)
    export_s2u(run / "final", root / "teacher")
    render_anchor_corpus(root / "corpus", root / "anchor", splits=("train",), workers=1, progress=False)
    return root


def test_anchor_corpus_is_one_neutral_rendering_per_text(setup):
    train = read_manifest(setup / "corpus", ("train",))
    rows = read_manifest(setup / "anchor")
    assert [r["text"] for r in rows] == list(dict.fromkeys(r["text"] for r in train))
    assert {r["voice"] for r in rows} == {"flite:kal16"}
    assert {r["style"] for r in rows} == {"gender-male_emotion-neutral_speed-normal_pitch-normal"}
    assert all((setup / "anchor" / r["path"]).exists() for r in rows)
    # resumable: a lost part is rendered again, the manifest comes out the same
    before = (setup / "anchor" / "manifest.jsonl").read_text()
    sorted((setup / "anchor" / "parts").glob("*.json"))[0].unlink()
    render_anchor_corpus(setup / "corpus", setup / "anchor", splits=("train",), workers=1, progress=False)
    assert (setup / "anchor" / "manifest.jsonl").read_text() == before


def test_shipped_configs_load():
    from pathlib import Path

    import emova

    configs = Path(emova.__file__).parent / "configs"
    assert S2UAnchorConfig.load(configs / "s2u_anchor.yaml").target == "anchor"
    assert S2UAnchorConfig.load(configs / "s2u_invariance.yaml").target == "self"
    with pytest.raises(ValueError, match="unknown keys"):
        S2UAnchorConfig.load(configs / "s2u_tiny.yaml")


def test_anchor_must_be_a_training_voice(setup, tmp_path):
    with pytest.raises(ValueError, match="held-out voice"):
        render_anchor_corpus(setup / "corpus", tmp_path / "a", splits=("train",), voice="flite:awb", progress=False)


def test_missing_anchor_texts_are_named(setup, tmp_path):
    cfg = S2UAnchorConfig(corpus=str(setup / "corpus"), anchor_corpus=str(setup / "anchor"),
                          init=str(setup / "teacher"), out_dir=str(tmp_path / "run"), splits=["train", "heldout_per"])
    with pytest.raises(ValueError, match="lacks 2 training texts"):
        train_s2u_anchor(cfg, progress=False)


def test_fine_tune_maps_voices_toward_the_anchor_and_resumes(setup, tmp_path):
    cfg = S2UAnchorConfig(corpus=str(setup / "corpus"), anchor_corpus=str(setup / "anchor"), init=str(setup / "teacher"),
                          out_dir=str(tmp_path / "run"), splits=["train"], max_steps=30, batch_seconds=30, lr=3e-3,
                          warmup_steps=2, save_every=15, log_every=3, bf16=False, speed_perturb=0.0, freq_warp=0.0)
    run = train_s2u_anchor(cfg, progress=False)
    head = (run / "log.csv").read_text().splitlines()[0].split(",")
    rows = [dict(zip(head, line.split(","))) for line in (run / "log.csv").read_text().splitlines()[1:]]
    mapped = [float(r["map"]) for r in rows]
    assert np.mean(mapped[-3:]) < 0.7 * np.mean(mapped[:2])
    assert float(rows[-1]["agree_map"]) > float(rows[0]["agree_map"])
    # the student is exported like any tokenizer and reads the anchor's speech much as the teacher does
    export_s2u(run / "final", tmp_path / "student")
    teacher, student = (SpeechTokenizer.from_pretrained(d) for d in (setup / "teacher", tmp_path / "student"))
    anchor = read_manifest(setup / "anchor")[0]
    a, b = (t.encode(setup / "anchor" / anchor["path"]) for t in (teacher, student))
    assert len(a) == len(b) and np.mean(np.array(a) == np.array(b)) > 0.5
    assert torch.equal(teacher.model.code_norm.running_mean, student.model.code_norm.running_mean)
    cfg.max_steps = 32
    train_s2u_anchor(cfg, progress=False)
    assert json.loads((run / "step-32" / "state.json").read_text())["step"] == 32


def test_self_target_needs_no_anchor_corpus_and_keeps_clean_codes(setup, tmp_path):
    cfg = S2UAnchorConfig(corpus=str(setup / "corpus"), anchor_corpus=str(tmp_path / "none"), target="self",
                          init=str(setup / "teacher"), out_dir=str(tmp_path / "run"), splits=["train"], max_steps=2,
                          batch_seconds=30, lr=1e-7, warmup_steps=1, log_every=1, save_every=2, bf16=False)
    run = train_s2u_anchor(cfg, progress=False)
    head = (run / "log.csv").read_text().splitlines()[0].split(",")
    first = dict(zip(head, (run / "log.csv").read_text().splitlines()[1].split(",")))
    # the student starts as the teacher, and clean clips are their own targets; augmented ones differ
    assert float(first["agree_self"]) > 0.99
    assert float(first["agree_map"]) < 0.99
    with pytest.raises(ValueError, match="target must be"):
        S2UAnchorConfig(target="other")
