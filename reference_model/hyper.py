"""Hyper-connections (Zhu et al. 2024, "Hyper-Connections", arXiv 2409.19606), dynamic form.

The residual stream is ``M = hc_mult`` branches ``H`` [B, T, M, D]. Around a sublayer ``F``
(attention or FFN, each with its own pre-norm):

    Hn    = RMSNorm(H)                                        (one norm per wrapper)
    alpha = s_a * tanh(Hn W_a) + A        [M, M+1]  (eq. 11; A static, W_a: D -> M+1)
    beta  = s_b * tanh(Hn w_b) + b        [M]       (eq. 10; b static,  w_b: D -> 1)
    x     = sum_m alpha[m, 0] H[m]                  (width connection: the sublayer input)
    H'    = sum_m alpha[m, 1:] H[m] + beta (x) F(x) (depth connection)

That is ``M(M+1) + M + D(M+1) + D + D + 2`` parameters, the count of
``planner.accounting.hyper_connection_params``. Initialisation follows the paper (section 3.2):
``A = [e_(layer mod M) | I]``, ``b = 1``, ``W_a = w_b = 0`` so the model starts as a plain
pre-norm transformer on each branch; ``s_a = s_b = 0.01`` (our choice; the paper leaves the
scalars' initial value to the implementation). Simplified: no manifold (mHC) constraint on A.
"""

from __future__ import annotations

import torch
from torch import nn

from reference_model.layers import RMSNorm


class HyperConnection(nn.Module):
    """One dynamic hyper-connection wrapper around one sublayer."""

    def __init__(self, d_model: int, hc_mult: int, layer_index: int, eps: float):
        super().__init__()
        M = hc_mult
        static_alpha = torch.zeros(M, M + 1)
        static_alpha[layer_index % M, 0] = 1.0
        static_alpha[:, 1:] = torch.eye(M)
        self.static_alpha = nn.Parameter(static_alpha)
        self.static_beta = nn.Parameter(torch.ones(M))
        self.dynamic_alpha = nn.Parameter(torch.zeros(d_model, M + 1))
        self.dynamic_beta = nn.Parameter(torch.zeros(d_model))
        self.alpha_scale = nn.Parameter(torch.tensor(0.01))
        self.beta_scale = nn.Parameter(torch.tensor(0.01))
        self.norm = RMSNorm(d_model, eps)

    def width(self, H_BTMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sublayer input [B, T, D], residual branches [B, T, M, D], beta [B, T, M])."""
        Hn = self.norm(H_BTMD)
        alpha_BTMX = self.alpha_scale * torch.tanh(Hn @ self.dynamic_alpha) + self.static_alpha
        beta_BTM = self.beta_scale * torch.tanh(Hn @ self.dynamic_beta) + self.static_beta
        mixed_BTXD = torch.einsum("btmx,btmd->btxd", alpha_BTMX, H_BTMD)
        return mixed_BTXD[:, :, 0], mixed_BTXD[:, :, 1:], beta_BTM

    @staticmethod
    def depth(out_BTD: torch.Tensor, residual_BTMD: torch.Tensor, beta_BTM: torch.Tensor) -> torch.Tensor:
        return residual_BTMD + beta_BTM.unsqueeze(-1) * out_BTD.unsqueeze(2)
