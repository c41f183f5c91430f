"""Seeded multiple-choice questions with one unambiguous answer, and short paragraphs of plain facts.

Everything here is written for lmforge (templates and small hand-written word lists), deterministic for
a seed, and fast. It feeds the local lm-eval tasks of `lmforge.evaluate.harness` (`lmforge_mc`,
`lmforge_text`), so an evaluation runs with no dataset hub.

`generate(n, seed)`: `n` distinct items {"query", "choices", "answer", "kind"} of eight kinds, each with
four choices and the gold one at a seeded position (`answer` is its index):
- "addition" / "subtraction": "What is 7 plus 5?" with nearby wrong sums (12 vs 11, 13, 14);
- "largest": "Which number is the largest?" over four different numbers;
- "next_day" / "next_month": "What day comes after Monday?" / "Which month comes after March?";
- "opposite": "What is the opposite of hot?" (a small list of antonym pairs; the wrong choices are
  words from other pairs that are neither the word nor its opposite);
- "plural": "What is the plural of child?" (regular and irregular nouns, with misspelt plurals);
- "capital": "What is the capital form of the letter g?" (upper-case letters).
The query reads "Question: ...\\nAnswer:" and a choice is scored as " " + choice after it (lm-eval's
`target_delimiter`).
- It can show: that the harness adapter and lmforge's own multiple-choice scorer agree, that a small
  instruct model is above chance (25%), and the effect of few-shot prompting.
- It cannot show: knowledge or reasoning ability; the kinds are few and the numbers small.

`paragraphs(n, seed)`: `n` paragraphs of five to eight true statements in the same domains ("Seven plus
five is twelve. The month after March is April. ..."), for perplexity on text of our own.
"""

from __future__ import annotations

import random
from collections.abc import Callable

KINDS = ("addition", "subtraction", "largest", "next_day", "next_month", "opposite", "plural", "capital")
NUM_CHOICES = 4

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")
OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"), ("open", "closed"), ("wet", "dry"),
    ("light", "dark"), ("happy", "sad"), ("early", "late"), ("full", "empty"), ("hard", "soft"),
    ("old", "young"), ("rich", "poor"), ("strong", "weak"), ("loud", "quiet"), ("thick", "thin"),
    ("clean", "dirty"), ("heavy", "light"), ("inside", "outside"), ("win", "lose"), ("push", "pull"),
    ("buy", "sell"), ("day", "night"), ("top", "bottom"), ("left", "right"), ("first", "last"),
    ("true", "false"), ("begin", "end"), ("near", "far"), ("high", "low"),
)
# word -> (plural, three wrong spellings)
PLURALS = (
    ("child", "children", ("childs", "childes", "childrens")),
    ("mouse", "mice", ("mouses", "mices", "meese")),
    ("foot", "feet", ("foots", "feets", "footes")),
    ("tooth", "teeth", ("tooths", "teeths", "toothes")),
    ("man", "men", ("mans", "mens", "manes")),
    ("woman", "women", ("womans", "womens", "womanes")),
    ("goose", "geese", ("gooses", "geeses", "goosen")),
    ("box", "boxes", ("boxs", "boxen", "boxies")),
    ("baby", "babies", ("babys", "babyes", "babis")),
    ("city", "cities", ("citys", "cityes", "citis")),
    ("bus", "buses", ("buss", "busies", "busen")),
    ("knife", "knives", ("knifes", "knifs", "knivs")),
    ("leaf", "leaves", ("leafs", "leafes", "leavs")),
    ("dog", "dogs", ("doges", "dogies", "dogen")),
    ("cat", "cats", ("cates", "caties", "catten")),
    ("book", "books", ("bookes", "bookies", "booken")),
    ("dish", "dishes", ("dishs", "dishies", "dishen")),
    ("church", "churches", ("churchs", "churchies", "churchen")),
    ("lady", "ladies", ("ladys", "ladyes", "ladis")),
    ("wolf", "wolves", ("wolfs", "wolfes", "wolvs")),
    ("tree", "trees", ("treees", "treies", "treen")),
    ("glass", "glasses", ("glasss", "glassies", "glassen")),
)
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
                "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen",
                "twenty")


def _item(kind: str, question: str, answer: str, wrong: list[str], rng: random.Random) -> dict:
    """An item with the answer at a seeded position among the shuffled choices."""
    assert len(set(wrong)) == NUM_CHOICES - 1 and answer not in wrong, (question, wrong)
    choices = [answer, *wrong]
    rng.shuffle(choices)
    return {"query": f"Question: {question}\nAnswer:", "choices": choices, "answer": choices.index(answer),
            "kind": kind}


def _near(value: int, rng: random.Random, low: int = 0) -> list[str]:
    """Three different wrong numbers within 3 of `value` (and >= `low`)."""
    options = [v for v in range(value - 3, value + 4) if v != value and v >= low]
    return [str(v) for v in rng.sample(options, NUM_CHOICES - 1)]


def _addition(rng: random.Random) -> dict:
    a, b = rng.randint(1, 20), rng.randint(1, 20)
    return _item("addition", f"What is {a} plus {b}?", str(a + b), _near(a + b, rng), rng)


def _subtraction(rng: random.Random) -> dict:
    a = rng.randint(2, 30)
    b = rng.randint(1, a - 1)
    return _item("subtraction", f"What is {a} minus {b}?", str(a - b), _near(a - b, rng), rng)


