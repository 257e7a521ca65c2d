"""The tiny trainer: the loss of the tiny model falls on the bundled corpus within a few dozen
CPU steps, and the optimiser split puts the Engram tables in their own Adam."""

import torch

from planner.loading import load_model
from reference_model.model import EngramModel
from reference_model.train import ENGRAM_LR_MULT, optimizers, train


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
