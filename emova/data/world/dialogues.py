"""Everyday remarks with emotional replies, and plain typed Q&A (arithmetic, simple facts).

A remark's emotion follows from its content alone (good news → happy, loss → sad, insult → angry,
plain question → neutral, unexpected event → surprised, threat → fearful, something gross →
disgusted). The user's pitch and the reply's pitch are fixed functions of the emotion
(`EMOTION_PITCH`), because speech units carry no pitch: only content can reveal them.

Sentences are built from templates and fillers. Whether a user sentence belongs to the train or
the held-out split is a stable hash of its normalised text (`sentence_split`), so held-out sentences
are new combinations of known templates and fillers, never a sentence seen in training.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from emova.data.world.images import split_of_key
from emova.data.world.questions import number_word
from emova.styles import EMOTIONS, Style

EMOTION_PITCH: dict[str, str] = {
    "neutral": "normal", "happy": "high", "sad": "low", "angry": "high",
    "surprised": "high", "fearful": "high", "disgusted": "low",
}  # fmt: skip
EMOTION_SPEED: dict[str, str] = {
    "neutral": "normal", "happy": "normal", "sad": "slow", "angry": "fast",
    "surprised": "normal", "fearful": "fast", "disgusted": "slow",
}  # fmt: skip


@dataclass(frozen=True)
class Exchange:
    """One user utterance and the assistant's reply, with the labels of both."""

    kind: str  # "remark" (emotional or plain), "arithmetic" or "fact"
    user_text: str
    user_emotion: str
    user_pitch: str
    reply_text: str
    reply_emotion: str
    reply_pitch: str
    short_answer: str | None = None  # for arithmetic / facts: the bare answer

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def normalise(text: str) -> str:
    """Lower case, punctuation dropped, single spaces: the form sentences are compared in."""
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


def sentence_split(text: str) -> str:
    """'train' or 'heldout' for a user sentence (stable hash of its normalised text)."""
    return split_of_key("sentence:" + normalise(text))


def style_for(emotion: str, gender: str, pitch: str | None = None) -> str:
    """The condition string to render an utterance of this emotion in."""
    return str(Style(gender=gender, emotion=emotion, pitch=pitch or EMOTION_PITCH[emotion],
                     speed=EMOTION_SPEED[emotion]))


# ---------------------------------------------------------------------------------------------
# Emotional remarks. Each scenario: user templates, reply templates, and slot fillers; fillers
# that must agree (e.g. a pronoun) sit in one dict.
# ---------------------------------------------------------------------------------------------
_WHEN_PAST = ("today", "yesterday", "this morning", "last night", "last week", "on monday", "on friday", "")
_WHEN_FUTURE = ("next week", "this summer", "tomorrow", "next month", "in june", "on sunday")
_EXAMS = ("math test", "driving test", "final exam", "piano exam", "swimming test", "science test",
          "history exam", "spelling test")
_RELATIVES = ("sister", "brother", "best friend", "cousin", "aunt", "uncle", "neighbor")
_INSULT_ADJ = ("stupid", "useless", "dumb", "lazy", "worthless", "annoying", "pathetic", "hopeless", "rude",
               "boring", "ugly", "terrible")
_PETS = ("dog", "cat", "bird", "rabbit", "fish", "hamster", "horse", "turtle")


@dataclass(frozen=True)
class _Scenario:
    users: tuple[str, ...]
    replies: tuple[str, ...]
    slots: dict[str, tuple]  # name -> options (str, or dict of several agreeing slots)


def _s(users: tuple[str, ...], replies: tuple[str, ...], **slots: tuple) -> _Scenario:
    return _Scenario(users, replies, slots)


