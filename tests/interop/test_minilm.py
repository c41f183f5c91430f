"""The first real pretrained model: all-MiniLM-L6-v2 (BERT family) against transformers."""

from __future__ import annotations

import pytest
import torch
import transformers as T

from lmforge.interop import load_pretrained
from lmforge.tokenizers import Tokenizer

pytestmark = [pytest.mark.assets, pytest.mark.slow]


def test_minilm_sentence_embeddings_match_transformers(minilm_dir, sentences):
    ours = load_pretrained("all-minilm-l6-v2")
    ref = T.BertModel.from_pretrained(minilm_dir).eval()
    tok = T.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(sentences, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        hidden = ref(**batch).last_hidden_state
        m = batch["attention_mask"][..., None].float()
        expected = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
        got = ours.embed_sentences(batch["input_ids"], batch["attention_mask"])
    cos = (expected * got).sum(-1)
    assert cos.min() >= 0.99999
    assert (hidden - ours(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]))[
        batch["attention_mask"].bool()].abs().max() <= 1e-4
    # The published sanity figures (OFFLINE-ASSETS.md): similar sentences close, unrelated ones not.
    assert got[0] @ got[1] > 0.7
    assert abs(float(got[0] @ got[2])) < 0.1


def test_minilm_with_our_tokenizer(minilm_dir, sentences):
    model = load_pretrained(minilm_dir)
    tok = Tokenizer.from_pretrained(minilm_dir)
    batch = tok(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        emb = model.embed_sentences(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(emb.norm(dim=-1), torch.ones(len(sentences)), atol=1e-5)
    assert emb[0] @ emb[1] > emb[0] @ emb[2]
