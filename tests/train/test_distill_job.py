"""`lmforge distill --task clm` through the pretraining job: a decoder teacher's checkpoint in, a half-depth student
out (its model/ in lmforge's format, its hf/ a LLaMA folder transformers loads), the teacher never in a checkpoint."""

from __future__ import annotations

import torch
from _tiny import TINY_MODEL
from safetensors.torch import load_file

from lmforge.compress.config import DistillConfig
from lmforge.train import DataSpec, ModelSpec, TrainConfig, run_pretraining


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"steps": 6, "batch_size": 8, "seq_len": 32, "lr": 3e-3, "warmup_steps": 0,
                          "schedule": "constant", "eval_every": 6, "checkpoint_every": 6, "log_every": 1,
                          "progress": False, "precision": "fp32", "sample_prompts": [], **kw})


def test_a_decoder_distils_into_a_half_depth_student(tiny_data, tmp_path):
    import transformers as T

    from lmforge.compress.job import run_distill
    from lmforge.interop import load_model
    from lmforge.tasks import TaskSpec
    from lmforge.train.config import TaskData

    data, tok = tiny_data
    run_pretraining(DataSpec(str(data), str(tok)), ModelSpec(preset="llama-tiny", overrides={**TINY_MODEL,
                    "n_layers": 4}), "clm", _cfg(steps=20), str(tmp_path / "teacher"))
    teacher_dir = tmp_path / "teacher" / "step-0000020" / "model"
    teacher = load_model(teacher_dir)
    result = run_distill(str(teacher_dir), "clm", DistillConfig(student_init="every-other", hidden_weight=1.0),
                         TaskData(), DataSpec(str(data), str(tok)), TaskSpec(), _cfg(best_metric="auto"), None, 1,
                         str(tmp_path / "student"))
    student = load_model(tmp_path / "student" / "model")
    assert student.cfg.n_layers == 2 and type(student).__name__ == "CausalLM"
    assert torch.isfinite(torch.tensor(result["val_loss"]))
    # every other teacher layer: the student's block 1 started as teacher block 2; the embeddings trained on
    assert student.body.decoder.blocks[1].ffn.down_proj.weight.shape == teacher.body.decoder.blocks[2].ffn.down_proj.weight.shape
    checkpoint = load_file(tmp_path / "student" / "step-0000006" / "model" / "model.safetensors")
    n_student = sum(v.numel() for k, v in checkpoint.items())
    assert n_student < teacher.num_parameters()  # the pair's checkpoint: the student's tensors, no teacher
    assert not any("teacher" in k for k in checkpoint)
    hf = T.AutoModelForCausalLM.from_pretrained(tmp_path / "student" / "hf").eval()
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        assert (hf(ids).logits - student(ids)).abs().max() < 1e-4
