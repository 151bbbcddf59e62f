import random
import re
from collections import Counter

import pytest

from emova.data.world.dialogues import (
    EMOTION_PITCH,
    SCENARIOS,
    arithmetic,
    normalise,
    sample_exchange,
    sample_text_qa,
    sentence_split,
    style_for,
)
from emova.data.world.questions import NUMBER_WORDS
from emova.styles import EMOTIONS, Style

_CUES = {  # words that only that emotion's remarks or replies use
    "happy": ("congratulations", "wonderful", "great", "hooray", "have fun", "well done", "fantastic", "lovely", "nice",
              "exciting", "proud", "happy", "earned"),
    "sad": ("sorry", "sad", "heartbreaking"),
    "angry": ("rude", "insult", "respect", "mean", "stop", "polite", "do not call"),
    "surprised": ("wow", "no way", "unbelievable", "surprise", "never would", "expect", "what?"),
    "fearful": ("scary", "scared", "frightening", "terrifying", "afraid", "safe", "careful"),
    "disgusted": ("yuck", "eww", "gross", "disgusting", "nasty", "revolting", "sick"),
}


def test_every_emotion_has_labels_that_follow_its_content():
    rng = random.Random(0)
    for emotion in EMOTIONS:
        for _ in range(60):
            ex = sample_exchange(rng, "train", emotion)
            assert ex.user_emotion == ex.reply_emotion == emotion
            assert ex.user_pitch == ex.reply_pitch == EMOTION_PITCH[emotion]
            if emotion in _CUES:
                assert any(c in ex.reply_text.lower() for c in _CUES[emotion]), ex
                others = [c for e, cs in _CUES.items() if e != emotion for c in cs if len(c) > 4]
                assert not any(c in ex.reply_text.lower() for c in others if c not in _CUES[emotion]), ex


def test_heldout_sentences_are_new():
    rng = random.Random(1)
    train = {normalise(sample_exchange(rng, "train").user_text) for _ in range(3000)}
    held = {normalise(sample_exchange(rng, "heldout").user_text) for _ in range(600)}
    assert len(held) > 200 and not train & held
    train_qa = {normalise(sample_text_qa(rng, "train").user_text) for _ in range(3000)}
    held_qa = {normalise(sample_text_qa(rng, "heldout").user_text) for _ in range(600)}
    assert len(held_qa) > 150 and not train_qa & held_qa
    assert all(sentence_split(s) == "heldout" for s in held)


def test_many_distinct_sentences_per_emotion():
    rng = random.Random(2)
    for emotion in EMOTIONS:
        n = len({sample_exchange(rng, "train", emotion).user_text for _ in range(1500)})
        assert n >= 100, (emotion, n)
    assert all(len(s) >= 2 for s in SCENARIOS.values())


def _value(tok: str) -> int:
    return int(tok) if tok.isdigit() else NUMBER_WORDS.index(tok.lower())


def test_arithmetic_is_right():
    rng = random.Random(3)
    ops = Counter()
    for _ in range(400):
        ex = arithmetic(rng, spoken=rng.random() < 0.5)
        m = re.fullmatch(r"(\w+) (plus|minus|times) (\w+) is (\w+)\.", ex.reply_text)
        a, op, b, r = _value(m[1]), m[2], _value(m[3]), _value(m[4])
        assert r == {"plus": a + b, "minus": a - b, "times": a * b}[op] == int(ex.short_answer)
        ops[op] += 1
    assert set(ops) == {"plus", "minus", "times"}
    spoken = arithmetic(random.Random(4), spoken=True)
    assert not re.search(r"\d", spoken.user_text + spoken.reply_text)


def test_styles_are_valid_condition_strings():
    for e in EMOTIONS:
        s = Style.parse(style_for(e, "male"))
        assert s.emotion == e and s.pitch == EMOTION_PITCH[e] and s.gender == "male"
    with pytest.raises(ValueError):
        sample_exchange(random.Random(0), "dev")


def test_simple_vocabulary():
    rng = random.Random(5)
    for _ in range(500):
        ex = sample_exchange(rng, "train")
        for text in (ex.user_text, ex.reply_text):
            assert re.fullmatch(r"[A-Za-z0-9 ,.!?']+", text), text
            assert len(text.split()) <= 20
