"""Serving under load on loopback: `lmforge serve` with 32 concurrent clients vs one request at a time, and llama.cpp.

    .venv/bin/python bench/serve.py                      # 32 clients, 30 s per phase, SmolLM2-135M-Instruct
    .venv/bin/python bench/serve.py --quick              # 4 s per phase: a smoke run
    .venv/bin/python bench/serve.py --clients 16 --seconds 60 --rounds 3
    LLAMA_SERVER=/path/to/llama-server .venv/bin/python bench/serve.py

Each server runs in its own process on 127.0.0.1 (lmforge: `run_server` with `--threads`, `max_batch` rows;
llama.cpp: `llama-server -t THREADS -np 8`, found via $LLAMA_SERVER, .cache/llama.cpp/build*/bin or PATH,
else its column is skipped with a note). One client program (asyncio + httpx) drives both with the same
requests: greedy chat completions of `--max-tokens` tokens with EOS ignored (`ignore_eos`), so every
request does the same work. A phase starts its clients together; each sends requests back to back
until the phase's time is up and then finishes the one in flight. Phases are interleaved per round
(lmforge concurrent, llama concurrent, lmforge one-at-a-time, llama one-at-a-time), and the servers are
warmed up first.

Columns: requests and failures (non-200 answers, errors, or fewer tokens than asked), aggregate
completion tokens/s (all tokens / the phase's wall time, the drain included), request latency p50 and
p99, and the speedup of the concurrent phase over one request at a time. Batching must win >= 3x (the
line under the table says whether it did). lmforge runs the GGUF dequantised to fp32 (or `--dtype
bfloat16`); llama.cpp runs an F32 requantisation of the same file where llama-quantize is found (the
table names the type it ran). Writes one JSON line per row to bench/results/serve.jsonl. Never gates a test.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import common

try:
    import httpx
except ImportError:  # httpx's successor, where it is installed under its own name
    import httpx2 as httpx

LLAMA_DIR = common.BENCH_DIR.parent / ".cache" / "llama.cpp"
PROMPTS = [
    "What is the capital of France?", "Write a haiku about the sea.", "Explain photosynthesis to a child.",
    "List three uses of a paperclip.", "Why is the sky blue?", "Give me a recipe for pancakes.",
    "What does a compiler do?", "Describe a cat in two sentences.", "How far is the Moon?",
    "Translate 'good morning' into Spanish.", "What is 17 times 23?", "Name a famous painting and its painter.",
]
LMFORGE_SERVER = r"""
import json, sys
from lmforge.serve.server import run_server
run_server(**json.loads(sys.argv[1]))
"""


@dataclass
class Phase:
    """One load phase against one server."""

    server: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    failures: int = 0
    errors: list[str] = field(default_factory=list)
    wall: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall if self.wall else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        values = sorted(self.latencies)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]


@dataclass
class Server:
    name: str
    url: str
    model: str
    process: subprocess.Popen
    log: Path
    note: str = ""

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: both servers shut down gracefully
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited (code {server.process.returncode}); log: {server.log}\n"
                               + server.log.read_text()[-2000:])
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} not ready after {timeout:.0f} s; log: {server.log}")


def start_lmforge(args, logs: Path) -> Server:
    port = free_port()
    options = dict(model=args.model, host="127.0.0.1", port=port, max_batch=args.max_batch, max_queue=4 * args.clients,
                   dtype=args.dtype, model_name="lmforge", max_len=args.max_len, threads=args.threads,
                   log_level="warning")
    log = logs / "lmforge.log"
    process = subprocess.Popen([sys.executable, "-c", LMFORGE_SERVER, json.dumps(options)],
                               stdout=log.open("w"), stderr=subprocess.STDOUT)
    return Server("lmforge", f"http://127.0.0.1:{port}", "lmforge", process, log,
                  note=f"{args.dtype}, {args.max_batch} rows, context {args.max_len}")


def find_tool(name: str, env: str | None = None) -> Path | None:
    if env and os.environ.get(env):
        return Path(os.environ[env])
    for folder in ("build-server", "build"):
        path = LLAMA_DIR / folder / "bin" / name
        if path.is_file() and os.access(path, os.X_OK):
            return path
    found = shutil.which(name)
    return Path(found) if found else None


def llama_gguf(args) -> tuple[Path, str]:
    """The GGUF llama-server serves: the given file, or an F32 requantisation of SmolLM2's (made once)."""
    if args.llama_gguf:
        return Path(args.llama_gguf), Path(args.llama_gguf).stem.rsplit(".", 1)[-1]
    from lmforge.assets import smollm2_gguf

    source = smollm2_gguf()
    quantize = find_tool("llama-quantize")
    if quantize is None:
        return source, "Q4_1 (no llama-quantize found for an F32 copy)"
    out = LLAMA_DIR / f"{source.stem.rsplit('.', 1)[0]}.F32.gguf"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        subprocess.run([str(quantize), "--allow-requantize", str(source), str(tmp), "F32"], check=True,
                       capture_output=True)
        tmp.rename(out)
    return out, "F32"


