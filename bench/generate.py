"""Generation speed on SmolLM2-135M: lmforge vs transformers `generate` vs llama.cpp (`llama-bench`), CPU.

    .venv/bin/python bench/generate.py                  # fp32 + bf16 (bf16 only with native bf16), ~10 min
    .venv/bin/python bench/generate.py --quick          # smoke run: 4 new tokens, 64-token prefill, 2 repeats
    .venv/bin/python bench/generate.py --dtype fp32 --profile
    bench/llama_cpp.sh                                  # builds the llama.cpp column (else it is skipped)

All sides decode the same weights (the Q4_1 GGUF of OFFLINE-ASSETS.md §2.2, dequantised; llama.cpp
gets it requantised to F32 / BF16), greedy, with the same 32-token prompt and the same number of new
tokens; eos does not end a generation on either side (lmforge `eos_token_id=None`, transformers a
generation config without eos), so every call makes all its tokens. Rows, per dtype:

- decode b1: tokens/s of 128 new tokens after the prompt (wall time of the call, prompt included), for
  the engine's raw loop (`make_cache` + `prefill` + `decode_step`), lmforge's public
  `lmforge.generate.generate`, transformers' `generate` and llama.cpp's tg128; with each one's share of
  the memory-bandwidth limit (read bandwidth, measured in this run, ÷ weight bytes read per token);
- decode b8: the same prompt in 8 rows (llama-bench has no batched decode: no llama.cpp column);
- prefill 512: a 512-token prompt into an empty cache (lmforge `prefill`; transformers `generate` with one
  new token; llama.cpp pp512).

The calls of one dtype run interleaved in this process, the order rotating each repeat, and the
ratios are medians of per-repeat ratios (see shared/BENCHMARKING.md). The greedy tokens of lmforge and
transformers are compared and the result printed. One JSON line per row goes to
`bench/results/generate.jsonl`. Never gates a test.
"""

from __future__ import annotations

import copy
import inspect
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import common
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
LLAMA_TYPES = {"fp32": "F32", "bf16": "BF16"}
REFERENCE_TYPES = ("Q8_0", "Q4_1")  # llama.cpp only, for reference (not interleaved)
LLAMA_DIR = common.BENCH_DIR.parent / ".cache" / "llama.cpp"
PROMPT_TEXT = (
    "The history of the city of Paris begins with a small Celtic settlement on an island in the Seine. "
    "Over the following centuries the Romans, the Franks and the kings of France turned it into one of "
    "the largest and richest cities of Europe, a centre of learning, trade and the arts."
)


# --------------------------------------------------------------------------------------------- setup


@dataclass
class Plan:
    prompt: int = 32
    new_tokens: int = 128
    batch: int = 8
    prefill: int = 512
    warmup: int = 2
    repeats: int = 5


def make_plan(args) -> Plan:
    plan = Plan(warmup=1, repeats=2, new_tokens=4, prefill=64) if args.quick else Plan()
    if args.new_tokens:
        plan.new_tokens = args.new_tokens
    if args.warmup is not None:
        plan.warmup = args.warmup
    if args.repeats is not None:
        plan.repeats = args.repeats
    return plan


