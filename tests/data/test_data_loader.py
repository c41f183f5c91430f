"""Loaders: packed causal-LM batches (shift, determinism, resume, ranks), validation windows, documents."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from _data_helpers import DOCUMENTS, CharTokenizer, write_jsonl

from lmforge.data import (
    IGNORE_INDEX,
    DataError,
    DocumentBatches,
    EvalBatches,
    PackedBatches,
    TokenDataset,
    prepare,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> TokenDataset:
    """~5.6k tokens in 4 shards (a character tokenizer keeps the numbers easy to check)."""
    root = tmp_path_factory.mktemp("loader")
    src = write_jsonl(root / "docs.jsonl", DOCUMENTS)
    prepare([src], CharTokenizer(vocab_size=40_000), root / "out", val_fraction=0.0, shard_tokens=1500,
            workers=1, progress=False)
    ds = TokenDataset(root / "out")
    assert len(ds.manifest["splits"]["train"]["shards"]) >= 3  # windows cross shard boundaries
    return ds


def take(loader, n):
    return list(itertools.islice(iter(loader), n))


def test_targets_are_inputs_shifted_by_one(dataset):
    stream = dataset.array()
    loader = PackedBatches(dataset, batch_size=4, seq_len=32, seed=0)
    for inputs, targets in take(loader, 10):
        assert inputs.shape == targets.shape == (4, 32)
        assert inputs.dtype == targets.dtype == torch.int64
        assert torch.equal(inputs[:, 1:], targets[:, :-1])
        for row in range(4):  # each row is a window of the stream starting at a multiple of seq_len
            window = inputs[row].numpy()
            starts = [s for s in range(0, len(stream) - 32, 32) if (stream[s : s + 32] == window).all()]
            assert starts and stream[starts[0] + 32] == targets[row, -1]


def test_an_epoch_visits_every_window_once_in_a_seeded_order(dataset):
    loader = PackedBatches(dataset, batch_size=4, seq_len=32, seed=3, max_epochs=2)
    n = loader.num_items
    assert n == (len(dataset) - 1) // 32 and len(loader) == n // 4
    batches = list(loader)
    assert len(batches) == 2 * len(loader)
    firsts = [int(x[0, 0]) for x, _ in batches]
    assert firsts[: len(loader)] != firsts[len(loader) :]  # epochs are shuffled differently
    again = list(PackedBatches(dataset, batch_size=4, seq_len=32, seed=3, max_epochs=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, again))
    other = take(PackedBatches(dataset, batch_size=4, seq_len=32, seed=4), 3)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, other))
    order = loader.order(0)
    assert sorted(order.tolist()) == list(range(n))
    ordered = list(PackedBatches(dataset, batch_size=4, seq_len=32, shuffle=False, max_epochs=1))
    assert torch.equal(ordered[0][0][0], torch.from_numpy(dataset.tokens(0, 32).astype(np.int64)))


def test_state_dict_resumes_exactly(dataset):
    loader = PackedBatches(dataset, batch_size=4, seq_len=32, seed=1)
    steps = len(loader)
    it = iter(loader)
    for _ in range(steps - 2):  # stop two batches before the end of the epoch
        next(it)
    state = loader.state_dict()
    assert state["epoch"] == 0 and state["step"] == steps - 2
    expected = [next(it) for _ in range(5)]  # crosses into epoch 1
    fresh = PackedBatches(dataset, batch_size=4, seq_len=32, seed=1)
    fresh.load_state_dict(state)
    got = take(fresh, 5)
    for (x1, y1), (x2, y2) in zip(expected, got):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert fresh.state_dict()["epoch"] == 1


def test_state_dict_refuses_other_settings(dataset):
    state = PackedBatches(dataset, batch_size=4, seq_len=32, seed=1).state_dict()
    with pytest.raises(DataError, match="seq_len 32 saved, 16 here"):
        PackedBatches(dataset, batch_size=4, seq_len=16, seed=1).load_state_dict(state)
    with pytest.raises(DataError, match="seed 1 saved, 2 here"):
        PackedBatches(dataset, batch_size=4, seq_len=32, seed=2).load_state_dict(state)


def test_ranks_partition_the_global_batch(dataset):
    whole = take(PackedBatches(dataset, batch_size=6, seq_len=16, seed=5), 4)
    parts = [take(PackedBatches(dataset, batch_size=6, seq_len=16, seed=5, rank=r, world_size=3), 4)
             for r in range(3)]
    for step in range(4):
        assert all(p[step][0].shape == (2, 16) for p in parts)
        assert torch.equal(torch.cat([p[step][0] for p in parts]), whole[step][0])
        assert torch.equal(torch.cat([p[step][1] for p in parts]), whole[step][1])
    with pytest.raises(DataError, match="not divisible by world_size"):
        PackedBatches(dataset, batch_size=6, seq_len=16, world_size=4, rank=0)
    with pytest.raises(DataError, match="rank must be in"):
        PackedBatches(dataset, batch_size=6, seq_len=16, world_size=3, rank=3)


def test_too_few_tokens_is_a_clear_error(dataset):
    with pytest.raises(DataError, match=r"train split .* too few for one batch"):
        PackedBatches(dataset, batch_size=64, seq_len=512)


def test_eval_batches_cover_the_split_exactly_once(dataset):
    stream = dataset.array().astype(np.int64)
    loader = EvalBatches(dataset, batch_size=5, seq_len=50)
    targets = []
    for inputs, tgt in loader:
        assert inputs.shape == tgt.shape and inputs.shape[1] == 50
        keep = tgt != IGNORE_INDEX
        assert torch.equal(inputs[:, 1:][keep[:, 1:]], tgt[:, :-1][keep[:, 1:]])
        targets.append(tgt[keep].numpy())
    assert np.array_equal(np.concatenate(targets), stream[1:])
    assert loader.num_targets == len(stream) - 1
    # The same windows, split over two ranks, still predict every token once.
    counts = sum(int((t != IGNORE_INDEX).sum()) for r in range(2)
                 for _, t in EvalBatches(dataset, batch_size=5, seq_len=50, rank=r, world_size=2))
    assert counts == len(stream) - 1


def test_document_batches(dataset):
    docs = [d.tolist() for d in dataset.documents()]
    assert docs[0] == [ord(c) for c in DOCUMENTS[0]]
    loader = DocumentBatches(dataset, batch_size=8, shuffle=False, max_epochs=1, drop_last=False)
    seen = [doc for batch in loader for doc in batch]
    assert seen == docs
    shuffled = [doc for batch in DocumentBatches(dataset, batch_size=8, seed=2, max_epochs=1) for doc in batch]
    assert len(shuffled) == 40 and shuffled != docs and sorted(shuffled) == sorted(docs)
    pieces = DocumentBatches(dataset, batch_size=4, max_len=50, shuffle=False, max_epochs=1, drop_last=False)
    flat = [piece for batch in pieces for piece in batch]
    assert max(len(p) for p in flat) == 50
    assert [t for p in flat for t in p] == [t for d in docs for t in d]  # pieces tile the documents
    halves = [DocumentBatches(dataset, batch_size=8, seed=2, rank=r, world_size=2) for r in range(2)]
    first = [next(iter(h)) for h in halves]
    full = next(iter(DocumentBatches(dataset, batch_size=8, seed=2)))
    assert first[0] + first[1] == full
