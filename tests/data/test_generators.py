"""The synthetic fine-tuning data: deterministic, and right by construction (each answer recomputed here from the
row's own text)."""

from __future__ import annotations

import datetime
import json
import re
import subprocess
import sys

import pytest

from lmforge.data.instructions import KINDS, fixed_format_tasks
from lmforge.data.synthetic_qa import squad_like


def test_squad_like_answers_align_with_their_offsets():
    rows = squad_like(60, seed=3)
    assert len(rows) == 60 and len({r["id"] for r in rows}) == 60
    for r in rows:
        (text,), (start,) = r["answers"]["text"], r["answers"]["answer_start"]
        assert r["context"][start:start + len(text)] == text
    contexts = {r["context"] for r in rows}
    assert len(contexts) < len(rows)  # several questions per context
    assert sum(len(c.split()) > 200 for c in contexts) >= 3  # long enough to need windows
    assert sum(len(c.split()) < 100 for c in contexts) >= 3


def test_squad_like_answers_are_the_facts_their_questions_ask_for():
    # recompute each answer from the context: the sentence about the person named in the question
    patterns = {
        r"Where was (.+) born\?": r"{name} was born in (\w+) in \d+\.",
        r"In which year was (.+) born\?": r"{name} was born in \w+ in (\d+)\.",
        r"What did (.+) work as\?": r"{name} was born in [^.]*\. After leaving school, \w+ trained as an? ([a-z ]+?) "
                                     r"(?:and|under)",
        r"Which town did (.+) move to\?": r"{name} was born in [^.]*\.[^.]*\. Later {first} moved to (\w+),",
        r"What instrument did (.+) play\?": r"In the evenings {first} played the (\w+) ",
    }
    for r in squad_like(80, seed=4):
        for question, fact in patterns.items():
            asked = re.fullmatch(question, r["question"])
            if asked:
                name = asked.group(1)
                found = list(re.finditer(fact.format(name=re.escape(name), first=name.split()[0]), r["context"]))
                assert len(found) == 1, (r["question"], r["context"])  # one person of that name
                assert r["answers"]["text"] == [found[0].group(1)]
                assert r["answers"]["answer_start"] == [found[0].start(1)]
                break
        else:
            pytest.fail(f"unexpected question {r['question']!r}")


def test_generators_are_deterministic_across_processes():
    # set iteration order changes with the hash seed: another interpreter must give the same rows
    code = ("import json; from lmforge.data.synthetic_qa import squad_like; "
            "from lmforge.data.instructions import fixed_format_tasks; "
            "print(json.dumps([squad_like(20, 7), fixed_format_tasks(20, 7)]))")
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed, "PATH": ""}).stdout for seed in ("1", "2")]
    assert runs[0] == runs[1] == json.dumps([squad_like(20, 7), fixed_format_tasks(20, 7)]) + "\n"
    assert squad_like(20, 8) != squad_like(20, 7) and fixed_format_tasks(20, 8) != fixed_format_tasks(20, 7)
    assert squad_like(5, 7) == squad_like(20, 7)[:5]


MONTHS = {datetime.date(2000, m, 1).strftime("%B"): m for m in range(1, 13)}


def recompute(prompt: str) -> str:
    """The answer of a fixed-format prompt, worked out again from its text."""
    if m := re.fullmatch(r"How many words are in the sentence below\? Reply only in the form 'COUNT: <n>'\.\n(.+)",
                         prompt):
        return f"COUNT: {len(m.group(1).split())}"
    if m := re.fullmatch(r"Sort these letters alphabetically\. .*: ([a-z ]+)", prompt):
        return " ".join(sorted(m.group(1).split()))
    if m := re.fullmatch(r"Answer 'yes' or 'no' only: is (\d+) greater than (\d+)\?", prompt):
        return "yes" if int(m.group(1)) > int(m.group(2)) else "no"
    if m := re.fullmatch(r"Put the date (\d+) (\w+) (\d+) in ISO format \(YYYY-MM-DD\)\. Reply with the date only\.",
                         prompt):
        return datetime.date(int(m.group(3)), MONTHS[m.group(2)], int(m.group(1))).isoformat()
    if m := re.fullmatch(r"Spell the word '(\w+)' backwards\. Reply with the reversed word only\.", prompt):
        return "".join(reversed(m.group(1)))
    if m := re.fullmatch(r"Add (\d+) and (\d+)\. Reply only in the form 'SUM=<n>'\.", prompt):
        return f"SUM={int(m.group(1)) + int(m.group(2))}"
    raise AssertionError(f"unexpected prompt {prompt!r}")


def test_fixed_format_answers_are_right_by_construction():
    rows = fixed_format_tasks(120, seed=5)
    assert len(rows) == 120
    assert {k: sum(r["kind"] == k for r in rows) for k in KINDS} == dict.fromkeys(KINDS, 20)  # equal shares
    for r in rows:
        assert set(r) == {"prompt", "response", "kind"}
        assert r["response"] == recompute(r["prompt"]), r
    assert len({r["prompt"] for r in rows}) > 100  # varied
    assert {r["response"] for r in rows if r["kind"] == "greater"} == {"yes", "no"}
