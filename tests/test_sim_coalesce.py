"""Step coalescing (planner/sim/coalesce.py) gives the step-by-step run's metrics, to rounding."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.loading import load_hardware, load_model
from planner.sim import simulate
from tests.sim_helpers import hardware, roomy, scenario


def assert_same(a, b, path="metrics"):
    """Equal structure; floats within 1e-9 relative (sums taken in another order)."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def both(s):
    on, off = simulate(s, coalesce=True), simulate(s, coalesce=False)
    assert_same(on.as_dict(), off.as_dict())
    return on


placements = st.fixed_dictionaries({
    "tier": st.sampled_from(["host", "device"]),
    "cache_fraction": st.sampled_from([0.0, 0.05]),
    "prefetch": st.booleans(),
    "host_mode": st.sampled_from(["staged", "uva"]),
    "pinned": st.booleans(),
})


@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(placement=placements, scheduler=st.sampled_from(["vllm", "nano-vllm"]),
       seqs=st.integers(1, 24), prompt=st.integers(1, 96), output=st.integers(1, 64),
       rate=st.sampled_from([None, 30.0, 400.0]), blocks=st.sampled_from([None, 12, 40]),
       h2d=st.sampled_from([63e9, 2e8]))
def test_coalesced_and_step_by_step_runs_agree(placement, scheduler, seqs, prompt, output, rate, blocks, h2d):
    """One device: offloaded or device tier, prefetch or not, pinned, pageable or UVA copies, a
    fast or a slow link (rows exposed), KV plenty or tight (preemptions), offline or Poisson."""
    hw = hardware(1, 1, h2d_bandwidth=h2d)
    s = scenario(seqs=seqs, prompt={"kind": "uniform", "low": 1, "high": prompt},
                 output={"kind": "uniform", "low": 1, "high": output}, hw=hw, placement=placement,
                 scheduler=scheduler, arrival_rate=rate, kv_block_size=16, max_batched_tokens=256,
                 max_model_len=prompt + output)
    if blocks is not None:  # shrink the KV cache to about `blocks` blocks, above the longest sequence
        from planner.memory import device_memory

        mem = device_memory(s)
        need = max(blocks, mem.blocks_for(prompt + output))
        memory = (mem.weights + mem.engram + mem.workspace + mem.runtime + need * mem.block_bytes) / mem.utilization
        s = s.model_copy(update={"hardware": roomy(hw, memory * (1 + 1e-12))})
    both(s)


@pytest.mark.parametrize("profile", ["cpu-workstation", "calibrated-ci-cpu"])
def test_agree_on_a_cpu_device_whose_worker_holds_the_compute_cores(profile):
    hw = roomy(load_hardware(profile))
    s = scenario(seqs=12, prompt={"kind": "uniform", "low": 4, "high": 40}, output={"kind": "uniform", "low": 2, "high": 30},
                 hw=hw, placement={"tier": "host"}, scheduler="vllm", model="tiny")
    both(s)


def test_coalescing_is_off_where_devices_share_the_node_pipes():
    """Two devices behind one switch contend for the uplink: each step is simulated, so the
    runs are identical by construction; the device-tier run (nothing shared) coalesces."""
    host = scenario(seqs=16, output=24, devices=2, per_link=2, placement={"tier": "host"})
    both(host)
    both(scenario(seqs=16, output=24, devices=2, per_link=2, placement={"tier": "device"}))


@settings(max_examples=20, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(["tiny", "engram-27b", "dense-8b-engram-100b"]), devices=st.sampled_from([1, 2, 4]),
       per_link=st.sampled_from([1, 2]), cache=st.sampled_from([0.0, 0.05]), split=st.booleans(),
       rate=st.sampled_from([None, 50.0, 2000.0]), h2d=st.sampled_from([63e9, 2e8]))
def test_chained_prefetch_equals_queued_stages(model, devices, per_link, cache, split, rate, h2d):
    """An inference prefetch runs as one chain per step (planner.sim.fetch.Fetcher._chain); it
    must time every stage as the queued processes on the pool and copy engine do, with devices
    contending for DRAM and shared uplinks, several offloaded layers, or one on the device tier."""
    from planner.sim.fetch import Fetcher

    per_link = min(per_link, devices)
    layers = load_model(model).engram.layer_ids
    placement = {"tier": "host", "cache_fraction": cache}
    if split and len(layers) > 1:
        placement["layer_tiers"] = {layers[0]: "device"}
    s = scenario(model=model, seqs=6 * devices, prompt={"kind": "uniform", "low": 8, "high": 200},
                 output={"kind": "uniform", "low": 2, "high": 24}, hw=hardware(devices, per_link, h2d_bandwidth=h2d),
                 placement=placement, arrival_rate=rate, max_batched_tokens=512)
    chained = simulate(s, baseline=False)
    init = Fetcher.__init__

    def queued(self, *args, **kwargs):
        init(self, *args, **{**kwargs, "exclusive": False})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Fetcher, "__init__", queued)
        queued_run = simulate(s, baseline=False)
    assert_same(chained.as_dict(), queued_run.as_dict())


def test_a_long_offline_decode_is_mostly_coalesced():
    """The agreement tests above mean something only if stretches are coalesced: here, 32
    sequences decoding 200 tokens on one device, most steps are advanced in stretches."""
    from planner.sim.coalesce import Coalescer

    advanced, advance = [], Coalescer.advance

    def counting(self, *args, **kwargs):
        steps = yield from advance(self, *args, **kwargs)
        advanced.append(steps)
        return steps

    s = scenario(seqs=32, prompt=64, output=200, placement={"tier": "host"})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Coalescer, "advance", counting)
        m = simulate(s, baseline=False)
    assert sum(advanced) > 0.9 * m.steps
