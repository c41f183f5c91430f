"""Decode speed per weight format on SmolLM2-135M: lmforge's kernels vs llama.cpp at equal precision, CPU.

    .venv/bin/python bench/inference.py                  # every format, ~10 min
    .venv/bin/python bench/inference.py --quick          # smoke run: 8 new tokens, 64-token prefill, 2 repeats
    .venv/bin/python bench/inference.py --formats fp32 q4_0 --compile
    bench/llama_cpp.sh                                   # builds the llama.cpp column (else it is skipped)

Each format is the same weights in the same layout on both sides, the LM head included (SmolLM2 ties it to
the embedding; llama.cpp then multiplies by `token_embd`, which `llama-quantize --pure` puts in the same type
as every other matrix):

| format | lmforge (`lmforge.compress.quantize`)          | llama.cpp |
|--------|------------------------------------------------|-----------|
| fp32   | scheme f32 (our f32 kernel)                    | F32       |
| bf16   | scheme bf16 (bf16 weights, f32 activations)    | BF16      |
| int8   | scheme int8 (per-row scale, f32 activations)   | Q8_0 (the nearest it has) |
| q8_0   | scheme q8_0 (activations quantized to Q8_0)    | Q8_0      |
| q4_0   | scheme int4, group 32, symmetric               | Q4_0      |
| q4_1   | scheme int4, group 32, asymmetric              | Q4_1      |

and `torch` is the model as it loads (plain `nn.Linear`, PyTorch's own f32 GEMV), the starting point.
Rows: decode b1 (tokens/s of 128 new tokens after a 32-token prompt, greedy, eos ignored), decode b8 (the
same prompt in 8 rows; llama-bench has none), prefill 512. lmforge runs the engine's raw loop (`make_cache`
+ `prefill` + `decode_step`; `--compile` decodes b1 with the `compile_decode` forward too, and keeps an eager
b1 row; b8 and prefill stay eager). The lmforge calls of all
formats run interleaved in this process with llama-bench between them, the order rotating each repeat;
ratios are medians of per-repeat ratios (shared/BENCHMARKING.md). The read bandwidth is measured in the same
run; "% of limit" is tokens/s over bandwidth / bytes of weights read per token. One JSON line per row goes to
`bench/results/inference.jsonl`. Never gates a test.
"""

from __future__ import annotations

import copy
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import common
import torch
from generate import LLAMA_DIR, PROMPT_TEXT, LlamaCpp, Plan, engine_loop, read_bandwidth, run_interleaved

# format -> (QuantConfig fields or None for the model as loaded, llama.cpp type)
FORMATS: dict[str, tuple[dict | None, str | None]] = {
    "torch": (None, None),
    "fp32": ({"scheme": "f32"}, "F32"),
    "bf16": ({"scheme": "bf16"}, "BF16"),
    "int8": ({"scheme": "int8"}, "Q8_0"),
    "q8_0": ({"scheme": "q8_0"}, "Q8_0"),
    "q4_0": ({"scheme": "int4", "group_size": 32, "symmetric": True}, "Q4_0"),
    "q4_1": ({"scheme": "int4", "group_size": 32, "symmetric": False}, "Q4_1"),
}


def make_plan(args) -> Plan:
    plan = Plan(warmup=1, repeats=2, new_tokens=8, prefill=64) if args.quick else Plan(repeats=3)
    if args.repeats is not None:
        plan.repeats = args.repeats
    return plan


