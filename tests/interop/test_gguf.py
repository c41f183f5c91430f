"""GGUF files: tiny ones written here with `gguf.GGUFWriter`, and SmolLM2-135M-Instruct against transformers."""

from __future__ import annotations

import os

import gguf
import numpy as np
import pytest
import torch
from _assets import require_asset
from gguf import GGMLQuantizationType as Q
from tokenizers import pre_tokenizers

from lmforge.interop import CheckpointError, load_pretrained
from lmforge.interop.gguf import load_gguf, load_gguf_tokenizer, read_gguf_config
from lmforge.interop.hf import config_from_folder
from lmforge.models.presets import get_preset
from lmforge.models.tasks import build_model
from lmforge.tokenizers import Tokenizer, TokenizerError

TOL = 1e-4
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ w"]
TOKENS = SPECIALS + sorted(pre_tokenizers.ByteLevel.alphabet()) + ["he", "ll", "hell", "hello", "Ġw"]


@pytest.fixture(autouse=True, scope="module")
def _fp32_matmuls():
    """Full fp32 matmuls whatever the CPU (no bf16/TF32 shortcuts), so tolerances mean the same everywhere."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's row order for a query/key projection (`LlamaModel.permute` in convert_hf_to_gguf.py)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """An lmforge llama's tensors under llama.cpp's names, as llama.cpp's converter writes them."""
    cfg, body = model.cfg, model.body
    out = {"token_embd.weight": body.tokens.weight, "output_norm.weight": body.decoder.final_norm.weight}
    if not cfg.tie_embeddings:
        out["output.weight"] = model.lm_head.proj.weight
    for i, block in enumerate(body.decoder.blocks):
        attn, ffn = block.attn, block.ffn
        out.update({
            f"blk.{i}.attn_q.weight": permute(attn.q_proj.weight, cfg.n_heads),
            f"blk.{i}.attn_k.weight": permute(attn.k_proj.weight, cfg.n_kv_heads),
            f"blk.{i}.attn_v.weight": attn.v_proj.weight, f"blk.{i}.attn_output.weight": attn.o_proj.weight,
            f"blk.{i}.ffn_gate.weight": ffn.gate_proj.weight, f"blk.{i}.ffn_up.weight": ffn.up_proj.weight,
            f"blk.{i}.ffn_down.weight": ffn.down_proj.weight, f"blk.{i}.attn_norm.weight": block.attn_norm.weight,
            f"blk.{i}.ffn_norm.weight": block.ffn_norm.weight,
        })
    return {name: t.detach().numpy() for name, t in out.items()}


def write_gguf(path, model, arch="llama", qtypes=None, drop=(), extra=None, skip_meta=()):
    """Write `model` as llama.cpp would: metadata, a byte-level BPE tokenizer, tensors (`qtypes`: name -> type)."""
    cfg = model.cfg
    w = gguf.GGUFWriter(str(path), arch)
    meta = {
        "block_count": cfg.n_layers, "context_length": cfg.max_seq_len, "embedding_length": cfg.d_model,
        "feed_forward_length": cfg.d_ff, "attention.head_count": cfg.n_heads,
        "attention.head_count_kv": cfg.n_kv_heads, "vocab_size": cfg.vocab_size,
    }
    for key, value in meta.items():
        if key not in skip_meta:
            w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.rope.freq_base", cfg.rope_theta)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg.norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(TOKENS)
    w.add_token_merges(MERGES)
    w.add_token_types([3] * len(SPECIALS) + [1] * (len(TOKENS) - len(SPECIALS)))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML)
    tensors = {**gguf_tensors(model), **(extra or {})}
    for name, values in tensors.items():
        qtype = (qtypes or {}).get(name, Q.F32)
        if name in drop:
            continue
        if isinstance(values, tuple):  # (array, type): written as it is
            w.add_tensor(name, values[0], raw_dtype=values[1])
        elif qtype in (Q.F32, Q.F16):
            w.add_tensor(name, values.astype(np.float16 if qtype == Q.F16 else np.float32))
        else:
            w.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def tiny(tie: bool = False, d_model: int = 64, d_ff: int = 96):
    torch.manual_seed(0)
    cfg = get_preset("llama-tiny", vocab_size=len(TOKENS), d_model=d_model, n_layers=2, n_heads=4, n_kv_heads=2,
                     d_ff=d_ff, max_seq_len=128, rope_theta=5000.0, tie_embeddings=tie, pad_token_id=2)
    model = build_model(cfg, "causal-lm").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


# ----------------------------------------------------------------------- tiny files, no asset needed


