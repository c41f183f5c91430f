"""`lmforge.compress.prune`: masks against torch.nn.utils.prune and hand computations, 2:4, the cubic schedule,
masks kept through training and resume.

The models are tiny random LLaMAs (d_model 32, two layers, float32); the training runs are 12 steps on an
in-memory token stream through the real trainer (`lmforge.train.loop.train`).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.nn.utils import prune as torch_prune

from lmforge.compress import prune as P
from lmforge.compress.prune import (
    MaskedTraining,
    PruneConfig,
    PruneError,
    apply_masks,
    cubic_sparsity,
    magnitude_masks,
    nm_masks,
    prune_model,
    sparsity_of,
)
from lmforge.models import build_model, get_preset
from lmforge.train.config import TrainConfig
from lmforge.train.distributed import DistEnv
from lmforge.train.loop import train
from lmforge.train.objective import CausalLMObjective

VOCAB = 64


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = get_preset("llama-tiny", vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                     max_seq_len=32)
    return build_model(cfg).float()


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear of the blocks, found independently of the module under test."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".blocks." in n}


# ------------------------------------------------------------------------------------------------ magnitude

def test_selection_is_the_block_linears_not_embedding_or_head():
    model = tiny()
    assert P.select_linears(model) == list(block_linears(model))
    assert "lm_head.proj" not in magnitude_masks(model, 0.5)


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.9])
def test_layer_masks_equal_torch_l1_unstructured(sparsity):
    model = tiny()
    masks = magnitude_masks(model, sparsity, scope="layer")
    reference = copy.deepcopy(model)
    for name, linear in block_linears(reference).items():
        torch_prune.l1_unstructured(linear, "weight", amount=sparsity)
        assert torch.equal(masks[name], linear.weight_mask.bool()), name
        assert int((~masks[name]).sum()) == round(sparsity * linear.weight.numel())


@pytest.mark.parametrize("sparsity", [0.25, 0.6])
def test_global_masks_equal_torch_global_unstructured_and_the_hand_threshold(sparsity):
    model = tiny()
    masks = magnitude_masks(model, sparsity, scope="global")
    reference = copy.deepcopy(model)
    layers = block_linears(reference)
    torch_prune.global_unstructured([(m, "weight") for m in layers.values()], torch_prune.L1Unstructured,
                                    amount=sparsity)
    for name, linear in layers.items():
        assert torch.equal(masks[name], linear.weight_mask.bool()), name
    # By hand: the k-th smallest |w| of all selected weights is the threshold; everything at or below it goes.
    weights = [m.weight.detach() for m in block_linears(model).values()]
    everything = torch.cat([w.abs().flatten() for w in weights]).tolist()
    k = round(sparsity * len(everything))
    threshold = sorted(everything)[k - 1]
    for w, mask in zip(weights, masks.values()):
        assert torch.equal(mask, w.abs() > threshold)
    assert sum(int((~m).sum()) for m in masks.values()) == k
    per_layer = [float((~m).float().mean()) for m in masks.values()]
    assert max(per_layer) - min(per_layer) > 0.01  # one global threshold: layers end at different sparsities


def test_apply_masks_and_sparsity_report():
    model = tiny()
    masks = magnitude_masks(model, 0.4, scope="layer")
    apply_masks(model, masks)
    report = sparsity_of(model)
    for name, linear in block_linears(model).items():
        assert torch.equal(linear.weight != 0, masks[name])
        assert report.layers[name] == (round(0.4 * linear.weight.numel()), linear.weight.numel())
    assert report.zeros == sum(round(0.4 * m.weight.numel()) for m in block_linears(model).values())
    assert report.sparsity == pytest.approx(report.zeros / report.total)


def test_previous_masks_stay_pruned_as_sparsity_grows():
    model = tiny()
    first = magnitude_masks(model, 0.3)
    with torch.no_grad():  # an optimizer moved the pruned weights far away from zero
        for name, linear in block_linears(model).items():
            linear.weight[~first[name]] = 10.0
    second = magnitude_masks(model, 0.5, previous=first)
    total = sum(m.numel() for m in second.values())
    assert sum(int((~m).sum()) for m in second.values()) == round(0.5 * total)
    for name in first:
        assert not (second[name] & ~first[name]).any(), name  # nothing pruned comes back
    fresh = magnitude_masks(model, 0.5)  # without `previous` the big values would be kept
    assert all(fresh[name][~first[name]].all() for name in first)


def test_ties_are_broken_to_the_exact_count():
    model = tiny()
    with torch.no_grad():
        for linear in block_linears(model).values():
            linear.weight.fill_(0.5)
    masks = magnitude_masks(model, 0.3, scope="layer")
    for name in block_linears(model):
        flat = masks[name].flatten()
        k = round(0.3 * flat.numel())
        assert not flat[:k].any() and flat[k:].all()  # the earlier weights go first


def test_prune_model_one_shot():
    model = tiny()
    summary = prune_model(model, PruneConfig(sparsity=0.5, scope="layer"))
    assert summary.report.sparsity == pytest.approx(0.5)
    assert all(z == t // 2 for z, t in summary.report.layers.values())
    assert model.lm_head.proj.weight.ne(0).all() and model.body.tokens.weight.ne(0).all()


# ------------------------------------------------------------------------------------------------ n:m

@pytest.mark.parametrize(("n", "m"), [(2, 4), (1, 4), (3, 8)])
def test_nm_keeps_the_n_largest_of_every_m_inputs(n, m):
    model = tiny()
    before = {name: lin.weight.detach().clone() for name, lin in block_linears(model).items()}
    apply_masks(model, nm_masks(model, n, m))
    for name, linear in block_linears(model).items():
        rows, cols = linear.weight.shape
        pruned = linear.weight.detach().reshape(rows, cols // m, m)
        original = before[name].abs().reshape(rows, cols // m, m)
        assert ((pruned != 0).sum(-1) == n).all(), name
        kept_min = original.masked_fill(pruned == 0, float("inf")).amin(-1)
        dropped_max = original.masked_fill(pruned != 0, -1.0).amax(-1)
        assert (dropped_max <= kept_min).all(), name  # the dropped ones are the smallest |w| of their group
        assert torch.equal(pruned[pruned != 0], before[name].reshape(rows, cols // m, m)[pruned != 0])


def test_nm_through_the_config():
    model = tiny()
    summary = prune_model(model, PruneConfig(method="2:4"))
    assert summary.report.sparsity == 0.5 and all(z * 2 == t for z, t in summary.report.layers.values())


def test_nm_needs_in_features_divisible_by_m():
    model = nn.Module()
    model.body = nn.Module()
    model.body.blocks = nn.ModuleList([nn.Linear(8, 4), nn.Linear(6, 4)])
    with pytest.raises(PruneError, match=r"body\.blocks\.1 \(in_features 6\)"):
        nm_masks(model, 2, 4)
    assert set(nm_masks(model, 2, 4, include=["*.blocks.0"])) == {"body.blocks.0"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU message")
def test_semi_structured_needs_a_gpu():
    linear = nn.Linear(64, 64)
    with pytest.raises(PruneError, match="no 2:4 sparse kernel on CPU"):
        P.to_semi_structured(linear)


# ------------------------------------------------------------------------------------------------ schedule

def test_cubic_schedule_by_hand():
    final, initial, t0, end = 0.8, 0.1, 10, 50
    for t, expected in [(10, 0.1), (20, 0.8 - 0.7 * 0.75 ** 3), (30, 0.8 - 0.7 * 0.5 ** 3), (40, 0.8 - 0.7 * 0.25 ** 3),
                        (50, 0.8)]:
        assert cubic_sparsity(t, final, t0, end, initial) == pytest.approx(expected)
    assert cubic_sparsity(0, final, t0, end, initial) == pytest.approx(0.1)  # clamped before the start
    assert cubic_sparsity(80, final, t0, end, initial) == pytest.approx(0.8)  # and after the end
    values = [cubic_sparsity(t, final, t0, end, initial) for t in range(0, 70)]
    assert all(a <= b for a, b in zip(values, values[1:]))
    # The increments shrink: prune fast while the weights are redundant, slowly near the target.
    steps = [values[t + 1] - values[t] for t in range(t0, end)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def test_masked_training_schedule_steps():
    pruner = MaskedTraining(PruneConfig(sparsity=0.6, schedule="cubic", start_step=2, end_step=11, every=3))
    assert [t for t in range(15) if pruner.is_pruning_step(t)] == [2, 5, 8, 11]
    assert pruner.scheduled_sparsity(1) == 0.0
    assert pruner.scheduled_sparsity(7) == pytest.approx(0.6 - 0.6 * (1 - 3 / 9) ** 3)  # that of step 5
    assert pruner.scheduled_sparsity(11) == pruner.scheduled_sparsity(40) == pytest.approx(0.6)


def test_masked_training_keeps_pruned_weights_pruned_whatever_the_optimizer_did():
    model = tiny()
    pruner = MaskedTraining(PruneConfig(sparsity=0.6, schedule="cubic", start_step=0, end_step=4, every=2))
    pruner(model, 0)  # step 0: nothing (initial sparsity 0)
    pruner(model, 2)
    first = {n: m.weight == 0 for n, m in block_linears(model).items()}
    total = sum(z.numel() for z in first.values())
    assert sum(int(z.sum()) for z in first.values()) == round(0.6 * (1 - 0.5 ** 3) * total)
    with torch.no_grad():  # momentum carried the pruned weights far off zero
        for name, linear in block_linears(model).items():
            linear.weight[first[name]] = 10.0
    pruner(model, 3)  # not a pruning step: the masks are re-applied
    assert all(torch.equal(m.weight == 0, first[n]) for n, m in block_linears(model).items())
    with torch.no_grad():
        for name, linear in block_linears(model).items():
            linear.weight[first[name]] = 10.0
    pruner(model, 4)  # a pruning step: the big values do not win their place back
    assert all(((m.weight == 0) | ~first[n]).all() for n, m in block_linears(model).items())
    assert sum(int((m.weight == 0).sum()) for m in block_linears(model).values()) == round(0.6 * total)


# ------------------------------------------------------------------------------------------------ training

class MemoryTokens:
    """A token stream in memory, with what the trainer's packed and evaluation loaders read of a TokenDataset."""

    def __init__(self, n: int, seed: int, split: str) -> None:
        self.ids = np.random.default_rng(seed).integers(1, VOCAB, n).astype(np.int64)
        self.split, self.path, self.eos_id = split, Path("memory"), 0

    def __len__(self) -> int:
        return len(self.ids)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        return self.ids[start:stop]

    def array(self) -> np.ndarray:
        return self.ids


