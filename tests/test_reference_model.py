"""The torch reference model: parameter counts against planner.accounting, incremental decoding
against a full forward, causality, MoE dispatch, the Engram module's init and gate, and the
offload contract (row ids, row handles waited on just in time, tracer spans)."""

import math

import pytest
import torch

from planner.accounting import param_counts
from planner.loading import load_model
from planner.specs.model import MoESpec
from reference_model.compression import Compressor
from reference_model.model import EngramModel
from reference_model.moe import MoE

TOL = 1e-4  # fp32: incremental decode reorders reductions (cache slices, per-step conv window)


def fp32(name, **update):
    return load_model(name).model_copy(update={"dtype": "fp32", **update})


def shrink(name, **update):
    """A bundled config with its shapes cut down to CPU size but its features kept."""
    spec = load_model(name)
    att = spec.attention
    if att.kind == "mla":
        att = att.model_copy(update=dict(n_heads=2, q_lora_rank=att.q_lora_rank and 16, kv_lora_rank=16,
                                         qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8))
    else:
        att = att.model_copy(update=dict(n_heads=4, n_kv_heads=2, head_dim=8))
    ffn = spec.ffn.model_copy(update={"dense_width": 48})
    if ffn.moe is not None:
        ffn = ffn.model_copy(update={"moe": ffn.moe.model_copy(update=dict(n_routed_experts=6, top_k=2, expert_width=16))})
    engram = spec.engram
    if engram is not None:
        engram = engram.model_copy(update=dict(layer_ids=[1, 2], table_size_per_head=[101, 103],
                                               embed_dim_per_ngram=16, dtype="fp32"))
    out = spec.model_copy(update=dict(vocab_size=300, n_layers=3, d_model=32, max_seq_len=64, dtype="fp32",
                                      attention=att, ffn=ffn, engram=engram))
    return out.model_copy(update=update)


