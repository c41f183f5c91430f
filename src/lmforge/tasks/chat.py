"""Instruction / chat fine-tuning (SFT) of a decoder: learn the assistant's turns, nothing else.

A row is a conversation (`spec.messages`: a list of {"role", "content"}) or a prompt/response pair
(`spec.prompt`, `spec.response`: one user and one assistant message). It is written with the tokenizer's
chat template (`lmforge.generate.chat`), and only the assistant's tokens are targets: for each assistant
turn, the conversation before it rendered with the generation prompt (`<|im_start|>assistant\\n`) is its
prompt, and the conversation up to and including it is prompt + answer + end-of-turn. The text between
the two is the turn's answer; its tokens are labelled up to and including the first stop token (eos or
an end-of-turn token such as `<|im_end|>`, where generation stops), and everything else (the system
prompt, user turns, role headers, the template's newline after `<|im_end|>`) gets -100.

The pieces (prompt, answer, the next prompt, ...) are tokenized one by one and concatenated: the model
trains on exactly the ids it sees at inference (the prompt tokenized alone, then its own answer tokens),
even where a tokenizer would merge characters across the boundary if the whole text were tokenized at
once. A template whose renderings are not prefixes of each other (one that rewrites earlier turns) is
refused with a DataError.

With `spec.packing`, training conversations are packed whole, in order, into windows of up to
`max_length` tokens (attention still crosses them; each keeps its own labels). Evaluation generates
greedily from each conversation's last prompt and compares the answer with the last assistant turn:
exact match (stripped) and ROUGE (`lmforge.tasks.seq2seq.rouge_scores`: CJK references by character).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from lmforge.data.errors import DataError
from lmforge.generate.chat import ChatError, apply_chat_template, validate_messages
from lmforge.generate.engine import stop_ids
from lmforge.objectives import causal_lm_loss, num_predicted_tokens, pad_batch
from lmforge.objectives._common import pad_sequences
from lmforge.tasks.base import Batch, Example, Feature, TaskSpec
from lmforge.tasks.seq2seq import cut_at_stop, rouge_scores

if TYPE_CHECKING:
    from lmforge.tokenizers import Tokenizer

IGNORE_INDEX = -100


class ChatTask:
    """Chat SFT on a `CausalLM`: answer-only next-token loss, optional packing, greedy generation to evaluate."""

    name: ClassVar[str] = "chat"
    model_task: ClassVar[str] = "causal-lm"
    families: ClassVar[tuple[str, ...]] = ("decoder",)
    metric: ClassVar[str] = "rougeL"

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    def fit(self, train: Sequence[Example]) -> None:
        """Check every training conversation."""
        for example in train:
            self.conversation(example)

    def model_overrides(self) -> dict[str, Any]:
        """An LM task: {}."""
        return {}

    def conversation(self, example: Example) -> list[dict[str, Any]]:
        """The row's messages, checked, up to its last assistant turn (later messages teach nothing)."""
        spec = self.spec
        if spec.messages in example.fields:
            column = spec.messages
            try:
                messages = validate_messages(example.get(column, list))
            except ChatError as err:
                raise DataError(f"{example.where(column)}: {err}") from None
        else:
            column = spec.response
            messages = [{"role": "user", "content": example.get(spec.prompt, str)},
                        {"role": "assistant", "content": example.get(spec.response, str)}]
        assistant = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
        if not assistant:
            raise DataError(f"{example.where(column)}: the conversation has no assistant message to learn")
        if assistant[0] == 0:
            raise DataError(f"{example.where(column)}: the conversation starts with an assistant message "
                            f"(nothing prompts it): begin with a system or user message")
        return messages[:assistant[-1] + 1]

    def features(self, examples: Sequence[Example], tokenizer: Tokenizer, split: str) -> list[Feature]:
        """`input_ids` and `labels` (-100 but on the assistant's tokens), truncated to max_length; packed
        into windows for the training split when `spec.packing`."""
        out = []
        for index, example in enumerate(examples):
            ids, labels = conversation_tokens(tokenizer, self.conversation(example), example)
            out.append({"input_ids": ids[:self.spec.max_length], "labels": labels[:self.spec.max_length],
                        "example_index": index})
        return pack(out, self.spec.max_length) if self.spec.packing and split == "train" else out

    def collate(self, features: Sequence[Feature], pad_id: int) -> Batch:
        """input_ids, attention_mask and labels (B, T), right-padded (labels with -100)."""
        input_ids, attention_mask = pad_batch([f["input_ids"] for f in features], pad_id)
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                "labels": pad_sequences([f["labels"] for f in features], IGNORE_INDEX)}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        """Next-token cross-entropy on the labelled (assistant) tokens; (mean loss, target tokens)."""
        logits = model(batch["input_ids"], batch["attention_mask"])  # (B, T, V)
        labels = batch["labels"]
        return causal_lm_loss(logits, labels=labels), num_predicted_tokens(labels=labels)

    def evaluate(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                 tokenizer: Tokenizer, batch_size: int) -> dict[str, float]:
        """Exact match and ROUGE of the greedy answer to each conversation's last prompt, in left-padded batches."""
        return rouge_scores(*self.predict_texts(model, examples, features, tokenizer, batch_size))

    @torch.no_grad()
    def predict_texts(self, model: nn.Module, examples: Sequence[Example], features: Sequence[Feature],
                      tokenizer: Tokenizer, batch_size: int) -> tuple[list[str], list[str]]:
        """(the greedy answer to each conversation's last prompt, the answer it has there)."""
        from lmforge.generate import generate

        prompts, references = [], []
        for example in examples:
            messages = self.conversation(example)
            text = apply_chat_template(tokenizer, messages[:-1], add_generation_prompt=True)
            prompts.append(tokenizer.encode(text, add_special_tokens=False)[-self.spec.max_length:])
            references.append(messages[-1]["content"])
        stops = stop_ids(tokenizer, model)
        eos = tokenizer.eos_id if tokenizer.eos_id is not None else model.cfg.eos_token_id
        pad_id = next(i for i in (tokenizer.pad_id, eos, 0) if i is not None)
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        predictions = []
        try:
            for i in range(0, len(prompts), batch_size):
                input_ids, attention_mask = left_pad(prompts[i:i + batch_size], pad_id)  # (B, T) each
                new = generate(model, input_ids.to(device), self.spec.max_new_tokens, attention_mask.to(device),
                               temperature=0.0, eos_token_id=eos)  # (B, <= max_new_tokens)
                predictions += [tokenizer.decode(cut_at_stop(row, stops)).strip() for row in new.tolist()]
        finally:
            model.train(was_training)
        return predictions, references


