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
    assert tiny.speech_tokenizer.reader is not None  # the bundled unit reader (docs/s2u.md), not the S2U's CTC side
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
    assert choose([-1.0, -2.0], [-50.0, -45.0], 1.0, [4.0, 8.0]) == 1  # a bonus (per word) adds to both paths
    assert choose([-1.0, -2.0], [-50.0, -60.0], 1.0, [4.0, 8.0]) == 0
    assert choose([-1.0, -2.0], [-math.inf, -math.inf], 1.0, [0.0, 4.0]) == 1
    with pytest.raises(ValueError):
        choose([-1.0], [-1.0, -2.0], 1.0)
    with pytest.raises(ValueError):
        choose([-1.0, -2.0], [-1.0, -2.0], 1.0, [1.0])


def test_batched_continuation_scores_equal_one_at_a_time(emova, speech):
    inputs = emova._encode([{"role": "user", "content": "Please recognize the text corresponding to the follwing "
                             "speech.\n" + emova.processor.units_to_string(emova._user_units(speech))}])
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


def test_transcribe_keeps_the_candidate_with_the_best_combined_score(tiny, question, monkeypatch):
    def score(got, i):  # what `transcribe` maximises
        text = got.candidates[i]
        return got.llm[i] + tiny.asr_reader_weight * got.reader[i] + tiny.asr_word_bonus * len(text.split())

    greedy = tiny.transcribe(question, beams=1)
    monkeypatch.setattr(tiny, "asr_refine_rounds", 0)  # the beams alone
    beams = tiny.transcribe_candidates(question, beams=8)
    monkeypatch.undo()
    r = tiny.transcribe_candidates(question, beams=8)
    for got in (beams, r):
        assert len(got.llm) == len(got.reader) == len(got.candidates) == len(set(got.candidates))
        total = [score(got, i) for i in range(len(got.candidates))]
        assert got.chosen == max(range(len(total)), key=total.__getitem__) and got.text == got.candidates[got.chosen]
    assert 1 < len(beams.candidates) <= 8
    # the refinement adds candidates (the beams' are all still there) and can only raise the chosen one's score
    assert len(r.candidates) > len(beams.candidates) and set(beams.candidates) <= set(r.candidates)
    assert score(r, r.chosen) >= score(beams, beams.chosen)
    assert tiny.transcribe(question) == tiny.transcribe_candidates(question).text  # the default is the rescored path
    # the bundled model's greedy transcript of the example mishears it; the reader picks the words that were said
    assert r.text == beams.text == "What color is the circle?" and greedy != r.text


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


@pytest.mark.parametrize(("attr", "bad", "named"), [("asr_refine_rounds", -1, "rounds"), ("asr_refine_rounds", 1.5, "rounds"),
                                                    ("refine_alternatives", 0, "alternatives"),
                                                    ("asr_word_bonus", float("nan"), "bonus")])
def test_bad_refinement_settings_are_named(tiny, question, monkeypatch, attr, bad, named):
    monkeypatch.setattr(tiny, attr, bad)
    with pytest.raises(ValueError, match=named):
        tiny.transcribe(question)


def _image_prompt(emova, image, speech):
    msgs = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "audio", "audio": speech}]}]
    return emova.prepare_chat(msgs).inputs


def test_beam_search_shares_one_prefill_and_scores_like_teacher_forcing(emova, image, speech):
    from emova.inference.rescoring import beam_search_quoted

    inputs = _image_prompt(emova, image, speech)
    tok = emova.processor.tokenizer
    opening = tok.encode('{"user question text": "', add_special_tokens=False)
    got = beam_search_quoted(emova.model, inputs, opening, 4, 5, tok, sorted(emova.stop_ids))
    assert 1 <= len(got) <= 8 and all(1 <= len(seq) <= 5 for seq, _ in got)
    n = inputs["input_ids"].shape[1] + len(opening)
    for seq, score in got:
        ids = torch.cat([inputs["input_ids"], torch.tensor([opening + seq])], 1)
        with torch.no_grad():
            logp = emova.model(input_ids=ids, pixel_values=inputs["pixel_values"],
                               image_grid_thw=inputs["image_grid_thw"]).logits[0].float().log_softmax(-1)
        assert score == pytest.approx(sum(float(logp[n - 1 + k, t]) for k, t in enumerate(seq)), abs=2e-3)
    open_scores = [sc for seq, sc in got if len(seq) == 5]
    assert open_scores == sorted(open_scores, reverse=True)