def randomise(model, seed=0):
    """Give the zero-initialised parts (Engram conv, HC dynamic weights) values, so the tests
    exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("conv.weight", "dynamic_alpha", "dynamic_beta", "phi")):
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            elif name.endswith(("alpha_scale", "beta_scale", "pre_gate", "post_gate", "res_gate")):
                p.fill_(0.5)
    return model


SPECS = {
    "tiny": lambda: fp32("tiny"),
    "tiny-gqa": lambda: fp32("tiny-gqa"),
    "engram-27b": lambda: shrink("engram-27b"),
    "engram-27b-no-q-lora-hc1": lambda: shrink("engram-27b", hc_mult=1),
    "moe-27b-tied": lambda: shrink("moe-27b", tie_embeddings=True),
    "dense-4b-tied-hc3": lambda: shrink("dense-4b", hc_mult=3),
    "dense-8b-engram-qkv-bias": lambda: shrink("dense-8b-engram-100b").model_copy(update={
        "attention": shrink("dense-8b-engram-100b").attention.model_copy(update={"qkv_bias": True})}),
}


@pytest.mark.parametrize("name", SPECS)
def test_parameter_count_equals_accounting(name):
    spec = SPECS[name]()
    if name == "engram-27b-no-q-lora-hc1":
        spec = spec.model_copy(update={"attention": spec.attention.model_copy(update={"q_lora_rank": 0})})
    model = EngramModel(spec)
    assert sum(p.numel() for p in model.parameters()) == param_counts(spec).total
    lazy = EngramModel(spec, materialize_tables=False)
    assert sum(p.numel() for p in lazy.parameters()) == param_counts(spec).backbone


@pytest.mark.parametrize("name,hc,kind", [("tiny", 2, "mhc"), ("tiny", 2, "dynamic"), ("tiny", 1, "mhc"),
                                          ("tiny-gqa", 1, "mhc"), ("tiny-gqa", 3, "mhc")])
def test_incremental_decode_matches_full_forward(name, hc, kind):
    torch.manual_seed(0)
    model = randomise(EngramModel(fp32(name, hc_mult=hc, hc_kind=kind))).eval()
    ids = torch.randint(0, 2048, (2, 17))
    with torch.no_grad():
        full = model(ids)
        cache = model.new_cache(2, 17)
        parts = [model(ids[:, :6], kv_cache=cache)] + [model(ids[:, t:t + 1], kv_cache=cache) for t in range(6, 17)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=TOL, rtol=0)


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa"])
def test_causal(name):
    torch.manual_seed(1)
    model = randomise(EngramModel(fp32(name))).eval()
    ids = torch.randint(0, 2048, (1, 16))
    changed = ids.clone()
    changed[0, 10] = (ids[0, 10] + 1) % 2048
    with torch.no_grad():
        a, b = model(ids), model(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10], atol=1e-6, rtol=0)
    assert (a[:, 10] - b[:, 10]).abs().max() > 1e-4
    rows_a, rows_b = model.engram_row_ids(ids), model.engram_row_ids(changed)
    for layer in rows_a:  # hashing is causal too: only positions 10..N+8 change
        assert torch.equal(rows_a[layer][:, :10], rows_b[layer][:, :10])


def test_moe_dispatch_equals_per_token_reference():
    torch.manual_seed(2)
    moe = MoE(24, MoESpec(n_routed_experts=5, n_shared_experts=1, top_k=2, expert_width=8))
    with torch.no_grad():
        moe.router_bias.copy_(torch.randn(5))
    x = torch.randn(3, 7, 24)
    out = moe(x)
    ref = torch.empty_like(x)
    for b in range(3):
        for t in range(7):
            xt = x[b, t]
            scores = torch.sigmoid(moe.router @ xt)
            chosen = torch.topk(scores + moe.router_bias, 2).indices
            gates = scores[chosen] / scores[chosen].sum()
            y = moe.shared(xt)
            for g, e in zip(gates, chosen):
                y = y + g * (moe.w2[e] @ (torch.nn.functional.silu(moe.w1[e] @ xt) * (moe.w3[e] @ xt)))
            ref[b, t] = y
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_router_bias_update_balances():
    moe = MoE(8, MoESpec(n_routed_experts=4, top_k=1, expert_width=4, bias_update_rate=0.1))
    moe.train()
    moe.load.copy_(torch.tensor([10.0, 0.0, 5.0, 5.0]))
    moe.update_bias()
    assert moe.router_bias.tolist() == pytest.approx([-0.1, 0.1, 0.0, 0.0])
    assert moe.load.sum() == 0
    assert "router_bias" in moe.state_dict() and "router_bias" not in dict(moe.named_parameters())


def test_engram_starts_as_gated_identity_of_v():
    torch.manual_seed(3)
    model = EngramModel(fp32("tiny"))
    engram = model.blocks[1].engram
    h = torch.randn(2, 5, 2, 64)
    rows = torch.randn(2, 5, engram.rows_per_token, engram.d_head)
    y, _ = engram(h, rows)
    e = rows.reshape(2, 5, -1)
    v = engram.value_proj(e)
    for m in range(2):
        k = e @ engram.key_weight[m].t() + engram.key_bias[m]
        norm = lambda x, w: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + model.spec.norm_eps) * w
        s = (norm(h[:, :, m], engram.query_norm[m]) * norm(k, engram.key_norm[m])).sum(-1) / math.sqrt(64)
        gate = torch.sigmoid(s.sign() * s.abs().clamp_min(1e-6).sqrt())
        torch.testing.assert_close(y[:, :, m], gate[..., None] * v, atol=1e-5, rtol=1e-5)


def test_paper_gate_flag_changes_output():
    torch.manual_seed(4)
    spec = fp32("tiny")
    paper = spec.model_copy(update={"engram": spec.engram.model_copy(update={"gate": "paper"})})
    a, b = EngramModel(spec), EngramModel(paper)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 2048, (1, 8))
    with torch.no_grad():
        assert not torch.allclose(a(ids), b(ids))


class Handle:
    def __init__(self, rows, log, layer):
        self.rows, self.log, self.layer = rows, log, layer

    def wait(self):
        self.log.append(f"wait_{self.layer}")
        return self.rows


class Provider:
    """Serves rows from another model's tables, logging when they are waited on."""

    def __init__(self, tables, log):
        self.tables, self.log = tables, log

    def fetch(self, row_ids):
        return {layer: Handle(self.tables[layer][ids], self.log, layer) for layer, ids in row_ids.items()}


