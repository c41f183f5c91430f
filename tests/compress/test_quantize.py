"""`lmforge.compress.quantize`: QuantLinear against independent references, the handler, tied heads, checkpoints.

References: `F.linear` with the dequantised weight (f32, bf16, int8: f32 activations, so only the order
of the f32 sums differs), and the block formats' float64 references in `lmforge.kernels.formats` (q8_0,
int4: the kernels quantize the activations to Q8_0 blocks). Tolerances are derived from the arithmetic,
see `f32_bound` and `activation_bound`. The models are tiny random LLaMAs (d_model 64, two layers).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from lmforge import kernels
from lmforge.compress import QuantConfig, QuantEmbedding, QuantError, QuantLinear, quantize_model
from lmforge.compress import quantize as Q
from lmforge.interop.hf import CheckpointError
from lmforge.interop.native import load_any, load_model, save_model
from lmforge.kernels import formats
from lmforge.models import build_model, get_preset

U = 2.0 ** -24  # unit roundoff of float32
SCHEMES = [("f32", 32, True), ("bf16", 32, True), ("int8", 32, True), ("q8_0", 32, True), ("int4", 32, True),
           ("int4", 64, False), ("int4", 128, True)]


def gamma(n: int) -> float:
    """Higham's gamma_n = n u / (1 - n u): the relative error bound of an n-term f32 sum of products."""
    return n * U / (1 - n * U)


def tiny(tie: bool = False, seed: int = 0, vocab: int = 256) -> nn.Module:
    torch.manual_seed(seed)
    cfg = get_preset("llama-tiny", vocab_size=vocab, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                     max_seq_len=64, tie_embeddings=tie)
    return build_model(cfg).eval()


