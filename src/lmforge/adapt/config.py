"""The fine-tuning methods' configuration (no torch here: the command line reads it before anything runs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


class AdaptError(ValueError):
    """An adaptation cannot be applied or loaded: unknown method, a pattern matching nothing, a wrong base."""


@dataclass(frozen=True)
class AdaptConfig:
    """How to adapt a pretrained model (one flat config for every method; each reads the fields it needs)."""

    method: str = "lora"
    """full, ffn (feed-forward layers only), head (linear probe), bitfit (biases), freeze (all but `freeze`),
    lora, dora, qlora (LoRA on a frozen int8/int4 base), houlsby / pfeiffer (bottleneck adapters),
    prefix (prefix-tuning), prompt (prompt-tuning)."""
    train_head: bool = True
    """Also train the task head (`head.*`: classifier, token tagger, span head), which is new to the task
    (PEFT's `modules_to_save`). The LM head of a causal/seq2seq LM is pretrained and stays frozen."""
    also_train: list[str] = field(default_factory=list)
    """Parameter-name patterns (fnmatch) that train besides the method's own, e.g. ["pooler.*"]; `lmforge finetune`
    adds the parameters its checkpoint lacked (new to the task, like the head)."""
    freeze: list[str] = field(default_factory=list)
    """method=freeze: parameter-name patterns (fnmatch) to freeze, e.g. ["body.tokens.*", "body.encoder.blocks.[0-2].*"];
    everything else trains."""
    # LoRA / DoRA / QLoRA (Hu et al. 2021; Liu et al. 2024; Dettmers et al. 2023)
    r: int = 8
    """LoRA rank."""
    alpha: float = 16.0
    """LoRA scale numerator: the update is (alpha / r) B A x, or (alpha / sqrt(r)) B A x with `rslora`."""
    dropout: float = 0.0
    """Dropout on the LoRA branch's input."""
    rslora: bool = False
    """Rank-stabilised scaling alpha / sqrt(r) (Kalajdzievski 2023)."""
    target_modules: list[str] = field(default_factory=lambda: ["*q_proj", "*v_proj"])
    """LoRA: module-name patterns (fnmatch over `named_modules()` names) of the Linear layers to adapt;
    a pattern that matches no Linear is an error. E.g. ["*attn.*_proj", "*ffn.*_proj"]."""
    quantize: str = "int8"
    """qlora: how the frozen base's Linear layers are stored: int8, q8_0, int4 (group 32, symmetric)."""
    # Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021)
    bottleneck: int = 64
    """Adapter width: d_model -> bottleneck -> d_model, with a residual and a zero-initialised up-projection."""
    # Prefix- and prompt-tuning (Li & Liang 2021; Lester et al. 2021)
    num_virtual_tokens: int = 16
    """Trainable prefix length per layer (prefix) or soft-prompt length (prompt)."""
    prefix_hidden: int = 512
    """prefix: hidden width of the reparameterisation MLP (0: train the key/value prefixes directly)."""
    prompt_init_text: str | None = None
    """prompt: initialise the soft prompt from the embeddings of this text's tokens (repeated to length);
    None: from random vocabulary embeddings."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "adaptation") -> AdaptConfig:
        """Build from a dict, rejecting unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AdaptError(f"{source}: unknown adaptation field(s): {', '.join(unknown)}")
        return cls(**data)
