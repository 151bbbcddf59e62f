"""The tiny recipe's plumbing: world speech voices, render → encode → fill on a few records, step caching,
timings, and the fp16-if-lossless export."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from emova.data.speech.voices import HELD_OUT_KEYS
from emova.data.world import WorldSizes, build_world
from emova.data.world_speech import (
    OUTPUT_STYLE,
    OUTPUT_VOICE,
    encode_world_speech,
    fill_world_units,
    output_style,
    render_world_speech,
    speech_requests,
    voice_for,
)
from emova.train import recipe

FEMALE = "gender-female_emotion-happy_speed-normal_pitch-high"
MALE = "gender-male_emotion-sad_speed-slow_pitch-low"


def test_voices_train_vs_heldout():
    held = {voice_for(f"k{i}", s, "heldout")[0].key for i in range(20) for s in (FEMALE, MALE)}
    assert held == set(HELD_OUT_KEYS)
    assert voice_for("k", MALE, "heldout")[0].key == "flite:awb"
    train = [voice_for(f"k{i}", s, "train") for i in range(300) for s in (FEMALE, MALE)]
    assert not {v.key for v, _ in train} & HELD_OUT_KEYS
    assert {v.engine for v, _ in train} == {"flite", "espeak"}
    assert all(v.gender == ("female" if k % 2 == 0 else "male") for k, (v, _) in enumerate(train))
    assert voice_for("k7", FEMALE, "train") == voice_for("k7", FEMALE, "train")  # a pure function of the key


def test_canonical_outputs_give_model_speech_one_voice():
    outs = [voice_for(f"k{i}", s, "train", "output", canonical_outputs=True) for i in range(50) for s in (FEMALE, MALE)]
    assert {(v.key, tuple(j)) for v, j in outs} == {(OUTPUT_VOICE, ())}
    # user speech keeps every voice; held-out keeps the held-out voices; off by default
    ins = {voice_for(f"k{i}", FEMALE, "train", "input", canonical_outputs=True)[0].key for i in range(50)}
    assert len(ins) > 5
    assert voice_for("k", MALE, "heldout", "output", canonical_outputs=True)[0].key == "flite:awb"
    assert len({voice_for(f"k{i}", FEMALE, "train", "output")[0].key for i in range(50)}) > 5


def test_output_voice_picks_the_one_voice_and_its_neutral_style(tmp_path):
    outs = {voice_for(f"k{i}", FEMALE, "train", "output", canonical_outputs=True, output_voice="flite:kal16")[0].key
            for i in range(20)}
    assert outs == {"flite:kal16"}
    assert output_style() == OUTPUT_STYLE
    assert output_style("flite:kal16") == "gender-male_emotion-neutral_speed-normal_pitch-normal"
    # a held-out voice never speaks training data, and a typo is named
    for bad in ("flite:awb", "flite:nobody"):
        with pytest.raises(ValueError, match="not a training voice"):
            render_world_speech(tmp_path, "train", tmp_path / "out", canonical_outputs=True, output_voice=bad)


class _FakeTokenizer:
    """Duration-dependent units: enough to check the plumbing (encode → reduce → fill)."""

    fingerprint = "fake"

    def encode_batch(self, paths):
        from emova.audio import Audio

        return [[int(abs(x) * 1000) % 4096 for x in Audio.load(p).samples[::1600][:40]] + [7, 7] for p in paths]

    @staticmethod
    def reduce(units):
        return [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]


def test_render_encode_fill_a_tiny_world(tmp_path):
    sizes = WorldSizes(n_images=2, questions_per_image=1, n_vqa_speech=1, n_dialogues=1, n_text_qa=1, n_asr=2, n_tts=1)
    build_world(tmp_path / "world", "heldout", sizes=sizes, progress=False)
    reqs = speech_requests(tmp_path / "world", "heldout")
    assert len(reqs) == 1 * 2 + 1 * 2 + 2 + 1
    wav_dir = render_world_speech(tmp_path / "world", "heldout", tmp_path / "speech", workers=1, progress=False)
    assert sorted(p.name for p in wav_dir.glob("*.wav")) == sorted(r.key.replace("/", "__") + ".wav" for r in reqs)
    units = encode_world_speech(tmp_path / "speech", "heldout", _FakeTokenizer(), reqs, progress=False)
    assert set(units) == {r.key for r in reqs} and all(u[-1] == 7 and u[-2] != 7 for u in units.values())
    class Cached(_FakeTokenizer):
        def encode_batch(self, paths):
            raise AssertionError("cached units were encoded again")

    again = encode_world_speech(tmp_path / "speech", "heldout", Cached(), reqs, progress=False)
    assert again == units

    class Other(_FakeTokenizer):  # another tokenizer's units are its own: nothing cached is reused
        fingerprint = "other"

        def encode_batch(self, paths):
            return [[1, 2, 2, 3] for _ in paths]

    assert set(map(tuple, encode_world_speech(tmp_path / "speech", "heldout", Other(), reqs,
                                              progress=False).values())) == {(1, 2, 3)}
    out = fill_world_units(tmp_path / "world", "heldout", units, tmp_path / "units")
    dlg = json.loads((out / "dialogue_speech.json").read_text())[0]
    assert "<<speech:" not in json.dumps(dlg) and "<|speech_" in dlg["conversations"][0]["value"]
    assert dlg["meta"]["speech"][0]["role"] == "input"


def test_canonical_outputs_rerender_only_model_speech(tmp_path):
    sizes = WorldSizes(n_images=2, questions_per_image=1, n_vqa_speech=1, n_dialogues=2, n_text_qa=1, n_asr=2, n_tts=2)
    build_world(tmp_path / "world", "train", sizes=sizes, progress=False)
    reqs = speech_requests(tmp_path / "world", "train")
    wav_dir = render_world_speech(tmp_path / "world", "train", tmp_path / "speech", workers=1, progress=False)
    before = {p.name: p.stat().st_mtime_ns for p in wav_dir.glob("*.wav")}
    units = encode_world_speech(tmp_path / "speech", "train", _FakeTokenizer(), reqs, progress=False)
    render_world_speech(tmp_path / "world", "train", tmp_path / "speech", workers=1, progress=False,
                        canonical_outputs=True)
    after = {p.name: p.stat().st_mtime_ns for p in wav_dir.glob("*.wav")}
    changed = {n for n in before if before[n] != after[n]}
    outputs = {r.key.replace("/", "__") + ".wav" for r in reqs if r.role == "output"}
    assert outputs and changed == outputs
    # each is the sentence in OUTPUT_VOICE and the neutral OUTPUT_STYLE, whatever style the record asks for
    from emova.audio import Audio
    from emova.data.speech.render import synthesize
    from emova.data.speech.voices import voice_by_key
    from emova.styles import Style

    r = next(r for r in reqs if r.role == "output" and "neutral" not in r.style)
    ref = synthesize(r.text, voice_by_key(OUTPUT_VOICE), Style.parse(OUTPUT_STYLE))
    got = Audio.load(wav_dir / (r.key.replace("/", "__") + ".wav")).samples
    assert len(got) == len(ref.samples) and np.corrcoef(got, ref.samples)[0, 1] > 0.999  # saved as 16-bit PCM
    # the units cache follows: only model speech is encoded again (a tokenizer that fails on inputs proves it)
    class _OutputsOnly(_FakeTokenizer):
        def encode_batch(self, paths):
            assert all(p.name in outputs for p in paths), paths
            return super().encode_batch(paths)

    canon = encode_world_speech(tmp_path / "speech", "train", _OutputsOnly(), reqs, progress=False,
                                canonical_outputs=True)
    assert {k: v for k, v in canon.items() if k.replace("/", "__") + ".wav" not in outputs} == \
        {k: v for k, v in units.items() if k.replace("/", "__") + ".wav" not in outputs}


def test_recipe_skips_cached_steps_and_records_timings(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(recipe, "_RUNNERS", {s: (lambda p, s=s: ran.append(s)) for s in recipe.STEPS})
    paths = recipe.RecipePaths(tmp_path / "w", tmp_path / "r", tmp_path / "a", None)
    for out in [v for k, v in recipe._outputs(paths).items() if k in ("speech_corpus", "s2u", "world")]:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("x")
    t = recipe.run_recipe("tiny", str(tmp_path / "w"), str(tmp_path / "r"), str(tmp_path / "a"),
                          steps=["speech_corpus", "s2u", "world", "world_speech", "stage1"])
    assert ran == ["world_speech", "stage1"]
    assert t["s2u"]["status"] == "cached" and t["stage1"]["status"] == "ran" and "seconds" in t["stage1"]
    saved = json.loads((tmp_path / "w" / "recipe_tiny_timings.json").read_text())
    assert saved["stage1"]["status"] == "ran"
    ran.clear()
    recipe.run_recipe("tiny", str(tmp_path / "w"), str(tmp_path / "r"), str(tmp_path / "a"), steps=["s2u"],
                      force=["s2u"])
    assert ran == ["s2u"]
    with pytest.raises(ValueError, match="unknown recipe step"):
        recipe.run_recipe("tiny", str(tmp_path / "w"), steps=["stage4"])
    with pytest.raises(ValueError, match="unknown recipe"):
        recipe.run_recipe("huge")


def test_recipe_redoes_a_step_whose_input_is_newer(tmp_path, monkeypatch):
    """Stage 3 rerun into runs/ while the assets still hold the previous export: export is redone, not cached."""
    import os

    ran = []
    monkeypatch.setattr(recipe, "_RUNNERS", {s: (lambda p, s=s: ran.append(s)) for s in recipe.STEPS})
    paths = recipe.RecipePaths(tmp_path / "w", tmp_path / "r", tmp_path / "a", None)
    outs = recipe._outputs(paths)
    for i, step in enumerate(("stage2", "stage3", "stage3_cont", "stage3_cont2", "stage3_cont3", "stage3_cont4",
                              "stage3_cont5", "stage3_cont6", "stage3_cont7", "stage3_cont8", "export",
                              "average")):  # export older than the average
        outs[step].parent.mkdir(parents=True, exist_ok=True)
        outs[step].write_text("x")
        os.utime(outs[step], (1000 + i, 1000 + i))
    args = ("tiny", str(tmp_path / "w"), str(tmp_path / "r"), str(tmp_path / "a"))
    steps = ["stage3", "stage3_cont", "stage3_cont2", "stage3_cont3", "stage3_cont4", "stage3_cont5", "stage3_cont6",
             "stage3_cont7", "stage3_cont8", "average", "export"]
    recipe.run_recipe(*args, steps=steps)
    assert ran == ["export"]  # the stages themselves stay cached
    os.utime(outs["export"], (2000, 2000))
    ran.clear()
    recipe.run_recipe(*args, steps=steps)
    assert ran == []
    os.utime(outs["stage3_cont7"], (3000, 3000))  # a leg averaged in was retrained: the average is redone
    recipe.run_recipe(*args, steps=steps)
    assert ran == ["average"]


def test_stage_runners_wire_the_pretrained_vision_tower_and_the_corpus_pairs(tmp_path, monkeypatch):
    import emova.train.omni as omni

    seen = {}
    monkeypatch.setattr(omni, "train_stage", lambda n, cfg: seen.__setitem__(n, cfg))
    paths = recipe.RecipePaths(tmp_path / "w", tmp_path / "r", tmp_path / "a", None)
    recipe._RUNNERS["stage1"](paths)
    assert seen[1].vision_init_from == str(paths.vision / "final") and seen[1].init_from is None
    assert not seen[1].train_vision_stage1  # the paper: stage 1 trains the projector only
    recipe._RUNNERS["stage2"](paths)
    assert seen[2].extra_records == [] and seen[2].vision_init_from is None  # nothing made yet: nothing added
    train = paths.world_units / "train"
    train.mkdir(parents=True)
    for t in ("fsdd_asr", "corpus_asr", "corpus_tts"):
        (train / f"{t}.json").write_text("[]")
    recipe._RUNNERS["stage3"](paths)
    assert [p.rsplit("/", 1)[1] for p in seen[3].extra_records] == ["fsdd_asr.json", "corpus_asr.json",
                                                                     "corpus_tts.json"]
    assert seen[3].init_from == str(paths.stage(2) / "final")
    first = seen[3]
    recipe._RUNNERS["stage3_cont"](paths)  # the second leg: stage 3 again, from stage 3's own final weights
    cont = seen[3]
    assert cont.init_from == str(paths.stage(3) / "final") and cont.out_dir == str(paths.stage("3_cont"))
    assert cont.extra_records == first.extra_records and cont.tasks == first.tasks
    assert cont.task_weights == first.task_weights and cont.seed != first.seed and cont.lr < first.lr
    recipe._RUNNERS["stage3_cont2"](paths)  # the third leg: from the second leg's final weights
    third = seen[3]
    assert third.init_from == str(paths.stage("3_cont") / "final") and third.out_dir == str(paths.stage("3_cont2"))
    assert third.tasks == first.tasks and third.seed not in (first.seed, cont.seed)
    seeds = {first.seed, cont.seed, third.seed}
    for leg, voice, prev in ((3, "flite:slt", "3_cont2"), (4, "flite:kal16", "3_cont3"), (5, "flite:kal16", "3_cont4"),
                             (6, "flite:kal16", "3_cont5")):
        world = paths.units_dir(voice)
        (world / "train").mkdir(parents=True, exist_ok=True)
        for t in ("fsdd_asr", "corpus_asr", "corpus_tts"):
            (world / "train" / f"{t}.json").write_text("[]")
        recipe._RUNNERS[f"stage3_cont{leg}"](paths)  # the fourth to seventh legs: each on its one-voice world
        one = seen[3]
        assert one.init_from == str(paths.stage(prev) / "final") and one.out_dir == str(paths.stage(f"3_cont{leg}"))
        assert one.world_dir == str(world) and one.image_root == str(paths.world)
        assert one.extra_records == [str(world / "train" / f"{t}.json") for t in ("fsdd_asr", "corpus_asr", "corpus_tts")]
        assert one.tasks == first.tasks and one.task_weights == first.task_weights
        assert one.seed not in seeds
        seeds.add(one.seed)
    assert paths.units_dir("flite:slt") != paths.units_dir("flite:kal16") != paths.world_units


@pytest.mark.parametrize("suffix,voice", [("", "flite:slt"), ("_kal16", "flite:kal16")])
def test_one_voice_data_steps_write_their_own_directories(tmp_path, monkeypatch, suffix, voice):
    """world_speech_canonical[_kal16] / units_canonical[_kal16] render and encode with canonical outputs in
    their voice into their own directories, leaving the everyday world's speech and units alone."""
    import emova.data.world_speech as ws
    import emova.speech.tokenizer as st

    calls = []
    monkeypatch.setattr(ws, "render_world_speech", lambda world, split, out, workers, canonical_outputs, output_voice:
                        calls.append(("render", split, Path(out), canonical_outputs, output_voice))
                        or Path(out).mkdir(parents=True, exist_ok=True))
    monkeypatch.setattr(ws, "encode_world_speech", lambda speech, split, tok, reqs, canonical_outputs, output_voice:
                        calls.append(("encode", split, Path(speech), canonical_outputs, output_voice)) or {})
    monkeypatch.setattr(ws, "speech_requests", lambda world, split: [])
    monkeypatch.setattr(ws, "fill_world_units", lambda world, split, units, dest: (Path(dest) / split).mkdir(
        parents=True, exist_ok=True) or Path(dest) / split)
    monkeypatch.setattr(ws, "heldout_texts", lambda world: set())
    monkeypatch.setattr(ws, "corpus_speech_records", lambda corpus, tok, held, tts_voices:
                        calls.append(("corpus", tts_voices)) or ([], []))
    monkeypatch.setattr(st.SpeechTokenizer, "from_pretrained", staticmethod(lambda path: object()))
    paths = recipe.RecipePaths(tmp_path / "w", tmp_path / "r", tmp_path / "a", None)
    recipe._RUNNERS[f"world_speech_canonical{suffix}"](paths)
    recipe._RUNNERS[f"units_canonical{suffix}"](paths)
    canon = paths.work / f"world_speech_canonical{suffix}"
    assert paths.speech_dir(voice) == canon
    assert calls == [("render", "heldout", canon, True, voice), ("render", "train", canon, True, voice),
                     ("encode", "heldout", canon, True, voice), ("encode", "train", canon, True, voice),
                     ("corpus", [voice])]
    outs = recipe._outputs(paths)
    assert outs[f"world_speech_canonical{suffix}"].exists() and outs[f"units_canonical{suffix}"].exists()
    assert not outs["world_speech"].exists() and not outs["units"].exists()
    assert (paths.work / f"world_units_canonical{suffix}" / "train" / "corpus_tts.json").exists()


