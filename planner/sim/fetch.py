"""The Engram fetch pipeline of one device: hash -> (NVMe read) -> host gather -> copy.

Read top to bottom, one step's rows travel like this (ENGRAM.md section 5, ARCHITECTURE.md):

1. **hash** the step's token ids on the device's host worker pool (all offloaded layers at once
   when prefetching; each layer's share when fetched on demand);
2. **disk** tier only: read the rows that miss the device cache and the DRAM page cache from
   NVMe, one page per row (a 160 B row costs a 4 KiB read), through the node's shared NVMe pipe;
3. **gather** (``host_mode: staged``): the worker pool copies the rows into a pinned staging
   buffer, at ``pool cores x gather_bandwidth_per_core``, through the node's shared DRAM pipe;
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


@dataclass(frozen=True)
class LayerFetch:
    """One layer's rows for one step: ``rows`` leave the tier (after de-duplication and the
    device cache); ``disk_rows`` of them come from NVMe (the rest from DRAM)."""

    layer: int
    tier: str
    rows: float
    bytes: float
    disk_rows: float
    lookups: float


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
        host = cost.hardware.host
        # A CPU device's lookups run on its compute cores (on demand) or on the cores compute
        # leaves free (prefetch worker); a GPU's workers are its share of the host cores.
        cpu_cores = cost.cpu_fetch_cores(placement.prefetch) if cpu_device else 0
        if cpu_device and cpu_cores < 1:
            cpu_cores = cost.cpu_compute_cores()  # no free core: prefetch off, on demand
        self.gather_cap = (cpu_cores if cpu_device else ports.pool_cores) * host.gather_bandwidth_per_core
        self.hash_cores = cpu_cores if cpu_device else ports.pool_cores
        self.tag = f"dev{ports.index} "
        # pinned: false with staged gathers: the synchronous pageable copy runs on the stream.
        self.copies_on_stream = not placement.pinned and not cpu_device and placement.host_mode == "staged"

    # ---- what to fetch

    def plan(self, layer: int, tokens: int) -> LayerFetch:
        p = self.placement
        tier = p.tier_of(layer)
        traffic = self.traffic[layer]
        rows = traffic.rows_fetched(tokens, p.cache_fraction, p.dedup)
        disk_rows = 0.0
        if tier == "disk":
            # The DRAM page cache holds the next-hottest rows after the device cache.
            hit_dev = traffic.hit_rate(p.cache_fraction)
            hit_both = traffic.hit_rate(min(1.0, p.cache_fraction + p.host_cache_fraction))
            in_dram = (hit_both - hit_dev) / (1.0 - hit_dev) if hit_dev < 1 else 1.0
            disk_rows = rows * (1.0 - float(in_dram))
        return LayerFetch(layer, tier, rows, rows * self.row_bytes, disk_rows,
                          tokens * traffic.rows_per_token)

    # ---- launching

    def start(self, tokens: int, layers: list[int]) -> dict[int, FetchHandle]:
        """Start fetching ``layers``' rows for a step of ``tokens`` tokens; returns, per layer,
        a handle whose process ends when the rows are usable on the device (or, pageable,
        gathered)."""
        share = len(layers) / len(self.offloaded)
        hashed = self.env.process(self._hash(tokens, share))
        ready = {}
        for layer in layers:
            plan = self.plan(layer, tokens)
            self.rec.rows_requested[layer] += plan.lookups
            self.rec.rows_fetched[layer] += plan.rows
            self.rec.bytes_requested[layer] += plan.bytes
            self.rec.bytes_by_tier[plan.tier] += plan.bytes
            ready[layer] = FetchHandle(self.env.process(self._timed(self._layer(plan, hashed))), self.env.now)
        return ready

    def _timed(self, gen):
        yield from gen
        return self.env.now

    def _hash(self, tokens: int, share: float):
        dur = self.cost.hash(tokens, self.hash_cores) * share
        with self.ports.pool.request() as slot:
            yield slot
            start = self.env.now
            yield self.env.timeout(dur)
        self.rec.span("hash", self.tag + "host_cpu", start, dur, tokens=tokens)
        for layer in self.offloaded:
            self.rec.stage(layer, "hash", dur / len(self.offloaded))

    def _layer(self, plan: LayerFetch, hashed: simpy.Process):
        yield hashed
        if plan.rows <= 0:
            return
        env, layer = self.env, plan.layer
        if plan.disk_rows > 0:
            start = env.now
            nvme = self.cost.hardware.nvme
            yield env.timeout(nvme.read_latency)
            yield self.node.nvme.transfer(self.cost.nvme_pages(plan.disk_rows, self.row_bytes))
            self.rec.bytes_by_tier["nvme_read"] += float(self.cost.nvme_pages(plan.disk_rows, self.row_bytes)) * nvme.page_size
            self._done_stage(layer, "disk", f"gather_L{layer}", "nvme", start, rows=plan.disk_rows)
        if self.placement.host_mode == "uva" and not self.cpu_device:
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
            overhead = float(self.cost.lookup_overhead(plan.lookups))
            if overhead > 0:
                yield env.timeout(overhead)
            yield self.node.dram.transfer(plan.bytes, cap=self.gather_cap)
        if self.cpu_device:
            self.rec.cpu_gathered += plan.bytes
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
            yield self.node.dram.transfer(self.cost.optimizer_bytes(rows, optimizer), cap=self.gather_cap)
        self._done_stage(layer, "optim", f"optim_L{layer}", "host_cpu", start, rows=rows)
