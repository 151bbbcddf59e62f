import csv

import numpy as np
import pytest
import torch

from emova.data.speech.corpus import CorpusConfig, render_corpus
from emova.speech.detokenizer import SpeechDetokenizer
from emova.speech.s2u import S2UConfig, S2UModel
from emova.speech.tokenizer import SpeechTokenizer
from emova.styles import Style
from emova.train.u2s import U2STrainConfig, train_u2s
from emova.train.u2s_data import U2SData, align_durations

S2U_SMALL = dict(conv_channels=32, blocks=[{"layers": 1, "dim": 32, "heads": 2}], post_dim=32, post_layers=1,
                 post_heads=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("u2s")
    render_corpus(root / "corpus", CorpusConfig(n_train_sentences=4, n_heldout_per=1, n_heldout_style=0,
                                                n_heldout_probe=0), workers=1, progress=False)
    torch.manual_seed(0)
    SpeechTokenizer(S2UModel(S2UConfig.from_dict(S2U_SMALL))).save_pretrained(root / "tok", dtype=torch.float32)
    cfg = U2STrainConfig(corpus=str(root / "corpus"), tokenizer=str(root / "tok"), cache_dir=str(root / "cache"),
                         out_dir=str(root / "run"), export_dir=str(root / "detok"), workers=1,
                         model=dict(dim=32, enc_layers=1, dec_layers=1, predictor_layers=1),
                         style_encoder=dict(hidden=32), vocoder=dict(dim=32, intermediate=64, layers=1),
                         max_steps=4, vocoder_steps=3, batch_frames=800, vocoder_items=8, save_every=2,
                         log_every=1, prototypes_per_style=3)
    return root, cfg


def test_align_durations_follow_a_time_stretch():
    rng = np.random.default_rng(0)
    mel_a = rng.normal(size=(50, 80)).astype(np.float32)
    raw = np.repeat(np.arange(20), 1)  # 20 units of 40 ms ≈ 50 frames of 16 ms
    change = np.concatenate([[True], raw[1:] != raw[:-1]])
    raw_to_red = np.cumsum(change) - 1
    same = align_durations(mel_a, mel_a, raw_to_red, 20, 256, 16000, same=True)
    slow = align_durations(mel_a, np.repeat(mel_a, 2, axis=0), raw_to_red, 20, 256, 16000, same=False)
    assert same.sum() == 50 and slow.sum() == 100
    assert np.abs(slow[2:-2] - 2 * same[2:-2]).max() <= 2  # every unit lasts about twice as long


def test_cache_pairs_neutral_units_with_every_rendering(setup):
    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    data = U2SData(cfg.cache_dir)
    assert len(data) == 4 * 3  # every rendering of the 4 training groups
    by_group: dict[str, list[int]] = {}
    for i, m in enumerate(data.meta):
        by_group.setdefault(m["group"], []).append(i)
        assert int(data.durs[i].sum()) == len(data.mel[i]) == len(data.lf0[i])  # timing covers every frame
        assert data.mel[i].shape[1] == 80
    for items in by_group.values():
        first = data.meta[items[0]]
        assert first["style"] == str(Style(gender=Style.parse(first["style"]).gender))  # neutral first
        for i in items[1:]:
            assert np.array_equal(data.units[i], data.units[items[0]])  # input = the neutral rendering's units
    u = data.units[0]
    assert (u[1:] != u[:-1]).all()  # reduced
    with pytest.raises(ValueError, match="other settings"):
        train_u2s(U2STrainConfig(**{**cfg.__dict__, "max_groups": 2}), stages=("prepare",), progress=False)


def test_train_resume_export_and_decode(setup, capsys):
    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    rows = list(csv.DictReader(open(root / "run" / "u2s" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(np.isfinite(float(r["total"])) for r in rows)
    longer = U2STrainConfig(**{**cfg.__dict__, "max_steps": 6})
    train_u2s(longer, stages=("u2s",), progress=False)
    assert "resuming u2s" in capsys.readouterr().out
    rows = list(csv.DictReader(open(root / "run" / "u2s" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    detok = SpeechDetokenizer.from_pretrained(root / "detok")
    a = detok.decode([3, 7, 11, 7, 3] * 4, Style(gender="male", emotion="sad"))
    assert a.sample_rate == 16000 and a.duration > 0
    assert detok.prototypes.counts[41] >= 1  # the female neutral prototype came from renderings


def test_config_rejects_unknown_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("max_steps: 3\nlearning_rate: 0.1\n")
    with pytest.raises(ValueError, match="unknown keys"):
        U2STrainConfig.load(p)
    with pytest.raises(ValueError, match="unknown U2S config keys"):
        U2STrainConfig(model={"dims": 3})


def test_voices_filter_and_init_from(setup, capsys):
    """`voices` keeps only the renderings of matching voices (targets and prototypes); `init_from` starts
    the u2s stage from a saved detokenizer's weights."""
    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    every = U2SData(cfg.cache_dir)
    voices = sorted({m["voice"] for m in every.meta})
    keep = voices[0]
    only = U2SData(cfg.cache_dir, [keep])
    assert 0 < len(only) < len(every) or len(voices) == 1
    assert {m["voice"] for m in only.meta} == {keep}
    assert len(only.mel) == len(only.units) == len(only.stats) == len(only.labels) == len(only)
    engine = keep.split(":")[0]
    assert len(U2SData(cfg.cache_dir, [f"{engine}:*"])) == sum(m["voice"].startswith(engine + ":") for m in every.meta)
    with pytest.raises(ValueError, match="no cached U2S items"):
        U2SData(cfg.cache_dir, ["nobody:*"])
    with pytest.raises(ValueError, match="glob patterns"):
        U2STrainConfig(**{**cfg.__dict__, "voices": []})
    # init_from: a fresh run starts from the exported detokenizer's weights
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    src = SpeechDetokenizer.from_pretrained(root / "detok")
    init = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(root / "run_init"), "init_from": str(root / "detok"),
                             "voices": [keep], "max_steps": 1, "lr": 1e-12, "warmup_steps": 1})
    train_u2s(init, stages=("u2s",), progress=False)
    assert "u2s starts from" in capsys.readouterr().out
    from safetensors.torch import load_file

    ck = sorted((root / "run_init" / "u2s").glob("step-*"))[-1]
    state = load_file(str(ck / "model.safetensors"))
    w = src.u2s.state_dict()["encoder.emb.weight"].float()
    assert torch.allclose(state["u2s.encoder.emb.weight"].float(), w, atol=1e-3)


def test_finetune_stage_continues_on_chosen_voices(setup, capsys):
    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    keep = sorted({m["voice"] for m in U2SData(cfg.cache_dir).meta})[0]
    ft = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(root / "run_ft"), "export_dir": str(root / "detok_ft"),
                           "finetune": {"voices": [keep], "max_steps": 2, "lr": 1e-4, "warmup_steps": 1}})
    with pytest.raises(ValueError, match="starts from the u2s stage"):
        train_u2s(ft, stages=("finetune",), progress=False)
    train_u2s(ft, stages=("u2s", "finetune", "vocoder", "export"), progress=False)
    assert "u2s_finetune starts from" in capsys.readouterr().out
    # the finetune may grow the architecture: it starts as the identity of the u2s stage's model
    grown = U2STrainConfig(**{**ft.__dict__, "out_dir": str(root / "run_grow"), "export_dir": str(root / "detok_grow"),
                              "finetune": {**ft.finetune, "model": {"dec_layers": 2, "frame_position": True}}})
    import shutil

    for sub in ("u2s", "vocoder"):
        shutil.copytree(root / "run_ft" / sub, root / "run_grow" / sub)
    train_u2s(grown, stages=("finetune", "export"), progress=False)
    assert "new tensors, identity-initialised" in capsys.readouterr().out
    g = SpeechDetokenizer.from_pretrained(root / "detok_grow")
    assert g.u2s.cfg.dec_layers == 2 and g.u2s.cfg.frame_position and len(g.u2s.decoder) == 2
    rows = list(csv.DictReader(open(root / "run_ft" / "u2s_finetune" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2]
    detok = SpeechDetokenizer.from_pretrained(root / "detok_ft")
    assert detok.decode([3, 7, 11, 7, 3] * 4, Style()).duration > 0
    import json

    info = json.loads((root / "detok_ft" / "config.json").read_text())["info"]
    assert info["speaking_voices"] == [keep] and "u2s_finetune" in info["u2s_checkpoint"]
    genders = {Style.parse(m["style"]).gender for m in U2SData(cfg.cache_dir, [keep]).meta}
    built = [k for k, c in zip(detok.prototypes.keys, detok.prototypes.counts) if c > 0]
    assert built and all(any(f"gender-{g}" in k for g in genders) for k in built)  # only the chosen voice
    with pytest.raises(ValueError, match="finetune must be a mapping"):
        U2STrainConfig(**{**cfg.__dict__, "finetune": {"voice": ["x"]}})


def test_diagnose_runs_every_row(setup, tmp_path):
    from emova.eval.u2s_diagnose import diagnose

    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    res = diagnose(str(root / "detok"), str(root / "tok"), root / "corpus", n=1, out=tmp_path / "d.json")
    assert {"original", "gt_mel_vocoder", "oracle_prosody", "self_reference", "default_female",
            "default_male"} <= set(res["wer"])
    assert all(0.0 <= w <= 5.0 for w in res["wer"].values())
    with pytest.raises(ValueError, match="held-out awb"):
        diagnose(str(root / "detok"), str(root / "tok"), root / "corpus", n=50, out=None)


def test_diagnose_can_score_a_training_checkpoint(setup, tmp_path):
    from safetensors.torch import load_file, save_file

    from emova.eval.u2s_diagnose import diagnose, swap_u2s_weights
    from emova.train.checkpoint import latest_checkpoint

    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    ck = latest_checkpoint(root / "run" / "u2s")
    detok = SpeechDetokenizer.from_pretrained(root / "detok")
    with torch.no_grad():
        for p in detok.u2s.parameters():
            p.zero_()
    swap_u2s_weights(detok, ck)
    state = load_file(str(ck / "model.safetensors"))
    assert all(torch.equal(v.float(), state["u2s." + k].float()) for k, v in detok.u2s.state_dict().items())
    with pytest.raises(ValueError, match="not a U2S training checkpoint"):
        swap_u2s_weights(detok, tmp_path)
    save_file({"u2s.to_mel.weight": torch.zeros(3, 3)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="does not match"):
        swap_u2s_weights(detok, tmp_path)
    res = diagnose(str(root / "detok"), str(root / "tok"), root / "corpus", n=1, out=None, u2s_checkpoint=ck)
    assert res["u2s_checkpoint"] == str(ck) and "default_male" in res["wer"]


def test_rendered_calibration_recovers_the_duration_map(setup):
    """When the renderings are exactly as long as the U2S predicts with a known rate map, the closed-loop
    calibration finds that map again (and keeps the pitch gain in its range)."""
    import math

    from emova.train.u2s_calibrate import calibrate_rendered_prosody

    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    detok = SpeechDetokenizer.from_pretrained(root / "detok")
    data = U2SData(cfg.cache_dir)
    u2s, c = detok.u2s, detok.u2s.cfg
    c.rate_gain, c.rate_center, c.rate_bias = 0.5, 0.3, 0.0
    with torch.no_grad():
        for key, ids in data.by_style.items():
            style = detok.prototypes.vector(key)[None].float()
            shift = 0.5 * (float(u2s.prosody(style)[0, 2]) - 0.3)
            for i in ids:
                u = torch.from_numpy(data.units[i].astype(np.int64))[None]
                h, m = u2s.encode(u, torch.tensor([u.shape[1]]))
                ld = u2s.predict_log_durations(h, style, m)[0].numpy()
                n = max(1, round(float(np.clip(np.exp(ld + shift) - 1, 0, None).sum())))
                data.mel[i] = np.zeros((n, 80), np.float16)
    c.rate_gain, c.rate_bias = 2.5, 0.3  # start far from it

    def length_error() -> float:  # mean |log predicted length - log rendered length| under the current map
        errs = []
        with torch.no_grad():
            for key, ids in data.by_style.items():
                style = detok.prototypes.vector(key)[None].float()
                for i in ids:
                    u = torch.from_numpy(data.units[i].astype(np.int64))[None]
                    n = float(u2s.infer(u, style)["durations"].sum())
                    errs.append(abs(math.log(max(1.0, n)) - math.log(len(data.mel[i]))))
        return float(np.mean(errs))

    before = length_error()
    res = calibrate_rendered_prosody(detok, data, per_style=len(data), min_items=1)
    c.rate_gain, c.rate_bias = res["rate_gain"], res["rate_bias"]
    after = length_error()
    assert before > 0.2 and after < 0.1 and after < before / 4  # the fitted map reproduces the lengths
    assert "level_gain" not in res or 1.0 <= res["level_gain"] <= 3.0


def test_prepare_voices_caches_only_those_voices(setup, tmp_path):
    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    keep = sorted({m["voice"] for m in U2SData(cfg.cache_dir).meta})[0]
    only = U2STrainConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "cache"), "prepare_voices": [keep]})
    train_u2s(only, stages=("prepare",), progress=False)
    assert {m["voice"] for m in U2SData(only.cache_dir).meta} == {keep}
    none = U2STrainConfig(**{**cfg.__dict__, "cache_dir": str(tmp_path / "c2"), "prepare_voices": ["nobody:*"]})
    with pytest.raises(ValueError, match="of voices"):
        train_u2s(none, stages=("prepare",), progress=False)
    with pytest.raises(ValueError, match="prepare_voices"):
        U2STrainConfig(**{**cfg.__dict__, "prepare_voices": "flite:*"})


def test_mel_loss_weighs_dtw_timed_renderings(setup):
    """The neutral rendering is flagged as exactly timed; `w_mel_styled: 0` leaves only its frames in the
    mel loss."""
    import random

    from emova.speech.style_encoder import StyleEncoderConfig
    from emova.train.u2s import U2SBundle, u2s_losses

    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    data = U2SData(cfg.cache_dir)
    neutral = [i for i in range(len(data)) if data.exact[i]]
    assert neutral and all(data.meta[i]["style"] == str(Style(gender=Style.parse(data.meta[i]["style"]).gender))
                           for i in neutral)
    group = data.meta[neutral[0]]["group"]
    ids = [i for i in range(len(data)) if data.meta[i]["group"] == group]
    assert len(ids) > 1
    torch.manual_seed(0)
    bundle = U2SBundle(cfg.u2s_config(), StyleEncoderConfig.from_dict(cfg.style_encoder)).eval()
    zero = U2STrainConfig(**{**cfg.__dict__, "w_mel_styled": 0.0})
    with torch.no_grad():
        both = u2s_losses(bundle, data.collate(ids, random.Random(0), 0.0), zero)["mel"]
        alone = u2s_losses(bundle, data.collate([neutral[0]], random.Random(0), 0.0), zero)["mel"]
        full = u2s_losses(bundle, data.collate(ids, random.Random(0), 0.0), cfg)["mel"]
    assert float(both) == pytest.approx(float(alone), rel=1e-4)
    assert float(full) != pytest.approx(float(alone), rel=1e-4)
    with pytest.raises(ValueError, match="w_mel_styled"):
        U2STrainConfig(**{**cfg.__dict__, "w_mel_styled": -1.0})


def test_init_from_may_add_identity_blocks_but_nothing_else(setup, capsys):
    """`init_from` into a config with extra decoder blocks and frame positions: the new model computes
    exactly what the source did until it trains; any other architecture change is refused."""
    import random

    from emova.speech.style_encoder import StyleEncoderConfig
    from emova.train.u2s import U2SBundle, _init_from_detokenizer, u2s_losses

    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    src = SpeechDetokenizer.from_pretrained(root / "detok")
    grown = U2STrainConfig(**{**cfg.__dict__, "model": {**cfg.model, "dec_layers": 3, "frame_position": True}})
    bundle = U2SBundle(grown.u2s_config(), StyleEncoderConfig.from_dict(grown.style_encoder))
    _init_from_detokenizer(bundle, str(root / "detok"))
    assert "new tensors, identity-initialised" in capsys.readouterr().out
    ref = U2SBundle(src.u2s.cfg, src.style_encoder.cfg)
    ref.u2s, ref.style_encoder = src.u2s.float(), src.style_encoder.float()
    data = U2SData(cfg.cache_dir)
    batch = data.collate(list(range(4)), random.Random(0), 0.0)
    with torch.no_grad():
        a, b = u2s_losses(bundle.eval(), batch, grown), u2s_losses(ref.eval(), batch, cfg)
    assert all(float(a[k]) == pytest.approx(float(b[k]), rel=1e-5, abs=1e-6) for k in a)
    wider = U2STrainConfig(**{**cfg.__dict__, "model": {**cfg.model, "dim": 48}})
    with pytest.raises(ValueError, match="does not match"):
        _init_from_detokenizer(U2SBundle(wider.u2s_config(), StyleEncoderConfig.from_dict(wider.style_encoder)),
                               str(root / "detok"))
    deeper_enc = U2STrainConfig(**{**cfg.__dict__, "model": {**cfg.model, "enc_layers": 2}})
    with pytest.raises(ValueError, match="change its output"):
        _init_from_detokenizer(U2SBundle(deeper_enc.u2s_config(),
                                         StyleEncoderConfig.from_dict(deeper_enc.style_encoder)), str(root / "detok"))


def test_vocoder_gta_stage_trains_resumes_and_exports(setup, capsys):
    import json

    root, cfg = setup
    gta = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(root / "run_gta"), "export_dir": str(root / "detok_gta"),
                            "gta_steps": 2, "vocoder_segment": 2560, "vocoder_batch": 4})
    train_u2s(gta, stages=("prepare", "u2s"), progress=False)
    with pytest.raises(ValueError, match="no vocoder checkpoint"):
        train_u2s(gta, stages=("vocoder_gta",), progress=False)
    train_u2s(gta, stages=("vocoder", "vocoder_gta"), progress=False)
    assert "vocoder_gta starts from" in capsys.readouterr().out
    train_u2s(U2STrainConfig(**{**gta.__dict__, "gta_steps": 3}), stages=("vocoder_gta", "export"), progress=False)
    assert "resuming vocoder_gta" in capsys.readouterr().out
    rows = list(csv.DictReader(open(root / "run_gta" / "vocoder_gta" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(np.isfinite(float(r["total"])) for r in rows)
    info = json.loads((root / "detok_gta" / "config.json").read_text())["info"]
    assert "vocoder_gta" in info["vocoder_checkpoint"]
    assert SpeechDetokenizer.from_pretrained(root / "detok_gta").decode([3, 7, 11, 7] * 4, Style()).duration > 0
    with pytest.raises(ValueError, match="gta_fraction"):
        U2STrainConfig(**{**cfg.__dict__, "gta_fraction": 1.5})


def test_solve_rate_offset_matches_the_target_length():
    import math

    from emova.train.u2s_calibrate import _solve_rate_offset

    lds = [np.log1p(np.full(10, 2.0)), np.log1p(np.full(20, 2.0))]  # 20 and 40 frames
    target = float(np.mean([math.log(30.0), math.log(60.0)]))  # 1.5x longer
    b = _solve_rate_offset(lds, target, -1.0, 1.0)
    lens = [float((np.exp(ld + b) - 1).sum()) for ld in lds]
    assert lens == pytest.approx([30.0, 60.0], rel=1e-3)
    assert _solve_rate_offset(lds, math.log(1e6), -0.5, 0.5) == 0.5  # clipped at the bound


def test_condition_prosody_table_is_measured_per_condition(setup, monkeypatch):
    import emova.train.u2s as train_mod
    from emova.speech.u2s import F0_SCALE
    from emova.train.u2s_calibrate import calibrate_condition_prosody

    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    detok = SpeechDetokenizer.from_pretrained(root / "detok")
    data = U2SData(cfg.cache_dir)
    table = calibrate_condition_prosody(detok, data, per_style=2, min_items=1, iters=1, pitch_factors=None)
    assert table.shape == (126, 4) and torch.isfinite(table).all()
    assert table[:, 0].abs().max() <= 0.4 and table[:, 1].abs().max() <= 0.5 and table[:, 3].abs().max() <= 12
    have = {detok.prototypes.index[k] for k in data.by_style}
    assert all(table[i].abs().sum() == 0 for i in range(126) if i not in have)  # no data: no correction
    assert any(table[i, 1] != 0 for i in have)
    # with pitch factors, a pitch label aims its normal sibling's level times the factor
    from emova.train.u2s_calibrate import condition_targets

    picks = {k: ids[:2] for k, ids in data.by_style.items()}
    plain = condition_targets(data, picks, None)
    spaced = condition_targets(data, picks, {"low": 0.8, "normal": 1.0, "high": 1.25})
    checked = 0
    for k in picks:
        st = Style.parse(k)
        sib = str(Style(gender=st.gender, emotion=st.emotion, speed=st.speed, pitch="normal"))
        assert spaced[k][1:] == plain[k][1:]  # spread and loudness follow the condition's own renderings
        if st.pitch != "normal" and sib in picks:
            factor = 1.25 if st.pitch == "high" else 0.8
            assert spaced[k][0] == pytest.approx(plain[sib][0] + np.log(factor) / F0_SCALE)
            checked += 1
        elif sib not in picks or st.pitch == "normal":
            assert spaced[k][0] == plain[k][0]
    assert plain != spaced or checked == 0
    # export stores what the calibration measures with condition_prosody: true, and skips it when off
    monkeypatch.setattr(train_mod, "calibrate_condition_prosody", lambda detok, data, pitch_factors: table.clone())
    train_u2s(U2STrainConfig(**{**cfg.__dict__, "export_dir": str(root / "detok_cal"), "condition_prosody": True}),
              stages=("export",), progress=False)
    assert torch.equal(SpeechDetokenizer.from_pretrained(root / "detok_cal").prototypes.prosody, table)
    off = U2STrainConfig(**{**cfg.__dict__, "export_dir": str(root / "detok_nocal"), "condition_prosody": False})
    train_u2s(off, stages=("export",), progress=False)
    assert SpeechDetokenizer.from_pretrained(root / "detok_nocal").prototypes.prosody.abs().sum() == 0
    with pytest.raises(ValueError, match="pitch_factors"):
        U2STrainConfig(**{**cfg.__dict__, "pitch_factors": {"low": 0.8}})


def test_mel_gv_is_fitted_at_export_and_travels_with_the_detokenizer(setup):
    from emova.train.u2s_calibrate import calibrate_mel_gv

    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder"), progress=False)
    gv = U2STrainConfig(**{**cfg.__dict__, "export_dir": str(root / "detok_gv"), "mel_gv": True})
    train_u2s(gv, stages=("export",), progress=False)
    detok = SpeechDetokenizer.from_pretrained(root / "detok_gv")
    c = detok.u2s.cfg
    assert len(c.gv_mean) == len(c.gv_scale) == 80 and all(1.0 <= x <= 1.5 for x in c.gv_scale)
    data = U2SData(cfg.cache_dir)
    again = calibrate_mel_gv(detok.u2s, data, detok.prototypes)
    assert again["gv_mean"] == pytest.approx(c.gv_mean, abs=1e-4)  # the real mels' per-bin mean
    assert c.gv_scale == detok.u2s.cfg.gv_scale  # fitting leaves the model's own filter in place
    assert detok.decode([3, 7, 11, 7, 3] * 4, Style()).duration > 0
    train_u2s(cfg, stages=("export",), progress=False)
    assert SpeechDetokenizer.from_pretrained(root / "detok").u2s.cfg.gv_scale is None  # off by default


def test_content_loss_trains_a_judge_then_grades_the_u2s(setup, capsys):
    from emova.train.u2s_content import PhoneJudge, PhoneJudgeConfig, ctc_phone_loss, load_judge

    root, cfg = setup
    c = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(root / "run_content"), "w_content": 0.5,
                          "judge": {"dim": 32, "layers": 1, "heads": 2}, "judge_steps": 4})
    train_u2s(c, stages=("prepare",), progress=False)
    with pytest.raises(ValueError, match="phone judge"):
        train_u2s(c, stages=("u2s",), progress=False)
    train_u2s(c, stages=("judge", "u2s"), progress=False)
    out = capsys.readouterr().out
    assert "phone judge: held-out PER" in out
    jrows = list(csv.DictReader(open(root / "run_content" / "judge" / "log.csv")))
    assert [r["val_per"] for r in jrows if r["val_per"]] and all(np.isfinite(float(r["ctc"])) for r in jrows if r["ctc"])
    rows = list(csv.DictReader(open(root / "run_content" / "u2s" / "log.csv")))
    assert len(rows) == 4 and all(np.isfinite(float(r["content"])) and float(r["content"]) > 0 for r in rows)
    # the judge is frozen while the U2S learns from it, and its gradient reaches the predicted mel
    judge = load_judge(c)
    assert not any(p.requires_grad for p in judge.parameters()) and not judge.training
    mel = torch.randn(2, 40, 80, requires_grad=True)
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    loss = ctc_phone_loss(judge(mel, mask), mask, torch.tensor([[5, 6, 7], [8, 9, 0]]), torch.tensor([3, 2]))
    loss.backward()
    assert torch.isfinite(loss) and mel.grad.abs().sum() > 0 and mel.grad[1, 30:].abs().sum() == 0
    # padding does not change what the judge hears
    short = judge(mel[1:, :30].detach(), torch.ones(1, 30, dtype=torch.bool))
    assert torch.allclose(judge(mel.detach(), mask)[1, :30], short[0], atol=1e-4)
    with pytest.raises(ValueError, match="w_content"):
        U2STrainConfig(**{**cfg.__dict__, "w_content": -1.0})
    # the judge stage runs when either training stage uses the content loss
    assert not cfg.uses_judge() and c.uses_judge()
    assert U2STrainConfig(**{**cfg.__dict__, "finetune": {"voices": ["flite:*"], "w_content": 0.3}}).uses_judge()
    with pytest.raises(ValueError, match="unknown phone judge"):
        U2STrainConfig(**{**cfg.__dict__, "judge": {"size": 3}})
    with pytest.raises(ValueError, match="expects mel"):
        PhoneJudge(PhoneJudgeConfig(dim=32, layers=1, heads=2))(torch.zeros(1, 10, 64), torch.ones(1, 10, dtype=torch.bool))


def test_unit_noise_moves_units_to_neighbouring_codes():
    from emova.speech.fsq import FSQ
    from emova.train.u2s import perturb_units

    levels = [8, 8, 8, 8]
    fsq = FSQ(levels)
    units = torch.randint(0, 4096, (4, 50))
    n = torch.tensor([50, 30, 10, 1])
    out = perturb_units(units, n, 0.3, levels, torch.Generator().manual_seed(0))
    real = torch.arange(50)[None] < n[:, None]
    assert torch.equal(out[~real], units[~real])  # padding untouched
    moved = (out != units) & real
    assert 0.2 < moved.sum() / real.sum() < 0.4
    d = (fsq.indices_to_codes(out) - fsq.indices_to_codes(units)).abs()  # digit distance
    assert ((d.sum(-1) == 1) == moved).all() and out.min() >= 0 and out.max() < 4096
    assert torch.equal(perturb_units(units, n, 0.0, levels, torch.Generator()), units)
    with pytest.raises(ValueError, match="unit_noise"):
        U2STrainConfig(unit_noise=1.5)
    with pytest.raises(ValueError, match="unit_noise_levels"):
        U2STrainConfig(unit_noise_levels=[8, 8, 8])


def test_adversarial_loss_trains_a_discriminator_beside_the_u2s(setup, capsys):
    root, cfg = setup
    c = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(root / "run_adv"), "w_adv": 0.5, "w_fm": 1.0,
                          "adv_warmup": 2, "disc": {"channels": [8, 8], "time_dilations": [1, 2], "window": 16}})
    assert c.uses_disc() and not cfg.uses_disc()
    train_u2s(c, stages=("prepare", "u2s"), progress=False)
    rows = list(csv.DictReader(open(root / "run_adv" / "u2s" / "log.csv")))
    assert len(rows) == 4 and all(float(r["disc"]) > 0 for r in rows)
    # the discriminator learns from the first step; the U2S hears it only after the warm-up
    assert [float(r["adv"]) > 0 and float(r["fm"]) > 0 for r in rows] == [False, False, True, True]
    assert (root / "run_adv" / "u2s" / "step-4" / "disc" / "model.safetensors").is_file()
    assert not list((root / "run_adv" / "u2s").glob(".*tmp"))
    # resumes with its discriminator; the exported U2S is the plain network
    train_u2s(U2STrainConfig(**{**c.__dict__, "max_steps": 6, "export_vocoder": "griffin_lim"}), stages=("u2s", "export"),
              progress=False)
    assert "resuming the mel discriminator" in capsys.readouterr().out
    assert len(list(csv.DictReader(open(root / "run_adv" / "u2s" / "log.csv")))) == 6
    detok = SpeechDetokenizer.from_pretrained(root / "detok")
    assert detok.decode([5, 9, 300, 7, 7, 41]).samples.size > 0
    assert U2STrainConfig(**{**cfg.__dict__, "finetune": {"voices": ["flite:*"], "w_adv": 0.1}}).finetune_config().uses_disc()


