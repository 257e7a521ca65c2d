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
