"""The compression settings the command line reads (no torch here: `lmforge --help` stays fast) and the errors.

`PruneConfig` (unstructured and n:m pruning, one-shot or gradual during fine-tuning: `lmforge.compress.prune`),
`DistillConfig` (knowledge distillation: `lmforge.compress.distill`). Structured pruning is
configured by `lmforge prune`'s own arguments (`lmforge.compress.structured`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

DEFAULT_INCLUDE = ("*.blocks.*",)
"""Every Linear of the Transformer blocks (not the embeddings, not the heads): what quantization and pruning
select by default (glob patterns over module names)."""
SCOPES = ("global", "layer")
SCHEDULES = ("oneshot", "cubic")


def config_from_dict(cls, data: dict, source: str, error: type[ValueError]):
    """`cls(**data)` validated, for a settings dataclass with `validate()`: a non-mapping, an unknown field or a
    bad value raises `error` naming `source` (a file, a YAML section)."""
    if not isinstance(data, dict):
        raise error(f"{source}: expected a mapping, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{source}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    config = cls(**data)
    try:
        config.validate()
    except error as err:
        raise error(f"{source}: {err}") from None
    return config


class PruneError(ValueError):
    """A pruning request that cannot be carried out (bad sparsity, more heads than a layer has, ...)."""


def parse_nm(method: str) -> tuple[int, int] | None:
    """(n, m) of an "n:m" method string such as "2:4"; None for anything else (validity is `PruneConfig`'s)."""
    parts = method.split(":") if isinstance(method, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    return int(parts[0]), int(parts[1])


@dataclass
class PruneConfig:
    """What to prune, how much, and when (during training). `validate()` checks every field at once."""

    method: str = "magnitude"
    """"magnitude" (unstructured, by |w|) or "n:m" (keep n of every m weights along the input, e.g. "2:4")."""
    sparsity: float = 0.5
    """The fraction of the selected weights set to zero, in [0, 1). An n:m method fixes it at 1 - n/m."""
    scope: str = "global"
    """Magnitude only: "global" (one threshold over all selected weights) or "layer" (that fraction of each)."""
    include: Sequence[str] = DEFAULT_INCLUDE
    """Glob patterns over module names; each must match some Linear (the LM head is never pruned)."""
    schedule: str = "oneshot"
    """"oneshot" (all at `start_step`) or "cubic" (Zhu & Gupta's gradual schedule, magnitude only)."""
    start_step: int = 0
    """The optimizer step at which masked training first prunes (0: before the first update)."""
    end_step: int | None = None
    """cubic: the step at which the sparsity reaches `sparsity` (> start_step)."""
    every: int = 1
    """cubic: prune every this many steps between start_step and end_step (Zhu & Gupta's delta t)."""
    initial_sparsity: float = 0.0
    """cubic: the sparsity at start_step, in [0, sparsity]."""

    def __post_init__(self) -> None:
        if isinstance(self.include, list):
            self.include = tuple(self.include)

    def nm(self) -> tuple[int, int] | None:
        """(n, m) for an n:m method, None for magnitude."""
        return None if self.method == "magnitude" else parse_nm(self.method)

    def validate(self) -> None:
        """Raise one `PruneError` naming every bad field."""
        problems = []
        nm = self.nm()
        if self.method != "magnitude" and nm is None:
            problems.append(f"method={self.method!r} (allowed: magnitude, or n:m such as 2:4)")
        elif nm is not None and not 0 < nm[0] < nm[1]:
            problems.append(f"method={self.method!r}: n:m keeps n of every m weights, so 0 < n < m")
        if not is_fraction(self.sparsity):
            problems.append(f"sparsity={self.sparsity!r} must be in [0, 1) (the fraction of weights set to zero)")
        elif nm is not None and 0 < nm[0] < nm[1] and not math.isclose(self.sparsity, 1 - nm[0] / nm[1]):
            problems.append(f"sparsity={self.sparsity!r}: method {self.method} zeroes {1 - nm[0] / nm[1]:g} of the "
                            f"weights; set sparsity to that")
        if self.scope not in SCOPES:
            problems.append(f"scope={self.scope!r} (allowed: {', '.join(SCOPES)})")
        if isinstance(self.include, str) or not all(isinstance(p, str) and p for p in self.include):
            problems.append(f"include={self.include!r} (allowed: a list of glob patterns over module names)")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule={self.schedule!r} (allowed: {', '.join(SCHEDULES)})")
        elif self.schedule == "cubic" and nm is not None:
            problems.append(f"schedule=cubic: method {self.method} has one fixed sparsity; use schedule oneshot")
        if not is_int(self.start_step) or self.start_step < 0:
            problems.append(f"start_step={self.start_step!r} must be an integer >= 0")
        if not is_int(self.every) or self.every < 1:
            problems.append(f"every={self.every!r} must be a positive integer")
        if self.schedule == "cubic":
            if self.end_step is None or not is_int(self.end_step):
                problems.append(f"end_step={self.end_step!r}: schedule cubic needs an integer end_step > start_step")
            elif is_int(self.start_step) and self.end_step <= self.start_step:
                problems.append(f"end_step={self.end_step} must be > start_step={self.start_step}")
            if not is_fraction(self.initial_sparsity) or (
                    is_fraction(self.sparsity) and self.initial_sparsity > self.sparsity):
                problems.append(f"initial_sparsity={self.initial_sparsity!r} must be in [0, sparsity={self.sparsity}]")
        else:
            if self.end_step is not None:
                problems.append(f"end_step={self.end_step!r}: only schedule cubic has an end step")
            if self.initial_sparsity != 0:
                problems.append(f"initial_sparsity={self.initial_sparsity!r}: only schedule cubic starts lower")
        if problems:
            raise PruneError("invalid pruning config: " + "; ".join(problems))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "include": list(self.include)}

    @classmethod
    def from_dict(cls, data: dict, source: str = "pruning config") -> PruneConfig:
        """Build from a dict (e.g. a YAML section), rejecting unknown fields by name; validated."""
        return config_from_dict(cls, data, source, PruneError)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_fraction(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1


STUDENT_INITS = ("every-other", "first", "fresh")
"""Named ways to make a student (besides `layers:[i, j, ...]`, a list of teacher layers)."""


class DistillError(ValueError):
    """A distillation setting or a teacher/student pair that cannot work (the message names the field)."""


@dataclass
class DistillConfig:
    """How a student learns from its teacher."""

    temperature: float = 2.0
    """T > 0: both distributions are softmax(logits / T); larger T shows more of the teacher's dark knowledge."""
    alpha: float = 0.5
    """Weight of the soft (KL) loss on the teacher's outputs, in [0, 1]; the task's own loss gets 1 - alpha."""
    hidden_weight: float = 0.0
    """Weight of the hidden-state MSE per mapped layer (TinyBERT); 0: off."""
    attention_weight: float = 0.0
    """Weight of the attention-distribution KL per mapped layer (MiniLM, TinyBERT); 0: off (and the fused
    attention kernel stays in use: recording the maps computes attention explicitly)."""
    layer_map: str | list[int] = "uniform"
    """The teacher layer each student layer learns from (hidden and attention terms): "uniform" (student
    layer i <- teacher layer round((i + 1) * L_teacher / L_student) - 1, so the last matches the last) or a
    list of teacher layer indices, one per student layer."""
    student_init: str | list[int] = "every-other"
    """How `distillation_pair` makes the student when none is given: "every-other" (teacher layers 0, 2, 4, ...),
    "first" (the first `student_layers`), "layers:[0,2,4]" or a list (those teacher layers), or "fresh"
    (random weights, `student_layers` deep)."""
    student_layers: int | None = None
    """Depth of a "first" or "fresh" student; None: half the teacher's, rounded up."""

    def validate(self) -> DistillConfig:
        """Check every field; raise one `DistillError` naming each bad one. Returns the config."""
        problems = []
        if not is_number(self.temperature) or not self.temperature > 0:
            problems.append(f"temperature={self.temperature!r} must be a number > 0")
        if not is_number(self.alpha) or not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha={self.alpha!r} must be a number in [0, 1]")
        for name in ("hidden_weight", "attention_weight"):
            value = getattr(self, name)
            if not is_number(value) or not value >= 0:
                problems.append(f"{name}={value!r} must be a number >= 0")
        if self.layer_map != "uniform" and not is_index_list(self.layer_map):
            problems.append(f"layer_map={self.layer_map!r} must be 'uniform' or a non-empty list of teacher layer "
                            "indices (integers >= 0)")
        try:
            init = parse_student_init(self.student_init)
        except DistillError as err:
            problems.append(str(err))
            init = None
        if self.student_layers is not None:
            if isinstance(self.student_layers, bool) or not isinstance(self.student_layers, int) \
                    or self.student_layers < 1:
                problems.append(f"student_layers={self.student_layers!r} must be a positive integer (or null)")
            elif init is not None and init not in ("first", "fresh"):
                problems.append(f"student_layers={self.student_layers} sets the depth of a 'first' or 'fresh' "
                                f"student, not of student_init={self.student_init!r}")
        if problems:
            raise DistillError("invalid DistillConfig: " + "; ".join(problems))
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_student_init(spec: str | Sequence[int]) -> str | list[int]:
    """"every-other", "first" or "fresh", or the teacher layer list of "layers:[0,2,4]" (or of a list itself)."""
    if isinstance(spec, str) and spec in STUDENT_INITS:
        return spec
    layers: Any = spec
    if isinstance(spec, str):
        if not spec.startswith("layers:"):
            raise DistillError(f"student_init={spec!r} is not one of {', '.join(STUDENT_INITS)} or 'layers:[i, j, ...]'")
        try:
            layers = json.loads(spec[len("layers:"):])
        except json.JSONDecodeError:
            raise DistillError(f"student_init={spec!r}: after 'layers:' comes a JSON list such as [0, 2, 4]") from None
    if not is_index_list(layers):
        raise DistillError(f"student_init={spec!r}: the teacher layers must be a non-empty list of integers >= 0")
    return list(layers)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_index_list(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) > 0
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value))
