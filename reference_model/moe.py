"""DeepSeekMoE feed-forward (DeepSeek-V3 section 2.1.2): shared experts plus top-k routed
SwiGLU experts with auxiliary-loss-free load balancing.

Legend: S = tokens (batch x positions, flattened), D = d_model, E = routed experts,
K = top_k, W = expert width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from planner.specs.model import MoESpec
from reference_model.layers import INIT_STD, SwiGLU


class MoE(nn.Module):
    """Shared + routed experts.

    Routing (DeepSeek-V3 eqs. 15-16): affinity ``s = sigmoid(x W_r^T)``; experts are chosen by
    top-k of ``s + b`` where ``b`` is a per-expert bias buffer that only steers selection; the
    chosen experts' gates are their ``s`` normalised to sum 1. After each training step
    :meth:`update_bias` moves ``b`` by ``rate * sign(mean_load - load)`` (section 2.1.2).
    The shared experts are one SwiGLU of width ``n_shared * W`` (the same parameters and output
    as separate experts, as DeepSeek-V3's code does). Simplified: no node-limited routing, no
    routed scaling factor, no sequence-wise balance loss.
    Dispatch sorts the (token, expert) pairs by expert and runs each expert once on its
    contiguous slice, scattering back with ``index_add_``.
    """

    def __init__(self, d_model: int, moe: MoESpec):
        super().__init__()
        if moe.routed_expert_dtype is not None:
            raise ValueError(f"model.ffn.moe.routed_expert_dtype = {moe.routed_expert_dtype!r} is not supported by the "
                             "reference model (its experts are in the model dtype): set it to null")
        self.n_experts, self.top_k, self.rate = moe.n_routed_experts, moe.top_k, moe.bias_update_rate
        E, W = moe.n_routed_experts, moe.expert_width
        self.router = nn.Parameter(torch.randn(E, d_model) * INIT_STD)
        self.w1 = nn.Parameter(torch.randn(E, W, d_model) * INIT_STD)
        self.w3 = nn.Parameter(torch.randn(E, W, d_model) * INIT_STD)
        self.w2 = nn.Parameter(torch.randn(E, d_model, W) * INIT_STD)
        self.shared = SwiGLU(d_model, moe.n_shared_experts * W) if moe.n_shared_experts else None
        self.register_buffer("router_bias", torch.zeros(E))
        # Tokens sent to each expert since the last bias update (training only).
        self.register_buffer("load", torch.zeros(E), persistent=False)

    def route(self, x_SD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(expert ids [S, K], gates [S, K]) for each token."""
        scores_SE = torch.sigmoid(F.linear(x_SD, self.router).float())
        _, idx_SK = torch.topk(scores_SE + self.router_bias, self.top_k, dim=-1)
        gates_SK = scores_SE.gather(-1, idx_SK)
        return idx_SK, gates_SK / gates_SK.sum(-1, keepdim=True)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, T, D = x_BTD.shape
        x_SD = x_BTD.reshape(-1, D)
        idx_SK, gates_SK = self.route(x_SD)
        flat_expert = idx_SK.reshape(-1)
        order = torch.argsort(flat_expert, stable=True)
        token_of = order // self.top_k  # the token each sorted (token, expert) pair came from
        counts = torch.bincount(flat_expert, minlength=self.n_experts)
        if self.training:
            self.load += counts.to(self.load.dtype)
        gate_sorted = gates_SK.reshape(-1)[order].to(x_SD.dtype)
        out_SD = torch.zeros_like(x_SD)
        start = 0
        for e, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            tok = token_of[start:start + n]
            xe = x_SD[tok]
            he = F.silu(xe @ self.w1[e].t()) * (xe @ self.w3[e].t())
            out_SD.index_add_(0, tok, (he @ self.w2[e].t()) * gate_sorted[start:start + n, None])
            start += n
        if self.shared is not None:
            out_SD = out_SD + self.shared(x_SD)
        return out_SD.view(B, T, D)

    @torch.no_grad()
    def update_bias(self) -> None:
        """Auxiliary-loss-free balancing step: raise the bias of under-loaded experts, lower
        the over-loaded ones, then reset the load count."""
        if self.load.sum() > 0:
            self.router_bias += self.rate * torch.sign(self.load.mean() - self.load)
        self.load.zero_()
