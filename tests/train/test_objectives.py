"""Pretraining tasks beyond CLM: MLM, MLM+NSP, ELECTRA, span corruption and SimCSE, through the real loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from _tiny import TINY_MODEL

from lmforge.data import TokenDataset
from lmforge.models import ConfigError, get_preset
from lmforge.objectives import word_ids_from_starts
from lmforge.tokenizers import Tokenizer
from lmforge.train import DataSpec, ModelSpec, TrainConfig, evaluate, run_pretraining, train
from lmforge.train.distributed import DistEnv
from lmforge.train.objective import get_objective

PRESET = {"mlm": "bert-tiny", "mlm-wwm": "bert-tiny", "mlm-nsp": "bert-tiny", "rtd": "bert-tiny",
          "span": "bart-tiny", "contrastive": "bert-tiny"}
SEQ_LEN = 48


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread than on two contended ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def setup_objective(tiny_data, objective: str, preset: str | None = None, **overrides):
    """(bound objective, model, train split, val split, tokenizer), wired as `lmforge pretrain` wires them."""
    data, tok_dir = tiny_data
    tok = Tokenizer.from_pretrained(tok_dir)
    ds, val = TokenDataset(data, "train", tok), TokenDataset(data, "val")
    binding = get_objective(objective).bind(ds, tok)
    ids = {"vocab_size": ds.vocab_size, "eos_token_id": ds.eos_id, "pad_token_id": tok.pad_id}
    ids.update(binding.overrides)
    dropout = 0.1 if objective == "contrastive" else 0.0
    cfg = get_preset(preset or PRESET[objective], **{**ids, **TINY_MODEL, "dropout": dropout, **overrides})
    torch.manual_seed(0)
    return binding.objective, binding.objective.build_model(cfg), ds, val, binding.tokenizer


def train_cfg(**kw) -> TrainConfig:
    # fp32 pinned: the exactness tests (resume) must not depend on whether the CPU picks bf16.
    base = dict(steps=6, batch_size=8, micro_batch_size=4, seq_len=SEQ_LEN, lr=3e-3, warmup_steps=0,
                schedule="constant", eval_every=100, checkpoint_every=100, log_every=1, progress=False,
                precision="fp32")
    return TrainConfig(**{**base, **kw})


def loss_records(run: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in records if "loss" in r]


def losses(run: Path) -> dict[int, float]:
    return dict(loss_records(run))


def first_micro_batch(objective, ds):
    batch = next(iter(objective.train_loader(ds, 8, SEQ_LEN, seed=0, rank=0, world_size=1)))
    return objective.split(batch, 2)[0]


@pytest.mark.parametrize("objective", ["mlm", "mlm-nsp", "rtd", "span", "contrastive"])
def test_training_lowers_the_validation_loss(tiny_data, tmp_path, objective):
    objective, model, ds, val, _ = setup_objective(tiny_data, objective)
    cfg = train_cfg(steps=8)
    before = evaluate(model, objective, val, cfg, DistEnv())["val_loss"]
    result = train(model, objective, ds, val, cfg, tmp_path, DistEnv())
    steps = losses(tmp_path)
    assert sorted(steps) == list(range(1, 9)) and all(torch.isfinite(torch.tensor(list(steps.values()))))
    assert result["val_tokens"] > 0
    assert result["val_loss"] < before, f"{objective}: validation loss {before} -> {result['val_loss']}"


def test_mlm_loss_is_cross_entropy_on_masked_positions(tiny_data):
    objective, model, ds, _, _ = setup_objective(tiny_data, "mlm")
    mb = first_micro_batch(objective, ds)
    ids, labels = mb["input_ids"], mb["labels"]
    assert (ids[:, 0] == objective.special.cls).all() and (labels != -100).any()
    assert ((ids == objective.special.mask) <= (labels != -100)).all()  # [MASK] only where there is a target
    model.eval()
    loss, _ = objective.loss(model, mb, torch.device("cpu"))
    logits = model(ids, mb["attention_mask"]).logits
    picked = labels != -100
    assert torch.allclose(loss, F.cross_entropy(logits[picked], labels[picked]), atol=1e-6)


def test_mlm_nsp_loss_is_mlm_plus_nsp(tiny_data):
    objective, model, ds, _, _ = setup_objective(tiny_data, "mlm-nsp")
    batch = next(iter(objective.train_loader(ds, 16, SEQ_LEN, seed=0, rank=0, world_size=1)))
    assert set(batch["next_sentence_label"].tolist()) == {0, 1}  # both IsNext and NotNext pairs
    assert ((batch["input_ids"] == objective.special.sep).sum(1) == 2).all()  # [CLS] A [SEP] B [SEP]
    mb = objective.split(batch, 2)[0]
    model.eval()
    loss, _ = objective.loss(model, mb, torch.device("cpu"))
    out = model(mb["input_ids"], mb["attention_mask"], mb["token_type_ids"])
    picked = mb["labels"] != -100
    by_hand = (F.cross_entropy(out.logits[picked], mb["labels"][picked])
               + F.cross_entropy(out.nsp_logits, mb["next_sentence_label"]))
    assert torch.allclose(loss, by_hand, atol=1e-6)


def test_rtd_loss_is_generator_mlm_plus_50_discriminator_bce(tiny_data):
    objective, model, ds, _, _ = setup_objective(tiny_data, "rtd")
    mb = first_micro_batch(objective, ds)
    ids, mask, labels = mb["input_ids"], mb["attention_mask"], mb["labels"]
    picked = labels != -100
    assert (ids[picked] == objective.special.mask).all()  # ELECTRA: every selected token becomes [MASK]
    assert model.generator.cfg.d_model == TINY_MODEL["d_model"] // 4
    assert model.generator.project is not None  # reads the discriminator's (shared) token embeddings
    model.eval()
    torch.manual_seed(1)
    loss, _ = objective.loss(model, mb, torch.device("cpu"))
    torch.manual_seed(1)
    gen_logits = model.generator_logits(ids, mask)
    sampled = torch.multinomial(torch.softmax(gen_logits[picked].float(), -1), 1).squeeze(-1)
    disc_ids = ids.clone()
    disc_ids[picked] = sampled
    original = torch.where(picked, labels, ids)
    disc_logits = model.discriminator(disc_ids, mask).squeeze(-1)
    real = mask.bool()
    bce = F.binary_cross_entropy_with_logits(disc_logits[real], (disc_ids != original)[real].float())
    assert torch.allclose(loss, F.cross_entropy(gen_logits[picked], labels[picked]) + 50 * bce, atol=1e-5)


def test_span_loss_is_decoder_cross_entropy_on_targets(tiny_data):
    objective, model, ds, _, _ = setup_objective(tiny_data, "span")
    mb = first_micro_batch(objective, ds)
    sentinels = set(objective.special.sentinels)
    row_in, row_out = mb["input_ids"][0].tolist(), [t for t in mb["labels"][0].tolist() if t != -100]
    assert row_out[0] in sentinels and row_out[-1] == objective.special.eos
    assert [t for t in row_in if t in sentinels] == [t for t in row_out if t in sentinels]  # <X> ... <Y> ...
    assert mb["input_ids"].shape[1] <= SEQ_LEN
    model.eval()
    loss, _ = objective.loss(model, mb, torch.device("cpu"))
    logits = model(mb["input_ids"], mb["attention_mask"], decoder_input_ids=mb["decoder_input_ids"],
                   decoder_attention_mask=mb["decoder_attention_mask"])
    picked = mb["labels"] != -100
    assert torch.allclose(loss, F.cross_entropy(logits[picked], mb["labels"][picked]), atol=1e-5)


def test_contrastive_loss_is_info_nce_of_two_dropout_views(tiny_data):
    objective, model, ds, _, _ = setup_objective(tiny_data, "contrastive")
    mb = first_micro_batch(objective, ds)
    model.train()
    torch.manual_seed(2)
    loss, _ = objective.loss(model, mb, torch.device("cpu"))
    torch.manual_seed(2)
    ids, mask = mb["input_ids"], mb["attention_mask"]
    hidden = model(torch.cat([ids, ids]), torch.cat([mask, mask]))
    m = torch.cat([mask, mask]).unsqueeze(-1).float()
    emb = F.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    a, b = emb.chunk(2)
    assert not torch.allclose(a, b)  # dropout made two different views
    sim = a @ b.T / 0.05
    assert torch.allclose(loss, F.cross_entropy(sim, torch.arange(len(a))), atol=1e-5)


def test_contrastive_needs_dropout(tiny_data):
    with pytest.raises(ConfigError, match="dropout 0: set model.overrides.dropout"):
        setup_objective(tiny_data, "contrastive", dropout=0.0)


@pytest.mark.parametrize(("objective", "preset", "family"), [
    ("span", "bert-tiny", "encoder-decoder"), ("mlm", "bart-tiny", "encoder"), ("rtd", "llama-tiny", "encoder"),
])
def test_family_check_rejects_a_wrong_preset(tiny_data, objective, preset, family):
    with pytest.raises(ConfigError, match=f"objective '{objective}' trains {family} models"):
        setup_objective(tiny_data, objective, preset)


def test_pretrain_rejects_span_on_bert(tiny_data, tmp_path):
    data, tok = tiny_data
    with pytest.raises(ConfigError, match="objective 'span' trains encoder-decoder models.*'encoder'"):
        run_pretraining(DataSpec(str(data), str(tok)), ModelSpec("bert-tiny", TINY_MODEL), "span",
                        train_cfg(), str(tmp_path), device="cpu")


def test_special_ids_are_reserved_after_the_vocabulary_and_added_to_a_copy_of_the_tokenizer(tiny_data):
    data, tok_dir = tiny_data
    tok = Tokenizer.from_pretrained(tok_dir)
    ds = TokenDataset(data, "train")
    v, before = ds.vocab_size, tok.fingerprint()
    unbound = get_objective("mlm")
    mlm = unbound.bind(ds, tok)
    assert mlm.overrides == {"vocab_size": v + 3, "pad_token_id": tok.pad_id}  # GPT-style: has <pad>
    ids = mlm.objective.special
    assert (ids.cls, ids.sep, ids.mask) == (v, v + 1, v + 2)
    assert (mlm.tokenizer.cls_id, mlm.tokenizer.sep_id, mlm.tokenizer.mask_id) == (v, v + 1, v + 2)  # names them
    # No hidden state: the tokenizer given and the unbound objective are left as they were.
    assert tok.fingerprint() == before and tok.cls_id is None and unbound.ids is None
    with pytest.raises(ConfigError, match="not bound to data"):
        unbound.train_loader(ds, 8, SEQ_LEN, 0, 0, 1)
    again = get_objective("mlm-nsp").bind(ds, tok)
    assert again.overrides["vocab_size"] == v + 3 and again.objective.special == ids
    assert get_objective("mlm").bind(ds, mlm.tokenizer).overrides["vocab_size"] == v + 3  # finds them there
    span = get_objective("span").bind(ds, tok)
    assert span.objective.special.sentinels == tuple(range(v, v + 100)) and span.overrides["vocab_size"] == v + 100
    assert span.overrides["decoder_start_token_id"] == span.overrides["pad_token_id"] == tok.pad_id
    with pytest.raises(ConfigError, match="needs vocab_size >= 303"):
        mlm.objective.build_model(get_preset("bert-tiny", **{**TINY_MODEL, "vocab_size": v}))


def test_whole_word_masking_masks_every_piece_of_a_word(tiny_data):
    objective, _, ds, _, _ = setup_objective(tiny_data, "mlm-wwm")
    batch = next(iter(objective.train_loader(ds, 8, SEQ_LEN, seed=0, rank=0, world_size=1)))
    original = torch.where(batch["labels"] != -100, batch["labels"], batch["input_ids"])
    special = torch.isin(original, torch.tensor(sorted(objective.special.specials)))
    words = word_ids_from_starts(original, objective.word_starts, special)
    picked = batch["labels"] != -100
    assert picked.any()
    for row in range(len(words)):
        for w in words[row][picked[row]].unique():
            assert picked[row][words[row] == w].all(), "a word was only partly masked"


def test_ranks_split_the_global_batch_and_draw_their_own_masks(tiny_data):
    objective, _, ds, _, _ = setup_objective(tiny_data, "mlm")
    rank0, rank1 = (next(iter(objective.train_loader(ds, 8, SEQ_LEN, 0, r, 2))) for r in (0, 1))
    whole = next(iter(objective.train_loader(ds, 8, SEQ_LEN, 0, 0, 1)))
    assert len(rank0["input_ids"]) == len(rank1["input_ids"]) == 4

    def docs(b) -> set[tuple[int, ...]]:
        original = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])
        return {tuple(row[m.bool()].tolist()) for row, m in zip(original, b["attention_mask"])}

    assert docs(rank0) | docs(rank1) == docs(whole) and not docs(rank0) & docs(rank1)
    assert objective.num_tokens(rank0) + objective.num_tokens(rank1) == objective.num_tokens(whole)


def test_rtd_resume_is_exact(tiny_data, tmp_path):
    """ELECTRA (masking, generator samples and dropout all random): 6 steps == 3 + resume + 3."""
    def run(run_dir: Path, steps: int, resume: bool) -> None:
        objective, model, ds, val, _ = setup_objective(tiny_data, "rtd", dropout=0.1)
        train(model, objective, ds, val, train_cfg(steps=steps, checkpoint_every=3), run_dir, DistEnv(), resume=resume)

    run(tmp_path / "whole", 6, False)
    run(tmp_path / "split", 3, False)
    run(tmp_path / "split", 6, True)
    split = loss_records(tmp_path / "split")
    assert [step for step, _ in split] == [1, 2, 3, 4, 5, 6]  # the second run went on from step 3
    assert dict(split) == losses(tmp_path / "whole")


@pytest.mark.parametrize("name", ["clm", "mlm", "mlm-wwm", "mlm-nsp", "rtd", "span", "contrastive"])
def test_every_objective_has_what_the_protocol_lists(name):
    from lmforge.train.objective import Objective

    objective = get_objective(name)
    members = [m for m in vars(Objective) if not m.startswith("_")] + list(Objective.__annotations__)
    missing = [m for m in dict.fromkeys(members) if not hasattr(objective, m)]
    assert not missing, f"{name} lacks {missing}"
    assert objective.name == name
