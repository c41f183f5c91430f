"""The synthetic generators: deterministic, balanced, tags that match their entity spans, no empty rows."""

from __future__ import annotations

import collections

from seqeval.metrics.sequence_labeling import get_entities

from lmforge.data import synthetic
from lmforge.data.synthetic import english_ner, english_ner_splits, nli_pairs


def test_english_ner_is_deterministic_for_a_seed():
    assert english_ner(50, seed=7) == english_ner(50, seed=7)
    assert english_ner(50, seed=7) != english_ner(50, seed=8)


def test_english_ner_tags_match_the_entities_that_were_inserted():
    full_names = {f"{first} {last}" for first in synthetic.FIRST_NAMES for last in synthetic.LAST_NAMES}
    gazetteer = {"PER": set(synthetic.FIRST_NAMES) | full_names,
                 "LOC": set(synthetic.PLACES), "ORG": set(synthetic.ORGANISATIONS)}
    every_name = {name for names in gazetteer.values() for name in names}
    rows = english_ner(400, seed=0)
    kinds, multi_word, without = collections.Counter(), 0, 0
    for row in rows:
        tokens, tags = row["tokens"], row["tags"]
        assert tokens and len(tokens) == len(tags) and all(tokens)
        assert all(t == "O" or t[:2] in ("B-", "I-") for t in tags)
        entities = get_entities(tags)  # seqeval's own reading of the BIO tags
        for kind, start, end in entities:
            assert " ".join(tokens[start:end + 1]) in gazetteer[kind]
            assert tags[start] == f"B-{kind}"  # every entity starts with B-, never a bare I-
            kinds[kind] += 1
            multi_word += end > start
        # no entity hides in the O words: no gazetteer name appears untagged
        outside = " ".join(w if t == "O" else "|" for w, t in zip(tokens, tags))
        assert not any(f" {name} " in f" {outside} " for name in every_name)
        without += not entities
    assert min(kinds.values()) > 100 and multi_word > 200
    assert 0.05 < without / len(rows) < 0.25


def test_held_out_names_never_occur_in_the_default_sentences():
    def names(rows):
        return {" ".join(r["tokens"][s:e + 1]) for r in rows for _, s, e in get_entities(r["tags"])}

    seen, unseen = names(english_ner(600, seed=0)), names(english_ner(300, seed=1, held_out=True))
    assert seen and unseen and not {n.split()[0] for n in seen} & {n.split()[0] for n in unseen}
    splits = english_ner_splits(100, seed=2, held_out_test=True)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [80, 10, 10]
    assert not names(splits["train"]) & names(splits["test"])


def test_nli_pairs_are_deterministic_balanced_and_follow_their_rules():
    rows = nli_pairs(300, seed=3)
    assert rows == nli_pairs(300, seed=3) and rows != nli_pairs(300, seed=4)
    counts = collections.Counter(r["label"] for r in rows)
    assert counts == {"entailment": 100, "neutral": 100, "contradiction": 100}
    assert [len(nli_pairs(n, 0)) for n in (1, 2, 7)] == [1, 2, 7]
    filler = {"a", "an", "the", "is", "someone"}
    for r in rows:
        assert set(r) == {"premise", "hypothesis", "label", "rule"}
        assert r["premise"].strip() and r["hypothesis"].strip()
        premise = set(r["premise"].lower().rstrip(".").split())
        hypothesis = set(r["hypothesis"].lower().rstrip(".").split())
        if r["label"] == "entailment":  # a subset of what the premise says
            assert hypothesis - filler <= premise, r
        elif r["rule"] in ("negation", "nobody"):
            assert {"not", "nobody"} & hypothesis, r
        elif r["label"] == "contradiction":  # same person and action, another place
            assert hypothesis - premise and premise - hypothesis, r
        else:  # neutral: says something the premise does not
            assert hypothesis - filler - premise, r
    assert len({r["rule"] for r in rows}) == 8
