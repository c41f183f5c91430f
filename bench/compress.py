"""Compression side by side: quantization, pruning and distillation of one model, measured in one run.

    .venv/bin/python bench/compress.py encoder     # MiniLM sentiment classifier (Rotten Tomatoes snippets)
    .venv/bin/python bench/compress.py decoder     # SmolLM2-135M-Instruct, perplexity on held-out English text
    .venv/bin/python bench/compress.py encoder --work /tmp/compress --quick   # fewer rows and steps (smoke run)

Every compressed model is made by the documented command (`lmforge quantize`, `lmforge prune`, `lmforge
finetune` to recover, `lmforge distill`), each in its own subprocess, into `--work` (a step whose output exists is
not run again). Then one `lmforge evaluate` run scores every model on the same test data (accuracy or perplexity,
size on disk, peak memory, latency), and this script times each model against the uncompressed one interleaved
in this process (forward tokens/s of a batch for the classifier, batch-1 decode tokens/s for the LM), as
shared/BENCHMARKING.md asks. The markdown table goes to stdout (and `--table FILE`), one JSON line per row to
`bench/results/compress.jsonl`, and the evaluation report (with its HTML page) to `WORK/report/`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "compress.jsonl"
LMFORGE = [sys.executable, "-m", "lmforge.cli"]


def run(step: str, args: list[str], done: Path, log_dir: Path) -> float:
    """Run one `lmforge ...` command unless `done` exists; return its wall seconds (0 when skipped)."""
    if done.exists():
        print(f"  {step}: done before ({done})", flush=True)
        return 0.0
    log = log_dir / f"{step}.log"
    print(f"  {step}: lmforge {' '.join(args)}", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(LMFORGE + args, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{step} failed (exit {proc.returncode}); see {log}:\n" + log.read_text()[-3000:])
    print(f"    {seconds:.0f} s", flush=True)
    return seconds


# ------------------------------------------------------------------------------------------------ encoder


def encoder_rows(work: Path, quick: bool) -> list[dict]:
    """Make every compressed classifier; return the rows (name, model path, method, commands' seconds)."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    rt = work / "rt"
    run("data", ["data", "labelled", "rotten-tomatoes", "--out_dir", str(rt)], rt / "test.jsonl", logs)
    train = rt / "train2400.jsonl"
    if not train.exists():
        lines = (rt / "train.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        train.write_text("".join(lines[:600 if quick else 2400]), encoding="utf-8")
    data = ["--data.train", str(train), "--data.val", str(rt / "val.jsonl"), "--data.test", str(rt / "test.jsonl")]
    recipe = ["--config", str(ROOT / "configs/finetune/minilm-sentiment-lora.yaml"),
              "--train.early_stopping_patience", "null", "--evals_per_epoch", "1"]
    epochs = "1" if quick else "2"
    rows, t = [], {}

    def finetune(name: str, model: str, *extra: str) -> Path:
        out = work / name
        t[name] = run(name, ["finetune", *recipe, "--model", model, "--method", "full", "--train.lr", "5e-5",
                             "--epochs", epochs, *data, "--out_dir", str(out), "--overwrite", "true", *extra],
                      out / "result.json", logs)
        return out / "model"

    teacher = finetune("teacher", "all-minilm-l6-v2")
    rows.append(dict(name="fp32", method="fine-tuned MiniLM-L6 (teacher)", model=teacher))
    for scheme in ("int8", "int4"):  # the token embedding (half of MiniLM's weights) in int8 too
        out = work / scheme
        run(scheme, ["quantize", str(teacher), "--to", scheme, "--embedding", "true", "--embedding_scheme", "int8",
                     "--out", str(out)], out / "lmforge.json", logs)
        rows.append(dict(name=scheme, method=f"{scheme} weight-only Linear layers, int8 embedding", model=out))
    for name, how in (("magnitude-50", ["--method", "magnitude", "--sparsity", "0.5"]),
                      ("2:4", ["--method", "2:4"])):
        slug = name.replace(":", "of")
        once = work / f"{slug}-oneshot"
        run(f"{slug}-prune", ["prune", str(teacher), *how, "--out", str(once)], once / "lmforge.json", logs)
        rows.append(dict(name=f"{name} one-shot", method=f"prune {' '.join(how)}", model=once))
        keep = ["--prune.method", how[1]] + (["--prune.sparsity", how[3]] if len(how) > 2 else [])
        recovered = finetune(f"{slug}-recovered", str(once), *keep)
        rows.append(dict(name=f"{name} + recovery", method=f"+ {epochs} epoch(s) fine-tuning, masks kept",
                         model=recovered))
    once = work / "structured-30-oneshot"
    run("structured-prune", ["prune", str(teacher), "--method", "structured", "--heads", "0.3", "--ffn", "0.3",
                             "--importance", "taylor", "--data", str(train), "--out", str(once)],
        once / "lmforge.json", logs)
    rows.append(dict(name="heads+FFN 30 % one-shot", method="structured, Taylor importance", model=once))
    recovered = finetune("structured-30-recovered", str(once))
    rows.append(dict(name="heads+FFN 30 % + recovery", method=f"+ {epochs} epoch(s) full fine-tuning",
                     model=recovered))
    student = work / "distilled"
    t["distilled"] = run("distilled", ["distill", str(teacher), "--task", "classification",
                                       "--distill.student_init", "every-other", *data, "--task_options.max_length", "64",
                                       "--epochs", "1" if quick else "3", "--train.lr", "1e-4",
                                       "--train.batch_size", "32", "--out_dir", str(student), "--overwrite", "true"],
                         student / "result.json", logs)
    rows.append(dict(name="distilled half-depth", method="3 of 6 layers (every other), KD T=2, alpha 0.5",
                     model=student / "model"))
    out = work / "distilled-int8"
    run("distilled-int8", ["quantize", str(student / "model"), "--to", "int8", "--embedding", "true",
                           "--out", str(out)], out / "lmforge.json", logs)
    rows.append(dict(name="distilled + int8", method="the student, int8 (embedding too)", model=out))
    return rows


def encoder_speed(rows: list[dict], texts: list[str], batch: int, quick: bool) -> None:
    """Forward tokens/s of each model at `batch` x <= 64 tokens, interleaved with the fp32 teacher."""
    from lmforge.evaluate.job import load_for_eval, resolve_model
    from lmforge.tokenizers import Tokenizer

    base_ref = resolve_model(str(rows[0]["model"]))
    tok = Tokenizer.from_pretrained(rows[0]["model"])
    enc = tok(texts[:batch], padding=True, truncation=True, max_length=64)
    base = load_for_eval(base_ref, "classification")[0].eval()
    tokens = int(enc["attention_mask"].sum())
    for row in rows:
        model = load_for_eval(resolve_model(str(row["model"])), "classification")[0].eval()
        pairs = common.Interleaved()
        with torch.inference_mode():
            for _ in range(2):
                base(**enc), model(**enc)
            for i in range(5 if quick else 11):
                order = [(model, pairs.a), (base, pairs.b)] if i % 2 == 0 else [(base, pairs.b), (model, pairs.a)]
                for m, times in order:
                    start = time.perf_counter()
                    m(**enc)
                    times.append(time.perf_counter() - start)
        ratio = common.Summary.of(pairs.speedups)
        row["speed"] = {"tokens_per_s": tokens / common.Summary.of(pairs.a).median, "vs_fp32": ratio.as_dict()}
        del model


# ------------------------------------------------------------------------------------------------ decoder


def english_text(work: Path, quick: bool) -> tuple[Path, Path]:
    """Held-out English documents of the default corpus (fortunes, the WEB bible): train.jsonl, test.txt."""
    from lmforge.data.corpus import default_corpus_path

    folder = work / "text"
    if (folder / "test.txt").exists():
        return folder / "train.jsonl", folder / "test.txt"
    folder.mkdir(parents=True, exist_ok=True)
    docs = [json.loads(line) for line in default_corpus_path().read_text(encoding="utf-8").splitlines()]
    english = [d["text"] for d in docs if d.get("source") in ("fortunes", "web-bible")]
    test, train = english[::10][:100 if quick else 400], [t for i, t in enumerate(english) if i % 10]
    (folder / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in train), encoding="utf-8")
    (folder / "test.txt").write_text("\n\n".join(t.strip() for t in test) + "\n", encoding="utf-8")
    return folder / "train.jsonl", folder / "test.txt"


def decoder_rows(work: Path, quick: bool, steps: int) -> list[dict]:
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    train_text, _ = english_text(work, quick)
    base = str(work / "smollm2")  # the GGUF's weights as float32 in lmforge's format (with its tokenizer)
    run("convert", ["convert", "smollm2-135m-instruct", base, "--to", "lmforge"], work / "smollm2" / "lmforge.json",
        logs)
    rows = [dict(name="fp32", method="SmolLM2-135M-Instruct", model=base)]
    tied = ["--embedding", "true", "--embedding_scheme", "int8", "--lm_head", "true"]  # the head shares the rows
    for scheme in ("int8", "int4"):
        out = work / scheme
        run(scheme, ["quantize", base, "--to", scheme, "--out", str(out), *tied], out / "lmforge.json", logs)
        rows.append(dict(name=scheme, method=f"{scheme} Linear layers, int8 embedding = tied head", model=out))
    for name, how in (("magnitude-50", ["--method", "magnitude", "--sparsity", "0.5"]),
                      ("2:4", ["--method", "2:4"]),
                      ("heads+FFN 30 %", ["--method", "structured", "--heads", "0.3", "--ffn", "0.3",
                                          "--importance", "taylor", "--data", str(train_text)])):
        slug = name.replace(":", "of").replace("+", "-").replace(" %", "").replace(" ", "")
        out = work / slug
        run(slug, ["prune", base, *how, "--out", str(out)], out / "lmforge.json", logs)
        rows.append(dict(name=f"{name} one-shot", method=f"prune {' '.join(how[:6])}", model=out))
    tokens = work / "tokens"
    run("tokens", ["data", "prepare", str(train_text), "--tokenizer", base, "--output", str(tokens)],
        tokens / "manifest.json", logs)
    student = work / "distilled"
    run("distilled", ["distill", base, "--task", "clm", "--distill.student_init", "every-other",
                      "--tokens.path", str(tokens), "--tokens.tokenizer", base, "--train.steps", str(steps),
                      "--train.batch_size", "8", "--train.seq_len", "128", "--train.lr", "3e-4",
                      "--train.warmup_steps", "10", "--train.eval_every", str(steps), "--out_dir", str(student),
                      "--overwrite", "true"], student / "result.json", logs)
    rows.append(dict(name="distilled half-depth", method=f"15 of 30 layers, KD T=2, {steps} steps",
                     model=student / "model"))
    out = work / "distilled-int8"
    run("distilled-int8", ["quantize", str(student / "model"), "--to", "int8", "--out", str(out), *tied],
        out / "lmforge.json", logs)
    rows.append(dict(name="distilled + int8", method="the student, int8", model=out))
    return rows


def decoder_speed(rows: list[dict], quick: bool, new_tokens: int = 32) -> None:
    """Batch-1 greedy decode tokens/s of each model, interleaved with the fp32 model (no stop at EOS)."""
    from lmforge.evaluate.job import load_for_eval, resolve_model
    from lmforge.generate import generate
    from lmforge.tokenizers import Tokenizer

    tok = Tokenizer.from_pretrained(resolve_model(rows[0]["model"]).path)
    prompt = torch.tensor([tok.encode("The old man looked at the sea and said", add_special_tokens=False)])

    def decode(model) -> None:
        generate(model, prompt, new_tokens, temperature=0.0)  # no eos_token_id: exactly new_tokens

    base = load_for_eval(resolve_model(rows[0]["model"]), "lm")[0].eval()
    for row in rows:
        model = load_for_eval(resolve_model(str(row["model"])), "lm")[0].eval()
        pairs = common.Interleaved()
        with torch.inference_mode():
            decode(base), decode(model)
            for i in range(3 if quick else 5):
                order = [(model, pairs.a), (base, pairs.b)] if i % 2 == 0 else [(base, pairs.b), (model, pairs.a)]
                for m, times in order:
                    start = time.perf_counter()
                    decode(m)
                    times.append(time.perf_counter() - start)
        row["speed"] = {"tokens_per_s": new_tokens / common.Summary.of(pairs.a).median,
                        "vs_fp32": common.Summary.of(pairs.speedups).as_dict()}
        del model


# ------------------------------------------------------------------------------------------------ table


def evaluate(rows: list[dict], work: Path, kind: str, data: Path, quick: bool) -> dict:
    """One `lmforge evaluate` over every row (in this process): the report's per-model results."""
    from lmforge.evaluate.job import EvalSettings, run_evaluation

    if kind == "encoder":
        settings = EvalSettings(task="classification", data=str(data), perturbations=("typo",),
                                limit=200 if quick else None)
    else:
        settings = EvalSettings(task="lm", data=str(data), max_len=512, limit=50 if quick else None)
    report = run_evaluation([str(r["model"]) for r in rows], settings, report_dir=str(work / "report"),
                            names=[r["name"] for r in rows], title=f"Compression trade-offs ({kind})")
    return report["results"]


def size_bytes(path: Path | str) -> int:
    from lmforge.evaluate.job import resolve_model

    folder = Path(resolve_model(str(path)).path)
    files = [folder] if folder.is_file() else [f for f in folder.rglob("*") if f.suffix in (".safetensors", ".gguf")]
    return sum(f.stat().st_size for f in files)


def table(rows: list[dict], results: dict, kind: str) -> list[str]:
    metric = "accuracy" if kind == "encoder" else "perplexity"
    speed = "forward tok/s (batch 32)" if kind == "encoder" else "decode tok/s (batch 1)"
    head = ["model", "how", "parameters", "checkpoint", "x fp32", "peak RSS", speed, "x fp32 [min-max]", metric,
            "change"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_size, base_metric = None, None
    for row in rows:
        res = results[row["name"]]
        value = (res.get("classification", {}).get("accuracy") if kind == "encoder"
                 else res.get("lm", {}).get("perplexity"))
        eff = res.get("efficiency", {})
        size = size_bytes(row["model"])
        base_size = base_size or size
        base_metric = base_metric if base_metric is not None else value
        if value is None or base_metric is None:
            change = "?"
        elif kind == "encoder":
            change = f"{100 * (value - base_metric):+.1f} points"
        else:
            change = f"{100 * (value / base_metric - 1):+.1f} %"
        ratio = row["speed"]["vs_fp32"]
        row.update(size_bytes=size, metric=value, peak_rss_mib=eff.get("peak_rss_mib"),
                   parameters=eff.get("parameters"))
        lines.append("| " + " | ".join([
            row["name"], row["method"], f"{(eff.get('parameters') or 0) / 1e6:.1f} M", f"{size / 1e6:.1f} MB",
            f"{size / base_size:.2f}", f"{eff.get('peak_rss_mib') or 0:.0f} MiB",
            f"{row['speed']['tokens_per_s']:,.0f}", f"{ratio['median']:.2f} [{ratio['min']:.2f}-{ratio['max']:.2f}]",
            "?" if value is None else f"{value:.4f}" if kind == "encoder" else f"{value:.2f}", change]) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["encoder", "decoder"])
    parser.add_argument("--work", type=Path, default=None, help="folder for the models (default: /tmp/lmforge-compress-KIND)")
    parser.add_argument("--quick", action="store_true", help="smaller data and fewer steps (a smoke run)")
    parser.add_argument("--steps", type=int, default=150, help="decoder: distillation steps (batch 8 x 128 tokens)")
    parser.add_argument("--table", type=Path, default=None)
    args = parser.parse_args()
    common.pin_threads()
    work = args.work or Path(f"/tmp/lmforge-compress-{args.kind}")
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    info = common.machine_info()
    print(f"making the models in {work}", flush=True)
    if args.kind == "encoder":
        rows = encoder_rows(work, args.quick)
        data = work / "rt" / "test.jsonl"
        texts = [json.loads(line)["text"] for line in data.read_text(encoding="utf-8").splitlines()]
        encoder_speed(rows, texts, 32, args.quick)
    else:
        rows = decoder_rows(work, args.quick, 30 if args.quick else args.steps)
        data = english_text(work, args.quick)[1]
        decoder_speed(rows, args.quick)
    results = evaluate(rows, work, args.kind, data, args.quick)
    lines = common.header_lines(info, f"Compression trade-offs: {args.kind}") + [""] + table(rows, results, args.kind)
    lines += ["", f"Report: {work / 'report' / 'report.html'}"]
    text = "\n".join(lines)
    print(text)
    if args.table:
        args.table.write_text(text + "\n", encoding="utf-8")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with open(RESULTS, "a", encoding="utf-8") as f:
        for row in rows:
            model = Path(row["model"])  # relative to the work folder (no machine paths in the results)
            row = {**row, "model": f"WORK/{model.relative_to(work)}" if model.is_relative_to(work) else str(model)}
            f.write(json.dumps({"bench": "compress", "kind": args.kind, **info, **row}) + "\n")


if __name__ == "__main__":
    main()
