"""`emova eval omni`: scoring rules, batched generation, and an oracle run that must score perfectly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from emova.eval import omni
from emova.eval.omni import Generator, answer_correct, digit_of, evaluate_omni, numbers_in, parse_dialogue
from emova.model.config_loader import load_model_config
from emova.model.modeling_emova import EmovaForConditionalGeneration
from emova.model.processor import EmovaProcessor, build_image_processor
from emova.model.prompts import ANSWER_KEYS, EMOTIONS
from emova.train.omni import _offline_tokenizer
from tests.train.omni_micro import make_micro_world, write_micro_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_omni")
    world = make_micro_world(root / "world", n_per_task=3)
    shutil.copytree(world / "train", world / "heldout")
    asr = json.loads((world / "train" / "asr.json").read_text())
    fsdd = [{"id": f"fsdd-{i}", "conversations": [r["conversations"][0], {"from": "gpt", "value": "seven"}],
             "meta": {"answer": "seven", "speaker": ["george", "lucas"][i % 2]}} for i, r in enumerate(asr)]
    (world / "heldout" / "fsdd_asr.json").write_text(json.dumps(fsdd))
    torch.manual_seed(0)
    model = EmovaForConditionalGeneration(load_model_config(write_micro_model(root / "micro.yaml")).config)
    model.save_pretrained(root / "model")
    proc = EmovaProcessor(_offline_tokenizer(), build_image_processor(3136, 3136))
    proc.save_pretrained(root / "model")
    return root, world, model.eval(), proc


def test_answer_rules():
    assert answer_correct("The circle is red.", "red", ["red"], "color")
    assert not answer_correct("The circle is red or blue.", "red", ["red"], "color")  # hedging is wrong
    assert not answer_correct("The circle is green.", "red", ["red"], "color")
    assert answer_correct("There are three shapes.", "3", ["3", "three"], "count")
    assert not answer_correct("There are two circles.", "3", ["3", "three"], "count")
    assert answer_correct("It is in the middle.", "center", ["center", "in the center", "middle"], "position")
    assert answer_correct("Circles.", "circle", ["circle"], "shape")  # plural of the answer
    assert answer_correct("ok", "x", [], None, reference="OK!")  # the reference sentence itself
    assert numbers_in("4 times 2 is eight.") == [4, 2, 8]
    assert digit_of("Seven.") == 7 and digit_of("it was 3") == 3 and digit_of("hello") is None


def test_dialogue_parsing_strict_and_lenient():
    vals = ["hi", "happy", "high", "great", "happy", "high", "<|speech_1|><|speech_2|>"]
    good = json.dumps(dict(zip(ANSWER_KEYS, vals)))
    p = parse_dialogue(good)
    assert p["valid_json"] and p["keys_in_order"] and p["units"] == [1, 2]
    swapped = json.dumps(dict(zip(reversed(ANSWER_KEYS), vals)))
    p = parse_dialogue(swapped)
    assert p["valid_json"] and not p["keys_in_order"]
    cut = good[:-40]  # truncated: invalid, but the labels are still read (as the pipeline would)
    p = parse_dialogue(cut)
    assert not p["valid_json"] and p["fields"]["assistant response emotion"] == "happy"


def test_batched_generation_equals_one_by_one(setup):
    _, world, model, proc = setup
    recs = (json.loads((world / "heldout" / "vqa.json").read_text())
            + json.loads((world / "heldout" / "text_qa.json").read_text()))
    one = Generator(model, proc, world, batch_size=1).run(recs, 6)
    many = Generator(model, proc, world, batch_size=4).run(recs, 6)
    assert one == many and len(one) == len(recs)


def test_held_decoding_masks_stops_only_in_unfinished_answers(setup):
    from emova.eval.omni import _HoldUnfinished

    _, world, model, proc = setup
    gen = Generator(model, proc, world)
    full = ('{"user question text": "a", "user question emotion": "sad", "user question pitch": "low", '
            '"assistant response text": "b", "assistant response emotion": "sad", "assistant response pitch": "low", '
            '"assistant response speech": "<|speech_1|>"}')
    for text, masked in (('{"user question text": "I found a coin.', True), (full, False), ("Sure, here it is.", False)):
        ids = torch.tensor([[5, 6, *proc.tokenizer.encode(text, add_special_tokens=False)]])
        scores = torch.zeros(1, len(proc.tokenizer))
        scores[0, gen.stop[0]] = 10.0  # the greedy pick is a stop id
        out = _HoldUnfinished(gen, 2)(ids, scores)
        assert bool(out[0, gen.stop[0]] == float("-inf")) is masked, text


def test_structured_decoding_forces_only_the_skeleton_after_a_closed_value(setup):
    from emova.eval.omni import _ForceSkeleton

    _, world, model, proc = setup
    gen = Generator(model, proc, world)
    tok = proc.tokenizer
    cases = (
        ("", True),  # the answer begins: its first skeleton token
        ('{"user question text": "I found a coin."', True),  # value closed: the separator and next key
        ('{"user question text": "I found a co', False),  # inside a value: free
        ("Sure, here it is.", False),  # off the format: free
    )
    for text, forced in cases:
        produced = tok.encode(text, add_special_tokens=False)
        ids = torch.tensor([[5, 6, *produced]])
        out = _ForceSkeleton(gen, 2)(ids, torch.zeros(1, len(tok)))
        allowed = torch.nonzero(out[0] > float("-inf")).flatten().tolist()
        if not forced:
            assert len(allowed) == len(tok), text
            continue
        assert len(allowed) == 1, text
        follow = tok.decode(produced + allowed)
        expected = '{"user question text": "' if not text else ', "user question emotion": "'
        assert follow.startswith(text) and expected.startswith(follow[len(text):]), (text, follow)
    # where an emotion value opens, exactly the first tokens of the seven labels are allowed
    text = '{"user question text": "I found a coin.", "user question emotion": "'
    produced = tok.encode(text, add_special_tokens=False)
    out = _ForceSkeleton(gen, 2)(torch.tensor([[5, 6, *produced]]), torch.zeros(1, len(tok)))
    allowed = torch.nonzero(out[0] > float("-inf")).flatten().tolist()
    firsts = {tok.encode(text + e + '", "', add_special_tokens=False)[len(produced)] for e in EMOTIONS}
    assert set(allowed) == firsts and len(allowed) > 1


def test_oracle_answers_score_perfectly(setup, monkeypatch, capsys):
    root, world, _, _ = setup

    def oracle(self, records, max_new_tokens, desc="", hold=False, structured=False, prefixes=None):
        return [r["conversations"][1]["value"] for r in records]

    monkeypatch.setattr(Generator, "run", oracle)
    rep = evaluate_omni(root / "model", world, None, detokenizer=None, out=root / "eval.json",
                        suites=["vqa", "text", "asr", "fsdd", "dialogue"], speech_tokenizer=None)
    s = rep["suites"]
    assert s["vqa"]["accuracy"] == 1.0 and s["vqa"]["qtype/color"]["accuracy"] == 1.0
    assert s["text"]["accuracy"] == 1.0 and s["asr"]["wer"] == 0.0 and s["fsdd"]["accuracy"] == 1.0
    sources = {k: v for k, v in s["asr"].items() if k.startswith("source/")}
    assert sources and sum(v["n"] for v in sources.values()) == s["asr"]["n"]  # "source/?": records without meta
    d = s["dialogue"]
    assert d["valid_json_keys_in_order"] == 1.0 and d["reply_emotion_accuracy"] == 1.0
    assert d["pipeline"]["valid_json_keys_in_order"] == 1.0 and "invalid_examples" in d["pipeline"]
    assert d["pipeline"]["outputs_changed"] == 0.0 and d["pipeline"]["needed_repair"] == 0.0
    assert d["answer_accuracy"] == 1.0 and d["transcript_wer"] == 0.0 and d["n_with_answer"] == 3
    acc = json.loads((root / "eval.json").read_text())["acceptance"]
    assert acc["vqa_accuracy"]["pass"] and acc["dialogue_valid_json"]["pass"] and acc["tts_wer"]["pass"] is None
    assert "vqa_accuracy" in capsys.readouterr().out


def test_wrong_answers_fail_acceptance(setup, monkeypatch):
    root, world, _, _ = setup
    monkeypatch.setattr(Generator, "run", lambda self, records, n, desc="", hold=False, structured=False, prefixes=None: ["I do not know."] * len(records))
    rep = evaluate_omni(root / "model", world, None, detokenizer=None, out=None, suites=["vqa", "dialogue"],
                        speech_tokenizer=None)
    assert rep["suites"]["vqa"]["accuracy"] == 0.0
    assert rep["acceptance"]["dialogue_valid_json"]["pass"] is False


def test_fsdd_reports_speakers_and_confusions(setup, monkeypatch):
    root, world, _, _ = setup
    answers = iter(["Seven.", "eight", "seven"] * 10)
    monkeypatch.setattr(Generator, "run", lambda self, records, *a, **k: [next(answers) for _ in records])
    f = evaluate_omni(root / "model", world, None, detokenizer=None, out=None, suites=["fsdd"],
                      speech_tokenizer=None)["suites"]["fsdd"]
    assert f["n"] == 3 and f["accuracy"] == pytest.approx(2 / 3, abs=1e-3)
    assert f["speaker/george"] == {"accuracy": 1.0, "n": 2} and f["speaker/lucas"] == {"accuracy": 0.0, "n": 1}
    assert f["confusions"] == {"seven → eight": 1} and f["errors"][0]["got"] == "eight"


def test_asr_and_fsdd_score_the_rescored_transcripts_and_report_the_greedy_ones(setup, monkeypatch):
    root, world, _, _ = setup
    monkeypatch.setattr(Generator, "run", lambda self, records, *a, **k: ["something else entirely"] * len(records))
    seen = []

    def oracle(self, records, max_new_tokens, reader, beams=8, weight=1.0, desc=""):
        seen.append(reader)
        return [r["conversations"][1]["value"] for r in records]

    monkeypatch.setattr(Generator, "rescored", oracle)
    rep = evaluate_omni(root / "model", world, None, detokenizer=None, out=None, suites=["asr", "fsdd"])
    s = rep["suites"]
    assert s["asr"]["wer"] == 0.0 and s["asr"]["wer_greedy"] > 0.5 and s["asr"]["rescored"] is True
    assert s["fsdd"]["accuracy"] == 1.0 and s["fsdd"]["accuracy_greedy"] == 0.0
    assert rep["acceptance"]["asr_wer_greedy"]["value"] == s["asr"]["wer_greedy"]
    assert len(seen) == 2 and hasattr(seen[0], "phone_log_probs")  # the bundled speech tokenizer's reader
    plain = evaluate_omni(root / "model", world, None, detokenizer=None, out=None, suites=["asr"],
                          speech_tokenizer=None)["suites"]["asr"]
    assert plain["rescored"] is False and plain["wer"] > 0.5 and "wer_greedy" not in plain


def test_rescored_transcripts_are_among_the_llms_beams(setup):
    from emova.eval.omni import _load, load_model
    from emova.inference.rescoring import beam_candidates
    from emova.speech.tokenizer import UNIT_RE, SpeechTokenizer

    root, world, _, _ = setup
    model, proc = load_model(root / "model")
    gen = Generator(model, proc, None)
    recs = _load(world, "asr", 2)
    got = gen.rescored(recs, 6, SpeechTokenizer.from_pretrained("emova-tiny"), beams=3, rounds=0)  # the beams alone
    for r, text in zip(recs, got):
        inputs = {k: v for k, v in gen.prompt(r).items() if k != "labels"}
        cands = beam_candidates(model, inputs, 3, 6, gen.stop, proc.tokenizer.pad_token_id)
        assert text in [UNIT_RE.sub("", proc.decode(c, skip_special_tokens=True)).strip() for c in cands]


def test_the_pipeline_run_begins_each_answer_with_its_prefix(setup):
    from emova.eval.omni import _load
    from emova.speech.tokenizer import SpeechTokenizer
    from emova.styles import EMOTIONS

    root, world, model, proc = setup
    gen = Generator(model, proc, world, batch_size=2)
    recs = _load(world, "dialogue_speech", 2)
    tok = proc.tokenizer
    opened = ['{"user question text": "hi", "user question emotion": "',
              '{"user question text": "what a long day it was", "user question emotion": "']
    prefixes = [tok.encode(t, add_special_tokens=False) for t in opened]
    outs = gen.run(recs, 3, structured=True, prefixes=prefixes)
    for text, out in zip(opened, outs):  # the skeleton rule reads each row from its own prefix on
        assert out.startswith(text) and any(out[len(text):].startswith(e[:1]) for e in EMOTIONS), out
    made = gen.transcript_prefixes(recs, SpeechTokenizer.from_pretrained("emova-tiny"), beams=2)
    for ids in made:
        text = tok.decode(ids)
        assert text.startswith('{"user question text": "') and text.endswith('", "user question emotion": "')


def test_unknown_suite_and_unfilled_records(setup, tmp_path):
    root, world, _, _ = setup
    with pytest.raises(ValueError, match="unknown suite"):
        evaluate_omni(root / "model", world, suites=["speed"], out=None)
    bad = tmp_path / "w"
    (bad / "heldout").mkdir(parents=True)
    (bad / "heldout" / "vqa.json").write_text(json.dumps([{"id": "x", "conversations": [
        {"from": "human", "value": "<<speech:a>>"}, {"from": "gpt", "value": "y"}]}]))
    with pytest.raises(ValueError, match="not filled"):
        omni._load(bad, "vqa", None)


def test_missing_suite_data_is_reported_as_skipped(setup, tmp_path, monkeypatch, capsys):
    root, world, _, _ = setup
    partial = tmp_path / "partial"
    (partial / "heldout").mkdir(parents=True)
    shutil.copy(world / "heldout" / "text_qa.json", partial / "heldout" / "text_qa.json")
    monkeypatch.setattr(Generator, "run", lambda self, records, *a, **k: ["x"] * len(records))
    rep = evaluate_omni(root / "model", partial, None, detokenizer=None, out=None, suites=["fsdd", "text"])
    assert "skipped" in rep["suites"]["fsdd"] and rep["acceptance"]["fsdd_accuracy"]["pass"] is None
    assert rep["suites"]["text"]["n"] > 0 and "skipped fsdd: no held-out records" in capsys.readouterr().out
    with pytest.raises(ValueError, match="every suite was skipped: fsdd: no held-out records"):
        evaluate_omni(root / "model", partial, None, detokenizer=None, out=None, suites=["fsdd"])


def test_a_missing_world_or_bad_counts_are_errors_before_the_model_loads(setup, tmp_path):
    root, world, _, _ = setup
    with pytest.raises(ValueError, match="no held-out world at"):
        evaluate_omni(root / "missing_model", tmp_path / "nothing", None, detokenizer=None, out=None)
    with pytest.raises(ValueError, match="max_items must be a positive integer"):
        evaluate_omni(root / "model", world, None, detokenizer=None, out=None, max_items=0)
