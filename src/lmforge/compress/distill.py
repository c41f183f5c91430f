"""Knowledge distillation: a smaller student learns from a frozen teacher, in one training job.

The student is trained on a mix of the task's own ("hard") loss and the teacher's softened outputs
(Hinton et al. 2015), optionally plus a match of hidden states (TinyBERT, Jiao et al. 2020) and of
attention distributions (MiniLM, Wang et al. 2020; TinyBERT) layer by layer:

    loss = (1 - alpha) * hard + alpha * kd + hidden_weight * hidden + attention_weight * attention

- The losses are pure functions: `kd_loss`, `hidden_loss`, `attention_loss`; `layer_map` says which teacher
  layer each student layer learns from.
- `student_from_teacher` makes the student: the teacher's kind and width with fewer layers, copied from every
  other teacher layer (DistilBERT, Sanh et al. 2019), the first ones, a list, or fresh random weights.
- `distillation_pair` puts student and teacher together as the model the trainer trains, a
  `lmforge.models.distillation.Distillation`: the student's modules plus the hidden-state projection (when widths
  differ) are its parameters and its checkpoints; the teacher rides beside it, frozen, outside its state dict.
- `DistillObjective` wraps the bound objective of the task (`CausalLMObjective` for a decoder LM,
  `FinetuneObjective` for a classifier, ...) for the training loop: batches, validation and metrics are the
  inner objective's, on the student; the loss adds the teacher's terms. `export_model` gives the student.

A training job wires it as: `pair = distillation_pair(teacher, config)`, `objective = DistillObjective(inner,
config)`, `lmforge.train.loop.train(pair, objective, ...)`, then `objective.export_model(load_model(ckpt))`.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from lmforge.compress.config import DistillConfig, DistillError, is_index_list, is_number, parse_student_init
from lmforge.models.attention import record_attention
from lmforge.models.config import LAYER_WIDTHS, ConfigError, ModelConfig
from lmforge.models.distillation import DISTILLATION_KEY, Distillation
from lmforge.models.model import MaskedLM, Model
from lmforge.models.tasks import TASKS, task_of

__all__ = [
    "DistillConfig", "DistillError", "DistillObjective", "Distillation", "attention_loss", "check_pair",
    "distillation_pair", "distillation_setup", "hidden_loss", "kd_loss", "layer_map", "parse_student_init", "student_from_teacher",
]

LOGIT_TASKS = ("causal-lm", "seq2seq-lm", "masked-lm", "sequence-classification", "token-classification",
               "question-answering")
"""The model tasks a teacher may have: a head with logits (a bare encoder, a multi-task model, ELECTRA's pair or a
distillation pair cannot teach)."""
_SHAPE_FIELDS = ("vocab_size", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "gated_ffn", "max_seq_len",
                 "type_vocab_size", "num_labels", "position", "norm", "qkv_bias", "out_bias", "ffn_bias",
                 *LAYER_WIDTHS)
"""ModelConfig fields a copied student cannot change: the teacher's tensors must fit it."""


def layer_map(n_student: int, n_teacher: int, spec: str | Sequence[int] = "uniform") -> list[int]:
    """The teacher layer of each student layer: "uniform" spreads them evenly, ending on the last (TinyBERT's
    g(m) = m * L_t / L_s), i.e. round((i + 1) * n_teacher / n_student) - 1 with halves rounded up; or `spec`
    itself, a list of teacher layers checked against both depths."""
    if spec == "uniform":
        return [math.floor((i + 1) * n_teacher / n_student + 0.5) - 1 for i in range(n_student)]
    if not is_index_list(spec):
        raise DistillError(f"layer_map={spec!r} must be 'uniform' or a list of teacher layer indices")
    if len(spec) != n_student or max(spec) >= n_teacher:
        raise DistillError(f"layer_map={list(spec)} must name one teacher layer (0..{n_teacher - 1}) for each of "
                           f"the student's {n_student} layers")
    return list(spec)


# ------------------------------------------------------------------------------------------------ losses

