import json

import numpy as np
import pytest

from emova.data.speech.corpus import CorpusConfig, read_manifest, render_corpus
from emova.train.s2u import S2UTrainConfig, train_s2u

SMALL = dict(conv_channels=32, blocks=[{"layers": 1, "dim": 32, "heads": 2}], post_dim=32, post_layers=1,
             post_heads=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("corpus")
    render_corpus(d, CorpusConfig(n_train_sentences=8, n_heldout_per=2, n_heldout_style=6, n_heldout_probe=6),
                  workers=1, progress=False)
    return d


def test_corpus_manifest_and_heldout_voices(corpus):
    rows = read_manifest(corpus)
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 8 * 3
    assert not {r["voice"] for r in train} & {"flite:awb", "espeak:en-us+f4"}
    per = [r for r in rows if r["split"] == "heldout_per"]
    assert {r["voice"] for r in per} == {"flite:awb", "espeak:en-us+f4"}
    assert not {r["text"] for r in per} & {r["text"] for r in train}
    for r in rows:
        assert r["phones"] and (corpus / r["path"]).exists() and r["duration"] > 0.2
    # a group shares text and voice
    g = [r for r in train if r["group"] == train[0]["group"]]
    assert len({r["text"] for r in g}) == 1 and len({r["style"] for r in g}) == 3


def test_render_is_deterministic_and_resumable(corpus, tmp_path):
    m1 = (corpus / "manifest.jsonl").read_text()
    part = sorted((corpus / "parts").glob("train*.json"))[0]
    part.unlink()  # as if killed before this group finished
    render_corpus(corpus, CorpusConfig(n_train_sentences=8, n_heldout_per=2, n_heldout_style=6, n_heldout_probe=6),
                  workers=1, progress=False)
    assert (corpus / "manifest.jsonl").read_text() == m1


def test_training_lowers_loss_and_resumes(corpus, tmp_path):
    cfg = S2UTrainConfig(corpus=str(corpus), out_dir=str(tmp_path / "run"), model=SMALL, splits=["train"],
                         max_steps=24, batch_seconds=30, lr=3e-3, warmup_steps=2, cons_start_step=2,
                         save_every=12, log_every=2, bf16=False)
    train_s2u(cfg, progress=False)
    rows = [line.split(",") for line in (tmp_path / "run" / "log.csv").read_text().splitlines()[1:]]
    ctc = [float(r[4]) for r in rows]
    assert np.mean(ctc[-3:]) < np.mean(ctc[:3])
    cons = [float(r[5]) for r in rows]
    assert max(cons) > 0  # the consistency objective is active
    assert (tmp_path / "run" / "final" / "model.safetensors").exists()
    # resume: ask for more steps, it continues from step 24
    cfg.max_steps = 26
    train_s2u(cfg, progress=False)
    state = json.loads((tmp_path / "run" / "step-26" / "state.json").read_text())
    assert state["step"] == 26
