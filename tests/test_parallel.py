"""Tensor-parallel ranks (planner.parallel): a group prices as one engine on the group view of
the hardware; shards add up to the whole; collectives cost what a ring all-reduce costs; KV is
replicated where a rank needs a KV head of its own."""

from __future__ import annotations

import pytest

from planner.accounting import kv_cache_bytes_per_token, weight_bytes
from planner.analytic import estimate_run, estimate_step
from planner.costmodel import BatchShape, CostModel
from planner.memory import device_memory
from planner.parallel import engine_view, group_view, kv_replication
from planner.sim.run import simulate
from planner.specs.limits import capacity_problems
from tests.sim_helpers import hardware, scenario


def tp(s, n: int):
    return s.model_copy(update={"workload": s.workload.model_copy(update={"tensor_parallel_size": n})})


def test_group_view_adds_up_its_ranks():
    hw = hardware(8, per_link=2, memory=80e9)
    g = group_view(hw, 4)
    assert (g.device.count, g.device.ranks) == (2, 4)
    assert g.device.memory == 4 * hw.device.memory and g.device.memory_bandwidth == 4 * hw.device.memory_bandwidth
    assert g.device.flops_for("bf16") == 4 * hw.device.flops_for("bf16")
    # 4 ranks behind switches of 2: two uplinks per group, no sharing between groups
    assert g.link.h2d_bandwidth == 2 * hw.link.h2d_bandwidth and g.link.devices_per_link == 1
    g2 = group_view(hw, 2)  # one switch per group
    assert g2.link.h2d_bandwidth == hw.link.h2d_bandwidth and g2.link.devices_per_link == 1
    with pytest.raises(ValueError, match="does not divide hardware.device.count = 8"):
        group_view(hw, 3)


def test_a_group_of_ranks_holds_its_shards_and_replicates_a_latent():
    s = scenario(hw=hardware(8, memory=80e9), placement={"tier": "host"})  # dense-8b-engram-100b, GQA 8 KV heads
    one, four = device_memory(s), device_memory(tp(s, 4))
    w = weight_bytes(s.model)
    assert one.weights == four.weights == w  # the group holds the whole model once, over 4 ranks' memory
    assert four.capacity == 4 * one.capacity
    assert kv_replication(s.model, 4) == 1.0 and kv_replication(s.model, 16) == 2.0
    mla = scenario("tiny", hw=hardware(8, memory=80e9))
    assert kv_replication(mla.model, 4) == 4.0  # the MLA latent is on every rank
    per_token = kv_cache_bytes_per_token(mla.model)
    assert device_memory(tp(mla, 4)).kv_bytes_per_token == 4 * per_token


def test_collectives_cost_a_ring_all_reduce_and_nothing_on_one_device():
    s = scenario(hw=hardware(8, memory=80e9))
    shape = BatchShape.decode(32, 1024)
    one = CostModel(s.model, s.hardware)
    group = CostModel(s.model, engine_view(tp(s, 4)).hardware)
    assert one.terms(one.attention(shape)).comm_s == 0.0
    t = group.terms(group.attention(shape))
    d = s.hardware.device
    nbytes = 32 * s.model.d_model * 2  # the step's hidden states, bf16
    ic = d.interconnect_bandwidth or s.hardware.link.h2d_bandwidth
    assert t.comm_s == pytest.approx(2 * 3 / 4 * nbytes / ic + 2 * 3 * d.interconnect_latency)
    # four ranks compute a step faster than one, but not four times faster (the collectives)
    assert one.seconds(one.attention(shape)) > group.seconds(group.attention(shape)) \
        > one.seconds(one.attention(shape)) / 4


def test_tensor_parallel_serving_simulates_and_agrees_with_the_estimate():
    """The 100B-table model on 8 devices as 2 groups of 4: every request is served, the fetch's
    bytes are the same per token (the heads are split, not repeated; without de-duplication,
    which a group's larger batch would help), and the estimate and the simulation agree as they
    do on one device (within 10%)."""
    where = {"tier": "host", "dedup": False}
    s = tp(scenario(hw=hardware(8, memory=80e9), seqs=32, prompt=64, output=16, placement=where), 4)
    m = simulate(s, baseline=False)
    assert m.output_tokens == 32 * 16
    single = simulate(scenario(hw=hardware(8, memory=80e9), seqs=32, prompt=64, output=16, placement=where),
                      baseline=False)
    assert m.bytes_requested["to_device"] == pytest.approx(single.bytes_requested["to_device"], rel=0.05)
    est = estimate_run(s)
    assert float(est.throughput_output_tokens_per_s) == pytest.approx(m.throughput_output_tokens_per_s, rel=0.10)
    assert estimate_step(s).bound in ("hbm", "compute", "interconnect", "launch")


def test_a_model_too_big_for_one_device_fits_a_group():
    """200 GB of device-tier tables do not fit one 80 GB device; split over 8 ranks they do."""
    s = scenario(hw=hardware(8, memory=80e9), placement={"tier": "device"})
    assert capacity_problems(s)
    assert not capacity_problems(tp(s, 8))
    assert "tensor-parallel" in capacity_problems(tp(s, 2))[0]


def test_the_scenario_refuses_a_group_that_does_not_divide_the_node():
    s = scenario(hw=hardware(8, memory=80e9))
    with pytest.raises(ValueError, match="tensor_parallel_size = 3 does not divide"):
        type(s).model_validate({**s.model_dump(), "workload": {**s.workload.model_dump(), "tensor_parallel_size": 3}})


def test_host_memory_counts_every_replicas_tables_unless_they_share_one_copy():
    """8 data-parallel devices with their own copy of the 200 GB host table need 1.6 TB of DRAM;
    two TP4 groups need two copies; one shared copy (vLLM's dp_shared_memory) needs one."""
    from planner.parallel import host_table_copies

    hw = hardware(8, memory=80e9).model_copy(update={"host": hardware().host.model_copy(update={"memory": 1e12})})
    shared = scenario(hw=hw, placement={"tier": "host"})
    own = scenario(hw=hw, placement={"tier": "host", "host_copies": "per_replica"})
    assert host_table_copies(shared) == 1 and host_table_copies(own) == 8 and host_table_copies(tp(own, 4)) == 2
    assert not capacity_problems(shared)
    problem = capacity_problems(own)
    assert problem and "1.6 TB" in problem[0]
    assert host_table_copies(engine_view(tp(own, 4))) == 2  # the group view counts groups too
