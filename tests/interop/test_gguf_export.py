"""GGUF export (`save_gguf`, `lmforge convert --to gguf`): read back with gguf's own reader, lmforge's loader and
llama.cpp; and the loader's errors for tensor types it cannot read."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from _assets import require_asset
from gguf import GGMLQuantizationType as Q
from torch import nn

from lmforge.cli import main
from lmforge.interop import CheckpointError, load_pretrained, save_model
from lmforge.interop.gguf import load_gguf, load_gguf_tokenizer
from lmforge.interop.gguf_export import (
    add_metadata,
    gguf_tensors,
    model_metadata,
    save_gguf,
    to_gguf_metadata,
)
from lmforge.models.presets import get_preset
from lmforge.models.tasks import build_model
from lmforge.tokenizers import Tokenizer, train_tokenizer

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ["The quick brown fox jumps over the lazy dog.", "In 2024 there were 366 days, not 365.",
         "今天天气真好。", "Emoji 🙂🚀✨ and 👨‍👩‍👧", "  leading spaces\tand\nnew lines  ",
         "<|im_start|>user\nhello 12<|im_end|>\n"]
# llama.cpp's LLAMA_FTYPE (llama.h) for each --gguf-type; the type of the 2-D weights.
FTYPES = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_1": 3}
QTYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1}
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True, scope="module")
def _fp32_matmuls():
    """Full fp32 matmuls whatever the CPU, so two models with the same weights give the same logits."""
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    yield
    torch.set_float32_matmul_precision(before)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, sentences) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join((sentences + TEXTS) * 20), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tok(corpus) -> Tokenizer:
    """A byte-level BPE tokenizer trained here with the chat preset (bos <|im_start|>, eos <|im_end|>, <pad>)."""
    return train_tokenizer([corpus], kind="bpe", vocab_size=400, special_tokens="chat", show_progress=False)


def tiny(tok: Tokenizer, tie: bool = False, d_ff: int = 96, extra_vocab: int = 12, **fields):
    """A random LLaMA (GQA, untied or tied) whose vocabulary is the tokenizer's plus a few unused ids."""
    torch.manual_seed(0)
    cfg = get_preset("llama-tiny", vocab_size=tok.vocab_size + extra_vocab, d_model=64, n_layers=2, n_heads=4,
                     n_kv_heads=2, d_ff=d_ff, max_seq_len=128, rope_theta=5000.0, tie_embeddings=tie,
                     bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, **fields)
    model = build_model(cfg, "causal-lm").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """llama.cpp's row order for a query/key projection (`LlamaModel.permute` in convert_hf_to_gguf.py)."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def with_weights(model, transform):
    """A copy of `model` whose 2-D weights are `transform(w)` (norms untouched)."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():
            if p.ndim == 2:
                p.copy_(transform(p))
    return ref


def logits(model, ids):
    with torch.no_grad():
        return model(ids)


def reader(path) -> tuple[dict, dict]:
    r = gguf.GGUFReader(path)
    return {k: f.contents() for k, f in r.fields.items()}, {t.name: t for t in r.tensors}