def ids(batch: int = 3, length: int = 11, vocab: int = 256, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(tokens)


def f32_bound(x: torch.Tensor, w: torch.Tensor, terms: int) -> torch.Tensor:
    """|kernel - reference| for two f32 evaluations of x @ w.T, each within gamma_terms * |x| @ |w|.T of exact."""
    return 2 * gamma(terms) * (x.abs().double() @ w.abs().double().T) + 1e-30


def block_terms(x: torch.Tensor, w: torch.Tensor, m: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_b amax_b|x| * sum_{i in b} (|w_i - m_i| + |m_i|), sum_b amax_b|x| * |m_b|): what the Q8 block sums scale."""
    b = x.shape[1] // 32
    amax = x.double().abs().reshape(-1, b, 32).amax(-1)  # (M, B)
    m = torch.zeros_like(w) if m is None else m
    per = ((w - m).abs() + m.abs()).double().reshape(w.shape[0], b, 32).sum(-1)  # (N, B)
    mins = m.double().abs().reshape(w.shape[0], b, 32)[..., 0]  # (N, B): one min per block
    return amax @ per.T, amax @ mins.T


def expanded_min(module: QuantLinear) -> torch.Tensor | None:
    return None if module.min is None else module.min.float().repeat_interleave(module.group_size, dim=1)


@pytest.mark.parametrize("isa", kernels.available_isas())  # every path this CPU has (scalar, avx2, avx512)
@pytest.mark.parametrize("m", [1, 3, 70])  # 70 rows: the wrappers hand large M to torch
@pytest.mark.parametrize("scheme,group,symmetric", SCHEMES)
def test_quant_linear_matches_its_reference(scheme, group, symmetric, m, isa):
    torch.manual_seed(0)
    linear = nn.Linear(256, 48, bias=True)
    x = torch.randn(m, 256)
    q = QuantLinear.from_linear(linear, scheme, group, symmetric)
    w = q.dequantize()
    with torch.no_grad(), kernels.forced_isa(isa):
        y = q(x) - linear.bias  # the bias is added once in f32 (its own rounding: u |y|)
    assert y.shape == (m, 48) and y.dtype == torch.float32
    if scheme in ("f32", "bf16", "int8"):
        # int8: scale * sum(x q) against sum(x (q scale)): two more roundings per term.
        tol = f32_bound(x, w, 256 + 2) + 2 * U * y.abs().double()
        assert ((y.double() - F.linear(x, w).double()).abs() <= tol).all()
        if scheme == "f32":
            assert torch.equal(w, linear.weight)
        return
    ref = (formats.reference_gemv_q8_0(x, q.qweight, q.scale) if scheme == "q8_0" else
           formats.reference_gemv_q4(x, q.qweight, q.scale, q.min, q.group_size))
    terms, mins = block_terms(x, w, expanded_min(q))
    # Exact integer block sums, then B = K/32 scaled f32 terms: gamma_{B+2}; the reference rounds once.
    tol = gamma(256 // 32 + 2) * terms + 2 * U * ref.abs().double()
    assert ((y.double() - ref.double()).abs() <= tol).all()
    # Against the float product: each activation is off by at most d/2 + 127 |d - fp16(d)| with d = amax/127,
    # and the asymmetric form's s = fp16(d sum q) by 2^-11 |s| <= 2^-11 * 32 amax.
    tol = (1 / 254 + 2 ** -11) * terms + 32 * 2 ** -11 * mins + tol
    assert ((y.double() - F.linear(x, w).double()).abs() <= tol).all()


def test_quant_linear_keeps_the_callers_dtype_and_shape():
    torch.manual_seed(0)
    linear = nn.Linear(64, 32)
    q = QuantLinear.from_linear(linear, "int8")
    x = torch.randn(2, 5, 64).to(torch.bfloat16)
    with torch.no_grad():
        y = q(x)
        expected = q(x.float().reshape(10, 64)).reshape(2, 5, 32).to(torch.bfloat16)
    assert y.dtype == torch.bfloat16 and torch.equal(y, expected)
    assert "scheme=int8" in repr(q) and "in_features=64, out_features=32" in repr(q)
    assert sorted(q.state_dict()) == ["bias", "qweight", "scale"]
    assert q.bias.dtype == torch.float32
    int4 = QuantLinear.from_linear(linear, "int4", 32, symmetric=False)
    assert sorted(int4.state_dict()) == ["bias", "min", "qweight", "scale"] and "asymmetric" in repr(int4)
    assert int4.qweight.shape == (32, 32) and int4.scale.shape == int4.min.shape == (32, 2)


def test_to_dtype_leaves_the_packed_tensors_alone():
    model = tiny()
    quantize_model(model, QuantConfig("int4", symmetric=False))
    before = {k: v.clone() for k, v in model.state_dict().items() if ".blocks." in k and "norm" not in k}
    model.to(torch.bfloat16)
    after = model.state_dict()
    for name, t in before.items():
        assert after[name].dtype == t.dtype and torch.equal(after[name], t), name
    assert model.body.decoder.blocks[0].attn_norm.weight.dtype == torch.bfloat16
    assert logits(model, ids()).dtype == torch.bfloat16


@pytest.mark.parametrize("scheme", ["f32", "bf16", "int8", "q8_0", "int4"])
def test_fused_and_unfused_quantized_models_agree(scheme):
    """Quantize then fuse (concatenated rows) = fuse then quantize = the unfused quantized model."""
    tokens = ids()
    a, b = tiny(), tiny()
    quantize_model(a, QuantConfig(scheme))
    unfused = logits(a, tokens)
    a.fuse_projections()
    b.fuse_projections()
    summary = quantize_model(b, QuantConfig(scheme))
    assert isinstance(a.body.decoder.blocks[0].attn.qkv_proj, QuantLinear)
    assert any(name.endswith("gate_up_proj") for name in summary.modules) and len(summary.modules) == 8
    for name, t in a.state_dict().items():
        assert torch.equal(t, b.state_dict()[name]), name
    # The fused product sums the same K terms per output; only the kernel's blocking may differ (f32 noise).
    assert torch.allclose(logits(a, tokens), unfused, rtol=0, atol=1e-5 * unfused.abs().max().item())
    assert torch.equal(logits(a, tokens), logits(b, tokens))


def layer_errors(model: nn.Module, config: QuantConfig) -> list[float]:
    """||W - dequantize(pack(W))||_F / ||W||_F for every layer `config` quantizes."""
    names = Q.select(model, config) + ([Q.HEAD] if config.lm_head else [])
    errors = []
    for name in names:
        w = model.get_submodule(name).weight.detach()
        q = Q.unpack(Q.pack(w, config.scheme, config.group_size, config.symmetric), config.scheme, config.group_size)
        errors.append(((q - w).norm() / w.norm()).item())
    return errors


# Activations rounded to Q8_0 blocks: per element at most amax/254 (with fp16(d): x 1.06); a block's rms
# is at least amax/sqrt(32), so its relative error is at most sqrt(32)/254 * 1.06.
ACTIVATION_ERROR = {"int8": 0.0, "q8_0": math.sqrt(32) / 254 * 1.06, "int4": math.sqrt(32) / 254 * 1.06}


@pytest.mark.parametrize("scheme,symmetric", [("int8", True), ("q8_0", True), ("int4", True), ("int4", False)])
def test_quantized_logits_stay_near_fp32(scheme, symmetric):
    """The bound, to first order: each layer's relative error (weights eps_w, measured; activations eps_x, the
    format's worst case) reaches the logits with gain at most 1 (pre-norm residual blocks, RMSNorm rescales),
    and the layers' independent rounding errors add in quadrature: sqrt(sum_l (eps_w + eps_x)^2)."""
    model, tokens = tiny(), ids()
    config = QuantConfig(scheme, symmetric=symmetric, lm_head=True)
    bound = math.sqrt(sum((e + ACTIVATION_ERROR[scheme]) ** 2 for e in layer_errors(model, config)))
    reference = logits(model, tokens)
    quantize_model(model, config)
    error = ((logits(model, tokens) - reference).norm() / reference.norm()).item()
    assert error <= bound
    assert bound < 1  # it rules out a broken model: zero logits are off by 1, unrelated ones by about 1.4


def test_int8_model_equals_its_dequantised_float_model():
    """int8 keeps f32 activations: the quantized model is the float model with dequantised weights, up to f32
    summation order (gamma_K relative per product, K <= 128, through two blocks: 1e-4 leaves room)."""
    model, tokens = tiny(), ids()
    quantize_model(model, QuantConfig("int8", lm_head=True))
    float_model = tiny()
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, QuantLinear):
                float_model.get_submodule(name).weight.copy_(module.dequantize())
    got, expected = logits(model, tokens), logits(float_model, tokens)
    assert ((got - expected).norm() / expected.norm()).item() <= 1e-4


