"""The pretraining job: prepared data + a preset + an objective -> a trained, exported checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import yaml

from lmforge.data import TokenDataset
from lmforge.interop import load_model
from lmforge.models import get_preset
from lmforge.models.config import ConfigError
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.config import DataSpec, ModelSpec, TrainConfig
from lmforge.train.distributed import setup, teardown
from lmforge.train.loop import seed_everything, train
from lmforge.train.tasks import get_task


def run_pretraining(data: DataSpec, model: ModelSpec, objective: str, train_cfg: TrainConfig, out_dir: str,
                    resume: bool = False, device: str = "auto", export: bool = True) -> dict:
    """Train from `data.path` and write checkpoints, metrics and (with `export`) a Hugging Face folder."""
    from lmforge.tokenizers import Tokenizer

    env = setup(device)
    run_dir = Path(out_dir)
    try:
        seed_everything(train_cfg.seed)
        if not data.path:
            raise ConfigError("data.path is empty: give a folder written by `lmforge data prepare`")
        tokenizer = Tokenizer.from_pretrained(data.tokenizer) if data.tokenizer else None
        train_data = TokenDataset(data.path, "train", tokenizer)
        val_data = TokenDataset(data.path, "val", tokenizer)
        task = get_task(objective)
        ids = {"vocab_size": train_data.vocab_size, "eos_token_id": train_data.eos_id}
        if tokenizer is not None:
            ids.update(bos_token_id=tokenizer.bos_id, pad_token_id=tokenizer.pad_id)
        ids.update(task.configure(train_data, tokenizer))  # e.g. ids reserved for [MASK], sentinels
        cfg = get_preset(model.preset, **{**ids, **model.overrides})
        if cfg.family not in task.families:
            raise ConfigError(f"objective {objective!r} trains {' or '.join(task.families)} models, "
                              f"but preset {model.preset!r} is {cfg.family!r}")
        net = task.build_model(cfg)
        if env.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            resolved = {"data": dataclasses.asdict(data), "model": dataclasses.asdict(model),
                        "objective": objective, "train": dataclasses.asdict(train_cfg), "out_dir": out_dir,
                        "model_config": cfg.to_dict(), "parameters": net.num_parameters()}
            (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True))
            print(f"{model.preset}: {net.num_parameters():,} parameters; train {train_data.num_tokens:,} tokens, "
                  f"val {val_data.num_tokens:,} tokens; objective {objective}; device {env.device}")

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
                    export_hf(task.export_model(final), tokenizer, run_dir / "hf")
                except ConfigError as err:
                    print(f"no Hugging Face export: {err}")
            (run_dir / "result.json").write_text(json.dumps(result, indent=1, ensure_ascii=False))
        return result
    finally:
        teardown(env)


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
