"""The device compute stream: one step's ops, block by block, waiting for Engram rows.

A forward pass is ``embed``, then per block ``gather_L{i}`` (device-tier Engram blocks: the
baseline's in-layer lookup), ``engram_L{i}`` (Engram blocks only), ``attn_L{i}``,
``ffn_L{i}``, then ``head`` (span names of :mod:`planner.trace`). The stream runs them back to
back; before an offloaded Engram block it waits until that layer's rows are on the device
(``wait_L{i}``: the exposed lookup time). With prefetch the fetch was started when the step's
token ids became known (the step start); without it the fetch starts here. A pageable copy is
performed here, on the stream, because it is synchronous. A device-tier Engram block waits, with
prefetch, for the worker's hash of the step (its in-layer gather needs the ids); that wait is a
stall of the step, not exposed lookup time (docs/metrics.md counts offloaded layers only).

Consecutive ops without a wait are one SimPy timeout (the stream's clock is deterministic between
waits), so a 32-block step costs a handful of events; spans are still written per op, with the
block, step, batch and roofline bound as args; the op that uses a lookup's rows (its wait if it
stalled, else the Engram op) ends the lookup's flow (:class:`planner.sim.node.Trail`).

Simplifies: one stream (no overlap between ops of one step, as in a single-stream engine); no
CPU launch gaps other than the op's fixed cost; the engine's per-step host work is the engine's
(:mod:`planner.sim.inference`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import simpy

from planner.costmodel import BatchShape, CostModel
from planner.sim.fetch import FetchHandle, Fetcher
from planner.sim.node import Recorder, Trail
from planner.specs import EngramPlacement, ModelSpec


class Op(NamedTuple):
    name: str
    kind: str  # attention | ffn_dense | ffn_moe | engram | gather (device tier) | embed | head
    layer: int | None
    seconds: float
    bound: str  # compute | hbm | launch (roofline term that dominates)


# Op kinds whose work depends on a step's token and sequence counts only, not on its context:
# priced once per (tokens, sequences) and reused (decode steps repeat them thousands of times).
CONTEXT_FREE = ("ffn_dense", "ffn_moe", "engram", "gather", "embed", "head")


class ComputeStream:
    """Runs forward (and, for training, backward) passes of one device."""

    def __init__(self, env: simpy.Environment, cost: CostModel, model: ModelSpec,
                 placement: EngramPlacement, fetcher: Fetcher | None, recorder: Recorder, index: int):
        self.env, self.cost, self.model, self.placement = env, cost, model, placement
        self.fetcher, self.rec, self.index = fetcher, recorder, index
        self.track = f"dev{index} compute"
        self.engram_layers = set(model.engram_layer_ids)
        self.offloaded = {l for l in self.engram_layers if placement.tier_of(l) != "device"}
        self.graph_cost = cost.graphed()
        self._priced: dict[tuple, tuple[dict, dict]] = {}
        self._layouts: dict[bool, list[tuple[str, str, int | None]]] = {}
        self._ffn_blocks: dict[str, int] = {}  # FFN op kind -> the first block of that kind
        for i in range(model.n_layers):
            self._ffn_blocks.setdefault("ffn_moe" if model.is_moe_layer(i) else "ffn_dense", i)
        self._segments: list | None = None
        self._counts: dict[str, int] | None = None

    def cost_for(self, graph: bool) -> CostModel:
        """The cost model of an eager step, or of one replayed as a CUDA graph."""
        return self.graph_cost if graph else self.cost

    # ---- the op list of one pass

    def works(self, shape: BatchShape, factor: float = 1.0, note: bool = True, kinds=None) -> dict:
        """The work of each op kind of a pass over ``shape`` (fields may be arrays); ``note``:
        record the op kinds priced beyond a calibrated profile's fitted shapes; ``kinds``: only
        these."""
        note = note and self.cost.eff.fitted
        c = self.cost
        makers = {"attention": lambda: c.attention(shape), "embed": lambda: c.embed(shape),
                  "head": lambda: c.head(shape)}
        for key, i in self._ffn_blocks.items():  # one dense and one MoE FFN cost serve every such block
            makers[key] = lambda i=i: c.ffn(i, shape)
        if self.engram_layers:
            makers["engram"] = lambda: c.engram(shape)
            makers["gather"] = lambda: c.device_gather(shape)
        scaled = {k: make().scaled(factor) for k, make in makers.items() if kinds is None or k in kinds}
        if note:
            self.note_extrapolation(scaled)
        return scaled

    def note_extrapolation(self, works: dict, upto: int | None = None) -> None:
        """Record how far beyond its fitted shapes each op kind was priced (the first ``upto``
        elements of array works)."""
        for w in works.values():
            ratio = np.asarray(self.cost.extrapolation(w), float)
            ratio = float(np.max(ratio.ravel()[:upto] if upto is not None and ratio.ndim else ratio))
            if ratio > 1.0 and w.kind:
                self.rec.extrapolated[w.kind] = max(ratio, self.rec.extrapolated.get(w.kind, 1.0))

    def price(self, shape: BatchShape, factor: float = 1.0, graph: bool = False) -> tuple[dict, dict]:
        """Seconds and roofline bound of each op kind for one pass over ``shape`` (scalars)."""
        c = self.cost_for(graph)
        key = (shape.tokens, shape.seqs, factor, graph)
        cached = self._priced.get(key)
        if cached is None:
            works = self.works(shape, factor, kinds=CONTEXT_FREE)
            cached = self._priced[key] = ({k: float(c.seconds(w)) for k, w in works.items()},
                                          {k: c.bound(w) for k, w in works.items()})
        attention = c.terms(self.works(shape, factor, kinds=("attention",))["attention"])
        secs, bounds = dict(cached[0]), dict(cached[1])
        secs["attention"], bounds["attention"] = float(attention.seconds), attention.bound
        return secs, bounds

    def layout(self, reverse: bool = False) -> list[tuple[str, str, int | None]]:
        """(span name, op kind, block) of every op of a pass, in order (backward: reversed)."""
        if reverse not in self._layouts:
            m, blocks = self.model, []
            for i in range(m.n_layers):
                block = []
                if i in self.engram_layers and i not in self.offloaded:
                    block.append((f"gather_L{i}", "gather", i))  # the baseline's in-layer lookup
                if i in self.engram_layers:
                    block.append((f"engram_L{i}", "engram", i))
                block.append((f"attn_L{i}", "attention", i))
                block.append((f"ffn_L{i}", "ffn_moe" if m.is_moe_layer(i) else "ffn_dense", i))
                blocks.append(block)
            embed, head = ("embed", "embed", None), ("head", "head", None)
            if reverse:
                out = [head] + [o for b in reversed(blocks) for o in reversed(b)] + [embed]
            else:
                out = [embed] + [o for b in blocks for o in b] + [head]
            self._layouts[reverse] = out
        return self._layouts[reverse]

    def segments(self) -> list[tuple[tuple[str, int] | None, dict[str, int]]]:
        """The forward layout cut at the ops that may wait (an offloaded Engram layer for its
        rows, a device-tier gather for the worker's hash): (that op's (kind, block) or None,
        op kinds up to the next cut with their counts, the op itself included)."""
        if self._segments is None:
            out, point, kinds = [], None, {}
            for _, kind, layer in self.layout():
                if (kind == "engram" and layer in self.offloaded) or kind == "gather":
                    out.append((point, kinds))
                    point, kinds = (kind, layer), {}
                kinds[kind] = kinds.get(kind, 0) + 1
            out.append((point, kinds))
            self._segments = out
        return self._segments

    def op_counts(self) -> dict[str, int]:
        """How many ops of each kind one forward pass runs."""
        if self._counts is None:
            counts: dict[str, int] = {}
            for _, kind, _ in self.layout():
                counts[kind] = counts.get(kind, 0) + 1
            self._counts = counts
        return self._counts

    def ops(self, shape: BatchShape, factor: float = 1.0, reverse: bool = False, graph: bool = False) -> list[Op]:
        """Ops of one pass with their durations; ``factor`` 2 with ``reverse`` is a backward
        pass (about twice the forward FLOPs and bytes: gradients of inputs and of weights);
        ``graph``: the pass is a CUDA graph replay (kernels cost their in-graph launch)."""
        secs, bounds = self.price(shape, factor, graph)
        return [Op(name, kind, layer, secs[kind], bounds[kind]) for name, kind, layer in self.layout(reverse)]

    # ---- running a pass

    def forward(self, shape: BatchShape, tokens: int, ready: dict[int, FetchHandle] | None, graph: bool = False,
                step: int | None = None):
        """Run one forward pass over ``shape`` (see :meth:`run`); returns the total stall. With
        a trace every op is a span (:meth:`run`); without one the ops between two wait points
        are priced by kind and count, which is the same clock in a few events. ``step``: the
        device's step (a span arg)."""
        if self.rec.trace:
            return (yield from self.run(self.ops(shape, graph=graph), tokens, ready, step=step, seqs=int(shape.seqs)))
        secs, bounds = self.price(shape, graph=graph)
        op_s = self.rec.op_s
        for kind, count in self.op_counts().items():
            op_s[kind][bounds[kind]] += count * secs[kind]
        env, stalled, pending = self.env, 0.0, 0.0
        hashing = (ready or {}).get("hash")
        for point, kinds in self.segments():
            if point is not None:
                kind, layer = point
                if kind == "engram":
                    if pending:
                        yield env.timeout(pending)
                        pending = 0.0
                    stall, _ = yield from self._wait_rows(layer, tokens, ready)
                    stalled += stall
                elif hashing is not None and not hashing.process.processed:
                    if pending:
                        yield env.timeout(pending)
                        pending = 0.0
                    reached = env.now
                    yield hashing.process  # the device-tier gather needs the worker's ids
                    stalled += env.now - reached
            for kind, count in kinds.items():
                pending += count * secs[kind]
        if pending:
            yield env.timeout(pending)
        return stalled

    def run(self, ops: list[Op], tokens: int, ready: dict[int, FetchHandle] | None,
            wait_rows: bool = True, after_op=None, step: int | None = None, **span_args):
        """Run ``ops``. ``ready`` maps offloaded Engram layers to their prefetch processes
        (None: fetch on demand); ``wait_rows`` False runs Engram ops without fetching (a
        backward pass reuses the forward's rows). ``after_op(op)`` is called when a block's op
        ends (training hooks). ``step`` and ``span_args``: args of every op's span. Returns the
        total stall (seconds)."""
        env, stalled, pending = self.env, 0.0, 0.0
        clock, op_s, tracing = env.now, self.rec.op_s, self.rec.trace
        hashing = (ready or {}).get("hash")
        offloaded = self.offloaded if wait_rows else ()
        common = {"step": step, "tokens": tokens, **span_args} if tracing else {}
        for op in ops:
            op_s[op.kind][op.bound] += op.seconds
            trail: Trail | None = None
            if op.kind == "engram" and op.layer in offloaded:
                if pending:
                    yield env.timeout(pending)
                    pending = 0.0
                stall, trail = yield from self._wait_rows(op.layer, tokens, ready, step)
                stalled += stall
                clock = env.now
            elif wait_rows and op.kind == "gather" and hashing is not None and not hashing.process.processed:
                if pending:
                    yield env.timeout(pending)
                    pending = 0.0
                reached = env.now
                yield hashing.process  # the device-tier gather needs the worker's ids
                self.rec.span(f"wait_L{op.layer}", self.track, reached, env.now - reached, layer=op.layer, step=step,
                              waits_for="hash")
                stalled += env.now - reached
                clock = env.now
            if tracing:
                args = {**common, "bound": op.bound} if op.layer is None else {**common, "layer": op.layer,
                                                                               "bound": op.bound}
                self.rec.span(op.name, self.track, clock, op.seconds, trail, True, **args)
            clock += op.seconds
            pending += op.seconds
            if after_op is not None and op.layer is not None:
                if pending:
                    yield env.timeout(pending)
                    pending = 0.0
                after_op(op)
        if pending:
            yield env.timeout(pending)
        return stalled

    def _wait_rows(self, layer: int, tokens: int, ready: dict[int, FetchHandle] | None, step: int | None = None):
        """Wait until ``layer``'s rows are usable; returns the stall and the lookup's trail (its
        flow, unless the wait span took it, ends at the Engram op)."""
        env, rec = self.env, self.rec
        reached = env.now
        # No prefetch: the lookup starts now (the ids were hashed at the step start).
        handle = (self.fetcher.start(tokens, [layer], hashed=False, step=step)[layer] if ready is None
                  else ready.get(layer))
        if handle is None:  # nothing was launched for this layer this step
            return 0.0, None
        event, started = handle.process, handle.started_s
        if not event.processed:
            yield event
        fetch_end = event.value  # the fetch process returns the time it finished
        if self.fetcher.copies_on_stream:
            plan = self.fetcher.plan(layer, tokens)
            if plan.rows > 0:
                yield from self.fetcher.copy(plan, "pageable", handle.trail)
            fetch_end = env.now
        stall = env.now - reached
        rec.wait_s[layer] += stall
        rec.window_s[layer] += reached - started
        rec.fetch_s[layer] += fetch_end - started
        rec.fetches[layer] += 1
        rec.span(f"wait_L{layer}", self.track, reached, stall, handle.trail, True, layer=layer, waits_for="rows")
        return stall, handle.trail
