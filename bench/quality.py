"""What quantization costs in quality: perplexity and top-1 agreement per weight format, lmforge vs llama.cpp.

    .venv/bin/python bench/quality.py                    # SmolLM2 + the demo model (if `make demo` ran), ~10 min
    .venv/bin/python bench/quality.py --quick            # 4 chunks per text
    .venv/bin/python bench/quality.py --models smollm2 --chunks 20

Perplexity follows llama.cpp's `llama-perplexity` exactly, so the two columns measure the same thing: the
text is tokenized once (with the tokenizer's bos), cut into chunks of 512 tokens, each chunk's first token
replaced by bos (when the tokenizer adds one), and only the second half of each chunk is scored (every
position sees at least 256 tokens of context). Texts: *botchan*, an English novel (Project Gutenberg, from the
sentencepiece sdist of the offline assets), and the demo corpus' validation documents (the held-back split
`make demo` prepares; English and Chinese). Top-1 agreement: the share of scored positions where the format's
argmax equals the fp32 model's (teacher-forced). The llama.cpp column runs `llama-perplexity` on SmolLM2
requantised from F32 with `llama-quantize --pure` (every matrix in the type, as in the lmforge rows with the
head quantized); it needs `bench/llama_cpp.sh`. One JSON line per row goes to `bench/results/quality.jsonl`.
"""

from __future__ import annotations

import copy
import math
import re
import subprocess
import tarfile
import time
from pathlib import Path

import common
import torch
from generate import LlamaCpp
from inference import llama_file

# row -> (QuantConfig fields, llama.cpp type with the same matrices, or None)
ROWS: dict[str, tuple[dict | None, str | None]] = {
    "fp32": (None, "F32"),
    "int8 (f32 activations)": ({"scheme": "int8", "lm_head": True}, None),
    "q8_0": ({"scheme": "q8_0", "lm_head": True}, "Q8_0"),
    "int4 g32 sym (Q4_0)": ({"scheme": "int4", "group_size": 32, "lm_head": True}, "Q4_0"),
    "int4 g32 asym (Q4_1)": ({"scheme": "int4", "group_size": 32, "symmetric": False, "lm_head": True}, "Q4_1"),
    "int4 g32 sym, head f32": ({"scheme": "int4", "group_size": 32}, None),
    "int4 g64 sym, head f32": ({"scheme": "int4", "group_size": 64}, None),  # 128 does not divide 576 or 192
}
CTX = 512


def botchan() -> str:
    """The novel's text without the Project Gutenberg header and footer."""
    from lmforge.assets import cached

    with tarfile.open(cached("sentencepiece-0.2.1.tar.gz")) as tar:
        text = tar.extractfile("sentencepiece-0.2.1/test/botchan.txt").read().decode("utf-8")
    start = re.search(r"\*\*\* ?START OF.*\n", text)
    end = re.search(r"\*\*\* ?END OF", text)
    return text[start.end() if start else 0: end.start() if end else len(text)].strip()


def demo_validation(demo_dir: Path) -> str | None:
    """The demo's validation documents as text (decoded from its token shards), or None before `make demo`."""
    from lmforge.data import TokenDataset
    from lmforge.tokenizers import Tokenizer

    if not (demo_dir / "data").is_dir():
        return None
    tok = Tokenizer.from_pretrained(demo_dir / "tokenizer")
    stream = TokenDataset(demo_dir / "data", "val", tok).array().tolist()
    docs, doc = [], []
    for t in stream:
        if t == tok.eos_id:
            if doc:
                docs.append(tok.decode(doc))
            doc = []
        else:
            doc.append(t)
    if doc:
        docs.append(tok.decode(doc))
    return "\n\n".join(d.strip() for d in docs if d.strip())