def test_mel_discriminator_windows_losses_and_validation():
    from emova.train.u2s_adversarial import (
        MelDiscriminator,
        MelDiscriminatorConfig,
        crop_windows,
        discriminator_loss,
        generator_losses,
    )

    pred = torch.randn(3, 60, 80)
    real = torch.randn(3, 60, 80)
    lengths = torch.tensor([60, 20, 40])
    fake_w, real_w, item = crop_windows(pred, real, lengths, 32, 2, torch.Generator().manual_seed(0))
    assert fake_w.shape == (4, 32, 80) and item.tolist() == [0, 0, 2, 2]  # the 20-frame item is too short
    for f, r, b in zip(fake_w, real_w, item.tolist()):  # same frames of both, inside the real ones
        t0 = next(t for t in range(lengths[b] - 31) if torch.equal(pred[b, t : t + 32], f))
        assert torch.equal(real[b, t0 : t0 + 32], r)
    assert crop_windows(pred, real, torch.tensor([10, 20, 5]), 32, 1, torch.Generator()) is None

    torch.manual_seed(0)
    disc = MelDiscriminator(MelDiscriminatorConfig(channels=[8, 8], time_dilations=[1, 2], window=16))
    scores, feats = disc(torch.randn(2, 16, 80))
    assert scores.shape == (2, 16) and len(feats) == 2
    # feature matching is zero for identical windows; the generator's terms reach the predicted mel
    x = torch.randn(2, 16, 80, requires_grad=True)
    g = generator_losses(disc, x, x.detach().clone())
    assert g["fm"].detach().item() == 0.0
    g = generator_losses(disc, x, torch.randn(2, 16, 80), weight=torch.tensor([1.0, 0.0]))
    (g["adv"] + g["fm"]).backward()
    assert x.grad.abs().sum() > 0
    # it learns to tell speech-like mels from smeared ones
    opt = torch.optim.Adam(disc.parameters(), lr=2e-3)
    real_b = -7 + 3 * torch.randn(8, 16, 80)
    fake_b = torch.full((8, 16, 80), -7.0)
    first = discriminator_loss(disc, fake_b, real_b).item()
    for _ in range(40):
        opt.zero_grad()
        loss = discriminator_loss(disc, fake_b, real_b)
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    with pytest.raises(ValueError, match="expects"):
        disc(torch.zeros(1, 16, 64))
    with pytest.raises(ValueError, match="unknown mel discriminator"):
        U2STrainConfig(disc={"depth": 3})
    with pytest.raises(ValueError, match="time_dilations"):
        U2STrainConfig(disc={"channels": [8, 8], "time_dilations": [1]})
    with pytest.raises(ValueError, match="w_adv"):
        U2STrainConfig(w_adv=-0.1)
    with pytest.raises(ValueError, match="adv_warmup"):
        U2STrainConfig(adv_warmup=-1)
    with pytest.raises(ValueError, match="kernel_time"):
        MelDiscriminatorConfig(kernel_time=4)


