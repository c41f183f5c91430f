"""Language-model scoring against transformers and lm-eval on the same weights: log-likelihoods, sliding-window
perplexity, bits-per-byte, pseudo-perplexity, the Kneser-Ney baseline and the trainer's validation metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import transformers as T
from _assets import require_asset

from lmforge.evaluate.errors import EvaluationError
from lmforge.evaluate.lm import (
    kneser_ney_baseline,
    loglikelihood,
    loglikelihood_tokens,
    perplexity,
    pseudo_perplexity,
    rolling_loglikelihood,
)
from lmforge.interop.native import load_any

REL = 1e-4  # the tolerance for perplexity vs transformers
CORPUS = [
    "The quick brown fox jumps over the lazy dog, and the dog does not mind at all.",
    "A language model assigns a probability to every text; perplexity is how surprised it is on average.",
    "Kneser-Ney smoothing is a strong n-gram baseline: it counts how many contexts a word follows.",
    "Sliding windows let a model with a short context score a long document, one stride at a time.",
    "北京的冬天很冷，但是天空常常很蓝。 Mixed scripts and emoji 🙂 are bytes like any other.",
]
TEXTS = [" ".join(CORPUS[:3]), CORPUS[3] + " " + CORPUS[4], "Short one."]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE tokenizer trained here (bos = eos = <|endoftext|>), saved where transformers reads it."""
    from lmforge.tokenizers import train_tokenizer

    folder = tmp_path_factory.mktemp("bpe")
    (folder / "corpus.txt").write_text("\n\n".join(CORPUS * 4), encoding="utf-8")
    return train_tokenizer([folder / "corpus.txt"], kind="bpe", vocab_size=300, show_progress=False)


def _hf_decoder(kind: str, vocab_size: int):
    torch.manual_seed(0)
    if kind == "gpt2":
        return T.GPT2LMHeadModel(T.GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=4, n_positions=128,
                                              initializer_range=0.2, bos_token_id=0, eos_token_id=0))
    return T.LlamaForCausalLM(T.LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=96, initializer_range=0.2, max_position_embeddings=128, bos_token_id=0, eos_token_id=0,
        rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}))


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def decoder(request, bpe, tmp_path_factory):
    """(transformers model, the lmforge model loaded from its saved folder, the folder)."""
    folder = tmp_path_factory.mktemp(request.param)
    hf = _hf_decoder(request.param, bpe.vocab_size).eval()
    hf.save_pretrained(folder)
    bpe.save(folder)
    return hf, load_any(folder, dtype=torch.float32, task="causal-lm"), folder


def _hf_logprobs(hf, ids: list[int]) -> torch.Tensor:
    """(T, V) float64 log-probabilities of the transformers model after each of `ids`."""
    with torch.no_grad():
        return torch.log_softmax(hf(torch.tensor([ids])).logits[0].double(), dim=-1)


def _close(a: float, b: float, rel: float = REL) -> bool:
    return math.isclose(a, b, rel_tol=rel)


# ------------------------------------------------------------------------------------------ log-likelihoods

def test_loglikelihood_tokens_equal_a_hand_computation_with_transformers(decoder, bpe):
    hf, model, _ = decoder
    ids = bpe.encode(TEXTS[0], add_special_tokens=False)
    # The greedy continuation of ids[:6], from transformers' own argmax one token at a time.
    greedy = list(ids[:6])
    for _ in range(4):
        greedy.append(int(_hf_logprobs(hf, greedy)[-1].argmax()))
    max_len = 12
    requests = [(ids[:6], ids[6:10]), (ids[:1], ids[1:2]), (greedy[:6], greedy[6:]),
                (ids[:20], ids[20:25])]  # 25 tokens > max_len + 1: truncated from the left
    got = loglikelihood_tokens(model, requests, batch_size=3, max_len=max_len)
    for (context, continuation), (score, is_greedy) in zip(requests, got):
        whole = (context + continuation)[-(max_len + 1):]
        logprobs = _hf_logprobs(hf, whole[:-1])[-len(continuation):]  # the continuation's predictions
        targets = torch.tensor(continuation)
        assert _close(score, float(logprobs[torch.arange(len(continuation)), targets].sum()))
        assert is_greedy == bool((logprobs.argmax(-1) == targets).all())
    assert got[2][1] is True and got[0][1] is False
    assert len(got) == len(requests)


