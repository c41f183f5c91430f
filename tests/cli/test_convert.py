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


def _tiny_hf_folder(path):
    torch.manual_seed(0)
    hf = T.GPT2LMHeadModel(T.GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=4, bos_token_id=0,
                                        eos_token_id=0)).eval()
    hf.save_pretrained(path)
    return hf


def test_a_destination_that_holds_files_is_refused(tmp_path, capsys):
    import pytest

    _tiny_hf_folder(tmp_path / "hf")
    main(["convert", str(tmp_path / "hf"), str(tmp_path / "native")])
    before = {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()}
    for dest in ("hf", "native"):  # into the source itself, and into another checkpoint
        with pytest.raises(SystemExit) as err:
            main(["convert", str(tmp_path / "native"), str(tmp_path / dest), "--to", "hf"])
        assert err.value.code == 2
    printed = capsys.readouterr().err
    assert "not empty" in printed and "--overwrite true" in printed
    assert "the destination is the source folder" in printed
    assert {p.name: p.read_bytes() for p in (tmp_path / "hf").iterdir()} == before


def test_overwrite_leaves_no_file_of_the_old_checkpoint(tmp_path):
    """HF -> lmforge into an HF folder: without deleting config.json, transformers would load random weights."""
    hf = _tiny_hf_folder(tmp_path / "hf")
    _tiny_hf_folder(tmp_path / "target")
    main(["convert", str(tmp_path / "hf"), str(tmp_path / "target"), "--overwrite", "true"])
    assert sorted(p.name for p in (tmp_path / "target").iterdir()) == ["lmforge.json", "model.safetensors"]
    model = load_model(tmp_path / "target")
    ids = torch.arange(12)[None]
    with torch.no_grad():
        assert (hf(ids).logits - model(ids)).abs().max() < 1e-5


def test_task_is_checked(tmp_path, capsys):
    import pytest

    _tiny_hf_folder(tmp_path / "hf")
    with pytest.raises(SystemExit) as err:
        main(["convert", str(tmp_path / "hf"), str(tmp_path / "out"), "--task", "foo"])
    assert err.value.code == 2 and "foo" in capsys.readouterr().err
    main(["convert", str(tmp_path / "hf"), str(tmp_path / "native")])
    with pytest.raises(SystemExit):
        main(["convert", str(tmp_path / "native"), str(tmp_path / "out"), "--task", "masked-lm"])
    assert "applies to Hugging Face sources only" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_minilm_conversions_carry_its_tokenizer(minilm_dir, tmp_path, sentences):
    """HF -> lmforge -> HF: AutoTokenizer on each folder gives the original tokenizer's ids (not 5 tokens)."""
    main(["convert", "all-minilm-l6-v2", str(tmp_path / "native")])
    main(["convert", str(tmp_path / "native"), str(tmp_path / "hf"), "--to", "hf"])
    reference = T.AutoTokenizer.from_pretrained(minilm_dir)
    for folder in ("native", "hf"):
        tok = T.AutoTokenizer.from_pretrained(tmp_path / folder)
        assert len(tok) == len(reference) == 30522
        assert tok(sentences).input_ids == reference(sentences).input_ids
        assert tok(sentences[:3], sentences[3:6]).input_ids == reference(sentences[:3], sentences[3:6]).input_ids
