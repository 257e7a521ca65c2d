"""Hyper-connections: mHC (Xie et al. 2025, "mHC: Manifold-Constrained Hyper-Connections",
arXiv 2512.24880; the paper's backbones, ``hc_kind: mhc``, the default) and the dynamic form it
refines (Zhu et al. 2024, "Hyper-Connections", arXiv 2409.19606; ``hc_kind: dynamic``).

mHC
---
The residual stream is ``n = hc_mult`` branches ``x`` [B, T, n, C]. Around a sublayer ``F``:

    x~    = vec(x)                                   [1, n C] (the branches flattened)
    r     = 1 / RMS(x~)                              (RMSNorm without gain: a gain is phi's scale)
    H~pre = a_pre  * r (x~ phi_pre)  + b_pre         [n]
    H~post= a_post * r (x~ phi_post) + b_post        [n]
    H~res = a_res  * r mat(x~ phi_res) + b_res       [n, n]
    Hpre  = sigmoid(H~pre), Hpost = 2 sigmoid(H~post), Hres = SinkhornKnopp(H~res)
    x'    = Hres x + Hpost^T F(Hpre x)

``SinkhornKnopp`` takes ``exp`` of its input and alternates row and column normalisation
``sinkhorn_iters`` times (the paper: 20), projecting onto the doubly-stochastic matrices (the
Birkhoff polytope): the residual mixing keeps the stream's mean and never amplifies it, which
is what makes deep wide streams stable. The norm is applied after the projection (the paper's
fused kernel does the same: ``(x~ phi) / RMS(x~)``). Parameters per wrapper:
``n C (n^2 + 2 n)`` (phi) ``+ n^2 + 2 n`` (biases) ``+ 3`` (gates), the count of
``planner.accounting.hyper_connection_params``. Initialisation (ours; the paper leaves it to
the implementation): ``phi = 0``, gates ``0.01``; ``b_pre`` reads branch ``layer mod n`` at
``1 - (n - 1) 0.02`` and the others at ``0.02`` (weights summing to 1; like dynamic HC's one-hot
width connection it breaks the branches' symmetry: with every bias uniform the gradients
would keep the branches identical forever); ``b_post = 0`` (``Hpost = 1``: each branch receives
``F``'s output once); ``b_res = 2`` on the diagonal and 0 off it. The block starts as a plain
pre-norm transformer on identical branches (any doubly-stochastic ``Hres`` maps identical
branches to themselves). Why not ``Hres`` nearer the identity: Sinkhorn-Knopp converges at a
rate set by how far the matrix is from a permutation, so with ``exp(-8)`` off the diagonal a
trained model's rows are still 3e-5 from summing to 1 after 20 rounds; with ``e^-2`` they are
within 1e-6 (``tests/test_reference_model.py``).

Dynamic HC
----------

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
scalars' initial value to the implementation).
"""

from __future__ import annotations

import torch
from torch import nn

from reference_model.layers import RMSNorm

RES_DIAGONAL = 2.0  # b_res on the diagonal (0 off it): see the module docstring
PRE_OFF = 0.02  # Hpre of the branches a sublayer does not mainly read, at initialisation


def sinkhorn_knopp(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """``[..., n, n]`` logits -> doubly-stochastic matrices: ``exp``, then ``iters`` rounds of
    row then column normalisation (entries > 0; columns sum to 1 exactly, rows to within the
    iteration's error, which falls geometrically)."""
    m = torch.exp(logits - logits.amax(dim=(-2, -1), keepdim=True))
    for _ in range(iters):
        m = m / m.sum(dim=-1, keepdim=True)
        m = m / m.sum(dim=-2, keepdim=True)
    return m


class ManifoldHyperConnection(nn.Module):
    """One mHC wrapper around one sublayer (see the module docstring). Same interface as
    :class:`HyperConnection`: :meth:`width` then :meth:`depth`."""

    def __init__(self, d_model: int, hc_mult: int, layer_index: int, sinkhorn_iters: int, eps: float):
        super().__init__()
        n = hc_mult
        self.n, self.iters, self.eps = n, sinkhorn_iters, eps
        self.phi = nn.Parameter(torch.zeros(n * d_model, n * n + 2 * n))
        pre = torch.full((n,), PRE_OFF)
        pre[layer_index % n] = 1.0 - (n - 1) * PRE_OFF
        self.pre_bias = nn.Parameter(torch.logit(pre))
        self.post_bias = nn.Parameter(torch.zeros(n))
        self.res_bias = nn.Parameter(RES_DIAGONAL * torch.eye(n))
        self.pre_gate = nn.Parameter(torch.tensor(0.01))
        self.post_gate = nn.Parameter(torch.tensor(0.01))
        self.res_gate = nn.Parameter(torch.tensor(0.01))

    def mappings(self, H_BTMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(Hpre [B, T, n], Hpost [B, T, n], Hres [B, T, n, n]) of each token."""
        B, T, n, D = H_BTMD.shape
        flat_BTF = H_BTMD.reshape(B, T, n * D)
        rms_BT1 = torch.rsqrt(flat_BTF.float().pow(2).mean(-1, keepdim=True) + self.eps).to(flat_BTF.dtype)
        proj_BTP = (flat_BTF @ self.phi) * rms_BT1
        pre = torch.sigmoid(self.pre_gate * proj_BTP[..., :n] + self.pre_bias)
        post = 2.0 * torch.sigmoid(self.post_gate * proj_BTP[..., n:2 * n] + self.post_bias)
        res_logits = self.res_gate * proj_BTP[..., 2 * n:].reshape(B, T, n, n) + self.res_bias
        return pre, post, sinkhorn_knopp(res_logits.float(), self.iters).to(H_BTMD.dtype)

    def width(self, H_BTMD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sublayer input ``Hpre x`` [B, T, D], mixed residual ``Hres x`` [B, T, n, D], Hpost [B, T, n])."""
        pre_BTM, post_BTM, res_BTMM = self.mappings(H_BTMD)
        x_BTD = torch.einsum("btm,btmd->btd", pre_BTM, H_BTMD)
        residual_BTMD = torch.einsum("btij,btjd->btid", res_BTMM, H_BTMD)
        return x_BTD, residual_BTMD, post_BTM

    @staticmethod
    def depth(out_BTD: torch.Tensor, residual_BTMD: torch.Tensor, post_BTM: torch.Tensor) -> torch.Tensor:
        """``Hres x + Hpost^T F(.)``: each branch gets the sublayer's output at its own weight."""
        return residual_BTMD + post_BTM.unsqueeze(-1) * out_BTD.unsqueeze(2)


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

    depth = staticmethod(ManifoldHyperConnection.depth)  # the same sum, beta in Hpost's place