SCENARIOS: dict[str, tuple[_Scenario, ...]] = {
    "happy": (
        _s(("I passed my {exam} {when}!", "Guess what, I passed my {exam}!",
            "Great news, I passed my {exam} {when}.", "I just found out that I passed my {exam}!"),
           ("That is wonderful news! Congratulations on passing your {exam}.",
            "Well done! I am so happy for you.", "Congratulations! All your hard work paid off.",
            "Fantastic! You must be so proud of yourself."),
           exam=_EXAMS, when=_WHEN_PAST),
        _s(("I got a new {thing} {when}!", "My parents bought me a new {thing}!",
            "Look, I have a new {thing}!", "I finally have my own {thing}!"),
           ("How exciting! Enjoy your new {thing}.", "That is great! I am really happy for you.",
            "Wow, a new {thing}! That is wonderful.", "Lucky you! Have fun with your new {thing}."),
           thing=("puppy", "bike", "kitten", "job", "phone", "house", "car", "guitar", "watch", "computer"),
           when=_WHEN_PAST),
        _s(("We won the {contest} {when}!", "Our team won the {contest}!",
            "I won first prize in the {contest}!", "Guess what, we won the {contest}!"),
           ("Congratulations! Winning the {contest} is amazing.", "Hooray, that is fantastic news!",
            "Great job! You must be so proud.", "Wonderful! You really earned it."),
           contest=("football game", "school race", "chess match", "spelling contest", "dance contest",
                    "baking contest", "quiz", "soccer final"),
           when=_WHEN_PAST),
        _s(("My {relative} just had a baby!", "My {relative} is getting married {future}!",
            "My {relative} is coming to visit me {future}!"),
           ("What lovely news! Please say congratulations to your {relative}.",
            "That is wonderful! I am so happy for your family.", "How nice! That is really good news."),
           relative=_RELATIVES, future=_WHEN_FUTURE),
    ),
    "sad": (
        _s(("My {pet} died {when}.", "I lost my old {pet} {when}.", "Our {pet} passed away {when}.",
            "My sweet {pet} is gone."),
           ("I am so sorry about your {pet}. That is really sad.",
            "Oh no, I am so sorry. Losing a {pet} is very hard.",
            "That is so sad. I hope you feel better soon.", "I am very sorry for your loss."),
           pet=_PETS, when=_WHEN_PAST),
        _s(("My {elder} passed away {when}.", "My {elder} died {when} and I miss {obj} a lot.",
            "I went to the funeral of my {elder} {when}."),
           ("I am so sorry for your loss.", "I am very sorry to hear about your {elder}. Please take care.",
            "That is heartbreaking. I am sorry you lost {obj}."),
           who=({"elder": "grandfather", "obj": "him"}, {"elder": "grandmother", "obj": "her"},
                {"elder": "uncle", "obj": "him"}, {"elder": "aunt", "obj": "her"},
                {"elder": "old teacher", "obj": "him"}),
           when=_WHEN_PAST),
        _s(("I failed my {exam} {when}.", "I did not pass my {exam}.", "I studied so hard but I failed my {exam}."),
           ("I am sorry to hear that. You can try again next time.",
            "That is sad, but please do not give up.", "I am sorry. I know how much the {exam} meant to you."),
           exam=_EXAMS, when=_WHEN_PAST),
        _s(("I lost my {item} {when}.", "Somebody stole my {item} {when}.", "I cannot find my {item} anywhere."),
           ("Oh no, I am so sorry you lost your {item}.", "That is really sad. I hope you find your {item} again.",
            "I am sorry, that must be hard for you."),
           item=("job", "wallet", "favorite ring", "old photos", "grandmother's necklace", "lucky coin", "diary"),
           when=_WHEN_PAST),
        _s(("My {relative} moved to another {place} {when}.", "My {relative} left for another {place} and I feel alone."),
           ("I am sorry. You must miss your {relative} very much.", "That is sad. I hope you can visit soon."),
           relative=_RELATIVES, place=("city", "country", "town", "state"), when=_WHEN_PAST),
    ),
    "angry": (
        _s(("You are {adj}.", "You are so {adj}!", "You are the most {adj} {bot} I have ever used.",
            "I hate talking to you, you are {adj}.", "Why are you so {adj}?"),
           ("That is rude! Do not talk to me like that.", "Hey, stop insulting me! That is not fair.",
            "How dare you say that! Show some respect.", "I am not {adj}! Please be polite."),
           adj=_INSULT_ADJ, bot=("robot", "computer", "machine", "assistant", "program", "helper")),
        _s(("You are a {adj} {bot}.", "What a {adj} {bot} you are!", "Everything you say is {adj}.",
            "You are {adj} and I do not like you.", "Stop wasting my time, you {adj} {bot}."),
           ("Excuse me? That is rude and I will not accept it!", "Stop that right now! There is no need to be mean.",
            "That is insulting! Please speak to me with respect."),
           adj=_INSULT_ADJ, bot=("robot", "computer", "machine", "assistant", "program", "helper")),
        _s(("What a {bad} answer, you {noun}.", "Shut up, you {noun}.", "You never help me, you {noun}!",
            "Nobody likes you, you {noun}.", "Go away, you silly {noun}."),
           ("Do not call me a {noun}! That is very rude.", "Stop it! I will not accept being insulted.",
            "That is mean and I do not like it at all!", "Watch your words! That was rude."),
           bad=("dumb", "silly", "terrible", "stupid", "lousy"),
           noun=("idiot", "fool", "loser", "clown", "pest", "creep", "moron")),
    ),
    "surprised": (
        _s(("Guess what, I just saw a {animal} in the {place}!", "You will not believe it, there is a {animal} in the {place}!",
            "I just saw a real {animal} in the {place}!"),
           ("Wow, really? A {animal} in the {place}? I did not expect that!", "No way! That is so surprising!",
            "What? That is amazing, I can hardly believe it!"),
           animal=("deer", "fox", "bear", "peacock", "camel", "penguin", "goat", "monkey"),
           place=("garden", "kitchen", "street", "park", "backyard", "school")),
        _s(("I just found {money} on the street!", "My {relative} showed up at my door without telling me!",
            "It is snowing here in {month}!", "My old {relative} called me out of the blue {when}!"),
           ("Wow, really? That is such a surprise!", "No way! I did not see that coming!",
            "Oh my, that is unbelievable!"),
           money=("ten dollars", "fifty dollars", "a gold coin", "a hundred dollars"), relative=_RELATIVES,
           month=("june", "july", "august", "may"), when=_WHEN_PAST),
        _s(("I just met {star} at the {spot}!", "You will not believe who I saw at the {spot}, it was {star}!",
            "Guess what, {star} was standing next to me at the {spot}!"),
           ("Really? {Star} at the {spot}? Wow, that is so unexpected!", "No way! What a surprise!",
            "Wow, I never would have guessed that!"),
           star=("the president", "the mayor", "a famous singer", "a famous actor", "my favorite player",
                 "my old teacher", "a movie star"),
           spot=("supermarket", "airport", "bakery", "train station", "gas station", "library", "beach")),
        _s(("I just found {money} inside my old {container}!", "I found {money} hidden in my old {container}!"),
           ("What? {Money} in your {container}? That is a big surprise!", "Wow, really? I did not expect that!"),
           money=("ten dollars", "fifty dollars", "a gold coin", "a hundred dollars", "a diamond ring"),
           container=("jacket", "book", "shoe", "sofa", "box", "coat", "drawer")),
    ),
    "fearful": (
        _s(("I hear strange noises in the {room} at night.", "There is a huge {creature} in my {room}!",
            "I think there is a {creature} hiding in the {room}.", "Something is moving in the dark {room}."),
           ("Oh no, that sounds really scary! Please stay safe.", "That is frightening! Please be careful.",
            "I am scared too. Do not go in there alone."),
           room=("kitchen", "bedroom", "basement", "attic", "garage", "hallway"),
           creature=("spider", "snake", "rat", "bat", "wasp", "scorpion")),
        _s(("Someone is following me on the way {where}.", "I think somebody is trying to open my door.",
            "The storm is getting worse and the lights just went out {where}.", "A big dog is chasing me on the way {where}!"),
           ("That is terrifying! Please call for help right away.", "Oh no, that is so scary. Stay somewhere safe.",
            "I am afraid for you. Please lock the door and call someone."),
           where=("home", "to school", "to work", "to the store", "to the station")),
        _s(("I am home alone and I heard a {sound} {spot}.", "There was a {sound} {spot} and now it is quiet.",
            "I just heard a {sound} {spot} and I am shaking."),
           ("Oh no, that sounds really scary! Please stay safe.", "That is frightening! Lock the door and call for help.",
            "I am scared for you. Stay where you are and call someone."),
           sound=("scream", "loud bang", "knock", "crash", "growl", "strange voice"),
           spot=("outside my window", "in the basement", "upstairs", "behind the door", "in the garden")),
        _s(("There is a fire in the {building} next door!", "Smoke is coming out of the {building} across the street!"),
           ("Oh no, that is terrifying! Get out and call the fire department!", "That is so scary! Please get to safety now."),
           building=("house", "shop", "school", "office", "barn", "restaurant", "garage")),
    ),
    "disgusted": (
        _s(("I found a {gross} in my {food}.", "There was a {gross} in my {food} {when}.",
            "The waiter brought me {food} with a {gross} in it."),
           ("Yuck, that is disgusting! I would throw the {food} away.", "Eww, that is so gross.",
            "That is nasty! Please do not eat it."),
           gross=("hair", "worm", "bug", "fly", "cockroach", "slug"),
           food=("soup", "salad", "sandwich", "rice", "cereal", "pasta", "burger", "pie"), when=_WHEN_PAST),
        _s(("The {place} smells like {smell}.", "My {relative} left {mess} on the {surface} again.",
            "Someone spat on the {surface} of the {place}."),
           ("Eww, that is revolting!", "Yuck, how gross. That is really disgusting.",
            "That is so nasty, I feel sick just hearing it."),
           place=("bus", "kitchen", "fridge", "bathroom", "classroom"), smell=("rotten eggs", "old socks", "sour milk", "garbage"),
           relative=_RELATIVES, mess=("dirty socks", "moldy bread", "old food", "wet towels"),
           surface=("floor", "table", "seat", "carpet")),
    ),
}


