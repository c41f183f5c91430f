"""Attention maps and gradient x input saliency, against transformers on the same weights."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
import transformers as T

from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.interpret import attention_maps, record_attention, saliency
from lmforge.interop.native import load_any
from lmforge.tokenizers import Tokenizer, train_tokenizer

WORDS = ("the cat sat on a mat while dog ran far away and we went home today weather is nice "
         "quickly slowly sunny rainy walked talked").split()
TEXT = "the cat walked quickly home while the dog talked"
LONG = " ".join(["the sunny weather is nice today"] * 200)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(" ".join(rng.choice(WORDS) for _ in range(30)) for _ in range(300)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def bert_tok(corpus):
    return train_tokenizer([corpus], kind="wordpiece", vocab_size=90, min_frequency=1, show_progress=False)


@pytest.fixture(scope="module")
def llama_tok(corpus):
    return train_tokenizer([corpus], kind="bpe", vocab_size=300, special_tokens="llama", show_progress=False)


def _save(hf, path):
    """Save an HF model and reload it with eager attention (the one that returns probabilities)."""
    hf.save_pretrained(path)
    return type(hf).from_pretrained(path, attn_implementation="eager", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def bert(tmp_path_factory, bert_tok):
    """(HF BertForSequenceClassification, its folder) with random weights, 3 labels."""
    torch.manual_seed(0)
    hf = T.BertForSequenceClassification(T.BertConfig(
        vocab_size=bert_tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=96, initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=3, max_position_embeddings=64))
    path = tmp_path_factory.mktemp("bert") / "hf"
    return _save(hf, path), path


@pytest.fixture(scope="module")
def llama(tmp_path_factory, llama_tok):
    """(HF LlamaForCausalLM, its folder): grouped-query attention (4 query heads over 2 key/value heads)."""
    torch.manual_seed(0)
    hf = T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=llama_tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=96, initializer_range=0.2, max_position_embeddings=128,
        rope_parameters={"rope_theta": 5000.0, "rope_type": "default"}))
    path = tmp_path_factory.mktemp("llama") / "hf"
    return _save(hf, path), path


def _hf_attentions(hf, tok, text, **kwargs) -> np.ndarray:
    batch = tok([text], padding=False)
    if not isinstance(hf, T.BertPreTrainedModel):
        batch.pop("token_type_ids", None)
    with torch.no_grad():
        out = hf(**batch, output_attentions=True, **kwargs)
    return torch.stack(out.attentions)[:, 0].numpy()  # (L, H, T, T)


def test_bert_maps_equal_transformers_eager(bert, bert_tok):
    hf, path = bert
    model = load_any(path, dtype=torch.float32, task="sequence-classification")
    maps = attention_maps(model, bert_tok, TEXT)
    ref = _hf_attentions(hf, bert_tok, TEXT)
    assert maps["attention"].dtype == np.float32
    assert maps["attention"].shape == ref.shape == (2, 4, len(maps["tokens"]), len(maps["tokens"]))
    assert (maps["layers"], maps["heads"]) == (2, 4)
    assert maps["tokens"][0] == "[CLS]" and maps["tokens"][-1] == "[SEP]"
    assert maps["tokens"] == bert_tok.tokenize(TEXT, add_special_tokens=True)
    np.testing.assert_allclose(maps["attention"], ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(maps["attention"].sum(-1), 1.0, atol=1e-5)
    assert ref.std() > 0.01  # the heads attend unevenly: a map to compare, not a uniform one
    assert "virtual" not in maps


@pytest.mark.parametrize("task", ["causal-lm", "sequence-classification"])
def test_llama_maps_equal_transformers_eager_and_are_causal(llama, llama_tok, task):
    hf, path = llama
    model = load_any(path, dtype=torch.float32, task=task)
    maps = attention_maps(model, llama_tok, TEXT)
    ref = _hf_attentions(hf, llama_tok, TEXT)
    att = maps["attention"]
    np.testing.assert_allclose(att, ref, atol=1e-5, rtol=0)
    np.testing.assert_allclose(att.sum(-1), 1.0, atol=1e-5)
    assert np.array_equal(att, np.tril(att))  # no query sees a later token
    assert maps["tokens"][0] == "<s>"  # the tokenizer's BOS, as the model was trained with


def test_encoder_decoder_gives_encoder_self_attention(tmp_path, bert_tok):
    torch.manual_seed(0)
    hf = _save(T.BartForConditionalGeneration(T.BartConfig(
        vocab_size=bert_tok.vocab_size, d_model=64, encoder_layers=2, decoder_layers=1, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=96, decoder_ffn_dim=96, init_std=0.2, dropout=0.0,
        attention_dropout=0.0, max_position_embeddings=64, forced_eos_token_id=None)), tmp_path / "hf")
    model = load_any(tmp_path / "hf", dtype=torch.float32)
    maps = attention_maps(model, bert_tok, TEXT)
    ids = torch.tensor([bert_tok.encode(TEXT)])
    with torch.no_grad():
        out = hf(input_ids=ids, decoder_input_ids=ids[:, :1], output_attentions=True)
    ref = torch.stack(out.encoder_attentions)[:, 0].numpy()
    np.testing.assert_allclose(maps["attention"], ref, atol=1e-5, rtol=0)
    assert maps["layers"] == 2
    assert not np.array_equal(maps["attention"], np.tril(maps["attention"]))  # bidirectional


def test_long_text_is_cut_with_the_template_kept(bert, bert_tok, llama, llama_tok):
    model = load_any(bert[1], dtype=torch.float32, task="sequence-classification")
    maps = attention_maps(model, bert_tok, LONG, max_len=16)
    assert maps["attention"].shape[-1] == len(maps["tokens"]) == 16
    assert maps["tokens"][0] == "[CLS]" and maps["tokens"][-1] == "[SEP]"
    # The model's own limit (64 positions) caps a larger max_len; the text was far longer than that.
    maps = attention_maps(model, bert_tok, LONG, max_len=512)
    assert len(maps["tokens"]) == 64 and maps["tokens"][-1] == "[SEP]"
    cut = saliency(model, bert_tok, LONG, max_len=16)
    assert len(cut["scores"]) == 16
    decoder = load_any(llama[1], dtype=torch.float32, task="causal-lm")
    assert len(attention_maps(decoder, llama_tok, LONG, max_len=20)["tokens"]) == 20


def test_recording_leaves_outputs_equal(llama, llama_tok, bert):
    """The explicit path that records equals the fused SDPA one: causal, padded, grouped-query, with a prefix."""
    from lmforge.adapt import AdaptConfig, adapt

    decoder = load_any(llama[1], dtype=torch.float32, task="causal-lm").eval()
    ids = torch.randint(3, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    encoder = load_any(bert[1], dtype=torch.float32, task="sequence-classification").eval()
    prefixed = adapt(load_any(llama[1], dtype=torch.float32, task="causal-lm"),
                     AdaptConfig(method="prefix", num_virtual_tokens=3, prefix_hidden=0)).eval()
    cases = [(decoder, dict()), (decoder, dict(attention_mask=mask)), (encoder, dict(attention_mask=mask)),
             (prefixed, dict(attention_mask=mask))]
    for model, kwargs in cases:
        attn = [b.attn for b in model.blocks()]
        with torch.no_grad():
            fused = model(ids % 80, **kwargs)
            with record_attention(attn) as records:
                recorded = model(ids % 80, **kwargs)
        assert all(len(r) == 1 for r in records)
        assert all(m._record is None for m in attn)  # the fast path is back
        torch.testing.assert_close(recorded, fused, atol=1e-5, rtol=1e-5)
        probs = records[0][0]
        assert probs.shape[:2] == (2, 4)
        torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    assert records[0][0].shape[-1] == 9 + 3  # the prefix's keys first


def test_virtual_tokens_are_reported_apart(llama, llama_tok):
    from lmforge.adapt import AdaptConfig, adapt

    for method in ("prefix", "prompt"):
        model = adapt(load_any(llama[1], dtype=torch.float32, task="causal-lm"),
                      AdaptConfig(method=method, num_virtual_tokens=3, prefix_hidden=0))
        maps = attention_maps(model, llama_tok, TEXT)
        t = len(maps["tokens"])
        assert maps["attention"].shape == (2, 4, t, t) and maps["virtual"].shape == (2, 4, t, 3)
        total = maps["attention"].sum(-1) + maps["virtual"].sum(-1)
        np.testing.assert_allclose(total, 1.0, atol=1e-5)
        assert maps["virtual"].min() > 0  # every token sees every virtual position


def _hf_saliency(hf, embeddings, score) -> tuple[np.ndarray, np.ndarray]:
    """Gradient x input with transformers: `score(hf(inputs_embeds=...))` differentiated by the embeddings."""
    emb = embeddings.detach().clone().requires_grad_(True)
    score(emb).backward()
    return (emb.grad * emb).sum(-1)[0].detach().numpy(), emb.grad.norm(dim=-1)[0].numpy()


def test_classifier_saliency_equals_transformers(bert, bert_tok):
    hf, path = bert
    model = load_any(path, dtype=torch.float32, task="sequence-classification")
    batch = bert_tok([TEXT], padding=False)
    with torch.no_grad():
        logits = hf(**batch).logits[0]
    for target in (None, 0, 2):
        result = saliency(model, bert_tok, TEXT, target=target)
        want = int(logits.argmax()) if target is None else target
        embeddings = hf.bert.embeddings.word_embeddings(batch["input_ids"])
        scores, norms = _hf_saliency(hf, embeddings, lambda e, want=want: hf(
            inputs_embeds=e, token_type_ids=batch["token_type_ids"]).logits[0, want])
        assert result["target"] == want and result["target_name"] == f"LABEL_{want}"
        assert result["value"] == pytest.approx(float(logits[want]), abs=1e-4)
        assert result["tokens"] == bert_tok.tokenize(TEXT, add_special_tokens=True)
        np.testing.assert_allclose(result["scores"], scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(result["grad_norm"], norms, rtol=1e-4, atol=1e-6)
        assert np.abs(scores).max() > 1e-3


def test_causal_lm_saliency_equals_transformers(llama, llama_tok):
    hf, path = llama
    model = load_any(path, dtype=torch.float32, task="causal-lm")
    ids = torch.tensor([llama_tok.encode(TEXT)])
    with torch.no_grad():
        log_probs = hf(input_ids=ids).logits[0, -1].log_softmax(-1)
    for target in (None, 17):
        result = saliency(model, llama_tok, TEXT, target=target)
        want = int(log_probs.argmax()) if target is None else target
        scores, norms = _hf_saliency(hf, hf.model.embed_tokens(ids), lambda e, want=want: hf(
            inputs_embeds=e).logits[0, -1].log_softmax(-1)[want])
        assert result["target"] == want and result["target_name"] == llama_tok.id_to_token(want)
        assert result["value"] == pytest.approx(float(log_probs[want]), abs=1e-4)
        np.testing.assert_allclose(result["scores"], scores, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(result["grad_norm"], norms, rtol=1e-4, atol=1e-6)


def test_saliency_leaves_no_gradient_and_restores_modes(bert, bert_tok):
    model = load_any(bert[1], dtype=torch.float32, task="sequence-classification")
    reference = saliency(model, bert_tok, TEXT)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("head."))  # a frozen body, a trainable head
    model.train()
    model.body.encoder.blocks[0].eval()  # a mixed mode must come back as it was
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    result = saliency(model, bert_tok, TEXT)
    assert all(p.grad is None for p in model.parameters())
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert {name: m.training for name, m in model.named_modules()} == modes
    np.testing.assert_allclose(result["scores"], reference["scores"], rtol=1e-5, atol=1e-7)  # dropout was off
    for p in model.parameters():
        p.requires_grad_(False)  # fully frozen: the gradient still reaches the embeddings
    np.testing.assert_allclose(saliency(model, bert_tok, TEXT)["scores"], reference["scores"], rtol=1e-5, atol=1e-7)


def test_saliency_through_a_lora_adapter(bert, bert_tok):
    from lmforge.adapt import AdaptConfig, adapt

    model = load_any(bert[1], dtype=torch.float32, task="sequence-classification")
    plain = saliency(model, bert_tok, TEXT)
    adapted = adapt(model, AdaptConfig(method="lora", target_modules=["*q_proj", "*v_proj"]))
    result = saliency(adapted, bert_tok, TEXT)  # LoRA starts with B = 0: the same function, the same saliency
    np.testing.assert_allclose(result["scores"], plain["scores"], rtol=1e-5, atol=1e-7)
    with torch.no_grad():
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    assert not np.allclose(saliency(adapted, bert_tok, TEXT)["scores"], plain["scores"], rtol=1e-3)
    assert all(p.grad is None for p in adapted.parameters())


def test_bad_input_is_named(bert, bert_tok, llama, llama_tok):
    classifier = load_any(bert[1], dtype=torch.float32, task="sequence-classification")
    with pytest.raises(EvaluationError, match="target=3"):
        saliency(classifier, bert_tok, TEXT, target=3)
    with pytest.raises(EvaluationError, match="TokenClassifier"):
        saliency(load_any(bert[1], dtype=torch.float32, task="token-classification"), bert_tok, TEXT)
    with pytest.raises(EvaluationError, match="max_len=0"):
        attention_maps(classifier, bert_tok, TEXT, max_len=0)
    with pytest.raises(EvaluationError, match="vocab_size"):
        attention_maps(classifier, llama_tok, TEXT)  # ids of another tokenizer, beyond the model's table
    with pytest.raises(EvaluationError, match="no tokens"):
        saliency(load_any(llama[1], dtype=torch.float32, task="causal-lm"), _no_bos(llama_tok), "")
    with pytest.raises(EvaluationError, match="not an lmforge model"):
        attention_maps(torch.nn.Linear(2, 2), bert_tok, TEXT)


def _no_bos(tok):
    tok = tok.copy()
    tok.set_template(None)
    return tok


@pytest.mark.slow
def test_minilm_maps_equal_transformers(minilm_dir):
    tok = Tokenizer.from_pretrained(minilm_dir)
    model = load_any(minilm_dir, dtype=torch.float32, task="encoder")
    hf = T.BertModel.from_pretrained(minilm_dir, attn_implementation="eager", dtype=torch.float32).eval()
    text = "Attention maps show which words each word looks at."
    maps = attention_maps(model, tok, text)
    np.testing.assert_allclose(maps["attention"], _hf_attentions(hf, tok, text), atol=1e-5, rtol=0)
    assert maps["attention"].shape[:2] == (6, 12)
