"""Batches from a `TokenDataset`: packed causal-LM windows, fixed validation windows, and whole documents.

- `PackedBatches`: (input_ids, targets) int64 tensors (B, T) cut from the token stream in windows of
  `seq_len + 1` tokens (targets are the inputs shifted by one); documents run into each other, separated
  by EOS. Shuffled per epoch by `seed`, resumable with `state_dict()` / `load_state_dict()`.
- `EvalBatches`: the whole split once, in order, in fixed windows: every token but the first is a target
  exactly once (the last window is padded with `IGNORE_INDEX` targets). `dataset.array()` is the same
  token stream, for baselines (an n-gram model) that must be scored on exactly the same targets.
- `DocumentBatches`: lists of documents (token id lists, no EOS), optionally cut into pieces of at most
  `max_len` tokens, for the MLM / NSP / span-corruption collators in `lmforge.objectives`.

Distributed training: `batch_size` is the *global* batch. With `world_size` ranks, rank `r` gets the
`r`-th of `world_size` equal slices of every global batch, so the ranks' batches partition the batch a
single process would see, and a checkpointed position means the same thing for any number of ranks.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from lmforge.data.dataset import TokenDataset
from lmforge.data.errors import DataError

IGNORE_INDEX = -100


class _EpochBatches:
    """Shared machinery: a per-epoch order of items, global batches split across ranks, a resumable position."""

    def __init__(self, dataset: TokenDataset, batch_size: int, seed: int, shuffle: bool, rank: int,
                 world_size: int, max_epochs: int | None, drop_last: bool) -> None:
        if batch_size < 1:
            raise DataError(f"batch_size must be positive, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size), got rank {rank} with world_size {world_size}")
        if drop_last and batch_size % world_size:
            raise DataError(f"batch_size {batch_size} (the global batch) is not divisible by world_size {world_size}")
        self.dataset, self.batch_size, self.seed, self.shuffle = dataset, batch_size, seed, shuffle
        self.rank, self.world_size, self.max_epochs, self.drop_last = rank, world_size, max_epochs, drop_last
        self.epoch = 0
        self.step = 0

    # subclasses set self.num_items and implement _make
    num_items: int

    def _make(self, items: np.ndarray) -> Any:
        raise NotImplementedError

    def _geometry(self) -> dict:
        return {"seed": self.seed, "shuffle": self.shuffle, "batch_size": self.batch_size,
                "num_items": self.num_items}

    @property
    def steps_per_epoch(self) -> int:
        """Global batches in one epoch."""
        if self.drop_last:
            return self.num_items // self.batch_size
        return -(-self.num_items // self.batch_size)

    def __len__(self) -> int:
        return self.steps_per_epoch

    def order(self, epoch: int) -> np.ndarray:
        """The item order of `epoch`: a permutation seeded by (seed, epoch), or 0..n-1 unshuffled."""
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def __iter__(self) -> Iterator[Any]:
        """Batches from the current position on, epoch after epoch (until `max_epochs`, if set)."""
        while self.max_epochs is None or self.epoch < self.max_epochs:
            order = self.order(self.epoch)
            while self.step < self.steps_per_epoch:
                batch = order[self.step * self.batch_size : (self.step + 1) * self.batch_size]
                items = np.array_split(batch, self.world_size)[self.rank]
                self.step += 1  # the state now points at the next batch
                yield self._make(items)
            self.epoch += 1
            self.step = 0

    def state_dict(self) -> dict:
        """The position (epoch, step of the next batch) and the geometry it is valid for."""
        return {"epoch": self.epoch, "step": self.step, **self._geometry()}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved position; raises `DataError` when it was saved for different data or settings."""
        mine = self._geometry()
        wrong = [f"{key} {state.get(key)!r} saved, {value!r} here" for key, value in mine.items()
                 if state.get(key) != value]
        if wrong:
            raise DataError(f"cannot resume {type(self).__name__}: {'; '.join(wrong)}")
        if not 0 <= state["step"] <= self.steps_per_epoch or state["epoch"] < 0:
            raise DataError(f"cannot resume {type(self).__name__}: position {state['epoch']}/{state['step']} "
                            f"is out of range ({self.steps_per_epoch} steps per epoch)")
        self.epoch, self.step = int(state["epoch"]), int(state["step"])