@pytest.mark.parametrize("tie", [False, True])
def test_tiny_gguf_loads_back_with_equal_weights(tmp_path, tie):
    model = tiny(tie)
    path = write_gguf(tmp_path / "tiny.gguf", model)
    loaded = load_gguf(path)
    eps = float(np.float32(model.cfg.norm_eps))  # GGUF stores it as float32
    assert loaded.cfg == model.cfg.replace(norm_eps=eps, extra={"model_type": "llama"})
    expected = model.state_dict()
    assert loaded.state_dict().keys() == expected.keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, expected[name]), name
    assert (loaded.lm_head.proj.weight is loaded.body.tokens.weight) == tie
    ids = torch.randint(0, model.cfg.vocab_size, (2, 9))
    with torch.no_grad():
        assert (loaded(ids) - model(ids)).abs().max() <= 1e-5
    again = load_pretrained(path, dtype=torch.bfloat16)  # the `.gguf` route of the Hugging Face loader
    assert again.dtype == torch.bfloat16
    assert torch.equal(again.body.tokens.weight, model.body.tokens.weight.bfloat16())


@pytest.mark.parametrize("qtype", [Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1], ids=lambda q: q.name)
def test_quantized_tensors_dequantize(tmp_path, qtype):
    model = tiny()
    names = {"blk.0.attn_q.weight": "body.decoder.blocks.0.attn.q_proj.weight",
             "blk.1.attn_k.weight": "body.decoder.blocks.1.attn.k_proj.weight",
             "blk.0.ffn_down.weight": "body.decoder.blocks.0.ffn.down_proj.weight",
             "token_embd.weight": "body.tokens.weight"}
    loaded = load_gguf(write_gguf(tmp_path / "q.gguf", model, qtypes=dict.fromkeys(names, qtype))).state_dict()
    original = model.state_dict()
    for name in names.values():  # blocks run along a row, so permuting rows commutes with quantising
        w = original[name].numpy()
        expected = w.astype(np.float16).astype(np.float32) if qtype == Q.F16 else \
            gguf.quants.dequantize(gguf.quants.quantize(w, qtype), qtype)
        assert torch.equal(loaded[name], torch.from_numpy(expected)), name
    name = "body.decoder.blocks.0.attn.v_proj.weight"
    assert torch.equal(loaded[name], original[name])  # F32 as it was


