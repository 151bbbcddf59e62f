"""Speculative decoding with the answer-skeleton drafter: where the skeleton is, that greedy output
never changes, that budgets and stops hold, and that the sampling rule keeps the distribution."""

from __future__ import annotations

import random

import pytest
import torch

from emova.inference.drafting import (
    AnswerDrafter,
    AnswerGuard,
    answer_unfinished,
    label_endings,
    skeleton_continuation,
)
from emova.inference.generation import GenerationSettings, _verify, generate_tokens
from emova.model.prompts import ANSWER_KEYS, EMOTIONS, PITCHES, format_answer
from tests.inference.test_pipeline import ANSWER, audio_msg


@pytest.mark.parametrize("text, expected", [
    ("", '{"user question text": "'),
    ("  {", '"user question text": "'),
    ('{"user question text": "I lost my dog', None),
    ('{"user question text": "I lost my \\"dog\\"', None),  # escaped quotes do not close the value
    ('{"user question text": "I lost my dog"', ', "user question emotion": "'),
    ('{"user question text": "I lost my dog", "us', 'er question emotion": "'),
    ('{"user question text": "a", "user question emotion": "sad", "user question pitch": "low"',
     ', "assistant response text": "'),
    ('{"user question text": "a", "user question emotion": "sad", "user question pitch": "low", '
     '"assistant response text": "b", "assistant response emotion": "sad", "assistant response pitch": "low", '
     '"assistant response speech": "<|speech_1|>"', "}"),
    ('{"user question text": "a"; oops', None),  # off the format: propose nothing
    ("Sure! Here is", None),
    ('{"user question text": "a", "user question emotion": "', None),  # a label still open to choice
    ('{"user question text": "a", "user question emotion": "s', None),  # sad or surprised
    ('{"user question text": "a", "user question emotion": "sur', 'prised", "user question pitch": "'),
    ('{"user question text": "a", "user question emotion": "sad', '", "user question pitch": "'),
    ('{"user question text": "a", "user question emotion": "sad", "user question pitch": "n',
     'ormal", "assistant response text": "'),
    ('{"user question text": "a", "user question emotion": "sadly', None),  # off every label: nothing
])  # fmt: skip
def test_skeleton_continuation(text, expected):
    assert skeleton_continuation(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('{"user question text": "a", "user question emotion": "', EMOTIONS),
    ('{"user question text": "a", "user question emotion": "s', ("sad", "surprised")),
    ('{"user question text": "a", "user question emotion": "sad", "user question pitch": "', PITCHES),
    ('{"user question text": "a", "user question emotion": "sad", "user question pitch": "low", '
     '"assistant response text": "b", "assistant response emotion": "', EMOTIONS),
    ('{"user question text": "', ()),  # free text
    ('{"user question text": "a", "user question emotion": "sad"', ()),  # closed
    ('{"user question text": "a", "user question pitch": "', ()),  # off the format (a key skipped)
])  # fmt: skip
def test_label_endings(text, expected):
    value = text[text.rindex('"') + 1:]
    assert sorted(value + e.split('"')[0] for e in label_endings(text)) == sorted(expected)
    assert all(e.endswith('": "') for e in label_endings(text))  # label, its closing quote, the next key


def test_allowed_tokens_open_exactly_the_labels(emova):
    """Where a label value opens, the allowed ids are the first tokens of the labels as the answer itself
    tokenises them; taking any of them and letting the drafter write the rest gives a valid label."""
    tok = emova.processor.tokenizer
    drafter = AnswerDrafter(emova.processor)
    for prefix, labels in (('{"user question text": "a b", "user question emotion": "', EMOTIONS),
                           ('{"user question text": "a b", "user question emotion": "sad", '
                            '"user question pitch": "', PITCHES)):
        produced = tok.encode(prefix, add_special_tokens=False)
        assert tok.decode(produced) == prefix
        allowed = drafter.allowed(produced)
        truth = {tok.encode(prefix + lab + '", "', add_special_tokens=False)[len(produced)] for lab in labels}
        assert set(allowed) == truth
        for first in allowed:
            ids = produced + [first]
            while skeleton_continuation(tok.decode(ids)) is None:  # several labels still share this start
                ids.append(drafter.allowed(ids)[0])
            ids += drafter(ids)
            value = tok.decode(ids)[len(prefix):].split('"')[0]
            assert value in labels, value
    assert drafter.allowed(tok.encode('{"user question text": "a', add_special_tokens=False)) is None
    # the speech value: it opens with a unit; after a unit, more units or its closing quote
    units = set(emova.processor.speech_token_ids)
    opened = tok.encode(FULL.rsplit("<", 1)[0], add_special_tokens=False)
    assert set(drafter.allowed(opened)) == units
    after = set(drafter.allowed(tok.encode(FULL[:-1], add_special_tokens=False)))  # FULL ends '<|speech_1|>"'
    closed = tok.encode(FULL + "}", add_special_tokens=False)
    assert after - units == {closed[-2]} and tok.decode(closed[-2:]) == '"}'


