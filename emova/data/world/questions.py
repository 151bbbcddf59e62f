"""Questions, answers and captions about a tiny-world scene.

Every question is asked only when its answer is unambiguous in the scene:
- colour of a shape: that shape occurs exactly once;
- shape of a colour: that colour occurs exactly once;
- count: of all shapes, of one shape kind, or of one colour (zero allowed for kinds/colours);
- position: the object is named by the shortest unique reference (shape, colour, or colour+shape);
- reading: the scene carries a word or digit.

Each fact (`Fact`) can be phrased many natural ways (`TEMPLATES`). A few templates per type are
reserved for the held-out split (`HELDOUT_ONLY_TEMPLATES`) so that evaluation can also measure
phrasings never seen in training; such questions carry `novel_phrasing=True`.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from emova.data.world.images import COLORS, SHAPES, Scene, SceneObject

QTYPES: tuple[str, ...] = ("color", "shape", "count", "position", "reading")
NUMBER_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
POSITION_PHRASES = {
    "left": "on the left", "right": "on the right", "top": "at the top",
    "bottom": "at the bottom", "center": "in the center",
}  # fmt: skip
SHORT_ANSWER_SUFFIX = "\nAnswer the question using a single word or phrase."

# {ref}: the thing asked about ("circle", "red circle", "red shape"); {shape}/{color}/{plural}.
TEMPLATES: dict[str, dict[str, str]] = {
    "color": {
        "c1": "What color is the {ref}?",
        "c2": "Which color is the {ref}?",
        "c3": "What is the {ref}'s color?",
        "c4": "What is the color of the {ref}?",
        "c5": "Tell me the color of the {ref}.",
        "c6": "What colour is the {ref}?",
        "c7": "The {ref} is what color?",
        "c8": "What color does the {ref} have?",
        "c9": "Can you tell me what color the {ref} is?",
        "c10": "Which colour does the {ref} have?",
    },
    "shape": {
        "s1": "What shape is the {color} object?",
        "s2": "Which shape is {color}?",
        "s3": "What is the shape of the {color} thing?",
        "s4": "What kind of shape is the {color} one?",
        "s5": "Tell me the shape of the {color} object.",
        "s6": "The {color} object is what shape?",
        "s7": "What shape has the color {color}?",
        "s8": "Which shape is the {color} one?",
        "s9": "Can you tell me what shape the {color} object is?",
    },
    "count_all": {
        "n1": "How many shapes are there?",
        "n2": "How many shapes are in the picture?",
        "n3": "How many objects can you see?",
        "n4": "Count the shapes in the image.",
        "n5": "What is the number of shapes?",
        "n6": "How many shapes do you see?",
        "n7": "Tell me how many shapes there are.",
    },
    "count_shape": {
        "k1": "How many {plural} are there?",
        "k2": "How many {plural} are in the picture?",
        "k3": "Count the {plural}.",
        "k4": "How many {plural} can you see?",
        "k5": "What is the number of {plural}?",
        "k6": "Tell me how many {plural} there are.",
    },
    "count_color": {
        "m1": "How many {color} shapes are there?",
        "m2": "How many shapes are {color}?",
        "m3": "Count the {color} shapes.",
        "m4": "How many {color} objects can you see?",
        "m5": "Tell me how many {color} shapes there are.",
    },
    "position": {
        "p1": "Where is the {ref}?",
        "p2": "Where is the {ref} located?",
        "p3": "In which part of the picture is the {ref}?",
        "p4": "What is the position of the {ref}?",
        "p5": "Tell me where the {ref} is.",
        "p6": "Where can you see the {ref}?",
        "p7": "In what part of the image is the {ref}?",
        "p8": "Can you tell me where the {ref} is?",
    },
    "reading_word": {
        "r1": "What word is written in the image?",
        "r2": "Which word is written?",
        "r3": "What does the text say?",
        "r4": "What is written in the picture?",
        "r5": "Read the text in the image.",
        "r6": "What word can you see?",
        "r7": "Can you read the word in the picture?",
    },
    "reading_digit": {
        "d1": "What number is written in the image?",
        "d2": "Which digit is written?",
        "d3": "What is written in the picture?",
        "d4": "Which number do you see?",
        "d5": "Read the number in the image.",
        "d6": "What digit can you see?",
        "d7": "Can you read the number in the picture?",
    },
}
HELDOUT_ONLY_TEMPLATES: frozenset[str] = frozenset({"c9", "c10", "s9", "n7", "k6", "m5", "p8", "r7", "d7"})
NOVEL_PHRASING_PROB = 0.25  # share of held-out questions asked with a held-out-only phrasing

CAPTION_PROMPTS: tuple[str, ...] = (
    "Describe the image briefly.",
    "What do you see in this picture?",
    "Give a short description of the image.",
    "Describe what is in the picture.",
    "What is in this image?",
    "Write a short caption for this picture.",
    "Tell me what the image shows.",
)


@dataclass(frozen=True)
class Fact:
    """One answerable thing about a scene. `ask` is the template family, `slots` fill it."""

    qtype: str
    ask: str
    slots: tuple[tuple[str, str], ...]
    answer: str
    sentence: str
    aliases: tuple[str, ...]


@dataclass(frozen=True)
class QA:
    """A phrased question with its short answer and full-sentence answer."""

    qtype: str
    question: str
    answer: str
    sentence: str
    aliases: tuple[str, ...]
    template: str
    novel_phrasing: bool = False

    def to_dict(self) -> dict:
        return {
            "qtype": self.qtype, "question": self.question, "answer": self.answer,
            "sentence": self.sentence, "aliases": list(self.aliases), "template": self.template,
            "novel_phrasing": self.novel_phrasing,
        }  # fmt: skip


def number_word(n: int) -> str:
    return NUMBER_WORDS[n] if 0 <= n < len(NUMBER_WORDS) else str(n)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _unique_ref(scene: Scene, obj: SceneObject) -> str | None:
    """The shortest name that picks out `obj` alone: 'circle', 'red shape' or 'red circle'."""
    shapes = Counter(o.shape for o in scene.objects)
    colors = Counter(o.color for o in scene.objects)
    pairs = Counter((o.color, o.shape) for o in scene.objects)
    if shapes[obj.shape] == 1:
        return obj.shape
    if colors[obj.color] == 1:
        return f"{obj.color} shape"
    if pairs[(obj.color, obj.shape)] == 1:
        return f"{obj.color} {obj.shape}"
    return None


def _count_aliases(n: int) -> tuple[str, ...]:
    return (str(n), number_word(n)) + (("no", "none") if n == 0 else ())


def _count_sentence(n: int, noun_singular: str, noun_plural: str) -> str:
    if n == 0:
        return f"There are no {noun_plural}."
    if n == 1:
        return f"There is one {noun_singular}."
    return f"There are {number_word(n)} {noun_plural}."


def scene_facts(scene: Scene) -> list[Fact]:
    """Every unambiguous question-worthy fact about the scene, in a fixed order."""
    facts: list[Fact] = []
    shapes = Counter(o.shape for o in scene.objects)
    colors = Counter(o.color for o in scene.objects)
    for obj in scene.objects:
        if shapes[obj.shape] == 1:
            facts.append(Fact(
                "color", "color", (("ref", obj.shape),), obj.color,
                f"The {obj.shape} is {obj.color}.", (obj.color,),
            ))  # fmt: skip
        if colors[obj.color] == 1:
            facts.append(Fact(
                "shape", "shape", (("color", obj.color),), obj.shape,
                f"The {obj.color} object is {_a(obj.shape)}.", (obj.shape,),
            ))  # fmt: skip
        ref = _unique_ref(scene, obj)
        if ref is not None:
            where = POSITION_PHRASES[obj.position]
            facts.append(Fact(
                "position", "position", (("ref", ref),), obj.position,
                f"The {ref} is {where}.", (obj.position, where, "middle" if obj.position == "center" else obj.position),
            ))  # fmt: skip
    n = len(scene.objects)
    facts.append(Fact(
        "count", "count_all", (), str(n),
        _count_sentence(n, "shape", "shapes"), _count_aliases(n),
    ))  # fmt: skip
    for shape in SHAPES:
        k = shapes[shape]
        facts.append(Fact(
            "count", "count_shape", (("plural", PLURALS[shape]),), str(k),
            _count_sentence(k, shape, PLURALS[shape]), _count_aliases(k),
        ))  # fmt: skip
    for color in COLORS:
        k = colors[color]
        if k == 0 and color not in ("red", "green", "blue"):
            continue  # zero-count questions only for a few colours, so they do not swamp the rest
        facts.append(Fact(
            "count", "count_color", (("color", color),), str(k),
            _count_sentence(k, f"{color} shape", f"{color} shapes"), _count_aliases(k),
        ))  # fmt: skip
    if scene.text is not None:
        if scene.text_kind == "digit":
            d = int(scene.text)
            facts.append(Fact(
                "reading", "reading_digit", (), scene.text,
                f"The number {number_word(d)} is written.", (scene.text, number_word(d)),
            ))  # fmt: skip
        else:
            w = scene.text.lower()
            facts.append(Fact("reading", "reading_word", (), w, f"The word {w} is written.", (w,)))
    return facts


def templates_for(ask: str, split: str) -> list[str]:
    """Template ids usable for a family in a split ('train' never gets held-out-only phrasings)."""
    ids = list(TEMPLATES[ask])
    if split == "train":
        return [t for t in ids if t not in HELDOUT_ONLY_TEMPLATES]
    return ids


def phrase(fact: Fact, rng: random.Random, split: str = "train", spoken: bool = False) -> QA:
    """Ask a fact in one of its phrasings. In held-out, a share are held-out-only phrasings.

    `spoken=True` avoids written-only variants (the British "colour"), whose transcript would be
    ambiguous once spoken."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    ok = [t for t, text in TEMPLATES[fact.ask].items() if not (spoken and "colour" in text)]
    ids = [t for t in ok if t not in HELDOUT_ONLY_TEMPLATES]
    novel = [t for t in ok if t in HELDOUT_ONLY_TEMPLATES]
    if split == "heldout" and novel and rng.random() < NOVEL_PHRASING_PROB:
        tid = rng.choice(novel)
    else:
        tid = rng.choice(ids)
    question = TEMPLATES[fact.ask][tid].format(**dict(fact.slots))
    return QA(fact.qtype, question, fact.answer, fact.sentence, fact.aliases, tid, tid in HELDOUT_ONLY_TEMPLATES)