def test_row_provider_contract_and_tracer():
    torch.manual_seed(5)
    spec = fp32("tiny")
    comp = Compressor.from_file()
    own = randomise(EngramModel(spec, comp)).eval()
    lazy = EngramModel(spec, comp, materialize_tables=False).eval()
    lazy.load_state_dict({k: v for k, v in own.state_dict().items() if "engram.table" not in k})
    assert lazy.blocks[1].engram.table is None
    tables = {i: own.blocks[i].engram.table.weight.detach() for i in spec.engram.layer_ids}
    log = []

    def tracer(name, track):
        assert track == "compute"
        class Span:
            def __enter__(self):
                log.append(name)
            def __exit__(self, *exc):
                return False
        return Span()

    ids = torch.randint(0, 2048, (2, 9))
    row_ids = own.engram_row_ids(ids)
    assert {k: v.shape for k, v in row_ids.items()} == {1: (2, 9, 8), 2: (2, 9, 8)}
    with torch.no_grad():
        expected = own(ids)
        got = lazy(ids, engram_rows=Provider(tables, log).fetch(row_ids), tracer=tracer)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    assert log[:8] == ["embed", "attn_L0", "ffn_L0", "wait_L1", "wait_1", "engram_L1", "attn_L1", "ffn_L1"]
    assert log[8:11] == ["wait_L2", "wait_2", "engram_L2"] and log[-1] == "head"
    with pytest.raises(ValueError, match="materialize_tables=False"):
        lazy(ids)
    with torch.no_grad():
        greedy = own.generate(ids[:, :4], 6)
        provided = lazy.generate(ids[:, :4], 6, row_provider=Provider(tables, []))
    assert torch.equal(greedy, provided) and greedy.shape == (2, 10)
    # row ids for decoding: past ids give the same rows as a full hash
    full = own.engram_row_ids(ids)
    tail = own.engram_row_ids(ids[:, 5:], past_ids_BP=ids[:, :5])
    assert all(torch.equal(full[k][:, 5:], tail[k]) for k in full)


def test_bf16_and_bad_dtypes():
    spec = load_model("tiny")  # bf16 weights, fp32 tables as bundled
    model = EngramModel(spec)
    assert model.embed.weight.dtype == torch.bfloat16
    assert model.blocks[1].engram.table.weight.dtype == torch.float32
    bf_tables = spec.model_copy(update={"engram": spec.engram.model_copy(update={"dtype": "bf16"})})
    with torch.no_grad():
        out = EngramModel(bf_tables)(torch.randint(0, 2048, (1, 6)))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    with pytest.raises(ValueError, match="fp8"):
        EngramModel(spec.model_copy(update={"dtype": "fp8"}))


def test_mla_decode_uses_absorbed_form():
    """A decode step (one new position against the cache) never re-expands the cached latent
    through wkv_b (the absorbed form); prefill does (the expanded form)."""
    torch.manual_seed(0)
    model = randomise(EngramModel(fp32("tiny"))).eval()
    calls = []
    for block in model.blocks:
        block.attn.wkv_b.register_forward_hook(lambda *_: calls.append(1))
    ids = torch.randint(0, 2048, (2, 9))
    with torch.no_grad():
        cache = model.new_cache(2, 9)
        model(ids[:, :8], kv_cache=cache)
        prefill_calls = len(calls)
        model(ids[:, 8:], kv_cache=cache)
    assert prefill_calls > 0 and len(calls) == prefill_calls


def test_left_padded_batch_rows_are_hashed_but_not_embedded():
    """Padding markers (-1) of a left-padded batch get Engram rows like any id (ENGRAM.md 2.1:
    compression passes them through, the recipe hashes them); the forward refuses them clearly."""
    model = EngramModel(load_model("tiny").model_copy(update={"dtype": "fp32"}))
    ids = torch.randint(0, model.spec.vocab_size, (2, 9))
    ids[0, :4] = -1
    rows = model.host_row_ids(ids)
    for layer, r in rows.items():
        assert r.shape == (2, 9, model.hasher.rows_per_token) and 0 <= int(r.min())
        assert int(r.max()) < model.hasher.table_rows[layer]
    unpadded = model.host_row_ids(ids[1:])
    for layer in rows:
        assert torch.equal(rows[layer][1:], unpadded[layer])
    with pytest.raises(ValueError, match="padding markers"):
        model(ids)
    with pytest.raises(ValueError, match="below vocab_size"):
        model.host_row_ids(torch.full((1, 3), model.spec.vocab_size))


