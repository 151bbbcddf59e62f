import json
import shutil
from pathlib import Path

import pytest
import torch

from emova.data.speech.corpus import CorpusConfig, read_manifest, render_corpus
from emova.speech.reader import READER_CONFIG, READER_WEIGHTS, UnitReader, UnitReaderConfig
from emova.speech.s2u import S2UConfig, S2UModel
from emova.speech.tokenizer import SpeechTokenizer
from emova.train.reader import (
    ReaderTrainConfig,
    _load_items,
    _reader_for,
    _start_from_s2u,
    export_reader,
    train_reader,
)

SMALL = dict(conv_channels=32, blocks=[{"layers": 1, "dim": 32, "heads": 2}], post_dim=32, post_layers=1,
             post_heads=2, dropout=0.0)
READER_SHAPE = dict(dim=32, layers=1, heads=2, dropout=0.0)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tok")
    SpeechTokenizer(S2UModel(S2UConfig.from_dict(SMALL))).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A speech corpus (6 training sentences) and a two-clip tiny world whose clips are copies of corpus clips."""
    root = tmp_path_factory.mktemp("reader_data")
    render_corpus(root / "corpus", CorpusConfig(n_train_sentences=6, n_heldout_per=1, n_heldout_style=6,
                                                n_heldout_probe=6), workers=1, progress=False)
    rows = read_manifest(root / "corpus", ("train",))
    wav = root / "world_speech" / "train" / "wav"
    wav.mkdir(parents=True)
    recs = []
    for k, r in enumerate(rows[:2]):
        key = f"asr-train-{k:05d}/in"
        shutil.copy(root / "corpus" / r["path"], wav / f"{key.replace('/', '__')}.wav")
        recs.append({"id": key, "conversations": [], "meta": {"speech": [{"key": key, "text": r["text"],
                                                                          "role": "input", "style": r["style"]}]}})
    (root / "world_units" / "train").mkdir(parents=True)
    (root / "world_units" / "train" / "asr.json").write_text(json.dumps(recs))
    # the world's held-out split says the first training sentence: the reader must not train on it
    (root / "world" / "heldout").mkdir(parents=True)
    (root / "world" / "heldout" / "asr.json").write_text(json.dumps([{"id": "h", "conversations": [], "meta": {
        "speech": [{"key": "asr-heldout-00000/in", "text": rows[0]["text"], "role": "input", "style": ""}]}}]))
    return root


def _cfg(world, tok_dir, out, **kw):
    return ReaderTrainConfig(tokenizer=str(tok_dir), corpus=str(world / "corpus"), world_units=str(world / "world_units"),
                             world_speech=str(world / "world_speech"), heldout_world=str(world / "world"),
                             out_dir=str(out), batch_units=400,
                             warmup_steps=2, log_every=2, save_every=4, val_fraction=0.2, **READER_SHAPE, **kw)


def test_a_reader_started_from_the_s2u_reads_as_the_s2u_does(tok_dir):
    tok = SpeechTokenizer.from_pretrained(tok_dir)
    reader = _reader_for(ReaderTrainConfig(**READER_SHAPE), tok)
    _start_from_s2u(reader, tok)
    units = torch.randint(0, 4096, (40,)).tolist()
    assert torch.allclose(reader.eval().log_probs(units), tok.speech_ctc_log_probs(units), atol=1e-5)
    with pytest.raises(ValueError, match="shaped as the S2U's CTC side"):
        _start_from_s2u(_reader_for(ReaderTrainConfig(dim=64, layers=1, heads=2), tok), tok)


def test_training_encodes_only_training_clips_resumes_and_exports(world, tok_dir, tmp_path):
    out = tmp_path / "run"
    train_reader(_cfg(world, tok_dir, out, max_steps=4), progress=False)
    lines = [json.loads(x) for x in (out / "units.jsonl").read_text().splitlines()]
    n_train = len(read_manifest(world / "corpus", ("train",)))
    assert len(lines) == 2 * (n_train + 2)  # every training clip, clean and one augmented copy; no held-out clip
    assert {x["key"].split("/")[0] for x in lines} == {"corpus", "world"}
    held_out = {r["id"] for r in read_manifest(world / "corpus") if r["split"] != "train"}
    assert not any(x["key"].split("/")[1].split("#")[0] in held_out for x in lines)
    from emova.data.world_speech import heldout_texts

    items = _load_items(out / "units.jsonl", True, heldout_texts(world / "world"))
    said = read_manifest(world / "corpus", ("train",))[0]["text"]
    assert items and said not in {t for t, _, _ in items}
    assert len(items) < len(_load_items(out / "units.jsonl", True))
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "step,loss,val_loss,lr,seconds" and log[-1].startswith("4,")
    # a cut last line is re-encoded; training resumes from step 4 to 6
    text = (out / "units.jsonl").read_text()
    (out / "units.jsonl").write_text(text[: len(text) - 30])
    train_reader(_cfg(world, tok_dir, out, max_steps=6), progress=False)
    assert (out / "units.jsonl").read_text().count("\n") == len(lines)
    assert (out / "log.csv").read_text().splitlines()[-1].startswith("6,")
    assert (out / "step-6").is_dir()
    # other encoding settings in the same run dir are refused
    with pytest.raises(ValueError, match="other settings"):
        train_reader(_cfg(world, tok_dir, out, max_steps=6, augment_copies=2), progress=False)
    # exported next to the tokenizer, phone_log_probs uses it
    tok_copy = tmp_path / "tok"
    shutil.copytree(tok_dir, tok_copy)
    export_reader(out, tok_copy)
    tok = SpeechTokenizer.from_pretrained(tok_copy)
    assert isinstance(tok.reader, UnitReader)
    units = torch.randint(0, 4096, (30,)).tolist()
    lp = tok.phone_log_probs(units)
    assert torch.allclose(lp, tok.reader.log_probs(units)) and not torch.allclose(lp, tok.speech_ctc_log_probs(units))
    assert torch.allclose(lp.exp().sum(-1), torch.ones(30), atol=1e-4)


def test_the_reader_must_match_its_tokenizer(tok_dir, tmp_path):
    tok = SpeechTokenizer.from_pretrained(tok_dir)
    reader = UnitReader(UnitReaderConfig(**READER_SHAPE, tokenizer_fingerprint="0123456789ab"))
    with pytest.raises(ValueError, match="trained on the units of tokenizer 0123456789ab"):
        tok.attach_reader(reader)
    with pytest.raises(ValueError, match="reads 64 codes"):
        tok.attach_reader(UnitReader(UnitReaderConfig(fsq_levels=[8, 8], **READER_SHAPE)))
    d = tmp_path / "tok"
    shutil.copytree(tok_dir, d)
    reader.save(d)
    with pytest.raises(ValueError, match="trained on the units of tokenizer"):
        SpeechTokenizer.from_pretrained(d)


def test_bad_reader_files_are_named(tmp_path):
    reader = UnitReader(UnitReaderConfig(**READER_SHAPE))
    reader.save(tmp_path)
    assert torch.allclose(UnitReader.load(tmp_path).log_probs([1, 2, 3]), reader.eval().log_probs([1, 2, 3]), atol=1e-2)
    (tmp_path / READER_WEIGHTS).rename(tmp_path / "w")
    with pytest.raises(FileNotFoundError, match="no unit reader"):
        UnitReader.load(tmp_path)
    (tmp_path / READER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors"):
        UnitReader.load(tmp_path)
    (tmp_path / "w").rename(tmp_path / READER_WEIGHTS)
    cfg = json.loads((tmp_path / READER_CONFIG).read_text())
    (tmp_path / READER_CONFIG).write_text(json.dumps({**cfg, "depth": 3}))
    with pytest.raises(ValueError, match="unknown unit reader config keys"):
        UnitReader.load(tmp_path)
    (tmp_path / READER_CONFIG).write_text(json.dumps({**cfg, "dim": 64}))
    with pytest.raises(ValueError, match="shape"):
        UnitReader.load(tmp_path)
    (tmp_path / READER_CONFIG).write_text("{")
    with pytest.raises(ValueError, match="not a valid unit reader config"):
        UnitReader.load(tmp_path)
    with pytest.raises(ValueError, match="takes \\(batch, time\\) units"):
        reader(torch.zeros(3, dtype=torch.long))


def test_the_shipped_config_loads_and_bad_values_are_named(tmp_path):
    import emova

    cfg = ReaderTrainConfig.load(Path(emova.__file__).parent / "configs" / "reader_tiny.yaml")
    assert cfg.init_from_s2u and cfg.heldout_world == "data_cache/world"
    (tmp_path / "c.yaml").write_text("depth: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        ReaderTrainConfig.load(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="unit_noise"):
        ReaderTrainConfig(unit_noise=1.5)


def test_save_pretrained_keeps_the_reader_and_drops_a_stale_one(tok_dir, tmp_path):
    tok = SpeechTokenizer.from_pretrained(tok_dir)
    reader = _reader_for(ReaderTrainConfig(**READER_SHAPE), tok)
    tok.attach_reader(reader)
    tok.save_pretrained(tmp_path / "with")
    again = SpeechTokenizer.from_pretrained(tmp_path / "with")
    assert again.reader is not None and again.reader.cfg.tokenizer_fingerprint == tok.fingerprint
    tok.attach_reader(None)
    tok.save_pretrained(tmp_path / "with")  # a tokenizer without a reader over a directory that had one
    assert not (tmp_path / "with" / READER_WEIGHTS).exists() and not (tmp_path / "with" / READER_CONFIG).exists()
    assert SpeechTokenizer.from_pretrained(tmp_path / "with").reader is None


def test_the_recipe_sets_aside_a_reader_run_of_another_tokenizer(tok_dir, tmp_path, monkeypatch):
    import emova.train.reader as reader_mod
    from emova.train import recipe

    p = recipe.RecipePaths(tmp_path / "work", tmp_path / "runs", tmp_path / "assets", None)
    shutil.copytree(tok_dir, p.tokenizer)
    run = p.runs / "reader"
    run.mkdir(parents=True)
    (run / "units_meta.json").write_text(json.dumps({"tokenizer_fingerprint": "000000000000"}))
    (run / "units.jsonl").write_text("kept\n")
    seen = []
    monkeypatch.setattr(reader_mod, "train_reader", lambda cfg: seen.append(cfg) or Path(cfg.out_dir))
    monkeypatch.setattr(reader_mod, "export_reader", lambda run_dir, dest: seen.append((run_dir, dest)))
    recipe._reader(p)
    assert (p.runs / "reader-000000000000" / "units.jsonl").read_text() == "kept\n" and not run.exists()
    cfg = seen[0]
    assert cfg.tokenizer == str(p.tokenizer) and cfg.heldout_world == str(p.world) and cfg.out_dir == str(run)
    assert seen[1] == (run, p.tokenizer)
