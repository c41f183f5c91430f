"""`lmforge convert` both ways, through the real CLI entry point."""

from __future__ import annotations

import torch
import transformers as T

from lmforge.cli import main
from lmforge.interop import load_model


def test_convert_hf_to_lmforge_and_back(tmp_path, capsys):
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, bos_token_id=0,
                                        eos_token_id=0)).eval()
    hf.save_pretrained(tmp_path / "hf")
    main(["convert", str(tmp_path / "hf"), str(tmp_path / "native")])
    assert (tmp_path / "native" / "lmforge.json").exists()
    model = load_model(tmp_path / "native")
    main(["convert", str(tmp_path / "native"), str(tmp_path / "back"), "--to", "hf"])
    again = T.GPT2LMHeadModel.from_pretrained(tmp_path / "back").eval()
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert torch.equal(hf(ids).logits, again(ids).logits)
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-5
    assert "lmforge format" in capsys.readouterr().out


def test_argv_normalisation():
    from lmforge.cli import normalize_argv

    argv = ["tokenizer", "train", "--kind", "bpe", "a.txt", "--vocab-size", "10", "b c.txt"]
    assert normalize_argv(argv) == ["tokenizer", "train", '["a.txt", "b c.txt"]', "--kind", "bpe",
                                    "--vocab_size", "10"]
    assert normalize_argv(["convert", "x", "y", "--to", "hf"]) == ["convert", "x", "y", "--to", "hf"]