# ----------------------------------------------------------------------------- mHC


def _hc_inputs(model, ids):
    """The residual stream each block's attention hyper-connection sees, captured by a hook."""
    seen = []
    originals = [b.hc_attn.width for b in model.blocks]
    for b, width in zip(model.blocks, originals):
        b.hc_attn.width = (lambda w: (lambda H: (seen.append(H.detach()), w(H))[1]))(width)
    with torch.no_grad():
        model(ids)
    for b, width in zip(model.blocks, originals):
        b.hc_attn.width = width
    return seen


def test_sinkhorn_knopp_projects_onto_doubly_stochastic_matrices():
    from reference_model.hyper import sinkhorn_knopp

    g = torch.Generator().manual_seed(0)
    m = sinkhorn_knopp(torch.randn(64, 4, 4, generator=g, dtype=torch.float64), 20)
    assert (m > 0).all()
    assert torch.allclose(m.sum(-1), torch.ones(64, 4, dtype=torch.float64), atol=1e-6, rtol=0)
    assert torch.allclose(m.sum(-2), torch.ones(64, 4, dtype=torch.float64), atol=1e-6, rtol=0)
    few = sinkhorn_knopp(torch.randn(64, 4, 4, generator=g, dtype=torch.float64) * 3, 1)
    assert (few.sum(-1) - 1).abs().max() > 1e-6  # one round is not enough: the test can fail


def test_mhc_residual_mixes_are_doubly_stochastic_on_a_trained_model():
    """The residual matrices the model uses on real text, after training with mHC, are doubly
    stochastic to 1e-6 (entries >= 0, rows and columns summing to 1), and Hpre, Hpost are in
    (0, 1) and (0, 2)."""
    from reference_model.train import train

    spec = fp32("tiny")
    assert spec.hc_kind == "mhc" and spec.hc_mult == 2
    model = EngramModel(spec)
    losses = train(spec, 40, batch_size=4, seq_len=32, model=model, dtype="fp32")
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # training with mHC lowers the loss
    assert model.blocks[0].hc_attn.phi.abs().max() > 0  # it learned dynamic mixes
    ids = torch.randint(0, spec.vocab_size, (2, 24), generator=torch.Generator().manual_seed(3))
    for block, H in zip(model.blocks, _hc_inputs(model, ids)):
        pre, post, res = block.hc_attn.mappings(H)
        res = res.double()
        assert (res >= 0).all()
        assert (res.sum(-1) - 1).abs().max() < 1e-6 and (res.sum(-2) - 1).abs().max() < 1e-6
        assert ((pre > 0) & (pre < 1)).all() and ((post > 0) & (post < 2)).all()


def test_mhc_starts_as_a_plain_residual_on_identical_branches():
    """At initialisation Hpre reads branch (layer mod n) with weights summing to 1, Hpost = 1 and
    Hres is doubly stochastic: on identical branches the block is a pre-norm residual."""
    from reference_model.hyper import ManifoldHyperConnection

    hc = ManifoldHyperConnection(16, 4, 5, 20, 1e-6)
    H = torch.randn(2, 3, 1, 16).expand(2, 3, 4, 16)
    pre, post, res = hc.mappings(H)
    assert torch.allclose(pre.sum(-1), torch.ones(2, 3)) and int(pre[0, 0].argmax()) == 5 % 4
    assert torch.allclose(post, torch.ones_like(post))
    assert torch.allclose(res.sum(-1), torch.ones(2, 3, 4)) and torch.allclose(res.sum(-2), torch.ones(2, 3, 4))
    x, residual, post = hc.width(H)
    torch.testing.assert_close(x, H[:, :, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(residual, H, atol=1e-5, rtol=0)