def read_bandwidth(gib: float = 1.0, calls: int = 5) -> float:
    """Bytes/s of `x.sum()` over a `gib` GiB fp32 tensor (the threads as set): median of `calls`."""
    x = torch.ones(int(gib * 2**30) // 4)
    x.sum()
    times = []
    for _ in range(calls):
        t = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t)
    return x.numel() * 4 / statistics.median(times)


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of the distinct parameters: what one decode step reads (a tied head is read once, as the head;
    the embedding lookup reads one row). The KV cache (< 1 % here) is left out."""
    seen, total = set(), 0
    for p in model.parameters():
        if p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            total += p.numel() * p.element_size()
    return total


def load_models(path: Path):
    import transformers

    from lmforge.interop.gguf import load_gguf, load_gguf_tokenizer

    transformers.logging.set_verbosity_error()
    t = time.perf_counter()
    ours = load_gguf(path)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                                dtype=torch.float32).eval()
    t_theirs = time.perf_counter() - t
    print(f"loaded: lmforge load_gguf {t_ours:.1f} s, transformers from_pretrained(gguf_file=) {t_theirs:.1f} s",
          flush=True)
    return ours, theirs, load_gguf_tokenizer(path)


def prompts(tokenizer, plan: Plan, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer.encode(PROMPT_TEXT)
    ids = list(ids.ids if hasattr(ids, "ids") else ids)
    if len(ids) < plan.prompt:
        raise SystemExit(f"the prompt text has only {len(ids)} tokens, {plan.prompt} needed")
    short = torch.tensor([ids[: plan.prompt]])
    g = torch.Generator().manual_seed(0)  # the prefill prompt: content does not change its cost
    long = torch.randint(3, vocab, (1, plan.prefill), generator=g)
    return short, long


# --------------------------------------------------------------------------------------------- the calls


@torch.inference_mode()
def engine_loop(model, ids: torch.Tensor, n: int, forward=None) -> torch.Tensor:
    """The engine's raw steps: make_cache + prefill + decode_step (with `forward`, a `compile_decode` one),
    greedy argmax; the new ids (B, n)."""
    from lmforge.generate.engine import decode_step, prefill

    cache = model.make_cache(ids.shape[0], ids.shape[1] + n)
    logits = prefill(model, cache, ids)
    out = []
    for i in range(n):
        nxt = logits.argmax(-1)
        out.append(nxt)
        if i + 1 < n:
            logits = decode_step(model, cache, nxt, forward=forward)
    return torch.stack(out, 1)


class Sides:
    """The timed calls of one dtype; each returns the new token ids (B, n)."""

    def __init__(self, ours, theirs, plan: Plan, compile_variant: bool) -> None:
        from transformers import GenerationConfig

        self.ours, self.theirs, self.plan = ours, theirs, plan
        # Greedy, no eos (generation never ends early), the pad id only to silence the warning.
        self.config = GenerationConfig(do_sample=False, eos_token_id=None, pad_token_id=0, bos_token_id=None,
                                       max_new_tokens=plan.new_tokens, min_new_tokens=None)
        # transformers fills the fields left unset from the model's own generation config (eos 2): clear it there.
        theirs.generation_config.eos_token_id = None
        self.compile = compile_variant

    def engine_loop(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        return engine_loop(self.ours, ids, n)

    def generate(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        from lmforge.generate import generate

        return generate(self.ours, ids, n, eos_token_id=None)

    def generate_compiled(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        """Hook for an engine-level compile option (`generate(..., compile=True)` once the engine has one)."""
        from lmforge.generate import generate

        return generate(self.ours, ids, n, eos_token_id=None, compile=True)

    @torch.inference_mode()
    def hf(self, ids: torch.Tensor, n: int) -> torch.Tensor:
        out = self.theirs.generate(ids, attention_mask=torch.ones_like(ids), generation_config=self.config,
                                   max_new_tokens=n)
        return out[:, ids.shape[1]:]


def engine_has_compile() -> bool:
    from lmforge.generate import engine

    return "compile" in inspect.signature(engine.generate).parameters


# --------------------------------------------------------------------------------------------- llama.cpp


@dataclass
class LlamaCpp:
    bench: Path | None
    quantize: Path | None
    note: str = ""
    no_repack: set[str] = field(default_factory=set)  # files that crashed with repacking on (ggml's AMX kernels)

    @classmethod
    def find(cls) -> LlamaCpp:
        def tool(name: str) -> Path | None:
            for p in (LLAMA_DIR / "build" / "bin" / name, LLAMA_DIR / "build-server" / "bin" / name):
                if p.is_file() and os.access(p, os.X_OK):
                    return p
            found = shutil.which(name)
            return Path(found) if found else None

        bench, quantize = tool("llama-bench"), tool("llama-quantize")
        note = "" if bench and quantize else "llama.cpp not built (run bench/llama_cpp.sh): column skipped"
        return cls(bench, quantize, note)

    @property
    def ok(self) -> bool:
        return not self.note

    def model(self, source: Path, qtype: str) -> Path | None:
        """`source` requantised to `qtype` in .cache/llama.cpp/ (made once)."""
        if qtype == "Q4_1":
            return source
        out = LLAMA_DIR / f"{source.stem.rsplit('.', 1)[0]}.{qtype}.gguf"
        if not out.exists():
            tmp = out.with_suffix(".tmp")
            r = subprocess.run([str(self.quantize), "--allow-requantize", str(source), str(tmp), qtype],
                               capture_output=True, text=True)
            if r.returncode != 0:
                print(f"llama-quantize {qtype} failed: {r.stderr[-500:]}", file=sys.stderr)
                return None
            tmp.rename(out)
        return out

    def run(self, model: Path, threads: int, prefill: int, n_gen: int, reps: int = 1) -> dict[str, dict]:
        """llama-bench pp{prefill} and tg{n_gen}: {"pp": record, "tg": record} (records as llama-bench writes)."""
        cmd = [str(self.bench), "-m", str(model), "-t", str(threads), "-p", str(prefill), "-n", str(n_gen),
               "-r", str(reps), "-o", "json"]
        if model.name in self.no_repack:
            cmd += ["--repack", "0"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode in (-4, 132) and model.name not in self.no_repack:
            # SIGILL in ggml's AMX int8 kernels (a build with AMX on an AMX VM, see bench/llama_cpp.sh):
            # without repacking into the AMX/extra buffer types the plain CPU kernels run.
            print(f"llama-bench died with SIGILL on {model.name}: rerunning with --repack 0 "
                  "(rebuild with bench/llama_cpp.sh, which compiles without AMX)", file=sys.stderr)
            self.no_repack.add(model.name)
            return self.run(model, threads, prefill, n_gen, reps)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stderr[-500:]}")
        out = {}
        for rec in json.loads(r.stdout):
            out["pp" if rec["n_gen"] == 0 else "tg"] = rec
        return out


# --------------------------------------------------------------------------------------------- timing


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_interleaved(calls: dict[str, Callable[[], object]], plan: Plan) -> dict[str, list[float]]:
    """Seconds per call of each named call; one repeat runs each once, the starting call rotating."""
    import gc

    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    gc.disable()
    try:
        for rep in range(plan.repeats):
            k = rep % len(names)
            for name in names[k:] + names[:k]:
                times[name].append(timed(calls[name])[0])
            print(f"  repeat {rep + 1}/{plan.repeats} done", flush=True)
    finally:
        gc.enable()
    return times


def summary(values: list[float]) -> common.Summary | None:
    return common.Summary.of(values) if values else None


def fmt(s: common.Summary | None, spec: str = ".1f") -> str:
    return s.fmt(spec) if s is not None else "—"


def same_tokens(a: torch.Tensor, b: torch.Tensor) -> str:
    if a.shape == b.shape and torch.equal(a, b):
        return f"identical ({a.numel()} tokens)"
    n = min(a.shape[1], b.shape[1])
    diff = (a[:, :n] != b[:, :n]).any(0).nonzero()
    first = int(diff[0]) if len(diff) else n
    return f"DIFFERENT from token {first} (of {a.shape[1]} / {b.shape[1]})"


# --------------------------------------------------------------------------------------------- rows


def bench_dtype(name: str, ours0, theirs0, sides_args, llama: LlamaCpp, gguf: Path, short: torch.Tensor,
                long: torch.Tensor, plan: Plan, args, bandwidth: list[float]) -> list[dict]:
    dtype = DTYPES[name]
    ours = ours0 if dtype == torch.float32 else copy.deepcopy(ours0).to(dtype).eval()
    theirs = theirs0 if dtype == torch.float32 else copy.deepcopy(theirs0).to(dtype).eval()
    sides = Sides(ours, theirs, plan, **sides_args)
    n, b8 = plan.new_tokens, short.expand(plan.batch, -1).contiguous()

    calls: dict[str, Callable[[], object]] = {
        "b1/engine": lambda: sides.engine_loop(short, n),
        "b1/generate": lambda: sides.generate(short, n),
        "b1/hf": lambda: sides.hf(short, n),
        "b8/engine": lambda: sides.engine_loop(b8, n),
        "b8/hf": lambda: sides.hf(b8, n),
        "pp/engine": lambda: sides.engine_loop(long, 1),
        "pp/hf": lambda: sides.hf(long, 1),
    }
    if sides.compile:
        calls["b1/compile"] = lambda: sides.generate_compiled(short, n)
    llama_file = None
    llama_recs: dict[str, list[dict]] = {"pp": [], "tg": []}
    if llama.ok:
        llama_file = llama.model(gguf, LLAMA_TYPES[name])
        if llama_file is not None:
            def llama_call():
                for key, rec in llama.run(llama_file, args.threads, plan.prefill, n).items():
                    llama_recs[key].append(rec)
            calls["llama"] = llama_call

    # Greedy check (also the first warm-up): lmforge's two paths and transformers, b1 and b8.
    t0 = time.perf_counter()
    tok = {k: calls[k]() for k in ("b1/engine", "b1/generate", "b1/hf", "b8/engine", "b8/hf")}
    made = {k: v.shape[1] for k, v in tok.items() if v.shape[1] != n}
    if made:  # timing would compare different work
        raise SystemExit(f"[{name}] calls made fewer than {n} new tokens: {made}")
    checks = {
        "b1 engine vs transformers": same_tokens(tok["b1/engine"], tok["b1/hf"]),
        "b1 generate vs transformers": same_tokens(tok["b1/generate"], tok["b1/hf"]),
        "b8 engine vs transformers": same_tokens(tok["b8/engine"], tok["b8/hf"]),
    }
    eos = ours0.cfg.eos_token_id
    eos_note = ("eos generated (and not stopped at)" if bool((tok["b1/hf"] == eos).any())
                else "no eos among the greedy tokens")
    print(f"[{name}] greedy tokens, lmforge vs transformers: "
          + "; ".join(f"{k}: {v}" for k, v in checks.items()) + f"; {eos_note}", flush=True)
    # Further warm-up rounds: every call once, the decodes with a few tokens (llama-bench warms itself up).
    short_calls = {k: v for k, v in calls.items() if k.startswith("pp/")}
    short_calls.update({"b1": lambda: sides.engine_loop(short, 8), "gen": lambda: sides.generate(short, 8),
                        "hf1": lambda: sides.hf(short, 8), "b8": lambda: sides.engine_loop(b8, 8),
                        "hf8": lambda: sides.hf(b8, 8)})
    if sides.compile:
        short_calls["compile"] = lambda: sides.generate_compiled(short, 8)
    for _ in range(plan.warmup - 1):
        for fn in short_calls.values():
            fn()
    print(f"[{name}] warm-up {time.perf_counter() - t0:.0f} s; timing {plan.repeats} interleaved repeats "
          f"of {len(calls)} calls", flush=True)

    bandwidth.append(read_bandwidth())
    times = run_interleaved(calls, plan)
    bandwidth.append(read_bandwidth())

    bytes_ours, bytes_theirs = weight_bytes(ours), weight_bytes(theirs)
    rate = lambda key, work: [work / t for t in times[key]]  # noqa: E731
    llama_rate = {k: [r["avg_ts"] for r in v] for k, v in llama_recs.items()}
    llama_bytes = llama_recs["tg"][0]["model_size"] if llama_recs["tg"] else None

    def ratio(a: list[float], b: list[float]) -> common.Summary | None:
        return summary([x / y for x, y in zip(a, b)]) if a and b else None

    rows = []

    def row(label: str, work: str, engine: list[float], hf: list[float], gen: list[float] | None = None,
            cpp: list[float] | None = None, compiled: list[float] | None = None, bw_row: bool = False):
        cpp = cpp or []
        r = {
            "row": label, "dtype": name, "work": work,
            "lmforge_engine": summary(engine), "lmforge_generate": summary(gen or []),
            "lmforge_compile": summary(compiled or []), "transformers": summary(hf),
            "llama_cpp": summary(cpp),
            "ratio_lmforge_hf": ratio(engine, hf), "ratio_generate_hf": ratio(gen or [], hf),
            "ratio_lmforge_llama": ratio(engine, cpp),
            "samples_tok_s": {"lmforge_engine": engine, "lmforge_generate": gen or [], "lmforge_compile": compiled or [],
                              "transformers": hf, "llama_cpp": cpp},
            "bw_row": bw_row,
        }
        rows.append(r)

    b1 = f"b1, {plan.prompt}-token prompt + {n} new"
    row(f"decode b1 {name}", b1, rate("b1/engine", n), rate("b1/hf", n), rate("b1/generate", n),
        llama_rate["tg"], rate("b1/compile", n) if "b1/compile" in times else None, bw_row=True)
    row(f"decode b8 {name}", f"b{plan.batch}, {plan.prompt}-token prompt + {n} new",
        rate("b8/engine", plan.batch * n), rate("b8/hf", plan.batch * n))
    row(f"prefill {plan.prefill} {name}", f"b1, {plan.prefill}-token prompt", rate("pp/engine", plan.prefill),
        rate("pp/hf", plan.prefill), cpp=llama_rate["pp"])
    for r in rows:
        r.update(bytes_lmforge=bytes_ours, bytes_transformers=bytes_theirs, bytes_llama_cpp=llama_bytes,
                 greedy=checks, eos=eos_note, llama_file=llama_file.name if llama_file else "")

    if args.profile:  # run after the table is out: keep the model of this dtype
        PROFILE.append((sides, short, name))
    return rows


PROFILE: list[tuple[Sides, torch.Tensor, str]] = []


def profile_decode(sides: Sides, short: torch.Tensor, name: str, steps: int = 10, top: int = 15) -> None:
    """torch.profiler of lmforge decode steps (the cache at the prompt's length): top ops by self CPU time."""
    from lmforge.generate.engine import decode_step, prefill

    cache = sides.ours.make_cache(1, short.shape[1] + 3 + 2 * steps + 1)
    logits = prefill(sides.ours, cache, short)
    nxt = logits.argmax(-1)
    for _ in range(3):  # warm
        nxt = decode_step(sides.ours, cache, nxt).argmax(-1)
    plain = []
    for _ in range(steps):  # the same steps without the profiler
        t = time.perf_counter()
        decode_step(sides.ours, cache, nxt)
        plain.append(time.perf_counter() - t)
    totals: dict[tuple[str, str], list[float]] = {}
    for _ in range(steps):
        ops = common.op_profile(lambda: decode_step(sides.ours, cache, nxt))
        for k, (ms, c) in ops.items():
            acc = totals.setdefault(k, [0.0, 0])
            acc[0] += ms / steps
            acc[1] += c / steps
    total = sum(ms for ms, _ in totals.values())
    by_op: dict[str, float] = {}
    for (op, _), (ms, _) in totals.items():
        by_op[op] = by_op.get(op, 0.0) + ms
    print(f"\n### Profile of one lmforge decode step ({name}, b1, {short.shape[1]}+ tokens in the cache; "
          f"mean of {steps}): {total:.1f} ms self CPU; a step takes {statistics.median(plain) * 1e3:.1f} ms wall "
          "without the profiler (median)\n")
    print(common.markdown_table(["op", "input shapes", "ms/step", "calls", "share"],
                                [[k[0], k[1][:60], f"{ms:.2f}", f"{c:g}", f"{ms / total:.1%}"]
                                 for k, (ms, c) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]]))
    print("\nper op name: " + ", ".join(f"{op} {ms:.1f} ms ({ms / total:.0%})"
                                         for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]))


