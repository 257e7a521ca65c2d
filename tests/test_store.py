"""Table store: row sources, hot-row caches, the per-layer lookup pipeline (CPU, plain tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from planner.accounting import engram_table_rows
from planner.loading import load_model
from planner.specs.placement import EngramPlacement
from reference_model.store import EngramTableStore, LayerStore
from reference_model.store_cache import LRURowCache, StaticRowCache, top_rows
from reference_model.store_disk import DiskRows
from reference_model.store_sources import DenseRows, LazyRows, splitmix64_mix

MASK = (1 << 64) - 1


def _splitmix_reference(x: int) -> int:
    """Vigna's splitmix64.c output function, in Python integers."""
    z = x & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def test_splitmix64_matches_reference():
    xs = [0, 1, 12345, 0x9E3779B97F4A7C15, (1 << 63) + 5, MASK]
    signed = torch.tensor([x - (1 << 64) if x >= 1 << 63 else x for x in xs])
    got = [int(v) & MASK for v in splitmix64_mix(signed)]
    assert got == [_splitmix_reference(x) for x in xs]


def test_lazy_rows_deterministic_and_scaled():
    a = LazyRows(4000, 16, torch.float32, seed=7, layer_id=1, init_std=0.5)
    table = a.materialize()
    assert abs(float(table.std()) - 0.5) < 0.01 and abs(float(table.mean())) < 0.01
    assert float(table.abs().max()) <= 0.5 * 3**0.5
    ids = torch.tensor([3999, 0, 17, 17])
    assert torch.equal(a.rows(ids), table[ids])
    again = LazyRows(4000, 16, torch.float32, seed=7, layer_id=1, init_std=0.5)
    assert torch.equal(again.rows(ids), table[ids])
    other = LazyRows(4000, 16, torch.float32, seed=7, layer_id=2, init_std=0.5)
    assert not torch.equal(other.rows(ids), table[ids])


def test_lazy_rows_reach_huge_tables():
    # 1.25e9 rows x 80: the 100B geometry; rows at the far end are fine and cost nothing.
    lazy = LazyRows(1_250_002_714, 80, torch.bfloat16, seed=0, layer_id=1)
    rows = lazy.rows(torch.tensor([0, 1_250_002_713]))
    assert rows.shape == (2, 80) and rows.dtype == torch.bfloat16 and lazy.resident_bytes == 0


def test_dense_and_disk_rows_gather(tmp_path):
    w = torch.randn(1000, 8)
    ids = torch.tensor([5, 999, 5, 0])
    out = torch.empty(4, 8)
    assert torch.equal(DenseRows(w, "host").gather(ids, out), w[ids])
    disk = DiskRows.write(tmp_path / "t.bin", w, chunk_rows=300)
    assert torch.equal(disk.gather(ids, torch.empty(4, 8)), w[ids])
    disk.drop_page_cache()
    with pytest.raises(ValueError, match="need"):
        DiskRows(tmp_path / "t.bin", 2000, 8, torch.float32)
    with pytest.raises(ValueError, match="no such"):
        DiskRows(tmp_path / "missing.bin", 10, 8, torch.float32)


@pytest.mark.parametrize("read,queue_depth", [("pread", 1), ("pread", 8), ("mmap", 1)])
def test_disk_rows_read_modes_return_the_tables_bytes(tmp_path, read, queue_depth):
    """264 B rows (66 fp32) straddle 4 KiB pages; the last row ends mid-page at the end of the
    file; ids repeat and come unsorted; a cold read (page cache dropped) and a warm one agree."""
    w = torch.randn(5000, 66)
    disk = DiskRows.write(tmp_path / "t.bin", w, read=read, queue_depth=queue_depth)
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.tensor([4999, 0, 15, 15, 62]), torch.randint(0, 5000, (700,), generator=g)])
    assert disk.drop_page_cache()
    for _ in range(2):
        out = torch.full((ids.shape[0], 66), float("nan"))
        assert torch.equal(disk.gather(ids, out), w[ids])
    assert torch.equal(disk.gather(torch.empty(0, dtype=torch.int64), torch.empty(0, 66)), torch.empty(0, 66))
    assert disk.resident_bytes == 0
    if read == "pread":
        assert disk.io in ("direct", "buffered") and "pread," in disk.label
        assert ("O_DIRECT" in disk.label) == (disk.io == "direct") and f"{queue_depth} reads in flight" in disk.label
    else:
        assert "memory-mapped" in disk.label
    disk.close()


