"""The model a distillation run trains: a student with its frozen teacher beside it (`lmforge.compress.distill`)."""

from __future__ import annotations

from torch import nn

from lmforge.models.config import ConfigError, ModelConfig
from lmforge.models.model import Model

DISTILLATION_KEY = "distillation"
"""The `cfg.extra` entry of a `Distillation` pair: {"student_task", "student_kwargs", "teacher_width"}."""


class Distillation(Model):
    """A student trained beside a frozen teacher (knowledge distillation; the losses and the training objective
    are `lmforge.compress.distill`).

    The student's modules are this model's own, under the student's names, so a checkpoint of the pair holds the
    student's tensors as a checkpoint of the student would (a tied head once), plus `hidden_proj`: the learned
    map of the student's hidden states to the teacher's width when they differ (TinyBERT's W_h; None
    otherwise). `student` is the student seen alone: what `forward` runs and what is exported. `cfg` is the
    student's with `extra["distillation"]` saying how to rebuild it, so the pair loads from its config alone.
    The teacher (`attach_teacher`) is neither a parameter nor in the state dict: frozen, in eval mode, moved
    and cast with the pair by `.to()`, and only counted in `flops_per_token`.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        from lmforge.models.tasks import TASKS  # (the registry lists this class too)

        spec = cfg.extra.get(DISTILLATION_KEY)
        if not isinstance(spec, dict) or spec.get("student_task") not in set(TASKS) - {"distillation"}:
            raise ConfigError(f"a Distillation model needs cfg.extra[{DISTILLATION_KEY!r}] = {{'student_task': one "
                              f"of {', '.join(t for t in TASKS if t != 'distillation')}, ...}}, got {spec!r}")
        self.cfg = cfg
        extra = {k: v for k, v in cfg.extra.items() if k != DISTILLATION_KEY}
        student = TASKS[spec["student_task"]](cfg.replace(extra=extra), **spec.get("student_kwargs", {}))
        object.__setattr__(self, "student", student)  # not a submodule: its modules are registered here instead
        for name, module in student.named_children():
            self.add_module(name, module)
        width = spec.get("teacher_width")
        self.hidden_proj = nn.Linear(cfg.d_model, width) if width else None
        if self.hidden_proj is not None:
            for name, param in self.hidden_proj.named_parameters():
                if not param.is_meta:
                    self._init_parameter("hidden_proj", self.hidden_proj, name, param)
        object.__setattr__(self, "_teacher", None)

    def forward(self, *args, **kwargs):
        """The student's forward (the training objective's evaluation and the trainer's validation run on it)."""
        return self.student(*args, **kwargs)

    @property
    def teacher(self) -> Model:
        """The frozen teacher; a `ConfigError` when none is attached (a pair loaded from a checkpoint)."""
        if self._teacher is None:
            raise ConfigError("this Distillation pair has no teacher attached (a pair loaded from a checkpoint "
                              "holds the student only): pair.attach_teacher(teacher)")
        return self._teacher

    @property
    def has_teacher(self) -> bool:
        return self._teacher is not None

    def attach_teacher(self, teacher: Model) -> Distillation:
        """Hold `teacher` beside the student, frozen (requires_grad off, eval mode) and outside the state dict."""
        teacher.requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher.eval())
        return self

    def train(self, mode: bool = True) -> Distillation:
        """Train or eval mode for the student (the teacher stays in eval mode)."""
        super().train(mode)
        self.student.training = mode
        return self

    def _apply(self, fn, recurse: bool = True):
        # `.to()`, `.cuda()`, `.float()`, ... reach the teacher too: it runs beside the student on its device.
        super()._apply(fn, recurse)
        if self._teacher is not None:
            self._teacher._apply(fn, recurse)
        return self

    def flops_per_token(self, seq_len: int | None = None, training: bool = False) -> float:
        """The student's FLOPs (and the projection's), plus, in training, one forward of the teacher."""
        flops = self.student.flops_per_token(seq_len, training)
        if self.hidden_proj is not None:
            flops += 2 * self.hidden_proj.weight.numel() * (3 if training else 1)
        if training and self._teacher is not None:
            flops += self._teacher.flops_per_token(seq_len or self.cfg.max_seq_len, training=False)
        return flops
