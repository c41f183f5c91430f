"""Prefix-tuning: against PEFT's PrefixTuning on the transformers LLaMA, what trains, gradients, training,
cached generation, and the adapter file."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lmforge.adapt import AdaptConfig, adapt, load_adapter, save_adapter, trainable_summary
from lmforge.generate import generate
from lmforge.models import build_model
from lmforge.models.presets import get_preset

P, HIDDEN, VOCAB = 4, 24, 128
SMALL = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, d_ff=128)


def tiny(preset: str, task: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    kw = {"num_labels": 3} if task == "sequence-classification" else {}
    return build_model(get_preset(preset, **{**SMALL, **overrides}), task=task, **kw).eval()


def llama(seed: int = 0, n_kv_heads: int = 2):
    return tiny("llama-tiny", "causal-lm", seed, n_kv_heads=n_kv_heads)


def prefix_cfg(hidden: int = HIDDEN) -> AdaptConfig:
    return AdaptConfig(method="prefix", num_virtual_tokens=P, prefix_hidden=hidden)


def is_prefix(name: str) -> bool:
    return name.startswith(("prefix_encoder.", "decoder_prefix_encoder."))


@pytest.mark.parametrize("n_kv_heads,hidden", [(4, HIDDEN), (2, 0)])
def test_matches_peft_prefix_tuning(tmp_path, n_kv_heads, hidden):
    """The same prefix parameters give PEFT's logits on the transformers model (positions aside, see below)."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from lmforge.interop import save_pretrained

    model = llama(n_kv_heads=n_kv_heads)
    save_pretrained(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    adapt(model, prefix_cfg(hidden))
    # PEFT sizes its virtual-token embedding H_kv * D (= d_model without GQA), so the MLP case uses no GQA.
    peft_model = peft.get_peft_model(hf, peft.PrefixTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=P, prefix_projection=hidden > 0,
        encoder_hidden_size=hidden or None)).eval()
    theirs = peft_model.prompt_encoder["default"]
    theirs.load_state_dict(model.prefix_encoder.state_dict())  # the same names as PEFT's PrefixEncoder
    ids = torch.randint(0, 128, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, mask, positions)
        # PEFT moves the real tokens to positions P.. (after the prefix, as a cache of P would); lmforge leaves
        # them where they are (the prefix has no position): PEFT adds P to the ids it is given.
        want = peft_model(input_ids=ids, attention_mask=mask, position_ids=positions - P).logits
    real = mask.bool()
    torch.testing.assert_close(ours[real], want[real], atol=1e-5, rtol=1e-5)


def test_length_zero_prefix_or_removed_hook_is_the_base_model():
    model = llama()
    base = copy.deepcopy(model)
    adapt(model, prefix_cfg())
    ids = torch.randint(0, 128, (2, 6))
    cfg = model.cfg
    empty = [(torch.zeros(1, cfg.n_kv_heads, 0, cfg.head_dim),) * 2 for _ in range(cfg.n_layers)]
    with torch.no_grad():
        want = base(ids)
        assert (model(ids) - want).abs().max() > 1e-4  # the prefix is live
        torch.testing.assert_close(model.lm_head(model.body.decode(ids, prefix_kv=empty)), want)
        for handle in model.prefix_encoder.handles:
            handle.remove()
        torch.testing.assert_close(model(ids), want)


@pytest.mark.parametrize("hidden", [HIDDEN, 0])
@pytest.mark.parametrize("preset,task", [("llama-tiny", "causal-lm"), ("bert-tiny", "sequence-classification"),
                                         ("bart-tiny", "seq2seq-lm")])
def test_only_prefix_and_head_train(preset, task, hidden):
    """The trainable parameters are the prefix encoders' (count by the formula) and the task head's."""
    model = tiny(preset, task)
    adapt(model, prefix_cfg(hidden))
    cfg = model.cfg
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    assert trainable == {n for n, _ in model.named_parameters() if is_prefix(n)} | head
    layers = [cfg.n_layers] if cfg.family != "encoder-decoder" else [cfg.n_layers, cfg.n_decoder_layers]
    per_stack = []
    for n_layers in layers:
        width = n_layers * 2 * cfg.n_kv_heads * cfg.head_dim
        if hidden:
            per_stack.append(P * cfg.d_model + (cfg.d_model * hidden + hidden) + (hidden * width + width))
        else:
            per_stack.append(P * width)
    head_count = sum(p.numel() for n, p in model.named_parameters() if n in head)
    assert trainable_summary(model).trainable == sum(per_stack) + head_count
    assert hasattr(model, "decoder_prefix_encoder") == (cfg.family == "encoder-decoder")


def loss_of(model, task: str, batch: dict) -> torch.Tensor:
    """Cross-entropy towards one fixed answer (class 2, token 7 everywhere): what a prefix can learn quickly."""
    if task == "sequence-classification":
        logits = model(batch["ids"], batch["mask"])  # (B, labels)
        return F.cross_entropy(logits, torch.full(logits.shape[:1], 2))
    if task == "causal-lm":
        logits = model(batch["ids"], batch["mask"])
    else:
        logits = model(batch["ids"], batch["mask"], decoder_input_ids=batch["dec"])
    return F.cross_entropy(logits.flatten(0, 1), torch.full(logits.shape[:1], 7).repeat_interleave(logits.shape[1]))