def questions_for_scene(
    scene: Scene, rng: random.Random, n: int = 3, split: str = "train", spoken: bool = False
) -> list[QA]:
    """Up to `n` questions about different facts, spread over question types (reading first if any)."""
    by_type: dict[str, list[Fact]] = {}
    for f in scene_facts(scene):
        by_type.setdefault(f.qtype, []).append(f)
    for facts in by_type.values():
        rng.shuffle(facts)
    if "count" in by_type:  # pop() takes from the end: favour "how many shapes", disfavour zeros
        counts = by_type["count"]
        counts.sort(key=lambda f: (f.ask == "count_all" and rng.random() < 0.4, f.answer != "0" or rng.random() < 0.3))
    types = list(by_type)
    rng.shuffle(types)
    if "reading" in types:  # reading is rare (only images with text): never skip it
        types.remove("reading")
        types.insert(0, "reading")
    chosen: list[Fact] = []
    while len(chosen) < n and any(by_type[t] for t in types):
        for t in types:
            if by_type[t] and len(chosen) < n:
                chosen.append(by_type[t].pop())
    return [phrase(f, rng, split, spoken) for f in chosen]


def _object_phrase(obj: SceneObject) -> str:
    return f"{_a(obj.color)} {obj.shape} {POSITION_PHRASES[obj.position]}"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, rng: random.Random) -> str:
    """A one- or two-sentence description naming every object with its colour and position."""
    objs = list(scene.objects)
    rng.shuffle(objs)
    parts = [_object_phrase(o) for o in objs]
    n = len(objs)
    noun = "shape" if n == 1 else "shapes"
    style = rng.randrange(3)
    if style == 0:
        text = f"There is {_join(parts)}."
    elif style == 1:
        text = f"The picture shows {_join(parts)}."
    else:
        text = f"{number_word(n).capitalize()} {noun} on a light background: {_join(parts)}."
    if scene.text is not None:
        if scene.text_kind == "digit":
            text += f" The number {number_word(int(scene.text))} is written in the corner."
        else:
            text += f" The word {scene.text.lower()} is written in the corner."
    return text
