"""Language-model scoring: log-likelihoods, perplexity and bits-per-byte, pseudo-perplexity, the KN baseline.

Every score is a sum of natural-log probabilities (nats): the model's float32 logits go through a float64
log-softmax. The causal-LM functions follow lm-evaluation-harness's Hugging Face backend, so lmforge's
numbers and lm-eval's agree on the same weights:

* `loglikelihood_tokens` scores continuations after contexts, truncating from the left to the model's
  window (the input is ``(context + continuation)[-(max_len + 1):][:-1]``);
* `loglikelihood` splits text pairs into tokens as lm-eval's ``_encode_pair`` does;
* `rolling_loglikelihood` and `perplexity` score whole documents with a sliding window.

The sliding window. A window gives the model at most ``max_len`` input tokens and scores the tokens they
predict that no earlier window scored: the first window scores ``max_len`` tokens, each later one the next
``stride`` tokens (the last one what is left).

* With a smaller ``stride`` the windows overlap: each later window, the last one too, sees the
  ``max_len - stride`` tokens before the ones it scores (plus the one right before them), as in the Hugging
  Face perplexity guide (https://huggingface.co/docs/transformers/perplexity). That guide's window of
  ``max_length`` tokens holds its last target as an input whose prediction it never uses, so it equals ours
  with ``max_len = max_length - 1``.
* With ``stride == max_len`` (the default) the windows are disjoint: a window's tokens are predicted from
  the tokens since it began plus the one before, and the last window reaches back to fill all ``max_len``
  inputs: exactly lm-eval's ``loglikelihood_rolling`` (``get_rolling_token_windows`` with
  ``context_len=1``, then ``make_disjoint_window``). The guide at ``stride = max_length`` instead skips one
  token at every window start; ours scores every token.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

from lmforge.evaluate.errors import EvaluationError

__all__ = ["kneser_ney_baseline", "loglikelihood", "loglikelihood_tokens", "perplexity", "pseudo_perplexity",
           "rolling_loglikelihood", "validation_metrics"]


# ------------------------------------------------------------------------------------------ log-likelihoods

def loglikelihood_tokens(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16,
                         max_len: int | None = None, progress: bool = False) -> list[tuple[float, bool]]:
    """For each (context_ids, continuation_ids): (sum of log p of the continuation's tokens, all greedy).

    Each continuation token is scored given everything before it, in nats (float64 log-softmax of the float32
    logits); "greedy" says whether every continuation token is the model's argmax there (lm-eval's
    ``is_greedy``). The model sees ``(context + continuation)[-(max_len + 1):][:-1]``: too long a pair is
    truncated from the left, as lm-eval's HF backend does; `max_len` defaults to ``model.cfg.max_seq_len``.
    Requests run longest first in batches of `batch_size`, right-padded. The model must be a causal LM, and
    a context must hold at least one token (put a BOS/EOS id there to score a text from its start).
    """
    _require_task(model, "causal-lm", "log-likelihood scoring")
    max_len = _window(model, max_len)
    batch_size = _positive("batch_size", batch_size)
    vocab_size = model.cfg.vocab_size
    checked = []
    for i, (context, continuation) in enumerate(requests):
        context, continuation = [int(t) for t in context], [int(t) for t in continuation]
        if not context:
            raise EvaluationError(f"request {i}: the context is empty; put a BOS/EOS id first so the first "
                                  "continuation token has something to be predicted from")
        if not continuation:
            raise EvaluationError(f"request {i}: the continuation is empty: there is nothing to score")
        if len(continuation) > max_len:
            raise EvaluationError(f"request {i}: the continuation has {len(continuation)} tokens, more "
                                  f"than the window of max_len={max_len} tokens")
        bad = [t for t in context + continuation if not 0 <= t < vocab_size]
        if bad:
            raise EvaluationError(f"request {i}: token id {bad[0]} is outside the model's vocabulary "
                                  f"[0, {vocab_size})")
        checked.append((context, continuation))

    order = sorted(range(len(checked)), key=lambda i: -(len(checked[i][0]) + len(checked[i][1])))
    results: list[tuple[float, bool] | None] = [None] * len(checked)
    device = _device(model)
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="log-likelihood", unit="batch", dynamic_ncols=True)
    with _inference(model):
        for batch in batches:
            inputs = [(checked[i][0] + checked[i][1])[-(max_len + 1):][:-1] for i in batch]
            width = max(len(x) for x in inputs)
            ids = torch.zeros(len(inputs), width, dtype=torch.long)  # right padding: later positions, unseen
            for row, x in enumerate(inputs):
                ids[row, :len(x)] = torch.tensor(x)
            logits = model(ids.to(device))  # (B, T, V)
            for row, i in enumerate(batch):
                continuation = checked[i][1]
                end = len(inputs[row])
                rows = logits[row, end - len(continuation):end].float()  # (C, V): the continuation's
                logprobs = torch.log_softmax(rows, dim=-1, dtype=torch.float64)
                targets = torch.tensor(continuation, device=rows.device)
                total = float(logprobs.gather(1, targets[:, None]).sum())
                results[i] = (total, bool((logprobs.argmax(-1) == targets).all()))
    return results  # type: ignore[return-value]


def loglikelihood(model, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16,
                  max_len: int | None = None, progress: bool = False) -> list[tuple[float, bool]]:
    """For each (context, continuation) text pair: (log p of the continuation given the context, all greedy).

    The pair is split into tokens as lm-eval's HF backend does (``_encode_pair``): the context's trailing
    whitespace moves to the front of the continuation; the continuation's ids are those of
    ``encode(context + continuation)`` after the first ``len(encode(context))``, so a token spanning the seam
    is the continuation's. An empty context becomes the tokenizer's BOS id (else its EOS id); if the
    continuation itself starts with that id, that token is the context instead. Nothing else is added
    (``add_special_tokens=False``). Scoring is `loglikelihood_tokens`.
    """
    pairs = []
    for i, (context, continuation) in enumerate(requests):
        if not isinstance(context, str) or not isinstance(continuation, str):
            raise EvaluationError(f"request {i}: context and continuation must be strings, got "
                                  f"{type(context).__name__} and {type(continuation).__name__}")
        if context == "":
            ids = tokenizer.encode(continuation, add_special_tokens=False)
            prefix = _prefix_id(tokenizer)
            pairs.append(([prefix], ids) if not ids or ids[0] != prefix else (ids[:1], ids[1:]))
            continue
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = tokenizer.encode(context + continuation, add_special_tokens=False)
        context_ids = tokenizer.encode(context, add_special_tokens=False)
        pairs.append((context_ids, whole[len(context_ids):]))
    return loglikelihood_tokens(model, pairs, batch_size=batch_size, max_len=max_len, progress=progress)


def rolling_loglikelihood(model, ids: Sequence[int], max_len: int | None = None, stride: int | None = None,
                          prefix_id: int | None = None, batch_size: int = 8) -> tuple[float, int]:
    """(sum of log p over the tokens of `ids`, number of tokens scored) with a sliding window.

    Every token is scored, the first one predicted from `prefix_id` when given, else not scored. Windows of
    at most `max_len` input tokens (default ``model.cfg.max_seq_len``) advance by `stride` (default
    `max_len`: disjoint windows, lm-eval's ``loglikelihood_rolling``); a smaller stride keeps
    ``max_len - stride`` earlier tokens as context, as in the Hugging Face perplexity guide (see the module
    docstring for how the two line up).
    """
    max_len = _window(model, max_len)
    stride = _stride(stride, max_len)
    sequence = ([int(prefix_id)] if prefix_id is not None else []) + [int(t) for t in ids]
    windows = list(_sliding_windows(sequence, max_len, stride))
    if not windows:
        return 0.0, 0
    scores = loglikelihood_tokens(model, windows, batch_size=batch_size, max_len=max_len)
    return sum(s for s, _ in scores), len(sequence) - 1


def _sliding_windows(sequence: list[int], max_len: int, stride: int) -> Iterator[tuple[list[int], list[int]]]:
    """(context, continuation) requests that score sequence[1:] once each, `stride` tokens a window.

    A window scores positions scored+1 .. end from the inputs sequence[start:end]: the first one ends at
    max_len, the next ones `stride` further, the last at the sequence's end. A window starts `stride`
    tokens after the one before (max_len - stride + 1 tokens of context, the HF guide), except the last of
    disjoint windows, which reaches back to a full window (lm-eval); every other window is full anyway.
    """
    last, scored = len(sequence) - 1, 0
    end = min(max_len, last)
    while scored < last:
        start = max(0, end - max_len if stride == max_len else scored + stride - max_len)
        yield sequence[start:scored + 1], sequence[scored + 1:end + 1]
        scored, end = end, min(end + stride, last)


# --------------------------------------------------------------------------------- perplexity and friends

def perplexity(model, tokenizer, texts: Sequence[str], max_len: int | None = None, stride: int | None = None,
               batch_size: int = 8, add_bos: bool | None = None) -> dict:
    """Perplexity, mean NLL and bits-per-byte of a causal LM on `texts`, each text scored on its own.

    Each text is encoded without special tokens and scored by `rolling_loglikelihood` (windows of `max_len`
    tokens advancing by `stride`). With `add_bos` the first token is predicted from the tokenizer's BOS id
    (its EOS id when it has no BOS, as lm-eval does); without, each text's first token is not scored.
    `add_bos=None` adds it when the tokenizer has a BOS token. Returns "perplexity" (exp of the mean nats
    per scored token), "nll" (that mean), "bits_per_byte" (total nats / ln 2 / the texts' UTF-8 bytes, all
    bytes counted), "tokens" (scored), "bytes", "texts", "max_len", "stride" and "prefix_id" (None when no
    prefix was used: then `kneser_ney_baseline(..., score_first=False)` scores the same tokens).
    """
    _require_task(model, "causal-lm", "perplexity")
    max_len = _window(model, max_len)
    stride = _stride(stride, max_len)
    batch_size = _positive("batch_size", batch_size)
    if isinstance(texts, str):
        raise EvaluationError("texts must be a sequence of strings, not one string: wrap it in a list")
    if add_bos is None:
        add_bos = getattr(tokenizer, "bos_id", None) is not None
    prefix = _prefix_id(tokenizer) if add_bos else None
    windows, num_bytes, num_tokens = [], 0, 0
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise EvaluationError(f"text {i} is a {type(text).__name__}, not a string")
        sequence = ([prefix] if prefix is not None else []) + tokenizer.encode(text, add_special_tokens=False)
        windows.extend(_sliding_windows(sequence, max_len, stride))
        num_tokens += max(len(sequence) - 1, 0)
        num_bytes += len(text.encode("utf-8"))
    if num_tokens == 0:
        raise EvaluationError(f"no token to score in {len(texts)} text(s): they are empty"
                              + ("" if prefix is not None else " or one token each (without a BOS prefix the "
                                 "first token of a text is not scored)"))
    scores = loglikelihood_tokens(model, windows, batch_size=batch_size, max_len=max_len)
    total = sum(score for score, _ in scores)
    nll = -total / num_tokens
    bits_per_byte = -total / math.log(2) / max(num_bytes, 1)
    return {"perplexity": math.exp(nll), "nll": nll, "bits_per_byte": bits_per_byte,
            "tokens": num_tokens, "bytes": num_bytes, "texts": len(texts), "max_len": max_len,
            "stride": stride, "prefix_id": prefix}


def pseudo_perplexity(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> dict:
    """Pseudo-perplexity of a masked LM (Salazar et al. 2020, "Masked Language Model Scoring").

    Each text is encoded with its special tokens ([CLS] ... [SEP]); every other token is replaced by the
    mask token in turn, one copy of the text per token, and scored by log p(original token) at that place.
    PLL = the sum over all tokens of all texts; "pseudo_perplexity" = exp(-PLL / tokens). Returns that,
    "pll", "tokens" and "texts". A text longer than the model's positions is an error, not truncated.
    """
    _require_task(model, "masked-lm", "pseudo-perplexity")
    batch_size = _positive("batch_size", batch_size)
    mask_id = getattr(tokenizer, "mask_id", None)
    if mask_id is None:
        raise EvaluationError("pseudo-perplexity needs a tokenizer with a mask token ([MASK]); this one has "
                              "none")
    if isinstance(texts, str):
        raise EvaluationError("texts must be a sequence of strings, not one string: wrap it in a list")
    special = set(tokenizer.special_ids)
    pad_id = tokenizer.pad_id if tokenizer.pad_id is not None else 0
    items = []  # (token ids with one masked, the masked position, the original id)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text, add_special_tokens=True)
        if len(ids) > model.cfg.max_seq_len:
            raise EvaluationError(f"text {i} has {len(ids)} tokens, more than the model's "
                                  f"max_seq_len={model.cfg.max_seq_len}; split it")
        for pos, token in enumerate(ids):
            if token not in special:
                items.append((ids[:pos] + [mask_id] + ids[pos + 1:], pos, token))
    if not items:
        raise EvaluationError(f"no token to score in {len(texts)} text(s): they are empty")
    items.sort(key=lambda item: -len(item[0]))
    device, total = _device(model), 0.0
    with _inference(model):
        for start in range(0, len(items), batch_size):
            batch = items[start:start + batch_size]
            width = len(batch[0][0])
            ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, (x, _, _) in enumerate(batch):
                ids[row, :len(x)], mask[row, :len(x)] = torch.tensor(x), 1
            positions = torch.tensor([row * width + pos for row, (_, pos, _) in enumerate(batch)])
            logits = model(ids.to(device), mask.to(device), positions=positions.to(device)).logits  # (N, V)
            logprobs = torch.log_softmax(logits.float(), dim=-1, dtype=torch.float64)
            targets = torch.tensor([token for _, _, token in batch], device=logprobs.device)
            total += float(logprobs.gather(1, targets[:, None]).sum())
    return {"pseudo_perplexity": math.exp(-total / len(items)), "pll": total, "tokens": len(items),
            "texts": len(texts)}


def kneser_ney_baseline(train_ids: Sequence[Sequence[int]], eval_ids: Sequence[Sequence[int]],
                        vocab_size: int, orders: Sequence[int] = (2, 3, 4, 5),
                        score_first: bool = False) -> dict:
    """Perplexity of interpolated modified Kneser-Ney n-gram models on the tokens `perplexity` scores.

    One model per order is fitted on the documents `train_ids` (`lmforge.baselines.KneserNeyLM`; each
    document starts a fresh context) and scored on the documents `eval_ids`, every token but each
    document's first: the tokens `perplexity` scores without a BOS prefix. With `score_first` each
    document's first token counts too (predicted from the document start): those `perplexity` scores with
    a prefix. Empty documents are skipped. Returns {"orders": {n: perplexity}, "best_order", "perplexity"
    (the best order's), "tokens"}.
    """
    import numpy as np

    from lmforge.baselines import KneserNeyLM

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise EvaluationError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    orders = [int(n) for n in orders]
    if not orders or any(n < 1 for n in orders):
        raise EvaluationError(f"orders must be integers >= 1, got {orders!r}")
    train_docs = [np.asarray(d, dtype=np.int64) for d in train_ids if len(d) > 0]
    eval_docs = [np.asarray(d, dtype=np.int64) for d in eval_ids if len(d) > (0 if score_first else 1)]
    if not train_docs:
        raise EvaluationError("train_ids holds no token: the Kneser-Ney baseline has nothing to count")
    if not eval_docs:
        raise EvaluationError("eval_ids holds no token to score" + (
            "" if score_first else " (a document's first token is not scored: score_first=True counts it)"))
    lengths = np.array([len(d) for d in eval_docs])
    keep = np.ones(lengths.sum(), dtype=bool)
    if not score_first:
        keep[np.cumsum(lengths) - lengths] = False  # each document's first token
    result = {}
    for n in orders:
        try:
            lm = KneserNeyLM().fit(train_docs, vocab_size, n)
            logp = lm.token_log_probs(eval_docs)  # (eval tokens,), documents one after another
        except ValueError as err:  # a token id outside the vocabulary
            raise EvaluationError(f"Kneser-Ney baseline: {err}") from None
        result[n] = float(math.exp(-logp[keep].mean()))
    best = min(result, key=result.__getitem__)
    return {"orders": result, "best_order": best, "perplexity": result[best], "tokens": int(keep.sum())}


# ------------------------------------------------------------------------------------ trainer validation

@torch.no_grad()
def validation_metrics(model, objective, data, cfg, env, precision: str = "fp32",
                       max_batches: int | None = None) -> dict:
    """Validation loss (mean nats per target) and perplexity over the validation split (or its first batches).

    The trainer's evaluation: `objective` (a bound training objective) gives the batches and the loss sums,
    summed over the data-parallel ranks of `env`; "val_loss", "val_ppl" and "val_tokens", plus the
    objective's own metrics (accuracy, entity F1, ...) as "val_<name>" when it has `eval_metrics`.
    """
    from lmforge.train.distributed import unwrap
    from lmforge.train.precision import autocast

    model.eval()
    total = torch.zeros(2, dtype=torch.float64)
    batch_size = cfg.micro_batch_size or cfg.batch_size
    loader = objective.eval_loader(data, batch_size, cfg.seq_len, env.dp_rank, env.dp_size)
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        with autocast(precision, env.device):
            loss_sum, n = objective.eval_sums(model, batch, env.device)
        total += torch.tensor([loss_sum, n], dtype=torch.float64)
    if env.enabled:
        torch.distributed.all_reduce(total)
        total /= env.tp_size  # the ranks of a TP group evaluated the same batches
    val_loss = float(total[0] / total[1].clamp(min=1))
    out = {"val_loss": round(val_loss, 6), "val_ppl": round(math.exp(min(val_loss, 50)), 3),
           "val_tokens": int(total[1])}
    if hasattr(objective, "eval_metrics"):  # a task's own metrics (fine-tuning: accuracy, entity F1, ...)
        with autocast(precision, env.device):
            metrics = objective.eval_metrics(unwrap(model), data, env.device)
        out.update({f"val_{k}": round(float(v), 6) for k, v in metrics.items()})
    return out


# ------------------------------------------------------------------------------------------------ helpers

def _require_task(model, task: str, what: str) -> None:
    """An EvaluationError unless `model` is a `task` model (its head), saying how to load one."""
    from lmforge.models import ConfigError, task_of

    try:
        found = task_of(model)
    except ConfigError:
        found = type(model).__name__
    if found != task:
        head = {"causal-lm": "an LM head on a decoder",
                "masked-lm": "a masked-LM (MLM) head on an encoder"}[task]
        raise EvaluationError(f"{what} needs a {task} model ({head}); this model is {found!r}: load it with "
                              f"task={task!r}")


def _window(model, max_len: int | None) -> int:
    """The window length: `max_len`, or the model's max_seq_len; checked."""
    limit = model.cfg.max_seq_len
    if max_len is None:
        return limit
    max_len = _positive("max_len", max_len)
    if max_len > limit:
        raise EvaluationError(f"max_len={max_len} is longer than the model's max_seq_len={limit}")
    return max_len


def _stride(stride: int | None, max_len: int) -> int:
    if stride is None:
        return max_len
    stride = _positive("stride", stride)
    if stride > max_len:
        raise EvaluationError(f"stride={stride} is longer than the window max_len={max_len}: tokens in "
                              "between would never be scored")
    return stride


def _positive(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EvaluationError(f"{name} must be a positive integer, got {value!r}")
    return value


def _prefix_id(tokenizer) -> int:
    """The id put before a text so its first token can be scored: BOS, else EOS (lm-eval's prefix)."""
    for role in ("bos_id", "eos_id"):
        value = getattr(tokenizer, role, None)
        if value is not None:
            return int(value)
    raise EvaluationError("the tokenizer has neither a BOS nor an EOS token to start a text with; use "
                          "add_bos=False or give the context explicitly")


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def _inference(model):
    """Eval mode and no autograd for the block; the model's train/eval mode is restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)
