"""The tiny trainer: the loss of the tiny model falls on the bundled corpus within a few dozen
CPU steps, the optimiser split puts the Engram tables in their own Adam, and weight decay
reaches weight matrices only."""

import pytest

import torch

from planner.loading import load_model
from reference_model.model import EngramModel
from reference_model.train import ENGRAM_LR_MULT, optimizers, parameter_groups, train


def test_loss_falls():
    losses = train(load_model("tiny"), 40, batch_size=4, seq_len=32, dtype="fp32")
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert first > 7.0  # about ln(2048) = 7.62 at init
    assert last < first - 1.0, (first, last)


def test_optimizer_split():
    model = EngramModel(load_model("tiny").model_copy(update={"dtype": "fp32"}))
    backbone, tables = optimizers(model, lr=1e-3, weight_decay=0.1)
    assert type(tables) is torch.optim.Adam and tables.param_groups[0]["lr"] == 1e-3 * ENGRAM_LR_MULT
    assert tables.param_groups[0]["weight_decay"] == 0.0
    table_ids = {id(b.engram.table.weight) for b in model.blocks if b.engram is not None}
    assert {id(p) for p in tables.param_groups[0]["params"]} == table_ids
    assert type(backbone) is torch.optim.AdamW
    n_backbone = sum(p.numel() for g in backbone.param_groups for p in g["params"])
    assert n_backbone + sum(p.numel() for p in tables.param_groups[0]["params"]) == sum(
        p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["tiny", "tiny-gqa"])
def test_weight_decay_by_name_spares_norms_biases_and_mixes(name):
    """Norm gains, biases and hyper-connection mixes are not decayed whatever their shape (the
    Engram key/query/conv norms are [M, D], the HC identity mix [M, M + 1]); weight matrices are."""
    model = EngramModel(load_model(name).model_copy(update={"dtype": "fp32"}))
    groups = {k: dict(v) for k, v in parameter_groups(model).items()}
    named = dict(model.named_parameters())
    assert sorted(n for g in groups.values() for n in g) == sorted(named)  # each in exactly one group
    backbone = optimizers(model, lr=1e-3, weight_decay=0.1)[0]
    decay_of = {id(p): g["weight_decay"] for g in backbone.param_groups for p in g["params"]}
    engram = next(i for i, b in enumerate(model.blocks) if b.engram is not None)
    spared = [f"blocks.{engram}.engram.{k}" for k in ("key_norm", "query_norm", "conv_norm", "key_bias",
                                                       "value_proj.bias")]
    spared += ["blocks.0.attn_norm.weight", "blocks.0.ffn_norm.weight"]
    decayed = ["embed.weight", "head.weight", f"blocks.{engram}.engram.key_weight",
               f"blocks.{engram}.engram.value_proj.weight", f"blocks.{engram}.engram.conv.weight",
               "blocks.0.attn.wo.weight", "blocks.0.ffn.w2.weight" if name == "tiny" else "blocks.0.ffn.w1.weight"]
    if model.spec.hc_mult > 1:  # mHC (the default): biases and gates spared, the projection decayed
        spared += [f"blocks.0.hc_attn.{k}" for k in ("pre_bias", "post_bias", "res_bias", "pre_gate", "post_gate",
                                                      "res_gate")]
        decayed += ["blocks.0.hc_attn.phi"]
    if model.spec.attention.kind == "mla":
        spared += ["blocks.0.attn.q_norm.weight", "blocks.0.attn.kv_norm.weight"]
    for n in spared:
        assert n in groups["no_decay"] and decay_of[id(named[n])] == 0.0, n
    for n in decayed:
        assert n in groups["decay"] and decay_of[id(named[n])] == 0.1, n
    assert all(n.endswith("engram.table.weight") for n in groups["tables"]) and groups["tables"]


def test_weight_decay_spares_the_dynamic_hc_mixes():
    spec = load_model("tiny").model_copy(update={"dtype": "fp32", "hc_kind": "dynamic"})
    groups = {k: dict(v) for k, v in parameter_groups(EngramModel(spec)).items()}
    for k in ("static_alpha", "static_beta", "alpha_scale", "norm.weight"):
        assert f"blocks.0.hc_attn.{k}" in groups["no_decay"], k
    assert "blocks.0.hc_attn.dynamic_alpha" in groups["decay"]
