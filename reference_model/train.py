"""A tiny trainer on the bundled corpus: next-token prediction with the paper's optimiser split.

Engram tables: Adam with 5x the base learning rate and no weight decay (ENGRAM.md 3, [paper]);
everything else: AdamW (the paper uses Muon for the backbone; AdamW is the stand-in ENGRAM.md
allows). After every step each MoE layer's router bias moves by
``bias_update_rate * sign(mean_load - load)`` (DeepSeek-V3 2.1.2). Batches are random windows
of the tokenised corpus (fixed seed). Simplified: constant learning rate after a short linear
warm-up, no gradient accumulation, no evaluation split.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from planner.specs.model import ModelSpec
from reference_model.compression import Compressor
from reference_model.model import EngramModel
from reference_model.moe import MoE

ENGRAM_LR_MULT = 5.0  # [paper] tables use 5x the base learning rate


@lru_cache(maxsize=2)
def corpus_ids(tokenizer_path: str | None = None) -> np.ndarray:
    """The bundled corpus tokenised with the (bundled) tokenizer, int64."""
    from reference_model.data.corpus import corpus_text
    from reference_model.tokenizer import load_tokenizer

    return np.asarray(load_tokenizer(tokenizer_path).encode(corpus_text()).ids, dtype=np.int64)


# Parameters that weight decay must leave alone, by the name they have in their module: a
# decayed norm gain or identity mix is pulled toward 0, away from what it must represent.
NO_DECAY = frozenset({
    "bias", "key_bias",  # biases
    "key_norm", "query_norm", "conv_norm",  # Engram's per-branch RMSNorm gains [M, D]
    "static_alpha", "static_beta", "alpha_scale", "beta_scale",  # dynamic HC mixes and gates
    "pre_bias", "post_bias", "res_bias", "pre_gate", "post_gate", "res_gate",  # mHC's
})


def parameter_groups(model: EngramModel) -> dict[str, list[tuple[str, torch.nn.Parameter]]]:
    """Every parameter in one of three groups, by name and owning module, not by shape:
    ``tables`` (Engram embedding tables: the sparse optimiser), ``no_decay`` (RMSNorm gains,
    biases, hyper-connection mixes: :data:`NO_DECAY`), ``decay`` (weight matrices and
    projections: linear, convolution, embedding, expert and router weights, the key projection,
    the dynamic HC projections and mHC's phi)."""
    from reference_model.engram import EngramModule
    from reference_model.layers import RMSNorm

    tables = {id(m.table.weight) for m in model.modules() if isinstance(m, EngramModule) and m.table is not None}
    groups: dict[str, list] = {"tables": [], "decay": [], "no_decay": []}
    for module_name, module in model.named_modules():
        for leaf, param in module.named_parameters(recurse=False):
            name = f"{module_name}.{leaf}" if module_name else leaf
            if id(param) in tables:
                groups["tables"].append((name, param))
            elif isinstance(module, RMSNorm) or leaf in NO_DECAY:
                groups["no_decay"].append((name, param))
            else:
                groups["decay"].append((name, param))
    return groups


def optimizers(model: EngramModel, lr: float, weight_decay: float) -> list[torch.optim.Optimizer]:
    """[AdamW for the backbone (decay on the ``decay`` group of :func:`parameter_groups`
    only), Adam (5x lr, no decay) for the Engram tables if any]."""
    groups = parameter_groups(model)
    params = {k: [p for _, p in v] for k, v in groups.items()}
    out: list[torch.optim.Optimizer] = [torch.optim.AdamW(
        [{"params": params["decay"], "weight_decay": weight_decay},
         {"params": params["no_decay"], "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.95),
    )]
    if params["tables"]:
        out.append(torch.optim.Adam(params["tables"], lr=lr * ENGRAM_LR_MULT, betas=(0.9, 0.95), weight_decay=0.0))
    return out


def train(spec: ModelSpec, steps: int, *, batch_size: int = 8, seq_len: int = 64, lr: float = 3e-3,
          weight_decay: float = 0.1, warmup_steps: int = 10, seed: int = 0, dtype: str | None = None,
          compress: bool = True, model: EngramModel | None = None,
          on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train ``spec`` (or the given ``model``) for ``steps`` steps; returns the loss of each step.

    ``dtype`` overrides the spec's weight dtype (``"fp32"`` for CPU training of a bf16 spec).
    ``compress`` builds the model with the bundled tokenizer's compressor (ENGRAM.md 2.1).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if seq_len < 2 or seq_len > spec.max_seq_len:
        raise ValueError(f"seq_len = {seq_len} must lie in [2, max_seq_len = {spec.max_seq_len}]")
    ids = corpus_ids()
    if spec.vocab_size != 2048:
        raise ValueError(
            f"vocab_size = {spec.vocab_size} but the bundled tokenizer has 2048 ids; train a "
            "spec with vocab_size 2048 (e.g. tiny)"
        )
    if dtype is not None:
        spec = spec.model_copy(update={"dtype": dtype})
    torch.manual_seed(seed)
    if model is None:
        model = EngramModel(spec, Compressor.from_file() if compress else None)
    model.train()
    opts = optimizers(model, lr, weight_decay)
    base_lrs = [[g["lr"] for g in o.param_groups] for o in opts]
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    rng = np.random.default_rng(seed)
    losses = []
    for step in range(steps):
        starts = rng.integers(0, len(ids) - seq_len - 1, size=batch_size)
        batch = torch.from_numpy(np.stack([ids[s:s + seq_len + 1] for s in starts])).to(model.device)
        scale = min(1.0, (step + 1) / max(1, warmup_steps))
        for opt, lrs in zip(opts, base_lrs):
            for group, base in zip(opt.param_groups, lrs):
                group["lr"] = base * scale
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for opt in opts:
            opt.step()
        for moe in moes:
            moe.update_bias()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, losses[-1])
    return losses