def test_f0_augment_adds_pitch_shifted_relabelled_copies(setup, tmp_path, capsys):
    """`f0_augment` makes the prepare stage write PSOLA-shifted copies of matching renderings (same units and
    timing, F0 × factor, the pitch label that factor means) that every later stage reads with the cache."""
    import math

    from emova.audio import Audio, f0_contour
    from emova.train.u2s_augment import F0Augment, shift_f0

    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    plain = U2SData(cfg.cache_dir)
    gender = Style.parse(plain.meta[0]["style"]).gender  # the first item is a neutral (pitch-normal) rendering
    spec = {"gender": gender, "from_pitch": "normal", "to_pitch": "low", "factor": 0.8}
    aug_cfg = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "run"), "export_dir": str(tmp_path / "detok"),
                                "f0_augment": [spec], "gta_steps": 2, "vocoder_segment": 2560, "vocoder_batch": 4,
                                "vocoder": {**cfg.vocoder, "f0_input": True}})
    train_u2s(aug_cfg, stages=("prepare",), progress=False)
    tag = F0Augment(**spec).tag
    data = U2SData(cfg.cache_dir, augment=[tag])
    assert len(U2SData(cfg.cache_dir)) == len(plain)  # the plain cache is untouched
    by_id = {m["id"]: i for i, m in enumerate(plain.meta)}
    sources = [i for i, m in enumerate(plain.meta) if Style.parse(m["style"]).gender == gender
               and Style.parse(m["style"]).pitch == "normal"]
    copies = [i for i, m in enumerate(data.meta) if m.get("augment") == tag]
    assert len(copies) == len(sources) > 0 and len(data) == len(plain) + len(copies)
    for i in copies:
        m, s = data.meta[i], by_id[data.meta[i]["source"]]
        src_style = Style.parse(plain.meta[s]["style"])
        assert Style.parse(m["style"]) == Style(gender=gender, emotion=src_style.emotion, speed=src_style.speed,
                                                pitch="low")
        assert np.array_equal(data.units[i], plain.units[s]) and np.array_equal(data.durs[i], plain.durs[s])
        assert len(data.mel[i]) == len(plain.mel[s]) and m["exact"] == plain.meta[s]["exact"]
        wav = Audio.load(root / "cache" / m["wav"])
        src_wav = Audio.load(root / "corpus" / "wav" / f"{m['source']}.wav", wav.sample_rate)
        assert len(wav.samples) == len(src_wav.samples)  # PSOLA keeps the timing
        drop = (data.stats[i][0] - plain.stats[s][0]) * 0.5  # normalised log-F0 → natural log
        assert abs(drop - math.log(0.8)) < 0.08, (drop, math.log(0.8))
    # the shifter itself: same length, F0 scaled
    x = Audio.load(root / "corpus" / "wav" / f"{plain.meta[sources[0]]['id']}.wav", 16000).samples
    y = shift_f0(x, 16000, 1.25)
    fx, fy = f0_contour(Audio(x, 16000)), f0_contour(Audio(y, 16000))
    assert len(y) == len(x)
    assert abs(math.log(np.median(fy[fy > 0]) / np.median(fx[fx > 0])) - math.log(1.25)) < 0.06
    # resumable: a second prepare rewrites nothing
    shard = sorted((root / "cache").glob(f"aug-{tag}-*.npz"))[0]
    before = shard.stat().st_mtime_ns
    train_u2s(aug_cfg, stages=("prepare",), progress=False)
    assert shard.stat().st_mtime_ns == before
    # a voice filter makes its own shards, and the shorter tag does not read them as its own
    from emova.train.u2s_augment import augment_cache

    voice = plain.meta[sources[0]]["voice"]
    vtag = augment_cache(cfg.cache_dir, root / "corpus", F0Augment(**spec, voices=[voice]), aug_cfg.vocoder_config(),
                         workers=1, progress=False)
    assert vtag.startswith(tag) and len(U2SData(cfg.cache_dir, augment=[tag])) == len(data)
    assert len(U2SData(cfg.cache_dir, augment=[vtag])) == len(plain) + sum(plain.meta[i]["voice"] == voice
                                                                           for i in sources)
    # training, the GTA vocoder (reads the copies' waveforms from the cache) and export run on them
    train_u2s(aug_cfg, stages=("u2s", "vocoder", "vocoder_gta", "export"), progress=False)
    detok = SpeechDetokenizer.from_pretrained(tmp_path / "detok")
    assert detok.vocoder_config.f0_input  # an F0-conditioned vocoder, trained on Praat's / the cache's F0
    low = detok.decode([3, 7, 11, 7] * 4, Style(gender=gender, pitch="low"))
    streamed = list(detok.decode_stream([3, 7, 11, 7] * 4, Style(gender=gender, pitch="low")))
    assert low.duration > 0 and abs(sum(c.duration for c in streamed) - low.duration) < 0.05
    with pytest.raises(ValueError, match="no augmented U2S shards"):
        U2SData(cfg.cache_dir, augment=["f0-nobody"])
    for bad, msg in (({"gender": "x"}, "gender"), ({"factor": 1.0}, "factor"), ({"share": 0}, "share"),
                     ({"pitch": "low"}, "unknown f0_augment keys"), ({"to_pitch": "lowest"}, "to_pitch")):
        with pytest.raises(ValueError, match=msg):
            U2STrainConfig(**{**cfg.__dict__, "f0_augment": [bad]})
    assert F0Augment(**spec, voices=["flite:*"]).tag != tag  # a voice filter names other shards
    assert not F0Augment(**spec, voices=["nobody:*"]).matches(plain.meta[0]["style"], plain.meta[0]["voice"])
    with pytest.raises(ValueError, match="voices"):
        F0Augment(**spec, voices="flite:*")
    with pytest.raises(ValueError, match="list of mappings"):
        U2STrainConfig(**{**cfg.__dict__, "f0_augment": spec})


