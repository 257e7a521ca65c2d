"""Tensor-parallel ranks: a group of ``workload.tensor_parallel_size`` devices serving one model
replica, as vLLM's and SGLang's ``--tensor-parallel-size`` run it; the node's other groups are
data-parallel replicas sharing its host DRAM and PCIe switches.

The simulator and the analytic estimator price a group as one engine on a *group view* of the
hardware (:func:`engine_view`): ``tp`` times the FLOP/s, HBM capacity and bandwidth, copy
engines and host links of one rank (each rank has its own link; ranks behind one PCIe switch
share it), ``device.ranks = tp`` and ``device.count`` the node's groups. What a group pays that
one big device would not:

* **collectives**: each block's attention and FFN end in an all-reduce of the step's hidden
  states (Megatron-style tensor parallelism), priced as a ring over the interconnect,
  ``2 (tp - 1) / tp x bytes / bandwidth + 2 (tp - 1) x latency``
  (:meth:`planner.costmodel.CostModel.collective_s`); NVLink where the device has it
  (``device.interconnect_bandwidth``), else peer copies over the host link;
* **Engram**: vLLM shards the tables by hash head over the ranks (each rank holds and fetches
  its heads' rows: the bytes a token needs are split, not repeated) and all-gathers the rows
  after the lookup (vllm ``deepseek_v41/common/engram.py``, ``ParallelEngramEmbedding``,
  ``tensor_model_parallel_all_gather``); the all-gather is priced like the all-reduce;
* **KV cache**: attention heads are split over the ranks, but a cache with fewer KV heads than
  ranks is replicated: an MLA latent (one "head") on every rank, GQA with ``n_kv_heads < tp`` on
  ``tp / n_kv_heads`` ranks each (:func:`kv_replication`, as vLLM replicates KV heads).

Simplifications: GEMMs split ``tp`` ways run at the efficiency of the whole (smaller GEMMs are
slower per FLOP); no overlap of collectives with compute; host-tier tables are one copy per
node, shared by the node's groups (vLLM's ``dp_shared_memory``; without it each replica keeps
its own).
"""

from __future__ import annotations

from planner.accounting import TierFootprint
from planner.specs import Scenario
from planner.specs.hardware import HardwareSpec
from planner.specs.model import GQAAttention, ModelSpec


def tensor_parallel_size(scenario: Scenario) -> int:
    return int(getattr(scenario.workload, "tensor_parallel_size", 1))


def engine_view(scenario: Scenario) -> Scenario:
    """``scenario`` with its hardware seen as tensor-parallel groups (one "device" per group);
    itself when ``tensor_parallel_size`` is 1 or the view is already taken."""
    tp = tensor_parallel_size(scenario)
    if tp == 1 or scenario.hardware.device.ranks == tp:
        return scenario
    return scenario.model_copy(update={"hardware": group_view(scenario.hardware, tp)})


def group_view(hw: HardwareSpec, tp: int) -> HardwareSpec:
    """One device of the result is a group of ``tp`` devices of ``hw`` (see the module doc)."""
    d, link = hw.device, hw.link
    if d.count % tp:
        raise ValueError(f"workload.tensor_parallel_size = {tp} does not divide hardware.device.count = {d.count}")
    per_link = link.devices_per_link
    # Ranks behind one switch share its uplink: a group spans max(1, tp / per_link) uplinks,
    # and max(1, per_link / tp) groups share one.
    uplinks = max(1.0, tp / per_link)
    device = d.model_copy(update={
        "count": d.count // tp, "ranks": tp,
        "flops": {k: v * tp for k, v in d.flops.items()},
        "memory": d.memory * tp, "memory_bandwidth": d.memory_bandwidth * tp,
        "copy_engines": d.copy_engines * tp,
        "interconnect_bandwidth": d.interconnect_bandwidth or link.h2d_bandwidth,
    })
    scaled = {k: getattr(link, k) * uplinks for k in ("h2d_bandwidth", "d2h_bandwidth", "pageable_h2d_bandwidth",
                                                       "uva_read_bandwidth") if getattr(link, k) is not None}
    link = link.model_copy(update={**scaled, "devices_per_link": max(1, per_link // tp)})
    # The serving engine runs a worker process per rank: its host cores scale with the ranks.
    host = hw.host.model_copy(update={"engine_cores": hw.host.engine_cores * tp})
    return hw.model_copy(update={"device": device, "link": link, "host": host})


def host_table_copies(scenario: Scenario) -> int:
    """Copies of the host-tier tables a node holds: one (shared by its replicas), or one per
    data-parallel replica (``placement.host_copies: per_replica``)."""
    if scenario.placement.host_copies == "shared":
        return 1
    d = scenario.hardware.device  # count x ranks is the node's devices, in a group view or not
    return d.count * d.ranks // tensor_parallel_size(scenario)


def kv_replication(model: ModelSpec, ranks: int) -> float:
    """How many copies of each token's KV a group of ``ranks`` keeps (1 without tensor
    parallelism): attention heads are split over the ranks, but a rank needs at least one KV
    head, so an MLA latent is on every rank and GQA with fewer KV heads than ranks repeats each."""
    if ranks == 1:
        return 1.0
    att = model.attention
    heads = att.n_kv_heads if isinstance(att, GQAAttention) else 1
    return float(ranks) / min(ranks, heads)


# Parts of a footprint that live in device memory (planner.accounting.tier_footprint's keys).
_DEVICE_PARTS = ("weights", "kv_cache", "engram_table_", "engram_cache_")


def per_rank(footprint: TierFootprint, model: ModelSpec, ranks: int) -> TierFootprint:
    """One rank's share of a group's ``footprint``: weights, device-tier tables and hot-row
    caches split over the ranks, the KV cache split too but replicated where
    :func:`kv_replication` says; host and disk tiers unchanged (per node)."""
    if ranks == 1:
        return footprint
    parts = {}
    for key, value in footprint.breakdown.items():
        if key.startswith(_DEVICE_PARTS):
            value = value * (kv_replication(model, ranks) if key == "kv_cache" else 1.0) / ranks
        parts[key] = value
    device = sum(v for k, v in parts.items() if k.startswith(_DEVICE_PARTS))
    return TierFootprint(device=device, host=footprint.host, disk=footprint.disk, breakdown=parts)
