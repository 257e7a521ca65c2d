"""One memory pool (``link.kind: unified``: Apple M-series, DGX Spark's GB10): rows are never
copied over a link, host-tier tables take from the same pool as the device's weights and KV
cache, and the specs refuse a device bigger than its pool."""

from __future__ import annotations

import pytest

from planner.analytic import estimate_run, estimate_step
from planner.memory import device_memory
from planner.sim.run import simulate
from planner.specs import HardwareSpec
from planner.specs.limits import capacity_problems
from tests.sim_helpers import hardware, scenario, training


def unified(pool: float = 256e9, device: float = 192e9, count: int = 1) -> HardwareSpec:
    """An H100-like device on one pool of ``pool`` bytes (``device`` of it usable by the GPU)."""
    hw = hardware(count, memory=device)
    bw = hw.host.memory_bandwidth
    return hw.model_copy(update={
        "link": hw.link.model_copy(update={"kind": "unified", "h2d_bandwidth": bw, "d2h_bandwidth": bw}),
        "host": hw.host.model_copy(update={"memory": pool}),
    })


def test_rows_on_one_pool_never_cross_a_link():
    for prefetch in (True, False):
        s = scenario("tiny", hw=unified(), placement={"tier": "host", "prefetch": prefetch})
        m = simulate(s, baseline=False, trace=True)
        assert m.bytes_moved["h2d"] == 0.0
        assert m.bytes_moved["to_device"] > 0  # the gathered rows, usable in place
        assert not any(sp.name.startswith("h2d_") for sp in m.spans)
        assert any(sp.name.startswith("gather_") for sp in m.spans)
    # the same scenario on a PCIe node copies every gathered byte
    pcie = simulate(scenario("tiny", placement={"tier": "host"}), baseline=False)
    assert pcie.bytes_moved["h2d"] > 0


def test_training_on_one_pool_sends_no_gradient_over_a_link():
    s = training(placement={"tier": "host"})
    s = s.model_copy(update={"hardware": unified(count=2)})
    m = simulate(s, baseline=False, trace=True)
    assert not any(sp.name.startswith(("h2d_", "d2h_grad_")) for sp in m.spans)
    assert any(sp.name.startswith("optim_") for sp in m.spans)


def test_analytic_prices_no_copy_on_one_pool():
    s = scenario("tiny", hw=unified(), placement={"tier": "host", "prefetch": False})
    step = estimate_step(s)
    assert step.per_layer and all(float(layer["fetch_s"]) > 0 for layer in step.per_layer.values())
    assert float(estimate_run(s).throughput_output_tokens_per_s) > 0
    from planner.costmodel import CostModel
    from planner.stages import copy_mode

    assert copy_mode(CostModel(s.model, s.hardware), s.placement) == "none"
    uva = s.placement.model_copy(update={"host_mode": "uva"})
    assert copy_mode(CostModel(s.model, s.hardware), uva) == "none"  # no link to read over either


def test_host_tier_tables_take_from_the_pool():
    """The 200 GB table of dense-8b-engram-100b in the host tier of a 256 GB pool leaves the GPU
    far less KV cache than the same table in the DRAM of a PCIe host."""
    on_pool = scenario(hw=unified(pool=256e9, device=192e9), placement={"tier": "host"})
    separate = scenario(hw=hardware(1, memory=192e9).model_copy(update={
        "host": hardware().host.model_copy(update={"memory": 256e9})}), placement={"tier": "host"})
    a, b = device_memory(on_pool), device_memory(separate)
    assert a.shared > 0 and b.shared == 0.0 and a.blocks < b.blocks
    assert a.kv_bytes == pytest.approx(a.blocks * a.block_bytes, abs=a.block_bytes)
    assert "shared pool" in a.describe()
    # a pool too small for weights and tables together is reported
    tight = scenario(hw=unified(pool=210e9, device=192e9), placement={"tier": "host"})
    assert any("one memory pool" in p for p in capacity_problems(tight))
    assert not capacity_problems(on_pool)


def test_specs_refuse_a_device_bigger_than_its_pool_and_metal_off_a_pool():
    with pytest.raises(ValueError, match="exceeds host.memory"):
        unified(pool=64e9, device=128e9).model_validate(unified(pool=64e9, device=128e9).model_dump())
    hw = hardware()
    with pytest.raises(ValueError, match="Apple silicon has one memory pool"):
        HardwareSpec.model_validate({**hw.model_dump(), "device": {**hw.device.model_dump(), "kind": "metal"}})