def _largest(rng: random.Random) -> dict:
    numbers = rng.sample(range(1, 100), NUM_CHOICES)
    best = max(numbers)
    return _item("largest", "Which number is the largest?", str(best), [str(n) for n in numbers if n != best], rng)


def _next_in(kind: str, names: tuple[str, ...], question: str, rng: random.Random) -> dict:
    i = rng.randrange(len(names))
    answer = names[(i + 1) % len(names)]
    others = [n for n in names if n not in (names[i], answer)]
    return _item(kind, question.format(names[i]), answer, rng.sample(others, NUM_CHOICES - 1), rng)


def _next_day(rng: random.Random) -> dict:
    return _next_in("next_day", DAYS, "What day comes after {}?", rng)


def _next_month(rng: random.Random) -> dict:
    return _next_in("next_month", MONTHS, "Which month comes after {}?", rng)


def _opposite(rng: random.Random) -> dict:
    pair = rng.choice(OPPOSITES)
    word, answer = pair if rng.random() < 0.5 else pair[::-1]
    # wrong choices: words of other pairs that do not share a word with this one ("light" is in two pairs)
    unrelated = sorted({w for p in OPPOSITES if not set(p) & {word, answer} for w in p})
    return _item("opposite", f"What is the opposite of {word}?", answer, rng.sample(unrelated, NUM_CHOICES - 1),
                 rng)


def _plural(rng: random.Random) -> dict:
    word, answer, wrong = rng.choice(PLURALS)
    return _item("plural", f"What is the plural of {word}?", answer, list(wrong), rng)


def _capital(rng: random.Random) -> dict:
    letters = "abcdefghijklmnopqrstuvwxyz"
    letter = rng.choice(letters)
    others = [c.upper() for c in letters if c != letter]
    return _item("capital", f"What is the capital form of the letter {letter}?", letter.upper(),
                 rng.sample(others, NUM_CHOICES - 1), rng)


_MAKERS: dict[str, Callable[[random.Random], dict]] = {
    "addition": _addition, "subtraction": _subtraction, "largest": _largest, "next_day": _next_day,
    "next_month": _next_month, "opposite": _opposite, "plural": _plural, "capital": _capital,
}


def generate(n: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> list[dict]:
    """`n` distinct items {"query", "choices", "answer", "kind"} (see the module docstring), kinds in turn.

    No query repeats ("largest" items, which share their query, differ in their numbers); a kind whose
    questions run out (there are 7 next-day questions) leaves the rotation, and asking for more items
    than all kinds hold raises ValueError.
    """
    unknown = [k for k in kinds if k not in _MAKERS]
    if unknown or not kinds:
        raise ValueError(f"kinds={list(kinds)}: unknown {unknown} (choose from {', '.join(KINDS)})")
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    rng = random.Random(seed)
    items: list[dict] = []
    seen: set[str] = set()
    active = list(kinds)
    misses = dict.fromkeys(kinds, 0)
    turn = 0
    while len(items) < n:
        if not active:
            raise ValueError(f"n={n}: the kinds {list(kinds)} hold only {len(items)} distinct items")
        kind = active[turn % len(active)]
        item = _MAKERS[kind](rng)
        key = item["query"] + ("\x00" + " ".join(sorted(item["choices"])) if kind == "largest" else "")
        if key in seen:
            misses[kind] += 1
            if misses[kind] >= 200:  # this kind has (nearly) no new items left
                active.remove(kind)
            continue
        seen.add(key)
        items.append(item)
        turn += 1
    return items


def _number(n: int) -> str:
    return NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)


def _fact(rng: random.Random) -> str:
    """One true statement."""
    kind = rng.choice(("sum", "difference", "day", "month", "opposite", "plural", "order"))
    if kind == "sum":
        a, b = rng.randint(1, 10), rng.randint(1, 10)
        return f"{_number(a).capitalize()} plus {_number(b)} is {_number(a + b)}."
    if kind == "difference":
        a = rng.randint(2, 20)
        b = rng.randint(1, a - 1)
        return f"{_number(a).capitalize()} minus {_number(b)} leaves {_number(a - b)}."
    if kind == "day":
        i = rng.randrange(len(DAYS))
        return f"After {DAYS[i]} comes {DAYS[(i + 1) % 7]}."
    if kind == "month":
        i = rng.randrange(len(MONTHS))
        return f"The month after {MONTHS[i]} is {MONTHS[(i + 1) % 12]}."
    if kind == "opposite":
        word, other = rng.choice(OPPOSITES)
        return f"The opposite of {word} is {other}."
    if kind == "plural":
        word, plural, _ = rng.choice(PLURALS)
        return f"One {word}, two {plural}."
    a, b = sorted(rng.sample(range(1, 100), 2))
    return f"The number {b} is larger than {a}."


def paragraphs(n: int, seed: int = 0) -> list[str]:
    """`n` paragraphs of five to eight true statements each (see the module docstring)."""
    rng = random.Random(seed)
    return [" ".join(_fact(rng) for _ in range(rng.randint(5, 8))) for _ in range(n)]


__all__ = ["DAYS", "KINDS", "MONTHS", "NUM_CHOICES", "OPPOSITES", "PLURALS", "generate", "paragraphs"]
