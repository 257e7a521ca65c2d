"""Row providers: prefetch on a worker thread, on-demand lookups, errors (CPU)."""

from __future__ import annotations

import threading

import pytest
import torch

from planner.specs.placement import EngramPlacement
from reference_model.prefetch import RowProvider, build_provider
from reference_model.store import EngramTableStore


def _ids(spec, batch=2, positions=5, seed=0):
    from planner.accounting import engram_table_rows

    g = torch.Generator().manual_seed(seed)
    rows = engram_table_rows(spec)
    k = spec.engram.rows_per_token
    return {layer: torch.randint(0, n, (batch, positions, k), generator=g) for layer, n in rows.items()}


class ThreadTracer:
    """A tracer that notes which thread ran each span."""

    def __init__(self):
        self.seen = []

    def __call__(self, name, track):
        self.seen.append((name, track, threading.current_thread().name))
        return torch.autograd.profiler.record_function(name)


@pytest.mark.parametrize("prefetch", [True, False])
def test_lazy_host_rows_equal_device_rows(tiny_spec, prefetch):
    ids = _ids(tiny_spec)
    device = EngramTableStore.build(tiny_spec, EngramPlacement(tier="device"))
    tracer = ThreadTracer()
    with build_provider(tiny_spec, EngramPlacement(tier="host", prefetch=prefetch), tracer=tracer) as provider:
        handles = provider.fetch(ids)
        for layer, handle in handles.items():
            rows = handle.wait()
            assert rows.shape == (2, 5, 8, tiny_spec.engram.d_head)
            assert torch.equal(rows, device.lookup(layer, ids[layer]))
            assert handle.wait() is rows  # a second wait returns the same tensor
    gathers = [(track, t) for name, track, t in tracer.seen if name.startswith("gather_L")]
    assert len(gathers) == 2
    assert all(t.startswith("engram-prefetch") for _, t in gathers) == prefetch
    # Generated rows are not host-DRAM reads: their gathers have their own track and label.
    assert {track for track, _ in gathers} == {"host_generate"}
    assert all("generated" in line and "host tier" in line for line in provider.store.describe())


def test_real_tables_keep_the_host_gather_track(tiny_spec):
    from planner.accounting import engram_table_rows

    tables = {l: torch.randn(n, tiny_spec.engram.d_head) for l, n in engram_table_rows(tiny_spec).items()}
    tracer = ThreadTracer()
    with build_provider(tiny_spec, EngramPlacement(tier="host", prefetch=False), tables=tables, tracer=tracer) as p:
        for handle in p.fetch(_ids(tiny_spec)).values():
            handle.wait()
        assert all("host DRAM" in line for line in p.store.describe())
    assert {track for name, track, _ in tracer.seen if name.startswith("gather_L")} == {"host_gather"}


def test_prefetch_errors_surface_at_wait(tiny_spec):
    ids = _ids(tiny_spec)
    ids[1] = ids[1] + 10**7  # past the end of the table
    with build_provider(tiny_spec, EngramPlacement(tier="host")) as provider:
        handles = provider.fetch(ids)
        with pytest.raises(ValueError, match="table has"):
            handles[1].wait()
        assert handles[2].wait().shape[0] == 2


def test_fetch_rejects_unknown_layers(tiny_spec):
    with build_provider(tiny_spec, EngramPlacement(tier="host")) as provider:
        with pytest.raises(ValueError, match="layers \\[0\\]"):
            provider.fetch({0: torch.zeros(1, 1, 8, dtype=torch.long)})


def test_device_tier_is_never_prefetched(tiny_spec):
    store = EngramTableStore.build(tiny_spec, EngramPlacement(tier="device"))
    provider = RowProvider(store, prefetch=True)
    handles = provider.fetch(_ids(tiny_spec))
    assert all(type(h).__name__ == "_OnDemand" for h in handles.values())
    provider.close()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("host_mode", ["staged", "uva"])