def reference_rows(llama: LlamaCpp, gguf: Path, plan: Plan, args) -> list[dict]:
    """llama.cpp alone at lower precisions (Q8_0, Q4_1): not interleaved, llama-bench's own repeats."""
    rows = []
    for qtype in REFERENCE_TYPES:
        f = llama.model(gguf, qtype)
        if f is None:
            continue
        recs = llama.run(f, args.threads, plan.prefill, plan.new_tokens, reps=max(plan.repeats, 2))
        tg, pp = recs["tg"], recs["pp"]
        base = {"dtype": qtype, "lmforge_engine": None, "lmforge_generate": None, "lmforge_compile": None,
                "transformers": None, "ratio_lmforge_hf": None, "ratio_generate_hf": None,
                "ratio_lmforge_llama": None, "bytes_llama_cpp": tg["model_size"], "llama_file": f.name,
                "reference_only": True}
        rows.append(dict(base, row=f"decode b1 {qtype} (llama.cpp only)", work=f"tg{plan.new_tokens}",
                         llama_cpp=summary(tg["samples_ts"]), samples_tok_s={"llama_cpp": tg["samples_ts"]},
                         bw_row=True))
        rows.append(dict(base, row=f"prefill {plan.prefill} {qtype} (llama.cpp only)", work=f"pp{plan.prefill}",
                         llama_cpp=summary(pp["samples_ts"]), samples_tok_s={"llama_cpp": pp["samples_ts"]},
                         bw_row=False))
    return rows


