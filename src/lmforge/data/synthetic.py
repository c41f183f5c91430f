"""Seeded generators for labelled sets no registry packages: English NER and NLI sentence pairs.

Everything here is written for lmforge (templates and small word lists of invented or common names;
no third-party text), deterministic for a seed, and fast.

`english_ner(n, seed)`: template sentences with people (PER: a first name, or first + last name),
places (LOC: towns, regions, multi-word names like "Port Ellis") and organisations (ORG: multi-word
invented names like "Harbor Freight Union"), tagged BIO, in CoNLL-2003's word-and-tag layout
({"tokens", "tags"}); about one sentence in eight has no entity, and capitalised non-entities (month
and day names, "The") appear so capitals alone do not give the answer away.
- It can show: the pipeline end to end (files, sub-token alignment, seqeval scoring), that a model
  learns (entity F1 rises well above chance in a few hundred steps), and, with `held_out=True`,
  whether a model tags names it never saw from their context (each word list keeps its last third
  for held-out sentences).
- It cannot show real-world NER quality: there are a few dozen templates, so a model can memorise
  them; scores here say nothing about CoNLL-2003 numbers.

`nli_pairs(n, seed)`: premise / hypothesis pairs {"premise", "hypothesis", "label", "rule"} about a
person doing something somewhere, with the label made by a rule: entailment (the hypothesis keeps a
subset of the premise: drops the adjective, the place, or names the subject "someone"), contradiction
(negation: "is not", "Nobody is"; or the same person doing it in another place), neutral (an added,
unverifiable detail; or an unrelated person and action). Labels are balanced exactly.
- It can show: sentence-pair encoding (segment ids, truncation), that a classifier over pairs learns,
  and per-rule accuracy (the "rule" column).
- It cannot show: natural-language inference; the rules are lexical and a model can solve them by
  spotting "not", "Nobody" or a changed word.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from lmforge.data.labelled import FRACTIONS, split_rows

# ---------------------------------------------------------------------------------- English NER

FIRST_NAMES = (
    "Anna", "Tom", "Maria", "David", "Lena", "Omar", "Grace", "Peter", "Sofia", "James", "Nina", "Lucas",
    "Hana", "Victor", "Elena", "Samuel", "Iris", "Felix", "Clara", "Jonas", "Mira", "Oscar", "Rosa", "Adam",
)
LAST_NAMES = (
    "Berg", "Miller", "Okafor", "Lindqvist", "Moreau", "Tanaka", "Novak", "Haddad", "Fischer", "Quinn",
    "Rossi", "Kowalski", "Brandt", "Ortega", "Petrov", "Walsh", "Keller", "Sato",
)
PLACES = (
    "Carden", "Marlow", "Port Ellis", "Westbrook", "New Halden", "Rivermouth", "Ostland", "Kestrel Bay",
    "Lower Ashby", "Dunmore", "Silverton", "North Vale", "Elmsworth", "Brightwater", "San Corvo",
    "Greyhaven", "Tallinford", "Upper Wexley",
)
ORGANISATIONS = (
    "Northwind Bank", "Harbor Freight Union", "Blue Ridge Institute", "Carden City Council",
    "Meridian Labs", "Silver Oak Foundation", "Eastgate Rail", "Pioneer Mutual", "Lumen Health",
    "Redstone Mining Company", "Atlas Data Group", "Open Field Trust", "Granite Insurance",
    "Vale Energy", "Copperleaf Press",
)

# Slots: {PER}, {LOC}, {ORG}; words are separated by spaces (punctuation is a word of its own).
NER_TEMPLATES = (
    "{PER} moved to {LOC} last year .",
    "{PER} works for {ORG} in {LOC} .",
    "The {ORG} opened a new office in {LOC} on Monday .",
    "{PER} met {PER} at a conference in {LOC} .",
    "According to {PER} , {ORG} will hire more staff in March .",
    "{LOC} is known for its long winters .",
    "Yesterday {PER} flew from {LOC} to {LOC} .",
    "{ORG} reported higher profits this quarter .",
    "A spokesperson for {ORG} said the talks in {LOC} went well .",
    "{PER} , who lives in {LOC} , joined {ORG} in June .",
    "Shares of {ORG} fell sharply after the announcement .",
    "The mayor of {LOC} thanked {PER} for her help .",
    "{PER} said on Friday that {ORG} had signed the deal .",
    "Heavy rain closed several roads between {LOC} and {LOC} .",
    "{ORG} and {ORG} agreed to merge next year .",
    "In {LOC} , {PER} runs a small bakery .",
    "{PER} was elected chair of {ORG} .",
    "Thousands of visitors came to {LOC} for the festival .",
    "{PER} told reporters that {LOC} needs a new hospital .",
    "The report by {ORG} was published in September .",
    "Officials in {LOC} met with {ORG} on Tuesday .",
    "{PER} and {PER} founded {ORG} in {LOC} .",
)
NO_ENTITY_TEMPLATES = (
    "The weather was cold and wet all week .",
    "Prices rose slightly in the second half of the year .",
    "She said the meeting would start at noon on Thursday .",
    "Nobody expected the game to end so early .",
    "The new bridge will open next spring .",
    "Most shops were closed for the holiday in December .",
    "The committee will decide in April .",
)
NO_ENTITY_SHARE = 1 / 8


def _held_out_part(words: Sequence[str], held_out: bool) -> Sequence[str]:
    """The first two thirds of a list (seen in training), or the last third (held out)."""
    cut = len(words) * 2 // 3
    return words[cut:] if held_out else words[:cut]


def _entity(kind: str, rng: random.Random, held_out: bool) -> list[str]:
    if kind == "PER":
        first = rng.choice(_held_out_part(FIRST_NAMES, held_out))
        if rng.random() < 0.3:
            return [first]
        return [first, rng.choice(_held_out_part(LAST_NAMES, held_out))]
    words = PLACES if kind == "LOC" else ORGANISATIONS
    return rng.choice(_held_out_part(words, held_out)).split()


def english_ner(n: int, seed: int = 0, held_out: bool = False) -> list[dict]:
    """`n` template sentences {"tokens", "tags"} tagged BIO with PER / LOC / ORG; `held_out` draws the names
    from the last third of each word list, which sentences generated without it never use."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        if rng.random() < NO_ENTITY_SHARE:
            words = rng.choice(NO_ENTITY_TEMPLATES).split()
            rows.append({"tokens": words, "tags": ["O"] * len(words)})
            continue
        tokens, tags = [], []
        for word in rng.choice(NER_TEMPLATES).split():
            kind = word[1:-1] if word in ("{PER}", "{LOC}", "{ORG}") else None
            if kind is None:
                tokens.append(word)
                tags.append("O")
                continue
            entity = _entity(kind, rng, held_out)
            tokens += entity
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(entity) - 1)
        rows.append({"tokens": tokens, "tags": tags})
    return rows