class Crash(Exception):
    pass


class Watch:
    """Wraps the pruner: records the zeros after every call, whether the optimizer had moved a pruned weight
    back off zero, and crashes at `crash_at` (after that step's update, before its checkpoint)."""

    def __init__(self, pruner: MaskedTraining, crash_at: int | None = None) -> None:
        self.pruner, self.crash_at = pruner, crash_at
        self.zeros: dict[int, dict[str, torch.Tensor]] = {}
        self.moved = 0

    def __call__(self, model: nn.Module, step: int) -> None:
        if step == self.crash_at:
            raise Crash
        layers = block_linears(model)
        if self.zeros:
            last = self.zeros[max(self.zeros)]
            self.moved += sum(int((layers[n].weight[z] != 0).sum()) for n, z in last.items())
        self.pruner(model, step)
        self.zeros[step] = {n: (m.weight == 0).clone() for n, m in layers.items()}


def run(run_dir: Path, config: PruneConfig, crash_at: int | None = None, resume: bool = False):
    model = tiny(seed=1)
    cfg = TrainConfig(steps=12, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=0, eval_every=100,
                      checkpoint_every=5, keep_last=0, log_every=100, progress=False, precision="fp32")
    watch = Watch(MaskedTraining(config), crash_at)
    try:
        train(model, CausalLMObjective(), MemoryTokens(2000, 0, "train"), MemoryTokens(200, 1, "val"), cfg,
              run_dir, DistEnv(), resume=resume, on_step=watch)
    except Crash:
        pass
    return model, watch


