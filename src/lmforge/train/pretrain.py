"""The pretraining job: prepared data + a preset + an objective -> a trained, exported checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import yaml

from lmforge.data import TokenDataset
from lmforge.fileio import atomic_write
from lmforge.interop import load_model
from lmforge.models import get_preset
from lmforge.models.config import ConfigError
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.config import DataSpec, ModelSpec, TrainConfig
from lmforge.train.distributed import barrier, setup, teardown
from lmforge.train.loop import seed_everything, train
from lmforge.train.precision import resolve_precision
from lmforge.train.rundir import clear_run_dir, plan_run_dir
from lmforge.train.tasks import get_task


def run_pretraining(data: DataSpec, model: ModelSpec, objective: str, train_cfg: TrainConfig, out_dir: str,
                    resume: bool = False, device: str = "auto", export: bool = True,
                    overwrite: bool = False) -> dict:
    """Train from `data.path` and write checkpoints, metrics and (with `export`) a Hugging Face folder.

    A folder that already holds a run is refused unless `resume` (continue from its newest intact
    checkpoint) or `overwrite` (delete that run's files and start from step 0) says what to do.
    """
    import lmforge
    from lmforge.tokenizers import Tokenizer

    env = setup(device)
    run_dir = Path(out_dir)
    try:
        seed_everything(train_cfg.seed)
        task = get_task(objective)
        train_cfg.validate(env.world_size)
        if not data.path:
            raise ConfigError("data.path is empty: give a folder written by `lmforge data prepare`")
        start = plan_run_dir(run_dir, resume, overwrite)  # every rank reads, before the main one writes
        if resume and start.message is None:
            _check_same_objective(run_dir, objective)
        barrier(env)
        tokenizer = Tokenizer.from_pretrained(data.tokenizer) if data.tokenizer else None
        train_data = TokenDataset(data.path, "train", tokenizer)
        val_data = TokenDataset(data.path, "val", tokenizer)
        ids = {"vocab_size": train_data.vocab_size, "eos_token_id": train_data.eos_id}
        if tokenizer is not None:
            ids.update(bos_token_id=tokenizer.bos_id, pad_token_id=tokenizer.pad_id)
        ids.update(task.configure(train_data, tokenizer))  # e.g. ids reserved for [MASK], sentinels
        cfg = get_preset(model.preset, **{**ids, **model.overrides})
        if cfg.family not in task.families:
            raise ConfigError(f"objective {objective!r} trains {' or '.join(task.families)} models, "
                              f"but preset {model.preset!r} is {cfg.family!r}")
        train_cfg.validate(env.world_size, cfg)
        net = task.build_model(cfg)
        if env.is_main:
            if start.message:
                print(start.message)
            if start.clear:
                clear_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            # config.yaml holds exactly the arguments of `lmforge pretrain`: `--config run/config.yaml` reruns it.
            arguments = {"data": dataclasses.asdict(data), "model": dataclasses.asdict(model), "objective": objective,
                         "train": dataclasses.asdict(train_cfg), "out_dir": out_dir, "device": device}
            _write(run_dir / "config.yaml", yaml.safe_dump(arguments, sort_keys=False, allow_unicode=True))
            facts = {"model_config": net.cfg.to_dict(), "parameters": net.num_parameters(),
                     "precision": resolve_precision(train_cfg.precision, env.device), "world_size": env.world_size,
                     "device": str(env.device), "lmforge": lmforge.__version__, "torch": torch.__version__}
            _write(run_dir / "run.json", json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
            print(f"{model.preset}: {net.num_parameters():,} parameters; train {train_data.num_tokens:,} tokens, "
                  f"val {val_data.num_tokens:,} tokens; objective {objective}; device {env.device}")
        barrier(env)

        def sample(m, step):
            if tokenizer is not None and cfg.family == "decoder":
                for prompt, text in generate_samples(m, tokenizer, train_cfg.sample_prompts).items():
                    print(f"  [{step}] {prompt!r} -> {text!r}")

        result = train(net, task, train_data, val_data, train_cfg, run_dir, env, resume=resume,
                       on_sample=None if env.enabled else sample)
        if env.is_main:
            # The final checkpoint holds the full weights whatever the strategy (FSDP shards `net`).
            final = load_model(latest_checkpoint(run_dir) / "model")
            if tokenizer is not None and cfg.family == "decoder":
                result["samples"] = generate_samples(final, tokenizer, train_cfg.sample_prompts)
            if export:
                try:
                    folder = export_hf(task.export_model(final), task.export_tokenizer(tokenizer), run_dir / "hf")
                    print(f"Hugging Face export: {folder}")
                except ConfigError as err:
                    print(f"no Hugging Face export: {err}")
            _write(run_dir / "result.json", json.dumps(result, indent=1, ensure_ascii=False))
        return result
    finally:
        teardown(env)


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def _check_same_objective(run_dir: Path, objective: str) -> None:
    """Refuse to resume a run with another objective than the one it was started with."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{saved_path}: not valid YAML ({err})") from None
    if isinstance(saved, dict) and saved.get("objective", objective) != objective:
        raise ConfigError(f"{run_dir} was trained with objective {saved['objective']!r}, not {objective!r}: "
                          f"resume with --objective {saved['objective']}, or start a new run")


def generate_samples(model, tokenizer, prompts: list[str], max_new_tokens: int = 24,
                     seed: int = 0) -> dict[str, str]:
    """Sampled continuations (temperature 0.8, top-k 40) of each prompt, with their own RNG."""
    from lmforge.generate import generate

    gen = torch.Generator().manual_seed(seed)
    out = {}
    model.eval()
    for prompt in prompts:
        ids = torch.tensor([[tokenizer.eos_id] + tokenizer.encode(prompt, add_special_tokens=False)])
        new = generate(model, ids.to(model.device), max_new_tokens, temperature=0.8, top_k=40, generator=gen)
        out[prompt] = prompt + tokenizer.decode(new[0].tolist())
    return out


def export_hf(model, tokenizer, folder: Path) -> Path:
    """The model (and its tokenizer) as a Hugging Face folder that `transformers` loads."""
    from lmforge.interop import save_pretrained

    save_pretrained(model, folder)
    if tokenizer is not None:
        tokenizer.save(folder)
    return folder