class PackedBatches(_EpochBatches):
    """Causal-LM batches: (input_ids, targets), each int64 (batch_size / world_size, seq_len).

    The stream is cut into `(len - 1) // seq_len` windows of `seq_len + 1` tokens starting at multiples of
    `seq_len`; each epoch visits them in a fresh order (by `seed` and the epoch) and drops the windows that
    do not fill a last global batch. Iteration goes on forever unless `max_epochs` is set.
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, max_epochs: int | None = None) -> None:
        super().__init__(dataset, batch_size, seed, shuffle, rank, world_size, max_epochs, drop_last=True)
        if seq_len < 1:
            raise DataError(f"seq_len must be positive, got {seq_len}")
        self.seq_len = seq_len
        self.num_items = max(len(dataset) - 1, 0) // seq_len
        if self.num_items < batch_size:
            raise DataError(
                f"the {dataset.split} split of {dataset.path} has {len(dataset):,} tokens: too few for one batch of "
                f"{batch_size} windows of {seq_len} + 1 tokens ({batch_size * seq_len + 1:,} needed)"
            )

    def _geometry(self) -> dict:
        return {**super()._geometry(), "seq_len": self.seq_len}

    def _make(self, windows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.seq_len
        rows = np.stack([self.dataset.tokens(w * t, w * t + t + 1) for w in windows]).astype(np.int64)
        return torch.from_numpy(rows[:, :-1].copy()), torch.from_numpy(rows[:, 1:].copy())


class DocumentBatches(_EpochBatches):
    """Lists of documents as token id lists (no EOS), for collators that pad, mask or pair them.

    With `max_len`, a longer document is cut into consecutive pieces of at most `max_len` tokens, each
    its own item. Shuffled per epoch by `seed`; `drop_last=False` keeps a smaller last batch.
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, max_len: int | None = None, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, max_epochs: int | None = None,
                 drop_last: bool = True) -> None:
        super().__init__(dataset, batch_size, seed, shuffle, rank, world_size, max_epochs, drop_last)
        if max_len is not None and max_len < 1:
            raise DataError(f"max_len must be positive, got {max_len}")
        self.max_len = max_len
        offsets = dataset.document_offsets()
        starts, stops = offsets[:-1], offsets[1:] - 1  # without the EOS
        keep = stops > starts
        starts, stops = starts[keep], stops[keep]
        if max_len is not None:
            counts = -(-(stops - starts) // max_len)
            piece_starts = np.repeat(starts, counts) + max_len * (
                np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts))
            stops = np.minimum(piece_starts + max_len, np.repeat(stops, counts))
            starts = piece_starts
        self._starts, self._stops = starts, stops
        self.num_items = len(starts)
        if self.num_items == 0:
            raise DataError(f"the {dataset.split} split of {dataset.path} has no non-empty documents")

    def _geometry(self) -> dict:
        return {**super()._geometry(), "max_len": self.max_len}

    def _make(self, items: np.ndarray) -> list[list[int]]:
        return [self.dataset.tokens(int(self._starts[i]), int(self._stops[i])).tolist() for i in items]


class EvalBatches:
    """The whole split once, in order: (input_ids, targets) windows of `seq_len`, the last one padded.

    Window `k` predicts stream tokens `k * seq_len + 1 ... (k + 1) * seq_len`; together the windows predict
    every token of `dataset.array()[1:]` exactly once. Padding targets are `IGNORE_INDEX` (-100), padding
    inputs `pad_id` (EOS by default). With `world_size` ranks, rank `r` takes windows `r, r + world_size, ...`.
    """

    def __init__(self, dataset: TokenDataset, batch_size: int, seq_len: int, rank: int = 0, world_size: int = 1,
                 pad_id: int | None = None) -> None:
        if batch_size < 1 or seq_len < 1:
            raise DataError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"rank must be in [0, world_size), got rank {rank} with world_size {world_size}")
        self.dataset, self.batch_size, self.seq_len = dataset, batch_size, seq_len
        self.pad_id = dataset.eos_id if pad_id is None else pad_id
        self.num_targets = max(len(dataset) - 1, 0)
        self.windows = np.arange(-(-self.num_targets // seq_len))[rank::world_size]

    def __len__(self) -> int:
        return -(-len(self.windows) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Batches of at most `batch_size` windows, in stream order."""
        t = self.seq_len
        for first in range(0, len(self.windows), self.batch_size):
            windows = self.windows[first : first + self.batch_size]
            inputs = np.full((len(windows), t), self.pad_id, dtype=np.int64)
            targets = np.full((len(windows), t), IGNORE_INDEX, dtype=np.int64)
            for row, w in enumerate(windows):
                chunk = self.dataset.tokens(w * t, w * t + t + 1)
                inputs[row, : len(chunk) - 1] = chunk[:-1]
                targets[row, : len(chunk) - 1] = chunk[1:]
            yield torch.from_numpy(inputs), torch.from_numpy(targets)