def test_export_takes_the_average_of_the_last_legs(tmp_path, monkeypatch):
    import emova.train.average as average

    seen = []
    monkeypatch.setattr(recipe, "export_llm", lambda src, dst: seen.append((src, dst)))
    monkeypatch.setattr(average, "average_checkpoints", lambda srcs, dst: seen.append((list(srcs), dst)))
    paths = recipe.RecipePaths(tmp_path / "w", tmp_path / "r", tmp_path / "a", None)
    recipe._RUNNERS["average"](paths)
    recipe._RUNNERS["export"](paths)
    assert recipe.AVERAGED_LEGS == (6, 7, 8)
    legs = [paths.stage(f"3_cont{leg}") / "final" for leg in (6, 7, 8)]
    assert seen == [(legs, paths.stage("3_avg") / "final"),
                    (paths.stage("3_avg") / "final", paths.llm)]


def test_missing_u2s_is_a_recorded_hook(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_u2s(name, *a, **k):
        if name == "emova.train.u2s":
            raise ImportError("not written yet")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_u2s)
    t = recipe.run_recipe("tiny", str(tmp_path / "w"), str(tmp_path / "r"), str(tmp_path / "a"), steps=["u2s"])
    assert t["u2s"]["status"].startswith("hook:")


def test_export_llm_fp16_when_lossless(tmp_path):
    from emova.model.config_loader import load_model_config
    from emova.model.modeling_emova import EmovaForConditionalGeneration
    from emova.model.processor import EmovaProcessor, build_image_processor
    from emova.train.omni import _offline_tokenizer
    from tests.train.omni_micro import write_micro_model

    torch.manual_seed(0)
    m = EmovaForConditionalGeneration(load_model_config(write_micro_model(tmp_path / "m.yaml")).config)
    m.save_pretrained(tmp_path / "src")
    EmovaProcessor(_offline_tokenizer(), build_image_processor(3136, 3136)).save_pretrained(tmp_path / "src")
    info = recipe.export_llm(tmp_path / "src", tmp_path / "llm")
    assert info["dtype"] == "float16" and info["fp16_same_argmax"]
    back = EmovaForConditionalGeneration.from_pretrained(tmp_path / "llm")
    assert back.dtype == torch.float16 and (tmp_path / "llm" / "tokenizer_config.json").exists()
    shutil.rmtree(tmp_path / "src")


