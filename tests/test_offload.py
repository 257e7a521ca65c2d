"""Offloaded Engram lookups inside the real model: bit-identical logits and generations for
every tier x cache x prefetch x dedup setting, the 100B-parameter geometry on a small
backbone, and the instrumentation (tiny model, fp32, CPU)."""

from __future__ import annotations

import itertools

import pytest
import torch

from planner.loading import load_model
from planner.specs.model import FFNSpec, GQAAttention
from planner.specs.placement import EngramPlacement
from planner.trace import Span, spans_from_chrome_trace
from reference_model.compression import Compressor
from reference_model.instrument import SpanRecorder, offload_metrics
from reference_model.model import EngramModel
from reference_model.prefetch import build_provider

CACHES = {"none": {}, "static": {"cache_fraction": 0.05}, "lru": {"cache_fraction": 0.05, "cache_policy": "lru"}}
MATRIX = [("device", "none", True, True)] + [
    (tier, cache, prefetch, dedup)
    for tier, cache, prefetch, dedup in itertools.product(["host", "disk"], CACHES, [True, False], [True, False])
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small, shared CI machine an OpenMP region waits for its slowest
    thread (measured: 2 s instead of 0.1 s per generate under load); values do not change."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_run(tiny_spec):
    """The tiny model with its own (device-resident) tables, and its reference outputs."""
    torch.manual_seed(0)
    model = EngramModel(tiny_spec, Compressor.from_file()).eval()
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, tiny_spec.vocab_size, (2, 16), generator=g)
    with torch.no_grad():
        logits = model(ids)
        generated = model.generate(ids[:, :6], 3)
    # Static-cache frequencies: the rows of the first half of the batch (so the rest both hits
    # and misses); ngram_stats.row_counts gives the corpus counts used outside tests.
    hot = {layer: torch.unique(r[:1], return_counts=True) for layer, r in model.engram_row_ids(ids).items()}
    return model, ids, logits, generated, hot


@pytest.mark.parametrize("tier,cache,prefetch,dedup", MATRIX)
def test_offloaded_rows_are_bit_identical(tiny_run, tmp_path, tier, cache, prefetch, dedup):
    model, ids, logits, generated, hot = tiny_run
    tables = {layer: m.table.weight for layer, m in model.engram_blocks().items()}
    placement = EngramPlacement(tier=tier, prefetch=prefetch, dedup=dedup, **CACHES[cache])
    with build_provider(model.spec, placement, tables=tables, hot_rows=hot, disk_dir=tmp_path) as provider, \
            torch.no_grad():
        out = model(ids, engram_rows=provider.fetch(model.engram_row_ids(ids)))
        assert torch.equal(out, logits)
        assert torch.equal(model.generate(ids[:, :6], 3, row_provider=provider), generated)
        stats = provider.stats()
    if tier != "device" and cache != "none":
        assert sum(s.cache_hits for s in stats.values()) > 0


def test_model_without_tables_matches_materialised_model(tiny_run):
    model, ids, logits, _, _ = tiny_run
    bare = EngramModel(model.spec, model.compressor, materialize_tables=False).eval()
    missing, unexpected = bare.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.endswith("engram.table.weight") for k in unexpected)
    tables = {layer: m.table.weight for layer, m in model.engram_blocks().items()}
    with build_provider(model.spec, EngramPlacement(tier="host"), tables=tables) as provider, torch.no_grad():
        assert torch.equal(bare(ids, engram_rows=provider.fetch(bare.engram_row_ids(ids))), logits)


def small_backbone_100b():
    """The Dense-8B + Engram-100B table geometry (2 orders x 8 heads x 78,125,000 rows x 80,
    1.0e11 parameters, 200 GB in bf16) on a 2-block, 128-wide backbone and a small vocabulary:
    only the table geometry matters for the lookup path."""
    big = load_model("dense-8b-engram-100b")
    return big.model_copy(update=dict(
        name="Engram-100B geometry, small backbone", vocab_size=2048, d_model=128, n_layers=2,
        max_seq_len=64, dtype="fp32", attention=GQAAttention(n_heads=2, n_kv_heads=1),
        ffn=FFNSpec(dense_width=256)))


def test_100b_geometry_decode_step_runs_lazily():
    from planner.accounting import param_counts

    spec = small_backbone_100b()
    assert param_counts(spec).engram_tables > 1e11
    torch.manual_seed(0)
    model = EngramModel(spec, materialize_tables=False).eval()
    rec = SpanRecorder()
    ids = torch.randint(3, spec.vocab_size, (2, 6))
    with build_provider(spec, EngramPlacement(tier="host", cache_fraction=1e-6, cache_policy="lru"),
                        tracer=rec) as provider, torch.no_grad():
        out = model.generate(ids, 3, row_provider=provider, tracer=rec)
        stats = provider.stats()[1]
        assert provider.store.layers[1].source.resident_bytes == 0
    assert out.shape == (2, 9)
    assert stats.steps == 3 and stats.requested_rows == 2 * (6 + 1 + 1) * 16
    names = {s.name for s in rec.spans()}
    assert {"gather_L1", "wait_L1", "engram_L1", "attn_L0", "head"} <= names


def test_recorder_spans_and_chrome_trace(tiny_run):
    model, ids, _, _, hot = tiny_run
    rec = SpanRecorder()
    tables = {layer: m.table.weight for layer, m in model.engram_blocks().items()}
    with build_provider(model.spec, EngramPlacement(tier="host", prefetch=True), tables=tables,
                        tracer=rec) as provider, torch.no_grad():
        for _ in range(2):
            with rec("step", "engine"):
                model(ids, engram_rows=provider.fetch(model.engram_row_ids(ids)), tracer=rec)
        metrics = offload_metrics(rec.spans(), provider.stats())
    spans = rec.spans()
    tracks = {s.track for s in spans}
    assert {"engine", "compute", "host_gather"} <= tracks
    assert all(s.dur_s >= 0 for s in spans)
    back = spans_from_chrome_trace(rec.chrome_trace(metadata={"test": True}))
    assert sorted((s.name, s.track) for s in back) == sorted((s.name, s.track) for s in spans)
    assert metrics["steps"] == 2 and metrics["requested_rows"] == 2 * 2 * 16 * 8
    assert 0 <= metrics["hidden_fraction"] <= 1 and metrics["bytes_to_device"] > 0
    assert set(metrics["exposed_per_step_s"]) == {1, 2}


def test_offload_metrics_closed_form():
    spans = [Span("step", "engine", 0.0, 1.0), Span("step", "engine", 1.0, 1.0),
             Span("gather_L1", "host_gather", 0.0, 0.4), Span("h2d_L1", "h2d", 0.4, 0.2),
             Span("gather_L1", "host_gather", 1.0, 0.4), Span("h2d_L1", "h2d", 1.4, 0.2),
             Span("wait_L1", "compute", 0.5, 0.15), Span("wait_L1", "compute", 1.5, 0.15)]
    m = offload_metrics(spans)
    assert m["steps"] == 2 and m["mean_step_time_s"] == pytest.approx(1.0)
    assert m["lookup_s"] == pytest.approx(0.6) and m["exposed_s"] == pytest.approx(0.15)
    assert m["exposed_per_step_s"] == {1: pytest.approx(0.15)} and m["exposed_fraction"] == pytest.approx(0.15)
    assert m["hidden_fraction"] == pytest.approx(0.75)


def test_disabled_recorder_records_nothing():
    rec = SpanRecorder(enabled=False)
    with rec("step", "engine"):
        pass
    assert rec.spans() == []