def ids_for(model):
    return torch.randint(0, model.cfg.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------ the file, read by gguf's reader


@pytest.mark.parametrize("tie", [False, True])
def test_metadata_tensor_names_and_types(tmp_path, tok, tie):
    model = tiny(tok, tie)
    cfg = model.cfg
    path = save_gguf(model, tok, tmp_path / "m.gguf", "q8_0", chat_template=CHATML)
    meta, tensors = reader(path)
    expected = {"general.architecture": "llama", "general.name": "m", "general.file_type": FTYPES["q8_0"],
                "llama.block_count": 2, "llama.embedding_length": 64, "llama.feed_forward_length": 96,
                "llama.attention.head_count": 4, "llama.attention.head_count_kv": 2,
                "llama.attention.key_length": 16, "llama.context_length": 128, "llama.vocab_size": cfg.vocab_size,
                "llama.rope.freq_base": 5000.0, "llama.rope.dimension_count": 16,
                "llama.attention.layer_norm_rms_epsilon": float(np.float32(cfg.norm_eps)),
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.chat_template": CHATML,
                "tokenizer.ggml.bos_token_id": tok.token_to_id("<|im_start|>"),
                "tokenizer.ggml.eos_token_id": tok.token_to_id("<|im_end|>"),
                "tokenizer.ggml.padding_token_id": tok.token_to_id("<pad>"), "tokenizer.ggml.add_bos_token": False}
    assert {k: meta.get(k) for k in expected} == expected
    assert "llama.rope.scaling.type" not in meta
    # Tokens in id order, padded to the model's vocabulary as llama.cpp's converter pads it.
    vocab = {i: t for t, i in tok.get_vocab().items()}
    assert meta["tokenizer.ggml.tokens"] == [vocab.get(i, f"[PAD{i}]") for i in range(cfg.vocab_size)]
    types = meta["tokenizer.ggml.token_type"]
    assert [types[i] for i in range(4)] == [3, 3, 3, 3]  # control: the chat preset's special tokens
    assert set(types[4:tok.vocab_size]) == {1} and set(types[tok.vocab_size:]) == {5}  # normal, unused
    merges = json.loads(tok.to_json())["model"]["merges"]
    assert meta["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m) for m in merges]

    blocks = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_norm", "ffn_norm"]
    names = {"token_embd.weight", "output_norm.weight", *([] if tie else ["output.weight"])}
    names |= {f"blk.{i}.{b}.weight" for i in range(2) for b in blocks}
    assert set(tensors) == names
    for name, t in tensors.items():
        assert t.tensor_type == (Q.F32 if name.endswith("norm.weight") else Q.Q8_0), name
    assert [int(d) for d in tensors["blk.0.attn_k.weight"].shape] == [64, 32]  # GGUF lists dims innermost first
    assert [int(d) for d in tensors["token_embd.weight"].shape] == [64, cfg.vocab_size]


def test_rope_rows_are_permuted_as_llama_cpp_does(tmp_path, tok):
    """The F32 data of attn_q / attn_k is convert_hf_to_gguf.py's permutation of q_proj / k_proj (k with the kv heads)."""
    model = tiny(tok)
    _, tensors = reader(save_gguf(model, tok, tmp_path / "m.gguf", "f32"))
    attn = model.body.decoder.blocks[1].attn
    for name, w, heads in (("attn_q", attn.q_proj.weight, 4), ("attn_k", attn.k_proj.weight, 2),
                           ("attn_v", attn.v_proj.weight, None)):
        expected = permute(w.detach(), heads) if heads else w.detach()
        assert torch.equal(torch.from_numpy(np.array(tensors[f"blk.1.{name}.weight"].data)), expected), name


def test_rope_scaling_and_token_ids_from_the_config(tmp_path, tok):
    """Linear RoPE scaling round-trips; a tokenizer without an eos role carries the config's id."""
    model = tiny(tok, rope_scaling={"type": "linear", "factor": 4.0})
    meta = model_metadata(model.cfg)
    assert meta["llama.rope.scaling.type"] == "linear" and meta["llama.rope.scaling.factor"] == 4.0
    loaded = load_gguf(save_gguf(model, tok, tmp_path / "m.gguf", "f32"))
    assert loaded.cfg.rope_scaling == {"type": "linear", "factor": 4.0}
    no_eos = tok.copy()
    del no_eos.special_tokens["eos"]
    meta = to_gguf_metadata(no_eos, model.cfg.vocab_size, token_ids={"eos_token_id": 7})
    assert meta["tokenizer.ggml.eos_token_id"] == 7


# ------------------------------------------------------------------- read back by lmforge: the logits


@pytest.mark.parametrize("tie", [False, True])
def test_f32_round_trip_is_exact(tmp_path, tok, tie):
    model = tiny(tok, tie)
    loaded = load_gguf(save_gguf(model, tok, tmp_path / "m.gguf", "f32"))
    assert loaded.cfg == model.cfg.replace(norm_eps=float(np.float32(model.cfg.norm_eps)),
                                           extra={"model_type": "llama"})
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name
    ids = ids_for(model)
    assert torch.equal(logits(loaded, ids), logits(model, ids))


@pytest.mark.parametrize("kind", ["f16", "bf16"])
def test_half_types_are_the_rounding_and_nothing_else(tmp_path, tok, kind):
    """Each weight is its round-to-nearest value in the type, so |w16 - w| <= u|w| with the unit roundoff
    u = 2^-11 (f16, 11 significand bits) or 2^-8 (bf16, 8 bits), plus half the f16 subnormal spacing (2^-25)
    below 2^-14 (bf16 keeps float32's exponent range). The logits are those of the model with the weights
    rounded by torch, exactly; norms stay F32."""
    dtype, u, tiny_abs = {"f16": (torch.float16, 2.0 ** -11, 2.0 ** -25), "bf16": (torch.bfloat16, 2.0 ** -8, 0.0)}[kind]
    model = tiny(tok)
    loaded = load_gguf(save_gguf(model, tok, tmp_path / "m.gguf", kind))
    ref = with_weights(model, lambda w: w.to(dtype).float())
    original, state = model.state_dict(), loaded.state_dict()
    for name, w in original.items():
        assert torch.equal(state[name], ref.state_dict()[name]), name
        assert ((state[name] - w).abs() <= u * w.abs() + tiny_abs).all(), name
    ids = ids_for(model)
    assert torch.equal(logits(loaded, ids), logits(ref, ids))
    assert not torch.equal(logits(loaded, ids), logits(model, ids))  # the rounding did happen


@pytest.mark.parametrize("kind", ["q8_0", "q4_0", "q4_1"])
def test_quantized_types_are_the_formats_error_and_nothing_else(tmp_path, tok, kind):
    """The reloaded model equals the one whose 2-D weights are gguf's dequantize(quantize(w)), applied in lmforge's
    row order: blocks run along rows, so llama.cpp's q/k row permutation commutes with quantising."""
    qtype = QTYPES[kind]
    model = tiny(tok, tie=kind == "q4_1")
    path = save_gguf(model, tok, tmp_path / "m.gguf", kind)
    assert reader(path)[0]["general.file_type"] == FTYPES[kind]
    loaded = load_gguf(path)
    ref = with_weights(model, lambda w: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), qtype),
                                                                                 qtype)))
    for name, w in ref.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], w), name
    ids = ids_for(model)
    assert torch.equal(logits(loaded, ids), logits(ref, ids))