def _fill(template: str, values: dict[str, str]) -> str:
    values = {**values, **{k.capitalize(): v[:1].upper() + v[1:] for k, v in values.items()}}
    text = template.format(**values)
    text = re.sub(r"\s+([!.?,])", r"\1", " ".join(text.split()))
    return text[0].upper() + text[1:]


def _sample_values(sc: _Scenario, rng: random.Random) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, options in sc.slots.items():
        choice = rng.choice(options)
        if isinstance(choice, dict):
            values.update(choice)
        else:
            values[name] = choice
    return values


def emotional_remark(rng: random.Random, emotion: str) -> Exchange:
    """A remark whose content carries `emotion`, and a reply in the matching emotion."""
    if emotion == "neutral":
        return plain_question(rng, spoken=True)
    if emotion not in SCENARIOS:
        raise ValueError(f"unknown emotion {emotion!r}; expected one of {', '.join(EMOTIONS)}")
    sc = rng.choice(SCENARIOS[emotion])
    values = _sample_values(sc, rng)
    user = _fill(rng.choice(sc.users), values)
    reply = _fill(rng.choice(sc.replies), values)
    pitch = EMOTION_PITCH[emotion]
    return Exchange("remark", user, emotion, pitch, reply, emotion, pitch)


# ---------------------------------------------------------------------------------------------
# Plain questions: arithmetic and simple facts (neutral).
# ---------------------------------------------------------------------------------------------
_ARITH = {
    "plus": ("What is {a} plus {b}?", "How much is {a} plus {b}?", "What do you get when you add {a} and {b}?",
             "Add {a} and {b}.", "Can you tell me what {a} plus {b} is?", "{A} plus {b} is how much?"),
    "minus": ("What is {a} minus {b}?", "How much is {a} minus {b}?", "What do you get when you take {b} from {a}?",
              "Take {b} away from {a}.", "Can you tell me what {a} minus {b} is?"),
    "times": ("What is {a} times {b}?", "How much is {a} times {b}?", "Multiply {a} by {b}."),
}
_FACTS: tuple[tuple[tuple[str, ...], dict[str, tuple[tuple[str, str, str], ...]]], ...] = (
    # (question templates, {slot: ((filler, short answer, sentence), ...)})
    (("What color is {x}?", "Which color is {x}?", "What is the color of {x}?", "Tell me the color of {x}."),
     {"x": (("a banana", "yellow", "A banana is yellow."), ("grass", "green", "Grass is green."),
            ("the sky", "blue", "The sky is blue."), ("snow", "white", "Snow is white."),
            ("a tomato", "red", "A tomato is red."), ("coal", "black", "Coal is black."),
            ("a lemon", "yellow", "A lemon is yellow."), ("a leaf", "green", "A leaf is green."),
            ("a strawberry", "red", "A strawberry is red."), ("an orange", "orange", "An orange is orange."),
            ("a plum", "purple", "A plum is purple."), ("the sea", "blue", "The sea is blue."))}),
    (("How many sides does a {x} have?", "How many corners does a {x} have?", "Tell me how many sides a {x} has."),
     {"x": (("triangle", "3", "A triangle has three sides."), ("square", "4", "A square has four sides."))}),
    (("What color do you get when you mix {x}?", "What do you get if you mix {x}?", "Which color comes from mixing {x}?"),
     {"x": (("red and yellow", "orange", "Red and yellow make orange."),
            ("blue and yellow", "green", "Blue and yellow make green."),
            ("red and blue", "purple", "Red and blue make purple."),
            ("yellow and red", "orange", "Yellow and red make orange."),
            ("yellow and blue", "green", "Yellow and blue make green."),
            ("blue and red", "purple", "Blue and red make purple."))}),
    (("What day comes after {x}?", "Which day is after {x}?", "What is the day after {x}?"),
     {"x": tuple((d, n.lower(), f"{n} comes after {d}.") for d, n in zip(
         ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
         ("Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Monday")))}),
    (("How many {x} are there in a week?", "How many {x} does a week have?"),
     {"x": (("days", "7", "There are seven days in a week."),)}),
    (("How many legs does a {x} have?", "Tell me how many legs a {x} has."),
     {"x": (("dog", "4", "A dog has four legs."), ("bird", "2", "A bird has two legs."),
            ("cat", "4", "A cat has four legs."), ("spider", "8", "A spider has eight legs."),
            ("horse", "4", "A horse has four legs."), ("duck", "2", "A duck has two legs."))}),
    (("Which shape has no corners?", "What shape is round?", "Which shape is round and has no corners?"),
     {"": (("", "circle", "A circle is round and has no corners."),)}),
    (("What number comes after {x}?", "Which number is after {x}?", "What comes after the number {x}?"),
     {"x": tuple((number_word(i), str(i + 1), f"{number_word(i + 1).capitalize()} comes after {number_word(i)}.")
                 for i in range(9))}),
)