def test_skeleton_walk_rebuilds_the_answer():
    """Walking a real answer character by character, the skeleton proposed at each closed value is
    exactly what follows in the answer."""
    answer = format_answer(ANSWER)
    i = 0
    while i < len(answer):
        cont = skeleton_continuation(answer[:i])
        if cont:
            assert answer[i : i + len(cont)] == cont
            i += len(cont)
        else:
            i += 1


def test_drafter_proposes_the_tokens_that_follow(emova):
    tok = emova.processor.tokenizer
    answer = format_answer(ANSWER)
    ids = tok.encode(answer, add_special_tokens=False)
    drafter = AnswerDrafter(emova.processor)
    hits = 0
    for n in range(len(ids)):
        prop = drafter(ids[:n])
        if prop:
            k = 0
            while k < len(prop) and n + k < len(ids) and prop[k] == ids[n + k]:
                k += 1
            hits += k
    assert drafter.proposed > 0
    assert hits >= 0.8 * drafter.proposed  # proposals are (nearly always) the true continuation


class NoisyOracle:
    """Proposes the true continuation (from a reference run), corrupted at random positions."""

    def __init__(self, truth: list[int], vocab: int, seed: int) -> None:
        self.truth, self.vocab, self.rng = truth, vocab, random.Random(seed)

    def __call__(self, produced: list[int]) -> list[int]:
        n = len(produced)
        k = self.rng.randrange(0, 6)
        prop = list(self.truth[n : n + k])
        if prop and self.rng.random() < 0.5:
            prop[self.rng.randrange(len(prop))] = self.rng.randrange(self.vocab)
        return prop


@pytest.mark.parametrize(("cache", "lean"), [("static", True), ("static", False), ("dynamic", False)])
def test_greedy_output_unchanged_by_drafts(emova, image, cache, lean):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    plain = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=24, cache=cache, lean=lean)))
    vocab = emova.model.get_input_embeddings().weight.shape[0]
    for seed in range(3):
        s = GenerationSettings(max_new_tokens=24, cache=cache, lean=lean, draft=NoisyOracle(plain, vocab, seed))
        assert list(generate_tokens(emova.model, inputs, set(), s)) == plain
    # a junk drafter and one that proposes far past the budget change nothing either
    junk = GenerationSettings(max_new_tokens=24, cache=cache, lean=lean, draft=lambda p: [7] * 50)
    assert list(generate_tokens(emova.model, inputs, set(), junk)) == plain
    for budget in (1, 2, 5):
        s = GenerationSettings(max_new_tokens=budget, cache=cache, lean=lean, draft=NoisyOracle(plain, vocab, 0))
        assert list(generate_tokens(emova.model, inputs, set(), s)) == plain[:budget]


def test_drafts_stop_at_stop_ids(emova, image):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    plain = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=24)))
    stop = plain[5]
    first = plain.index(stop)
    s = GenerationSettings(max_new_tokens=24, draft=lambda p: plain[len(p) : len(p) + 8])
    assert list(generate_tokens(emova.model, inputs, {stop}, s)) == plain[:first]


def test_spoken_chat_same_answer_with_and_without_drafts(emova, speech):
    """The pipeline drafts spoken answers by default; with random weights the JSON is garbage, but the
    tokens must be the same as without drafting."""
    outs = []
    emova.structured_answers = False  # drafts as proposals only
    try:
        for spec in (True, False):
            emova.speculative = spec
            plan = emova.prepare_chat(audio_msg(speech), max_new_tokens=40)
            assert (plan.settings.draft is not None) == spec and not plan.settings.draft_is_constraint
            outs.append(list(emova._tokens(plan.inputs, plan.settings)))
    finally:
        emova.speculative, emova.structured_answers = True, True
    assert outs[0] == outs[1]


