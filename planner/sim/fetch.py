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

Traced, every stage is a span carrying the layer, the step and what it moved, linked to the
next stage by a flow (:class:`planner.sim.node.Trail`), and each join or leave of a shared pipe
samples its load (counters ``devN h2d link``, ``devN d2h link``, ``dram``, ``nvme``).

Simplifies: UVA reads do not load the DRAM pipe; the DMA read of the staging buffer does not
load it either (it is a tenth of the gather's scattered traffic per useful byte, or less).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy

from planner.costmodel import CostModel
from planner.ngram_model import NgramTraffic
from planner.sim.fluid import FluidResource
from planner.sim.node import DevicePorts, Node, Recorder, Trail
from planner.specs import EngramPlacement
from planner.stages import LayerFetch, copy_mode, hash_s, host_placement, layer_fetch


@dataclass(frozen=True)
class FetchHandle:
    """A launched fetch: the process that ends (returning the time) when the rows are usable;
    ``trail``: its spans' step and flow (tracing only), which the compute op using the rows ends."""

    process: simpy.Process
    started_s: float
    trail: Trail | None = None


class Fetcher:
    """Launches and records the fetch processes of one device."""

    def __init__(self, env: simpy.Environment, node: Node, ports: DevicePorts, cost: CostModel,
                 placement: EngramPlacement, traffic: dict[int, NgramTraffic], row_bytes: float,
                 recorder: Recorder, in_place: bool, exclusive: bool = False):
        self.env, self.node, self.ports, self.cost = env, node, ports, cost
        self.placement, self.traffic, self.row_bytes, self.rec = placement, traffic, row_bytes, recorder
        # Gathered rows are usable where they land: a CPU "device", or a device sharing one
        # memory pool with the host (link.kind: unified). No copy, no gradient copy back.
        self.in_place = in_place
        self.offloaded = [l for l in traffic if placement.tier_of(l) != "device"]
        self.host = host_placement(cost, placement, ports.pool_cores)
        self.tag = f"dev{ports.index} "
        # Load counters of this device's pipes: a link shared by several devices shows on each.
        self.h2d_tracks = [f"dev{d.index} h2d link" for d in node.devices if d.h2d is ports.h2d]
        self.d2h_tracks = [f"dev{d.index} d2h link" for d in node.devices if d.d2h is ports.d2h]
        # pinned: false with staged gathers: the synchronous pageable copy runs on the stream.
        mode = copy_mode(cost, placement)
        self.copies_on_stream = mode == "pageable"
        # A step's plan and hash time depend on its token count only: priced once per count.
        self._plans: dict[tuple[int, int], LayerFetch] = {}
        self._hash_s: dict[int, float] = {}
        # ``exclusive``: one step's fetch at a time holds this device's worker pool and copy
        # engine (inference: the forward waits for every layer it launched before the next step
        # starts). Then a prefetch of staged, non-disk lookups is one chain (:meth:`_chain`),
        # timed as the queued stages would be, in a third of the events.
        self.chained = exclusive and mode in ("pinned", "none") and all(
            placement.tier_of(layer) != "disk" for layer in self.offloaded)

    # ---- what to fetch

    def plan(self, layer: int, tokens: int) -> LayerFetch:
        key = (layer, tokens)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = layer_fetch(self.cost, self.placement, self.traffic[layer], layer, tokens,
                                                  self.host).scalars()
        return plan

    # ---- launching

    def hash_seconds(self, tokens: int) -> float:
        secs = self._hash_s.get(tokens)
        if secs is None:
            secs = self._hash_s[tokens] = float(hash_s(self.cost, tokens, self.host))
        return secs

    def start(self, tokens: int, layers: list[int], hashed: bool = True, step: int | None = None) -> dict:
        """Start fetching ``layers``' rows for a step of ``tokens`` tokens; returns, per layer,
        a handle whose process ends when the rows are usable on the device (or, pageable,
        gathered). ``hashed``: hash the step's ids first on the worker pool (prefetch; the
        handle under key ``"hash"`` ends when the ids are known); False: the ids are known
        (hashed on the engine thread), the lookups start now. ``step``: the device's step the
        rows are for (a span arg)."""
        if hashed and self.chained:
            return self._start_chain(tokens, layers, step)
        hashed_proc = self.env.process(self._hash(tokens, step)) if hashed else None
        ready = {}
        if hashed_proc is not None:
            ready["hash"] = FetchHandle(hashed_proc, self.env.now)
        for layer in layers:
            plan, trail = self._launch(layer, tokens), self.rec.trail(step)
            ready[layer] = FetchHandle(self.env.process(self._layer(plan, hashed_proc, trail)), self.env.now, trail)
        return ready

    def _launch(self, layer: int, tokens: int) -> LayerFetch:
        """The plan of a lookup being launched, its rows and bytes recorded."""
        plan, rec = self.plan(layer, tokens), self.rec
        rec.rows_requested[layer] += plan.lookups
        rec.rows_fetched[layer] += plan.rows
        rec.bytes_requested[layer] += plan.bytes
        rec.bytes_by_tier[plan.tier] += plan.bytes
        rec.regime[layer] = plan.regime
        return plan

    def _start_chain(self, tokens: int, layers: list[int], step: int | None) -> dict:
        """:meth:`start` when this device's pool and copy engine serve this step alone: the hash
        is a timeout event; one process gathers the layers in order (the pool's FIFO order) and
        hands each to the copy engine, which copies in the same order."""
        env, now = self.env, self.env.now
        dur = self.hash_seconds(tokens)
        hashed = env.timeout(dur, value=now + dur)
        self.rec.span("hash", self.tag + "host_cpu", now, dur, tokens=tokens, step=step, layers=len(self.offloaded))
        for layer in self.offloaded:
            self.rec.stage(layer, "hash", dur / len(self.offloaded))
        plans = [self._launch(layer, tokens) for layer in layers]
        usable = [env.event() for _ in plans]
        trails = [self.rec.trail(step) for _ in plans]
        env.process(self._chain(plans, usable, trails, dur))
        ready = {"hash": FetchHandle(hashed, now)}
        ready.update({plan.layer: FetchHandle(event, now, trail) for plan, event, trail in zip(plans, usable, trails)})
        return ready

    def _chain(self, plans: list[LayerFetch], usable: list[simpy.Event], trails: list[Trail | None], hash_s: float):
        env, copied = self.env, None
        head = hash_s  # the hash, then the first lookup's own overhead, in one wait
        for i, (plan, trail) in enumerate(zip(plans, trails)):
            if plan.rows <= 0:
                if head > 0:
                    yield env.timeout(head)
                    head = 0.0
                usable[i].succeed(env.now)
                continue
            start = env.now + head
            wait = head + float(plan.overhead_s)
            head = 0.0
            if wait > 0:
                yield env.timeout(wait)
            yield from self._through(self.node.dram, ["dram"], plan.bytes, plan.gather_rate)
            self._gathered(plan, start, trail)
            if self.in_place:
                usable[i].succeed(env.now)
            elif i == len(plans) - 1:  # the last layer: copy it here, after the copies queued
                if copied is not None and not copied.processed:
                    yield copied
                yield from self._copy_now(plan, "pinned", trail)
                usable[i].succeed(env.now)
            else:
                copied = env.process(self._copy_after(copied, plan, usable[i], trail))

    def _copy_after(self, previous: simpy.Process | None, plan: LayerFetch, usable: simpy.Event,
                    trail: Trail | None):
        if previous is not None and not previous.processed:
            yield previous
        yield from self._copy_now(plan, "pinned", trail)
        usable.succeed(self.env.now)

    def _through(self, pipe: FluidResource, tracks: list[str], amount: float, cap: float):
        """Move ``amount`` through a shared pipe, its load sampled as the flow joins and leaves."""
        done = pipe.transfer(amount, cap=cap)
        self.rec.load(tracks, pipe)
        yield done
        self.rec.load(tracks, pipe)

    def _hash(self, tokens: int, step: int | None):
        dur = self.hash_seconds(tokens)
        with self.ports.pool.request() as slot:
            yield slot
            start = self.env.now
            yield self.env.timeout(dur)
        self.rec.span("hash", self.tag + "host_cpu", start, dur, tokens=tokens, step=step, layers=len(self.offloaded))
        for layer in self.offloaded:
            self.rec.stage(layer, "hash", dur / len(self.offloaded))

    def _layer(self, plan: LayerFetch, hashed: simpy.Process | None, trail: Trail | None):
        """One layer's fetch; returns the time its rows are usable."""
        if hashed is not None and not hashed.processed:
            yield hashed
        if plan.rows <= 0:
            return self.env.now
        env, layer = self.env, plan.layer
        if plan.disk_rows > 0:
            start = env.now
            nvme, p = self.cost.hardware.nvme, self.placement
            pages = float(self.cost.nvme_pages(plan.disk_rows, self.row_bytes))
            latency, _ = self.cost.nvme_access(p.disk_read, p.disk_queue_depth)
            yield env.timeout(latency)
            yield from self._through(self.node.nvme, ["nvme"], pages, math.inf)
            # The rate bound is the shared pipe above; the latency bound the cost model's waves.
            waves_end = start + float(self.cost.nvme_waves_s(pages, p.disk_read, p.disk_queue_depth))
            if env.now < waves_end:
                yield env.timeout(waves_end - env.now)
            self.rec.bytes_by_tier["nvme_read"] += pages * nvme.page_size
            self._done_stage(layer, "disk", f"gather_L{layer}", "nvme", start, trail, rows=round(plan.disk_rows),
                             pages=round(pages), tier=plan.tier)
        if plan.copy_mode == "uva":
            start = env.now
            yield env.timeout(self.cost.hardware.link.latency)
            yield from self._through(self.ports.h2d, self.h2d_tracks, plan.bytes,
                                     self.cost.link_rate("h2d", "uva", plan.bytes))
            self._done_stage(layer, "link", f"h2d_L{layer}", "h2d", start, trail, bytes=round(plan.bytes),
                             rows=round(plan.rows), mode="uva", tier=plan.tier)
            return env.now
        yield from self.gather(plan, trail)
        if self.in_place or self.copies_on_stream:
            return env.now  # usable in place (CPU), or the compute stream copies it (pageable)
        yield from self.copy(plan, "pinned", trail)
        return env.now

    def gather(self, plan: LayerFetch, trail: Trail | None = None):
        """Worker pool copies the rows into staging, sharing DRAM with every other stream."""
        env = self.env
        with self.ports.pool.request() as slot:
            yield slot
            start = env.now
            # The lookup's own host work (plan, de-duplication, assembly) on the same worker.
            if plan.overhead_s > 0:
                yield env.timeout(float(plan.overhead_s))
            yield from self._through(self.node.dram, ["dram"], float(plan.bytes), float(plan.gather_rate))
        self._gathered(plan, start, trail)

    def _gathered(self, plan: LayerFetch, start: float, trail: Trail | None) -> None:
        """Record a gather that began at ``start`` and ends now."""
        if self.in_place:
            self.rec.in_place_gathered += float(plan.bytes)
        self._done_stage(plan.layer, "gather", f"gather_L{plan.layer}", "host_gather", start, trail,
                         bytes=round(plan.bytes), rows=round(plan.rows), lookups=round(plan.lookups), tier=plan.tier,
                         rows_from=plan.regime)

    def copy(self, plan: LayerFetch, mode: str, trail: Trail | None = None):
        """Host-to-device DMA on this device's copy engine and its uplink."""
        with self.ports.h2d_engine.request() as engine:
            yield engine
            yield from self._copy_now(plan, mode, trail)

    def _copy_now(self, plan: LayerFetch, mode: str, trail: Trail | None):
        """The DMA itself, the copy engine held."""
        env, start = self.env, self.env.now
        yield env.timeout(self.cost.hardware.link.latency)
        yield from self._through(self.ports.h2d, self.h2d_tracks, plan.bytes,
                                 self.cost.link_rate("h2d", mode, plan.bytes))
        self._done_stage(plan.layer, "link", f"h2d_L{plan.layer}", "h2d", start, trail, bytes=round(plan.bytes),
                         rows=round(plan.rows), mode=mode)

    def _done_stage(self, layer: int, stage: str, name: str, track: str, start: float, trail: Trail | None,
                    ends: bool = False, **args) -> None:
        dur = self.env.now - start
        self.rec.stage(layer, stage, dur)
        self.rec.span(name, self.tag + track, start, dur, trail, ends, layer=layer, **args)

    # ---- training: gradients back to the host tier and the sparse optimiser

    def write_back(self, layer: int, tokens: int, optimizer: str, step: int | None = None):
        """Row gradients (one per distinct row touched, accumulated on the device) go d2h,
        then the host worker pool applies the sparse optimiser to the table in DRAM (``step``:
        the training step, a span arg). Simplifies: the device-cached rows are updated on the
        device (no traffic)."""
        env, p, trail = self.env, self.placement, self.rec.trail(step)
        rows = self.traffic[layer].rows_fetched(tokens, p.cache_fraction, p.dedup)
        grad_bytes = rows * self.row_bytes
        self.rec.d2h_requested += grad_bytes
        if not self.in_place:
            with self.ports.d2h_engine.request() as engine:
                yield engine
                start = env.now
                yield env.timeout(self.cost.hardware.link.latency)
                yield from self._through(self.ports.d2h, self.d2h_tracks, grad_bytes,
                                         self.cost.link_rate("d2h", "pinned", grad_bytes))
            self._done_stage(layer, "d2h", f"d2h_grad_L{layer}", "d2h", start, trail, bytes=round(float(grad_bytes)),
                             rows=round(float(rows)))
        with self.ports.pool.request() as slot:
            yield slot
            start = env.now
            yield from self._through(self.node.dram, ["dram"], self.cost.optimizer_bytes(rows, optimizer),
                                     float(self.cost.gather_rate(self.host.cores, self.cost.table_bytes(layer))))
        self._done_stage(layer, "optim", f"optim_L{layer}", "host_cpu", start, trail, ends=True,
                         rows=round(float(rows)), optimizer=optimizer)
