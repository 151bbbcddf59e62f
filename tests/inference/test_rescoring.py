"""`transcribe` keeps the best of the LLM's beam transcripts by the speech tokenizer's phone reader
(`emova.inference.rescoring`)."""

from __future__ import annotations

import math

import pytest
import torch

from emova import Audio, Emova
from emova.assets import resolve_model_dir
from emova.inference import pipeline as pipeline_module
from emova.inference.rescoring import choose, continuation_log_likelihoods, phone_log_likelihood


@pytest.fixture(scope="module")
def tiny() -> Emova:
    return Emova.from_pretrained("emova-tiny")


@pytest.fixture(scope="module")
def question() -> Audio:
    """The bundled example: a flite voice asking "What color is the circle?"."""
    return Audio.load(resolve_model_dir("emova-tiny").parent / "examples" / "question.wav", 16000)


def test_the_phone_reader_prefers_the_words_that_were_said(tiny, question):
    units = tiny._user_units(question)
    lp = tiny.speech_tokenizer.phone_log_probs(units)
    assert lp.shape == (len(units), 70) and torch.allclose(lp.exp().sum(-1), torch.ones(len(units)), atol=1e-4)
    said = phone_log_likelihood(lp, "What color is the circle?")
    for other in ("Where can you see the circle?", "What shape is the square?", "My car is soft and my song is small.",
                  "hello there"):
        assert said > phone_log_likelihood(lp, other) + 10, other
    assert phone_log_likelihood(lp, "   ") == -math.inf
    assert phone_log_likelihood(lp[:3], "What color is the circle?") == -math.inf  # more phones than units
    with pytest.raises(ValueError, match="no speech units"):
        tiny.speech_tokenizer.phone_log_probs([])
    with pytest.raises(ValueError, match="out of range"):
        tiny.speech_tokenizer.phone_log_probs([1, 5000])


def test_choose_adds_the_weighted_reader_score_and_falls_back_to_the_llm():
    assert choose([-1.0, -2.0], [-50.0, -10.0], 1.0) == 1
    assert choose([-1.0, -2.0], [-50.0, -10.0], 0.01) == 0
    assert choose([-1.0, -2.0], [-math.inf, -math.inf], 1.0) == 0  # nothing fits the units: the LLM decides
    assert choose([-3.0, -2.0], [-math.inf, -math.inf], 0.0) == 1
    assert choose([-1.0, -2.0, -3.0], [-math.inf, -40.0, -30.0], 1.0) == 2
    with pytest.raises(ValueError):
        choose([-1.0], [-1.0, -2.0], 1.0)


def test_batched_continuation_scores_equal_one_at_a_time(emova, speech):
    inputs = emova._encode([{"role": "user", "content": "Please recognize the text corresponding to the follwing "
                             "speech.\n" + emova._units_string(speech)}])
    conts = [[11, 12, 13], [40], [7, 8, 9, 10, 11, 12]]
    stop = emova.processor.im_end_id
    batched = continuation_log_likelihoods(emova.model, inputs, conts, stop)
    for c, b in zip(conts, batched):
        ids = torch.cat([inputs["input_ids"][0], torch.tensor(c + [stop])])[None]
        with torch.no_grad():
            logp = emova.model(input_ids=ids).logits[0].float().log_softmax(-1)
        n = inputs["input_ids"].shape[1]
        manual = sum(float(logp[n - 1 + k, t]) for k, t in enumerate(c + [stop]))
        assert b == pytest.approx(manual, abs=1e-3)


def test_transcribe_keeps_the_candidate_with_the_best_combined_score(tiny, question):
    greedy = tiny.transcribe(question, beams=1)
    r = tiny.transcribe_candidates(question, beams=8)
    assert 1 < len(r.candidates) <= 8 and len(r.llm) == len(r.reader) == len(r.candidates)
    total = [a + tiny.asr_reader_weight * b for a, b in zip(r.llm, r.reader)]
    assert r.chosen == max(range(len(total)), key=total.__getitem__) and r.text == r.candidates[r.chosen]
    assert tiny.transcribe(question) == r.text  # the default is the rescored path
    # the bundled model's greedy transcript of the example mishears it; the reader picks the words that were said
    assert r.text == "What color is the circle?" and greedy != r.text


class _NoReader:
    def __init__(self, inner):
        self.encode = inner.encode


def test_without_a_phone_reader_or_espeak_transcribe_is_greedy(tiny, question, monkeypatch):
    greedy = tiny.transcribe(question, beams=1)
    monkeypatch.setattr(tiny, "speech_tokenizer", _NoReader(tiny.speech_tokenizer))
    r = tiny.transcribe_candidates(question, beams=8)
    assert (r.text, r.llm, r.reader) == (greedy, [], [])
    monkeypatch.undo()
    monkeypatch.setattr(pipeline_module, "phonemizer_available", lambda: False)
    assert not tiny.can_rescore and tiny.transcribe(question, beams=8) == greedy


@pytest.mark.parametrize("bad", [0, 33, True, "8", 2.0])
def test_bad_beam_counts_are_named(tiny, question, bad):
    with pytest.raises(ValueError, match="beams"):
        tiny.transcribe(question, beams=bad)
