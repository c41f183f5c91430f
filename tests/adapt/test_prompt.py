"""Prompt-tuning: against PEFT's PromptTuning and the base stack run by hand, initialisation, what trains,
training, cached generation (generate and the engine), and the adapter file."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from lmforge.adapt import AdaptConfig, AdaptError, adapt, load_adapter, save_adapter, trainable_summary
from lmforge.generate import SamplingParams, generate
from lmforge.generate.engine import stream
from lmforge.models import build_model
from lmforge.models.presets import get_preset
from lmforge.tokenizers import Tokenizer

P, VOCAB = 4, 128
SMALL = dict(vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=4, d_ff=128)


def tiny(preset: str, task: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    kw = {"num_labels": 3} if task in ("sequence-classification", "token-classification") else {}
    return build_model(get_preset(preset, **{**SMALL, **overrides}), task=task, **kw).eval()


def llama(seed: int = 0, **overrides):
    return tiny("llama-tiny", "causal-lm", seed, **{"n_kv_heads": 2, **overrides})


def prompt_cfg(**kw) -> AdaptConfig:
    return AdaptConfig(method="prompt", num_virtual_tokens=P, **kw)


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    """A word-level tokenizer: the word `w{i}` is id i, id VOCAB-1 is the eos `</s>`."""
    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"</s>": VOCAB - 1}
    backend = Backend(models.WordLevel(vocab, unk_token="w0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["</s>"])
    return Tokenizer(backend, {"eos": "</s>"})


def test_matches_peft_prompt_tuning(tmp_path):
    """The same soft prompt gives PEFT's logits (on the real tokens) on the transformers LLaMA."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from lmforge.interop import save_pretrained

    model = llama()
    save_pretrained(model, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    adapt(model, prompt_cfg())
    peft_model = peft.get_peft_model(hf, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P)).eval()
    with torch.no_grad():
        peft_model.prompt_encoder["default"].embedding.weight.copy_(model.soft_prompt.weight)
    ids = torch.randint(0, VOCAB, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[0, :3] = 0  # left padding: both count positions from the first prompt vector, padding included
    with torch.no_grad():
        ours = model(ids, mask)
        want = peft_model(input_ids=ids, attention_mask=mask).logits[:, P:]  # PEFT returns the prompt's too
    real = mask.bool()
    torch.testing.assert_close(ours[real], want[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("preset,task", [("llama-tiny", "causal-lm"), ("bert-tiny", "sequence-classification"),
                                         ("bert-tiny", "token-classification"), ("bart-tiny", "seq2seq-lm")])
def test_equals_the_base_stack_run_on_the_prompt_by_hand(preset, task):
    model = tiny(preset, task)
    base = copy.deepcopy(model)
    adapt(model, prompt_cfg())
    prompt = model.soft_prompt.weight.detach()
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0
    ones = torch.ones(2, P, dtype=mask.dtype)
    body = base.body
    with torch.no_grad():
        x = torch.cat([prompt.expand(2, -1, -1), body.embed(ids)], dim=1)  # (B, P+T, d)
        if task == "seq2seq-lm":
            dec = torch.randint(3, VOCAB, (2, 5))
            enc = body.encoder(x, attention_mask=torch.cat([ones, mask], 1))[:, P:]
            want = base.lm_head(body.decode(dec, encoder_out=enc, encoder_attention_mask=mask))
            got = model(ids, mask, decoder_input_ids=dec)
        elif task == "causal-lm":
            want = base.lm_head(body.decoder(x, attention_mask=torch.cat([ones, mask], 1))[:, P:])
            got = model(ids, mask)
        else:
            types = torch.zeros_like(ids)
            types[:, 3:] = 1
            hidden = body.encoder(x, attention_mask=torch.cat([ones, mask], 1),
                                  token_type_ids=torch.cat([torch.zeros_like(ones), types], 1))[:, P:]
            if task == "sequence-classification":
                want = base.head(base.pooler(hidden))  # BERT's pooler reads the real [CLS], the first token
            else:
                want = base.head(hidden)
            got = model(ids, mask, types)
        assert (got - (base(ids, mask, decoder_input_ids=dec) if task == "seq2seq-lm" else base(ids, mask))
                ).abs().max() > 1e-4  # the prompt is live
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_position_ids_follow_the_prompt():
    """Given positions are shifted by P; the prompt takes 0..P-1: equal to the stack run on them by hand."""
    model = llama()
    base = copy.deepcopy(model)
    adapt(model, prompt_cfg())
    ids = torch.randint(3, VOCAB, (2, 6))
    positions = torch.tensor([[0, 0, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    with torch.no_grad():
        x = torch.cat([model.soft_prompt.weight.expand(2, -1, -1), base.body.embed(ids)], dim=1)
        full = torch.cat([torch.arange(P).expand(2, -1), positions + P], dim=1)
        want = base.lm_head(base.body.decoder(x, position_ids=full)[:, P:])
        torch.testing.assert_close(model(ids, position_ids=positions), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("scale", [False, True])
def test_init_from_text_is_those_token_embeddings(tokenizer, scale):
    """The text's tokens, repeated to length, embedded as the stack receives them (scaled if the model scales)."""
    model = llama(scale_embeddings=scale)
    model.adapt_tokenizer = tokenizer
    adapt(model, prompt_cfg(prompt_init_text="w5 w9 w17"))  # 3 tokens for 4 slots: 5 9 17 5
    rows = model.body.tokens.weight[[5, 9, 17, 5]].detach() * (math.sqrt(model.cfg.d_model) if scale else 1.0)
    torch.testing.assert_close(model.soft_prompt.weight.detach(), rows)

    long = llama(scale_embeddings=scale)
    long.adapt_tokenizer = tokenizer
    adapt(long, prompt_cfg(prompt_init_text="w1 w2 w3 w4 w5 w6"))  # truncated to P
    torch.testing.assert_close(long.soft_prompt.weight.detach()[-1], long.body.embed(torch.tensor(4)))


def test_init_from_text_needs_a_tokenizer():
    with pytest.raises(AdaptError, match="needs a tokenizer"):
        adapt(llama(), prompt_cfg(prompt_init_text="w5 w9"))


def test_random_init_takes_vocabulary_rows_from_the_global_rng():
    a, b = llama(), llama()
    torch.manual_seed(7)
    adapt(a, prompt_cfg())
    torch.manual_seed(7)
    adapt(b, prompt_cfg())
    torch.testing.assert_close(a.soft_prompt.weight, b.soft_prompt.weight)
    table = a.body.tokens.weight.detach()
    for row in a.soft_prompt.weight.detach():
        assert (table == row).all(-1).any()  # every prompt vector is some token's embedding


@pytest.mark.parametrize("preset,task", [("llama-tiny", "causal-lm"), ("bert-tiny", "sequence-classification"),
                                         ("bart-tiny", "seq2seq-lm")])
def test_only_the_prompt_and_head_train_and_get_gradients(preset, task):
    model = tiny(preset, task)
    adapt(model, prompt_cfg())
    head = sum(p.numel() for n, p in model.named_parameters() if n.startswith("head."))
    assert trainable_summary(model).trainable == P * model.cfg.d_model + head
    model.train()
    loss_of(model, task, make_batch()).backward()
    for name, p in model.named_parameters():
        if name == "soft_prompt.weight" or name.startswith("head."):
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


def loss_of(model, task: str, batch: dict) -> torch.Tensor:
    """Cross-entropy towards one fixed answer (class 2, token 7 everywhere): what a prompt can learn quickly."""
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
    ids = torch.randint(3, VOCAB, (4, 8), generator=g)
    mask = torch.ones_like(ids)
    mask[1, -2:] = 0  # right padding on one row
    return {"ids": ids, "mask": mask, "dec": torch.randint(3, VOCAB, (4, 6), generator=g)}


@pytest.mark.parametrize("preset,task", [("llama-tiny", "causal-lm"), ("bert-tiny", "sequence-classification"),
                                         ("bart-tiny", "seq2seq-lm")])
def test_training_lowers_the_loss(preset, task):
    """Encoder, decoder and encoder-decoder learn a fixed answer through the soft prompt alone.

    init_std 0.1: weights of a trained model's scale (at 0.02 a random body barely looks at any key)."""
    model = tiny(preset, task, dropout=0.0, init_std=0.1)
    adapt(model, prompt_cfg(train_head=False))
    opt = torch.optim.Adam([model.soft_prompt.weight], lr=3e-2)
    batch = make_batch()
    model.train()
    losses = []
    for _ in range(15):
        loss = loss_of(model, task, batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.85 * losses[0], losses


def greedy_no_cache(model, ids: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


@pytest.mark.parametrize("preset", ["llama-tiny", "gpt2-tiny"])
def test_cached_generation_equals_a_no_cache_loop(preset):
    model = tiny(preset, "causal-lm", init_std=0.1)  # at 0.02 a tied GPT-2 repeats its last token
    adapt(model, prompt_cfg())
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        want = greedy_no_cache(model, ids, 8)[:, 5:]
        base = copy.deepcopy(model)
        for handle in base.soft_prompt.handles:
            handle.remove()
        assert not torch.equal(greedy_no_cache(base, ids, 8)[:, 5:], want)  # the prompt matters here
    assert model.body.virtual_tokens == P
    torch.testing.assert_close(generate(model, ids, max_new_tokens=8), want, rtol=0, atol=0)


def test_cached_generation_with_left_padding():
    """A left-padded row decodes as it would alone; cached equals uncached."""
    model = llama(init_std=0.1)
    adapt(model, prompt_cfg())
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    out = generate(model, ids, max_new_tokens=6, attention_mask=mask)
    torch.testing.assert_close(out, generate(model, ids, max_new_tokens=6, attention_mask=mask, use_cache=False),
                               rtol=0, atol=0)
    # The padding sits between the prompt and the real tokens, which still take positions P.. as they would alone.
    torch.testing.assert_close(out[:1], generate(model, ids[:1, 2:], max_new_tokens=6), rtol=0, atol=0)


def test_engine_stream_equals_generate(tokenizer):
    """The serving engine (a cache row per request, prefilled through a row view) sees the prompt too."""
    model = llama(init_std=0.1)
    adapt(model, prompt_cfg())
    prompt = [5, 17, 33, 8]
    events = list(stream(model, tokenizer, prompt, SamplingParams(max_tokens=8, temperature=0, ignore_eos=True)))
    want = generate(model, torch.tensor([prompt]), max_new_tokens=8, use_cache=False)[0].tolist()
    assert [e.token_id for e in events] == want


def test_beam_search_of_one_beam_is_greedy():
    """Beam search passes position ids on every step (not only the prefill): one beam equals greedy decoding."""
    from lmforge.generate.beam import beam_search

    model = llama(init_std=0.1)
    adapt(model, prompt_cfg())
    ids = torch.randint(3, VOCAB, (2, 6))
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    want = generate(model, ids, max_new_tokens=6, attention_mask=mask, use_cache=False)
    got = beam_search(model, ids, mask, num_beams=1, max_new_tokens=6).sequences
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_seq2seq_generation_equals_a_no_cache_loop():
    model = tiny("bart-tiny", "seq2seq-lm", init_std=0.1)
    adapt(model, prompt_cfg())
    ids = torch.randint(3, VOCAB, (2, 6))
    dec = torch.full((2, 1), model.cfg.decoder_start_token_id)
    with torch.no_grad():
        for _ in range(6):
            dec = torch.cat([dec, model(ids, decoder_input_ids=dec)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert model.body.virtual_tokens == 0  # the prompt is the encoder's: the decoder's cache is as before
    torch.testing.assert_close(generate(model, ids, max_new_tokens=6), dec[:, 1:], rtol=0, atol=0)


@pytest.mark.parametrize("preset,task", [("llama-tiny", "causal-lm"), ("bert-tiny", "sequence-classification"),
                                         ("bart-tiny", "seq2seq-lm")])
def test_adapter_file_round_trip(tmp_path, preset, task):
    model = tiny(preset, task)
    fresh = copy.deepcopy(model)
    adapt(model, prompt_cfg())
    with torch.no_grad():  # as after training
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    save_adapter(model, tmp_path)
    torch.manual_seed(123)  # the loaded model's fresh prompt starts elsewhere
    load_adapter(fresh, tmp_path)
    batch = make_batch()
    with torch.no_grad():
        if task == "seq2seq-lm":
            want, got = (m(batch["ids"], batch["mask"], decoder_input_ids=batch["dec"]) for m in (model, fresh))
        else:
            want, got = (m(batch["ids"], batch["mask"]) for m in (model, fresh))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_checkpoint_round_trip_through_the_meta_device(tmp_path, tokenizer):
    """save_model / load_model rebuild the prompt on the meta device (no tokenizer needed there)."""
    from lmforge.interop import load_model, save_model

    model = llama()
    model.adapt_tokenizer = tokenizer
    adapt(model, prompt_cfg(prompt_init_text="w3 w4"))
    save_model(model, tmp_path)
    loaded = load_model(tmp_path).eval()
    ids = torch.randint(3, VOCAB, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids), model(ids), rtol=0, atol=0)
    assert loaded.body.virtual_tokens == P