def test_disk_rows_fall_back_to_buffered_reads_and_say_why(tmp_path, monkeypatch):
    import os

    w = torch.randn(300, 16)
    DiskRows.write(tmp_path / "t.bin", w)
    monkeypatch.delattr(os, "O_DIRECT", raising=False)
    disk = DiskRows(tmp_path / "t.bin", 300, 16, torch.float32)
    assert disk.io == "buffered" and "O_DIRECT does not exist" in disk.label
    ids = torch.tensor([299, 3, 150])
    assert torch.equal(disk.gather(ids, torch.empty(3, 16)), w[ids])


def test_disk_rows_refuse_bad_modes(tmp_path):
    DiskRows.write(tmp_path / "t.bin", torch.zeros(10, 4))
    with pytest.raises(ValueError, match="read must be one of pread, mmap, got 'aio'"):
        DiskRows(tmp_path / "t.bin", 10, 4, torch.float32, read="aio")
    with pytest.raises(ValueError, match=r"queue_depth must lie in \[1, 4096\] \(one reader thread per read in flight\), got 0"):
        DiskRows(tmp_path / "t.bin", 10, 4, torch.float32, queue_depth=0)


def test_page_runs_coalesce_adjacent_pages_up_to_the_cap():
    from reference_model.store_disk import MAX_RUN_PAGES, _runs

    pages = np.array([3, 4, 5, 9] + list(range(100, 100 + MAX_RUN_PAGES + 2)))
    first, count, at = _runs(pages)
    assert list(zip(first.tolist(), count.tolist(), at.tolist())) == [
        (3, 3, 0), (9, 1, 3), (100, MAX_RUN_PAGES, 4), (100 + MAX_RUN_PAGES, 2, 4 + MAX_RUN_PAGES)]
    assert all(len(a) == 0 for a in _runs(np.array([], dtype=np.int64)))


def test_top_rows_sums_duplicates_and_breaks_ties_by_id():
    ids = torch.tensor([9, 4, 9, 7, 1, 4])
    counts = torch.tensor([1, 1, 1, 2, 2, 1])
    assert top_rows(ids, counts, 3).tolist() == [1, 4, 7]  # 9:2, 7:2, 4:2, 1:2 -> smallest ids


def test_static_cache_lookup():
    src = DenseRows(torch.arange(100.0).repeat(2, 1).T.contiguous(), "host")
    cache = StaticRowCache.from_counts(src, torch.tensor([10, 20, 30]), torch.tensor([5, 1, 9]), 2, "cpu")
    assert cache.ids_C.tolist() == [10, 30]
    hit, slot = cache.lookup(torch.tensor([30, 11, 10, 99]))
    assert hit.tolist() == [True, False, True, False]
    assert cache.rows_CD[slot[hit]][:, 0].tolist() == [30.0, 10.0]


def test_lru_evicts_least_recent_and_spares_current_step():
    cache = LRURowCache(2, 1, torch.float32, "cpu", ways=2)  # one set of two ways
    for row in (1, 2):
        hit, _ = cache.lookup(torch.tensor([row]))
        slots, which = cache.plan_insert(torch.tensor([row]))
        cache.rows_CD[slots] = float(row)
    hit, _ = cache.lookup(torch.tensor([1]))  # 1 is now the most recent
    assert hit.tolist() == [True]
    cache.lookup(torch.tensor([3]))
    slots, _ = cache.plan_insert(torch.tensor([3]))
    cache.rows_CD[slots] = 3.0
    assert sorted(cache.tags_SW.flatten().tolist()) == [1, 3]  # 2 was evicted
    # A step that hits 1 and misses 4 and 5: only one way is evictable, 1 must survive.
    hit, _ = cache.lookup(torch.tensor([1, 4, 5]))
    slots, which = cache.plan_insert(torch.tensor([4, 5]))
    assert len(slots) == 1 and 1 in cache.tags_SW.flatten().tolist()


