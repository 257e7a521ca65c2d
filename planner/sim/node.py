"""One node's physical actors and the recorder every process reports to.

A node holds ``device.count`` devices (data-parallel replicas) that share:

* host DRAM: one :class:`FluidResource` of ``memory_bandwidth x efficiency.host_memory``, used by
  every row gather, page-cache read and host optimiser update of every device;
* PCIe uplinks: one fluid pipe per direction per group of ``link.devices_per_link`` devices
  (a PCIe switch); a lone device gets the whole link, two busy devices half each;
* the NVMe drives (one fluid pipe in pages/s, if the profile has ``nvme``).

Each device owns: a host worker pool (its share of the cores after the serving engine's,
:func:`planner.stages.engram_cores_per_device`), FIFO; one copy engine per direction (or one for both
when ``copy_engines == 1``), FIFO.

Multi-node hardware (``nodes > 1``) is simulated as one node: nodes are identical and serve
disjoint requests, so throughput scales by ``nodes`` and latencies are the node's.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import simpy

from planner.costmodel import CostModel
from planner.sim.fluid import FluidResource
from planner.stages import engram_cores_per_device
from planner.trace import Counter, Span


@dataclass
class DevicePorts:
    """The resources one device uses: its worker pool, copy engines and link pipes."""

    index: int
    pool: simpy.Resource
    pool_cores: int
    h2d_engine: simpy.Resource
    d2h_engine: simpy.Resource
    h2d: FluidResource
    d2h: FluidResource


class Node:
    """Shared resources of one node, built from the cost model's hardware."""

    def __init__(self, env: simpy.Environment, cost: CostModel):
        hw = cost.hardware
        self.env, self.cost = env, cost
        self.dram = FluidResource(env, cost.host_dram_rate(), "host_dram")
        self.nvme = FluidResource(env, cost.nvme_page_rate(), "nvme") if hw.nvme else None
        per_link = hw.link.devices_per_link
        groups = hw.device.count // per_link
        self.h2d_links = [FluidResource(env, cost.link_rate("h2d"), f"h2d_link{g}") for g in range(groups)]
        self.d2h_links = [FluidResource(env, cost.link_rate("d2h"), f"d2h_link{g}") for g in range(groups)]
        cores = engram_cores_per_device(cost)
        self.devices: list[DevicePorts] = []
        for i in range(hw.device.count):
            h2d_engine = simpy.Resource(env, capacity=1)
            d2h_engine = h2d_engine if hw.device.copy_engines == 1 else simpy.Resource(env, capacity=1)
            self.devices.append(DevicePorts(
                index=i, pool=simpy.Resource(env, capacity=1), pool_cores=cores,
                h2d_engine=h2d_engine, d2h_engine=d2h_engine,
                h2d=self.h2d_links[i // per_link], d2h=self.d2h_links[i // per_link],
            ))


@dataclass(slots=True)
class StepRecord:
    device: int
    start_s: float
    dur_s: float
    tokens: int
    decode_tokens: int
    seqs: int
    wait_s: float
    running: int = 0  # sequences holding KV blocks while the step runs
    kv_blocks_used: int = 0
    preempted: int = 0


@dataclass
class Recorder:
    """Accumulates what the metrics need; spans only when ``trace`` is on (they cost memory)."""

    trace: bool = False
    spans: list[Span] = field(default_factory=list)
    counters: list[Counter] = field(default_factory=list)
    steps: list[StepRecord] = field(default_factory=list)
    # Per Engram layer: total stall of compute, and time in each fetch stage (summed over steps).
    wait_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    fetch_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    window_s: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    fetches: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    stage_s: dict[int, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    rows_fetched: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    rows_requested: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    bytes_requested: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    bytes_by_tier: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    # Where each layer's random rows come from, as the gather rate priced them (llc / dram, pages).
    regime: dict[int, str] = field(default_factory=dict)
    # The engine's own seconds per step (overhead, hash on the engine thread, a worker holding
    # the compute cores), summed over steps.
    host_s: float = 0.0
    # Op kinds priced beyond the shapes a calibrated profile's op curves were fitted on:
    # kind -> the largest ratio seen.
    extrapolated: dict[str, float] = field(default_factory=dict)
    # Delivered into device-usable memory by a CPU "device" gathering on its own cores.
    cpu_gathered: float = 0.0
    d2h_requested: float = 0.0
    # Compute time by op kind and roofline bound, summed over steps and devices.
    op_s: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    preemptions: int = 0
    recomputed_tokens: int = 0  # KV tokens dropped by preemption and prefilled again

    def span(self, name: str, track: str, start_s: float, dur_s: float, **args) -> None:
        if self.trace and dur_s > 0:
            self.spans.append(Span(name, track, start_s, dur_s, args))

    def counter(self, track: str, time_s: float, **values: float) -> None:
        if self.trace:
            self.counters.append(Counter(track, time_s, values))

    def stage(self, layer: int, stage: str, dur_s: float) -> None:
        self.stage_s[layer][stage] += dur_s
