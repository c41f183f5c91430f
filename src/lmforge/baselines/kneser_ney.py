"""Interpolated (modified) Kneser-Ney n-gram language model over token ids, vectorised with numpy.

The model (Kneser & Ney 1995; Chen & Goodman 1998, "An Empirical Study of Smoothing Techniques for Language
Modeling", eqs. 17-19 and 26) of order n predicts a token w after the context h = w_{i-n+1} .. w_{i-1} by
the recursion, for k = n, n-1, .., 1 and h' = h without its first symbol::

    P_k(w | h) = max(a_k(h w) - D_k(a_k(h w)), 0) / A_k(h)  +  gamma_k(h) * P_{k-1}(w | h')
    A_k(h)     = sum_w a_k(h w)
    gamma_k(h) = (D_k,1 N_1(h .) + D_k,2 N_2(h .) + D_k,3+ N_3+(h .)) / A_k(h)
    P_0(w)     = 1 / V

where N_r(h .) is the number of tokens w with a_k(h w) = r (r >= 3 for N_3+), and the count a_k is

* the raw count c(h w) at the highest order k = n,
* the continuation count N_1+(. h w), the number of distinct symbols seen right before h w, at the lower
  orders k < n (the Kneser-Ney idea: a lower order only matters for contexts the higher order has not
  seen often, so it should model how many contexts a token follows rather than how often it occurs).

If a context was never followed by a token in training (A_k(h) = 0), P_k(w | h) = P_{k-1}(w | h'). The
recursion ends in the uniform distribution over the V vocabulary ids, so every id, also one never seen in
training, has nonzero probability, and every conditional distribution sums to one.

Discounts: ``"modified"`` KN (Chen & Goodman 1998, eq. 26) uses three discounts per order, estimated from
the count-of-counts n_1..n_4 of a_k (see :func:`modified_kn_discounts`); a float is plain (interpolated)
KN with that one discount for every count and order, as in ``nltk.lm.KneserNeyInterpolated``.

Documents. Each document is a sequence of token ids in [0, V). It is padded on the left with n - 1
begin-of-document symbols ``bos = V`` (not a vocabulary id, never predicted), so the context resets at
every document boundary, and every token of it, including the first, is predicted. No end-of-document
symbol is added: if documents end with an EOS token id (as in the stream a neural model is trained on),
that id is predicted like any other token. :func:`split_documents` cuts such a stream into documents.

Storage: a trie flattened into sorted arrays. The k-grams of the padded training stream are numbered in
the order of their int64 key, key = (index of the (k-1)-gram prefix) * (V + 1) + last symbol, with the
empty 0-gram as index 0. The keys stay below (number of (k-1)-grams) * (V + 1), so they cannot overflow
for any order or vocabulary size (a base-(V+1) number of n symbols would, e.g. for 5-grams of a 16 k
vocabulary). Counting is ``np.unique`` and lookup is ``np.searchsorted``: there is no Python loop over
tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["KneserNeyLM", "best_kneser_ney", "modified_kn_discounts", "split_documents"]

Documents = Sequence[np.ndarray | Sequence[int]]

# The single discount used when the count-of-counts are too degenerate for any estimate (e.g. no count
# of one, or no count of two, as in tiny or highly repetitive training data).
FALLBACK_DISCOUNT = 0.5


def modified_kn_discounts(n1: int, n2: int, n3: int, n4: int) -> tuple[float, float, float]:
    """Discounts (D1, D2, D3+) of modified Kneser-Ney from the count-of-counts n1..n4 (Chen & Goodman 1998).

    Y = n1 / (n1 + 2 n2), D1 = 1 - 2 Y n2 / n1, D2 = 2 - 3 Y n3 / n2, D3+ = 3 - 4 Y n4 / n3. When a count-of-
    counts is zero, or a discount would not be positive, all three fall back to the single absolute
    discount Y of Ney, Essen & Kneser (1994); when Y itself is undefined or 1, to ``FALLBACK_DISCOUNT``.
    """
    if n1 > 0 and n2 > 0:
        y = n1 / (n1 + 2 * n2)
        if n3 > 0 and n4 > 0:
            d1 = 1 - 2 * y * n2 / n1
            d2 = 2 - 3 * y * n3 / n2
            d3 = 3 - 4 * y * n4 / n3
            if d1 > 0 and d2 > 0 and d3 > 0:
                return d1, d2, d3
        return y, y, y
    return FALLBACK_DISCOUNT, FALLBACK_DISCOUNT, FALLBACK_DISCOUNT


def split_documents(stream: np.ndarray | Sequence[int], eos_id: int) -> list[np.ndarray]:
    """Cut a token stream into documents that each end with (and keep) their ``eos_id`` token."""
    stream = np.asarray(stream)
    if stream.ndim != 1:
        raise ValueError(f"expected a 1-D token stream, got shape {stream.shape}")
    pieces = np.split(stream, np.flatnonzero(stream == eos_id) + 1)
    return [piece for piece in pieces if len(piece) > 0]


@dataclass
class _Level:
    """The statistics of one order k of the model (indices of contexts are k-1-gram indices)."""

    keys: np.ndarray  # (num k-grams,) int64, sorted: prefix index * (V + 1) + last symbol
    discounted: np.ndarray  # (num k-grams,) float64: max(a_k - D_k(a_k), 0)
    context_total: np.ndarray  # (num k-1-grams,) float64: A_k(h)
    gamma: np.ndarray  # (num k-1-grams,) float64: gamma_k(h), 0 where A_k(h) = 0


def _lookup(keys: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of each query key in the sorted ``keys``, or -1 where it is absent."""
    pos = np.searchsorted(keys, query)
    pos_in = np.minimum(pos, len(keys) - 1)
    return np.where((pos < len(keys)) & (keys[pos_in] == query), pos_in, -1)