def start_llama(args, logs: Path) -> Server | str:
    """llama-server, or the note saying why its column is skipped."""
    binary = find_tool("llama-server", "LLAMA_SERVER")
    if binary is None:
        return "llama-server not found ($LLAMA_SERVER, .cache/llama.cpp/build*/bin, PATH; bench/llama_cpp.sh builds it)"
    if args.model != "smollm2-135m-instruct" and not args.llama_gguf:
        return f"no GGUF for {args.model} (pass --llama-gguf)"
    gguf, qtype = llama_gguf(args)
    port = free_port()
    log = logs / "llama-server.log"
    cmd = [str(binary), "-m", str(gguf), "-t", str(args.threads), "-np", str(args.llama_slots),
           "-c", str(args.llama_slots * args.max_len), "--host", "127.0.0.1", "--port", str(port),
           "-a", "llama"]
    process = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    return Server("llama-server", f"http://127.0.0.1:{port}", "llama", process, log,
                  note=f"{qtype}, {args.llama_slots} slots, context {args.max_len} per slot")


async def run_phase(server: Server, clients: int, seconds: float, max_tokens: int) -> Phase:
    phase = Phase(server.name, clients, seconds)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=server.url, limits=limits, timeout=600) as http:
        start = time.perf_counter()
        deadline = start + seconds

        async def client(i: int) -> None:
            k = i
            while time.perf_counter() < deadline:
                body = {"model": server.model, "messages": [{"role": "user", "content": PROMPTS[k % len(PROMPTS)]}],
                        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
                k += clients
                sent = time.perf_counter()
                try:
                    response = await http.post("/v1/chat/completions", json=body)
                    tokens = response.json()["usage"]["completion_tokens"] if response.status_code == 200 else 0
                except Exception as err:  # a failure is counted, never fatal
                    phase.failures += 1
                    phase.errors.append(repr(err)[:200])
                    continue
                phase.latencies.append(time.perf_counter() - sent)
                phase.tokens += tokens
                if response.status_code != 200 or tokens != max_tokens:
                    phase.failures += 1
                    phase.errors.append(f"{response.status_code} {tokens} tokens {response.text[:200]}")

        await asyncio.gather(*(client(i) for i in range(clients)))
        phase.wall = time.perf_counter() - start
    return phase


def main(argv: list[str] | None = None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.RESULTS_DIR / "serve.jsonl")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="what lmforge serves (name or folder)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients of the concurrent phase")
    parser.add_argument("--seconds", type=float, default=None, help="length of each phase (default 30; quick 4)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds of all phases")
    parser.add_argument("--max-tokens", type=int, default=64, help="completion tokens per request")
    parser.add_argument("--max-batch", type=int, default=8, help="lmforge's batch rows")
    parser.add_argument("--max-len", type=int, default=1024, help="context per request (row / slot)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--llama-slots", type=int, default=8, help="llama-server's parallel slots (-np)")
    parser.add_argument("--llama-gguf", default=None, help="the GGUF llama-server serves (default: SmolLM2 F32)")
    parser.add_argument("--no-llama", action="store_true", help="skip the llama-server column")
    args = parser.parse_args(argv)
    seconds = args.seconds or (4.0 if args.quick else 30.0)
    info = common.machine_info()
    logs = Path(tempfile.mkdtemp(prefix="bench-serve-"))

    servers: list[Server] = []
    notes = []
    try:
        servers.append(start_lmforge(args, logs))
        llama = "skipped (--no-llama)" if args.no_llama else start_llama(args, logs)
        if isinstance(llama, Server):
            servers.append(llama)
        else:
            notes.append(f"llama-server column skipped: {llama}")
        for server in servers:
            wait_ready(server, timeout=600)
            asyncio.run(run_phase(server, 2, 0.1, 4))  # warm-up: first requests, allocation
        phases: dict[tuple[str, int], list[Phase]] = {}
        for _ in range(args.rounds):  # interleaved: A B A B per mode
            for clients in (args.clients, 1):
                for server in servers:
                    phase = asyncio.run(run_phase(server, clients, seconds, args.max_tokens))
                    phases.setdefault((server.name, clients), []).append(phase)
    finally:
        for server in servers:
            server.stop()

    print("\n".join(common.header_lines(info, f"Serving {args.model} on loopback: {args.clients} concurrent "
                                               f"clients vs one at a time")))
    print(f"- greedy chat completions of {args.max_tokens} tokens (EOS ignored), {seconds:g} s per phase, "
          f"{args.rounds} round(s); server threads: {args.threads}")
    for server in servers:
        print(f"- {server.name}: {server.note}")
    print()
    rows, records, speedups = [], [], {}
    for server in servers:
        single = phases[(server.name, 1)]
        for clients in (args.clients, 1):
            runs = phases[(server.name, clients)]
            rates = common.Summary.of([p.tokens_per_s for p in runs])
            latencies = [lat for p in runs for lat in p.latencies]
            merged = Phase(server.name, clients, seconds, latencies)
            ratio = statistics.median(p.tokens_per_s / s.tokens_per_s if s.tokens_per_s else float("nan")
                                      for p, s in zip(runs, single))
            if clients != 1:
                speedups[server.name] = ratio
            rows.append([server.name, clients, sum(len(p.latencies) for p in runs), sum(p.failures for p in runs),
                         rates.fmt(".1f"), f"{merged.percentile(0.5):.2f}", f"{merged.percentile(0.99):.2f}",
                         f"{ratio:.2f}x" if clients != 1 else "1.00x"])
            records.append({"run": common.run_id(), "bench": "serve", "server": server.name, "note": server.note,
                            "model": args.model, "clients": clients, "seconds": seconds,
                            "max_tokens": args.max_tokens, "requests": rows[-1][2], "failures": rows[-1][3],
                            "tokens_per_s": rates.as_dict(), "p50_s": merged.percentile(0.5),
                            "p99_s": merged.percentile(0.99), "speedup_vs_one_at_a_time": ratio, **info})
    print(common.markdown_table(["server", "clients", "requests", "failures", "completion tok/s",
                                 "p50 latency s", "p99 latency s", "vs one at a time"], rows))
    print()
    failures = sum(p.failures for runs in phases.values() for p in runs)
    won = speedups.get("lmforge", 0) >= 3
    print(f"lmforge batching: {speedups.get('lmforge', float('nan')):.2f}x one request at a time "
          f"({'>= 3x: ok' if won else 'BELOW the 3x required'}); failures: {failures}")
    if "llama-server" in speedups:
        ours = phases[("lmforge", args.clients)]
        theirs = phases[("llama-server", args.clients)]
        ratio = statistics.median(a.tokens_per_s / b.tokens_per_s for a, b in zip(ours, theirs) if b.tokens_per_s)
        print(f"lmforge / llama-server, {args.clients} clients: {ratio:.2f}x completion tokens/s "
              "(median of per-round ratios)")
    for note in notes:
        print(f"- {note}")
    for runs in phases.values():
        for p in runs:
            for error in p.errors[:3]:
                print(f"  {p.server} ({p.clients} clients) failure: {error}", file=sys.stderr)
    if not args.no_out:
        print(f"\nrows appended to {common.append_jsonl(args.out, records)}")
    return 0 if failures == 0 and won else 1


if __name__ == "__main__":
    sys.exit(main())
