"""`lmforge quantize`, then `lmforge generate` on what it wrote, through the real entry point (`lmforge.cli.main`).

The model is a tiny random LLaMA saved as an lmforge folder with a word-level tokenizer. The greedy text the
CLI prints for the quantized folder must be what the engine gives for the same packed weights loaded by
hand, and what `--quantize` gives on the float folder (both quantize the same f32 weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

import lmforge.cli as cli
from lmforge.compress.quantize import QuantLinear
from lmforge.generate import generate
from lmforge.generate.console import OptionError, load
from lmforge.interop.native import load_model, save_model
from lmforge.models import build_model, get_preset
from lmforge.tokenizers import Tokenizer

WORDS = "the a cat dog sat ran on under mat tree and but so we you they see saw big small red green".split()
PROMPT = "the cat sat on"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """A random 2-layer LLaMA with tied embeddings and a word-level tokenizer, as an lmforge folder."""
    root = tmp_path_factory.mktemp("quantize") / "model"
    vocab = {token: i for i, token in enumerate(["<unk>", "<pad>", "<eos>", *WORDS])}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = Tokenizer(backend, {"unk": "<unk>", "pad": "<pad>", "eos": "<eos>"})
    torch.manual_seed(0)  # init_std 0.3: the blocks, not the tied embedding alone, choose the next word
    model = build_model(get_preset("llama-tiny", vocab_size=tokenizer.vocab_size, d_model=64, n_layers=2, n_heads=4,
                                   n_kv_heads=2, d_ff=128, max_seq_len=128, tie_embeddings=True, init_std=0.3))
    with torch.no_grad():  # logit 0 for the special tokens (no early <eos>), below the best of ~20 random logits
        model.body.tokens.weight[:3] = 0.0
    save_model(model, root)
    tokenizer.save(root)
    return root


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """cli.main(argv) -> (exit status, stdout, stderr)."""
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    out = capsys.readouterr()
    return code, out.out, out.err


def greedy_text(model, tokenizer: Tokenizer, n: int = 10) -> str:
    ids = torch.tensor([tokenizer.encode(PROMPT)])
    return tokenizer.decode(generate(model, ids, n)[0].tolist())


@pytest.mark.parametrize("argv", [["--to", "int8"], ["--to", "q8_0", "--lm_head", "true", "--embedding", "true"],
                                  ["--to", "int4", "--group", "64", "--symmetric", "false", "--lm-head", "true"]])
def test_quantize_then_generate_through_the_cli(folder, tmp_path, capsys, argv):
    out = tmp_path / "q"
    code, stdout, stderr = run(capsys, "quantize", str(folder), *argv, "--out", str(out))
    assert code == 0, stderr
    assert f"-> {out}: " in stdout and " MB -> " in stdout and "tokenizer: tokenizer.json" in stdout
    meta = json.loads((out / "lmforge.json").read_text())
    assert meta["quantization"]["config"]["scheme"] == argv[1]
    assert (out / "tokenizer.json").is_file()

    code, text, stderr = run(capsys, "generate", str(out), PROMPT, "--max_tokens", "10", "--temperature", "0")
    assert code == 0 and stderr == ""
    tokenizer = Tokenizer.from_pretrained(out)
    model = load_model(out)  # the packed tensors as written, unfused
    assert isinstance(model.body.decoder.blocks[0].attn.q_proj, QuantLinear)
    words = text.split()
    assert words == greedy_text(model, tokenizer).split() and len(words) == 10 and len(set(words)) > 2
    if argv == ["--to", "int8"]:  # --quantize on the float folder: the same weights packed the same way
        code, again, _ = run(capsys, "generate", str(folder), PROMPT, "--max_tokens", "10", "--temperature", "0",
                             "--quantize", "int8")
        assert code == 0 and again == text


def test_quantize_errors_are_one_line_naming_the_problem(folder, tmp_path, capsys):
    code, _, err = run(capsys, "quantize", str(folder), "--to", "int4", "--group", "128", "--out", str(tmp_path / "a"))
    assert code == 2 and "body.decoder.blocks.0.attn.q_proj: input width 64 is not a multiple of group_size 128" in err
    code, _, err = run(capsys, "quantize", str(folder), "--to", "int8", "--include", '["*.nope"]', "--out",
                       str(tmp_path / "b"))
    assert code == 2 and "'*.nope' match no Linear module" in err
    code, _, err = run(capsys, "quantize", str(folder), "--to", "int8")
    assert code == 2 and "--out" in err
    code, _, err = run(capsys, "quantize", str(folder), "--to", "int2", "--out", str(tmp_path / "c"))
    assert code == 2 and "int2" in err
    assert not any((tmp_path / n).exists() and any((tmp_path / n).iterdir()) for n in "abc")


def test_load_quantize_option(folder, tmp_path):
    model, _ = load(str(folder), quantize="q8_0")
    assert isinstance(model.body.decoder.blocks[0].attn.qkv_proj, QuantLinear)  # fused after quantizing
    bf16, _ = load(str(folder), dtype="bfloat16", quantize="int4")
    assert bf16.dtype == torch.bfloat16 and bf16.body.decoder.blocks[0].ffn.down_proj.scale.dtype == torch.float16
    with pytest.raises(OptionError, match="quantize='int3'"):
        load(str(folder), quantize="int3")
    cli.main(["quantize", str(folder), "--to", "int8", "--out", str(tmp_path / "q")])
    with pytest.raises(OptionError, match="quantized already"):
        load(str(tmp_path / "q"), quantize="int8")