def test_summary_counts_modules_and_bytes():
    model = tiny()
    summary = quantize_model(model, QuantConfig("int8"))
    assert len(summary.modules) == 14 and all(".blocks." in n for n in summary.modules)
    rows = {"q": (64, 64), "k": (32, 64), "v": (32, 64), "o": (64, 64), "gate": (128, 64), "up": (128, 64),
            "down": (64, 128)}  # (out, in) per block; two blocks, f32 weights
    linear_bytes = 2 * 4 * sum(n * k for n, k in rows.values())
    assert summary.bytes_before == linear_bytes
    assert summary.bytes_after == linear_bytes // 4 + 2 * 4 * sum(n for n, _ in rows.values())  # + f32 row scales
    assert summary.model_bytes_before - summary.model_bytes_after == summary.bytes_before - summary.bytes_after
    assert summary.model_bytes_after == Q.state_bytes(model)
    assert "14 modules -> int8" in str(summary)


def test_include_patterns_choose_modules_and_unmatched_ones_are_errors():
    model = tiny()
    summary = quantize_model(model, QuantConfig("int8", include=["*.attn.*"]))
    assert len(summary.modules) == 8 and all(".attn." in n for n in summary.modules)
    assert isinstance(model.body.decoder.blocks[1].ffn.down_proj, nn.Linear)
    with pytest.raises(QuantError, match="already quantized"):
        quantize_model(model, QuantConfig("int8"))
    fused = tiny().fuse_projections()
    with pytest.raises(QuantError) as err:
        quantize_model(fused, QuantConfig("int8", include=["*.q_proj", "*.down_proj", "*.nope"]))
    message = str(err.value)
    assert "'*.q_proj'" in message and "'*.nope'" in message and "'*.down_proj'" not in message
    assert "body.decoder.blocks.0.attn.qkv_proj" in message  # what exists instead
    assert not Q.is_quantized(fused)  # nothing changed


def test_config_validation_names_every_bad_field():
    with pytest.raises(QuantError) as err:
        QuantConfig("int3", group_size=48, include="*.attn.*").validate()
    assert "scheme='int3'" in str(err.value) and "group_size=48" in str(err.value) and "include=" in str(err.value)
    for bad, field in [(QuantConfig("int8", symmetric=False), "symmetric"), (QuantConfig("q8_0", group_size=64),
                       "group_size"), (QuantConfig("int4", embedding=True), "embedding")]:
        with pytest.raises(QuantError, match=field):
            bad.validate()
    with pytest.raises(QuantError, match="unknown field"):
        QuantConfig.from_dict({"scheme": "int8", "bits": 8})