def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), the mean over the rows that count (Hinton et al.
    2015, sec. 2).

    Logits are (..., C): each leading index is a row (a sequence, a token position); `mask` (...) is true
    where a row counts (None: every row). The T^2 keeps the soft loss's gradients on the scale of a hard
    loss's whatever T is (they shrink as 1/T^2 otherwise). Computed in float32 (float64 stays float64);
    0 when no row counts.
    """
    if student_logits.shape != teacher_logits.shape:
        raise DistillError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                           f"{tuple(teacher_logits.shape)} differ: distillation needs one output space")
    if not is_number(temperature) or not temperature > 0:
        raise DistillError(f"temperature={temperature!r} must be a number > 0")
    classes = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, classes), teacher_logits.reshape(-1, classes)
    if mask is not None:
        if mask.shape != student_logits.shape[:-1]:
            raise DistillError(f"mask {tuple(mask.shape)} does not match the logits' rows "
                               f"{tuple(student_logits.shape[:-1])}")
        keep = mask.reshape(-1).bool()
        s, t = s[keep], t[keep]
    dtype = torch.promote_types(s.dtype, torch.float32)
    log_p_student = torch.log_softmax(s.to(dtype) / temperature, dim=-1)
    log_p_teacher = torch.log_softmax(t.to(dtype) / temperature, dim=-1)
    p_teacher = log_p_teacher.exp()
    # 0 log 0 = 0: a class the teacher rules out (logit -inf) adds nothing.
    kl = torch.where(p_teacher > 0, p_teacher * (log_p_teacher - log_p_student), 0.0).sum()
    return temperature ** 2 * kl / max(s.shape[0], 1)


def hidden_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, proj: nn.Module | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between the student's hidden states, mapped by `proj` to the teacher's width when it
    is given, and the teacher's (TinyBERT, Jiao et al. 2020, eq. 7), over the positions that count.

    (B, T, d_student) and (B, T, d_teacher); `proj`: a d_student -> d_teacher map (TinyBERT's learned W_h),
    None when the widths are equal; `mask` (B, T) true at the positions that count (None: all). Float32.
    """
    student = proj(student_hidden) if proj is not None else student_hidden
    if student.shape != teacher_hidden.shape:
        raise DistillError(f"student hidden states {tuple(student.shape)} and the teacher's "
                           f"{tuple(teacher_hidden.shape)} differ"
                           + ("" if proj is not None else ": widths differ, so they need a learned projection "
                              "(build the pair with distillation_pair and the same hidden_weight > 0)"))
    dtype = torch.promote_types(student.dtype, torch.float32)
    sq = (student.to(dtype) - teacher_hidden.to(dtype)) ** 2  # (B, T, d)
    if mask is not None:
        sq = sq[mask.bool()]  # (N, d)
    return sq.mean() if sq.numel() else sq.sum()