def test_a_generation_prefix_is_emitted_and_read_with_the_prompt(emova, speech):
    from emova.inference.generation import GenerationSettings, generate_tokens

    inputs = emova._encode([{"role": "user", "content": "Say something."}])
    prefix = emova.processor.tokenizer.encode("Hello there, friend", add_special_tokens=False)
    got = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=12, prefix=lambda: prefix)))
    extended = dict(inputs, input_ids=torch.cat([inputs["input_ids"], torch.tensor([prefix])], 1))
    rest = list(generate_tokens(emova.model, extended, set(), GenerationSettings(max_new_tokens=12 - len(prefix))))
    assert got == prefix + rest
    assert list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=2, prefix=lambda: prefix))) == prefix[:2]
    with pytest.raises(ValueError, match="stop id"):
        list(generate_tokens(emova.model, inputs, {prefix[1]}, GenerationSettings(prefix=lambda: prefix)))


def test_a_spoken_turn_begins_with_the_rescored_transcript(tiny, question, monkeypatch):
    from emova.inference.rescoring import rescore, transcript_candidates

    msgs = [{"role": "user", "content": [{"type": "audio", "audio": question}]}]
    plan = tiny.prepare_chat(msgs, speak=False)
    tok = tiny.processor.tokenizer
    opening = '{"user question text": "'
    texts, llm = transcript_candidates(tiny.model, plan.inputs, tok.encode(opening, add_special_tokens=False), 8, 64,
                                       tok, sorted(tiny.stop_ids))
    best = rescore(texts, llm, tiny.speech_tokenizer.phone_log_probs(tiny._user_units(question)), 1.0).text
    r = tiny.chat(msgs, speak=False)
    assert r.raw.startswith(opening + best + '", "user question emotion": "') and r.transcript == best
    assert best == "What color is the circle?"
    streamed = list(tiny.chat(msgs, speak=False, stream=True))[-1].result
    assert streamed.raw == r.raw
    monkeypatch.setattr(tiny, "transcript_refine_rounds", 2)  # refined as `transcribe` is (off by default)
    refined = tiny.chat(msgs, speak=False)
    assert refined.transcript and refined.raw.startswith(opening + refined.transcript + '", "user question emotion"')


def test_transcript_beams_one_leaves_the_answer_to_the_model(tiny, question, monkeypatch):
    msgs = [{"role": "user", "content": [{"type": "audio", "audio": question}]}]
    monkeypatch.setattr(tiny, "transcript_beams", 1)
    assert tiny.prepare_chat(msgs).settings.prefix is None
    for bad in (0, 33, True, 2.5):
        monkeypatch.setattr(tiny, "transcript_beams", bad)
        with pytest.raises(ValueError, match="transcript_beams"):
            tiny.chat(msgs)
    monkeypatch.setattr(tiny, "transcript_beams", 8)
    assert tiny.prepare_chat(msgs).settings.prefix is not None
    monkeypatch.setattr(pipeline_module, "phonemizer_available", lambda: False)
    assert tiny.prepare_chat(msgs).settings.prefix is None


def test_our_beam_search_finds_what_transformers_beam_search_finds(tiny, question, image):
    """Same hypotheses and scores as transformers' beam search (`stop_strings`, no length penalty), which runs the
    prompt once per beam — with an image, too (EmovaForConditionalGeneration repeats each sample's images as whole
    blocks; row-wise repetition interleaved the patches, and the beams saw another picture). A finished beam found
    late must still displace worse ones found early."""
    from emova.inference.rescoring import transcript_candidates

    tok = tiny.processor.tokenizer
    opening = tok.encode('{"user question text": "', add_special_tokens=False)
    for content in ([{"type": "audio", "audio": question}],
                    [{"type": "image", "image": image}, {"type": "audio", "audio": question}]):
        inputs = tiny.prepare_chat([{"role": "user", "content": content}], speak=False).inputs
        texts, scores = transcript_candidates(tiny.model, inputs, opening, 6, 40, tok, sorted(tiny.stop_ids))
        ext = dict(inputs, input_ids=torch.cat([inputs["input_ids"], torch.tensor([opening])], 1))
        ext["attention_mask"] = torch.ones_like(ext["input_ids"])
        with torch.no_grad():
            g = tiny.model.generate(**ext, max_new_tokens=40, do_sample=False, num_beams=6, num_return_sequences=6,
                                    eos_token_id=sorted(tiny.stop_ids), pad_token_id=tok.pad_token_id,
                                    stop_strings=['"'], tokenizer=tok, output_scores=True,
                                    return_dict_in_generate=True, length_penalty=0.0)
        theirs = [(tok.decode(r, skip_special_tokens=True).split('"')[0].strip(), s)
                  for r, s in zip(g.sequences[:, ext["input_ids"].shape[1]:].tolist(), g.sequences_scores.tolist())]
        for (text, score), (t2, s2) in zip(list(zip(texts, scores))[:3], theirs[:3]):
            assert text == t2 and score == pytest.approx(s2, abs=1e-3)