def test_a_group_that_does_not_divide_a_layer_names_the_layer_and_sizes():
    model = tiny()
    with pytest.raises(QuantError) as err:
        quantize_model(model, QuantConfig("int4", group_size=128))
    message = str(err.value)
    assert "body.decoder.blocks.0.attn.q_proj: input width 64 is not a multiple of group_size 128" in message
    assert "group sizes that fit: 32, 64" in message
    assert not Q.is_quantized(model)
    with pytest.raises(QuantError, match="input width 48 is not a multiple of group_size 32"):
        QuantLinear.from_linear(nn.Linear(48, 8), "int4", name="x")
    with pytest.raises(QuantError, match="q8_0 block 32"):
        QuantLinear.from_linear(nn.Linear(48, 8), "q8_0", name="x")


# ---------------------------------------------------------------------------------------------- tied heads


def test_quantized_head_of_a_tied_model_gets_its_own_copy():
    model = tiny(tie=True)
    float_embedding = model.body.tokens.weight.detach().clone()
    quantize_model(model, QuantConfig("int4", lm_head=True))
    assert model.cfg.tie_embeddings is False and isinstance(model.body.tokens, nn.Embedding)
    assert torch.equal(model.body.tokens.weight, float_embedding)
    head = model.lm_head.proj
    assert torch.equal(head.dequantize(), Q.unpack(Q.pack(float_embedding, "int4"), "int4"))


@pytest.mark.parametrize("scheme", ["int8", "q8_0"])
def test_quantized_embedding_and_head_share_packed_rows(scheme, tmp_path):
    model, tokens = tiny(tie=True), ids()
    reference = logits(model, tokens)
    weight = model.body.tokens.weight.detach().clone()
    quantize_model(model, QuantConfig(scheme, lm_head=True, embedding=True))
    emb, head = model.body.tokens, model.lm_head.proj
    assert isinstance(emb, QuantEmbedding) and head.qweight is emb.qweight and head.scale is emb.scale
    with torch.no_grad():  # a lookup is the dequantised row
        rows = emb(tokens)
    assert torch.equal(rows, emb.dequantize()[tokens]) and rows.dtype == torch.float32
    # Within half a step of the row's (or block's) peak / 127, the step itself rounded to fp16 (q8_0).
    assert ((emb.dequantize() - weight).abs() <= weight.abs().amax(1, keepdim=True) * (1 / 254 + 2 ** -11)).all()
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    got = logits(model, tokens)
    assert ((got - reference).norm() / reference.norm()).item() < 0.05
    save_model(model, tmp_path)
    meta = json.loads((tmp_path / "lmforge.json").read_text())
    assert meta["quantization"]["tied_head"] is True and meta["config"]["tie_embeddings"] is False
    stored = load_file(tmp_path / "model.safetensors")
    assert "body.tokens.qweight" in stored and not any(k.startswith("lm_head.") for k in stored)
    loaded = load_model(tmp_path)
    assert loaded.lm_head.proj.qweight is loaded.body.tokens.qweight
    assert torch.equal(logits(loaded, tokens), got)
    # The engine's cache and a bf16 model read the embedding's dtype through `weight`.
    loaded.to(torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and loaded.body.tokens(tokens).dtype == torch.bfloat16
    assert loaded.body.tokens.qweight.dtype == torch.int8


def test_int4_layers_over_an_int8_embedding_and_shared_head(tmp_path):
    """embedding_scheme: int4 blocks with the embedding (and the tied head sharing its rows) in int8; the saved
    checkpoint reloads bit-identically, and int4 with an int4 embedding is refused by name."""
    model, tokens = tiny(tie=True), ids()
    quantize_model(model, QuantConfig("int4", lm_head=True, embedding=True, embedding_scheme="int8"))
    emb, head = model.body.tokens, model.lm_head.proj
    assert emb.scheme == "int8" and head.scheme == "int8" and head.qweight is emb.qweight
    assert model.body.decoder.blocks[0].attn.q_proj.scheme == "int4"
    got = logits(model, tokens)
    save_model(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.lm_head.proj.qweight is loaded.body.tokens.qweight and loaded.lm_head.proj.scheme == "int8"
    assert torch.equal(logits(loaded, tokens), got)
    with pytest.raises(QuantError, match="not int4 \\(set embedding_scheme: int8\\)"):
        QuantConfig("int4", embedding=True).validate()
    with pytest.raises(QuantError, match="embedding_scheme='int8' needs embedding=true"):
        QuantConfig("int4", embedding_scheme="int8").validate()


def test_quantized_embedding_alone_leaves_the_head_float():
    model = tiny(tie=True)
    weight = model.body.tokens.weight.detach().clone()
    quantize_model(model, QuantConfig("int8", embedding=True))
    assert model.cfg.tie_embeddings is False
    assert type(model.lm_head.proj) is nn.Linear and torch.equal(model.lm_head.proj.weight, weight)


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("scheme,group,symmetric,fuse", [("int8", 32, True, False), ("q8_0", 32, True, True),
                                                          ("int4", 64, False, False), ("int4", 32, True, True),
                                                          ("bf16", 32, True, False)])
def test_save_load_round_trip_is_bit_identical_and_never_requantizes(scheme, group, symmetric, fuse, tmp_path,
                                                                     monkeypatch):
    model, tokens = tiny(tie=True), ids()
    if fuse:
        model.fuse_projections()
    config = QuantConfig(scheme, group, symmetric, lm_head=True)
    quantize_model(model, config)
    expected = logits(model, tokens)
    save_model(model, tmp_path)
    meta = json.loads((tmp_path / "lmforge.json").read_text())
    assert meta["quantization"] == {"version": 1, "config": config.to_dict(), "fused": fuse, "tied_head": False}

    def refuse(*args, **kwargs):
        raise AssertionError("loading re-quantized a weight")

    for name in ("pack_int8", "pack_q8_0", "pack_q4_0", "pack_q4_1"):
        monkeypatch.setattr(formats, name, refuse)
    monkeypatch.setattr(Q, "pack", refuse)
    loaded = load_any(tmp_path)
    assert torch.equal(logits(loaded, tokens), expected)
    assert loaded.quantization == config and loaded.cfg.tie_embeddings is False
    for name, t in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], t), name
    if not fuse:  # loaded unfused, fused for inference: the same logits up to f32 blocking
        loaded.fuse_projections()
        assert torch.allclose(logits(loaded, tokens), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


def test_a_checkpoint_that_does_not_fit_its_config_names_tensor_and_shapes(tmp_path):
    model = tiny()
    quantize_model(model, QuantConfig("int4", 32))
    save_model(model, tmp_path)
    meta_path = tmp_path / "lmforge.json"
    meta = json.loads(meta_path.read_text())
    meta["quantization"]["config"]["group_size"] = 64  # hand-edited
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError) as err:
        load_model(tmp_path)
    assert "body.decoder.blocks.0.attn.q_proj.scale: shape (64, 2) != (64, 1)" in str(err.value)