def test_loglikelihood_text_pairs_equal_lm_eval_hf_backend(decoder, monkeypatch):
    """lm-eval's own HF backend on the same folder: _encode_pair's split, the empty-context prefix, the window."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    _, model, folder = decoder
    reference = HFLM(pretrained=str(folder), tokenizer=str(folder), batch_size=4, dtype="float32", device="cpu",
                     max_length=32)
    tok = _tokenizer(folder)
    pairs = [("The quick brown ", "fox jumps"), ("Question: what is perplexity?\nAnswer:", " surprise"),
             ("", "A language model"), ("Kneser-Ney", " smoothing is a strong n-gram baseline"),
             (TEXTS[0], " and the end.")]  # longer than the window: truncated from the left
    want = reference.loglikelihood([Instance("loglikelihood", {}, p, i) for i, p in enumerate(pairs)],
                                   disable_tqdm=True)
    got = loglikelihood(model, tok, pairs, batch_size=2, max_len=32)
    for (score, is_greedy), (ref_score, ref_greedy) in zip(got, want):
        assert _close(score, ref_score) and is_greedy == ref_greedy


def test_rolling_loglikelihood_equals_lm_eval_loglikelihood_rolling(decoder, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    _, model, folder = decoder
    reference = HFLM(pretrained=str(folder), tokenizer=str(folder), batch_size=4, dtype="float32", device="cpu",
                     max_length=16)
    tok = _tokenizer(folder)
    want = reference.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (t,), i)
                                            for i, t in enumerate(TEXTS)], disable_tqdm=True)
    for text, ref in zip(TEXTS, want):
        ids = tok.encode(text, add_special_tokens=False)
        score, count = rolling_loglikelihood(model, ids, max_len=16, prefix_id=reference.prefix_token_id)
        assert _close(score, ref) and count == len(ids)
    # perplexity() with the BOS prefix scores the same tokens the same way
    result = perplexity(model, tok, TEXTS, max_len=16, add_bos=True)
    assert result["prefix_id"] == reference.prefix_token_id
    assert result["tokens"] == sum(len(tok.encode(t, add_special_tokens=False)) for t in TEXTS)
    assert _close(result["nll"], -sum(want) / result["tokens"])


def _tokenizer(folder):
    from lmforge.tokenizers import Tokenizer

    return Tokenizer.from_pretrained(folder)


# ------------------------------------------------------------------------------------------------ perplexity

def _guide_nll(hf, ids: list[int], max_length: int, stride: int) -> tuple[float, int]:
    """(total nats, tokens) of the Hugging Face perplexity guide's loop on one text (labels -100 on the context).

    The guide counts `num_valid_tokens - batch_size` scored labels per window, one too few whenever a window's
    first label is already -100; here the count is the labels the shifted loss really averages.
    """
    encodings = torch.tensor([ids])
    seq_len = encodings.size(1)
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    for begin_loc in range(0, seq_len, stride):
        end_loc = min(begin_loc + max_length, seq_len)
        trg_len = end_loc - prev_end_loc
        input_ids = encodings[:, begin_loc:end_loc]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = hf(input_ids, labels=target_ids).loss
        scored = int((target_ids[:, 1:] != -100).sum())
        nll_sum += float(loss) * scored
        n_tokens += scored
        prev_end_loc = end_loc
        if end_loc == seq_len:
            break
    return nll_sum, n_tokens


@pytest.mark.parametrize("max_len, stride", [(16, 5), (12, 11)])
def test_perplexity_equals_the_hf_guide_on_transformers(decoder, max_len, stride):
    """Overlapping windows (stride < max_len); the guide's max_length is our max_len + 1."""
    hf, model, folder = decoder
    ref_tok = T.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))  # transformers' own split
    texts = [CORPUS[3], CORPUS[4], "Short one."]  # some windows each, and a text shorter than one
    total, count = 0.0, 0
    for text in texts:
        nll, n = _guide_nll(hf, ref_tok(text)["input_ids"], max_len + 1, stride)
        total, count = total + nll, count + n
    result = perplexity(model, _tokenizer(folder), texts, max_len=max_len, stride=stride, batch_size=4,
                        add_bos=False)
    assert result["tokens"] == count == sum(len(ref_tok(t)["input_ids"]) - 1 for t in texts)
    assert _close(result["perplexity"], math.exp(total / count))
    assert _close(result["nll"], total / count)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert result["bytes"] == n_bytes
    assert _close(result["bits_per_byte"], total / math.log(2) / n_bytes)
    assert (result["max_len"], result["stride"], result["prefix_id"]) == (max_len, stride, None)