def _num(n: int, digits: bool) -> str:
    return str(n) if digits else number_word(n)


def arithmetic(rng: random.Random, spoken: bool = False) -> Exchange:
    """A small sum, difference or product (results 0..9). Spoken questions use number words."""
    op = rng.choice(("plus", "plus", "minus", "minus", "times"))
    if op == "plus":
        a = rng.randint(0, 9)
        b = rng.randint(0, 9 - a)
        r = a + b
    elif op == "minus":
        a = rng.randint(0, 9)
        b = rng.randint(0, a)
        r = a - b
    else:
        a = rng.randint(0, 4)
        b = rng.randint(0, 9 // max(a, 1))
        r = a * b
    digits = not spoken and rng.random() < 0.5
    sa, sb, sr = _num(a, digits), _num(b, digits), _num(r, digits)
    q = rng.choice(_ARITH[op]).format(a=sa, b=sb, A=sa.capitalize())
    reply = f"{sa.capitalize()} {op} {sb} is {sr}."
    return Exchange("arithmetic", q, "neutral", "normal", reply, "neutral", "normal", str(r))


def fact(rng: random.Random) -> Exchange:
    """A simple fact about colours, shapes, numbers, days or animals."""
    templates, slots = rng.choice(_FACTS)
    (name, options), = slots.items()
    filler, short, sentence = rng.choice(options)
    q = rng.choice(templates).format(**({name: filler} if name else {}))
    return Exchange("fact", q, "neutral", "normal", sentence, "neutral", "normal", short)


def plain_question(rng: random.Random, spoken: bool = False) -> Exchange:
    """A neutral question: arithmetic or a fact."""
    return arithmetic(rng, spoken) if rng.random() < 0.5 else fact(rng)


def sample_exchange(
    rng: random.Random, split: str = "train", emotion: str | None = None, max_tries: int = 2000
) -> Exchange:
    """A spoken-dialogue exchange of `emotion` (uniform over all seven if None) whose user sentence
    belongs to `split`."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    for _ in range(max_tries):
        e = emotion if emotion is not None else rng.choice(EMOTIONS)
        ex = emotional_remark(rng, e)
        if sentence_split(ex.user_text) == split:
            return ex
    raise RuntimeError(f"no {emotion or 'any'} sentence of split {split!r} in {max_tries} tries")


def sample_text_qa(rng: random.Random, split: str = "train", max_tries: int = 2000) -> Exchange:
    """A typed exchange: arithmetic, a fact, or an emotional remark (text reply), of `split`."""
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    for _ in range(max_tries):
        u = rng.random()
        if u < 0.4:
            ex = arithmetic(rng)
        elif u < 0.7:
            ex = fact(rng)
        else:
            ex = emotional_remark(rng, rng.choice([e for e in EMOTIONS if e != "neutral"]))
        if sentence_split(ex.user_text) == split:
            return ex
    raise RuntimeError(f"no typed question of split {split!r} in {max_tries} tries")