def attention_loss(student_attn: torch.Tensor, teacher_attn: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """KL(teacher || student) between the attention distributions of each query, the mean over heads and the
    queries that count (MiniLM, Wang et al. 2020, eq. 2-3; TinyBERT's attention transfer, with KL).

    (B, H, T, S) probabilities (rows sum to 1; masked keys 0). When the head counts differ, each side is
    first averaged over its heads (the mean of distributions is one). `mask` (B, T) true at the queries that
    count (None: all). Float32.
    """
    if student_attn.shape[1] != teacher_attn.shape[1]:
        student_attn, teacher_attn = student_attn.mean(1, keepdim=True), teacher_attn.mean(1, keepdim=True)
    if student_attn.shape != teacher_attn.shape:
        raise DistillError(f"student attention {tuple(student_attn.shape)} and the teacher's "
                           f"{tuple(teacher_attn.shape)} cover different queries or keys")
    dtype = torch.promote_types(student_attn.dtype, torch.float32)
    p_student, p_teacher = student_attn.to(dtype), teacher_attn.to(dtype)
    tiny = torch.finfo(dtype).tiny  # log(0) is never taken, so no 0 * inf (nor its gradient) appears
    log_ratio = p_teacher.clamp_min(tiny).log() - p_student.clamp_min(tiny).log()
    kl = torch.where(p_teacher > 0, p_teacher * log_ratio, 0.0).sum(-1)  # (B, H, T)
    if mask is not None:
        kl = kl.transpose(1, 2)[mask.bool()]  # (N, H)
    return kl.mean() if kl.numel() else kl.sum()


# ------------------------------------------------------------------------------------------------ the student

def student_from_teacher(teacher: Model, layers: str | Sequence[int] = "every-other", **overrides) -> Model:
    """A student of the teacher's kind (its class, task and head) and width with fewer layers.

    `layers`: "every-other" (teacher layers 0, 2, 4, ...: DistilBERT's initialisation), "first" (the first
    `n_layers`), a list of teacher layers (or "layers:[0,2,4]"), or "fresh" (new random weights from the
    global RNG, `n_layers` deep; any other ModelConfig field may change too, e.g. a narrower `d_model`). A
    copied student also copies the embeddings, the final norm, the pooler and the heads; its tensors are its
    own (training it leaves the teacher as it was). `n_layers` (of "first" and "fresh") defaults to half the
    teacher's, rounded up; `overrides` change other ModelConfig fields (dropout, ...), but not the vocabulary.
    """
    task = _teacher_task(teacher)
    init = parse_student_init(layers)
    n_teacher = teacher.cfg.n_layers
    if "vocab_size" in overrides and overrides["vocab_size"] != teacher.cfg.vocab_size:
        raise _vocab_error(overrides["vocab_size"], teacher.cfg.vocab_size)
    depth = overrides.pop("n_layers", None)
    if depth is not None and init not in ("first", "fresh"):
        raise DistillError(f"n_layers={depth} sets the depth of a 'first' or 'fresh' student; layers={layers!r} "
                           "fixes it already")
    depth = depth if depth is not None else math.ceil(n_teacher / 2)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise DistillError(f"n_layers={depth!r} must be a positive integer")
    kwargs = _task_kwargs(teacher)
    if init == "fresh":  # the global widths in every layer (unless `overrides` give per-layer ones)
        widths = {name: None for name in LAYER_WIDTHS}
        return TASKS[task](_student_cfg(teacher.cfg, depth, {**widths, **overrides}), **kwargs)
    if teacher.cfg.family == "encoder-decoder":
        raise DistillError("copying layers of an encoder-decoder teacher is not supported: use layers='fresh'")
    method = getattr(getattr(teacher, "adaptation", None), "method", "full")
    if method != "full" or getattr(teacher, "quantization", None) is not None:
        raise DistillError(f"the teacher is {'adapted with ' + method if method != 'full' else 'quantized'}: its "
                           "layers cannot be copied into a plain student (merge the adapter, or use the "
                           "unquantized model, or layers='fresh')")
    chosen = list(range(0, n_teacher, 2)) if init == "every-other" else \
        list(range(depth)) if init == "first" else init
    if max(chosen) >= n_teacher:
        raise DistillError(f"layers={layers!r}: the teacher has layers 0..{n_teacher - 1}")
    changed = [f"{k}={v!r}" for k, v in overrides.items() if k in _SHAPE_FIELDS and v != getattr(teacher.cfg, k)]
    if changed:
        raise DistillError(f"a student copied from the teacher's layers keeps its shapes; {', '.join(changed)} "
                           "changes them: use layers='fresh'")
    # A teacher whose layers differ in width (structured pruning) passes each chosen layer's widths on.
    widths = {name: [getattr(teacher.cfg, name)[j] for j in chosen] for name in LAYER_WIDTHS
              if getattr(teacher.cfg, name) is not None}
    student = TASKS[task](_student_cfg(teacher.cfg, len(chosen), {**widths, **overrides}), **kwargs)
    stack = "body.encoder.blocks." if teacher.cfg.family == "encoder" else "body.decoder.blocks."
    source = teacher.state_dict()

    def teacher_name(name: str) -> str:  # block i of the student is block chosen[i] of the teacher
        if not name.startswith(stack):
            return name
        index, rest = name[len(stack):].split(".", 1)
        return f"{stack}{chosen[int(index)]}.{rest}"

    with torch.no_grad():
        try:
            student.load_state_dict({name: source[teacher_name(name)] for name in student.state_dict()})
        except (KeyError, RuntimeError) as err:
            raise DistillError(f"the teacher's tensors do not fit a {type(student).__name__} of its config "
                               f"({err}); use layers='fresh'") from None
    return student


def _student_cfg(cfg: ModelConfig, n_layers: int, overrides: dict) -> ModelConfig:
    """The teacher's config at `n_layers` (an encoder-decoder's decoder too), with `overrides`; a new width or
    head count without a `head_dim` (`n_kv_heads`) gets the default one again (d_model / n_heads; n_heads)."""
    changes: dict[str, Any] = {"n_layers": n_layers}
    if cfg.family == "encoder-decoder":
        changes["n_decoder_layers"] = n_layers
    if {"d_model", "n_heads"} & set(overrides):
        changes["head_dim"] = None
    if "n_heads" in overrides:
        changes["n_kv_heads"] = None
    try:
        return cfg.replace(**{**changes, **overrides})
    except (ConfigError, TypeError) as err:
        raise DistillError(f"student config: {err}") from None


def _task_kwargs(model: Model) -> dict:
    """The constructor arguments of a model's task besides its config (a masked LM's NSP head)."""
    return {"nsp": True} if isinstance(model, MaskedLM) and model.nsp_head is not None else {}


def _teacher_task(teacher: nn.Module) -> str:
    """The model task of a teacher, or a `DistillError` for what cannot teach."""
    try:
        task = task_of(teacher)
    except ConfigError:
        raise DistillError(f"the teacher must be an lmforge model, not a {type(teacher).__name__}") from None
    if task not in LOGIT_TASKS:
        raise DistillError(f"a {task} model cannot be a teacher; teachers are {', '.join(LOGIT_TASKS)} models")
    return task


def _vocab_error(student_vocab: int, teacher_vocab: int) -> DistillError:
    return DistillError(f"student vocab_size {student_vocab} != teacher's {teacher_vocab}: distillation on logits "
                        "needs one vocabulary")


def check_pair(student: Model, teacher: Model) -> None:
    """Raise a `DistillError` listing every reason `student` cannot learn from `teacher`'s outputs."""
    teacher_task = _teacher_task(teacher)
    problems = []
    student_task = task_of(student)
    if student_task != teacher_task:
        problems.append(f"the student is a {student_task} model, the teacher a {teacher_task} one")
    s, t = student.cfg, teacher.cfg
    if s.family != t.family:
        problems.append(f"the student's family is {s.family!r}, the teacher's {t.family!r}")
    if s.vocab_size != t.vocab_size:
        problems.append(str(_vocab_error(s.vocab_size, t.vocab_size)))
    if student_task in ("sequence-classification", "token-classification") and s.num_labels != t.num_labels:
        problems.append(f"student num_labels {s.num_labels} != teacher's {t.num_labels}")
    if problems:
        raise DistillError("; ".join(problems))


def distillation_pair(teacher: Model, config: DistillConfig | None = None, student: Model | None = None) -> Distillation:
    """The model a distillation run trains: `student` (None: made from the teacher by `config.student_init`,
    see `student_from_teacher`), a projection of its hidden states when `hidden_weight` > 0 and the widths
    differ, and the teacher attached, frozen (its `requires_grad` is turned off in place).

    A given student's tensors become the pair's own (training changes them). Raises `DistillError` when the
    two do not fit (another vocabulary, task or label count; layers the layer map cannot pair).
    """
    config = (config or DistillConfig()).validate()
    if student is None:
        depth = {"n_layers": config.student_layers} if config.student_layers is not None else {}
        student = student_from_teacher(teacher, config.student_init, **depth)
    check_pair(student, teacher)
    if (config.hidden_weight > 0 or config.attention_weight > 0) and teacher.cfg.family == "encoder-decoder":
        raise DistillError("hidden_weight and attention_weight need one stack of layers; an encoder-decoder is "
                           "distilled on its logits only")
    if config.hidden_weight > 0 or config.attention_weight > 0:
        layer_map(len(student.blocks()), len(teacher.blocks()), config.layer_map)  # fits both depths
    width = teacher.cfg.d_model if config.hidden_weight > 0 and student.cfg.d_model != teacher.cfg.d_model else None
    spec = {"student_task": task_of(student), "student_kwargs": _task_kwargs(student), "teacher_width": width}
    cfg = student.cfg.replace(extra={**student.cfg.extra, DISTILLATION_KEY: spec})
    with torch.device("meta"):
        pair = Distillation(cfg)
    # The student's own tensors (no copy); only the projection is new, initialised by `materialize`.
    result = pair.load_state_dict(student.state_dict(), strict=False, assign=True)
    left = [n for n in result.missing_keys if not n.startswith("hidden_proj.") and not pair.is_tied(n)]
    assert not left and not result.unexpected_keys, (left, result.unexpected_keys)  # the same student, rebuilt
    pair.materialize(student.device)
    return pair.to(student.dtype).attach_teacher(teacher)


# ------------------------------------------------------------------------------------------------ the objective

def distillation_setup(teacher: Model, inner, config: DistillConfig) -> tuple[Distillation, DistillObjective]:
    """What a training job trains instead of `teacher` with `inner` (its bound objective): the pair (the student
    made by `config.student_init`, the teacher frozen beside it) and the distillation objective around `inner`."""
    config = config.validate()
    return distillation_pair(teacher, config), DistillObjective(inner, config)


@dataclass
class DistillObjective:
    """A bound objective (`inner`) with a teacher's terms added to its loss, for the training loop (see
    `lmforge.train.objective.Objective`); the model is a `Distillation` pair.

    Batches, micro-batches, token counts, validation (`eval_sums`) and a task's metrics (`eval_metrics`, when
    the inner objective has them) are the inner objective's, on the student. `loss` runs the inner loss on the
    student (the hard loss), reads the student's outputs, hidden states and attention maps on the way, runs
    the teacher on the same inputs without gradients and returns
    (1 - alpha) hard + alpha kd + hidden_weight hidden + attention_weight attention, with each term in the
    parts. Rows that do not count for the hard loss (padding, -100 labels) do not count for kd either;
    hidden and attention terms count every real token.
    """

    inner: Any
    config: DistillConfig = field(default_factory=DistillConfig)
    name: str = "distill"

    model_task: ClassVar[str] = "distillation"
    model_kwargs: ClassVar[dict[str, Any]] = {}

    def __post_init__(self) -> None:
        self.config.validate()

    @property
    def families(self) -> tuple[str, ...]:
        return tuple(self.inner.families)

    @property
    def model_overrides(self) -> dict[str, Any]:
        return dict(self.inner.model_overrides)

    def __getattr__(self, name: str):
        # A task's metrics exist on some inner objectives only; validation looks for them with hasattr.
        if name == "eval_metrics" and "inner" in self.__dict__:
            return getattr(self.inner, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def bind(self, dataset, tokenizer):
        """The inner objective bound to the data (when it binds), wrapped again: a `Binding` of this objective."""
        binding = self.inner.bind(dataset, tokenizer)
        return dataclasses.replace(binding, objective=dataclasses.replace(self, inner=binding.objective))

    def build_model(self, cfg: ModelConfig) -> Distillation:
        """A pair from a pair's config (its student fresh, no teacher yet); pairs are made by `distillation_pair`."""
        if DISTILLATION_KEY not in cfg.extra:
            raise DistillError("a distillation pair is made from its teacher: distillation_pair(teacher, config)")
        return Distillation(cfg)

    def check_model(self, model: Model) -> Distillation:
        """Check that `model` is a pair with its teacher, whose student the inner objective trains; return it."""
        if not isinstance(model, Distillation):
            raise DistillError(f"the distillation objective trains a Distillation pair (distillation_pair(teacher, "
                               f"config)), not a {type(model).__name__}")
        if not model.has_teacher:
            raise DistillError("the Distillation pair has no teacher attached: pair.attach_teacher(teacher)")
        self.inner.check_model(model.student)
        return model

    def export_model(self, model: Model) -> Model:
        """The student (of a pair; the inner objective's export of it)."""
        student = model.student if isinstance(model, Distillation) else model
        return self.inner.export_model(student)

    def export_tokenizer(self, tokenizer):
        return self.inner.export_tokenizer(tokenizer)

    def train_loader(self, dataset, batch_size: int, seq_len: int, seed: int, rank: int, world_size: int):
        return self.inner.train_loader(dataset, batch_size, seq_len, seed, rank, world_size)

    def eval_loader(self, dataset, batch_size: int, seq_len: int, rank: int, world_size: int):
        return self.inner.eval_loader(dataset, batch_size, seq_len, rank, world_size)

    def split(self, batch, n: int) -> list:
        return self.inner.split(batch, n)

    def num_tokens(self, batch) -> int:
        return self.inner.num_tokens(batch)

    def eval_sums(self, model: nn.Module, batch, device: torch.device) -> tuple[float, int]:
        """The inner objective's validation sums, on the student."""
        return self.inner.eval_sums(model, batch, device)

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """(the weighted sum of the hard, kd, hidden and attention terms of a micro-batch, {term: detached value})."""
        pair = _unwrapped(model)
        if not isinstance(pair, Distillation):
            raise DistillError(f"the distillation objective trains a Distillation pair, not a {type(pair).__name__}")
        teacher, cfg = pair.teacher, self.config
        hidden, attention = cfg.hidden_weight > 0, cfg.attention_weight > 0
        # The student runs inside the inner loss (through `model`, so DDP sees it); hooks keep what it saw and gave.
        with _watching(pair, hidden, attention, keep_grad=True) as student:
            hard, inner_parts = self.inner.loss(model, batch, device)
        args, kwargs = student.single_call()
        with torch.no_grad(), _watching(teacher, hidden, attention, keep_grad=False) as taught:
            teacher(*args, **kwargs)
        kd = self._kd(pair.student, student.output, taught.output, batch, args, kwargs)
        total = (1 - cfg.alpha) * hard + cfg.alpha * kd
        parts = {**inner_parts, "hard": hard.detach(), "kd": kd.detach()}
        if hidden or attention:
            n_student = len(student.hidden or student.attention)
            pairs = list(enumerate(layer_map(n_student, len(taught.hidden or taught.attention), cfg.layer_map)))
            real = _argument(pair.student, args, kwargs, "attention_mask")
            if hidden:
                term = sum(hidden_loss(student.hidden[i], taught.hidden[j], pair.hidden_proj, real)
                           for i, j in pairs) / len(pairs)
                total = total + cfg.hidden_weight * term
                parts["hidden"] = term.detach()
            if attention:
                term = sum(attention_loss(student.attention[i][-1], taught.attention[j][-1], real)
                           for i, j in pairs) / len(pairs)
                total = total + cfg.attention_weight * term
                parts["attention"] = term.detach()
        return total, parts

    def _kd(self, student_model: Model, student_out, teacher_out, batch, args, kwargs) -> torch.Tensor:
        """kd_loss averaged over the outputs (QA's start and end logits are two), on the rows that count."""
        task = task_of(student_model)
        real_name = "decoder_attention_mask" if student_model.cfg.family == "encoder-decoder" else "attention_mask"
        real = _argument(student_model, args, kwargs, real_name)
        targets, shifted = _targets(batch, task)
        terms = [kd_loss(s, t, self.config.temperature, _rows_that_count(s, real, targets, shifted))
                 for s, t in zip(_logits(student_out), _logits(teacher_out))]
        return sum(terms) / len(terms)


# ------------------------------------------------------------------------------------------------ helpers

class _Watch:
    """What one model saw and gave in a forward: its call, its output, its blocks' outputs, its attention maps."""

    def __init__(self, n_blocks: int) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.output: Any = None
        self.hidden: list[torch.Tensor] = []
        self.attention: list[list[torch.Tensor]] = [[] for _ in range(n_blocks)]

    def single_call(self) -> tuple[tuple, dict]:
        if len(self.calls) != 1:
            raise DistillError(f"the inner objective ran the model {len(self.calls)} times in one loss; distillation "
                               "pairs one student forward with one teacher forward")
        return self.calls[0]


@contextmanager
def _watching(model: Model, hidden: bool, attention: bool, keep_grad: bool) -> Iterator[_Watch]:
    """Record a forward of `model`: its arguments and output (hooks), each block's output when `hidden`, each
    self-attention's probabilities when `attention` (with their graph when `keep_grad`)."""
    blocks = model.blocks()
    watch = _Watch(len(blocks))

    def on_call(module, args, kwargs):
        watch.calls.append((args, kwargs))

    def on_output(module, args, output):
        # A view, so the inner loss cannot write its gradient over the logits (`token_cross_entropy` overwrites
        # only logits that own their memory): the kd term reads them after it.
        watch.output = _map_tensors(output, lambda t: t.view_as(t))
        return watch.output

    handles = [model.register_forward_pre_hook(on_call, with_kwargs=True), model.register_forward_hook(on_output)]
    if hidden:
        handles += [block.register_forward_hook(lambda m, a, out: watch.hidden.append(out)) for block in blocks]
    try:
        with record_attention([block.attn for block in blocks] if attention else [], grad=keep_grad) as maps:
            if attention:
                watch.attention = maps
            yield watch
    finally:
        for handle in handles:
            handle.remove()


def _map_tensors(output, fn):
    """`output` (a tensor, a NamedTuple whose first field is the logits, or a tuple of tensors) with `fn` applied
    to the tensors the kd term reads."""
    if isinstance(output, torch.Tensor):
        return fn(output)
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return output._replace(**{output._fields[0]: fn(output[0])})
    if isinstance(output, tuple):
        return tuple(fn(t) if isinstance(t, torch.Tensor) else t for t in output)
    return output


def _logits(output) -> list[torch.Tensor]:
    """The logits in a model's output: the tensor, a NamedTuple's first field, or each tensor of a tuple (QA)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, tuple) and hasattr(output, "_fields"):
        return [output[0]]
    if isinstance(output, tuple):
        return [t for t in output if isinstance(t, torch.Tensor)]
    raise DistillError(f"cannot find logits in a model output of type {type(output).__name__}")


def _argument(model: nn.Module, args: tuple, kwargs: dict, name: str):
    """The value the forward of `model` got for parameter `name` in this call (None when not given)."""
    try:
        return inspect.signature(model.forward).bind(*args, **kwargs).arguments.get(name)
    except TypeError:
        return kwargs.get(name)


def _targets(batch, task: str) -> tuple[torch.Tensor | None, bool]:
    """The batch's targets (B, T) and whether they are unshifted next-token labels (a causal LM's `labels`,
    whose position t + 1 is what logits t predict) rather than one per logits position."""
    if isinstance(batch, dict):
        labels = batch.get("labels")
        return (labels, task == "causal-lm") if isinstance(labels, torch.Tensor) else (None, False)
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[1], torch.Tensor):
        return batch[1], False  # (inputs, targets): a packed window's targets, already shifted
    return None, False


def _rows_that_count(logits: torch.Tensor, real: torch.Tensor | None, targets: torch.Tensor | None,
                     shifted: bool) -> torch.Tensor | None:
    """Which rows of token-level logits (B, T, C) count: real tokens with a target. None (all) for logits of
    other shapes: one row per sequence (B, C), per predicted position (N, V), or span logits (B, T)."""
    if logits.dim() != 3:
        return None
    b, t = logits.shape[:2]
    mask = torch.ones(b, t, dtype=torch.bool, device=logits.device)
    if real is not None and tuple(real.shape) == (b, t):
        mask &= real.to(logits.device).bool()
    if targets is not None and tuple(targets.shape) == (b, t):
        targets = targets.to(logits.device)
        has_target = F.pad(targets[:, 1:] != -100, (0, 1), value=False) if shifted else targets != -100
        mask &= has_target
    return mask


def _unwrapped(model: nn.Module) -> nn.Module:
    """The model inside DDP (`module`) and `torch.compile` (`_orig_mod`) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner
