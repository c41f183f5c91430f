"""Training tokens/s and MFU of lmforge vs transformers: same config, weights, batch, precision; AdamW included.

    .venv/bin/python bench/train.py             # ~7M LLaMA, ~50M LLaMA, tiny BERT; fp32, and bf16 autocast if native
    .venv/bin/python bench/train.py --quick     # smoke run
    .venv/bin/python bench/train.py --models llama-50m --precisions bf16 --profile

One training step is the lmforge trainer's (`lmforge.train.loop.train`): forward and loss under
`lmforge.train.precision.autocast(precision)` (fp32 master weights; in `bf16`, autocast runs the
matmuls in bf16), backward, gradient clipping at 1.0, the trainer's AdamW (fused where supported),
zero_grad. The loss is the trainer's own objective (`CausalLMObjective.loss`, `MaskedLMObjective.loss`).
The reference is `LlamaForCausalLM` / `BertForMaskedLM` loaded from lmforge's Hugging Face export of
the same model, stepping `torch.optim.AdamW(foreach=True)` on `model(..., labels=...).loss` under the
same autocast. Both losses are checked equal on the first step before a row is timed.

Variants: `lmforge` (eager); `+compile` is the trainer's `--train.compile true` today (the model
compiled, the loss eager); `+compile(loss)` compiles the model together with the objective's loss.
The reference always runs eager. Rows are interleaved A B A B in this process
(shared/BENCHMARKING.md); the ratio is the median of per-pair ratios; "lmforge wins" gives the
sign-test p. MFU = model FLOPs (6N + 12·L·d·T per token, N = every Linear weight incl. the LM head;
BERT's MLM head counted at the predicted 15 % only, the work the objective needs) × tokens/s ÷ the
GEMM peak of the dtype the matmuls run in, measured here (best of torch.mm and F.linear at 2048²,
median of 5, best of 3 rounds).

Where the CPU has no native bf16, `auto` picks fp32 and the bf16 rows are skipped (25-35x slower).
"""

from __future__ import annotations

import copy
import sys
import tempfile

import common
import torch

TARGETS = {"llama-50m": 1.25, "llama-7m": 1.10, "bert-tiny": 1.10}
VARIANTS = {"lmforge": None, "lmforge+compile": "model", "lmforge+compile(loss)": "model+loss"}
CPU = torch.device("cpu")


def build(row: common.Row, folder: str):
    """The lmforge model (fp32, train mode) and its transformers twin loaded from its HF export."""
    import transformers

    from lmforge.interop import save_pretrained
    from lmforge.models import build_model, get_preset

    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = get_preset(row.preset, **row.overrides)
    task = "masked-lm" if cfg.family == "encoder" else "causal-lm"
    ours = build_model(cfg, task=task)
    save_pretrained(ours, folder)
    cls = transformers.BertForMaskedLM if cfg.family == "encoder" else transformers.LlamaForCausalLM
    theirs = cls.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    return ours.train(), theirs.train(), cfg


def make_batch(row: common.Row, cfg):
    """(lmforge objective, its batch, transformers' keyword arguments, predicted tokens): the same data both sides."""
    from lmforge.train.objective import CausalLMObjective
    from lmforge.train.objective_encoder import MaskedLMObjective

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, cfg.vocab_size, (row.batch, row.seq + 1), generator=g)
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    if cfg.family == "encoder":  # 15 % of positions predicted, the rest ignored
        labels = inputs.masked_fill(torch.rand(inputs.shape, generator=g) >= 0.15, -100)
        batch = {"input_ids": inputs, "attention_mask": torch.ones_like(inputs), "labels": labels}
        return MaskedLMObjective(), batch, batch, int((labels != -100).sum())
    # Packed windows: targets already shifted, one per position, on both sides.
    theirs = dict(input_ids=inputs, labels=targets, shift_labels=targets)
    return CausalLMObjective(), (inputs, targets), theirs, targets.numel()


def model_flops(model, row: common.Row, predicted: int) -> float:
    """Model FLOPs of one training step (shared/BENCHMARKING.md); an MLM head counts at the predicted tokens only,
    the work the objective needs (transformers computes it at every position: its MFU is lower for it)."""
    tokens = row.batch * row.seq
    flops = model.flops_per_token(row.seq, training=True) * tokens
    head = getattr(model, "mlm_head", None)
    if head is not None:
        head_params = sum(m.weight.numel() for m in head.modules() if isinstance(m, torch.nn.Linear))
        flops -= 6 * head_params * (tokens - predicted)
    return flops


def make_steps(row: common.Row, ours, theirs, cfg, precision: str, compile_what: str | None):
    """One training step of lmforge and one of transformers on the same fixed batch; each returns its loss."""
    from lmforge.train.optim import build_optimizer
    from lmforge.train.precision import autocast

    objective, batch, their_kwargs, _ = make_batch(row, cfg)

    model = torch.compile(ours) if compile_what == "model" else ours
    loss_fn = torch.compile(objective.loss) if compile_what == "model+loss" else objective.loss
    opt_a = build_optimizer(ours, 1e-4, 0.1, (0.9, 0.95))
    opt_b = torch.optim.AdamW(theirs.parameters(), lr=1e-4, weight_decay=0.1, betas=(0.9, 0.95), foreach=True)

    def loss_ours():
        with autocast(precision, CPU):
            return loss_fn(model, batch, CPU)[0]

    def loss_theirs():
        with autocast(precision, CPU):
            return theirs(**their_kwargs).loss

    def stepper(loss_of, params, optimizer):
        def step():
            loss = loss_of()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            return loss.detach()
        return step

    return stepper(loss_ours, list(ours.parameters()), opt_a), stepper(loss_theirs, list(theirs.parameters()), opt_b)