def test_refiner_stage_trains_resumes_exports_and_streams(setup, capsys):
    import json

    root, cfg = setup
    ref = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(root / "run_ref"), "export_dir": str(root / "detok_ref"),
                            "refiner": {"dim": 32, "layers": 1, "time_dim": 16, "steps": 2},
                            "refiner_steps": 2, "refiner_batch": 2, "refiner_segment": 24, "mel_gv": True})
    train_u2s(ref, stages=("prepare",), progress=False)
    with pytest.raises(ValueError, match="needs a trained U2S"):
        train_u2s(ref, stages=("refiner",), progress=False)
    train_u2s(ref, stages=("u2s", "refiner", "vocoder"), progress=False)
    assert "refiner: U2S from" in capsys.readouterr().out
    train_u2s(U2STrainConfig(**{**ref.__dict__, "refiner_steps": 3}), stages=("refiner", "export"), progress=False)
    assert "resuming refiner" in capsys.readouterr().out
    rows = list(csv.DictReader(open(root / "run_ref" / "refiner" / "log.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3] and all(np.isfinite(float(r["loss"])) for r in rows)
    meta = json.loads((root / "detok_ref" / "config.json").read_text())
    assert "refiner" in meta["info"]["refiner_checkpoint"] and meta["refiner"]["steps"] == 2
    assert meta["u2s"]["gv_scale"] is None  # the refiner replaces the global-variance post-filter
    detok = SpeechDetokenizer.from_pretrained(root / "detok_ref")
    assert detok.refiner is not None and detok.refiner.cfg.mel_mean is not None
    units = [3, 7, 11, 7, 5, 9, 2, 14] * 6
    full = detok.decode(units, Style()).samples
    again = detok.decode(units, Style()).samples
    assert np.array_equal(full, again)  # the noise is a function of the frame's place, not a random draw
    stream = np.concatenate([c.samples for c in detok.decode_stream(iter(units), Style())])
    assert abs(len(stream) - len(full)) <= 512 and np.isfinite(stream).all()
    # without its refiner the same detokenizer decodes differently
    plain = SpeechDetokenizer(detok.u2s, detok.style_encoder, detok.vocoder, detok.prototypes).decode(units, Style())
    assert not np.allclose(plain.samples[: len(full)], full[: len(plain.samples)])
    # a trained refiner attached to a saved detokenizer, with other inference settings
    from emova.train.u2s_refiner import attach_refiner

    att = SpeechDetokenizer.from_pretrained(attach_refiner(root / "detok_ref", root / "run_ref", root / "att",
                                                           steps=1, temperature=0.5))
    assert (att.refiner.cfg.steps, att.refiner.cfg.temperature) == (1, 0.5)
    assert att.decode(units, Style()).duration > 0
    with pytest.raises(ValueError, match="no refiner checkpoint"):
        attach_refiner(root / "detok_ref", root / "run", root / "att2")
    # a damaged refiner entry in config.json is refused with the reason
    import shutil

    bad = root / "detok_bad"
    shutil.copytree(root / "detok_ref", bad)
    meta_bad = dict(meta)
    meta_bad.pop("refiner")
    (bad / "config.json").write_text(json.dumps(meta_bad))
    with pytest.raises(ValueError, match="refiner weights but config.json has no refiner"):
        SpeechDetokenizer.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**meta, "refiner": {**meta["refiner"], "mel_mean": None,
                                                                     "mel_std": None}}))
    with pytest.raises(ValueError, match="untrained refiner"):
        SpeechDetokenizer.from_pretrained(bad)
    (bad / "config.json").write_text(json.dumps({**meta, "refiner": {**meta["refiner"], "dim": 48}}))
    with pytest.raises(ValueError, match="refiner weights do not match"):
        SpeechDetokenizer.from_pretrained(bad)
    # a U2S trained further after the refiner: export refuses the stale refiner
    train_u2s(U2STrainConfig(**{**ref.__dict__, "max_steps": 5}), stages=("u2s",), progress=False)
    with pytest.raises(ValueError, match="run the refiner stage again"):
        train_u2s(ref, stages=("export",), progress=False)
    with pytest.raises(ValueError, match="(?i)refiner"):
        U2STrainConfig(**{**cfg.__dict__, "refiner": {"noise": 5.0}})
    with pytest.raises(ValueError, match="(?i)refiner"):
        U2STrainConfig(**{**cfg.__dict__, "refiner": {"depth": 3}})
    with pytest.raises(ValueError, match="refiner_segment"):
        U2STrainConfig(**{**cfg.__dict__, "refiner_segment": 0})


