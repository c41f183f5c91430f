"""Knowledge distillation: the losses against hand computations and torch's KL, students copied from the right
teacher layers, the objective's terms, a decoder and a classifier distilled through the real trainer, pair
checkpoints without the teacher that reload and resume, and bad input."""

from __future__ import annotations

import json
import math
import random
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from _sentiment import sentiment_rows

from lmforge.compress.distill import (
    DistillConfig,
    DistillError,
    DistillObjective,
    attention_loss,
    distillation_pair,
    hidden_loss,
    kd_loss,
    layer_map,
    student_from_teacher,
)
from lmforge.models import CausalLM, ConfigError, SequenceClassifier, build_model, get_preset
from lmforge.models.distillation import Distillation

DECODER = {"d_model": 32, "n_heads": 4, "d_ff": 64, "max_seq_len": 64}
ENCODER = {"d_model": 32, "n_heads": 4, "d_ff": 64, "max_seq_len": 64}
WORDS = "the cat sat on a mat while dog ran far away and we went home under old red trees".split()


def _decoder(vocab: int = 60, n_layers: int = 4, seed: int = 0, preset: str = "gpt2-tiny", **changes) -> CausalLM:
    torch.manual_seed(seed)
    return build_model(get_preset(preset, vocab_size=vocab, n_layers=n_layers, **{**DECODER, **changes}))


# ------------------------------------------------------------------------------------------------ losses

def test_kd_loss_is_t_squared_kl_by_hand_and_by_torch():
    torch.manual_seed(0)
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64) * 3
    for T in (1.0, 2.0, 4.5):
        hand = 0.0
        for row_s, row_t in zip(s.tolist(), t.tolist()):
            zs = sum(math.exp(v / T) for v in row_s)
            zt = sum(math.exp(v / T) for v in row_t)
            for vs, vt in zip(row_s, row_t):
                p, q = math.exp(vt / T) / zt, math.exp(vs / T) / zs
                hand += p * math.log(p / q)
        hand = T * T * hand / len(s)
        torch_kl = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T * T
        assert kd_loss(s, t, T).item() == pytest.approx(hand, rel=1e-12)
        assert kd_loss(s, t, T).item() == pytest.approx(torch_kl.item(), rel=1e-12)
        assert kd_loss(s.float(), t.float(), T).dtype == torch.float32
    assert kd_loss(t, t, 2.0).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_loss_counts_only_the_masked_rows_and_returns_zero_without_rows():
    torch.manual_seed(1)
    s, t = torch.randn(2, 5, 11, dtype=torch.float64), torch.randn(2, 5, 11, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 1, 0], [0, 1, 1, 0, 0]], dtype=torch.bool)
    want = F.kl_div(F.log_softmax(s[mask] / 3, -1), F.softmax(t[mask] / 3, -1), reduction="batchmean") * 9
    assert kd_loss(s, t, 3.0, mask).item() == pytest.approx(want.item(), rel=1e-12)
    none = kd_loss(s.requires_grad_(), t, 3.0, torch.zeros(2, 5, dtype=torch.bool))
    assert none.item() == 0.0
    none.backward()  # no rows: a zero loss that still backpropagates (to zeros)
    assert s.grad.abs().sum() == 0


def test_t_squared_keeps_the_soft_gradient_on_the_hard_scale():
    # d/dz of T^2 KL(softmax(v/T) || softmax(z/T)) is T (softmax(z/T) - softmax(v/T)) per row (Hinton et al. sec. 2);
    # for T much larger than the logits that tends to (z - v) / C for zero-mean logits: independent of T.
    torch.manual_seed(2)
    z, v = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    z, v = z - z.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    grads = {}
    for T in (1.0, 50.0, 100.0):
        student = z.clone().requires_grad_()
        kd_loss(student, v, T).backward()
        exact = T * (F.softmax(z / T, -1) - F.softmax(v / T, -1)) / 3
        torch.testing.assert_close(student.grad, exact, rtol=1e-10, atol=1e-12)
        grads[T] = student.grad
    limit = (z - v) / 6 / 3
    torch.testing.assert_close(grads[100.0], limit, rtol=0.02, atol=1e-4)
    ratio = grads[100.0].norm() / grads[50.0].norm()
    assert abs(ratio - 1) < 0.01  # without T^2 it would be 1/4