def test_perplexity_defaults_to_the_model_window_and_a_bos_prefix(decoder):
    hf, model, folder = decoder
    tok = _tokenizer(folder)
    texts = [CORPUS[0], CORPUS[4]]
    result = perplexity(model, tok, texts)
    assert (result["max_len"], result["stride"], result["prefix_id"]) == (128, 128, tok.bos_id)
    total = 0.0
    for text in texts:  # shorter than the window: one forward pass each, every token scored after the BOS
        ids = [tok.bos_id] + tok.encode(text, add_special_tokens=False)
        logprobs = _hf_logprobs(hf, ids[:-1])
        total += float(logprobs[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum())
    assert result["tokens"] == sum(len(tok.encode(t, add_special_tokens=False)) for t in texts) < 2 * 127
    assert _close(result["nll"], -total / result["tokens"])


def test_perplexity_and_log_likelihoods_reject_bad_input(decoder, bpe, minilm_dir):
    _, model, folder = decoder
    tok = _tokenizer(folder)
    with pytest.raises(EvaluationError, match="stride=20 is longer than the window max_len=16"):
        perplexity(model, tok, TEXTS, max_len=16, stride=20)
    with pytest.raises(EvaluationError, match="max_len=500 is longer than the model's max_seq_len=128"):
        perplexity(model, tok, TEXTS, max_len=500)
    with pytest.raises(EvaluationError, match="no token to score in 2 text"):
        perplexity(model, tok, ["", ""])
    with pytest.raises(EvaluationError, match="not one string"):
        perplexity(model, tok, "a text")
    with pytest.raises(EvaluationError, match="request 1: the context is empty"):
        loglikelihood_tokens(model, [([1], [2]), ([], [3])])
    with pytest.raises(EvaluationError, match="request 0: the continuation is empty"):
        loglikelihood_tokens(model, [([1], [])])
    with pytest.raises(EvaluationError, match="request 0: token id 300 is outside the model's vocabulary"):
        loglikelihood_tokens(model, [([1], [300])])
    encoder = load_any(minilm_dir, dtype=torch.float32, task="encoder")
    with pytest.raises(EvaluationError, match="perplexity needs a causal-lm model .*this model is 'encoder'"):
        perplexity(encoder, tok, TEXTS)


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_perplexity_equals_transformers():
    import os

    from lmforge.assets import smollm2_gguf
    from lmforge.interop.gguf import load_gguf, load_gguf_tokenizer

    gguf = require_asset(smollm2_gguf)
    hf = T.AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf),
                                                dtype=torch.float32).eval()
    model, tok = load_gguf(gguf, dtype=torch.float32), load_gguf_tokenizer(gguf)
    text = " ".join(CORPUS[:4])
    ids = tok.encode(text, add_special_tokens=False)
    nll, count = _guide_nll(hf, ids, 33, 12)
    result = perplexity(model, tok, [text], max_len=32, stride=12, add_bos=False)
    assert result["tokens"] == count == len(ids) - 1
    assert _close(result["perplexity"], math.exp(nll / count))


# ------------------------------------------------------------------------------------------ pseudo-perplexity

@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    """(transformers BertForMaskedLM, the lmforge masked LM loaded from its folder, the WordPiece tokenizer)."""
    from lmforge.tokenizers import train_tokenizer

    folder = tmp_path_factory.mktemp("bert")
    (folder / "corpus.txt").write_text("\n\n".join(CORPUS * 4), encoding="utf-8")
    tok = train_tokenizer([folder / "corpus.txt"], kind="wordpiece", vocab_size=200, show_progress=False)
    torch.manual_seed(0)
    hf = T.BertForMaskedLM(T.BertConfig(
        vocab_size=tok.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
        initializer_range=0.2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        max_position_embeddings=128)).eval()
    hf.save_pretrained(folder / "hf")
    tok.save(folder / "hf")
    return hf, load_any(folder / "hf", dtype=torch.float32, task="masked-lm"), tok, folder / "hf"


