"""The Engram fetch pipeline of one device: hash -> (NVMe read) -> host lookup -> copy.

The stages and their durations are :mod:`planner.stages`' (the analytic estimator adds up the
same ones); this module schedules them on the node's shared resources. One step's rows travel
like this (ENGRAM.md section 5, ARCHITECTURE.md):

1. **hash** the step's token ids, every Engram layer's (prefetch: on the device's host worker
   pool; on demand: on the engine thread, before the forward: :mod:`planner.sim.inference`);
2. **disk** tier only: read the rows that miss the device cache and the DRAM page cache from
   NVMe, one page per row (a 160 B row costs a 4 KiB read), through the node's shared NVMe pipe;
3. **lookup** (``host_mode: staged``): the worker pool pays the lookup's host overhead (plan,
   de-duplication, assembly) and gathers the rows into a pinned staging buffer at the rate the
   profile gives for the table's size, through the node's shared DRAM pipe;
4. **copy**: the device's h2d copy engine moves the buffer over its (possibly shared) uplink.
   ``host_mode: uva`` skips 3-4: a device kernel reads the rows straight over the link at the
   UVA rate. ``pinned: false`` stops after 3: the pageable copy is synchronous, so the compute
   stream itself performs it when it reaches the Engram layer (:mod:`planner.sim.device`).

Layers queue FIFO on each stage (the pool and the copy engine serve one job at a time), so
layer 2's gather overlaps layer 1's copy. Hot rows cached on the device never leave it.

Simplifies: UVA reads do not load the DRAM pipe; the DMA read of the staging buffer does not
load it either (it is a tenth of the gather's scattered traffic per useful byte, or less).
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from planner.costmodel import CostModel
from planner.ngram_model import NgramTraffic
from planner.sim.node import DevicePorts, Node, Recorder
from planner.specs import EngramPlacement
from planner.stages import LayerFetch, copy_mode, hash_s, host_placement, layer_fetch


@dataclass(frozen=True)
class FetchHandle:
    """A launched fetch: the process that ends (returning the time) when the rows are usable."""

    process: simpy.Process
    started_s: float


class Fetcher:
    """Launches and records the fetch processes of one device."""

    def __init__(self, env: simpy.Environment, node: Node, ports: DevicePorts, cost: CostModel,
                 placement: EngramPlacement, traffic: dict[int, NgramTraffic], row_bytes: float,
                 recorder: Recorder, cpu_device: bool):
        self.env, self.node, self.ports, self.cost = env, node, ports, cost
        self.placement, self.traffic, self.row_bytes, self.rec = placement, traffic, row_bytes, recorder
        self.cpu_device = cpu_device
        self.offloaded = [l for l in traffic if placement.tier_of(l) != "device"]
        self.host = host_placement(cost, placement, ports.pool_cores)
        self.tag = f"dev{ports.index} "
        # pinned: false with staged gathers: the synchronous pageable copy runs on the stream.
        self.copies_on_stream = copy_mode(cost, placement) == "pageable"

    # ---- what to fetch

    def plan(self, layer: int, tokens: int) -> LayerFetch:
        return layer_fetch(self.cost, self.placement, self.traffic[layer], layer, tokens, self.host).scalars()

    # ---- launching

    def hash_seconds(self, tokens: int) -> float:
        return float(hash_s(self.cost, tokens, self.host))

    def start(self, tokens: int, layers: list[int], hashed: bool = True) -> dict:
        """Start fetching ``layers``' rows for a step of ``tokens`` tokens; returns, per layer,
        a handle whose process ends when the rows are usable on the device (or, pageable,
        gathered). ``hashed``: hash the step's ids first on the worker pool (prefetch; the
        handle under key ``"hash"`` ends when the ids are known); False: the ids are known
        (hashed on the engine thread), the lookups start now."""
        hashed_proc = self.env.process(self._hash(tokens)) if hashed else None
        ready = {}
        if hashed_proc is not None:
            ready["hash"] = FetchHandle(hashed_proc, self.env.now)
        for layer in layers:
            plan = self.plan(layer, tokens)
            self.rec.rows_requested[layer] += float(plan.lookups)
            self.rec.rows_fetched[layer] += float(plan.rows)
            self.rec.bytes_requested[layer] += float(plan.bytes)
            self.rec.bytes_by_tier[plan.tier] += float(plan.bytes)
            self.rec.regime[layer] = plan.regime
            ready[layer] = FetchHandle(self.env.process(self._timed(self._layer(plan, hashed_proc))), self.env.now)
        return ready

    def _timed(self, gen):
        yield from gen
        return self.env.now

    def _hash(self, tokens: int):
        dur = self.hash_seconds(tokens)
        with self.ports.pool.request() as slot:
            yield slot
            start = self.env.now
            yield self.env.timeout(dur)
        self.rec.span("hash", self.tag + "host_cpu", start, dur, tokens=tokens)
        for layer in self.offloaded:
            self.rec.stage(layer, "hash", dur / len(self.offloaded))

    def _layer(self, plan: LayerFetch, hashed: simpy.Process | None):
        if hashed is not None:
            yield hashed
        if plan.rows <= 0:
            return
        env, layer = self.env, plan.layer
        if plan.disk_rows > 0:
            start = env.now
            nvme = self.cost.hardware.nvme
            pages = float(self.cost.nvme_pages(plan.disk_rows, self.row_bytes))
            yield env.timeout(nvme.read_latency)
            yield self.node.nvme.transfer(pages)
            self.rec.bytes_by_tier["nvme_read"] += pages * nvme.page_size
            self._done_stage(layer, "disk", f"gather_L{layer}", "nvme", start, rows=plan.disk_rows)
        if plan.copy_mode == "uva":
            start = env.now
            yield env.timeout(self.cost.hardware.link.latency)
            yield self.ports.h2d.transfer(plan.bytes, cap=self.cost.link_rate("h2d", "uva", plan.bytes))
            self._done_stage(layer, "link", f"h2d_L{layer}", "h2d", start, bytes=plan.bytes, mode="uva")
            return
        yield from self.gather(plan)
        if self.cpu_device or self.copies_on_stream:
            return  # usable in place (CPU), or the compute stream copies it (pageable)
        yield from self.copy(plan, "pinned")

    def gather(self, plan: LayerFetch):
        """Worker pool copies the rows into staging, sharing DRAM with every other stream."""
        env = self.env
        with self.ports.pool.request() as slot:
            yield slot
            start = env.now
            # The lookup's own host work (plan, de-duplication, assembly) on the same worker.
            if plan.overhead_s > 0:
                yield env.timeout(float(plan.overhead_s))
            yield self.node.dram.transfer(float(plan.bytes), cap=float(plan.gather_rate))
        if self.cpu_device:
            self.rec.cpu_gathered += float(plan.bytes)
        self._done_stage(plan.layer, "gather", f"gather_L{plan.layer}", "host_gather", start, bytes=plan.bytes)

    def copy(self, plan: LayerFetch, mode: str):
        """Host-to-device DMA on this device's copy engine and its uplink."""
        env = self.env
        with self.ports.h2d_engine.request() as engine:
            yield engine
            start = env.now
            yield env.timeout(self.cost.hardware.link.latency)
            yield self.ports.h2d.transfer(plan.bytes, cap=self.cost.link_rate("h2d", mode, plan.bytes))
        self._done_stage(plan.layer, "link", f"h2d_L{plan.layer}", "h2d", start, bytes=plan.bytes, mode=mode)

    def _done_stage(self, layer: int, stage: str, name: str, track: str, start: float, **args) -> None:
        dur = self.env.now - start
        self.rec.stage(layer, stage, dur)
        self.rec.span(name, self.tag + track, start, dur, **args)

    # ---- training: gradients back to the host tier and the sparse optimiser

    def write_back(self, layer: int, tokens: int, optimizer: str):
        """Row gradients (one per distinct row touched, accumulated on the device) go d2h,
        then the host worker pool applies the sparse optimiser to the table in DRAM.
        Simplifies: the device-cached rows are updated on the device (no traffic)."""
        env, p = self.env, self.placement
        rows = self.traffic[layer].rows_fetched(tokens, p.cache_fraction, p.dedup)
        grad_bytes = rows * self.row_bytes
        self.rec.d2h_requested += grad_bytes
        if not self.cpu_device:
            with self.ports.d2h_engine.request() as engine:
                yield engine
                start = env.now
                yield env.timeout(self.cost.hardware.link.latency)
                yield self.ports.d2h.transfer(grad_bytes, cap=self.cost.link_rate("d2h", "pinned", grad_bytes))
            self._done_stage(layer, "d2h", f"d2h_grad_L{layer}", "d2h", start, bytes=grad_bytes)
        with self.ports.pool.request() as slot:
            yield slot
            start = env.now
            yield self.node.dram.transfer(self.cost.optimizer_bytes(rows, optimizer),
                                          cap=float(self.cost.gather_rate(self.host.cores, self.cost.table_bytes(layer))))
        self._done_stage(layer, "optim", f"optim_L{layer}", "host_cpu", start, rows=rows)