def scheduled_by_hand(config: PruneConfig, step: int) -> float:
    """The sparsity the schedule asks for after `step` steps, written out for the test."""
    if step < config.start_step:
        return 0.0
    if config.schedule == "oneshot":
        return config.sparsity
    t0, end, every = config.start_step, config.end_step, config.every
    last = end if step >= end else t0 + (step - t0) // every * every
    return config.sparsity + (config.initial_sparsity - config.sparsity) * (1 - (last - t0) / (end - t0)) ** 3


CASES = {
    "global-cubic": PruneConfig(sparsity=0.6, scope="global", schedule="cubic", start_step=2, end_step=10, every=2,
                                initial_sparsity=0.1),
    "layer-cubic": PruneConfig(sparsity=0.5, scope="layer", schedule="cubic", start_step=0, end_step=9, every=3),
    "2:4-oneshot": PruneConfig(method="2:4", start_step=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_masks_survive_training_and_resume_exactly(case, tmp_path):
    config = CASES[case]
    whole, watch = run(tmp_path / "whole", config)
    sizes = {n: m.weight.numel() for n, m in block_linears(whole).items()}
    assert sorted(watch.zeros) == list(range(13))  # called at the start and after each of the 12 steps
    for step, zeros in watch.zeros.items():
        target = scheduled_by_hand(config, step)
        if config.scope == "layer" or config.nm():
            assert all(int(z.sum()) == round(target * sizes[n]) for n, z in zeros.items()), step
        else:
            assert sum(int(z.sum()) for z in zeros.values()) == round(target * sum(sizes.values())), step
        if step > 0:
            assert all(not (watch.zeros[step - 1][n] & ~z).any() for n, z in zeros.items()), step  # stay pruned
    assert watch.moved > 0  # the optimizer did move pruned weights: re-applying the masks is what kept them zero
    assert sparsity_of(whole).sparsity == pytest.approx(config.sparsity, abs=1e-3)
    # The checkpoints hold the masked weights.
    saved = load_file(tmp_path / "whole" / "step-0000005" / "model" / "model.safetensors")
    assert all(torch.equal(saved[f"{n}.weight"] == 0, watch.zeros[5][n]) for n in sizes)

    run(tmp_path / "broken", config, crash_at=8)  # stops after step 8, before its checkpoint
    resumed, again = run(tmp_path / "broken", config, resume=True)
    assert min(again.zeros) == 5  # resumed from step 5, with masks rebuilt from its weights
    expected = whole.state_dict()
    for name, tensor in resumed.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


# ------------------------------------------------------------------------------------------------ errors

@pytest.mark.parametrize(("fields", "message"), [
    ({"sparsity": 1.0}, r"sparsity=1\.0 must be in \[0, 1\)"),
    ({"sparsity": -0.1}, r"sparsity=-0\.1 must be in \[0, 1\)"),
    ({"method": "4:4"}, r"method='4:4'.*0 < n < m"),
    ({"method": "5:4"}, r"method='5:4'.*0 < n < m"),
    ({"method": "random"}, r"method='random'"),
    ({"method": "2:4", "sparsity": 0.3}, r"sparsity=0\.3: method 2:4 zeroes 0\.5"),
    ({"method": "2:4", "schedule": "cubic", "end_step": 5}, r"schedule=cubic: method 2:4"),
    ({"scope": "row"}, r"scope='row'"),
    ({"schedule": "cubic"}, r"end_step=None"),
    ({"schedule": "cubic", "start_step": 5, "end_step": 5}, r"end_step=5 must be > start_step=5"),
    ({"schedule": "cubic", "end_step": 5, "initial_sparsity": 0.7}, r"initial_sparsity=0\.7"),
    ({"every": 0}, r"every=0"),
    ({"include": "*.blocks.*"}, r"include='\*\.blocks\.\*'"),
])
def test_bad_config_names_the_field(fields, message):
    with pytest.raises(PruneError, match=message):
        PruneConfig(**fields).validate()


def test_config_round_trip_and_unknown_fields():
    config = PruneConfig(sparsity=0.7, schedule="cubic", start_step=1, end_step=9, include=["*.ffn.*"])
    assert PruneConfig.from_dict(config.to_dict()) == config
    with pytest.raises(PruneError, match="unknown field.*amount"):
        PruneConfig.from_dict({"amount": 0.5})


def test_bad_arguments():
    model = tiny()
    for bad in (1.0, -0.1):
        with pytest.raises(PruneError, match=f"sparsity={bad}"):
            magnitude_masks(model, bad)
    with pytest.raises(PruneError, match=r"'\*\.nothing\.\*' match no Linear"):
        magnitude_masks(model, 0.5, include=["*.nothing.*"])
    with pytest.raises(PruneError, match="0 < n < m"):
        nm_masks(model, 4, 4)
    with pytest.raises(PruneError, match="end=3 must be > start=3"):
        cubic_sparsity(5, 0.5, 3, 3)