@pytest.mark.parametrize("cache", ["none", "static", "lru"])
@pytest.mark.parametrize("dedup", [True, False])
def test_layer_store_rows_equal_table(cache, dedup):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5000, 8, generator=g)
    src = DenseRows(w, "host")
    hot = (torch.randint(0, 50, (4000,), generator=g) ** 2) % 5000
    c = {"none": None,
         "static": StaticRowCache.from_counts(src, hot, torch.ones(4000), 300, "cpu"),
         "lru": LRURowCache(300, 8, torch.float32, "cpu", ways=4)}[cache]
    store = LayerStore(1, src, cache=c, dedup=dedup)
    for _ in range(10):
        ids = (torch.randint(0, 50, (2, 5, 16), generator=g) ** 2) % 5000
        assert torch.equal(store.lookup(ids), w[ids])
    s = store.stats
    assert s.requested_rows == 10 * 160 and s.bytes_moved == s.fetched_rows * 32
    assert (s.unique_rows < s.requested_rows) == dedup
    assert (s.cache_hits > 0) == (cache != "none")


def test_layer_store_rejects_bad_ids():
    store = LayerStore(3, DenseRows(torch.zeros(10, 4), "host"))
    with pytest.raises(ValueError, match="table has 10 rows"):
        store.lookup(torch.tensor([[[10]]]))
    with pytest.raises(ValueError, match="integers"):
        store.lookup(torch.tensor([[[1.0]]]))


def test_uva_request_without_cuda_falls_back_with_reason():
    store = LayerStore(1, DenseRows(torch.zeros(10, 4), "host"), uva=True)
    assert store.host_mode == "staged" and "CUDA" in store.host_mode_note


def test_build_checks_inputs(tiny_spec, tmp_path):
    with pytest.raises(ValueError, match="row frequencies"):
        EngramTableStore.build(tiny_spec, EngramPlacement(tier="host", cache_fraction=0.1))
    with pytest.raises(ValueError, match="no file"):
        EngramTableStore.build(tiny_spec, EngramPlacement(tier="disk"))
    with pytest.raises(ValueError, match="disk_dir"):
        EngramTableStore.build(tiny_spec, EngramPlacement(tier="disk"),
                               tables={1: torch.zeros(24242, 8), 2: torch.zeros(24804, 8)})
    with pytest.raises(ValueError, match="table shape"):
        EngramTableStore.build(tiny_spec, EngramPlacement(tier="host"), tables={1: torch.zeros(5, 8), 2: torch.zeros(5, 8)})
    with pytest.raises(ValueError, match="no Engram"):
        EngramTableStore.build(load_model("dense-8b"), EngramPlacement())
    store = EngramTableStore.build(tiny_spec, EngramPlacement(tier="host", layer_tiers={2: "device"}))
    assert store.layers[1].tier == "host" and store.layers[2].tier == "device"
    with pytest.raises(ValueError, match="no Engram table for layer 0"):
        store.lookup(0, torch.zeros(1, 1, 8, dtype=torch.long))


def test_a_queue_deeper_than_the_reference_reader_is_refused_by_its_field(tmp_path):
    spec = load_model("tiny")
    rows = engram_table_rows(spec)
    tables = {l: torch.zeros(n, spec.engram.d_head) for l, n in rows.items()}
    placement = EngramPlacement(tier="disk", disk_queue_depth=8192)
    with pytest.raises(ValueError, match="placement.disk_queue_depth = 8192: .* at most 4096"):
        EngramTableStore.build(spec, placement, tables=tables, disk_dir=tmp_path)
