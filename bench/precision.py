"""fp32 vs bf16 autocast: the trainer's whole training step, side by side, behind `--train.precision auto`.

    .venv/bin/python bench/precision.py                  # llama-50m, llama-7m, bert-tiny
    .venv/bin/python bench/precision.py --quick          # smoke run
    .venv/bin/python bench/precision.py --models bert-tiny --repeats 9

One step is what `lmforge.train.loop.train` does per optimizer step: forward and loss under
`lmforge.train.precision.autocast(precision)` (fp32 master weights; bf16 autocast on the matmuls),
backward, gradient clipping at 1.0, the trainer's AdamW (`build_optimizer`), zero_grad. Both sides
start from the same weights and see the same batch. fp32 (A) and bf16 (B) run interleaved in this
process (shared/BENCHMARKING.md); "bf16 speed-up" is the median of per-pair fp32-time / bf16-time,
so > 1 means bf16 is faster. MFU divides each side's model FLOP/s by the GEMM peak *of its own
dtype*, measured here (best of torch.mm and F.linear at 2048², median of 5).

The table is the evidence behind `resolve_precision("auto")`: bf16 is the default only on CPUs
where it wins here.
"""

from __future__ import annotations

import copy
import sys

import common
import torch


def make_step(row: common.Row, model, precision: str):
    """One trainer step of `model` in `precision` on a fixed batch (CLM for decoders, 15 % MLM for encoders)."""
    from lmforge.objectives import causal_lm_loss, masked_lm_loss
    from lmforge.train.optim import build_optimizer
    from lmforge.train.precision import autocast

    cfg, device = model.cfg, torch.device("cpu")
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (row.batch, row.seq + 1), generator=g)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    labels = inputs.masked_fill(torch.rand(inputs.shape, generator=g) >= 0.15, -100)
    optimizer = build_optimizer(model, 1e-4, 0.1, (0.9, 0.95))

    def step():
        with autocast(precision, device):
            if cfg.family == "encoder":
                loss = masked_lm_loss(model(inputs).logits, labels)
            else:
                loss = causal_lm_loss(model(inputs), targets=targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def main(argv=None) -> int:
    from lmforge.models import build_model, get_preset

    parser = common.base_parser(__doc__.splitlines()[0], common.Path("bench/results/precision.jsonl"))
    parser.add_argument("--models", nargs="+", default=list(common.TRAIN_ROWS), choices=list(common.TRAIN_ROWS))
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    info = common.machine_info()
    peaks = {"fp32": common.gemm_peak(torch.float32), "bf16": common.gemm_peak(torch.bfloat16)}
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    print("\n".join(common.header_lines(info, "Training step: fp32 vs bf16 autocast (lmforge trainer)")))
    print(f"- GEMM peak measured here: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} "
          f"GFLOP/s (ratio {peaks['bf16'] / peaks['fp32']:.2f})")
    print()
    table, records, rid = [], [], common.run_id()
    for name in args.models:
        row = common.TRAIN_ROWS[name]
        if args.quick or not info["native_bf16"]:  # emulated bf16 is slow: a small batch (BENCHMARKING.md)
            row = common.Row(row.name, row.preset, row.overrides, 2, min(row.seq, 128))
        torch.manual_seed(0)
        cfg = get_preset(row.preset, **row.overrides)
        base = build_model(cfg, task="masked-lm" if cfg.family == "encoder" else "causal-lm").train()
        step_a = make_step(row, copy.deepcopy(base), "fp32")
        step_b = make_step(row, copy.deepcopy(base), "bf16")
        loss_a, loss_b = float(step_a().detach()), float(step_b().detach())  # the first step: same weights, same batch
        res = common.interleave(step_a, step_b, warmup=warmup, repeats=repeats)
        tokens = row.batch * row.seq
        flops = base.flops_per_token(row.seq, training=True) * tokens
        speedup = common.Summary.of([ta / tb for ta, tb in zip(res.a, res.b)])  # > 1: bf16 faster
        bf16_wins = len(res.a) - res.wins
        p = common.sign_test(bf16_wins, len(res.a))
        table.append([f"{name} ({base.num_parameters() / 1e6:.1f}M)", f"{row.batch}×{row.seq}",
                      res.rate("a", tokens).fmt(), res.rate("b", tokens).fmt(),
                      f"{flops / min(res.a) / peaks['fp32']:.0%} / {flops / min(res.b) / peaks['bf16']:.0%}",
                      f"**{speedup.fmt('.2f')}**", f"{bf16_wins}/{len(res.a)} (p={p:.2f})",
                      f"{abs(loss_a - loss_b):.1e}"])
        records.append({"run": rid, "bench": "precision", "model": name, "batch": row.batch, "seq": row.seq,
                        "params": base.num_parameters(), "tok_s_fp32": res.rate("a", tokens).as_dict(),
                        "tok_s_bf16": res.rate("b", tokens).as_dict(), "bf16_speedup": speedup.as_dict(),
                        "bf16_wins": bf16_wins, "pairs": len(res.a), "peak_fp32": peaks["fp32"],
                        "peak_bf16": peaks["bf16"], "first_loss_fp32": loss_a, "first_loss_bf16": loss_b, **info})
        print(f"  done: {name}: bf16 speed-up {speedup.fmt('.2f')}", file=sys.stderr, flush=True)
        del base, step_a, step_b
    print(common.markdown_table(
        ["model", "batch×seq", "fp32 tok/s", "bf16 tok/s", "MFU (best) fp32 / bf16 (own peak)",
         "bf16 speed-up (median [min–max])", "bf16 faster in", "first-step loss diff"], table))
    if not args.no_out:
        common.append_jsonl(args.out, records)
    return 0


if __name__ == "__main__":
    sys.exit(main())