def test_unit_reader_is_the_frozen_s2u_post_net_and_starts_as_the_identity(setup, capsys):
    """`reader_dim`: the S2U's CTC side (FSQ codes → from_code → post) is copied into the U2S, frozen, behind a
    zero projection: the model computes what its source did until it trains, training moves the projection and
    never the reader, and the exported detokenizer carries it. A reader of another shape is refused."""
    import random

    from emova.speech.style_encoder import StyleEncoderConfig
    from emova.train.u2s import U2SBundle, _init_from_detokenizer, _load_reader, u2s_losses

    root, cfg = setup
    train_u2s(cfg, stages=("prepare", "u2s", "vocoder", "export"), progress=False)
    reader = {"reader_dim": 32, "reader_layers": 1, "reader_heads": 2}
    rc = U2STrainConfig(**{**cfg.__dict__, "model": {**cfg.model, **reader}})
    bundle = U2SBundle(rc.u2s_config(), StyleEncoderConfig.from_dict(rc.style_encoder))
    added = _init_from_detokenizer(bundle, str(root / "detok"))
    assert any(".encoder.reader." in a for a in added)
    _load_reader(bundle, cfg.tokenizer)
    s2u = SpeechTokenizer.from_pretrained(cfg.tokenizer).model
    enc = bundle.u2s.encoder
    assert torch.equal(enc.reader.from_code.weight, s2u.from_code.weight.float())
    assert not any(p.requires_grad for p in enc.reader.parameters())
    src = SpeechDetokenizer.from_pretrained(root / "detok")
    ref = U2SBundle(src.u2s.cfg, src.style_encoder.cfg)
    ref.u2s, ref.style_encoder = src.u2s.float(), src.style_encoder.float()
    batch = U2SData(cfg.cache_dir).collate(list(range(4)), random.Random(0), 0.0)
    with torch.no_grad():
        a, b = u2s_losses(bundle.eval(), batch, rc), u2s_losses(ref.eval(), batch, cfg)
    assert all(float(a[k]) == pytest.approx(float(b[k]), rel=1e-5, abs=1e-6) for k in a)
    # a run with it: the reader is copied from the S2U, stays frozen, the projection learns, export decodes
    run = U2STrainConfig(**{**rc.__dict__, "out_dir": str(root / "run_reader"), "export_dir": str(root / "detok_reader"),
                            "init_from": str(root / "detok")})
    train_u2s(run, stages=("u2s", "export"), progress=False)
    assert "unit reader copied from the S2U" in capsys.readouterr().out
    d = SpeechDetokenizer.from_pretrained(root / "detok_reader")
    assert torch.allclose(d.u2s.encoder.reader.from_code.weight.float(), s2u.from_code.weight.float(), atol=1e-3)
    assert d.u2s.encoder.reader_proj.weight.abs().sum() > 0
    assert d.decode([5, 9, 300, 7], style=Style()).duration > 0
    # the diagnostics score such a checkpoint inside a reader-less detokenizer, the reader's shape read from it
    from emova.eval.u2s_diagnose import swap_u2s_weights

    ck = max((root / "run_reader" / "u2s").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    plain = SpeechDetokenizer.from_pretrained(root / "detok")
    swap_u2s_weights(plain, ck)
    assert plain.u2s.cfg.reader_dim == 32 and plain.u2s.cfg.reader_heads == 2
    assert plain.decode([5, 9, 300, 7], style=Style()).duration > 0
    wrong = U2STrainConfig(**{**cfg.__dict__, "model": {**cfg.model, **reader, "reader_dim": 48, "reader_heads": 2}})
    with pytest.raises(ValueError, match="reader"):
        _load_reader(U2SBundle(wrong.u2s_config(), StyleEncoderConfig.from_dict(wrong.style_encoder)), cfg.tokenizer)
    with pytest.raises(ValueError, match="reader_kernel"):
        U2STrainConfig(**{**cfg.__dict__, "model": {**cfg.model, **reader, "reader_kernel": 4}}).u2s_config()


def test_delta_loss_compares_frame_to_frame_changes(setup):
    """`w_delta` adds the L1 between the predicted and the real mel's frame-to-frame differences: zero when the
    prediction is the real mel shifted by a constant, positive when it is a smoothed copy."""
    import random

    from emova.speech.style_encoder import StyleEncoderConfig
    from emova.train.u2s import U2SBundle, u2s_losses

    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    data = U2SData(cfg.cache_dir)
    batch = data.collate(list(range(min(3, len(data)))), random.Random(0), 0.0)
    torch.manual_seed(0)
    bundle = U2SBundle(cfg.u2s_config(), StyleEncoderConfig.from_dict(cfg.style_encoder)).eval()
    on = U2STrainConfig(**{**cfg.__dict__, "w_delta": 2.0})
    with torch.no_grad():
        plain, with_delta = u2s_losses(bundle, batch, cfg), u2s_losses(bundle, batch, on)
    assert "delta" not in plain and float(with_delta["delta"]) > 0
    assert float(with_delta["total"]) == pytest.approx(float(plain["total"]) + 2.0 * float(with_delta["delta"]), rel=1e-4)

    real = batch["mel"]
    smooth = torch.nn.functional.avg_pool1d(real.transpose(1, 2), 5, 1, 2, count_include_pad=False).transpose(1, 2)
    for pred, zero in ((real + 0.7, True), (smooth, False)):
        orig = bundle.u2s.forward
        bundle.u2s.forward = lambda *a, _p=pred, _f=orig, **k: {**_f(*a, **k), "mel": _p}
        try:
            with torch.no_grad():
                d = float(u2s_losses(bundle, batch, on)["delta"])
        finally:
            bundle.u2s.forward = orig
        assert (d < 1e-5) if zero else (d > 1e-2)
    with pytest.raises(ValueError, match="w_delta"):
        U2STrainConfig(**{**cfg.__dict__, "w_delta": -1.0})
    assert U2STrainConfig(**{**cfg.__dict__, "finetune": {"w_delta": 0.5}}).finetune_config().w_delta == 0.5


def test_cross_voice_pairs_each_rendering_with_another_voices_units(setup, tmp_path):
    """`cross_voice` makes the prepare stage render each chosen group's sentence by another training voice and
    pair every rendering of the group (its mel, F0 and style) with that voice's units, DTW-timed; only the
    u2s / finetune stages read those shards."""
    from emova.data.speech.voices import HELD_OUT_KEYS
    from emova.train.u2s_cross_voice import CrossVoice

    root, cfg = setup
    train_u2s(cfg, stages=("prepare",), progress=False)
    plain = U2SData(cfg.cache_dir)
    spec = {"source_voices": ["flite:*"], "share": 1.0, "seed": 3}
    xv_cfg = U2STrainConfig(**{**cfg.__dict__, "out_dir": str(tmp_path / "run"), "cross_voice": [spec]})
    train_u2s(xv_cfg, stages=("prepare",), progress=False)
    tag = CrossVoice.from_dict(spec).tag
    assert xv_cfg.cross_voice_tags() == [tag] and xv_cfg.augment_tags() == []
    data = U2SData(cfg.cache_dir, augment=[tag])
    by_id = {m["id"]: i for i, m in enumerate(plain.meta)}
    copies = [i for i, m in enumerate(data.meta) if m.get("augment") == tag]
    assert len(copies) == len(plain) and len(data) == 2 * len(plain)  # share 1: every rendering once more
    for i in copies:
        m, s = data.meta[i], by_id[data.meta[i]["source"]]
        assert m["source_voice"] != m["voice"] and m["source_voice"].startswith("flite:")
        assert m["source_voice"] not in HELD_OUT_KEYS and not m["exact"]
        assert m["style"] == plain.meta[s]["style"] and m["voice"] == plain.meta[s]["voice"]
        assert np.array_equal(data.mel[i], plain.mel[s]) and np.array_equal(data.lf0[i], plain.lf0[s])
        assert int(data.durs[i].sum()) == len(data.mel[i])  # the other voice's units time every target frame
        assert (data.units[i][1:] != data.units[i][:-1]).all()  # reduced
        assert not np.array_equal(data.units[i], plain.units[s])  # another voice's units
    # one source voice per group, drawn reproducibly, never the target's own
    cv = CrossVoice.from_dict(spec)
    for i in copies:
        assert data.meta[i]["source_voice"] == cv.source_for(data.meta[i]["group"], data.meta[i]["voice"])
    # resumable: a second prepare rewrites nothing; the u2s stage trains on the pairs
    shard = sorted((root / "cache").glob(f"aug-{tag}-*.npz"))[0]
    before = shard.stat().st_mtime_ns
    train_u2s(xv_cfg, stages=("prepare", "u2s"), progress=False)
    assert shard.stat().st_mtime_ns == before
    assert (tmp_path / "run" / "u2s" / "log.csv").exists()
    for bad, msg in (({"share": 0}, "share"), ({"source_voices": []}, "source_voices"), ({"voices": ["x"]}, "unknown"),
                     ({"source_voices": ["flite:awb"]}, "match no training voice"), ({"seed": 1.5}, "seed")):
        with pytest.raises(ValueError, match=msg):
            U2STrainConfig(**{**cfg.__dict__, "cross_voice": [{**spec, **bad}]})
    with pytest.raises(ValueError, match="list of mappings"):
        U2STrainConfig(**{**cfg.__dict__, "cross_voice": spec})


def test_shard_jobs_run_here_keep_the_callers_thread_count():
    """With one worker the jobs run in this process; a worker initialiser that pins torch to one thread must not
    leave the caller (a training stage after prepare) on one thread."""
    from emova.train.u2s_data import run_shard_jobs

    class Ticks:
        n = 0

        def update(self) -> None:
            self.n += 1

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        done = []
        bar = Ticks()
        run_shard_jobs(done.append, [1, 2, 3], 1, bar, lambda n: torch.set_num_threads(n), (1,))
        assert done == [1, 2, 3] and bar.n == 3
        assert torch.get_num_threads() == 2
        run_shard_jobs(done.append, [], 2, bar)  # nothing to do: no pool is started
        assert done == [1, 2, 3]
    finally:
        torch.set_num_threads(before)