def add_limits(rows: list[dict], bw: float) -> None:
    """Each decode-b1 row's bandwidth limit (tok/s = bandwidth / weight bytes) and each side's share of it."""
    sides = {"lmforge_engine": "bytes_lmforge", "lmforge_generate": "bytes_lmforge", "lmforge_compile": "bytes_lmforge",
             "transformers": "bytes_transformers", "llama_cpp": "bytes_llama_cpp"}
    for r in rows:
        r["bandwidth_gb_s"] = bw / 1e9
        if not r.get("bw_row"):
            continue
        r["limit_tok_s"], r["pct_limit"] = {}, {}
        for side, key in sides.items():
            nbytes, rates = r.get(key), r["samples_tok_s"].get(side)
            if nbytes:
                r["limit_tok_s"][side] = bw / nbytes
            r["pct_limit"][side] = f"{statistics.median(rates) / (bw / nbytes):.0%}" if nbytes and rates else "—"
    return rows


# --------------------------------------------------------------------------------------------- output


def table(rows: list[dict], compile_on: bool) -> str:
    headers = ["row", "lmforge engine tok/s", "lmforge generate tok/s"]
    headers += ["lmforge+compile tok/s"] if compile_on else []
    headers += ["transformers tok/s", "llama.cpp tok/s", "lmforge/HF", "generate/HF", "lmforge/llama.cpp",
                "% of BW limit (engine / generate / HF / llama.cpp)"]
    out = []
    for r in rows:
        big = r["row"].startswith(("prefill", "decode b8"))
        spec = ".0f" if big else ".1f"
        cells = [r["row"], fmt(r["lmforge_engine"], spec), fmt(r["lmforge_generate"], spec)]
        cells += [fmt(r["lmforge_compile"], spec)] if compile_on else []
        p = r.get("pct_limit")
        cells += [fmt(r["transformers"], spec), fmt(r["llama_cpp"], spec), fmt(r["ratio_lmforge_hf"], ".2f"),
                  fmt(r["ratio_generate_hf"], ".2f"), fmt(r["ratio_lmforge_llama"], ".2f"),
                  " / ".join(p[k] for k in ("lmforge_engine", "lmforge_generate", "transformers", "llama_cpp"))
                  if p else ""]
        out.append(cells)
    return common.markdown_table(headers, out)