def test_rows_not_a_whole_number_of_blocks_fall_back_to_f16(tmp_path, tok, caplog):
    model = tiny(tok, d_ff=48)  # ffn_down's rows hold 48 values: not a multiple of Q8_0's 32
    path = save_gguf(model, tok, tmp_path / "m.gguf", "q8_0")
    assert "blk.0.ffn_down.weight: rows of 48 values are not a whole number of Q8_0 blocks" in caplog.text
    _, tensors = reader(path)
    assert tensors["blk.1.ffn_down.weight"].tensor_type == Q.F16
    assert tensors["blk.1.ffn_up.weight"].tensor_type == Q.Q8_0
    down = load_gguf(path).body.decoder.blocks[1].ffn.down_proj.weight
    assert torch.equal(down, model.body.decoder.blocks[1].ffn.down_proj.weight.half().float())


# --------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip(tmp_path, tok, sentences):
    model = tiny(tok)
    path = save_gguf(model, tok, tmp_path / "m.gguf", "f16", chat_template=CHATML)
    back = load_gguf_tokenizer(path)
    for text in sentences + TEXTS:
        ids = tok.encode(text)
        assert back.encode(text) == ids, text
        assert back.decode(ids, skip_special_tokens=False) == tok.decode(ids, skip_special_tokens=False) == text
        assert back.decode(ids) == tok.decode(ids)
    assert back.special_tokens == tok.special_tokens and back.chat_template == CHATML
    templated = tok.copy()
    templated.chat_template = "{{ messages[0]['content'] }}"  # the tokenizer's own template when none is given
    assert load_gguf_tokenizer(save_gguf(model, templated, tmp_path / "t.gguf", "f16")).chat_template == \
        templated.chat_template


def test_bos_added_on_encode_round_trips(tmp_path, corpus):
    tok = train_tokenizer([corpus], kind="bpe", vocab_size=400, special_tokens="llama", show_progress=False)
    meta, _ = reader(save_gguf(tiny(tok), tok, tmp_path / "m.gguf", "f32"))
    assert meta["tokenizer.ggml.add_bos_token"] is True and meta["tokenizer.ggml.add_eos_token"] is False
    back = load_gguf_tokenizer(tmp_path / "m.gguf")
    assert back.encode("hello 12") == tok.encode("hello 12") and tok.encode("hello 12")[0] == tok.bos_id


