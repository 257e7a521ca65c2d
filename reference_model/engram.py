"""The Engram module (ENGRAM.md section 3; the public demo's ``Engram``, ``ShortConv`` and
``MultiHeadEmbedding``): fuse looked-up n-gram rows into every residual branch.

Legend: B = batch, T = positions, M = hc_mult branches, D = d_model, K = rows per token
((N-1) x heads), E = row width d_head, F = d_mem = K x E, W = conv window (kernel-1) x N.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from planner.specs.model import ModelSpec
from reference_model.layers import INIT_STD, TORCH_DTYPES, rms_norm, torch_dtype


class EngramModule(nn.Module):
    """Gated fusion of hashed n-gram memory into an ``M``-branch residual stream.

    For token t with rows e_t [F] (the K looked-up rows concatenated):

        v    = W_V e_t + b_V                                   (shared by the branches)
        k_m  = W_K^m e_t + b_K^m
        s_m  = <RMSNorm_q^m(h_m), RMSNorm_k^m(k_m)> / sqrt(D)
        a_m  = sigmoid(sign(s) sqrt(max(|s|, 1e-6)))  (default; ``gate: paper`` -> sigmoid(s))
        u_m  = a_m v
        Y    = u + SiLU(conv(RMSNorm^m(u)))   depthwise causal conv over M*D channels,
                                              kernel ``kernel_size``, dilation N, no bias,
                                              zero-initialised (paper: starts as gated identity)
        Y    = u                              with ``kernel_size`` 0 (no conv and no conv norm,
                                              DeepSeek-V4.1's form); the conv state is empty

    ``table`` is an ``nn.Embedding`` of ``sum(primes)`` rows x E in the Engram dtype (the fused
    multi-head table), or None when ``materialize_tables=False`` (rows then come from a
    provider). Decoding carries the last W normalised ``u`` positions as conv state, which
    equals the zero left-padding of a full forward at the sequence start.

    Tables are plain rows in a torch dtype: fp8 rows and block-scaled rows (``scale_block``,
    DeepSeek-V4.1-Flash's E4M3 + UE8M0 format) are refused, since torch has no portable fp8
    matmul and the module would not store the scales the planner counts.
    """

    def __init__(self, spec: ModelSpec, layer_id: int, table_rows: int, materialize_table: bool):
        super().__init__()
        e = spec.engram
        assert e is not None
        self.layer_id, self.d_model, self.hc_mult, self.eps = layer_id, spec.d_model, spec.hc_mult, spec.norm_eps
        self.paper_gate = e.gate == "paper"
        self.kernel_size, self.dilation = e.kernel_size, e.max_ngram
        self.table_rows, self.d_head, self.rows_per_token = table_rows, e.d_head, e.rows_per_token
        if e.dtype not in TORCH_DTYPES:
            raise ValueError(
                f"model.engram.dtype = {e.dtype!r} is not supported by the reference model: it builds "
                f"tables in {sorted(TORCH_DTYPES)} only (fp8 rows are accounted and simulated by the "
                "planner, not built in torch); use e.g. engram.dtype: bf16 and no scale_block"
            )
        if e.scale_block is not None:
            raise ValueError(
                f"model.engram.scale_block = {e.scale_block} is not supported by the reference model: "
                "its tables hold unscaled rows; set model.engram.scale_block to null"
            )
        self.table_dtype = torch_dtype(e.dtype, "model.engram.dtype")
        M, D, d_mem = spec.hc_mult, spec.d_model, e.d_mem
        if materialize_table:
            self.table = nn.Embedding(table_rows, e.d_head)
            nn.init.normal_(self.table.weight, std=INIT_STD)
        else:
            self.table = None
        self.value_proj = nn.Linear(d_mem, D, bias=True)
        self.key_weight = nn.Parameter(torch.randn(M, D, d_mem) * INIT_STD)
        self.key_bias = nn.Parameter(torch.zeros(M, D))
        self.key_norm = nn.Parameter(torch.ones(M, D))
        self.query_norm = nn.Parameter(torch.ones(M, D))
        if e.kernel_size:
            self.conv_norm = nn.Parameter(torch.ones(M, D))
            self.conv = nn.Conv1d(M * D, M * D, kernel_size=e.kernel_size, dilation=e.max_ngram,
                                  groups=M * D, bias=False)
            nn.init.zeros_(self.conv.weight)
        else:  # no short convolution: Y = u
            self.conv_norm = self.conv = None

    @property
    def conv_window(self) -> int:
        """Past positions the causal conv reads: (kernel - 1) x dilation (0 without a conv)."""
        return (self.kernel_size - 1) * self.dilation if self.kernel_size else 0

    def gather(self, row_ids_BTK: torch.Tensor) -> torch.Tensor:
        """Rows [B, T, K, E] from the module's own table."""
        if self.table is None:
            raise ValueError(
                f"Engram layer {self.layer_id} was built with materialize_tables=False: pass "
                "engram_rows (from a row provider) to forward"
            )
        return self.table(row_ids_BTK)

    def gate(self, h_BTMD: torch.Tensor, e_BTF: torch.Tensor) -> torch.Tensor:
        """a [B, T, M, 1]."""
        k_BTMD = torch.einsum("btf,mdf->btmd", e_BTF, self.key_weight) + self.key_bias
        s_BTM = (rms_norm(h_BTMD, self.query_norm, self.eps) * rms_norm(k_BTMD, self.key_norm, self.eps)).sum(-1)
        s_BTM = s_BTM / math.sqrt(self.d_model)
        if not self.paper_gate:
            # The demo's signed square root (ENGRAM.md 3): sign(s) sqrt(max(|s|, 1e-6)).
            s_BTM = s_BTM.abs().clamp_min(1e-6).sqrt() * s_BTM.sign()
        return torch.sigmoid(s_BTM).unsqueeze(-1)

    def forward(self, h_BTMD: torch.Tensor, rows_BTKE: torch.Tensor,
                conv_state_BWC: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(Y [B, T, M, D], new conv state [B, W, M*D]). ``conv_state`` holds the previous W
        normalised positions (None: sequence start, zeros)."""
        B, T, M, D = h_BTMD.shape
        e_BTF = rows_BTKE.reshape(B, T, -1).to(h_BTMD.dtype)
        v_BTD = self.value_proj(e_BTF)
        u_BTMD = self.gate(h_BTMD, e_BTF) * v_BTD.unsqueeze(2)
        if self.conv is None:  # kernel_size 0: no conv, an empty state
            return u_BTMD, u_BTMD.new_zeros(B, 0, M * D)

        n_BTC = rms_norm(u_BTMD, self.conv_norm, self.eps).reshape(B, T, M * D)
        if conv_state_BWC is None:
            conv_state_BWC = n_BTC.new_zeros(B, self.conv_window, M * D)
        window_BXC = torch.cat([conv_state_BWC.to(n_BTC.dtype), n_BTC], dim=1)
        conv_BCT = F.conv1d(window_BXC.transpose(1, 2), self.conv.weight, dilation=self.dilation, groups=M * D)
        y_BTMD = u_BTMD + F.silu(conv_BCT.transpose(1, 2)).reshape(B, T, M, D)
        return y_BTMD, window_BXC[:, -self.conv_window:] if self.conv_window else window_BXC[:, :0]