def test_constraint_drafts_are_emitted_unchecked(emova, image):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    plain = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=12)))
    forced = [t for t in range(200, 210) if t not in plain[2:5]][:3]  # tokens the model would not pick there

    def draft(p: list[int]) -> list[int]:
        return forced if len(p) == 2 else []

    for temperature in (0.0, 1.0):
        proposal = GenerationSettings(max_new_tokens=12, draft=draft, temperature=temperature, seed=0)
        constraint = GenerationSettings(max_new_tokens=12, draft=draft, draft_is_constraint=True,
                                        temperature=temperature, seed=0)
        out = list(generate_tokens(emova.model, inputs, set(), constraint))
        assert out[2:5] == forced and len(out) == 12
        if temperature == 0.0:
            assert list(generate_tokens(emova.model, inputs, set(), proposal)) == plain  # verified: rejected
            assert out[:2] == plain[:2]
    # a constraint still ends at a stop id, and never past the budget
    stop_draft = GenerationSettings(max_new_tokens=12, draft=lambda p: forced if len(p) == 2 else [],
                                    draft_is_constraint=True)
    assert list(generate_tokens(emova.model, inputs, {forced[1]}, stop_draft))[2:3] == forced[:1]
    short = GenerationSettings(max_new_tokens=3, draft=draft, draft_is_constraint=True)
    assert len(list(generate_tokens(emova.model, inputs, set(), short))) == 3


def test_structured_answers_write_the_skeleton(emova, speech):
    """With random weights the values are garbage, but the answer begins with the skeleton, and every
    value that closes is followed by the next key in order."""
    from emova.inference.drafting import _OPENERS

    plan = emova.prepare_chat(audio_msg(speech), max_new_tokens=120)
    assert plan.settings.draft_is_constraint and isinstance(plan.settings.draft, AnswerDrafter)
    text = emova._decode(list(emova._tokens(plan.inputs, plan.settings)))
    assert text.startswith('{"user question text": "')
    keys = [m.group(0)[1:-4] for m in _OPENERS.finditer(text)]
    assert keys == list(ANSWER_KEYS[: len(keys)])
    assert plan.settings.allow == plan.settings.draft.allowed
    emova.structured_answers, emova.speculative = False, False
    try:
        assert emova.prepare_chat(audio_msg(speech), max_new_tokens=8).settings.draft is None
    finally:
        emova.structured_answers, emova.speculative = True, True


def test_structured_generation_writes_only_labels(emova, image):
    """Random weights write garbage where they choose, yet with `allow` every emotion and pitch value is a
    label (greedy and sampling); without it, the same weights write no label."""
    tok = emova.processor.tokenizer
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    start = tok.encode('{"user question text": "a b", "user question emotion": "', add_special_tokens=False)
    drafter = AnswerDrafter(emova.processor)

    def draft(p: list[int]) -> list[int]:
        return start[len(p):] if len(p) < len(start) else drafter(p)

    def labels_in(text: str) -> list[str]:
        return [text.split(f'"{k}": "', 1)[1].split('"', 1)[0] for k in ANSWER_KEYS[1:3]]

    for temperature in (0.0, 1.0):
        s = GenerationSettings(max_new_tokens=40, draft=draft, draft_is_constraint=True, allow=drafter.allowed,
                               temperature=temperature, seed=0)
        text = tok.decode(list(generate_tokens(emova.model, inputs, set(), s)))
        assert text.startswith('{"user question text": "a b", "user question emotion": "'), text
        emotion, pitch = labels_in(text)
        assert emotion in EMOTIONS and pitch in PITCHES, text
        assert '"assistant response text": "' in text
    speech = tok.encode(FULL.rsplit("<", 1)[0], add_special_tokens=False)  # up to the speech value's quote
    units = set(emova.processor.speech_token_ids)
    for temperature in (0.0, 1.0):
        s = GenerationSettings(max_new_tokens=len(speech) + 12, allow=drafter.allowed, draft_is_constraint=True,
                               draft=lambda p: speech[len(p):] if len(p) < len(speech) else drafter(p),
                               temperature=temperature, seed=0)
        out = list(generate_tokens(emova.model, inputs, set(), s))[len(speech):]
        body = out[: next((i for i, t in enumerate(out) if t not in units), len(out))]
        assert body and tok.decode(out[len(body):]) in ("", '"', '"}'), tok.decode(out)  # units, then the end
    free = GenerationSettings(max_new_tokens=40, draft=lambda p: start[len(p):] if len(p) < len(start) else [],
                              draft_is_constraint=True)
    text = tok.decode(list(generate_tokens(emova.model, inputs, set(), free)))
    assert text.startswith(tok.decode(start)) and text[len(tok.decode(start)):].split('"')[0] not in EMOTIONS


def test_allow_masks_all_but_the_named_ids(emova, image):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    plain = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=6)))
    only = [t for t in (300, 301, 302) if t not in plain][:2]
    for temperature in (0.0, 1.0):
        s = GenerationSettings(max_new_tokens=6, allow=lambda p: only if len(p) == 2 else None,
                               temperature=temperature, seed=1)
        out = list(generate_tokens(emova.model, inputs, set(), s))
        assert out[2] in only
        if temperature == 0.0:
            assert out[:2] == plain[:2]
    unchanged = GenerationSettings(max_new_tokens=6, allow=lambda p: [plain[len(p)]])  # allows the greedy pick
    assert list(generate_tokens(emova.model, inputs, set(), unchanged)) == plain