class KneserNeyLM:
    """Interpolated (modified) Kneser-Ney n-gram model over token ids; see the module docstring."""

    def __init__(self) -> None:
        self.order = 0
        self.vocab_size = 0
        self.discounts = np.zeros((0, 3))  # row k - 1: (D1, D2, D3+) of order k
        self._levels: list[_Level] = []

    @property
    def bos(self) -> int:
        """The begin-of-document padding symbol (= vocab_size, not a vocabulary id)."""
        return self.vocab_size

    # ----------------------------------------------------------------------------------------- fitting

    def fit(
        self,
        documents: Documents,
        vocab_size: int,
        order: int,
        discounts: str | float | Sequence[float] = "modified",
    ) -> KneserNeyLM:
        """Count the n-grams of ``documents`` and estimate the model; returns ``self``.

        ``discounts`` is ``"modified"`` (three per order, Chen & Goodman 1998), one float in (0, 1] for
        plain KN at every order, or a sequence of ``order`` floats, the plain-KN discount of orders 1..n.
        """
        if isinstance(order, bool) or not isinstance(order, int | np.integer) or order < 1:
            raise ValueError(f"order must be an integer >= 1, got {order!r}")
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) or vocab_size < 1:
            raise ValueError(f"vocab_size must be an integer >= 1, got {vocab_size!r}")
        order, vocab_size = int(order), int(vocab_size)
        fixed = _fixed_discounts(discounts, order)
        self.order, self.vocab_size = order, vocab_size
        stream, offset, is_token = self._padded_stream(documents)
        base = vocab_size + 1
        if len(stream) * base >= np.iinfo(np.int64).max:
            raise ValueError("training data too large for int64 n-gram keys")

        # Number the k-grams ending at every position of the stream (k = 1..n): position p holds a k-gram
        # if it starts in the same padded document, i.e. its offset there is >= k - 1. Then a_k: raw counts
        # of the n-grams ending at tokens; continuation counts of a k-gram (k < n) = number of distinct
        # (k+1)-grams ending at tokens whose suffix it is (the k-gram ending at the same position).
        keys_per_order: list[np.ndarray] = []
        counts_per_order: list[np.ndarray] = []
        index = np.zeros(len(stream), dtype=np.int64)  # index of the 0-gram (the empty context) ending at p
        at_tokens_below = None
        for k in range(1, order + 1):
            prefix = np.zeros_like(index)
            prefix[1:] = index[:-1]
            valid = offset >= k - 1
            keys, inverse = np.unique(prefix[valid] * base + stream[valid], return_inverse=True)
            index = np.full(len(stream), -1, dtype=np.int64)
            index[valid] = inverse.reshape(-1)
            at_tokens = index[is_token]
            if k > 1:
                _, first = np.unique(at_tokens, return_index=True)
                counts_per_order[-1] = np.bincount(at_tokens_below[first], minlength=len(keys_per_order[-1]))
            keys_per_order.append(keys)
            counts_per_order.append(np.bincount(at_tokens, minlength=len(keys)))  # raw counts
            at_tokens_below = at_tokens

        self._levels, rows = [], []
        num_contexts = 1  # the empty context
        for k, (keys, counts) in enumerate(zip(keys_per_order, counts_per_order), start=1):
            if fixed is None:
                n1, n2, n3, n4 = np.bincount(counts, minlength=5)[1:5]
                rows.append(modified_kn_discounts(int(n1), int(n2), int(n3), int(n4)))
            else:
                rows.append((fixed[k - 1],) * 3)
            discount_of_count = np.array([0.0, *rows[-1]])  # D(0) = 0, D(1), D(2), D(3+)
            discount = discount_of_count[np.minimum(counts, 3)]
            context = keys // base
            total = np.bincount(context, weights=counts, minlength=num_contexts).astype(np.float64)
            discount_mass = np.bincount(context, weights=discount, minlength=num_contexts)
            gamma = np.divide(discount_mass, total, out=np.zeros_like(total), where=total > 0)
            discounted = np.maximum(counts - discount, 0.0)
            self._levels.append(_Level(keys, discounted, total, gamma))
            num_contexts = len(keys)
        self.discounts = np.array(rows, dtype=np.float64)
        return self

    # -------------------------------------------------------------------------------------- evaluation

    def token_log_probs(self, documents: Documents) -> np.ndarray:
        """Natural-log probability of every token of ``documents`` (concatenated), each document from scratch."""
        self._check_fitted()
        stream, offset, is_token = self._padded_stream(documents)
        base = self.vocab_size + 1
        contexts, grams = [], []
        index = np.zeros(len(stream), dtype=np.int64)
        for k, level in enumerate(self._levels, start=1):
            prefix = np.zeros_like(index)  # position 0 starts a document: only the empty prefix is valid there
            prefix[1:] = index[:-1]
            contexts.append(prefix[is_token])
            # An unseen prefix (-1) gives a negative key, which no table holds: unseen k-grams stay unseen.
            index = np.where(offset >= k - 1, _lookup(level.keys, prefix * base + stream), -1)
            grams.append(index[is_token])
        return np.log(self._interpolate(contexts, grams))

    def log_prob(self, documents: Documents) -> tuple[float, int]:
        """Total natural-log probability of all tokens of ``documents`` and the number of tokens."""
        logp = self.token_log_probs(documents)
        return float(logp.sum()), len(logp)

    def perplexity(self, documents: Documents) -> float:
        """Per-token perplexity exp(-mean log p) on ``documents``."""
        total, count = self.log_prob(documents)
        return float(np.exp(-total / count))

    def distribution(self, context: Sequence[int]) -> np.ndarray:
        """P(w | context) for every vocabulary id w, shape (vocab_size,).

        The last ``order - 1`` symbols of ``context`` are used; ids are in [0, vocab_size) or ``bos`` (so
        the first token of a document has context ``(bos,) * (order - 1)``). A shorter context starts the
        recursion at the lower order len(context) + 1, as ``nltk.lm`` does.
        """
        self._check_fitted()
        context_index = self._context_indices(context)
        base = self.vocab_size + 1
        words = np.arange(self.vocab_size, dtype=np.int64)
        grams = [
            _lookup(level.keys, c * base + words) if c >= 0 else np.full(self.vocab_size, -1)
            for level, c in zip(self._levels, context_index)
        ]
        contexts = [np.full(self.vocab_size, c) for c in context_index]
        return self._interpolate(contexts, grams)

    def prob(self, context: Sequence[int], token: int) -> float:
        """P(token | context), with ``context`` as in :meth:`distribution`."""
        self._check_fitted()
        if not 0 <= int(token) < self.vocab_size:
            raise ValueError(f"token id {token} outside the vocabulary [0, {self.vocab_size})")
        context_index = self._context_indices(context)
        base = self.vocab_size + 1
        grams = [
            _lookup(level.keys, np.array([c * base + int(token)])) for level, c in zip(self._levels, context_index)
        ]
        contexts = [np.array([c]) for c in context_index]
        return float(self._interpolate(contexts, grams)[0])

    # ---------------------------------------------------------------------------------------- internals

    def _interpolate(self, contexts: list[np.ndarray], grams: list[np.ndarray]) -> np.ndarray:
        """Run the recursion P_k = discounted / A + gamma * P_{k-1} from k = 1 up to len(contexts)."""
        prob = np.full(len(contexts[0]), 1.0 / self.vocab_size)
        for level, context, gram in zip(self._levels, contexts, grams):
            context_seen = context >= 0
            total = np.where(context_seen, level.context_total[np.where(context_seen, context, 0)], 0.0)
            gamma = np.where(context_seen, level.gamma[np.where(context_seen, context, 0)], 1.0)
            discounted = np.where(gram >= 0, level.discounted[np.maximum(gram, 0)], 0.0)
            has_data = total > 0
            prob = np.where(has_data, discounted / np.where(has_data, total, 1.0) + gamma * prob, prob)
        return prob

    def _context_indices(self, context: Sequence[int]) -> list[int]:
        """Index of the last k-1 symbols of ``context`` among the training k-1-grams (-1: unseen), k = 1.."""
        symbols = [int(s) for s in context]
        for s in symbols:
            if not 0 <= s <= self.vocab_size:
                raise ValueError(f"context id {s} outside the vocabulary [0, {self.vocab_size}] (bos included)")
        symbols = symbols[len(symbols) - min(len(symbols), self.order - 1) :]
        base = self.vocab_size + 1
        indices = [0]  # the empty context
        for length in range(1, len(symbols) + 1):
            index = 0
            for level, s in zip(self._levels, symbols[-length:]):
                index = int(_lookup(level.keys, np.array([index * base + s]))[0]) if index >= 0 else -1
            indices.append(index)
        return indices

    def _padded_stream(self, documents: Documents) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Concatenate documents, each after order-1 bos: (stream, offset in its document, is-token mask)."""
        if isinstance(documents, np.ndarray) and documents.ndim == 1:
            raise TypeError("expected a sequence of documents; wrap a single 1-D token array in a list")
        if len(documents) == 0:
            raise ValueError("no documents given")
        docs = [np.asarray(d) for d in documents]
        for i, d in enumerate(docs):
            if d.ndim != 1 or len(d) == 0:
                raise ValueError(f"document {i} must be a non-empty 1-D sequence of token ids, got shape {d.shape}")
            if not np.issubdtype(d.dtype, np.integer):
                raise TypeError(f"document {i} must hold integer token ids, got dtype {d.dtype}")
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        tokens = np.concatenate(docs).astype(np.int64)
        bad = np.flatnonzero((tokens < 0) | (tokens >= self.vocab_size))
        if len(bad):
            doc = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
            raise ValueError(
                f"document {doc} has token id {tokens[bad[0]]} outside the vocabulary [0, {self.vocab_size})"
            )
        pad = self.order - 1
        doc_of_token = np.repeat(np.arange(len(docs)), lengths)
        token_pos = np.arange(len(tokens)) + pad * (doc_of_token + 1)
        stream = np.full(len(tokens) + pad * len(docs), self.bos, dtype=np.int64)
        stream[token_pos] = tokens
        is_token = np.zeros(len(stream), dtype=bool)
        is_token[token_pos] = True
        padded_lengths = lengths + pad
        doc_start = np.cumsum(padded_lengths) - padded_lengths
        offset = np.arange(len(stream)) - np.repeat(doc_start, padded_lengths)
        return stream, offset, is_token

    def _check_fitted(self) -> None:
        if not self._levels:
            raise RuntimeError("KneserNeyLM is not fitted; call fit() first")


def _fixed_discounts(discounts: str | float | Sequence[float], order: int) -> list[float] | None:
    """The plain-KN discount of each order 1..n, or None for modified KN."""
    if isinstance(discounts, str):
        if discounts != "modified":
            raise ValueError(f"discounts must be 'modified', a float or a sequence of floats, got {discounts!r}")
        return None
    values = [float(discounts)] * order if np.isscalar(discounts) else [float(d) for d in discounts]
    if len(values) != order:
        raise ValueError(f"expected {order} discounts (one per order), got {len(values)}")
    if not all(0 < d <= 1 for d in values):
        raise ValueError(f"plain KN discounts must lie in (0, 1], got {values}")
    return values


def best_kneser_ney(
    train_docs: Documents,
    valid_docs: Documents,
    vocab_size: int,
    orders: Sequence[int] = (2, 3, 4, 5),
    discounts: str | float = "modified",
) -> tuple[int, dict[int, float]]:
    """Fit one model per order on ``train_docs``: (order with the lowest validation perplexity, {order: ppl})."""
    if len(orders) == 0:
        raise ValueError("no orders given")
    perplexities = {
        int(n): KneserNeyLM().fit(train_docs, vocab_size, int(n), discounts).perplexity(valid_docs) for n in orders
    }
    return min(perplexities, key=perplexities.__getitem__), perplexities
