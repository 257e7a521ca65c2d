"""Accounting: closed-form counts, the paper's table sizes, footprints."""

import pytest

from planner.accounting import (
    engram_bytes_per_token,
    engram_dense_params,
    engram_row_bytes,
    engram_table_bytes,
    engram_table_rows,
    kv_cache_bytes_per_token,
    model_summary,
    param_counts,
    tier_footprint,
)
from planner.loading import load_model
from planner.primes import engram_table_primes, is_prime
from planner.specs import EngramPlacement


def test_paper_engram_table_parameters():
    # ENGRAM.md section 4: 5.792B and 18.534B with the prime rule (paper: 5.7B and 18.5B).
    assert param_counts(load_model("engram-27b")).engram_tables / 1e9 == pytest.approx(5.792, abs=5e-4)
    assert param_counts(load_model("engram-40b")).engram_tables / 1e9 == pytest.approx(18.534, abs=5e-4)


def test_paper_totals_are_close():
    # Paper Table 5: 26.7B total / 3.8B active (MoE-27B, Engram-27B); 39.5B total (Engram-40B).
    moe = param_counts(load_model("moe-27b"))
    assert moe.total / 1e9 == pytest.approx(26.7, rel=0.01)
    assert moe.active / 1e9 == pytest.approx(3.8, rel=0.02)
    assert param_counts(load_model("engram-27b")).total / 1e9 == pytest.approx(26.7, rel=0.01)
    assert param_counts(load_model("engram-40b")).total / 1e9 == pytest.approx(39.5, rel=0.01)
    # Engram-27B trades 17 routed experts for tables of about the same size.
    e27 = param_counts(load_model("engram-27b"))
    assert abs(e27.total - moe.total) / moe.total < 0.005


def test_dense_backbones_are_their_class():
    assert param_counts(load_model("dense-8b")).total / 1e9 == pytest.approx(8.03, abs=0.01)
    assert param_counts(load_model("dense-4b")).total / 1e9 == pytest.approx(4.02, abs=0.01)
    assert param_counts(load_model("dense-8b-engram-100b")).engram_tables / 1e9 == pytest.approx(100, rel=1e-4)


def test_gqa_closed_form():
    m = load_model("dense-8b")  # Llama-3-8B shapes
    c = param_counts(m)
    d, hd = 4096, 128
    assert c.attention == 32 * (d * 32 * hd + 2 * d * 8 * hd + 32 * hd * d)
    assert c.dense_ffn == 32 * 3 * d * 14336
    assert c.active == c.total - c.embedding  # dense: everything but the lookup is active
    assert kv_cache_bytes_per_token(m) == 32 * 2 * 8 * 128 * 2


def test_mla_kv_cache_is_the_latent(engram27b):
    # DeepSeek-V3-style MLA caches kv_lora_rank + qk_rope_head_dim values per layer.
    assert kv_cache_bytes_per_token(engram27b) == 30 * (512 + 64) * 2


def test_table_rows_are_sums_of_distinct_primes(engram27b):
    e = engram27b.engram
    primes = engram_table_primes(e.layer_ids, e.table_size_per_head, e.n_heads)
    rows = engram_table_rows(engram27b)
    assert rows == {layer: sum(map(sum, orders)) for layer, orders in primes.items()}
    assert engram_table_bytes(engram27b)[1] == rows[1] * 80 * 2
    assert engram_bytes_per_token(engram27b) == 16 * 160


def test_moe_active_counts_top_k(engram27b):
    c = param_counts(engram27b)
    moe = engram27b.ffn.moe
    per_expert = 3 * engram27b.d_model * moe.expert_width
    n_moe = engram27b.n_layers - moe.n_leading_dense_layers
    assert c.routed_experts == n_moe * moe.n_routed_experts * per_expert
    inactive = n_moe * (moe.n_routed_experts - moe.top_k) * per_expert
    assert c.active == c.total - c.embedding - c.engram_tables - inactive


def test_tier_footprint_moves_tables(engram27b):
    tables = sum(engram_table_bytes(engram27b).values())
    on_device = tier_footprint(engram27b, EngramPlacement(tier="device"))
    on_host = tier_footprint(engram27b, EngramPlacement(tier="host", cache_fraction=0.1))
    assert on_device.device - on_host.device == pytest.approx(0.9 * tables)
    assert on_host.host == pytest.approx(tables)
    on_disk = tier_footprint(engram27b, EngramPlacement(tier="disk", host_cache_fraction=0.25))
    assert on_disk.disk == pytest.approx(tables) and on_disk.host == pytest.approx(0.25 * tables)
    with_kv = tier_footprint(engram27b, EngramPlacement(), kv_cache_tokens=1000)
    assert with_kv.device - on_device.device == 1000 * kv_cache_bytes_per_token(engram27b)


def test_summary_is_plain_values(engram27b):
    s = model_summary(engram27b, EngramPlacement(tier="host"))
    assert s["params"]["engram_tables"] == param_counts(engram27b).engram_tables
    assert [layer["tier"] for layer in s["engram"]["layers"]] == ["host", "host"]
    heads = s["engram"]["layers"][0]["primes_per_order"]["2"]
    assert len(heads) == 8 and heads == sorted(set(heads)) and heads[0] >= 2262400
    assert all(is_prime(p) for p in heads)


def test_block_scales_add_to_row_bytes_and_no_conv_has_no_params(engram27b):
    # A row is d_head values in the Engram dtype plus one byte per scale_block values.
    e = engram27b.engram
    scaled = engram27b.model_copy(update={"engram": e.model_copy(update={"dtype": "fp8", "scale_block": 16})})
    assert engram_row_bytes(engram27b) == 160 and engram_row_bytes(scaled) == 80 + 5
    assert engram_table_bytes(scaled)[1] == engram_table_rows(engram27b)[1] * 85
    assert param_counts(scaled).engram_tables == param_counts(engram27b).engram_tables  # scales are not params
    no_conv = engram27b.model_copy(update={"engram": e.model_copy(update={"kernel_size": 0})})
    m, d = engram27b.hc_mult, engram27b.d_model
    assert engram_dense_params(engram27b) - engram_dense_params(no_conv) == m * d * e.kernel_size + m * d
