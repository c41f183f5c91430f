"""Invented instruction prompts with one exact answer in a fixed format: `fixed_format_tasks(n, seed)`.

Six kinds, in equal shares (shuffled): count the words of a sentence and reply `COUNT: <n>`; sort letters
alphabetically, space-separated; answer `yes` or `no` to "is A greater than B?"; write a date in ISO format
(`2021-03-03`); spell a word backwards; add two numbers and reply `SUM=<n>`. The sentences and words come
from the word list below (no third-party text); each answer is computed from the prompt's own inputs.

What it can show: whether chat SFT teaches a small instruction model (SmolLM2-135M-Instruct) a required
answer format. Before fine-tuning it answers in prose or in the wrong form: on 36 prompts (seed 7, greedy,
20 new tokens, lmforge's loading of the Q4_1 GGUF) its exact match was 0 and ROUGE-L 0.26 ("The letters
are: J, T, C, ...", "3 April 1958", "Add 47 and 89."); the format is simple to learn, so exact match on
held-back prompts should rise within a short fine-tuning run (not measured here). What it cannot show:
general instruction following or reasoning; counting and reversing are hard for a BPE model, so those
kinds can stay imperfect and get only partial ROUGE credit.

Deterministic: the same (n, seed) gives the same rows on any machine (Python's `random.Random`).
"""

from __future__ import annotations

import random
import string
from typing import Any

WORDS = ["river", "lamp", "garden", "quiet", "yellow", "window", "bread", "seven", "mountain", "paper", "slow",
         "bright", "orange", "table", "winter", "little", "music", "stone", "happy", "cloud", "market", "silver",
         "green", "forest", "candle", "morning", "rabbit", "purple", "ocean", "pencil", "tiny", "letter", "bridge",
         "warm", "horse", "kitchen", "blue", "planet", "rocket", "honey", "violet", "copper", "meadow", "shadow"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
KINDS = ("word_count", "sort_letters", "greater", "iso_date", "reverse_word", "sum")


def fixed_format_tasks(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` rows {"prompt", "response", "kind"}: an instruction and its one exact answer."""
    rng = random.Random(seed)
    rows = [dict(zip(("prompt", "response"), MAKERS[KINDS[i % len(KINDS)]](rng)), kind=KINDS[i % len(KINDS)])
            for i in range(n)]
    rng.shuffle(rows)
    return rows


def _word_count(rng: random.Random) -> tuple[str, str]:
    words = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
    sentence = " ".join(words).capitalize() + "."
    return (f"How many words are in the sentence below? Reply only in the form 'COUNT: <n>'.\n{sentence}",
            f"COUNT: {len(words)}")


def _sort_letters(rng: random.Random) -> tuple[str, str]:
    letters = rng.sample(string.ascii_lowercase, rng.randint(4, 7))
    return (f"Sort these letters alphabetically. Reply with the sorted letters separated by spaces and nothing "
            f"else: {' '.join(letters)}", " ".join(sorted(letters)))


def _greater(rng: random.Random) -> tuple[str, str]:
    a, b = rng.sample(range(1, 100), 2)
    return f"Answer 'yes' or 'no' only: is {a} greater than {b}?", "yes" if a > b else "no"


def _iso_date(rng: random.Random) -> tuple[str, str]:
    year, month, day = rng.randint(1950, 2040), rng.randint(1, 12), rng.randint(1, 28)  # 28: valid in every month
    return (f"Put the date {day} {MONTHS[month - 1]} {year} in ISO format (YYYY-MM-DD). Reply with the date only.",
            f"{year:04d}-{month:02d}-{day:02d}")


def _reverse_word(rng: random.Random) -> tuple[str, str]:
    word = rng.choice(WORDS)
    return f"Spell the word '{word}' backwards. Reply with the reversed word only.", word[::-1]


def _sum(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    return f"Add {a} and {b}. Reply only in the form 'SUM=<n>'.", f"SUM={a + b}"


MAKERS = {"word_count": _word_count, "sort_letters": _sort_letters, "greater": _greater, "iso_date": _iso_date,
          "reverse_word": _reverse_word, "sum": _sum}