def _asr_inputs(model: Emova, audio: Audio) -> dict[str, torch.Tensor]:
    from emova.model.prompts import asr_prompt

    return model._encode([{"role": "user", "content": asr_prompt(model.processor.units_to_string(model._user_units(audio)))}])


@pytest.mark.parametrize("with_image", [False, True])
@pytest.mark.parametrize("score_end_id", [False, True])
def test_branches_leave_the_best_once_and_score_like_teacher_forcing(emova, image, speech, with_image, score_end_id):
    """Each branch keeps best[:j], takes another token at j (never a banned one) and goes on greedily until an end
    token; all branches decode as one batch over the shared prompt (the gap between their starts masked), and their
    scores are what a forward pass over prompt + branch + end gives (with an image, too; the end token that ended
    the branch, or `end_id`'s probability there)."""
    from emova.inference.rescoring import _token_mask, branch_candidates, prefill

    tok = emova.processor.tokenizer
    inputs = _image_prompt(emova, image, speech) if with_image else _asr_inputs(emova, speech)
    end_id = emova.processor.im_end_id
    best = tok.encode(" the red square is", add_special_tokens=False)
    ends = torch.zeros(len(tok), dtype=torch.bool)
    ends[::7] = True  # the random model: many ends, so that branches of every length finish
    ends[best] = False
    ends[sorted(emova.stop_ids)] = True
    banned = _token_mask(tok, "unit")
    got = branch_candidates(emova.model, prefill(emova.model, inputs), best, ends, 3, 12,
                            end_id if score_end_id else None, banned)
    assert len({len(seq) for seq, _, _ in got}) > 2, "branches of several lengths"
    n = inputs["input_ids"].shape[1]
    extra = {k: inputs[k] for k in ("pixel_values", "image_grid_thw") if k in inputs}
    for seq, end, score in got:
        j = next((k for k, (a, b) in enumerate(zip(seq, best)) if a != b), min(len(seq), len(best)))
        assert seq[:j] == best[:j] and seq != best and len(seq) <= 12 and ends[end]
        assert not any(t < len(ends) and ends[t] for t in seq)  # (the random model writes vocabulary padding too)
        assert all(t < len(banned) and not banned[t] for t in seq[j:j + 1])  # the alternative: a real, allowed token
        last = end_id if score_end_id else end
        ids = torch.cat([inputs["input_ids"], torch.tensor([seq + [last]])], 1)
        with torch.no_grad():
            logp = emova.model(input_ids=ids, **extra).logits[0].float().log_softmax(-1)
        assert score == pytest.approx(sum(float(logp[n - 1 + k, t]) for k, t in enumerate(seq + [last])), abs=2e-3)


def test_refine_climbs_from_the_beams_and_zero_rounds_is_rescoring(emova, speech):
    from emova.inference.rescoring import (
        _token_mask,
        beam_candidates,
        continuation_log_likelihoods,
        prefill,
        refine,
        rescore,
    )

    tok = emova.processor.tokenizer
    inputs = _asr_inputs(emova, speech)
    stops, end_id = sorted(emova.stop_ids), emova.processor.im_end_id
    cands = beam_candidates(emova.model, inputs, 4, 10, stops, tok.pad_token_id)
    llm = continuation_log_likelihoods(emova.model, inputs, cands, end_id)
    lp = torch.randn(60, 70).log_softmax(-1)  # any reader: the search must climb whatever the scores
    ends = torch.zeros(len(tok), dtype=torch.bool)
    ends[stops] = True
    text_of = lambda seq, _end: emova._plain_text(seq)  # noqa: E731
    args = ([(c, None, s) for c, s in zip(cands, llm)], text_of, lp, 1.0, ends)
    start = prefill(emova.model, inputs)
    zero = refine(emova.model, start, *args, 0, 3, 10, end_id, _token_mask(tok, "unit"))
    texts = [t for t in dict.fromkeys(text_of(c, None) for c in cands) if t]
    assert texts, "the beams wrote something"
    plain = rescore(texts, [max(s for c, s in zip(cands, llm) if text_of(c, None) == t) for t in texts], lp, 1.0)
    assert zero.text == plain.text
    two = refine(emova.model, start, *args, 2, 3, 10, end_id, _token_mask(tok, "unit"), 0.5)
    total = lambda r, bonus: r.llm[r.chosen] + r.reader[r.chosen] + bonus * len(r.text.split())  # noqa: E731
    assert two is not None and set(zero.candidates) <= set(two.candidates) and total(two, 0.5) >= total(zero, 0.5)
    assert two.text == two.candidates[two.chosen]