def test_a_packed_tensor_of_another_type_or_model_is_an_error(tmp_path):
    model = tiny()
    quantize_model(model, QuantConfig("int8"))
    save_model(model, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    name = "body.decoder.blocks.1.ffn.down_proj.qweight"
    tensors[name] = tensors[name].float()
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"{name}: dtype float32 != int8"):
        load_model(tmp_path)
    tensors[name] = torch.zeros(64, 96, dtype=torch.int8)  # a layer of another model
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"{name}: shape \(64, 96\) != \(64, 128\)"):
        load_model(tmp_path)
    meta = json.loads((tmp_path / "lmforge.json").read_text())
    meta["quantization"]["config"]["scheme"] = "int2"
    (tmp_path / "lmforge.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="lmforge.json: quantization.config: .*scheme='int2'"):
        load_model(tmp_path)


@pytest.mark.parametrize("scheme, symmetric", [("f32", True), ("q8_0", True), ("int4", False)])
def test_compiled_decoding_of_a_quantized_model_gives_eager_tokens(scheme, symmetric):
    """The kernels inside `compile_decode`'s graph (Inductor fusing the norms, RoPE and residuals around them)
    decode the same greedy tokens as eager."""
    from lmforge.generate import generate

    torch._dynamo.reset()
    model = tiny(tie=True).eval()
    quantize_model(model, QuantConfig(scheme, symmetric=symmetric, lm_head=True))
    model.fuse_projections()
    prompt = ids(batch=2, length=5)
    assert torch.equal(generate(model, prompt, 12, eos_token_id=None, compile=True),
                       generate(model, prompt, 12, eos_token_id=None))
