"""The training loop: one readable function from a model and batches to a trained checkpoint."""

from __future__ import annotations

import contextlib
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from lmforge.evaluate.lm import validation_metrics
from lmforge.models.config import ConfigError
from lmforge.train import checkpoint as ckpt
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv, all_reduce_mean, all_true, barrier, unwrap, with_mesh, wrap
from lmforge.train.metrics import MetricsLogger, matmul_peak_flops
from lmforge.train.optim import build_optimizer, build_scheduler
from lmforge.train.precision import autocast, describe_precision, resolve_precision


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss stayed NaN/Inf)."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(model, objective, train_data, val_data, cfg: TrainConfig, run_dir: Path, env: DistEnv,
          resume: bool = False, on_eval=None, on_sample=None, base: dict | None = None, on_step=None) -> dict:
    """Train `model` on the batches of a bound `objective`; checkpoint, evaluate and log; return the final metrics.

    `resume=True` continues from the newest intact checkpoint in `run_dir` exactly: same weights,
    optimizer moments, schedule, data position and RNG states. With `base` ({"path", "sha256"} of
    the checkpoint the model was loaded from), checkpoints hold the trainable parameters only.
    `on_step(model, step)` (e.g. `lmforge.compress.prune.MaskedTraining`) may change the unwrapped model's
    weights in place: it is called once before the first update (with the starting step, after a resume)
    and after every optimizer step, before that step's logging, evaluation and checkpoint.
    """
    device = env.device
    cfg.validate(env.world_size, model.cfg)
    if cfg.checkpoint_trainable_only and base is None:
        raise ConfigError("train.checkpoint_trainable_only needs model.checkpoint: the frozen weights are read "
                          "from that checkpoint when the run resumes or is exported")
    precision = resolve_precision(cfg.precision, device)
    env = with_mesh(env, cfg.distributed, cfg.tp_size)  # tp / fsdp-tp: a batch splits over env.dp_size ranks
    micro, accum = cfg.micro_batches(env.dp_size)
    raw = model.to(device)
    raw.set_gradient_checkpointing(cfg.activation_checkpointing)
    model = wrap(raw, env, cfg.distributed)  # FSDP / TP split `raw` in place, so the optimizer comes after
    optimizer = build_optimizer(raw, cfg.lr, cfg.weight_decay, cfg.betas)
    scheduler = build_scheduler(optimizer, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                                schedule=cfg.schedule, min_lr_ratio=cfg.min_lr_ratio)
    # fp16 (GPU only) needs loss scaling; bf16 and fp32 do not.
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    loader = objective.train_loader(train_data, cfg.batch_size, cfg.seq_len, cfg.seed, env.dp_rank, env.dp_size)
    say = print if env.is_main else (lambda *a, **k: None)
    greater = cfg.greater_is_better
    step, best, stale = 0, -math.inf if greater else math.inf, 0  # stale: evaluations since the best one
    if resume:
        resumed_from, state = ckpt.resume_latest(run_dir, log=say, model=raw, optimizer=optimizer,
                                                 scheduler=scheduler, scaler=scaler, base=base)
        if state is not None:
            loader.load_state_dict(state["data"])
            step, best = state["step"], state.get("best", state.get("best_val_loss", best))
            stale = state.get("stale_evals", 0)
            say(f"resumed from {resumed_from} at step {step}")
    if on_step is not None:  # e.g. pruning masks: re-applied to resumed weights before the first forward
        on_step(raw, step)
    if cfg.compile:
        model = torch.compile(model)

    log = MetricsLogger(run_dir, enabled=env.is_main)
    flops_per_token = raw.flops_per_token(cfg.seq_len, training=True)
    peak = matmul_peak_flops(device.type, precision) * env.world_size
    say(f"training {cfg.steps - step} steps from step {step}: precision {describe_precision(cfg.precision, device)}; "
        f"batch {cfg.batch_size} x {cfg.seq_len} tokens"
        + (f" ({accum} micro-batches of {micro} per process)" if accum > 1 else "")
        + (f" over {env.world_size} processes" if env.world_size > 1 else ""), flush=True)
    batches = iter(loader)
    bad_in_a_row, skipped, start, last = 0, 0, time.perf_counter(), {}
    first_step, trained_tokens = step, 0
    bar = _progress(cfg, step, env, precision)
    window_tokens, window_start = 0, time.perf_counter()

    while step < cfg.steps:
        model.train()
        batch = next(batches)
        losses = []
        for i, mb in enumerate(objective.split(batch, accum)):
            # DDP syncs gradients on the last micro-batch only.
            sync = contextlib.nullcontext() if i == accum - 1 or not hasattr(model, "no_sync") else model.no_sync()
            # Backward runs even on a NaN loss, so DDP ranks stay in step; the update is skipped below.
            with sync:
                with autocast(precision, device):
                    loss, _ = objective.loss(model, mb, device)
                scaled = loss / accum
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
            losses.append(loss.detach())
        loss = all_reduce_mean(torch.stack(losses).mean(), env)
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = (torch.nn.utils.clip_grad_norm_(raw.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                     else torch.tensor(0.0))
        if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
            grad_norm = grad_norm.full_tensor()
        # Under fp16 the scaler skips overflowing steps itself (and lowers its scale); only the loss counts here.
        finite = all_true(bool(torch.isfinite(loss)) and (scaler is not None or bool(torch.isfinite(grad_norm))), env)
        if not finite:
            optimizer.zero_grad(set_to_none=True)
            bad_in_a_row, skipped = bad_in_a_row + 1, skipped + 1
            if env.is_main:
                print(f"step {step}: loss {float(loss)} / grad norm {float(grad_norm)} not finite, step skipped")
            if bad_in_a_row >= cfg.max_bad_steps:
                raise TrainingError(f"loss or gradients were NaN/Inf for {bad_in_a_row} steps in a row "
                                    f"(last at step {step}); lower the learning rate or check the data")
            continue
        bad_in_a_row = 0
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if on_step is not None:
            on_step(raw, step)
        tokens = objective.num_tokens(batch) * env.dp_size
        window_tokens, trained_tokens = window_tokens + tokens, trained_tokens + tokens

        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - window_start
            tok_s = window_tokens / max(elapsed, 1e-9)
            last = {"loss": float(loss), "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                    "tok_per_s": round(tok_s, 1), "mfu": round(tok_s * flops_per_token / peak, 4),
                    "precision": precision, "skipped_steps": skipped}
            log.log(step, **last)
            window_tokens, window_start = 0, time.perf_counter()
            if bar is not None:
                bar.set_postfix(loss=f"{last['loss']:.3f}", tok_s=f"{tok_s:,.0f}", mfu=f"{last['mfu']:.0%}")
        if bar is not None:
            bar.update(1)

        out_of_time = cfg.time_limit is not None and time.perf_counter() - start > cfg.time_limit * 60
        stop_early, val = False, None
        if step % cfg.eval_every == 0 or step == cfg.steps or out_of_time:
            final = step == cfg.steps or out_of_time  # the last evaluation always covers the whole split
            val = validation_metrics(model, objective, val_data, cfg, env, precision,
                                     max_batches=None if final else cfg.eval_batches)
            if cfg.best_metric not in val:
                raise ConfigError(f"train.best_metric={cfg.best_metric!r} is not measured here; the evaluation "
                                  f"gives {', '.join(k for k in val if isinstance(val[k], float))}")
            value = val[cfg.best_metric]
            if (value > best) if greater else (value < best):
                best, stale = value, 0
            else:
                stale += 1
            stop_early = cfg.early_stopping_patience is not None and stale >= cfg.early_stopping_patience
            log.log(step, **val)
            if env.is_main:
                note = f"step {step}: " + ", ".join(f"{k} {v:.4f}" for k, v in val.items() if isinstance(v, float))
                bar.write(note) if bar is not None else print(note, flush=True)
            last.update(val)
            if on_eval is not None and env.is_main:
                on_eval(step, val)
        if on_sample is not None and env.is_main and cfg.sample_every and step % cfg.sample_every == 0:
            on_sample(raw, step)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps or out_of_time or stop_early:
            # The metrics go with the checkpoint only when these very weights were evaluated (keep-best reads them).
            measured = {k: v for k, v in val.items() if isinstance(v, (int, float))} if val is not None else {}
            ckpt.save_checkpoint(run_dir, step, model=raw, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                 base=base if cfg.checkpoint_trainable_only else None,
                                 data_state=loader.state_dict(), is_main=env.is_main,
                                 extra={"best": best, "best_metric": cfg.best_metric, "stale_evals": stale, **measured},
                                 keep_last=cfg.keep_last, best_metric=cfg.best_metric, greater_is_better=greater)
            barrier(env)
        if out_of_time:
            if env.is_main:
                print(f"time limit of {cfg.time_limit} min reached at step {step}")
            break
        if stop_early:
            if env.is_main:
                print(f"early stopping at step {step}: {cfg.best_metric} has not improved on {best:.4f} for "
                      f"{stale} evaluations")
            break
    if bar is not None:
        bar.close()
    log.close()
    elapsed = time.perf_counter() - start
    summary = {"step": step, **last, "precision": precision, "trained_steps": step - first_step,
               "trained_tokens": trained_tokens, "seconds": round(elapsed, 1), "best_metric": cfg.best_metric,
               "best": best}
    if env.is_main:
        print(_summary_line(summary, best), flush=True)
    return summary


evaluate = validation_metrics  # the trainer's old name (`lmforge.train.evaluate`), kept as an alias


def _progress(cfg: TrainConfig, step: int, env: DistEnv, precision: str):
    if not (cfg.progress and env.is_main):
        return None
    from tqdm.auto import tqdm

    return tqdm(total=cfg.steps, initial=step, desc=f"train ({precision})", unit="step", dynamic_ncols=True)


def _summary_line(summary: dict, best: float) -> str:
    """The end-of-run summary: steps, time, throughput, final and best validation loss."""
    minutes = summary["seconds"] / 60
    tok_s = summary["trained_tokens"] / max(summary["seconds"], 1e-9)
    parts = [f"done: step {summary['step']} ({summary['trained_steps']} trained in {minutes:.1f} min, "
             f"{summary['trained_tokens']:,} tokens, {tok_s:,.0f} tok/s, {summary['precision']})"]
    if "val_loss" in summary:
        parts.append(f"val_loss {summary['val_loss']:.4f} (ppl {summary['val_ppl']:.2f})")
    if summary.get("best_metric") in summary:
        parts.append(f"best {summary['best_metric']} {best:.4f}")
    if summary.get("skipped_steps"):
        parts.append(f"{summary['skipped_steps']} NaN/Inf steps skipped")
    return "; ".join(parts)


__all__ = ["TrainingError", "evaluate", "seed_everything", "train", "unwrap"]