@pytest.mark.parametrize("kind", ["wordpiece", "unigram", "lowercase-bpe"])
def test_tokenizers_llama_cpp_cannot_represent(tmp_path, corpus, kind):
    if kind == "lowercase-bpe":
        tok = train_tokenizer([corpus], kind="bpe", vocab_size=400, lowercase=True, show_progress=False)
        match = "normalizes text first"
    else:
        tok = train_tokenizer([corpus], kind=kind, vocab_size=700, special_tokens="chat", show_progress=False)
        match = {"wordpiece": "a WordPiece", "unigram": "a Unigram"}[kind]
    with pytest.raises(CheckpointError, match=match):
        save_gguf(tiny(tok), tok, tmp_path / "m.gguf", "f32")
    assert not (tmp_path / "m.gguf").exists()


# ---------------------------------------------------------------------------- models that cannot be exported


def test_non_llama_models_are_refused(tmp_path, tok):
    bert = build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                  d_ff=64), "masked-lm")
    gpt2 = build_model(get_preset("gpt2-tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                  d_ff=64))
    classifier = build_model(tiny(tok).cfg, "sequence-classification")
    for model, words in ((bert, "masked-lm model of the BERT family"), (gpt2, "causal-lm model of the GPT-2 family"),
                         (classifier, "sequence-classification model of the LLaMA family")):
        with pytest.raises(CheckpointError, match=f"LLaMA-family causal LMs only; this is a {words}"):
            save_gguf(model, tok, tmp_path / "m.gguf")
    with pytest.raises(CheckpointError, match=r"qkv_bias=True .*sliding_window=16"):
        save_gguf(tiny(tok, qkv_bias=True, sliding_window=16), tok, tmp_path / "m.gguf")


def test_wrapped_or_fused_projections_are_refused(tok):
    class Wrapped(nn.Module):  # what an adapter or a quantized layer looks like from outside
        def __init__(self, base):
            super().__init__()
            self.base_layer, self.scale = base, nn.Parameter(torch.ones(1))

    class QuantLinear(nn.Linear):
        pass

    model = tiny(tok)
    model.body.decoder.blocks[0].attn.q_proj = Wrapped(model.body.decoder.blocks[0].attn.q_proj)
    model.body.decoder.blocks[1].ffn.up_proj = QuantLinear(64, 96, bias=False)
    with pytest.raises(CheckpointError) as err:
        gguf_tensors(model)
    assert "body.decoder.blocks.0.attn.q_proj is a Wrapped, not a plain Linear" in str(err.value)
    assert "body.decoder.blocks.1.ffn.up_proj is a QuantLinear" in str(err.value)
    with pytest.raises(CheckpointError, match="blocks.0.attn.q_proj is missing .fused by fuse_projections"):
        gguf_tensors(tiny(tok).fuse_projections())


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_converts_an_lmforge_folder(tmp_path, tok, capsys):
    model = tiny(tok, tie=True)
    save_model(model, tmp_path / "native")
    tok.save(tmp_path / "native")
    out = tmp_path / "out.gguf"
    main(["convert", str(tmp_path / "native"), str(out), "--to", "gguf", "--gguf-type", "q8_0"])
    printed = capsys.readouterr().out
    assert f"-> {out} (GGUF q8_0" in printed and "in the file's metadata" in printed
    ref = with_weights(model, lambda w: torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), Q.Q8_0),
                                                                                 Q.Q8_0)))
    ids = ids_for(model)
    assert torch.equal(logits(load_gguf(out), ids), logits(ref, ids))
    assert load_gguf_tokenizer(out).fingerprint() == Tokenizer.from_gguf(out).fingerprint()

    with pytest.raises(SystemExit) as err:  # exists: refused without --overwrite
        main(["convert", str(tmp_path / "native"), str(out), "--to", "gguf"])
    assert err.value.code == 2 and "exists" in capsys.readouterr().err
    main(["convert", str(tmp_path / "native"), str(out), "--to", "gguf", "--overwrite", "true"])  # f16
    assert reader(out)[0]["general.file_type"] == FTYPES["f16"]


