"""ELECTRA replaced-token detection as a training objective (Clark et al. 2020): 15 % of the tokens become
[MASK], the generator's samples fill them, the discriminator tells replaced tokens apart.

The model pair is `lmforge.models.electra.ElectraPretraining`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from lmforge.models import Model
from lmforge.models.config import ModelConfig
from lmforge.models.electra import GENERATOR_KEY, generator_overrides
from lmforge.objectives import ELECTRA_DISC_WEIGHT, electra_loss, replaced_token_detection_loss
from lmforge.train.objective_common import Batch, build_task_model, to_device
from lmforge.train.objective_encoder import MaskedLMObjective


@dataclass
class ReplacedTokenDetectionObjective(MaskedLMObjective):
    """ELECTRA pretraining (Clark et al. 2020): 15 % of tokens -> [MASK] (sec. 2), generator samples fill
    them, the discriminator tells replaced tokens; loss L_MLM(G) + 50 L_Disc(D). Exports the discriminator.

    Validation reports the discriminator's per-token binary cross-entropy, with the masks and the
    generator's samples drawn from fixed seeds.
    """

    name: str = "rtd"
    mask_ratio: float = 1.0
    random_ratio: float = 0.0
    disc_weight: float = ELECTRA_DISC_WEIGHT
    generator_size: float = 0.25

    groups: ClassVar[dict[str, tuple[str, ...]]] = {"attention_mask": ("input_ids", "labels")}
    model_task: ClassVar[str] = "electra-pretraining"
    model_overrides: ClassVar[dict[str, Any]] = {"num_labels": 1}  # one replaced-or-not logit per token

    def build_model(self, cfg: ModelConfig) -> Model:
        """`ElectraPretraining`; the generator's shape from `cfg.extra["electra_generator"]` or `generator_size`."""
        shape = {**generator_overrides(cfg, self.generator_size), **cfg.extra.get(GENERATOR_KEY, {})}
        return build_task_model(self, cfg.replace(extra={**cfg.extra, GENERATOR_KEY: shape}))

    def collate(self, documents: list[list[int]], seed: int, seq_len: int) -> Batch:
        """As MLM, plus the batch's seed (validation samples from it)."""
        return {**super().collate(documents, seed, seq_len), "seed": seed}

    def loss(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict]:
        """ELECTRA's generator MLM loss + 50 x discriminator loss of a micro-batch (samples: global RNG)."""
        b = to_device(batch, device)
        out = model(b["input_ids"], b["attention_mask"], labels=b["labels"])
        loss, parts = electra_loss(out.generator_logits, b["labels"], out.discriminator_logits, out.is_replaced,
                                   b["attention_mask"], disc_weight=self.disc_weight)
        return loss, {k: v.detach() for k, v in parts.items()}

    @torch.no_grad()
    def eval_sums(self, model: nn.Module, batch: Batch, device: torch.device) -> tuple[float, int]:
        """(summed discriminator BCE, real tokens) of an evaluation batch, samples seeded by the batch."""
        b = to_device(batch, device)
        sampler = torch.Generator(device=device).manual_seed(int(b["seed"]))
        out = model(b["input_ids"], b["attention_mask"], labels=b["labels"], sampler=sampler)
        n = int(b["attention_mask"].sum())
        loss = replaced_token_detection_loss(out.discriminator_logits, out.is_replaced, b["attention_mask"])
        return float(loss) * n, n

    def export_model(self, model: nn.Module) -> nn.Module:
        """The discriminator (a `BertForTokenClassification` with one label once exported)."""
        return model.discriminator