@pytest.mark.parametrize("prefetch", [True, False])
def test_cuda_offload_rows_equal_device_rows(tiny_spec, host_mode, prefetch):
    ids = _ids(tiny_spec, batch=4, positions=64)
    device = EngramTableStore.build(tiny_spec, EngramPlacement(tier="device"), device="cuda")
    tables = {l: s.source.materialize().cpu() for l, s in device.layers.items()}  # LazyRows: no weight_RD
    placement = EngramPlacement(tier="host", host_mode=host_mode, prefetch=prefetch, cache_fraction=0.05,
                                cache_policy="lru")
    with build_provider(tiny_spec, placement, device="cuda", tables=tables) as provider:
        assert all(s.host_mode == host_mode for s in provider.store.layers.values())
        for step in range(3):
            handles = provider.fetch(ids)
            for layer, handle in handles.items():
                rows = handle.wait()
                assert rows.is_cuda and torch.equal(rows, device.lookup(layer, ids[layer].cuda()))


def test_prestaged_disk_reads_hide_behind_compute_and_in_forward_reads_do_not(tmp_path):
    """The disk tier as engines read it, on this machine's own drive (its speed is measured
    here, not assumed). Pre-staged (``pread`` on the prefetch worker): the reads start when
    the step's ids are handed over, so after a window of compute at least as long as the read,
    the layer's wait is nearly free. In the forward (``mmap``, prefetch off): the pages fault
    in inside the layer's wait, however long the window before it. Each read is cold (the
    page cache dropped, or bypassed by O_DIRECT) and returns the table's bytes."""
    import time

    from reference_model.prefetch import RowProvider
    from reference_model.store import LayerStore
    from reference_model.store_disk import DiskRows

    g = torch.Generator().manual_seed(0)
    table = torch.randn(100_000, 64, generator=g)  # 256 B rows: 16 to a page, 25 MB
    ids = {0: torch.randint(0, 100_000, (8, 16, 8), generator=g)}  # ~1,000 distinct rows
    modes = {"pre-staged": ("pread", True), "in-forward": ("mmap", False)}
    sources = {name: DiskRows.write(tmp_path / f"{name}.bin", table, read=read, queue_depth=16)
               for name, (read, _) in modes.items()}

    def wait_after(name: str, window_s: float) -> float:
        source, (_, prefetch) = sources[name], modes[name]
        source.drop_page_cache()
        store = EngramTableStore({0: LayerStore(0, source, dedup=True)})
        with RowProvider(store, prefetch=prefetch) as provider:
            handle = provider.fetch(ids)[0]
            time.sleep(window_s)  # the blocks before the Engram layer
            start = time.perf_counter()
            rows = handle.wait()
            waited = time.perf_counter() - start
        assert torch.equal(rows, table[ids[0]])
        return waited

    read_s = {name: wait_after(name, 0.0) for name in modes}  # no window: the wait is the whole read
    window = 2 * max(read_s.values()) + 0.02
    hidden, exposed = wait_after("pre-staged", window), wait_after("in-forward", window)
    assert hidden < 0.25 * read_s["pre-staged"], (hidden, read_s)
    assert exposed > 0.5 * read_s["in-forward"], (exposed, read_s)


@pytest.mark.parametrize("compute_threads", [1, "all"])
def test_cpu_prefetch_worker_has_its_own_thread_count(tiny_spec, compute_threads):
    """The worker's intra-op team is the cores the compute threads leave free (at least one
    thread: never a second full team, whose idle threads would stop the compute team's spinning
    under GNU OpenMP), and setting it leaves the caller's count alone."""
    import os

    cores = os.cpu_count() or 1
    n = cores if compute_threads == "all" else 1
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with build_provider(tiny_spec, EngramPlacement(tier="host", prefetch=True)) as provider:
            worker = provider._executor.submit(torch.get_num_threads).result()
            assert worker == max(1, cores - n)
            assert torch.get_num_threads() == n
            # A thread started now gets the caller's count, not the worker's.
            seen = []
            t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
            t.start()
            t.join()
            assert seen == [n]
    finally:
        torch.set_num_threads(before)