@pytest.mark.parametrize("fp16_logits,dtype,ties", [
    ([[4.99, 5.0, 0.0], [1.0, 1.03, 0.0]], "float16", 2),  # a flip where fp32 is tied (margin 0.005), in both probe rows: counted
    ([[5.0, 4.995, 0.0], [1.02, 1.01, 0.0]], "float32", 0),  # a flip where fp32 chose (margin 0.03): fp32 kept
])
def test_export_llm_tells_a_tie_from_a_choice(tmp_path, monkeypatch, fp16_logits, dtype, ties):
    """fp16 is kept when its argmax differs from fp32's only where fp32's top two logits are within rounding."""
    from types import SimpleNamespace

    import emova.model.modeling_emova as me
    import emova.model.processor as mp

    ref = torch.tensor([[[5.0, 4.995, 0.0], [1.0, 1.03, 0.0]]])  # position 0: a tie; position 1: token 1 by 0.03

    class Fake:
        def __init__(self, logits):
            self.logits = torch.tensor([logits])
            self.config = SimpleNamespace(text_config=SimpleNamespace(vocab_size=131))
            self.saved = None

        def eval(self):
            return self

        def float(self):
            return self

        def __call__(self, input_ids):
            return SimpleNamespace(logits=self.logits.expand(input_ids.shape[0], -1, -1)[:, : self.logits.shape[1]])

        def save_pretrained(self, d):
            (Path(d) / "model.safetensors").write_text("x")

    monkeypatch.setattr(me.EmovaForConditionalGeneration, "from_pretrained", staticmethod(
        lambda src, dtype: Fake(ref[0].tolist() if dtype == torch.float32 else fp16_logits)))
    monkeypatch.setattr(mp.EmovaProcessor, "from_pretrained", staticmethod(
        lambda src: SimpleNamespace(save_pretrained=lambda d: None)))
    info = recipe.export_llm(tmp_path / "src", tmp_path / "llm", check_tokens=2)
    assert info["dtype"] == dtype and info["fp16_argmax_flips_at_ties"] == ties
    assert json.loads((tmp_path / "llm" / "export_info.json").read_text()) == info