def prepared(model, fmt: str):
    """A copy of `model` in format `fmt`, projections fused (as `lmforge generate` runs it)."""
    from lmforge.compress.quantize import QuantConfig, quantize_model

    fields, _ = FORMATS[fmt]
    m = copy.deepcopy(model)
    if fields is not None:
        quantize_model(m, QuantConfig(**fields, lm_head=True))
    return m.fuse_projections().eval()


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes one decode step reads: every projection's weight as stored (packed or not), the LM head included;
    not the embedding table (one row is looked up)."""
    seen, total = set(), 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            tensors = [module.weight]
        elif hasattr(module, "packed") and hasattr(module, "in_features"):  # QuantLinear
            tensors = list(module.packed().values())
        else:
            continue
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.numel() * t.element_size()
    return total


class Loop:
    """The engine's raw greedy loop over one prepared model (optionally with the compiled decode forward)."""

    def __init__(self, model, compiled: bool) -> None:
        from lmforge.generate.engine import compile_decode

        self.model = model
        self.forward = compile_decode(model) if compiled else None

    def __call__(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        return engine_loop(self.model, ids, n, self.forward)


def llama_file(llama: LlamaCpp, source: Path, qtype: str) -> Path | None:
    """The SmolLM2 GGUF in `qtype` with every matrix in that type (`--pure`), made once in .cache/llama.cpp/."""
    out = LLAMA_DIR / f"{source.name.split('.')[0]}.pure.{qtype}.gguf"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        r = subprocess.run([str(llama.quantize), "--allow-requantize", "--pure", str(source), str(tmp), qtype],
                           capture_output=True, text=True)
        if r.returncode != 0:
            print(f"llama-quantize {qtype} failed: {r.stderr[-500:]}", file=sys.stderr)
            return None
        tmp.rename(out)
    return out


def summary(values: list[float]) -> common.Summary | None:
    return common.Summary.of(values) if values else None


def fmt(s: common.Summary | None, spec: str = ".1f") -> str:
    return s.fmt(spec) if s is not None else "—"


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.RESULTS_DIR / "inference.jsonl")
    parser.add_argument("--formats", nargs="+", choices=list(FORMATS), default=list(FORMATS))
    parser.add_argument("--compile", action="store_true", help="decode with compile_decode (a minute per format)")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp column")
    parser.add_argument("--no-b8", action="store_true", help="skip the batch-8 rows")
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    plan = make_plan(args)

    from lmforge import kernels
    from lmforge.assets import smollm2_gguf
    from lmforge.interop.gguf import load_gguf, load_gguf_tokenizer

    info = common.machine_info()
    kernels.build()
    notes = [f"lmforge kernels: {kernels.backend()} ({kernels.isa()})"]
    llama = LlamaCpp(None, None, "llama.cpp column skipped (--no-llama-cpp)") if args.no_llama_cpp else LlamaCpp.find()
    if not llama.ok:
        notes.append(llama.note)

    gguf = smollm2_gguf()
    base = load_gguf(gguf)
    tokenizer = load_gguf_tokenizer(gguf)
    ids = tokenizer.encode(PROMPT_TEXT)
    short = torch.tensor([list(ids)[: plan.prompt]])
    long = torch.randint(3, base.cfg.vocab_size, (1, plan.prefill), generator=torch.Generator().manual_seed(0))
    b8 = short.expand(plan.batch, -1).contiguous()
    n = plan.new_tokens

    loops, eager, sizes, llama_files, tokens = {}, {}, {}, {}, {}
    f32_source = llama_file(llama, gguf, "F32") if llama.ok else None
    for name in args.formats:
        t = time.perf_counter()
        model = prepared(base, name)
        loops[name] = Loop(model, args.compile and name != "torch")
        # batch 8 and prefill run eager (a compiled forward would compile again for batch 8: another minute)
        eager[name] = Loop(model, False) if args.compile and name != "torch" else loops[name]
        sizes[name] = weight_bytes(model)
        tokens[name] = loops[name](short, n)  # warm-up (and the compile), and the greedy tokens
        eager[name](long, 1)
        if not args.no_b8:
            eager[name](b8, 4)
        qtype = FORMATS[name][1]
        if llama.ok and qtype is not None and f32_source is not None:
            llama_files[name] = f32_source if qtype == "F32" else llama_file(llama, f32_source, qtype)
        print(f"[{name}] ready in {time.perf_counter() - t:.0f} s: {sizes[name] / 1e6:.0f} MB of weights per token"
              f"{', llama.cpp ' + llama_files[name].name if name in llama_files else ''}", flush=True)

    calls: dict[str, Callable[[], object]] = {}
    llama_recs: dict[str, dict[str, list[dict]]] = {}
    for name in args.formats:
        calls[f"{name}/b1"] = lambda name=name: loops[name](short, n)
        if eager[name] is not loops[name]:
            calls[f"{name}/b1-eager"] = lambda name=name: eager[name](short, n)
        if not args.no_b8:
            calls[f"{name}/b8"] = lambda name=name: eager[name](b8, n)
        calls[f"{name}/pp"] = lambda name=name: eager[name](long, 1)
        if name in llama_files and llama_files[name] is not None and llama_files[name].name not in llama_recs:
            recs = llama_recs.setdefault(llama_files[name].name, {"pp": [], "tg": []})

            def llama_call(path=llama_files[name], recs=recs):
                for key, rec in llama.run(path, args.threads, plan.prefill, n).items():
                    recs[key].append(rec)
            calls[f"llama/{llama_files[name].name}"] = llama_call

    bandwidth = [read_bandwidth()]
    print(f"read bandwidth {bandwidth[0] / 1e9:.1f} GB/s; timing {plan.repeats} interleaved repeats of "
          f"{len(calls)} calls", flush=True)
    times = run_interleaved(calls, plan)
    bandwidth.append(read_bandwidth())
    bw = statistics.median(bandwidth)

    def rates(key: str, work: int) -> list[float]:
        return [work / t for t in times.get(key, [])]

    rows = []
    for name in args.formats:
        path = llama_files.get(name)
        recs = llama_recs.get(path.name) if path is not None else None
        cpp_tg = [r["avg_ts"] for r in recs["tg"]] if recs else []
        cpp_pp = [r["avg_ts"] for r in recs["pp"]] if recs else []
        cpp_bytes = recs["tg"][0]["model_size"] if recs and recs["tg"] else None
        ours_tg = rates(f"{name}/b1", n)
        same = torch.equal(tokens[name], tokens["fp32"]) if "fp32" in tokens else None
        rows.append({
            "row": f"decode b1 {name}", "format": name, "llama_type": FORMATS[name][1],
            "lmforge": summary(ours_tg), "llama_cpp": summary(cpp_tg),
            "ratio": summary([a / b for a, b in zip(ours_tg, cpp_tg)]) if cpp_tg else None,
            "pct_limit_lmforge": statistics.median(ours_tg) / (bw / sizes[name]) if ours_tg else None,
            "pct_limit_llama_cpp": statistics.median(cpp_tg) / (bw / cpp_bytes) if cpp_tg and cpp_bytes else None,
            "bytes_lmforge": sizes[name], "bytes_llama_cpp": cpp_bytes, "greedy_equals_fp32": same,
            "samples": {"lmforge": ours_tg, "llama_cpp": cpp_tg}})
        if eager[name] is not loops[name]:
            eager_tg = rates(f"{name}/b1-eager", n)
            rows.append({"row": f"decode b1 {name}, eager", "format": name, "lmforge": summary(eager_tg),
                         "llama_cpp": summary(cpp_tg),
                         "ratio": summary([a / b for a, b in zip(eager_tg, cpp_tg)]) if cpp_tg else None,
                         "samples": {"lmforge": eager_tg, "llama_cpp": cpp_tg}})
        if not args.no_b8:
            b8_rates = rates(f"{name}/b8", plan.batch * n)
            rows.append({"row": f"decode b8 {name}", "format": name, "lmforge": summary(b8_rates),
                         "samples": {"lmforge": b8_rates}})
        pp = rates(f"{name}/pp", plan.prefill)
        rows.append({"row": f"prefill {plan.prefill} {name}", "format": name, "lmforge": summary(pp),
                     "llama_cpp": summary(cpp_pp),
                     "ratio": summary([a / b for a, b in zip(pp, cpp_pp)]) if cpp_pp else None,
                     "samples": {"lmforge": pp, "llama_cpp": cpp_pp}})

    title = (f"SmolLM2-135M decode per weight format, lmforge vs llama.cpp ({args.threads} threads"
             f"{', compiled decode' if args.compile else ''})")
    print()
    print("\n".join(common.header_lines(info, title)))
    print(f"read bandwidth {bw / 1e9:.1f} GB/s (median of {len(bandwidth)}, x.sum() over 1 GiB)")
    for note in notes:
        print(f"note: {note}")
    print()
    headers = ["row", "lmforge tok/s", "llama.cpp tok/s", "lmforge/llama.cpp", "% of BW limit (lmforge / llama.cpp)",
               "MB/token (lmforge / llama.cpp)", "greedy = fp32"]
    table = []
    for r in rows:
        spec = ".1f" if r["row"].startswith("decode b1") else ".0f"
        pct = (f"{r['pct_limit_lmforge']:.0%} / " + (f"{r['pct_limit_llama_cpp']:.0%}" if r.get("pct_limit_llama_cpp")
                                                   else "—")) if r.get("pct_limit_lmforge") else ""
        mb = (f"{r['bytes_lmforge'] / 1e6:.0f} / " + (f"{r['bytes_llama_cpp'] / 1e6:.0f}" if r.get("bytes_llama_cpp")
                                                     else "—")) if "bytes_lmforge" in r else ""
        same = r.get("greedy_equals_fp32")
        table.append([r["row"], fmt(r.get("lmforge"), spec), fmt(r.get("llama_cpp"), spec), fmt(r.get("ratio"), ".2f"),
                      pct, mb, "" if same is None else ("yes" if same else "no")])
    print(common.markdown_table(headers, table))

    if llama.no_repack:
        print(f"note: llama.cpp on {', '.join(sorted(llama.no_repack))}: `--repack 0` (SIGILL in ggml's AMX kernels)")
    if not args.no_out:
        base = {"run": common.run_id(), "bench": "inference", "quick": args.quick, "machine": info,
                "plan": plan.__dict__, "compile": args.compile, "bandwidth_gb_s": bw / 1e9, "notes": notes}
        rows_out = [dict(base, **{k: (v.as_dict() if isinstance(v, common.Summary) else v) for k, v in r.items()})
                    for r in rows]
        print(f"\n{len(rows)} JSON lines appended to {common.append_jsonl(args.out, rows_out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