def chunks_of(tokenizer, text: str, n_chunks: int) -> torch.Tensor:
    """(chunks, CTX) token ids the way llama-perplexity makes them."""
    ids = tokenizer.encode(text)
    ids = list(ids.ids if hasattr(ids, "ids") else ids)
    n = min(n_chunks, len(ids) // CTX)
    if n == 0:
        raise SystemExit(f"the text has {len(ids)} tokens, fewer than one chunk of {CTX}")
    out = torch.tensor(ids[: n * CTX]).view(n, CTX)
    if tokenizer.bos_id is not None and ids and ids[0] == tokenizer.bos_id:
        out[:, 0] = tokenizer.bos_id
    return out


@torch.inference_mode()
def score(model, chunks: torch.Tensor) -> tuple[float, torch.Tensor]:
    """(perplexity, argmax ids of the scored positions) over the second half of every chunk."""
    first = CTX // 2
    nll, argmax = [], []
    for row in chunks:
        logits = model(row[None])[0, first: CTX - 1].float()  # (255, V) predicting row[first+1:]
        targets = row[first + 1:]
        nll.append(torch.nn.functional.cross_entropy(logits, targets, reduction="none"))
        argmax.append(logits.argmax(-1))
    return math.exp(torch.cat(nll).mean().item()), torch.cat(argmax)


def llama_perplexity(binary: Path, model: Path, text_file: Path, n_chunks: int, threads: int) -> float | None:
    r = subprocess.run([str(binary), "-m", str(model), "-f", str(text_file), "-c", str(CTX), "--chunks",
                        str(n_chunks), "-t", str(threads), "-b", str(CTX)], capture_output=True, text=True)
    found = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    if r.returncode != 0 or not found:
        print(f"llama-perplexity on {model.name} failed ({r.returncode}): {(r.stderr or r.stdout)[-400:]}")
        return None
    return float(found.group(1))


def quantized(model, fields: dict | None):
    from lmforge.compress.quantize import QuantConfig, quantize_model

    m = copy.deepcopy(model)
    if fields is not None:
        quantize_model(m, QuantConfig(**fields))
    return m.eval()


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.RESULTS_DIR / "quality.jsonl")
    parser.add_argument("--models", nargs="+", choices=("smollm2", "demo"), default=["smollm2", "demo"])
    parser.add_argument("--chunks", type=int, default=None, help="chunks of 512 tokens per text (default 16)")
    parser.add_argument("--demo-dir", type=Path, default=common.BENCH_DIR.parent / "runs" / "demo")
    parser.add_argument("--no-llama-cpp", action="store_true")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS), help="formats (fp32 always)")
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    n_chunks = args.chunks or (4 if args.quick else 16)

    from lmforge.assets import smollm2_gguf
    from lmforge.interop.gguf import load_gguf, load_gguf_tokenizer
    from lmforge.interop.native import load_any
    from lmforge.tokenizers import Tokenizer

    info = common.machine_info()
    llama = LlamaCpp(None, None, "skipped") if args.no_llama_cpp else LlamaCpp.find()
    perplexity_bin = None if not llama.ok else next(
        (p for p in (llama.bench.parent / "llama-perplexity",) if p.is_file()), None)
    texts = {"botchan": botchan()}
    demo_text = demo_validation(args.demo_dir)
    notes = []
    if demo_text is None:
        notes.append(f"no demo run in {args.demo_dir} (run `make demo`): demo texts/model skipped")
    else:
        texts["demo val"] = demo_text
    if perplexity_bin is None:
        notes.append("llama-perplexity not built (bench/llama_cpp.sh): llama.cpp column skipped")
    text_files = {}
    for name, text in texts.items():
        text_files[name] = common.RESULTS_DIR.parent.parent / ".cache" / f"quality-{name.replace(' ', '-')}.txt"
        text_files[name].write_text(text, encoding="utf-8")

    models = {}
    if "smollm2" in args.models:
        models["SmolLM2-135M"] = (load_gguf(smollm2_gguf()), load_gguf_tokenizer(smollm2_gguf()))
    if "demo" in args.models and demo_text is not None:
        hf = args.demo_dir / "run" / "hf"
        models["demo model"] = (load_any(str(hf), task="causal-lm").eval(),
                                Tokenizer.from_pretrained(args.demo_dir / "tokenizer"))

    rows = []
    for model_name, (base, tok) in models.items():
        chunks = {name: chunks_of(tok, text, n_chunks) for name, text in texts.items()}
        reference = {}
        for row, (fields, qtype) in ROWS.items():
            if row != "fp32" and row not in args.rows:
                continue
            t = time.perf_counter()
            model = quantized(base, fields)
            rec = {"model": model_name, "row": row, "config": fields}
            for text_name, ids in chunks.items():
                ppl, top1 = score(model, ids)
                if fields is None:
                    reference[text_name] = top1
                rec[f"ppl {text_name}"] = ppl
                rec[f"top1 {text_name}"] = (top1 == reference[text_name]).float().mean().item()
                rec[f"tokens {text_name}"] = top1.numel()
                if perplexity_bin is not None and qtype is not None and model_name == "SmolLM2-135M":
                    f32 = llama_file(llama, smollm2_gguf(), "F32")
                    path = f32 if qtype == "F32" else llama_file(llama, f32, qtype)
                    rec[f"llama.cpp ppl {text_name}"] = llama_perplexity(perplexity_bin, path, text_files[text_name],
                                                                         ids.shape[0], args.threads)
            rows.append(rec)
            print(f"[{model_name}] {row}: " + ", ".join(f"{k} {v:.4g}" for k, v in rec.items()
                                                         if isinstance(v, float)) + f" ({time.perf_counter() - t:.0f} s)",
                  flush=True)

    print()
    print("\n".join(common.header_lines(info, f"Quantization quality ({n_chunks} chunks of {CTX} per text, "
                                              "second halves scored)")))
    for note in notes:
        print(f"- note: {note}")
    print()
    headers = ["model", "format"]
    for text_name in texts:
        headers += [f"ppl {text_name}", f"llama.cpp ppl {text_name}", f"top-1 = fp32 ({text_name})"]
    table = []
    for r in rows:
        cells = [r["model"], r["row"]]
        for text_name in texts:
            if f"ppl {text_name}" not in r:
                cells += ["—"] * 3
                continue
            cpp = r.get(f"llama.cpp ppl {text_name}")
            cells += [f"{r[f'ppl {text_name}']:.3f}", f"{cpp:.3f}" if cpp else "—", f"{r[f'top1 {text_name}']:.1%}"]
        table.append(cells)
    print(common.markdown_table(headers, table))
    if not args.no_out:
        base_rec = {"run": common.run_id(), "bench": "quality", "machine": info, "chunks": n_chunks, "notes": notes}
        print(f"\n{len(rows)} JSON lines appended to {common.append_jsonl(args.out, [dict(base_rec, **r) for r in rows])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