def test_sampling_rule_keeps_the_distribution():
    """Drafting token d and verifying with `_verify` must emit tokens distributed as the model's own."""
    logits = torch.tensor([2.0, 1.0, 0.5, -1.0, 0.0])
    s = GenerationSettings(temperature=0.8, top_p=0.95)
    from emova.inference.generation import _probs

    target = _probs(logits, s)
    gen = torch.Generator().manual_seed(0)
    n = 20000
    for d in (0, 3):
        counts = torch.zeros(5)
        for _ in range(n):
            counts[_verify(logits, d, s, gen)] += 1
        assert torch.allclose(counts / n, target, atol=0.012), (d, counts / n, target)


FULL = ('{"user question text": "a", "user question emotion": "sad", "user question pitch": "low", '
        '"assistant response text": "b", "assistant response emotion": "sad", "assistant response pitch": "low", '
        '"assistant response speech": "<|speech_1|>"')


@pytest.mark.parametrize("text, unfinished", [
    ("", True),
    ('{"user q', True),
    ('{"user question text": "I found a gold coin hidden in my soup.', True),  # stopped after the transcript
    ('{"user question text": "a"', True),
    ('{"user question text": "a", "user question emo', True),
    (FULL, True),
    (FULL + "}", False),
    (FULL + " }\n", False),
    ('{"user question text": "a", "user question text": "a"', False),  # a key repeated: off the format
    ('{"user question text": "a", "assistant response text": "b"', False),  # keys skipped
    ('{"user question text": "a"; oops', False),
    ("Sure! Here is", False),
])
def test_answer_unfinished(text, unfinished):
    assert answer_unfinished(text) is unfinished


def test_hold_stop_masks_stop_ids_only_while_held(emova, image):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    plain = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=12)))
    stop = {plain[0]}  # the model's own first choice, made a stop id: without the hold nothing comes out
    assert list(generate_tokens(emova.model, inputs, stop, GenerationSettings(max_new_tokens=12))) == []
    for draft in (None, lambda p: plain[len(p): len(p) + 4]):
        held = GenerationSettings(max_new_tokens=12, hold_stop=lambda p: len(p) < 3, draft=draft)
        out = list(generate_tokens(emova.model, inputs, stop, held))
        assert len(out) >= 3 and not stop & set(out[:3])  # held: the runner-up instead of the stop id
        assert out[0] != plain[0]


def test_hold_never_changes_a_greedy_output_that_does_not_stop_early(emova, image):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    plain = list(generate_tokens(emova.model, inputs, set(), GenerationSettings(max_new_tokens=16)))
    held = GenerationSettings(max_new_tokens=16, hold_stop=lambda p: True)
    assert list(generate_tokens(emova.model, inputs, set(), held)) == plain


def test_spoken_chat_holds_unfinished_answers_by_default(emova, speech):
    plan = emova.prepare_chat(audio_msg(speech), max_new_tokens=8)
    assert isinstance(plan.settings.hold_stop, AnswerGuard)
    guard = plan.settings.hold_stop
    ids = emova.processor.tokenizer.encode('{"user question text": "hi', add_special_tokens=False)
    assert guard(ids) is True
    assert guard(emova.processor.tokenizer.encode(FULL + "}", add_special_tokens=False)) is False
    emova.hold_unfinished = False
    try:
        assert emova.prepare_chat(audio_msg(speech), max_new_tokens=8).settings.hold_stop is None
    finally:
        emova.hold_unfinished = True
    assert emova.prepare_chat([{"role": "user", "content": "hi"}], max_new_tokens=8).settings.hold_stop is None


def test_hold_stop_when_sampling(emova, image):
    inputs = emova._encode([{"role": "user", "content": "Describe the image."}], [image])
    vocab = emova.model.get_input_embeddings().weight.shape[0]
    allowed = set(range(100, 110))
    stop = set(range(vocab)) - allowed  # almost every token ends the output ...
    for seed in range(3):
        free = GenerationSettings(max_new_tokens=6, temperature=1.0, seed=seed)
        assert list(generate_tokens(emova.model, inputs, stop, free)) == []
        # ... unless the hold masks them all: then only the allowed tokens can be sampled
        held = GenerationSettings(max_new_tokens=6, temperature=1.0, seed=seed, hold_stop=lambda p: True)
        out = list(generate_tokens(emova.model, inputs, stop, held))
        assert len(out) == 6 and set(out) <= allowed