def main(argv=None) -> int:
    parser = common.base_parser(__doc__.splitlines()[0], common.Path("bench/results/train.jsonl"))
    parser.add_argument("--models", nargs="+", default=list(common.TRAIN_ROWS), choices=list(common.TRAIN_ROWS))
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--no-compile", action="store_true", help="only the eager rows")
    parser.add_argument("--profile", action="store_true", help="print op tables of both sides (eager rows)")
    args = parser.parse_args(argv)
    common.pin_threads(args.threads)
    info = common.machine_info()
    precisions = [p for p in args.precisions if p == "fp32" or info["native_bf16"]]
    variants = [v for v in args.variants if not (args.no_compile and VARIANTS[v])]
    peaks = {p: common.gemm_peak(torch.float32 if p == "fp32" else torch.bfloat16) for p in precisions}
    repeats = args.repeats or (3 if args.quick else 7)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    print("\n".join(common.header_lines(info, "Training step: lmforge vs transformers")))
    print("- GEMM peak measured here: " + ", ".join(f"{n} {p / 1e9:.0f} GFLOP/s" for n, p in peaks.items())
          + " (each row's MFU is against the peak of the dtype its matmuls run in); "
          + ("bf16 rows: autocast, fp32 master weights, as the trainer's `--train.precision bf16`/`auto`"
             if "bf16" in precisions else "no bf16 rows: this CPU has no native bf16 "
             "(`auto` picks fp32; bf16 training is 25-35x slower there)"))
    print()
    table, records, rid, failed = [], [], common.run_id(), False
    for name in args.models:
        row = common.TRAIN_ROWS[name]
        if args.quick:
            row = common.Row(row.name, row.preset, row.overrides, 2, min(row.seq, 128))
        with tempfile.TemporaryDirectory() as folder:
            base_ours, base_theirs, cfg = build(row, folder)
        tokens = row.batch * row.seq
        flops = model_flops(base_ours, row, make_batch(row, cfg)[3])
        for precision in precisions:
            peak = peaks[precision]
            for label in variants:
                a, b = copy.deepcopy(base_ours), copy.deepcopy(base_theirs)
                step_a, step_b = make_steps(row, a, b, cfg, precision, VARIANTS[label])
                diff = abs(float(step_a()) - float(step_b()))  # the first step: same weights, same batch
                if diff > (1e-4 if precision == "fp32" else 2e-2):
                    print(f"  FAILED: {name} {precision} {label}: first losses differ by {diff:.2e}", file=sys.stderr)
                    failed = True
                res = common.interleave(step_a, step_b, warmup=warmup - 1 + (2 if VARIANTS[label] else 0),
                                        repeats=repeats)
                ratio = common.Summary.of(res.speedups)
                tok_a, tok_b = res.rate("a", tokens), res.rate("b", tokens)
                target = TARGETS.get(name)
                p = common.sign_test(res.wins, len(res.a))
                table.append([f"{name} ({base_ours.num_parameters() / 1e6:.1f}M)", precision, label,
                              f"{row.batch}×{row.seq}", tok_a.fmt(), tok_b.fmt(),
                              f"{flops / min(res.a) / peak:.0%} / {flops / min(res.b) / peak:.0%}",
                              f"**{ratio.fmt('.2f')}**", f"{res.wins}/{len(res.a)} (p={p:.2f})",
                              f"{diff:.1e}", f"≥ {target:.2f}" if target else ""])
                records.append({"run": rid, "bench": "train", "model": name, "precision": precision,
                                "variant": label, "batch": row.batch, "seq": row.seq,
                                "params": base_ours.num_parameters(), "tok_s_lmforge": tok_a.as_dict(),
                                "tok_s_transformers": tok_b.as_dict(), "ratio": ratio.as_dict(),
                                "speedups": res.speedups, "wins": res.wins, "sign_p": p, "loss_diff": diff,
                                "peak_flops": peak, **info})
                print(f"  done: {name} {precision} {label}: ratio {ratio.fmt('.2f')}", file=sys.stderr, flush=True)
                if args.profile and not VARIANTS[label]:
                    print(f"### profile: {name} {precision} {label}\n")
                    print(common.profile_tables(*common.profile_pair(step_a, step_b)), flush=True)
                del a, b, step_a, step_b
    print(common.markdown_table(
        ["model", "precision", "lmforge variant", "batch×seq", "lmforge tok/s", "transformers tok/s",
         "MFU (best) lmforge / HF", "speed-up (median [min–max])", "lmforge wins", "first loss diff", "target"],
        table))
    if not args.no_out:
        common.append_jsonl(args.out, records)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