def conversation_tokens(tokenizer: Tokenizer, messages: Sequence[dict[str, Any]],
                        example: Example | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of a conversation in the tokenizer's chat template: labels are the ids on each
    assistant answer up to and including its first stop token, -100 elsewhere (see the module docstring).
    Pieces are encoded without the tokenizer's special tokens: the template writes them itself.
    """
    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    stops = stop_ids(tokenizer)
    where = f"{example.where()}: " if example is not None else ""
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # the text tokenized so far
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        try:
            prompt = apply_chat_template(tokenizer, messages[:k], add_generation_prompt=True)
            full = apply_chat_template(tokenizer, messages[:k + 1], add_generation_prompt=False)
        except ChatError as err:
            raise DataError(f"{where}{err}") from None
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError(f"{where}the chat template does not render assistant turn {k} after the text before "
                            f"it (its renderings are not prefixes of each other): answer-only labels need a "
                            f"template that appends turns")
        context = encode(prompt[len(done):])
        answer = encode(full[len(prompt):])
        learned = len(answer)
        for i, token in enumerate(answer):
            if token in stops:
                learned = i + 1
                break
        ids += context + answer
        labels += [IGNORE_INDEX] * len(context) + answer[:learned] + [IGNORE_INDEX] * (len(answer) - learned)
        done = full
    return ids, labels


def pack(features: Sequence[Feature], max_length: int) -> list[Feature]:
    """Whole conversations, in order, concatenated into windows of at most `max_length` tokens (a window
    is full when the next conversation does not fit); each keeps its labels, `example_index` becomes a list."""
    windows: list[Feature] = []
    current: Feature | None = None
    for feature in features:
        if current is None or len(current["input_ids"]) + len(feature["input_ids"]) > max_length:
            current = {"input_ids": [], "labels": [], "example_index": []}
            windows.append(current)
        current["input_ids"] += feature["input_ids"]
        current["labels"] += feature["labels"]
        current["example_index"].append(feature["example_index"])
    return windows


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask) (B, T_max), padded on the left: prompts for batched generation."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.tensor(list(row))
            mask[i, width - len(row):] = 1
    return ids, mask