def test_hidden_loss_is_the_mse_after_the_projection_over_counted_positions():
    torch.manual_seed(3)
    s, t = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 5, dtype=torch.float64)
    proj = torch.nn.Linear(3, 5).double()
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    hand, n = 0.0, 0
    for b in range(2):
        for i in range(4):
            if mask[b, i]:
                mapped = (proj.weight @ s[b, i] + proj.bias).detach()
                hand += float(((mapped - t[b, i]) ** 2).sum())
                n += 5
    assert hidden_loss(s, t, proj, mask).item() == pytest.approx(hand / n, rel=1e-12)
    same = torch.randn(2, 4, 5, dtype=torch.float64)
    assert hidden_loss(same, t).item() == pytest.approx(F.mse_loss(same, t).item(), rel=1e-12)
    with pytest.raises(DistillError, match="widths differ, so they need a learned projection"):
        hidden_loss(s, t)


def _attention(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return scores.masked_fill(~mask, float("-inf")).softmax(-1)


def test_attention_loss_is_the_kl_per_query_by_hand_with_masked_keys():
    torch.manual_seed(4)
    causal = torch.ones(4, 4, dtype=torch.bool).tril()  # masked keys: probability exactly 0 on both sides
    p_s = _attention(torch.randn(2, 3, 4, 4, dtype=torch.float64), causal).requires_grad_()
    p_t = _attention(torch.randn(2, 3, 4, 4, dtype=torch.float64) * 2, causal)
    queries = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    hand, n = 0.0, 0
    for b in range(2):
        for h in range(3):
            for q in range(4):
                if queries[b, q]:
                    hand += sum(float(p_t[b, h, q, k] * math.log(p_t[b, h, q, k] / p_s[b, h, q, k].detach()))
                                for k in range(q + 1))
                    n += 1
    loss = attention_loss(p_s, p_t, queries)
    assert loss.item() == pytest.approx(hand / n, rel=1e-12)
    loss.backward()
    assert torch.isfinite(p_s.grad).all() and p_s.grad.abs().sum() > 0  # no 0 * log 0 in the gradient
    # Different head counts: each side's distributions averaged over its heads first.
    p_s2 = _attention(torch.randn(2, 2, 4, 4, dtype=torch.float64), causal)
    m_s, m_t = p_s2.mean(1), p_t.mean(1)
    hand = sum(float(m_t[b, q, k] * math.log(m_t[b, q, k] / m_s[b, q, k]))
               for b in range(2) for q in range(4) for k in range(q + 1)) / 8
    assert attention_loss(p_s2, p_t).item() == pytest.approx(hand, rel=1e-12)


def test_layer_map_spreads_student_layers_and_ends_on_the_last():
    assert layer_map(3, 6) == [1, 3, 5]
    assert layer_map(2, 4) == [1, 3]
    assert layer_map(4, 4) == [0, 1, 2, 3]
    assert layer_map(3, 4) == [0, 2, 3]  # 4/3 -> 1, 8/3 -> 3, 4 -> 4, minus one
    assert layer_map(2, 5) == [2, 4]  # 2.5 rounds up
    assert layer_map(2, 6, [0, 5]) == [0, 5]
    with pytest.raises(DistillError, match="one teacher layer"):
        layer_map(2, 6, [0, 6])
    with pytest.raises(DistillError, match="one teacher layer"):
        layer_map(3, 6, [0, 1])


# ------------------------------------------------------------------------------------------------ students

def _by_hand(teacher: CausalLM | SequenceClassifier, layers: list[int], **widths):
    """A model of the teacher's class with `len(layers)` blocks (of `widths`), filled module by module from it."""
    hand = type(teacher)(teacher.cfg.replace(n_layers=len(layers), **widths))
    stack = "encoder" if teacher.cfg.family == "encoder" else "decoder"
    for name, module in hand.named_children():
        if name != "body":
            module.load_state_dict(getattr(teacher, name).state_dict())
    for name, module in hand.body.named_children():
        if name not in ("encoder", "decoder"):
            module.load_state_dict(getattr(teacher.body, name).state_dict())
    ours, theirs = getattr(hand.body, stack), getattr(teacher.body, stack)
    for name, module in ours.named_children():
        if name != "blocks" and any(True for _ in module.parameters()):
            module.load_state_dict(getattr(theirs, name).state_dict())
    for i, j in enumerate(layers):
        ours.blocks[i].load_state_dict(theirs.blocks[j].state_dict())
    hand.tie_weights()
    return hand.eval()


@pytest.mark.parametrize("preset", ["gpt2-tiny", "llama-tiny"])
def test_student_from_teacher_copies_the_chosen_layers(preset):
    teacher = _decoder(n_layers=5, preset=preset, **({"n_kv_heads": 2} if preset == "llama-tiny" else {})).eval()
    ids = torch.randint(0, 60, (2, 9))
    for layers, chosen in (("every-other", [0, 2, 4]), ([4, 1], [4, 1]), ("layers:[3]", [3]), ("first", [0, 1, 2])):
        student = student_from_teacher(teacher, layers).eval()
        assert type(student) is CausalLM and student.cfg.n_layers == len(chosen)
        with torch.no_grad():
            torch.testing.assert_close(student(ids), _by_hand(teacher, chosen)(ids), rtol=0, atol=1e-5)
    small = student_from_teacher(teacher, "first", n_layers=2)
    assert small.cfg.n_layers == 2
    with torch.no_grad():  # the student's tensors are its own
        small.body.decoder.blocks[0].attn.q_proj.weight.zero_()
    assert teacher.body.decoder.blocks[0].attn.q_proj.weight.abs().sum() > 0
    fresh = student_from_teacher(teacher, "fresh", d_model=16, n_heads=2)
    assert fresh.cfg.n_layers == 3 and fresh.cfg.d_model == 16 and fresh.cfg.head_dim == 8


def test_a_teacher_with_per_layer_widths_passes_each_chosen_layers_on():
    heads = {"layer_n_heads": [4, 2, 2, 4], "layer_n_kv_heads": [4, 2, 2, 4]}
    teacher = _decoder(n_layers=4, layer_d_ff=[64, 24, 48, 16], **heads).eval()
    student = student_from_teacher(teacher).eval()
    assert student.cfg.layer_d_ff == [64, 48] and student.cfg.layer_n_heads == [4, 2]
    ids = torch.randint(0, 60, (2, 9))
    with torch.no_grad():
        want = _by_hand(teacher, [0, 2], layer_d_ff=[64, 48], layer_n_heads=[4, 2], layer_n_kv_heads=[4, 2])(ids)
        torch.testing.assert_close(student(ids), want, rtol=0, atol=1e-5)
    fresh = student_from_teacher(teacher, "fresh")  # a fresh student: the global widths
    assert fresh.cfg.n_layers == 2 and fresh.cfg.layer_d_ff is None and fresh.cfg.layer_n_heads is None


def test_student_of_an_encoder_classifier_keeps_the_pooler_and_head():
    torch.manual_seed(5)
    cfg = get_preset("bert-tiny", vocab_size=70, n_layers=4, pooler=True, num_labels=3, **ENCODER)
    teacher = SequenceClassifier(cfg).eval()
    student = student_from_teacher(teacher).eval()
    assert type(student) is SequenceClassifier and student.pooler is not None and student.cfg.num_labels == 3
    ids, mask = torch.randint(5, 70, (3, 8)), torch.tensor([[1] * 8, [1] * 5 + [0] * 3, [1] * 2 + [0] * 6])
    with torch.no_grad():
        torch.testing.assert_close(student(ids, mask), _by_hand(teacher, [0, 2])(ids, mask), rtol=0, atol=1e-5)


# ------------------------------------------------------------------------------------------------ the objective

@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(prepared data folder, its vocabulary size): a small random-word corpus, BPE vocabulary 300."""
    from lmforge.data.shards import prepare
    from lmforge.tokenizers import train_tokenizer

    root = tmp_path_factory.mktemp("distill")
    rng = random.Random(0)
    text = root / "corpus.txt"
    text.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
                                for _ in range(200)), encoding="utf-8")
    tok = train_tokenizer([text], kind="bpe", vocab_size=300, show_progress=False)
    tok.save(root / "tok")
    prepare([text], root / "tok", root / "data", progress=False, workers=1)
    return root / "data", tok.vocab_size


def _teacher_lm(vocab: int) -> CausalLM:
    """A random decoder with peaked next-token distributions (so there is something to learn)."""
    return _decoder(vocab, n_layers=4, seed=7, init_std=0.2).eval()


def test_objective_terms_equal_the_losses_computed_directly():
    from lmforge.evaluate.interpret import record_attention
    from lmforge.objectives import causal_lm_loss
    from lmforge.train.objective import CausalLMObjective

    teacher = _teacher_lm(60)
    config = DistillConfig(temperature=3.0, alpha=0.3, hidden_weight=0.5, attention_weight=2.0)
    pair = distillation_pair(teacher, config)
    objective = DistillObjective(CausalLMObjective(), config)
    inputs, targets = torch.randint(0, 60, (3, 12)), torch.randint(0, 60, (3, 12))
    targets[0, :4] = -100
    loss, parts = objective.loss(pair, (inputs, targets), torch.device("cpu"))
    # The same quantities, from plain forwards: hidden states by running the blocks by hand, attention maps
    # recorded by lmforge.evaluate.interpret.
    with torch.no_grad():
        logits_s, logits_t = pair.student(inputs), teacher(inputs)
        hard = causal_lm_loss(logits_s, targets=targets)
        kd = kd_loss(logits_s, logits_t, 3.0, targets != -100)

        def hidden_states(model):
            stack, x = model.body.decoder, model.body.embed(inputs)
            x = x + stack.positions(torch.arange(12)[None])
            out = []
            for block in stack.blocks:
                x = block(x, is_causal=True)
                out.append(x)
            return out

        hs, ht = hidden_states(pair.student), hidden_states(teacher)
        hidden = (hidden_loss(hs[0], ht[1]) + hidden_loss(hs[1], ht[3])) / 2
        with record_attention([b.attn for b in pair.blocks()]) as rs, record_attention([b.attn for b in teacher.blocks()]) as rt:
            pair(inputs), teacher(inputs)
        attention = (attention_loss(rs[0][0], rt[1][0]) + attention_loss(rs[1][0], rt[3][0])) / 2
    for name, want in (("hard", hard), ("kd", kd), ("hidden", hidden), ("attention", attention)):
        assert parts[name].item() == pytest.approx(want.item(), rel=1e-5, abs=1e-7), name
    assert kd > 0.05  # the captured student logits are the ones of the forward, not the loss's gradient
    assert loss.item() == pytest.approx((0.7 * hard + 0.3 * kd + 0.5 * hidden + 2.0 * attention).item(), rel=1e-5)
    # The attention term reaches the queries (its maps keep their graph); the teacher gets nothing.
    q_grads = []
    for weight in (0.0, 1.0):
        pair.zero_grad()
        plain = DistillObjective(CausalLMObjective(), DistillConfig(alpha=0.0, attention_weight=weight))
        plain.loss(pair, (inputs, targets), torch.device("cpu"))[0].backward()
        q_grads.append(pair.body.decoder.blocks[0].attn.q_proj.weight.grad.clone())
    assert (q_grads[1] - q_grads[0]).abs().max() > 1e-4  # detached maps: equal up to rounding (~1e-7)
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(b.attn._record is None and not b.attn._record_grad for b in pair.blocks())  # recording is off again


@pytest.fixture(scope="module")
def lm_run(corpus, tmp_path_factory):
    """A half-depth student of a 4-layer decoder trained 24 steps through `loop.train`, and the same run stopped
    at step 16 and resumed to 24 (a fresh pair from the same teacher each time)."""
    from lmforge.data import TokenDataset
    from lmforge.train import TrainConfig, train
    from lmforge.train.distributed import DistEnv
    from lmforge.train.objective import CausalLMObjective

    data, vocab = corpus
    ds, val = TokenDataset(data, "train"), TokenDataset(data, "val")
    config = DistillConfig(temperature=2.0, alpha=0.8, hidden_weight=0.1, attention_weight=0.1)
    teacher = _teacher_lm(ds.vocab_size)
    objective = DistillObjective(CausalLMObjective().bind(ds, None).objective, config)
    cfg = TrainConfig(steps=24, batch_size=4, seq_len=16, lr=3e-3, warmup_steps=0, schedule="constant",
                      eval_every=8, eval_batches=2, checkpoint_every=8, keep_last=0, log_every=4, progress=False,
                      precision="fp32", weight_decay=0.0)
    batch = next(iter(objective.eval_loader(val, 8, 16, 0, 1)))
    before_pair = distillation_pair(teacher, config)
    before = objective.loss(before_pair.eval(), batch, torch.device("cpu"))[1]
    root = tmp_path_factory.mktemp("distill-runs")
    torch.manual_seed(0)
    pair = distillation_pair(teacher, config)
    result = train(pair, objective, ds, val, cfg, root / "whole", DistEnv())
    torch.manual_seed(0)
    train(distillation_pair(teacher, config), objective, ds, val, replace(cfg, steps=16), root / "resumed", DistEnv())
    resumed = distillation_pair(teacher, config)
    train(resumed, objective, ds, val, cfg, root / "resumed", DistEnv(), resume=True)
    after = objective.loss(pair.eval(), batch, torch.device("cpu"))[1]
    return {"teacher": teacher, "pair": pair, "resumed": resumed, "before": before, "after": after, "result": result,
            "root": root, "vocab": ds.vocab_size}


def test_distilling_a_decoder_through_the_trainer_lowers_the_kd_loss(lm_run):
    before, after = lm_run["before"], lm_run["after"]
    assert after["kd"] < 0.75 * before["kd"], (before, after)  # measured: 0.48 -> 0.26
    assert after["hidden"] < before["hidden"] and after["attention"] < before["attention"], (before, after)
    result = lm_run["result"]
    assert result["step"] == 24 and math.isfinite(result["val_loss"])  # validation: the student's own LM loss
    pair = lm_run["pair"]
    assert pair.flops_per_token(16, training=True) == pytest.approx(
        pair.student.flops_per_token(16, training=True) + lm_run["teacher"].flops_per_token(16))


def test_pair_checkpoints_hold_no_teacher_and_reload_and_resume(lm_run):
    from safetensors import safe_open

    from lmforge.interop.native import load_model
    from lmforge.train import checkpoint as ckpt
    from lmforge.train.objective import CausalLMObjective

    pair, teacher = lm_run["pair"], lm_run["teacher"]
    last = ckpt.latest_checkpoint(lm_run["root"] / "whole")
    with safe_open(str(last / "model" / "model.safetensors"), "pt") as f:
        names = set(f.keys())
    student_names = {n for n in pair.student.state_dict() if not pair.student.is_tied(n)}
    assert names == student_names  # the student's tensors, nothing of the teacher (which has twice the blocks)
    assert json.loads((last / "model" / "lmforge.json").read_text())["task"] == "distillation"
    loaded = load_model(last / "model")
    assert isinstance(loaded, Distillation) and not loaded.has_teacher
    ids = torch.randint(0, lm_run["vocab"], (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(loaded.student(ids), pair.student.eval()(ids), rtol=0, atol=0)
        # Resumed at step 16 from its checkpoint, the run ends where the uninterrupted one did.
        torch.testing.assert_close(lm_run["resumed"].student.eval()(ids), pair.student(ids), rtol=0, atol=1e-6)
    exported = DistillObjective(CausalLMObjective()).export_model(loaded)
    assert type(exported) is CausalLM and exported.cfg.n_layers == 2 and "distillation" not in exported.cfg.extra
    with pytest.raises(ConfigError, match="no teacher attached"):
        _ = loaded.teacher
    # Its teacher attached again (as a resumed job does), it trains on.
    objective = DistillObjective(CausalLMObjective(), DistillConfig(hidden_weight=0.1, attention_weight=0.1))
    objective.check_model(loaded.attach_teacher(teacher))
    batch = (ids, torch.randint(0, lm_run["vocab"], (2, 10)))
    assert math.isfinite(objective.loss(loaded, batch, torch.device("cpu"))[0].item())


def test_a_narrower_fresh_student_trains_and_saves_its_projection(tmp_path):
    from lmforge.interop.native import load_model, save_model
    from lmforge.train.objective import CausalLMObjective

    teacher = _teacher_lm(60)
    torch.manual_seed(1)
    student = student_from_teacher(teacher, "fresh", n_layers=2, d_model=16, n_heads=2)
    config = DistillConfig(hidden_weight=1.0)
    pair = distillation_pair(teacher, config, student=student)
    assert pair.hidden_proj.in_features == 16 and pair.hidden_proj.out_features == 32
    objective = DistillObjective(CausalLMObjective(), config)
    batch = (torch.randint(0, 60, (2, 10)), torch.randint(0, 60, (2, 10)))
    opt = torch.optim.AdamW(pair.parameters(), lr=1e-2)
    first = None
    for _ in range(15):
        loss, parts = objective.loss(pair.train(), batch, torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else parts["hidden"]
    assert parts["hidden"] < first
    save_model(pair, tmp_path / "pair")
    loaded = load_model(tmp_path / "pair")
    torch.testing.assert_close(loaded.hidden_proj.weight, pair.hidden_proj.weight, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch[0]), pair.eval()(batch[0]), rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ a classifier

@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """The sentiment task's splits, tokenizer, and a 4-layer encoder classifier fine-tuned on them (the teacher)."""
    from lmforge.tasks import Example, TaskSpec, get_task
    from lmforge.tokenizers import train_tokenizer
    from lmforge.train.objective_finetune import FinetuneObjective, TaskSplit

    root = tmp_path_factory.mktemp("distill-cls")
    (root / "corpus.txt").write_text("\n".join(r["text"] for r in sentiment_rows(300, 9)), encoding="utf-8")
    tok = train_tokenizer([root / "corpus.txt"], kind="wordpiece", vocab_size=100, min_frequency=1,
                          show_progress=False)
    task = get_task(TaskSpec(name="classification", max_length=24))
    rows = {name: [Example(r, f"{name}.jsonl", i + 1) for i, r in enumerate(sentiment_rows(n, seed))]
            for name, n, seed in (("train", 256, 1), ("val", 96, 2))}
    task.fit(rows["train"])
    splits = {name: TaskSplit(r, task.features(r, tok, name), name) for name, r in rows.items()}
    objective = FinetuneObjective(task, tok, tok.pad_id)
    torch.manual_seed(0)
    cfg = get_preset("bert-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, n_layers=4, **ENCODER)
    teacher = objective.build_model(cfg)
    opt = torch.optim.AdamW(teacher.parameters(), lr=3e-3)
    loader = objective.train_loader(splits["train"], 16, 24, seed=0, rank=0, world_size=1)
    teacher.train()
    for _ in range(48):
        loss, _ = objective.loss(teacher, next(loader), torch.device("cpu"))
        opt.zero_grad()
        loss.backward()
        opt.step()
    accuracy = objective.eval_metrics(teacher, splits["val"], torch.device("cpu"))["accuracy"]
    return {"objective": objective, "splits": splits, "teacher": teacher.eval(), "accuracy": accuracy}


def test_a_classifier_teacher_distils_into_a_half_depth_student(sentiment, tmp_path):
    from lmforge.train import TrainConfig, train
    from lmforge.train.distributed import DistEnv

    teacher, splits = sentiment["teacher"], sentiment["splits"]
    assert sentiment["accuracy"] >= 0.9, sentiment["accuracy"]
    config = DistillConfig(temperature=2.0, alpha=0.7, hidden_weight=0.2, attention_weight=0.2)
    pair = distillation_pair(teacher, config)
    assert type(pair.student) is SequenceClassifier and pair.student.cfg.n_layers == 2
    objective = DistillObjective(sentiment["objective"], config)
    assert objective.model_overrides == sentiment["objective"].model_overrides and hasattr(objective, "eval_metrics")
    cfg = TrainConfig(steps=32, batch_size=16, seq_len=24, lr=3e-3, warmup_steps=0, schedule="constant",
                      eval_every=16, checkpoint_every=32, keep_last=1, log_every=8, progress=False, precision="fp32",
                      weight_decay=0.0, best_metric="val_accuracy")
    result = train(pair, objective, splits["train"], splits["val"], cfg, tmp_path / "run", DistEnv())
    assert result["val_accuracy"] >= 0.9 * sentiment["accuracy"], (result, sentiment["accuracy"])
    student = objective.export_model(pair)
    assert student is pair.student and student.num_parameters() < 0.8 * teacher.num_parameters()
    metrics = sentiment["objective"].eval_metrics(student, splits["val"], torch.device("cpu"))
    assert metrics["accuracy"] == pytest.approx(result["val_accuracy"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ bad input

def test_bad_settings_and_mismatched_pairs_are_clear_errors():
    teacher = _decoder(n_layers=4)
    for changes, field in (({"temperature": 0}, "temperature=0"), ({"temperature": -1.0}, "temperature=-1.0"),
                           ({"alpha": 1.5}, "alpha=1.5"), ({"alpha": -0.1}, "alpha=-0.1"),
                           ({"hidden_weight": -1}, "hidden_weight=-1"), ({"attention_weight": "x"}, "attention_weight"),
                           ({"student_init": "half"}, "student_init='half'"),
                           ({"student_init": "layers:0,2"}, "student_init='layers:0,2'"),
                           ({"layer_map": [1, -1]}, "layer_map"), ({"student_layers": 0}, "student_layers=0"),
                           ({"student_layers": 2}, "student_layers=2 sets the depth")):
        with pytest.raises(DistillError, match=field):
            DistillConfig(**changes).validate()
    with pytest.raises(DistillError, match="temperature=0 must be"):
        kd_loss(torch.zeros(2, 3), torch.zeros(2, 3), 0)
    other = _decoder(vocab=61, n_layers=2)
    with pytest.raises(DistillError, match="student vocab_size 61 != teacher's 60: distillation on logits needs one "
                                           "vocabulary"):
        distillation_pair(teacher, student=other)
    with pytest.raises(DistillError, match="student vocab_size 70 != teacher's 60"):
        student_from_teacher(teacher, "fresh", vocab_size=70)
    with pytest.raises(DistillError, match="the teacher has layers 0..3"):
        student_from_teacher(teacher, [0, 4])
    with pytest.raises(DistillError, match="d_model=16 changes them: use layers='fresh'"):
        student_from_teacher(teacher, "every-other", d_model=16)
    with pytest.raises(DistillError, match="n_layers=3 sets the depth"):
        student_from_teacher(teacher, "every-other", n_layers=3)
    with pytest.raises(DistillError, match="must name one teacher layer"):
        distillation_pair(teacher, DistillConfig(hidden_weight=1.0, layer_map=[0, 1, 2]))
    torch.manual_seed(0)
    cfg = get_preset("bert-tiny", vocab_size=60, n_layers=2, num_labels=2, **ENCODER)
    with pytest.raises(DistillError, match="student num_labels 3 != teacher's 2"):
        distillation_pair(SequenceClassifier(cfg), student=SequenceClassifier(cfg.replace(num_labels=3)))
    with pytest.raises(DistillError, match="the student is a sequence-classification model, the teacher a causal-lm"):
        distillation_pair(teacher, student=SequenceClassifier(cfg))
    with pytest.raises(DistillError, match="cannot be a teacher"):
        student_from_teacher(distillation_pair(teacher))
    from lmforge.train.objective import CausalLMObjective

    with pytest.raises(DistillError, match="trains a Distillation pair"):
        DistillObjective(CausalLMObjective()).check_model(teacher)
