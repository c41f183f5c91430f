"""`lmforge evaluate`: score one or several models on a task and write the report (report.json + report.html).

Only typing is imported here; the job (`lmforge.evaluate.job`) is imported inside the function.
"""

from __future__ import annotations

from typing import Literal


def evaluate(
    model: list[str],
    task: Literal["lm", "pseudo-lm", "classification", "regression", "token-classification", "qa", "seq2seq", "chat",
                  "multiple-choice"] | None = None,
    data: str | None = None,
    validation: str | None = None,
    report: str | None = None,
    names: list[str] | None = None,
    title: str | None = None,
    task_options: dict | None = None,
    kn_train: str | None = None,
    max_len: int | None = None,
    stride: int | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    dtype: Literal["float32", "bfloat16"] = "float32",
    perturbations: list[str] | None = None,
    perturbation_rate: float = 0.1,
    seed: int = 0,
    bins: int = 15,
    explain: str | None = None,
    lm_eval_tasks: list[str] | None = None,
    num_fewshot: int = 0,
    template: str = "{query}",
    efficiency: bool = True,
) -> None:
    """Evaluate models and write a report (`--report out/`: report.json and a self-contained report.html).

    Args:
        model: One or more models, compared side by side: a named model (all-minilm-l6-v2,
            smollm2-135m-instruct), a Hugging Face or lmforge folder, a .gguf file, or a run folder of `lmforge
            pretrain` / `lmforge finetune` (its model, task options, test data and curves are used). A suffix
            +int8, +q8_0, +int4 or +bf16 evaluates a quantized / bfloat16 copy (`m m+int8 m+int4`).
        task: What to measure; default: from the model's head (causal LM: lm; masked LM: pseudo-lm; classifier:
            classification; ...) or the run's task. multiple-choice scores a JSONL of items and/or lm-eval tasks.
        data: The file to score: lm: a text file (paragraphs), a JSONL with "text", or a prepared shard folder
            (its val split); a labelled task: a JSONL/CSV/TSV file as `lmforge finetune` reads; multiple-choice:
            a JSONL of {"query", "choices", "answer"}. Default for a fine-tuning run: its test split.
        validation: classification: fit the calibration temperature on this file; multiple-choice: the pool the
            few-shot examples are drawn from.
        report: Folder for report.json and report.html; none: print the results only.
        names: The models' names in the report (default: their folder names).
        title: The report's title.
        task_options: The task's column names and lengths, as `lmforge finetune --task_options.*`.
        kn_train: lm: fit the Kneser-Ney baseline on this text file or shard folder (its train split); a shard
            folder given as --data is used by default.
        max_len: lm: tokens per window (default: the model's context).
        stride: lm: tokens the window advances (default: max_len, disjoint windows; smaller: more context).
        limit: Score only the first N documents / examples / items.
        batch_size: Examples per forward pass.
        dtype: The weights' precision.
        perturbations: classification robustness: typo, word_drop, word_swap, case, punctuation, zh_char
            (default: the English ones, or the Chinese ones for Chinese text).
        perturbation_rate: The fraction of characters / words each perturbation changes.
        seed: Seed of the perturbations and of the few-shot choice.
        bins: Equal-width confidence bins of the calibration error.
        explain: The input whose attention and saliency the report shows (default: the first example).
        lm_eval_tasks: lm-eval tasks run through the lmforge adapter (lmforge_mc, lmforge_text are written
            locally; no hub is reached).
        num_fewshot: Examples put before each multiple-choice question.
        template: multiple-choice: the prompt of an item, with {query}.
        efficiency: Measure latency, throughput, size and memory.
    """
    from lmforge.evaluate.job import EvalSettings, run_evaluation

    settings = EvalSettings(task=task, data=data, validation=validation, task_options=dict(task_options or {}),
                            kn_train=kn_train, max_len=max_len, stride=stride, limit=limit, batch_size=batch_size,
                            dtype=dtype, perturbations=tuple(perturbations) if perturbations else None,
                            perturbation_rate=perturbation_rate, seed=seed, bins=bins, explain=explain,
                            lm_eval_tasks=tuple(lm_eval_tasks or ()), num_fewshot=num_fewshot, template=template,
                            efficiency=efficiency)
    run_evaluation(model, settings, report_dir=report, names=names, title=title)