def english_ner_splits(n: int, seed: int = 0, fractions: Sequence[float] = FRACTIONS,
                       held_out_test: bool = False) -> dict[str, list[dict]]:
    """`english_ner(n, seed)` split train / validation / test; with `held_out_test`, the test split is
    generated from held-out names instead (its size kept)."""
    splits = split_rows(english_ner(n, seed), seed, fractions)
    if held_out_test:
        splits["test"] = english_ner(len(splits["test"]), seed + 1, held_out=True)
    return splits


# ------------------------------------------------------------------------------------------- NLI

NLI_LABELS = ("entailment", "neutral", "contradiction")
_NOUNS = ("man", "woman", "boy", "girl", "teacher", "doctor", "farmer", "student", "chef", "pilot")
_ADJECTIVES = ("tall", "young", "old", "tired", "cheerful", "quiet", "busy", "small")
_ACTIONS = (
    ("reading", "a book"), ("eating", "an apple"), ("painting", "a fence"), ("playing", "the guitar"),
    ("washing", "a car"), ("writing", "a letter"), ("cooking", "dinner"), ("carrying", "a box"),
    ("fixing", "a bicycle"), ("watching", "a film"),
)
_PLACES = ("in the park", "at home", "in the kitchen", "on the beach", "in a small cafe", "near the river",
           "in the garden", "at the station")
_DETAILS = ("for a friend", "because it is raining", "for the first time", "after work", "to win a prize",
            "while waiting for a bus")


def _sentence(*parts: str) -> str:
    words = " ".join(p for p in parts if p).split()
    # "a" before a vowel sound is "an" (the word lists have no exceptions like "hour" or "user")
    words = ["an" if w == "a" and i + 1 < len(words) and words[i + 1][0] in "aeiou" else w
             for i, w in enumerate(words)]
    text = " ".join(words) + "."
    return text[0].upper() + text[1:]


def _other(options: Sequence[str], avoid: str, rng: random.Random) -> str:
    return rng.choice([o for o in options if o != avoid])


def nli_pairs(n: int, seed: int = 0) -> list[dict]:
    """`n` premise / hypothesis pairs {"premise", "hypothesis", "label", "rule"}, labels balanced exactly."""
    rng = random.Random(seed)
    labels = [NLI_LABELS[i % 3] for i in range(n)]
    rng.shuffle(labels)
    rows = []
    for label in labels:
        noun, adjective, (verb, thing), place = (rng.choice(_NOUNS), rng.choice(_ADJECTIVES),
                                                 rng.choice(_ACTIONS), rng.choice(_PLACES))
        premise = _sentence("a", adjective, noun, "is", verb, thing, place)
        rule = rng.choice({"entailment": ("drop-adjective-and-place", "someone", "drop-action"),
                           "contradiction": ("negation", "nobody", "other-place"),
                           "neutral": ("added-detail", "unrelated")}[label])
        if rule == "drop-adjective-and-place":
            hypothesis = _sentence("a", noun, "is", verb, thing)
        elif rule == "someone":
            hypothesis = _sentence("someone is", verb, thing, place)
        elif rule == "drop-action":
            hypothesis = _sentence("a", adjective, noun, "is", place)
        elif rule == "negation":
            hypothesis = _sentence("the", adjective, noun, "is not", verb, thing)
        elif rule == "nobody":
            hypothesis = _sentence("nobody is", verb, thing, place)
        elif rule == "other-place":
            hypothesis = _sentence("the", adjective, noun, "is", verb, thing, _other(_PLACES, place, rng))
        elif rule == "added-detail":
            hypothesis = _sentence("the", adjective, noun, "is", verb, thing, place, rng.choice(_DETAILS))
        else:  # unrelated: another person doing another thing
            other_verb, other_thing = rng.choice([a for a in _ACTIONS if a[0] != verb])
            hypothesis = _sentence("a", _other(_ADJECTIVES, adjective, rng), _other(_NOUNS, noun, rng), "is",
                                   other_verb, other_thing, rng.choice(_PLACES))
        rows.append({"premise": premise, "hypothesis": hypothesis, "label": label, "rule": rule})
    return rows
