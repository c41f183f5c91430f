"""lm-evaluation-harness over lmforge models: the `lmforge` model type, its command line, and local tasks.

`LMForgeLM` is an `lm_eval` language model (`loglikelihood`, `loglikelihood_rolling`, `generate_until`)
over any lmforge causal LM. It tokenizes as lm-eval's Hugging Face backend (`hf`) does and scores with
`lmforge.evaluate.lm.loglikelihood_tokens`, so on the same weights its accuracies and perplexities equal
those of `--model hf`. Importing this module makes `--model lmforge` known to lm-eval (lm-eval 0.4 finds
models only in its own registry, not through package entry points); `main` is lm-eval's command line
with it:

    python -m lmforge.evaluate.harness run --model lmforge --model_args model=smollm2-135m-instruct \\
        --tasks lmforge_mc --include_path DIR

From Python: `lm_eval.simple_evaluate(model=LMForgeLM(model=model, tokenizer=tokenizer), tasks=[...],
task_manager=lm_eval.tasks.TaskManager(include_path=write_tasks(DIR)))`.

`write_tasks(folder)` writes two tasks that need no dataset hub, as lm-eval YAML files and JSON-lines
data: `lmforge_mc` (multiple choice, `acc` and `acc_norm`, items of `lmforge.data.synthetic_mc`; few-shot
examples come from its validation split) and `lmforge_text` (`loglikelihood_rolling` over texts, with
`word_perplexity`, `byte_perplexity` and `bits_per_byte`, as lm-eval's `wikitext`). Both carry the tag
`lmforge`, so `--tasks lmforge` runs the two.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lm_eval.api.model import TemplateLM

from lmforge.evaluate.errors import EvaluationError

if TYPE_CHECKING:
    from lm_eval.api.instance import Instance

    from lmforge.models.model import CausalLM
    from lmforge.tokenizers import Tokenizer

log = logging.getLogger(__name__)

MODEL_NAME = "lmforge"  # the name of the model type on lm-eval's command line: --model lmforge
DEFAULT_BATCH_SIZE = 16  # for batch_size=auto: lmforge does not probe memory
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's HF backend's default
MC_TASK, TEXT_TASK, TAG = "lmforge_mc", "lmforge_text", "lmforge"
# gen_kwargs that map onto lmforge's SamplingParams (lm-eval's own keys are normalised first)
_SAMPLING_KEYS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "seed")


class LMForgeLM(TemplateLM):
    """An lmforge causal LM and its tokenizer as an lm-eval language model (`--model lmforge`).

    Model args: `model` (a named model such as `smollm2-135m-instruct`, an HF or lmforge folder, a `.gguf`
    file; or a loaded `CausalLM`, with `tokenizer` then a `Tokenizer` or its path), `dtype` (float32,
    bfloat16; when loading), `quantize` (int8, q8_0, int4; when loading), `threads`, `batch_size` (an integer;
    "auto" is 16), `max_length` (the scoring window, default the model's context), `max_gen_toks` (default
    256), `device` (cpu, cuda, ...; a CUDA device falls back to the CPU when there is none, as lm-eval's
    default is cuda:0), `add_bos_token` and `prefix_token_id` (as the `hf` backend's). For a model object,
    `dtype` is ignored and the model stays on its device; `max_batch_size` (which lm-eval passes to every
    model) is ignored.

    Tokenization follows the `hf` backend: text is encoded with the tokenizer's own special tokens
    (`add_bos_token` overrides them; none when the text already starts with the BOS text), an empty
    context is the prefix token (BOS, else EOS), and a continuation's tokens are those of
    context + continuation after the context's.
    """

    def __init__(self, model: str | CausalLM | None = None, tokenizer: str | Path | Tokenizer | None = None,
                 dtype: str = "float32", batch_size: int | str = DEFAULT_BATCH_SIZE, max_length: int | None = None,
                 max_gen_toks: int = DEFAULT_MAX_GEN_TOKS, quantize: str | None = None, threads: int | None = None,
                 device: str | None = None, add_bos_token: bool | None = None, prefix_token_id: int | None = None,
                 max_batch_size: int | None = None, **unknown: Any) -> None:
        super().__init__()
        if unknown:
            raise EvaluationError(f"unknown model_args for --model {MODEL_NAME}: {', '.join(sorted(unknown))} "
                                  "(known: model, tokenizer, dtype, batch_size, max_length, max_gen_toks, "
                                  "quantize, threads, device, add_bos_token, prefix_token_id)")
        if model is None:
            raise EvaluationError(f"--model {MODEL_NAME} needs model_args model=NAME_OR_PATH (a named model, "
                                  "an HF or lmforge folder, or a .gguf file)")
        self._model, self.tokenizer, self._name = _model_and_tokenizer(model, tokenizer, dtype, quantize, threads)
        self._device = _place(self._model, device, loaded=isinstance(model, (str, Path)))
        limit = self._model.cfg.max_seq_len
        if max_length is not None and not (_is_int(max_length) and 1 <= max_length <= limit):
            raise EvaluationError(f"max_length={max_length!r} must be an integer from 1 to the model's "
                                  f"max_seq_len={limit}")
        if not (_is_int(max_gen_toks) and max_gen_toks >= 1):
            raise EvaluationError(f"max_gen_toks={max_gen_toks!r} must be an integer >= 1")
        self._max_length = max_length or limit
        self._max_gen_toks = max_gen_toks
        self.batch_size = _batch_size(batch_size)
        self.add_bos_token = add_bos_token
        self.custom_prefix_token_id = prefix_token_id
        if self.tokenizer.eos_id is None and self.tokenizer.bos_id is None and prefix_token_id is None:
            raise EvaluationError("the tokenizer has neither an EOS nor a BOS token; give prefix_token_id=ID, the "
                                  "token that starts a text whose first token is scored")

    # ------------------------------------------------------------------------- what lm-eval asks for

    @property
    def model(self) -> CausalLM:
        return self._model

    @property
    def eot_token_id(self) -> int:
        """The end-of-text id: the tokenizer's EOS (BOS when it has none)."""
        eos = self.tokenizer.eos_id
        return eos if eos is not None else self.tokenizer.bos_id

    @property
    def prefix_token_id(self) -> int:
        """The id an empty context (and a rolling window's first token) is predicted from: BOS, else EOS."""
        if self.custom_prefix_token_id is not None:
            return self.custom_prefix_token_id
        bos = self.tokenizer.bos_id
        return bos if bos is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        """Tokens the model sees at most: the scoring window."""
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        """A name for lm-eval's caches of chat-templated requests: the model name, or the tokenizer's hash."""
        return self._name.replace("/", "__") if self._name else f"lmforge-{self.tokenizer.fingerprint()[:16]}"

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len: int | None = None,
                   **kwargs: Any) -> list[int]:
        """Token ids of `string`; None: the tokenizer's own special tokens (or `add_bos_token`), none when the
        text already starts with the prefix token's text (as the `hf` backend)."""
        if add_special_tokens is None:
            add_special_tokens = True if self.add_bos_token is None else bool(self.add_bos_token)
            prefix = self.tokenizer.decode([self.prefix_token_id], skip_special_tokens=False)
            if prefix and string.startswith(prefix):
                add_special_tokens = False
        ids = self.tokenizer.encode(string, add_special_tokens=add_special_tokens)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, tokens: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(tokens), skip_special_tokens=skip_special_tokens)

    def _loglikelihood_tokens(self, requests: list[tuple[tuple[str, str] | None, list[int], list[int]]],
                              disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """(log p, greedy) of each (key, context ids, continuation ids), by `lmforge.evaluate.lm`."""
        from lmforge.evaluate.lm import loglikelihood_tokens

        results = loglikelihood_tokens(self._model, [(context, continuation) for _, context, continuation in requests],
                                       batch_size=self.batch_size, max_len=self.max_length,
                                       progress=not disable_tqdm)
        for (key, _, _), answer in zip(requests, results):
            if key is not None:
                self.cache_hook.add_partial("loglikelihood", key, answer)
        return results

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Log p of each whole text: disjoint windows of `max_length` tokens, the first one after the prefix
        token, each token scored once (lm-eval's `get_rolling_token_windows` with `context_len=1`)."""
        from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

        windows, owners = [], []
        for i, request in enumerate(requests):
            (text,) = request.args
            ids = self.tok_encode(text)
            for window in get_rolling_token_windows(ids, self.prefix_token_id, self.max_length, context_len=1):
                windows.append((None, *make_disjoint_window(window)))  # None: no per-window cache entry
                owners.append(i)
        totals = [0.0] * len(requests)
        for i, (score, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm)):
            totals[i] += score
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """The completion of each context, cut at the first of its `until` strings (and at EOS).

        Requests with the same gen_kwargs run together on `lmforge.generate.engine.Engine` (continuous
        batching; each stops at its stop strings). Greedy unless `do_sample` / `temperature` say otherwise;
        `max_gen_toks` new tokens at most; the context is cut from the left to leave them room.
        """
        from lm_eval.models.utils import postprocess_generated_text

        results: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            if not isinstance(gen_kwargs, dict):
                raise EvaluationError(f"generate_until request {i}: gen_kwargs must be a dict, got "
                                      f"{type(gen_kwargs).__name__}")
            groups.setdefault(json.dumps(gen_kwargs, sort_keys=True, default=str), []).append(i)
        eot = self.eot_token_id
        eos_text = self.tok_decode([eot], skip_special_tokens=False) if eot is not None else None
        done = 0
        for indices in groups.values():
            params, until = self._sampling(requests[indices[0]].args[1], eos_text)
            prompts = [self._prompt_ids(requests[i].args[0], params.max_tokens) for i in indices]
            texts = self._generate(prompts, params, disable_tqdm, done, len(requests))
            done += len(indices)
            for i, text in zip(indices, texts):
                results[i] = postprocess_generated_text(text, until, None)
                self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
        return results

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The prompt of `chat_history` in the tokenizer's chat template (ChatML when it has none); without
        `add_generation_prompt`, the last (assistant) message is left open to be continued."""
        from lmforge.generate.chat import apply_chat_template

        text = apply_chat_template(self.tokenizer, chat_history, add_generation_prompt=add_generation_prompt)
        if not add_generation_prompt and chat_history:  # transformers' continue_final_message
            final = str(chat_history[-1].get("content", "")).strip()
            at = text.rfind(final) if final else -1
            if at != -1:
                text = text[:at + len(final)]
        return text

    def chat_template(self, chat_template: bool | str = False) -> str | None:
        """The chat template applied when lm-eval is asked to apply one (ChatML when the tokenizer has none)."""
        from lmforge.generate.chat import template_of

        return template_of(self.tokenizer) if chat_template else None

    def get_model_info(self) -> dict:
        """What lm-eval records about the model in its results."""
        return {"model_name": self._name or type(self._model).__name__,
                "model_num_parameters": self._model.num_parameters(), "model_dtype": str(self._model.dtype)}

    # ---------------------------------------------------------------------------------- generation

    def _sampling(self, gen_kwargs: dict, eos_text: str | None):
        """(SamplingParams, the `until` strings with the EOS text) of a request's gen_kwargs."""
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs

        from lmforge.generate.sampling import MAX_STOP_LENGTH, MAX_STOP_STRINGS, SamplingParams

        kwargs = dict(normalize_gen_kwargs(dict(gen_kwargs), self.max_gen_toks))
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
        max_tokens = int(kwargs.pop("max_gen_toks"))
        do_sample = bool(kwargs.pop("do_sample", False))
        kwargs.pop("max_length", None)  # the hf backend's prompt + generation; max_gen_toks bounds ours
        if kwargs.get("num_beams", 1) == 1:
            kwargs.pop("num_beams", None)
        unknown = sorted(k for k in kwargs if k not in _SAMPLING_KEYS)
        if unknown:
            raise EvaluationError(f"gen_kwargs {', '.join(unknown)} are not supported by --model {MODEL_NAME} "
                                  f"(supported: until, max_gen_toks, do_sample, {', '.join(_SAMPLING_KEYS)})")
        if not do_sample:
            kwargs["temperature"] = 0.0
        stops = tuple(s for s in until if s and len(s) <= MAX_STOP_LENGTH)[:MAX_STOP_STRINGS]  # the rest: cut after
        try:
            params = SamplingParams(max_tokens=max_tokens, stop=stops, **{k: v for k, v in kwargs.items()
                                                                          if v is not None})
            params.validate()
        except (TypeError, ValueError) as err:
            raise EvaluationError(f"gen_kwargs {gen_kwargs}: {err}") from None
        if max_tokens >= self.max_length:
            raise EvaluationError(f"max_gen_toks={max_tokens} leaves no room for the prompt in the model's "
                                  f"max_length={self.max_length} tokens")
        return params, until

    def _prompt_ids(self, context: str, max_tokens: int) -> list[int]:
        """The context's ids, cut from the left so `max_tokens` new ones fit `max_length`."""
        ids = self.tok_encode(context)[-(self.max_length - max_tokens):]
        return ids or [self.prefix_token_id]

    def _generate(self, prompts: list[list[int]], params, disable_tqdm: bool, done: int, total: int) -> list[str]:
        """The texts generated after `prompts` (stop strings left out), batched on one engine."""
        from tqdm.auto import tqdm

        from lmforge.generate.engine import Engine

        max_len = min(self.max_length, max(len(p) for p in prompts) + params.max_tokens)
        engine = Engine(self._model, self.tokenizer, max_batch=min(self.batch_size, len(prompts)), max_len=max_len)
        for j, ids in enumerate(prompts):
            engine.add_request(str(j), ids, params)
        parts: list[list[str]] = [[] for _ in prompts]
        bar = tqdm(total=total, initial=done, desc="generate_until", disable=disable_tqdm)
        while engine.has_unfinished():
            for out in engine.step():
                parts[int(out.request_id)].extend(event.text for event in out.events)
                bar.update(int(out.finished))
        bar.close()
        return ["".join(p) for p in parts]


# -------------------------------------------------------------------------------------- model loading

def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _batch_size(value: int | str) -> int:
    """An integer batch size from a model arg (lm-eval's command line passes a string; auto is 16)."""
    if isinstance(value, str) and value.startswith("auto"):
        log.info("batch_size=%s: lmforge uses %d", value, DEFAULT_BATCH_SIZE)
        return DEFAULT_BATCH_SIZE
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if not _is_int(value) or value < 1:
        raise EvaluationError(f"batch_size={value!r} must be a positive integer or 'auto'")
    return value


def _model_and_tokenizer(model: Any, tokenizer: Any, dtype: str, quantize: str | None,
                         threads: int | None) -> tuple[CausalLM, Tokenizer, str | None]:
    """The causal LM, its tokenizer and the model's name (None for a model object)."""
    from lmforge.models.model import CausalLM
    from lmforge.tokenizers import Tokenizer

    if isinstance(model, (str, Path)):
        from lmforge.generate.console import OptionError, load

        try:
            loaded, own_tokenizer = load(str(model), dtype=dtype, threads=threads, quantize=quantize)
        except OptionError as err:
            raise EvaluationError(f"model_args: {err}") from None
        if tokenizer is not None:
            own_tokenizer = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_pretrained(tokenizer)
        return loaded, own_tokenizer, str(model)
    if not isinstance(model, CausalLM):
        raise EvaluationError(f"model must be a causal LM (lmforge CausalLM) or its name or path, not "
                              f"{type(model).__name__}: lm-eval scores text with a decoder's next-token head")
    if tokenizer is None:
        raise EvaluationError("a model object needs its tokenizer: LMForgeLM(model=model, tokenizer=tokenizer)")
    if quantize is not None:
        raise EvaluationError("quantize applies when loading a model by name; quantize a model object first "
                              "(lmforge.compress.quantize.quantize_model)")
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    if not isinstance(tokenizer, Tokenizer):
        tokenizer = Tokenizer.from_pretrained(tokenizer)
    return model.eval(), tokenizer, None


def _place(model: CausalLM, device: str | None, loaded: bool):
    """Move a model we loaded to `device` (the CPU when CUDA is asked for but absent); a given model stays."""
    import torch

    if not loaded or device is None:
        return model.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.info("device=%s: no CUDA device here, using the CPU", device)
        device = "cpu"
    model.to(torch.device(device))
    return model.device


# --------------------------------------------------------------------------------------- local tasks

def write_tasks(folder: str | Path, texts: Sequence[str] | None = None, n_test: int = 200,
                n_validation: int = 50, seed: int = 0) -> Path:
    """Write the `lmforge_mc` and `lmforge_text` tasks (YAML + JSON lines) into `folder`; the folder.

    `lmforge_mc`: `n_validation` + `n_test` distinct items of `lmforge.data.synthetic_mc.generate(seed)`, the
    first `n_validation` as the validation split (few-shot examples come from it) and the rest as the test
    split. `lmforge_text`: one document per text of `texts` (default: eight paragraphs of
    `synthetic_mc.paragraphs(8, seed)`). Data paths in the YAML files are absolute, and the datasets
    library's cache for them is `folder/.datasets_cache`, so nothing is written elsewhere. Pass the folder
    as lm-eval's `--include_path` (or `TaskManager(include_path=...)`).
    """
    import yaml

    from lmforge.data import synthetic_mc

    for name, value, low in (("n_test", n_test, 1), ("n_validation", n_validation, 0), ("seed", seed, 0)):
        if not _is_int(value) or value < low:
            raise EvaluationError(f"{name}={value!r} must be an integer >= {low}")
    if texts is None:
        texts = synthetic_mc.paragraphs(8, seed)
    if isinstance(texts, str):
        raise EvaluationError("texts must be a list of strings, not one string: wrap it in a list")
    texts = list(texts)
    problems = [f"texts[{i}] is {'empty' if isinstance(t, str) else type(t).__name__}"
                for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if not texts or problems:
        raise EvaluationError("lmforge_text needs non-empty strings: " + ("; ".join(problems) or "texts is empty"))
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    cache = str(folder / ".datasets_cache")
    items = synthetic_mc.generate(n_validation + n_test, seed)
    files = {"validation": folder / f"{MC_TASK}_validation.jsonl", "test": folder / f"{MC_TASK}_test.jsonl"}
    _write_jsonl(files["validation"], items[:n_validation])
    _write_jsonl(files["test"], items[n_validation:])
    text_file = folder / f"{TEXT_TASK}.jsonl"
    _write_jsonl(text_file, [{"text": t} for t in texts])

    splits = {"test_split": "test"}
    if n_validation:
        splits.update(validation_split="validation", fewshot_split="validation")
    mc = {
        "task": MC_TASK, "tag": [TAG], "dataset_path": "json",
        "dataset_kwargs": {"data_files": {s: str(p) for s, p in files.items() if s == "test" or n_validation},
                           "cache_dir": cache},
        "output_type": "multiple_choice", **splits,
        "doc_to_text": "{{query}}", "doc_to_choice": "{{choices}}", "doc_to_target": "{{answer}}",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0, "generator": f"lmforge.data.synthetic_mc.generate(seed={seed})"},
    }
    text = {
        "task": TEXT_TASK, "tag": [TAG], "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(text_file)}, "cache_dir": cache},
        "output_type": "loglikelihood_rolling", "test_split": "test",
        "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m, "aggregation": a, "higher_is_better": False} for m, a in (
            ("word_perplexity", "weighted_perplexity"), ("byte_perplexity", "weighted_perplexity"),
            ("bits_per_byte", "bits_per_byte"))],
        "metadata": {"version": 1.0},
    }
    for config in (mc, text):
        (folder / f"{config['task']}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True),
                                                      encoding="utf-8")
    return folder


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------- registration and CLI