def test_cli_errors(tmp_path, tok, capsys):
    save_model(tiny(tok), tmp_path / "bare")  # no tokenizer beside it
    with pytest.raises(SystemExit) as err:
        main(["convert", str(tmp_path / "bare"), str(tmp_path / "a.gguf"), "--to", "gguf", "--gguf-type", "q5_k"])
    assert err.value.code == 2
    printed = capsys.readouterr().err
    assert "gguf_type" in printed and "q5_k" in printed and "see `lmforge convert --help`" in printed
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "bare"), str(tmp_path / "a.gguf"), "--to", "gguf"])
    assert "no tokenizer beside the model" in capsys.readouterr().err
    tok.save(tmp_path / "tok")
    main(["convert", str(tmp_path / "bare"), str(tmp_path / "a.gguf"), "--to", "gguf", "--tokenizer",
          str(tmp_path / "tok")])
    assert load_gguf_tokenizer(tmp_path / "a.gguf").encode(TEXTS[1]) == tok.encode(TEXTS[1])

    bert = build_model(get_preset("bert-tiny", vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                                  d_ff=64), "masked-lm")
    save_model(bert, tmp_path / "bert")
    tok.save(tmp_path / "bert")
    with pytest.raises(SystemExit) as err:
        main(["convert", str(tmp_path / "bert"), str(tmp_path / "b.gguf"), "--to", "gguf"])
    assert err.value.code == 2
    assert f"{tmp_path / 'bert'}: GGUF export writes LLaMA-family causal LMs only; this is a masked-lm model of " \
           "the BERT family" in capsys.readouterr().err
    assert not (tmp_path / "b.gguf").exists()


def test_cli_gguf_source_keeps_its_pre_tokenizer_name(tmp_path, tok, monkeypatch):
    """A GGUF source (here a tiny one standing in for the named smollm2-135m-instruct) keeps its tokenizer.ggml.pre:
    starcoder splits as smollm does, so only the source can say which it was."""
    from lmforge import assets

    model = tiny(tok)
    source = save_gguf(model, tok, tmp_path / "source.gguf", "f32", name="tiny chat", pre="starcoder")
    monkeypatch.setitem(assets.NAMED_CHECKPOINTS, "smollm2-135m-instruct", lambda: source)
    main(["convert", "smollm2-135m-instruct", str(tmp_path / "out.gguf"), "--to", "gguf", "--gguf-type", "f32"])
    meta, _ = reader(tmp_path / "out.gguf")
    assert meta["tokenizer.ggml.pre"] == "starcoder" and meta["general.name"] == "tiny chat"
    ids = ids_for(model)
    assert torch.equal(logits(load_gguf(tmp_path / "out.gguf"), ids), logits(model, ids))


# ------------------------------------------------------------------------- the loader's tensor-type errors


def _patch_type(path: Path, tensor: str, type_number: int) -> None:
    """Rewrite one tensor's type in a GGUF header (name length u64, name, n_dims u32, dims u64 each, type u32)."""
    data = bytearray(path.read_bytes())
    name = tensor.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    struct.pack_into("<I", data, at + 4 + 8 * n_dims, type_number)
    path.write_bytes(bytes(data))


