"""Which fine-tuning task, and how to read its data (no torch here: the command line reads it first)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    """Which task, and how to read its data (the `--task.*` options of `lmforge finetune`)."""

    name: str = "classification"
    """classification (also sentence pairs, with `text_pair`), regression, token-classification, qa, seq2seq,
    chat (instruction / chat SFT of a decoder), multitask (several of them on one body: `subtasks`)."""
    text: str = "text"
    """Column of the input text (classification, regression, seq2seq source)."""
    text_pair: str | None = None
    """Column of the second text of sentence-pair tasks (NLI, paraphrase); None: single sentences."""
    label: str = "label"
    """Column of the label (a class name or id; a number for regression)."""
    tokens: str = "tokens"
    """token-classification: column of the word list."""
    tags: str = "tags"
    """token-classification: column of the BIO tag list, one per word."""
    label_all_subtokens: bool = False
    """token-classification: train every sub-token of a word on its tag (B- becomes I- after the first);
    False: the first sub-token only (the rest are ignored, as in BERT's paper)."""
    question: str = "question"
    """qa: column of the question."""
    context: str = "context"
    """qa: column of the context."""
    answers: str = "answers"
    """qa: column of the answers, SQuAD-style {"text": [...], "answer_start": [...]}."""
    stride: int = 128
    """qa: tokens of overlap between the windows of a context longer than max_length."""
    max_answer_tokens: int = 30
    """qa: longest answer span considered in post-processing."""
    n_best: int = 20
    """qa: start and end candidates kept per window in post-processing."""
    target: str = "target"
    """seq2seq: column of the target text."""
    messages: str = "messages"
    """chat: column of the conversation, a list of {"role", "content"} (the last assistant turns are learned)."""
    prompt: str = "prompt"
    """chat: column of the user prompt, when rows are prompt/response pairs instead of `messages`."""
    response: str = "response"
    """chat: column of the assistant response, with `prompt`."""
    packing: bool = False
    """chat: pack several conversations into each max_length window (attention still crosses them)."""
    max_length: int = 128
    """Tokens per model input (longer inputs are truncated; QA contexts are windowed)."""
    max_new_tokens: int = 32
    """seq2seq / chat: tokens generated per example at evaluation."""
    subtasks: dict[str, str] | None = None
    """multitask: sub-task name -> its task (classification, regression, token-classification, qa); each row
    names its sub-task in `task_column`, and each sub-task gets its own head on the shared body."""
    task_column: str = "task"
    """multitask: the column naming a row's sub-task."""
    temperature: float = 1.0
    """multitask: a batch's sub-task is drawn with probability proportional to its size^(1/temperature)
    (1: proportional to the data, large: uniform over the sub-tasks)."""
    delimiter: str | None = None
    """CSV/TSV: the field separator; None: from the file extension (.csv ",", .tsv "\\t")."""
