"""Invented SQuAD-style rows for extractive QA: `squad_like(n, seed)`.

Each context is made of short biographies of invented people (names, towns, years, jobs and instruments
from the word lists below, combined at random; no third-party text). Each person's paragraph says where
and when they were born, their trade, the town they moved to and what they played; questions ask for
one of those facts of one person, and the answer is the span of that person's paragraph that states it
(`answer_start`: its character offset). About a third of the contexts hold six or seven people (well
over 200 words, so a 128-token window cannot hold them and questions about later people need windows);
the rest hold one.

What it can show: that windowing, the answer-position labels, n-best post-processing and the SQuAD
metrics work end to end, and that a model learns to pick a span by the question's cue words (born /
year / work / moved / play) and the person's name. What it cannot show: reading comprehension of
natural text. The sentences follow five fixed patterns, so a model that matches patterns scores near 100;
an answer is never paraphrased, and every question has exactly one gold answer.

Deterministic: the same (n, seed) gives the same rows on any machine (Python's `random.Random`).
"""

from __future__ import annotations

import random
from typing import Any

GIVEN = ["Alder", "Brisa", "Corvin", "Dalia", "Edrin", "Fenna", "Galen", "Hesper", "Ilsa", "Jorin", "Kestra",
         "Lunet", "Marek", "Nerys", "Oswin", "Perrin", "Quilla", "Rowan", "Sabeth", "Tavish", "Ulla", "Vardan",
         "Wenna", "Yorick", "Zinnia", "Anselm", "Bettany", "Cassian", "Delphine", "Emrys"]
FAMILY = ["Ashgrove", "Brackwater", "Coldmere", "Dunhollow", "Elmsworth", "Fallowby", "Greywick", "Hartsell",
          "Ivorly", "Juniperton", "Kettleby", "Larkspur", "Marlowe", "Nettlefield", "Orchardson", "Pennick",
          "Quenby", "Redfern", "Stowbridge", "Thistlewood", "Umberley", "Valecroft", "Wrenfield", "Yarrowby"]
TOWNS = ["Amberfall", "Brightwater", "Cinderford", "Dovermouth", "Eastmarch", "Frostholm", "Glimmerdale",
         "Highcombe", "Ironbridge", "Jadeport", "Kingsreach", "Lowhaven", "Mistvale", "Northwick", "Oakheart",
         "Pinecrest", "Queensford", "Ravenmoor", "Silverlake", "Thornbury", "Underhill", "Westerling"]
JOBS = ["glassblower", "clockmaker", "cartographer", "beekeeper", "bookbinder", "lighthouse keeper", "potter",
        "shipwright", "weaver", "stonemason", "apothecary", "astronomer", "printer", "tailor", "surveyor",
        "violin maker", "ferry pilot", "baker", "engraver", "archivist"]
INSTRUMENTS = ["cello", "harp", "flute", "accordion", "oboe", "fiddle", "dulcimer", "trumpet", "lute", "bassoon"]
NUMBERS = ["two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]

# question cue -> (question pattern, the fact asked for)
QUESTIONS = {
    "born": ("Where was {name} born?", "town"),
    "year": ("In which year was {name} born?", "year"),
    "job": ("What did {name} work as?", "job"),
    "moved": ("Which town did {name} move to?", "moved_to"),
    "plays": ("What instrument did {name} play?", "instrument"),
}


def squad_like(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` SQuAD v1.1-style rows: {"id", "question", "context", "answers": {"text": [t], "answer_start": [i]}}."""
    rng = random.Random(seed)
    rows: list[dict[str, Any]] = []
    while len(rows) < n:
        people = _people(rng, rng.randint(6, 7) if rng.random() < 1 / 3 else 1)
        context, facts = _context(rng, people)
        if len(people) == 1:  # three questions about the one person
            asked = [(people[0], cue) for cue in rng.sample(sorted(QUESTIONS), 3)]
        else:  # one question each about four of the people, wherever they stand in the context
            asked = [(person, rng.choice(sorted(QUESTIONS))) for person in rng.sample(people, 4)]
        for person, cue in asked:
            if len(rows) == n:
                break
            pattern, fact = QUESTIONS[cue]
            text, start = facts[person["name"]][fact]
            rows.append({"id": f"synthetic-{seed}-{len(rows)}", "question": pattern.format(name=person["name"]),
                         "context": context, "answers": {"text": [text], "answer_start": [start]}})
    return rows


def _people(rng: random.Random, count: int) -> list[dict[str, str]]:
    """`count` people with distinct given names (the text calls them by it, so every question has one answer)
    and random facts."""
    people = []
    for name in (f"{given} {rng.choice(FAMILY)}" for given in rng.sample(GIVEN, count)):
        town, moved_to = rng.sample(TOWNS, 2)
        people.append({"name": name, "town": town, "year": str(rng.randint(1820, 1995)), "job": rng.choice(JOBS),
                       "moved_to": moved_to, "years": rng.choice(NUMBERS), "instrument": rng.choice(INSTRUMENTS),
                       "she": rng.choice(["she", "he", "they"])})
    return people


def _context(rng: random.Random, people: list[dict[str, str]]) -> tuple[str, dict[str, dict[str, tuple[str, int]]]]:
    """The context text and, per person, each fact's (text, character offset) in it."""
    pieces: list[str] = []
    facts: dict[str, dict[str, tuple[str, int]]] = {}
    length = 0

    def say(text: str, fact: str | None = None, person: dict | None = None) -> None:
        nonlocal length
        if fact is not None:
            facts.setdefault(person["name"], {})[fact] = (text, length)
        pieces.append(text)
        length += len(text)

    for i, p in enumerate(people):
        first = p["name"].split()[0]
        if i:
            say(" ")
        say(f"{p['name']} was born in ")
        say(p["town"], "town", p)
        say(" in ")
        say(p["year"], "year", p)
        say(f". After leaving school, {p['she']} trained as {'an' if p['job'][0] in 'aeiou' else 'a'} ")
        say(p["job"], "job", p)
        say(rng.choice([" and soon became known for careful work", " and kept the trade for life",
                        " under an old master of the craft"]))
        say(f". Later {first} moved to ")
        say(p["moved_to"], "moved_to", p)
        say(f", where {p['she']} lived for {p['years']} years. In the evenings {first} played the ")
        say(p["instrument"], "instrument", p)
        say(rng.choice([" for friends.", " at the town hall.", " by the harbour.", " badly but happily."]))
    return "".join(pieces), facts
