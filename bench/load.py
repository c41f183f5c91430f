"""Checkpoint loading: seconds and peak memory to load all-MiniLM-L6-v2, lmforge vs transformers.

    .venv/bin/python bench/load.py                 # 7 interleaved pairs of fresh processes
    .venv/bin/python bench/load.py --repeats 3

Each measurement is a fresh Python process that imports everything first, then times the load, and the
load plus a first forward pass (which touches every weight: a memory-mapped file is read in then), and
reports how far they raised the peak resident memory (`ru_maxrss` after the forward minus the resident
size just before the load). lmforge: `lmforge.interop.load_pretrained("all-minilm-l6-v2")` (built on the meta
device, the checkpoint's tensors assigned, no random init). transformers: `BertModel.from_pretrained`
on the same folder. The weights are 90.9 MB of fp32; one copy of them is the floor.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import common

CODE = r"""
import json, resource, sys, time
import torch, transformers
from lmforge.assets import minilm_dir
from lmforge.interop import load_pretrained
folder = minilm_dir()
def rss_kb():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
before = rss_kb()
start = time.perf_counter()
if sys.argv[1] == "lmforge":
    model = load_pretrained(folder)
else:
    model = transformers.BertModel.from_pretrained(folder)
seconds = time.perf_counter() - start
with torch.no_grad():  # touches every weight: a lazily read (memory-mapped) file is paged in here
    model(torch.tensor([[101, 7592, 2088, 102]]))
forward = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "with_forward": forward, "peak_mb": (peak - before) / 1024}))
"""


def measure(side: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CODE, side], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.Path("bench/results/load.jsonl"))
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    info = common.machine_info()
    runs: dict[str, list[dict]] = {"lmforge": [], "transformers": []}
    for i in range(repeats):  # interleaved, the order alternating
        for side in (("lmforge", "transformers") if i % 2 == 0 else ("transformers", "lmforge")):
            runs[side].append(measure(side))
    print("\n".join(common.header_lines(info, "Loading all-MiniLM-L6-v2 (22.7 M parameters, 90.9 MB fp32)")))
    print()
    rows, records = [], []
    for side, values in runs.items():
        seconds = common.Summary.of([v["seconds"] for v in values])
        forward = common.Summary.of([v["with_forward"] for v in values])
        peak = common.Summary.of([v["peak_mb"] for v in values])
        rows.append([side, len(values), seconds.fmt(".3f"), forward.fmt(".3f"), peak.fmt(".0f")])
        records.append({"run": common.run_id(), "bench": "load", "side": side, "seconds": seconds.as_dict(),
                        "with_forward": forward.as_dict(), "peak_mb": peak.as_dict(), **info})
    ratio = statistics.median(b["with_forward"] / a["with_forward"]
                              for a, b in zip(runs["lmforge"], runs["transformers"]))
    print(common.markdown_table(["loader", "processes", "load s", "load + first forward s",
                                 "peak memory added, MB"], rows))
    print(f"\nload + first forward: lmforge {ratio:.2f}x as fast as transformers (median of per-pair ratios); "
          "columns are median [min–max]")
    if not args.no_out:
        common.append_jsonl(args.out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
