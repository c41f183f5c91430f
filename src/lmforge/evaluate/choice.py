"""Multiple choice by log-likelihood, zero- and few-shot, scored as lm-evaluation-harness scores it.

An item is a query, its choices and the index of the right one. The prompt (the context) is the few-shot
examples, each rendered as ``template + target_delimiter + its right choice + shot_separator``, then the
item's own rendered template; each choice is scored as the continuation ``target_delimiter + choice``
(lm-eval's ``fewshot_context`` and ``construct_requests`` for ``output_type: multiple_choice``). The
prediction is the choice of the highest summed log-likelihood (``acc``), or of the highest log-likelihood
per character of the choice, the delimiter not counted (``acc_norm``, lm-eval's ``process_results``).

Few-shot examples come from one ``random.Random(seed)`` drawn from in item order, as lm-eval's default
sampler draws them (``fewshot_seed``, 1234 by default): for each item, ``k + 1`` examples when the item may
be among them (it is then dropped), else ``k``; so the same items, pool and seed give lm-eval's prompts.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lmforge.evaluate.errors import EvaluationError

__all__ = ["ChoiceItem", "choose_shots", "multiple_choice", "read_choice_items", "render_prompt"]


@dataclass
class ChoiceItem:
    """One multiple-choice question: the query, the choices, the index of the right choice, an optional id."""

    query: str
    choices: list[str]
    answer: int
    id: str | None = None


def read_choice_items(path: str | Path) -> list[ChoiceItem]:
    """The items of a JSON-lines file: per line "query" (or "question"), "choices" (a list of strings),
    "answer" (the right choice's index or its text) and an optional "id". Blank lines are skipped; every
    problem is reported at once, by file, line and field, as one EvaluationError."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise EvaluationError(f"{path}: cannot read the multiple-choice items: {err}") from None
    items, problems = [], []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            problems.append(f"{where}: not valid JSON ({err.msg})")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: expected a JSON object, got {type(row).__name__}")
            continue
        item, errors = _item_from_row(row)
        problems.extend(f"{where}: {e}" for e in errors)
        if item is not None:
            items.append(item)
    if problems:
        shown = problems[:20] + ([f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])
        raise EvaluationError("bad multiple-choice items:\n  " + "\n  ".join(shown))
    if not items:
        raise EvaluationError(f"{path}: no multiple-choice items (the file is empty)")
    return items


def _item_from_row(row: dict) -> tuple[ChoiceItem | None, list[str]]:
    """A ChoiceItem from one decoded JSON object, or the problems with its fields."""
    errors = []
    key = "query" if "query" in row else "question"
    query = row.get(key)
    if key not in row:
        errors.append('field "query" (or "question") is missing')
    elif not isinstance(query, str):
        errors.append(f'field "{key}" must be a string, got {type(query).__name__}')
    choices = row.get("choices")
    if choices is None:
        errors.append('field "choices" is missing')
    elif not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        errors.append('field "choices" must be a list of at least two strings')
        choices = None
    answer = row.get("answer")
    if "answer" not in row:
        errors.append('field "answer" is missing')
    elif isinstance(answer, bool) or not isinstance(answer, int | str):
        errors.append(f'field "answer" must be a choice\'s index or text, got {type(answer).__name__}')
    elif choices is not None:
        if isinstance(answer, str):
            if answer not in choices:
                errors.append(f'field "answer" {answer!r} is none of the choices')
            else:
                answer = choices.index(answer)
        elif not 0 <= answer < len(choices):
            errors.append(f'field "answer" {answer} is not an index of the {len(choices)} choices')
    item_id = row.get("id")
    if item_id is not None and not isinstance(item_id, str | int):
        errors.append(f'field "id" must be a string or an integer, got {type(item_id).__name__}')
    if errors:
        return None, errors
    return ChoiceItem(query, list(choices), answer, None if item_id is None else str(item_id)), []


def render_prompt(item: ChoiceItem, template: str = "{query}", shots: Sequence[ChoiceItem] = (),
                  shot_separator: str = "\n\n", target_delimiter: str = " ") -> tuple[str, list[str]]:
    """(context, continuations) for one item: the shots, each with its right choice, then the item's query.

    `template` is a `str.format` string over the item's fields: ``{query}``, ``{id}`` and ``{choices}`` (the
    choices as lines "A. ...", "B. ..."). The continuations are ``target_delimiter + choice``, one per choice.
    """
    shown = "".join(_render(shot, template) + target_delimiter + shot.choices[shot.answer] + shot_separator
                    for shot in shots)
    return shown + _render(item, template), [target_delimiter + choice for choice in item.choices]


def _render(item: ChoiceItem, template: str) -> str:
    letters = string.ascii_uppercase
    listed = "\n".join(f"{letters[i] if i < len(letters) else i + 1}. {choice}"
                       for i, choice in enumerate(item.choices))
    try:
        return template.format(query=item.query, id=item.id or "", choices=listed)
    except KeyError as err:
        raise EvaluationError(f"template {template!r}: unknown field {{{err.args[0]}}}; the fields are "
                              "{query}, {id} and {choices}") from None
    except (IndexError, ValueError) as err:
        raise EvaluationError(f"template {template!r} is not a valid format string: {err}") from None


def choose_shots(pool: Sequence[ChoiceItem], k: int, seed: int | random.Random,
                 exclude: ChoiceItem | None = None) -> list[ChoiceItem]:
    """`k` few-shot examples drawn from `pool`, never one equal to `exclude`.

    `seed` is an int (the same draw every call) or a `random.Random` shared across calls (a new draw each
    call, as lm-eval's sampler). With `exclude`, k + 1 are drawn and `exclude` dropped (re-drawn from the rest
    if it left more than k), the draw of lm-eval's ``ContextSampler.sample``.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise EvaluationError(f"the number of shots must be an integer >= 0, got {k!r}")
    if k == 0:
        return []
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    pool = list(pool)
    available = [x for x in pool if x != exclude] if exclude is not None else pool
    if len(available) < k:
        raise EvaluationError(f"{k} shots asked for, but the pool holds only {len(available)} other items")
    if exclude is None:
        return rng.sample(pool, k)
    drawn = [x for x in rng.sample(pool, min(k + 1, len(pool))) if x != exclude][:k]
    return drawn if len(drawn) == k else rng.sample(available, k)


def multiple_choice(model, tokenizer, items: Sequence[ChoiceItem], template: str = "{query}",
                    num_fewshot: int = 0, shots_pool: Sequence[ChoiceItem] | None = None, seed: int = 1234,
                    batch_size: int = 16, shot_separator: str = "\n\n", target_delimiter: str = " ") -> dict:
    """Accuracy of a causal LM on multiple-choice `items` by log-likelihood: lm-eval's acc and acc_norm.

    Each item's choices are scored as continuations of its prompt (`render_prompt`, with `num_fewshot`
    shots drawn by `choose_shots` from `shots_pool`, by default the items themselves, never the item
    itself) with `lmforge.evaluate.lm.loglikelihood`. Returns {"acc", "acc_norm", "n", "num_fewshot",
    "predictions": [{"pred", "pred_norm", "answer", "logprobs"}, ...]} (ties go to the first choice).
    """
    from lmforge.evaluate.lm import loglikelihood

    items = list(items)
    if not items:
        raise EvaluationError("no multiple-choice items to score")
    for i, item in enumerate(items):
        if len(item.choices) < 1 or not 0 <= item.answer < len(item.choices):
            name = f"item {i}" + (f" ({item.id})" if item.id else "")
            raise EvaluationError(f"{name}: answer {item.answer} is not an index of its {len(item.choices)} "
                                  "choices")
    pool = items if shots_pool is None else list(shots_pool)
    rng = random.Random(seed)
    requests, spans = [], []
    for item in items:
        # Never the item as its own shot; a separate pool drops it only if it holds it (lm-eval: same split)
        exclude = item if shots_pool is None or item in pool else None
        shots = choose_shots(pool, num_fewshot, rng, exclude=exclude)
        context, continuations = render_prompt(item, template, shots, shot_separator, target_delimiter)
        spans.append((len(requests), len(continuations)))
        requests.extend((context, c) for c in continuations)
    scores = loglikelihood(model, tokenizer, requests, batch_size=batch_size)
    predictions, correct, correct_norm = [], 0, 0
    for item, (start, count) in zip(items, spans):
        logprobs = [score for score, _ in scores[start:start + count]]
        pred = _argmax(logprobs)
        pred_norm = _argmax([lp / max(len(c), 1) for lp, c in zip(logprobs, item.choices)])
        correct, correct_norm = correct + (pred == item.answer), correct_norm + (pred_norm == item.answer)
        predictions.append({"pred": pred, "pred_norm": pred_norm, "answer": item.answer,
                            "logprobs": logprobs})
    n = len(items)
    return {"acc": correct / n, "acc_norm": correct_norm / n, "n": n, "num_fewshot": num_fewshot,
            "predictions": predictions}


def _argmax(values: Sequence[float]) -> int:
    """The index of the largest value, the first one on ties (as numpy.argmax)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))
