"""Sentences for the speech corpus: varied, simple English that TTS engines and recognisers handle.

Sentences are drawn from templates filled with a vocabulary of everyday words, plus the tiny
world's own phrases (colours, shapes, positions, digits, feelings). Deterministic by seed. A held-out
set is drawn with another seed and filtered against the training set, so evaluation sentences are
new combinations.
"""

from __future__ import annotations

import random

NAMES = "Anna Ben Clara David Emma Frank Grace Henry Iris Jack Kate Leo Maria Nick Olga Peter Rosa Sam Tom Vera".split()
PEOPLE = ("my brother", "my sister", "the teacher", "our neighbor", "the doctor", "a friend", "the driver",
          "my mother", "my father", "the old man", "the little girl", "the baker", "the farmer", "her cousin")
ANIMALS = "dog cat horse bird fish cow sheep rabbit mouse duck lion tiger bear fox goat frog".split()
THINGS = ("book", "chair", "table", "window", "door", "car", "bike", "phone", "cup", "bottle", "letter",
          "ticket", "bag", "key", "box", "lamp", "picture", "garden", "house", "road", "river", "train",
          "boat", "clock", "shirt", "shoe", "apple", "orange", "bread", "cake", "egg", "glass", "paper",
          "pencil", "radio", "song", "story", "game", "ball", "coat", "hat", "map", "ring", "plate")
PLACES = ("the park", "the station", "the market", "the school", "the office", "the beach", "the city",
          "the village", "the kitchen", "the library", "the hospital", "the river", "the hill", "home",
          "the shop", "the garden", "the bank", "the airport", "the museum", "the farm")
ADJS = ("big", "small", "old", "new", "red", "green", "blue", "yellow", "black", "white", "happy", "sad",
        "warm", "cold", "long", "short", "quiet", "loud", "clean", "dirty", "fast", "slow", "bright",
        "dark", "heavy", "light", "soft", "hard", "young", "strong", "nice", "funny", "strange", "empty")
VERBS_PAST = ("found", "lost", "bought", "sold", "painted", "opened", "closed", "carried", "washed",
              "broke", "fixed", "moved", "saw", "liked", "wanted", "needed", "cleaned", "took", "brought", "kept")
VERBS_ING = ("reading", "walking", "cooking", "singing", "running", "working", "waiting", "sleeping",
             "writing", "playing", "talking", "laughing", "swimming", "driving", "shopping", "dancing")
TIMES = ("today", "yesterday", "this morning", "last night", "on monday", "on friday", "in the evening",
         "every day", "next week", "at noon", "after lunch", "before dinner", "in the summer", "in winter")
NUMBERS = ("zero one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty "
           "forty fifty sixty a hundred").split()
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "black")
SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
FEELINGS = ("happy", "sad", "angry", "tired", "afraid", "surprised", "excited", "bored", "worried", "calm")

TEMPLATES: tuple[str, ...] = (
    "{name} {vpast} the {adj} {thing} {time}.",
    "{people} was {ving} near {place} {time}.",
    "Can you bring me the {adj} {thing} from {place}?",
    "We saw a {adj} {animal} next to the {thing}.",
    "I think the {thing} is in {place}.",
    "There are {num} {animal}s in {place}.",
    "{name} and {name2} went to {place} {time}.",
    "Please put the {thing} on the {thing2}.",
    "Why is the {thing} so {adj}?",
    "My {thing} is {adj} and my {thing2} is {adj2}.",
    "What color is the {shape}?",
    "Which color is the {shape} on the {pos}?",
    "What is the {shape}'s color?",
    "How many {shape}s are there?",
    "Where is the {color} {shape}?",
    "The {color} {shape} is on the {pos}.",
    "The {shape} is {color}.",
    "There are {num} shapes in the picture.",
    "What word is written in the picture?",
    "The number is {num}.",
    "I feel {feeling} {time}.",
    "{name} felt {feeling} after the {adj} {thing}.",
    "I just got a new job and I am so happy!",
    "My {animal} died {time} and I miss it.",
    "You are a {adj} fool and I hate you.",
    "Do you know what time it is?",
    "Is it going to rain {time}?",
    "{people} is {ving} in {place}.",
    "Have you ever seen a {adj} {animal}?",
    "It takes {num} minutes to walk to {place}.",
    "{name} said the {thing} was too {adj}.",
    "Let us meet at {place} {time}.",
    "Turn left at the {adj} house and go to {place}.",
    "The {animal} ate my {thing} {time}.",
    "{num} {num2} {num3} {num4}.",
    "Call me at {num} {num2} {num3}.",
    "Thank you for the {adj} {thing}.",
    "I lost my {thing} at {place}.",
    "We won the game {time}!",
    "Nobody came to my party {time}.",
)


def _fill(template: str, rng: random.Random) -> str:
    name, name2 = rng.sample(NAMES, 2)
    thing, thing2 = rng.sample(THINGS, 2)
    adj, adj2 = rng.sample(ADJS, 2)
    nums = rng.sample(NUMBERS, 4)
    values = dict(
        name=name, name2=name2, people=rng.choice(PEOPLE), animal=rng.choice(ANIMALS), thing=thing,
        thing2=thing2, place=rng.choice(PLACES), adj=adj, adj2=adj2, vpast=rng.choice(VERBS_PAST),
        ving=rng.choice(VERBS_ING), time=rng.choice(TIMES), num=nums[0], num2=nums[1], num3=nums[2],
        num4=nums[3], color=rng.choice(COLORS), shape=rng.choice(SHAPES), pos=rng.choice(POSITIONS),
        feeling=rng.choice(FEELINGS),
    )
    s = template.format(**values)
    return s[0].upper() + s[1:]


def generate_sentences(n: int, seed: int, exclude: set[str] | None = None) -> list[str]:
    """`n` distinct sentences, deterministic in `seed`, none of them in `exclude`."""
    rng = random.Random(seed)
    out: list[str] = []
    seen: set[str] = set(exclude or ())
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > n * 200:
            raise RuntimeError(f"could only make {len(out)} distinct sentences of {n} asked")
        s = _fill(rng.choice(TEMPLATES), rng)
        if s in seen:
            continue
        seen.add(s)
        out.append(s)
    return out