def test_loader_names_file_tensor_and_type_it_cannot_read(tmp_path, tok):
    model = tiny(tok)
    meta = {**model_metadata(model.cfg), **to_gguf_metadata(tok, model.cfg.vocab_size)}
    for qtype in (Q.Q8_1, Q.I32):  # types gguf 0.19 has no dequantizer for: a weight and a norm
        name = "blk.1.attn_v.weight" if qtype == Q.Q8_1 else "blk.0.ffn_norm.weight"
        path = tmp_path / f"{qtype.name}.gguf"
        w = gguf.GGUFWriter(str(path), "llama")
        for key, value in meta.items():
            add_metadata(w, key, value)
        for tensor_name, t in gguf_tensors(model).items():
            if tensor_name != name:
                w.add_tensor(tensor_name, t.numpy())
            elif qtype == Q.Q8_1:  # random bytes in Q8_1's layout: 32 values in 40 bytes
                w.add_tensor(name, np.zeros((t.shape[0], t.shape[1] // 32 * 40), np.uint8), raw_dtype=Q.Q8_1)
            else:
                w.add_tensor(name, np.ones(t.shape, np.int32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        with pytest.raises(CheckpointError, match=f"{path}: tensor {name} is stored as {qtype.name}, which the gguf "
                                                  "package .* cannot dequantize"):
            load_gguf(path)

    path = save_gguf(model, tok, tmp_path / "new.gguf", "f32")
    _patch_type(path, "blk.0.ffn_up.weight", 42)  # ggml's Q2_0, newer than gguf 0.19
    _patch_type(path, "output.weight", 31)  # Q4_0_4_4, removed from GGUF files
    with pytest.raises(CheckpointError, match=rf"{path}: tensor types the gguf package .* does not know, so lmforge "
                                              r"cannot read them: blk.0.ffn_up.weight \(type 42 = Q2_0\), "
                                              r"output.weight \(type 31 = Q4_0_4_4\)"):
        load_gguf(path)


# ---------------------------------------------------------------------- SmolLM2-135M-Instruct, and llama.cpp


@pytest.fixture(scope="module")
def smollm2():
    """SmolLM2-135M-Instruct as lmforge loads it from its Q4_1 GGUF (about 15 s), and its tokenizer."""
    from lmforge.assets import smollm2_gguf

    path = require_asset(smollm2_gguf)
    return load_pretrained("smollm2-135m-instruct"), load_gguf_tokenizer(path)


@pytest.mark.assets
@pytest.mark.slow
def test_smollm2_f32_export_reloads_to_the_same_logits(smollm2, tmp_path):
    model, tok = smollm2
    path = save_gguf(model, tok, tmp_path / "smollm2.F32.gguf", "f32")
    meta, tensors = reader(path)
    assert meta["tokenizer.ggml.pre"] == "smollm"  # found from the tokenizer's split, as llama.cpp names it
    assert meta["tokenizer.chat_template"] == tok.chat_template and len(meta["tokenizer.ggml.tokens"]) == 49152
    assert "output.weight" not in tensors  # tied
    loaded = load_gguf(path)
    ids = torch.tensor([tok.encode(TEXTS[5] + "<|im_start|>assistant\n")])
    assert torch.equal(logits(loaded, ids), logits(model, ids))
    back = load_gguf_tokenizer(path)
    assert all(back.encode(t) == tok.encode(t) for t in TEXTS) and back.fingerprint() == tok.fingerprint()


def llama_tool(name: str) -> str | None:
    """A llama.cpp binary built by bench/llama_cpp.sh (or on PATH)."""
    for folder in ("build", "build-server"):
        path = ROOT / ".cache" / "llama.cpp" / folder / "bin" / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return shutil.which(name)


def need_llama_tools(*names: str) -> dict[str, str]:
    tools = {name: llama_tool(name) for name in names}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"llama.cpp tools not built ({', '.join(missing)}): run bench/llama_cpp.sh")
    return tools


def token_bytes(tok: Tokenizer, token_id: int) -> bytes:
    """The bytes a byte-level BPE token stands for (a special token: its text, as llama.cpp prints it with -sp)."""
    if token_id in tok.special_ids:
        return tok.id_to_token(token_id).encode()
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]  # GPT-2 maps these to chr(256), chr(257), ...
    byte_of = {chr(b): b for b in printable} | {chr(256 + i): b for i, b in enumerate(others)}
    return bytes(byte_of[c] for c in tok.id_to_token(token_id))


def assert_llama_cpp_greedy_agrees(completion: str, path: Path, model, tok: Tokenizer, prompt: str, n: int) -> int:
    """Run llama.cpp's greedy generation (`--temp 0`) on `path` and compare its bytes with lmforge's greedy tokens.

    Both stop at the eos token. A divergence is accepted only at a near tie of lmforge's own logits (top-2
    gap < 1e-4, where summation order decides), and the tokens before it must agree. Returns how many agreed.
    """
    from lmforge.generate import generate

    prompt_ids = tok.encode(prompt)
    ours = generate(model, torch.tensor([prompt_ids]), n, eos_token_id=tok.eos_id)[0].tolist()
    run = subprocess.run([completion, "-m", str(path), "-p", prompt, "-n", str(n), "--temp", "0", "-no-cnv", "-sp",
                          "--no-display-prompt", "-t", "1", "-c", "256", "--seed", "0"],
                         capture_output=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:].decode(errors="replace")
    printed, done = run.stdout, b""
    for k, token_id in enumerate(ours):
        if not printed.startswith(done + token_bytes(tok, token_id)):
            top2 = logits(model, torch.tensor([prompt_ids + ours[:k]]))[0, -1].topk(2).values
            assert float(top2[0] - top2[1]) < 1e-4, (k, printed, done)
            return k
        done += token_bytes(tok, token_id)
    assert printed[len(done):].strip() in (b"", b"[end of text]"), (printed, done)
    return len(ours)


@pytest.mark.slow
def test_llama_cpp_runs_a_tiny_export(tmp_path, corpus):
    """A demo-shaped model (`make demo`: tied, GQA, head_dim 48) with lmforge's own byte-level BPE (`gpt` preset,
    written as llama.cpp's `gpt-2` pre-tokenizer): llama.cpp loads it and generates lmforge's greedy tokens."""
    from lmforge.recipes.demo import DEMO_MODEL

    tools = need_llama_tools("llama-completion")
    tok = train_tokenizer([corpus], kind="bpe", vocab_size=600, special_tokens="gpt", show_progress=False)
    torch.manual_seed(0)
    model = build_model(get_preset("llama-tiny", vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **DEMO_MODEL))
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:  # weights large enough that the greedy choice is decisive
                p.normal_(0, 0.08)
    model.eval()
    path = save_gguf(model, tok, tmp_path / "demo.F32.gguf", "f32")
    assert reader(path)[0]["tokenizer.ggml.pre"] == "gpt-2"
    agreed = assert_llama_cpp_greedy_agrees(tools["llama-completion"], path, model, tok, "The quick brown fox", 24)
    assert agreed >= 8


@pytest.mark.assets
@pytest.mark.slow
def test_llama_cpp_runs_our_export(smollm2, tmp_path):
    """llama.cpp's greedy generation on our F32 SmolLM2 export gives lmforge's greedy tokens; llama-bench runs our
    Q8_0 export."""
    tools = need_llama_tools("llama-completion", "llama-bench")
    model, tok = smollm2
    path = save_gguf(model, tok, tmp_path / "smollm2.F32.gguf", "f32")
    prompt = "<|im_start|>user\nExplain in two sentences what a CPU does.<|im_end|>\n<|im_start|>assistant\n"
    assert assert_llama_cpp_greedy_agrees(tools["llama-completion"], path, model, tok, prompt, 32) == 32

    q8 = save_gguf(model, tok, tmp_path / "smollm2.Q8_0.gguf", "q8_0")
    cmd = [tools["llama-bench"], "-m", str(q8), "-p", "8", "-n", "2", "-r", "1", "-t", "1", "-o", "json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if run.returncode in (-4, 132):  # SIGILL in ggml's AMX kernels (see bench/llama_cpp.sh): no repacking
        run = subprocess.run(cmd + ["--repack", "0"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    records = json.loads(run.stdout)
    assert records and all(r["model_type"].endswith("Q8_0") and r["avg_ts"] > 0 for r in records), records


@pytest.mark.slow
def test_llama_quantize_gives_the_same_bytes(tmp_path, tok):
    """Our Q8_0/Q4_0/Q4_1 files hold, tensor for tensor, the bytes llama.cpp's own `llama-quantize --pure` writes
    from our F32 export (gguf's quantizers are llama.cpp's reference formulas)."""
    quantize = llama_tool("llama-quantize")
    if quantize is None:
        pytest.skip("llama.cpp tools not built (llama-quantize): run bench/llama_cpp.sh")
    model = tiny(tok)
    f32 = save_gguf(model, tok, tmp_path / "m.F32.gguf", "f32")
    for kind in ("q8_0", "q4_0", "q4_1"):
        ours = reader(save_gguf(model, tok, tmp_path / f"ours.{kind}.gguf", kind))[1]
        run = subprocess.run([quantize, "--pure", str(f32), str(tmp_path / f"ref.{kind}.gguf"), kind.upper(), "1"],
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        theirs = reader(tmp_path / f"ref.{kind}.gguf")[1]
        assert ours.keys() == theirs.keys()
        for name, t in ours.items():
            assert t.tensor_type == theirs[name].tensor_type, name
            assert np.array_equal(np.asarray(t.data), np.asarray(theirs[name].data)), (kind, name)