def jsonable(r: dict) -> dict:
    return {k: (v.as_dict() if isinstance(v, common.Summary) else v) for k, v in r.items()}


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.RESULTS_DIR / "generate.jsonl")
    parser.add_argument("--dtype", choices=("fp32", "bf16", "all"), default="all",
                        help="all: fp32, and bf16 where the CPU has native bf16 (default)")
    parser.add_argument("--compile", action="store_true",
                        help="add an lmforge+compile variant (when the engine has a compile option)")
    parser.add_argument("--new-tokens", type=int, default=None, help="new tokens per decode call (default 128)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one lmforge decode step")
    parser.add_argument("--no-llama-cpp", action="store_true", help="skip the llama.cpp column")
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    plan = make_plan(args)

    from lmforge.assets import smollm2_gguf
    from lmforge.train.precision import cpu_has_native_bf16

    info = common.machine_info()
    native = cpu_has_native_bf16()
    names = ["fp32", "bf16"] if args.dtype == "all" else [args.dtype]
    skipped = []
    if "bf16" in names and not native:
        if args.dtype == "all":
            names.remove("bf16")
            skipped.append("bf16 skipped: the CPU has no native bf16 (no avx512_bf16/amx_bf16)")
        else:
            skipped.append("bf16 asked for on a CPU without native bf16: emulated, slow kernels")

    compile_on = False
    notes = list(skipped)
    if args.compile:
        if engine_has_compile():
            compile_on = True
        else:
            notes.append("--compile: lmforge.generate.engine.generate has no `compile` option yet; "
                         "no lmforge+compile column (hook: Sides.generate_compiled)")

    llama = LlamaCpp(None, None, "llama.cpp column skipped (--no-llama-cpp)") if args.no_llama_cpp else LlamaCpp.find()
    if not llama.ok:
        notes.append(llama.note)

    gguf = smollm2_gguf()
    ours, theirs, tokenizer = load_models(gguf)
    short, long = prompts(tokenizer, plan, ours.cfg.vocab_size)
    bandwidth = [read_bandwidth()]
    print(f"read bandwidth (1 GiB x.sum(), {torch.get_num_threads()} threads): {bandwidth[0] / 1e9:.1f} GB/s",
          flush=True)

    rid = common.run_id()
    t0 = time.perf_counter()
    rows = []
    for name in names:
        rows += bench_dtype(name, ours, theirs, {"compile_variant": compile_on}, llama, gguf, short, long, plan,
                            args, bandwidth)
    if llama.ok:
        rows += reference_rows(llama, gguf, plan, args)
    bandwidth.append(read_bandwidth())
    bw = max(bandwidth)  # the machine's capability: noise only ever lowers a reading
    add_limits(rows, bw)
    if llama.no_repack:
        notes.append(f"llama.cpp on {', '.join(sorted(llama.no_repack))}: `--repack 0` (ggml's AMX int8 kernels "
                     "died with SIGILL in this build; bench/llama_cpp.sh now builds without AMX)")
    for r in rows:
        if r.get("llama_file"):
            r["llama_repack"] = Path(r["llama_file"]).name not in llama.no_repack
    elapsed = time.perf_counter() - t0

    title = f"Generation, SmolLM2-135M ({'quick' if args.quick else 'full'} run {rid})"
    lines = common.header_lines(info, title)
    lines.append(f"- read bandwidth (1 GiB `x.sum()`, {info['threads']} threads, best of "
                 f"{len(bandwidth)} readings in this run): {bw / 1e9:.1f} GB/s "
                 f"[{min(bandwidth) / 1e9:.1f}–{bw / 1e9:.1f}]; weights read per token: "
                 + ", ".join(f"{r['dtype']} {r['bytes_lmforge'] / 1e6:.0f} MB (limit {bw / r['bytes_lmforge']:.0f} tok/s)"
                             for r in rows if r.get("pct_limit") and "bytes_lmforge" in r))
    lines.append(f"- greedy, eos not stopping; {plan.prompt}-token prompt + {plan.new_tokens} new tokens; "
                 f"tok/s median [min–max] over {plan.repeats} interleaved repeats ({plan.warmup} warm-up); ratios: "
                 "median of per-repeat ratios; lmforge = the engine loop (`prefill` + `decode_step`)")
    for name in names:
        r = next(r for r in rows if r.get("dtype") == name and "greedy" in r)
        lines.append(f"- greedy tokens {name}, lmforge vs transformers: "
                     + "; ".join(f"{k}: {v}" for k, v in r["greedy"].items()) + f" ({r['eos']})")
    if llama.ok:
        lines.append(f"- llama.cpp: `{llama.bench} -t {args.threads} -p {plan.prefill} -n {plan.new_tokens} -r 1` "
                     "per repeat (tg after an empty context), on the GGUF requantised with `llama-quantize "
                     "--allow-requantize`; no batched decode in llama-bench (b8 column empty); Q8_0/Q4_1 rows: "
                     "llama.cpp alone, its own repeats, for reference")
    lines += [f"- note: {n}" for n in notes]
    print()
    print("\n".join(lines))
    print()
    print(table(rows, compile_on))
    print(f"\n(benchmark time {elapsed:.0f} s)")

    if not args.no_out:
        base = {"run": rid, "bench": "generate", "quick": args.quick, "machine": info, "plan": plan.__dict__,
                "notes": notes}
        path = common.append_jsonl(args.out, [dict(base, **jsonable(r)) for r in rows])
        print(f"{len(rows)} JSON lines appended to {path}")
    for sides, short, name in PROFILE:
        try:
            profile_decode(sides, short, name)
        except Exception as err:  # noqa: BLE001  (the table is out already)
            print(f"profile of {name} failed: {err!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
