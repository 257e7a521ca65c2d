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
from planner.trace import FLOW_IN, FLOW_OUT, Counter, Span


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


@dataclass(slots=True)
class Trail:
    """What the spans of one traced lookup share: the engine step it serves, and the flow id its
    next span takes in (the previous stage's ``flow_out``), so that a trace draws the lookup as
    arrows gather -> copy -> the Engram op that uses the rows (:mod:`planner.trace`)."""

    step: int | None = None
    flow: int | None = None


@dataclass
class Recorder:
    """Accumulates what the metrics need; spans only when ``trace`` is on (they cost memory)."""

    trace: bool = False
    spans: list[Span] = field(default_factory=list)
    # KV use of each device, and the load of the shared pipes (:meth:`load`).
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
    # Delivered into device-usable memory by gathers alone (a CPU "device", one memory pool).
    in_place_gathered: float = 0.0
    d2h_requested: float = 0.0
    # Compute time by op kind and roofline bound, summed over steps and devices.
    op_s: dict[str, dict[str, float]] = field(default_factory=lambda: defaultdict(lambda: defaultdict(float)))
    preemptions: int = 0
    recomputed_tokens: int = 0  # KV tokens dropped by preemption and prefilled again

    flow_ids: int = 0  # flow ids handed out so far
    # Per load counter track: the time, value and index in ``counters`` of its latest sample.
    loads: dict[str, tuple[float, float, int]] = field(default_factory=dict)

    def trail(self, step: int | None) -> Trail | None:
        """A new lookup's trail when tracing (None otherwise: nothing to link)."""
        return Trail(step) if self.trace else None

    def span(self, name: str, track: str, start_s: float, dur_s: float, trail: Trail | None = None,
             ends: bool = False, **args) -> None:
        """Record a span (tracing only; an empty one is left out). ``trail``: the span is a
        stage of that lookup: it takes the step, the flow in from the trail's previous span and,
        unless it ``ends`` the trail (the consumer), a new flow out to the next one."""
        if self.trace and dur_s > 0:
            if trail is not None:
                if trail.step is not None:
                    args["step"] = trail.step
                if trail.flow is not None:
                    args[FLOW_IN] = trail.flow
                if ends:
                    trail.flow = None
                else:
                    self.flow_ids += 1
                    trail.flow = args[FLOW_OUT] = self.flow_ids
            self.spans.append(Span(name, track, start_s, dur_s, args))

    def counter(self, track: str, time_s: float, **values: float) -> None:
        if self.trace:
            self.counters.append(Counter(track, time_s, values))

    def load(self, tracks: list[str], pipe: FluidResource) -> None:
        """Sample the load of ``pipe`` (its flows' rates over its capacity, 0..1) on each counter
        track of ``tracks``, when tracing. Called wherever a flow joins or leaves the pipe:
        between those instants the rates are constant, so the samples are the exact step chart.
        A sample equal to the track's previous one is dropped, one at the same instant replaces
        it (the count stays bounded by the transfers, not their interleaving)."""
        if not self.trace:
            return
        now = pipe.env.now
        value = min(1.0, sum(f.rate for f in pipe.flows) / pipe.capacity)
        for track in tracks:
            last = self.loads.get(track)
            if last is not None and last[1] == value:
                continue
            if last is not None and last[0] == now:
                index = last[2]
                self.counters[index] = Counter(track, now, {"utilisation": value})
            else:
                index = len(self.counters)
                self.counters.append(Counter(track, now, {"utilisation": value}))
            self.loads[track] = (now, value, index)

    def stage(self, layer: int, stage: str, dur_s: float) -> None:
        self.stage_s[layer][stage] += dur_s
