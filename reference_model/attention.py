"""Attention selected by the spec: MLA as in DeepSeek-V3, or grouped-query attention; both with
a KV cache for incremental decoding.

Legend: B = batch, T = new positions, S = cached + new positions, H = query heads,
G = key/value heads (GQA), D = d_model, C = kv_lora_rank (MLA latent), R = rotary width,
N = nope (non-rotary) width, V = value head width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from planner.specs.model import GQAAttention, MLAAttention, ModelSpec
from reference_model.layers import RMSNorm, apply_rope, attention_mask, rope_tables


class LayerKVCache:
    """Preallocated per-layer cache. GQA keeps K and V per KV head; MLA keeps the normalised
    latent and the rotated shared RoPE key (``planner.accounting.kv_cache_bytes_per_token``)."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype, device):
        self.tensors = {name: torch.zeros(shape, dtype=dtype, device=device) for name, shape in shapes.items()}

    def append(self, start: int, **new: torch.Tensor) -> dict[str, torch.Tensor]:
        """Write the new positions (dim 1) at ``start`` and return everything up to their end."""
        out = {}
        for name, value in new.items():
            store = self.tensors[name]
            end = start + value.shape[1]
            if end > store.shape[1]:
                raise ValueError(f"KV cache holds {store.shape[1]} positions; writing up to {end}")
            store[:, start:end] = value
            out[name] = store[:, :end]
        return out