def test_world_speech_caches_follow_what_a_key_says(tmp_path):
    """A key whose record now says something else is rendered and encoded again; the others are reused."""
    sizes = WorldSizes(n_images=1, questions_per_image=1, n_vqa_speech=0, n_dialogues=0, n_text_qa=0, n_asr=2, n_tts=0)
    build_world(tmp_path / "world", "heldout", sizes=sizes, progress=False)
    wav_dir = render_world_speech(tmp_path / "world", "heldout", tmp_path / "speech", workers=1, progress=False)
    reqs = speech_requests(tmp_path / "world", "heldout")
    first = encode_world_speech(tmp_path / "speech", "heldout", _FakeTokenizer(), reqs, progress=False)
    asr = tmp_path / "world" / "heldout" / "asr.json"
    recs = json.loads(asr.read_text())
    changed = recs[0]["speech"][0]["key"]
    kept = recs[1]["speech"][0]["key"]
    recs[0]["speech"][0]["text"] = "Zero one two three four five six seven eight nine."
    recs[0]["conversations"][1]["value"] = recs[0]["speech"][0]["text"]
    asr.write_text(json.dumps(recs))
    before = {k: (wav_dir / (k.replace("/", "__") + ".wav")).read_bytes() for k in (changed, kept)}
    render_world_speech(tmp_path / "world", "heldout", tmp_path / "speech", workers=1, progress=False)
    after = {k: (wav_dir / (k.replace("/", "__") + ".wav")).read_bytes() for k in (changed, kept)}
    assert after[kept] == before[kept] and after[changed] != before[changed]
    reqs = speech_requests(tmp_path / "world", "heldout")
    calls = []

    class Counting(_FakeTokenizer):
        def encode_batch(self, paths):
            calls.extend(str(p) for p in paths)
            return super().encode_batch(paths)

    second = encode_world_speech(tmp_path / "speech", "heldout", Counting(), reqs, progress=False)
    assert len(calls) == 1 and calls[0].endswith(changed.replace("/", "__") + ".wav")
    assert second[kept] == first[kept] and second[changed] != first[changed]