def make_batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 128, (4, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # right padding on one row
    return {"ids": ids, "mask": mask, "dec": torch.randint(3, 128, (4, 6), generator=g)}


CASES = [("llama-tiny", "causal-lm"), ("bert-tiny", "sequence-classification"), ("bart-tiny", "seq2seq-lm")]


@pytest.mark.parametrize("preset,task", CASES)
def test_gradients_reach_only_the_prefix_and_head(preset, task):
    model = tiny(preset, task)
    adapt(model, prefix_cfg())
    model.train()
    loss_of(model, task, make_batch()).backward()
    for name, p in model.named_parameters():
        if is_prefix(name) or name.startswith("head."):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


def test_gradient_checkpointing_gives_the_same_gradients():
    """The prefix reaches checkpointed blocks (recomputed in the backward pass) with the same gradients."""
    grads = []
    for checkpointing in (False, True):
        model = llama()
        adapt(model, prefix_cfg())
        model.set_gradient_checkpointing(checkpointing)
        model.train()
        loss_of(model, "causal-lm", make_batch()).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("preset,task", CASES)
def test_training_lowers_the_loss(preset, task):
    """Encoder, decoder (GQA: 2 of 4 heads) and encoder-decoder learn a fixed answer through the prefix alone.

    init_std 0.1: weights of a trained model's scale (at 0.02 a random body barely looks at any key)."""
    model = tiny(preset, task, dropout=0.0, init_std=0.1)
    adapt(model, AdaptConfig(method="prefix", num_virtual_tokens=P, prefix_hidden=HIDDEN, train_head=False))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=3e-2)
    batch = make_batch()
    model.train()
    losses = []
    for _ in range(15):
        loss = loss_of(model, task, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def greedy_no_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_cached_generation_equals_a_no_cache_loop(preset):
    model = tiny(preset, "causal-lm", init_std=0.1)  # at 0.02 a tied GPT-2 repeats its last token
    adapt(model, prefix_cfg())
    ids = torch.randint(0, 128, (2, 5))
    with torch.no_grad():
        want = greedy_no_cache(model, ids, 8)[:, 5:]
        base = copy.deepcopy(model)
        for handle in base.prefix_encoder.handles:
            handle.remove()
        assert not torch.equal(greedy_no_cache(base, ids, 8)[:, 5:], want)  # the prefix matters here
    torch.testing.assert_close(generate(model, ids, max_new_tokens=8), want, rtol=0, atol=0)


def test_cached_generation_with_left_padding():
    """Left-padded prompts decode as each would alone (the prefix stays visible to padded rows' real tokens)."""
    model = llama()
    adapt(model, prefix_cfg())
    ids = torch.randint(3, 128, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    out = generate(model, ids, max_new_tokens=6, attention_mask=mask)
    alone = generate(model, ids[:1, 2:], max_new_tokens=6)
    torch.testing.assert_close(out[:1], alone, rtol=0, atol=0)
    torch.testing.assert_close(out, generate(model, ids, max_new_tokens=6, attention_mask=mask, use_cache=False),
                               rtol=0, atol=0)


def test_beam_search_of_one_beam_is_greedy():
    """Beam search passes position ids on every step (not only the prefill): one beam equals greedy decoding."""
    from lmforge.generate.beam import beam_search

    model = tiny("llama-tiny", "causal-lm", init_std=0.1)
    adapt(model, prefix_cfg())
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    want = generate(model, ids, max_new_tokens=6, attention_mask=mask, use_cache=False)
    got = beam_search(model, ids, mask, num_beams=1, max_new_tokens=6).sequences
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_seq2seq_cached_generation_equals_a_no_cache_loop():
    model = tiny("bart-tiny", "seq2seq-lm")
    adapt(model, prefix_cfg())
    ids = torch.randint(3, 128, (2, 6))
    dec = torch.full((2, 1), model.cfg.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(6):
            dec = torch.cat([dec, model(ids, decoder_input_ids=dec)[:, -1].argmax(-1, keepdim=True)], dim=1)
    torch.testing.assert_close(generate(model, ids, max_new_tokens=6), dec[:, 1:], rtol=0, atol=0)


def test_deepcopy_hooks_follow_the_copy():
    """A copied model's hook uses the copy's prefix, not the original's."""
    model = llama()
    adapt(model, prefix_cfg())
    twin = copy.deepcopy(model)
    ids = torch.randint(0, 128, (1, 5))
    with torch.no_grad():
        before = model(ids)
        twin.prefix_encoder.embedding.weight.add_(1.0)
        torch.testing.assert_close(model(ids), before)
        assert (twin(ids) - before).abs().max() > 1e-4


@pytest.mark.parametrize("preset,task", [("llama-tiny", "causal-lm"), ("bart-tiny", "seq2seq-lm"),
                                         ("bert-tiny", "sequence-classification")])
def test_adapter_file_round_trip(tmp_path, preset, task):
    model = tiny(preset, task)
    fresh = copy.deepcopy(model)
    adapt(model, prefix_cfg())
    with torch.no_grad():  # as after training: every trained tensor differs from its fresh init
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_adapter(model, tmp_path)
    torch.manual_seed(123)  # the loaded model's fresh prefix is initialised differently before loading
    load_adapter(fresh, tmp_path)
    batch = make_batch()
    with torch.no_grad():
        if task == "seq2seq-lm":
            want, got = (m(batch["ids"], batch["mask"], decoder_input_ids=batch["dec"]) for m in (model, fresh))
        else:
            want, got = (m(batch["ids"], batch["mask"]) for m in (model, fresh))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_checkpoint_round_trip_through_the_meta_device(tmp_path):
    """save_model / load_model rebuild the prefix on the meta device, then take the stored tensors."""
    from lmforge.interop import load_model, save_model

    model = llama()
    adapt(model, prefix_cfg())
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    ids = torch.randint(0, 128, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)


def test_bad_config_is_a_clear_error():
    from lmforge.adapt import AdaptError

    with pytest.raises(AdaptError, match="num_virtual_tokens"):
        adapt(llama(), AdaptConfig(method="prefix", num_virtual_tokens=0))