class GQA(nn.Module):
    """Grouped-query attention with RoPE on the whole head (Ainslie et al. 2023)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        att = spec.attention
        assert isinstance(att, GQAAttention)
        self.n_heads, self.n_kv_heads, self.head_dim = att.n_heads, att.n_kv_heads, spec.head_dim
        d = spec.d_model
        self.wq = nn.Linear(d, att.n_heads * self.head_dim, bias=att.qkv_bias)
        self.wk = nn.Linear(d, att.n_kv_heads * self.head_dim, bias=att.qkv_bias)
        self.wv = nn.Linear(d, att.n_kv_heads * self.head_dim, bias=att.qkv_bias)
        self.wo = nn.Linear(att.n_heads * self.head_dim, d, bias=False)
        cos, sin = rope_tables(self.head_dim, spec.max_seq_len, spec.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        return {"k": (batch, max_len, self.n_kv_heads, self.head_dim),
                "v": (batch, max_len, self.n_kv_heads, self.head_dim)}

    def forward(self, x_BTD: torch.Tensor, start: int, cache: LayerKVCache | None) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]
        q_BTHE = apply_rope(self.wq(x_BTD).view(B, T, self.n_heads, self.head_dim), cos, sin)
        k_BTGE = apply_rope(self.wk(x_BTD).view(B, T, self.n_kv_heads, self.head_dim), cos, sin)
        v_BTGE = self.wv(x_BTD).view(B, T, self.n_kv_heads, self.head_dim)
        if cache is not None:
            full = cache.append(start, k=k_BTGE, v=v_BTGE)
            k_BTGE, v_BTGE = full["k"], full["v"]
        mask = attention_mask(T, k_BTGE.shape[1], start, x_BTD.device)
        out = F.scaled_dot_product_attention(
            q_BTHE.transpose(1, 2), k_BTGE.transpose(1, 2), v_BTGE.transpose(1, 2),
            attn_mask=mask, is_causal=mask is None and T > 1,
            enable_gqa=self.n_heads != self.n_kv_heads,
        )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))


class MLA(nn.Module):
    """Multi-head latent attention (DeepSeek-V2 section 2.1, DeepSeek-V3 section 2.1.1).

    Queries: ``q = W_qb RMSNorm(W_qa x)`` (or ``W_q x`` without query compression), split into a
    no-position part and a RoPE part. Keys/values: ``[c, k_rope] = W_kva x``; ``c`` is
    RMS-normalised and expanded by ``W_kvb`` into per-head no-position keys and values; the
    rotated ``k_rope`` is shared by all heads. Only ``c`` and ``k_rope`` are cached.

    Two forms, the same values (as DeepSeek-V3 inference and vLLM/SGLang serve MLA):

    * prefill and training (no cache, or several new positions): the *expanded* form, ``W_kvb``
      applied to every key's latent, then per-head attention over ``N + R`` wide keys and ``V``
      wide values: ``2 H (N + R + V)`` FLOP per (query, key) pair;
    * decode (one new position per sequence against the cache): the *absorbed* form. With
      ``W_kvb = [W_UK; W_UV]`` per head, ``q_nope . (W_UK c) = (W_UK^T q_nope) . c`` and
      ``sum_s p_s W_UV c_s = W_UV (sum_s p_s c_s)``: fold ``W_UK`` into the query and ``W_UV``
      into the output and attend straight over the cached ``[c, k_rope]`` (one "KV head" of
      width ``C + R`` shared by all heads, values ``c``): ``2 H (C + R) + 2 H C`` FLOP per pair;
      the two absorb matmuls of a token cost what expanding its latent would (``2 H C (N + V)``).
      The cache is never re-expanded (DeepSeek-V2 section 2.1.2; ``planner.costmodel`` counts
      both forms).

    Simplified: no YaRN scaling.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        att = spec.attention
        assert isinstance(att, MLAAttention)
        d, h = spec.d_model, att.n_heads
        self.n_heads, self.nope, self.rope, self.v_dim = h, att.qk_nope_head_dim, att.qk_rope_head_dim, att.v_head_dim
        self.kv_rank = att.kv_lora_rank
        qk = self.nope + self.rope
        if att.q_lora_rank:
            self.wq_a = nn.Linear(d, att.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(att.q_lora_rank, spec.norm_eps)
            self.wq_b = nn.Linear(att.q_lora_rank, h * qk, bias=False)
        else:
            self.wq = nn.Linear(d, h * qk, bias=False)
        self.wkv_a = nn.Linear(d, self.kv_rank + self.rope, bias=False)
        self.kv_norm = RMSNorm(self.kv_rank, spec.norm_eps)
        self.wkv_b = nn.Linear(self.kv_rank, h * (self.nope + self.v_dim), bias=False)
        self.wo = nn.Linear(h * self.v_dim, d, bias=False)
        self.scale = 1.0 / math.sqrt(qk)
        cos, sin = rope_tables(self.rope, spec.max_seq_len, spec.rope_theta)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        return {"latent": (batch, max_len, self.kv_rank), "k_rope": (batch, max_len, self.rope)}

    def forward(self, x_BTD: torch.Tensor, start: int, cache: LayerKVCache | None) -> torch.Tensor:
        B, T, _ = x_BTD.shape
        cos, sin = self.cos[start:start + T], self.sin[start:start + T]
        q = self.wq_b(self.q_norm(self.wq_a(x_BTD))) if hasattr(self, "wq_a") else self.wq(x_BTD)
        q_BTHQ = q.view(B, T, self.n_heads, self.nope + self.rope)
        q_rope = apply_rope(q_BTHQ[..., self.nope:], cos, sin)
        q_BTHQ = torch.cat([q_BTHQ[..., :self.nope], q_rope], dim=-1)

        latent_BTC, k_rope_BTR = self.wkv_a(x_BTD).split([self.kv_rank, self.rope], dim=-1)
        latent_BTC = self.kv_norm(latent_BTC)
        k_rope_BTR = apply_rope(k_rope_BTR.unsqueeze(2), cos, sin).squeeze(2)
        if cache is not None:
            full = cache.append(start, latent=latent_BTC, k_rope=k_rope_BTR)
            latent_BTC, k_rope_BTR = full["latent"], full["k_rope"]
            if T == 1:  # decode step
                return self._absorbed(q_BTHQ, latent_BTC, k_rope_BTR)
        S = latent_BTC.shape[1]
        kv_BSHX = self.wkv_b(latent_BTC).view(B, S, self.n_heads, self.nope + self.v_dim)
        k_nope_BSHN, v_BSHV = kv_BSHX.split([self.nope, self.v_dim], dim=-1)
        k_BSHQ = torch.cat([k_nope_BSHN, k_rope_BTR.unsqueeze(2).expand(B, S, self.n_heads, self.rope)], dim=-1)
        mask = attention_mask(T, S, start, x_BTD.device)
        out = F.scaled_dot_product_attention(
            q_BTHQ.transpose(1, 2), k_BSHQ.transpose(1, 2), v_BSHV.transpose(1, 2),
            attn_mask=mask, is_causal=mask is None and T > 1, scale=self.scale,
        )
        return self.wo(out.transpose(1, 2).reshape(B, T, -1))

    def _absorbed(self, q_B1HQ: torch.Tensor, latent_BSC: torch.Tensor, k_rope_BSR: torch.Tensor) -> torch.Tensor:
        """Decode attention over the cached latent for one new position (it sees every cached
        key, so no mask): queries ``[W_UK^T q_nope, q_rope]`` against keys ``[c, k_rope]``,
        values ``c``, then ``W_UV`` per head. The heads share the one latent "KV head", so they
        ride along the query axis of a single-head attention."""
        B, _, H, _ = q_B1HQ.shape
        w_HXC = self.wkv_b.weight.view(H, self.nope + self.v_dim, self.kv_rank)
        w_uk_HNC, w_uv_HVC = w_HXC.split([self.nope, self.v_dim], dim=1)
        q_lat_BHC = torch.einsum("bhn,hnc->bhc", q_B1HQ[:, 0, :, :self.nope], w_uk_HNC)
        q_B1HK = torch.cat([q_lat_BHC, q_B1HQ[:, 0, :, self.nope:]], dim=-1).unsqueeze(1)
        k_B1SK = torch.cat([latent_BSC, k_rope_BSR], dim=-1).unsqueeze(1)
        out_B1HC = F.scaled_dot_product_attention(q_B1HK, k_B1SK, latent_BSC.unsqueeze(1), scale=self.scale)
        out_BHV = torch.einsum("bhc,hvc->bhv", out_B1HC[:, 0], w_uv_HVC)
        return self.wo(out_BHV.reshape(B, 1, H * self.v_dim))


def build_attention(spec: ModelSpec) -> nn.Module:
    return MLA(spec) if isinstance(spec.attention, MLAAttention) else GQA(spec)