def register() -> None:
    """Make `--model lmforge` known to lm-eval (done on import; idempotent).

    lm-eval's registry fills itself with its own models only while it is empty, so they are added first;
    ours is registered by its import path, which stays the same when this file runs as `__main__`.
    """
    import lm_eval.models  # noqa: F401  (lm-eval's own model names, before ours)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target="lmforge.evaluate.harness:LMForgeLM")


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line (`run`, `ls`, `validate`; a bare `--model ...` means `run`) with `--model lmforge`,
    plus `write-tasks FOLDER [--n_test N] [--n_validation N] [--seed S]` (see `write_tasks`)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["write-tasks"]:
        import argparse

        parser = argparse.ArgumentParser(prog="lmforge-lm-eval write-tasks",
                                         description="Write the lmforge_mc and lmforge_text tasks into FOLDER.")
        parser.add_argument("folder")
        parser.add_argument("--n_test", type=int, default=200)
        parser.add_argument("--n_validation", type=int, default=50)
        parser.add_argument("--seed", type=int, default=0)
        args = parser.parse_args(argv[1:])
        print(write_tasks(args.folder, n_test=args.n_test, n_validation=args.n_validation, seed=args.seed))
        return
    from lm_eval._cli import HarnessCLI
    from lm_eval.utils import setup_logging

    register()
    setup_logging()
    cli = HarnessCLI()
    saved, sys.argv = sys.argv, ["lmforge-lm-eval", *argv]  # HarnessCLI reads sys.argv
    try:
        cli.execute(cli.parse_args())
    except Exception as err:  # bad input (a model that is not there, a bad model_arg): one line, not a traceback
        ours = isinstance(err, ValueError) and type(err).__module__.startswith("lmforge.")
        if not (ours or isinstance(err, FileNotFoundError)):
            raise
        print(f"lmforge-lm-eval: error: {' '.join(str(err).split())}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        sys.argv = saved


register()

__all__ = ["LMForgeLM", "MC_TASK", "MODEL_NAME", "TAG", "TEXT_TASK", "main", "register", "write_tasks"]

if __name__ == "__main__":
    from lmforge.evaluate.harness import main as _main  # the module lm-eval's registry imports, not a copy

    _main()