@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q6_K], ids=lambda q: q.name)
def test_k_quants_dequantize(tmp_path, qtype):
    """gguf 0.19 dequantises K-quants but cannot quantise them: write random blocks with sane scales."""
    model = tiny(d_model=256, d_ff=512)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(0)
    w = model.body.decoder.blocks[0].ffn.up_proj.weight
    raw = rng.integers(0, 256, (w.shape[0], w.shape[1] // block, size), dtype=np.uint8)
    scale = np.full(w.shape[:1] + (w.shape[1] // block, 1), 0.01, np.float16).view(np.uint8)
    if qtype == Q.Q4_K:  # d, dmin first
        raw[..., 0:2], raw[..., 2:4] = scale, scale
    else:  # d last
        raw[..., -2:] = scale
    raw = raw.reshape(w.shape[0], -1)
    loaded = load_gguf(write_gguf(tmp_path / "k.gguf", model, extra={"blk.0.ffn_up.weight": (raw, qtype)}))
    expected = torch.from_numpy(gguf.quants.dequantize(raw, qtype))
    assert expected.shape == w.shape and expected.isfinite().all() and expected.abs().sum() > 0
    assert torch.equal(loaded.body.decoder.blocks[0].ffn.up_proj.weight, expected)


def test_tiny_gguf_tokenizer(tmp_path):
    path = write_gguf(tmp_path / "tok.gguf", tiny())
    tok = load_gguf_tokenizer(path)
    assert tok.special_tokens == {"bos": "<|im_start|>", "eos": "<|im_end|>", "unk": "<|endoftext|>",
                                  "pad": "<|im_end|>"}
    assert tok.chat_template == CHATML and tok.model_max_length == 128
    text = "<|im_start|>user\nhello world 12<|im_end|>"
    assert tok.tokenize(text) == ["<|im_start|>", "u", "s", "e", "r", "Ċ", "hello", "Ġw", "o", "r", "l", "d", "Ġ",
                                  "1", "2", "<|im_end|>"]
    ids = tok.encode(text)
    assert ids[0] == 1 and ids[-1] == 2 and tok.decode(ids, skip_special_tokens=False) == text
    assert tok.decode(ids) == "user\nhello world 12"
    saved = Tokenizer.from_pretrained(tok.save(tmp_path / "saved"))
    assert saved.chat_template == CHATML and saved.encode(text) == ids and saved.special_tokens == tok.special_tokens
    same = Tokenizer.from_pretrained(path)  # a `.gguf` path through the folder loader
    assert same.fingerprint() == tok.fingerprint() and same.chat_template == CHATML


def test_named_gguf_checkpoint_converts_to_hf(tmp_path, monkeypatch, capsys):
    """`lmforge convert NAME OUT --to hf` of a named GGUF checkpoint; a tiny file stands in for SmolLM2's."""
    transformers = pytest.importorskip("transformers")
    from lmforge import assets
    from lmforge.cli import main

    model = tiny(tie=True)
    path = write_gguf(tmp_path / "tiny.gguf", model)
    monkeypatch.setitem(assets.NAMED_CHECKPOINTS, "smollm2-135m-instruct", lambda: path)
    tok = Tokenizer.from_pretrained("smollm2-135m-instruct")
    assert tok.chat_template == CHATML
    assert torch.equal(load_pretrained("smollm2-135m-instruct").body.tokens.weight, model.body.tokens.weight)
    main(["convert", "smollm2-135m-instruct", str(tmp_path / "hf"), "--to", "hf"])
    assert "tokenizer: tokenizer.json, tokenizer_config.json" in capsys.readouterr().out
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "<|im_start|>user\nhello world 12<|im_end|>"
    ids = torch.tensor([tok.encode(text)])
    assert hf_tok(text)["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() <= 1e-5
    chat = [{"role": "user", "content": "hello"}]
    assert hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"


# ------------------------------------------------------------------------------------------- errors


def test_error_not_a_gguf_file(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a GGUF file" * 4)
    for fn in (load_gguf, read_gguf_config, load_gguf_tokenizer):
        with pytest.raises(CheckpointError, match=f"{path}: not a readable GGUF file"):
            fn(path)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_gguf(tmp_path / "absent.gguf")


def test_error_truncated_gguf(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf", tiny()).read_bytes()
    for cut in (8, 100, len(whole) // 2, len(whole) - 64):
        path = tmp_path / f"cut{cut}.gguf"
        path.write_bytes(whole[:cut])
        with pytest.raises(CheckpointError, match=f"{path}: not a readable GGUF file"):
            load_gguf(path)


def test_error_wrong_architecture(tmp_path):
    path = write_gguf(tmp_path / "gpt2.gguf", tiny(), arch="gpt2")
    with pytest.raises(CheckpointError, match=f"{path}: GGUF architecture 'gpt2' is not supported; supported: llama"):
        load_gguf(path)


def test_error_missing_tensor_metadata_and_extra_tensor(tmp_path):
    model = tiny()
    path = write_gguf(tmp_path / "missing.gguf", model, drop={"blk.1.ffn_up.weight"})
    with pytest.raises(CheckpointError, match=f"{path}: missing tensor blk.1.ffn_up.weight"):
        load_gguf(path)
    path = write_gguf(tmp_path / "meta.gguf", model, skip_meta={"feed_forward_length"})
    with pytest.raises(CheckpointError, match=f"{path}: missing metadata llama.feed_forward_length"):
        read_gguf_config(path)
    path = write_gguf(tmp_path / "extra.gguf", model, extra={"rope_freqs.weight": np.ones(8, np.float32)})
    with pytest.raises(CheckpointError, match="no place for: rope_freqs.weight"):
        load_gguf(path)


def test_error_undequantizable_type_and_other_tasks(tmp_path):
    model = tiny()
    path = write_gguf(tmp_path / "f64.gguf", model, extra={"output_norm.weight": (np.ones(64), Q.F64)})
    with pytest.raises(CheckpointError, match=f"{path}: tensor output_norm.weight is stored as F64"):
        load_gguf(path)
    path = write_gguf(tmp_path / "ok.gguf", model)
    with pytest.raises(CheckpointError, match="loads as a causal-lm model only"):
        load_pretrained(path, task="sequence-classification")


def test_error_unsupported_tokenizer():
    with pytest.raises(TokenizerError, match="tokenizer.ggml.model='llama' is not supported yet"):
        Tokenizer.from_gguf_metadata({"tokenizer.ggml.model": "llama"}, source="x.gguf")
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": TOKENS, "tokenizer.ggml.merges": MERGES,
            "tokenizer.ggml.pre": "deepseek-coder"}
    with pytest.raises(TokenizerError, match="tokenizer.ggml.pre='deepseek-coder' is not supported yet"):
        Tokenizer.from_gguf_metadata(meta, source="x.gguf")


# ------------------------------------------------------- SmolLM2-135M-Instruct (Q4_1) against transformers

STRINGS = [  # with conftest.SENTENCES: 30 strings
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\n你好！<|im_end|>\n<|im_start|>assistant\n",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    "for (int i = 0; i < 10; ++i) { sum += a[i]; }",
    "tabs\tand\t\tnewlines\n\n\nend   of    runs",
    "π ≈ 3.14159, e ≈ 2.71828, 1,000,000 and 0x1F",
    "价格是 128 元，折扣 15%。",
    "👍🏽 family: 👨‍👩‍👧‍👦",
    "<|endoftext|><repo_name>lmforge<file_sep>README.md",
    "x = 42\ny = 7\nprint(x*y)",
]


@pytest.fixture(scope="module")
def smollm2():
    from lmforge.assets import smollm2_gguf

    return require_asset(smollm2_gguf)


@pytest.fixture(scope="module")
def ours(smollm2):
    return load_pretrained("smollm2-135m-instruct")  # the name route, through the Hugging Face loader


@pytest.fixture(scope="module")
def ours_tok(smollm2):
    return load_gguf_tokenizer(smollm2)  # the file is parsed once (see `open_gguf`): the model's read serves this


@pytest.fixture(scope="module")
def reference(smollm2):
    """transformers' own GGUF loading of the same file (about 16 s on 2 cores): once per module."""
    transformers = pytest.importorskip("transformers")
    folder, name = os.path.dirname(smollm2), os.path.basename(smollm2)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    return model.eval(), transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_logits_match_transformers(ours, ours_tok, reference, smollm2):
    ref, _ = reference
    assert ours.cfg == read_gguf_config(smollm2)
    assert ours.dtype == torch.float32 and ours.num_parameters() == ref.num_parameters() == 134_515_008
    prompts = ["The capital of France is", STRINGS[1], STRINGS[2]]
    for text in prompts:
        ids = torch.tensor([ours_tok.encode(text)])
        with torch.no_grad():
            assert (ours(ids) - ref(ids).logits).abs().max() <= TOL, text


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_tokenizer_matches_transformers(ours_tok, reference, sentences):
    _, ref_tok = reference
    texts = sentences + STRINGS
    assert len(texts) == 30
    for text in texts:
        ids = ours_tok.encode(text)
        assert ids == ref_tok(text)["input_ids"], text
        assert ours_tok.decode(ids, skip_special_tokens=False) == text == ref_tok.decode(ids)
        assert ours_tok.decode(ids) == ref_tok.decode(ids, skip_special_tokens=True)
    assert ours_tok.encode("<|im_start|>") == [1] and ours_tok.eos_id == 2 and ours_tok.vocab_size == len(ref_tok)
    assert ours_tok.chat_template == ref_tok.chat_template


@pytest.mark.assets
def test_smollm2_pre_tokenizer_follows_llama_cpp(ours_tok):
    """llama.cpp's `smollm` pre-tokenizer splits off every digit before GPT-2's regex (as SmolLM2 was trained:
    its vocabulary has no token with a digit next to anything), so a whitespace run before a digit stays one
    piece. transformers 5.24's GGUF tokenizer uses GPT-2's regex alone and gives ['Ġ', 'Ġ', '2', ...] here."""
    assert ours_tok.tokenize("  2024") == ["ĠĠ", "2", "0", "2", "4"]
    assert ours_tok.tokenize("\n\n1") == ["ĊĊ", "1"]
    assert ours_tok.tokenize("x  1") == ["x", "ĠĠ", "1"]


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_greedy_matches_transformers(ours, ours_tok, reference):
    from lmforge.generate import generate

    ref, _ = reference
    ids = torch.tensor([ours_tok.encode("<|im_start|>user\nName three fruits.<|im_end|>\n<|im_start|>assistant\n")])
    got = generate(ours, ids, 32, eos_token_id=ours_tok.eos_id)[0].tolist()
    with torch.no_grad():
        expected = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False,
                                eos_token_id=ours_tok.eos_id, pad_token_id=ours_tok.pad_id)[0, ids.shape[1]:].tolist()
    assert got[:len(expected)] == expected
    assert len(expected) == 32 or expected[-1] == ours_tok.eos_id


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_converts_to_hf(ours, ours_tok, reference, smollm2, tmp_path, capsys):
    import transformers

    from lmforge.cli import main

    main(["convert", "smollm2-135m-instruct", str(tmp_path / "hf"), "--to", "hf"])
    assert "tokenizer: tokenizer.json, tokenizer_config.json" in capsys.readouterr().out
    assert config_from_folder(tmp_path / "hf")[0] == read_gguf_config(smollm2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = torch.tensor([ours_tok.encode(STRINGS[1])])
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids)).abs().max() <= TOL
    for text in STRINGS:
        assert hf_tok(text)["input_ids"] == ours_tok.encode(text), text
    chat = [{"role": "user", "content": "Hi!"}]
    assert hf_tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == \
        reference[1].apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert (hf_tok.bos_token, hf_tok.eos_token, hf_tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    assert Tokenizer.from_pretrained(tmp_path / "hf").fingerprint() == ours_tok.fingerprint()