def test_pseudo_perplexity_equals_a_masking_loop_on_transformers_bert(bert):
    hf, model, tok, folder = bert
    ref_tok = T.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    mask_id = ref_tok.convert_tokens_to_ids("[MASK]")
    specials = {ref_tok.convert_tokens_to_ids(t) for t in ("[CLS]", "[SEP]")}
    texts = [CORPUS[0], CORPUS[2], "Short one."]
    pll, count = 0.0, 0
    for text in texts:  # Salazar et al.: mask each token in turn, score the original there
        ids = ref_tok(text)["input_ids"]
        assert ids[0] in specials and ids[-1] in specials
        positions = range(1, len(ids) - 1)
        masked = torch.tensor([ids[:pos] + [mask_id] + ids[pos + 1:] for pos in positions])  # one copy per token
        with torch.no_grad():
            logprobs = torch.log_softmax(hf(masked).logits.double(), dim=-1)
        for row, pos in enumerate(positions):
            pll, count = pll + float(logprobs[row, pos, ids[pos]]), count + 1
    result = pseudo_perplexity(model, tok, texts, batch_size=7)  # batches mix texts of different lengths
    assert result["tokens"] == count and result["texts"] == 3
    assert _close(result["pll"], pll)
    assert _close(result["pseudo_perplexity"], math.exp(-pll / count))


def test_pseudo_perplexity_needs_a_masked_lm_head(minilm_dir, bert):
    from lmforge.tokenizers import Tokenizer

    encoder = load_any(minilm_dir, dtype=torch.float32, task="encoder")
    with pytest.raises(EvaluationError, match=r"pseudo-perplexity needs a masked-lm model \(a masked-LM \(MLM\) head"
                                              r" on an encoder\); this model is 'encoder': load it with "
                                              r"task='masked-lm'"):
        pseudo_perplexity(encoder, Tokenizer.from_pretrained(minilm_dir), ["A sentence."])
    _, model, tok, _ = bert
    with pytest.raises(EvaluationError, match="text 1 has .* tokens, more than the model's max_seq_len=128"):
        pseudo_perplexity(model, tok, ["fine", "word " * 200])


# ------------------------------------------------------------------------------------------------ Kneser-Ney

def test_kneser_ney_baseline_scores_the_tokens_perplexity_scores(decoder):
    from lmforge.baselines import KneserNeyLM

    _, model, folder = decoder
    tok = _tokenizer(folder)
    train = [tok.encode(t, add_special_tokens=False) for t in CORPUS]
    evals = [tok.encode(t, add_special_tokens=False) for t in TEXTS]
    result = kneser_ney_baseline(train, evals, tok.vocab_size, orders=(2, 3))
    assert result["tokens"] == perplexity(model, tok, TEXTS, add_bos=False)["tokens"]
    with_first = kneser_ney_baseline(train, evals, tok.vocab_size, orders=(2, 3), score_first=True)
    assert with_first["tokens"] == perplexity(model, tok, TEXTS, add_bos=True)["tokens"] == result["tokens"] + 3
    for n in (2, 3):
        lm = KneserNeyLM().fit([np.array(d) for d in train], tok.vocab_size, n)
        # Token by token through `prob` (its own lookup path), each document from its start symbols.
        logp = [[math.log(lm.prob([lm.bos] * (n - 1) + doc[:i], doc[i])) for i in range(len(doc))] for doc in evals]
        assert _close(result["orders"][n], math.exp(-np.mean([x for doc in logp for x in doc[1:]])), 1e-9)
        assert _close(with_first["orders"][n], math.exp(-np.mean([x for doc in logp for x in doc])), 1e-9)
    assert result["best_order"] == min(result["orders"], key=result["orders"].get)
    assert result["perplexity"] == result["orders"][result["best_order"]]


def test_kneser_ney_baseline_rejects_bad_input():
    with pytest.raises(EvaluationError, match="eval_ids holds no token to score .*score_first=True"):
        kneser_ney_baseline([[1, 2, 3]], [[1], []], vocab_size=5)
    with pytest.raises(EvaluationError, match="token id 7 outside the vocabulary"):
        kneser_ney_baseline([[1, 2, 3]], [[1, 7]], vocab_size=5)
    with pytest.raises(EvaluationError, match="train_ids holds no token"):
        kneser_ney_baseline([[]], [[1, 2]], vocab_size=5)


def test_the_trainer_evaluate_is_validation_metrics():
    import lmforge.train
    import lmforge.train.loop
    from lmforge.evaluate.lm import validation_metrics

    assert lmforge.train.evaluate is lmforge.train.loop.evaluate is validation_metrics
