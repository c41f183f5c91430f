"""The training job: prepared data + a preset or a checkpoint + an objective -> a trained, exported checkpoint."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
import yaml

from lmforge.data import TokenDataset
from lmforge.fileio import atomic_write
from lmforge.interop import load_any, load_model
from lmforge.interop.hf import resolve
from lmforge.interop.native import weights_digest
from lmforge.models import Model, get_preset
from lmforge.models.config import ConfigError
from lmforge.train.checkpoint import latest_checkpoint
from lmforge.train.config import DataSpec, ModelSpec, TrainConfig
from lmforge.train.distributed import barrier, setup, teardown
from lmforge.train.loop import seed_everything, train
from lmforge.train.objective import get_objective
from lmforge.train.precision import resolve_precision
from lmforge.train.rundir import check_same_run, clear_run_dir, plan_run_dir


def run_pretraining(data: DataSpec, model: ModelSpec, objective: str, train_cfg: TrainConfig, out_dir: str,
                    resume: bool = False, device: str = "auto", export: bool = True,
                    overwrite: bool = False, distill=None, arguments: dict | None = None) -> dict:
    """Train from `data.path` and write checkpoints, metrics and (with `export`) a Hugging Face folder.

    The model starts from a preset or from a checkpoint (`model.checkpoint`). A folder that already
    holds a run is refused unless `resume` (continue from its newest intact checkpoint) or
    `overwrite` (delete that run's files and start from step 0) says what to do. With `distill` (a
    `lmforge.compress.config.DistillConfig`), the checkpoint is the teacher and a student made from it trains
    on the objective's loss and the teacher's outputs (`lmforge.compress.distill`); the export is the student.
    """
    import lmforge
    from lmforge.tokenizers import Tokenizer

    env = setup(device)
    run_dir = Path(out_dir)
    try:
        seed_everything(train_cfg.seed)
        unbound = get_objective(objective)
        train_cfg.validate(env.world_size)
        if not data.path:
            raise ConfigError("data.path is empty: give a folder written by `lmforge data prepare`")
        start = plan_run_dir(run_dir, resume, overwrite)  # every rank reads, before the main one writes
        if resume and start.message is None:
            check_same_run(run_dir, {"objective": objective})
        barrier(env)
        tokenizer = Tokenizer.from_pretrained(data.tokenizer) if data.tokenizer else None
        train_data = TokenDataset(data.path, "train", tokenizer)
        val_data = TokenDataset(data.path, "val", tokenizer)
        binding = unbound.bind(train_data, tokenizer)  # special ids; the tokenizer copy that names them
        net, base = start_model(model, binding, train_data, tokenizer, log=print if env.is_main else None,
                                digest=train_cfg.checkpoint_trainable_only)
        trained_objective = binding.objective
        if distill is not None:
            from lmforge.compress.distill import distillation_setup

            net, trained_objective = distillation_setup(net, trained_objective, distill)
        train_cfg.validate(env.world_size, net.cfg)
        name = model.checkpoint or model.preset
        if env.is_main:
            if start.message:
                print(start.message)
            if start.clear:
                clear_run_dir(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            # config.yaml holds exactly the arguments of the command (`lmforge pretrain`, or `lmforge distill`'s
            # when given): `--config run/config.yaml` reruns it.
            arguments = arguments or {"data": dataclasses.asdict(data), "model": dataclasses.asdict(model),
                                      "objective": objective, "train": dataclasses.asdict(train_cfg),
                                      "out_dir": out_dir, "device": device}
            _write(run_dir / "config.yaml", yaml.safe_dump(arguments, sort_keys=False, allow_unicode=True))
            facts = {"model_config": net.cfg.to_dict(), "parameters": net.num_parameters(),
                     "trainable_parameters": net.num_parameters(trainable_only=True), "base": base,
                     "precision": resolve_precision(train_cfg.precision, env.device), "world_size": env.world_size,
                     "device": str(env.device), "lmforge": lmforge.__version__, "torch": torch.__version__}
            _write(run_dir / "run.json", json.dumps(facts, indent=1, ensure_ascii=False) + "\n")
            print(f"{name}: {net.num_parameters():,} parameters; train {train_data.num_tokens:,} tokens, "
                  f"val {val_data.num_tokens:,} tokens; objective {objective}; device {env.device}")
        barrier(env)
        decoder = net.cfg.family == "decoder" and tokenizer is not None

        def sample(m, step):
            if decoder:
                m = getattr(m, "student", m)  # a distillation pair samples from its student
                for prompt, text in generate_samples(m, tokenizer, train_cfg.sample_prompts).items():
                    print(f"  [{step}] {prompt!r} -> {text!r}")

        result = train(net, trained_objective, train_data, val_data, train_cfg, run_dir, env, resume=resume,
                       on_sample=None if env.enabled else sample, base=base)
        if env.is_main:
            # The final checkpoint holds the full weights whatever the strategy (FSDP shards `net`).
            final = load_model(latest_checkpoint(run_dir) / "model")
            if distill is not None:  # the student, also as model/ in lmforge's format (a pruned width has no HF form)
                from lmforge.interop.native import save_model

                final = trained_objective.export_model(final)
                save_model(final, run_dir / "model")
                if tokenizer is not None:
                    tokenizer.save(run_dir / "model")
            if decoder:
                result["samples"] = generate_samples(final, tokenizer, train_cfg.sample_prompts)
            if export:
                try:
                    folder = export_hf(trained_objective.export_model(final),
                                       trained_objective.export_tokenizer(binding.tokenizer), run_dir / "hf")
                    print(f"Hugging Face export: {folder}")
                except ConfigError as err:
                    print(f"no Hugging Face export: {err}")
            _write(run_dir / "result.json", json.dumps(result, indent=1, ensure_ascii=False))
        return result
    finally:
        teardown(env)


def start_model(spec: ModelSpec, binding, dataset: TokenDataset, tokenizer=None, log=None,
                digest: bool = True) -> tuple[Model, dict | None]:
    """The model a run starts from, and the base reference ({"path", "sha256", "overrides"}) of a checkpoint.

    From a preset: a fresh model whose vocabulary, pad and EOS ids come from the data and the bound
    objective. From a checkpoint: its weights as the objective's model task (a head it lacks is
    initialised; the loader's warning names it), checked against the data's vocabulary and tokenizer.
    `digest` hashes the checkpoint's weight files (what trainable-only checkpoints are checked
    against; seconds for a multi-GB model, so only when asked); else "sha256" is None.
    """
    objective = binding.objective
    if spec.checkpoint is None:
        ids = {"vocab_size": dataset.vocab_size, "eos_token_id": dataset.eos_id}
        if tokenizer is not None:
            ids.update(bos_token_id=tokenizer.bos_id, pad_token_id=tokenizer.pad_id)
        cfg = get_preset(spec.preset, **{**ids, **binding.overrides, **spec.overrides})
        return objective.build_model(cfg), None
    folder = resolve(spec.checkpoint)
    overrides = {**objective.model_overrides, **spec.overrides}
    try:
        model = load_any(folder, task=objective.model_task, overrides=overrides, **objective.model_kwargs)
    except ConfigError as err:
        raise ConfigError(f"model.checkpoint {spec.checkpoint}: {err}") from None
    needed = binding.overrides.get("vocab_size", dataset.vocab_size)
    if model.cfg.vocab_size < needed:
        raise ConfigError(f"model.checkpoint {spec.checkpoint} has {model.cfg.vocab_size} token ids, but the data and "
                          f"objective need {needed}: prepare the data with the checkpoint's tokenizer")
    _check_tokenizer_matches(folder, tokenizer, spec.checkpoint)
    if log is not None:
        log(f"starting from {spec.checkpoint} as a {objective.model_task} model "
            f"({model.num_parameters():,} parameters)")
    sha256 = weights_digest(folder) if digest else None
    return objective.check_model(model), {"path": str(folder), "sha256": sha256, "overrides": overrides}


def _check_tokenizer_matches(folder: Path, tokenizer, name: str) -> None:
    """Refuse data tokenized by another tokenizer than the one saved beside the checkpoint (when both exist)."""
    from lmforge.tokenizers import Tokenizer

    if tokenizer is None or not any((folder / f).is_file() for f in ("tokenizer.json", "vocab.txt", "vocab.json")):
        return
    theirs = Tokenizer.from_pretrained(folder)
    if theirs.fingerprint() != tokenizer.fingerprint():
        raise ConfigError(f"data.tokenizer is not the tokenizer of model.checkpoint {name}: prepare the data with "
                          f"`lmforge data prepare FILES --tokenizer {folder}`")


def _write(path: Path, text: str) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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
