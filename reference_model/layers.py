"""Small building blocks shared by the model files: RMSNorm, SwiGLU, rotary embeddings, dtypes.

Legend: B = batch, T = positions, H = heads, D = d_model, R = rotary width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Model dtypes the reference model computes in. fp8 has no CPU matmul in torch: rejected.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INIT_STD = 0.02  # GPT-2 / nanoGPT initialisation


def torch_dtype(name: str, what: str) -> torch.dtype:
    if name not in TORCH_DTYPES:
        raise ValueError(
            f"{what} = {name!r} is not supported by the reference model (use one of "
            f"{sorted(TORCH_DTYPES)}; fp8 has no portable torch matmul)"
        )
    return TORCH_DTYPES[name]


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm (Zhang and Sennrich 2019) in float32, cast back; ``weight`` broadcasts over x."""
    x32 = x.float()
    y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (y * weight.float()).to(x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned scale, no bias (as in Llama and DeepSeek-V3)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)`` (Shazeer 2020), no biases: 3 * d * width parameters."""

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.w1 = nn.Linear(d_model, width, bias=False)
        self.w3 = nn.Linear(d_model, width, bias=False)
        self.w2 = nn.Linear(width, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


def rope_tables(rot_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [max_len, rot_dim / 2] (Su et al. 2021, RoFormer eq. 34)."""
    if rot_dim % 2:
        raise ValueError(f"rotary width {rot_dim} must be even")
    inv_freq = 1.0 / (theta ** (torch.arange(0, rot_dim, 2, dtype=torch.float64) / rot_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x_BTHR: torch.Tensor, cos_TR: torch.Tensor, sin_TR: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (first half, second half) of the last dim by the position's angles
    (the "rotate half" layout of GPT-NeoX and Llama)."""
    half = x_BTHR.shape[-1] // 2
    x1, x2 = x_BTHR[..., :half].float(), x_BTHR[..., half:].float()
    cos, sin = cos_TR[None, :, None, :], sin_TR[None, :, None, :]
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x_BTHR.dtype)


def attention_mask(q_len: int, k_len: int, start: int, device) -> torch.Tensor | None:
    """Boolean [q_len, k_len] mask: query i (absolute position start + i) sees keys <= it.
    None where no mask is needed (the fast paths of scaled_dot_product_attention): a plain
    causal square (``is_causal``), or one query after all the keys (a decode step sees them all)."""
    if (start == 0 and q_len == k_len) or (q_len == 1 and k_len == start + 1):
        return None
    q_pos = torch.arange(start, start + q_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos
