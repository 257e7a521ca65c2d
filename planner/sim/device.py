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
waits), so a 32-block step costs a handful of events; spans are still written per op.

Simplifies: one stream (no overlap between ops of one step, as in a single-stream engine); no
CPU launch gaps other than the op's fixed cost; the engine's per-step host work is the engine's
(:mod:`planner.sim.inference`).
"""

from __future__ import annotations

from dataclasses import dataclass

import simpy

from planner.costmodel import BatchShape, CostModel
from planner.sim.fetch import FetchHandle, Fetcher
from planner.sim.node import Recorder
from planner.specs import EngramPlacement, ModelSpec


@dataclass(frozen=True)
class Op:
    name: str
    kind: str  # attention | ffn_dense | ffn_moe | engram | gather (device tier) | embed | head
    layer: int | None
    seconds: float
    bound: str  # compute | hbm | launch (roofline term that dominates)


class ComputeStream:
    """Runs forward (and, for training, backward) passes of one device."""

    def __init__(self, env: simpy.Environment, cost: CostModel, model: ModelSpec,
                 placement: EngramPlacement, fetcher: Fetcher | None, recorder: Recorder, index: int):
        self.env, self.cost, self.model, self.placement = env, cost, model, placement
        self.fetcher, self.rec, self.index = fetcher, recorder, index
        self.track = f"dev{index} compute"
        self.engram_layers = set(model.engram_layer_ids)
        self.offloaded = {l for l in self.engram_layers if placement.tier_of(l) != "device"}

    # ---- the op list of one pass

    def ops(self, shape: BatchShape, factor: float = 1.0, reverse: bool = False) -> list[Op]:
        """Ops of one pass with their durations; ``factor`` 2 with ``reverse`` is a backward
        pass (about twice the forward FLOPs and bytes: gradients of inputs and of weights)."""
        c, m = self.cost, self.model
        works = {"attention": c.attention(shape), "embed": c.embed(shape), "head": c.head(shape)}
        for i in range(m.n_layers):  # one dense and one MoE FFN cost serve every such block
            key = "ffn_moe" if m.is_moe_layer(i) else "ffn_dense"
            if key not in works:
                works[key] = c.ffn(i, shape)
        if self.engram_layers:
            works["engram"] = c.engram(shape)
            works["gather"] = c.device_gather(shape)
        scaled = {k: w.scaled(factor) for k, w in works.items()}
        secs = {k: float(c.seconds(w)) for k, w in scaled.items()}
        bounds = {k: c.bound(w) for k, w in scaled.items()}
        for w in scaled.values():
            ratio = float(c.extrapolation(w))
            if ratio > 1.0 and w.kind:
                self.rec.extrapolated[w.kind] = max(ratio, self.rec.extrapolated.get(w.kind, 1.0))

        def op(name: str, kind: str, layer: int | None) -> Op:
            return Op(name, kind, layer, secs[kind], bounds[kind])

        blocks = []
        for i in range(m.n_layers):
            block = []
            if i in self.engram_layers and i not in self.offloaded:
                block.append(op(f"gather_L{i}", "gather", i))  # the baseline's in-layer lookup
            if i in self.engram_layers:
                block.append(op(f"engram_L{i}", "engram", i))
            block.append(op(f"attn_L{i}", "attention", i))
            block.append(op(f"ffn_L{i}", "ffn_moe" if m.is_moe_layer(i) else "ffn_dense", i))
            blocks.append(block)
        if reverse:
            ops = [op("head", "head", None)]
            for block in reversed(blocks):
                ops.extend(reversed(block))
            return ops + [op("embed", "embed", None)]
        return [op("embed", "embed", None)] + [o for b in blocks for o in b] + [op("head", "head", None)]

    # ---- running a pass

    def run(self, ops: list[Op], tokens: int, ready: dict[int, FetchHandle] | None,
            wait_rows: bool = True, after_op=None, **span_args):
        """Run ``ops``. ``ready`` maps offloaded Engram layers to their prefetch processes
        (None: fetch on demand); ``wait_rows`` False runs Engram ops without fetching (a
        backward pass reuses the forward's rows). ``after_op(op)`` is called when a block's op
        ends (training hooks). Returns the total stall (seconds)."""
        env, stalled, pending = self.env, 0.0, 0.0
        clock, op_s = env.now, self.rec.op_s
        hashing = (ready or {}).get("hash")
        for op in ops:
            op_s[op.kind][op.bound] += op.seconds
            if wait_rows and op.kind == "engram" and op.layer in self.offloaded:
                if pending:
                    yield env.timeout(pending)
                    pending = 0.0
                stall = yield from self._wait_rows(op.layer, tokens, ready)
                stalled += stall
                clock = env.now
            elif wait_rows and op.kind == "gather" and hashing is not None and not hashing.process.processed:
                if pending:
                    yield env.timeout(pending)
                    pending = 0.0
                reached = env.now
                yield hashing.process  # the device-tier gather needs the worker's ids
                self.rec.span(f"wait_L{op.layer}", self.track, reached, env.now - reached)
                stalled += env.now - reached
                clock = env.now
            self.rec.span(op.name, self.track, clock, op.seconds, **span_args)
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

    def _wait_rows(self, layer: int, tokens: int, ready: dict[int, FetchHandle] | None):
        env, rec = self.env, self.rec
        reached = env.now
        # No prefetch: the lookup starts now (the ids were hashed at the step start).
        handle = self.fetcher.start(tokens, [layer], hashed=False)[layer] if ready is None else ready.get(layer)
        if handle is None:  # nothing was launched for this layer this step
            return 0.0
        event, started = handle.process, handle.started_s
        if not event.processed:
            yield event
        fetch_end = event.value  # the fetch process returns the time it finished
        if self.fetcher.copies_on_stream:
            plan = self.fetcher.plan(layer, tokens)
            if plan.rows > 0:
                yield from self.fetcher.copy(plan, "pageable")
            fetch_end = env.now
        stall = env.now - reached
        rec.wait_s[layer] += stall
        rec.window_s[layer] += reached - started
        rec.fetch_s[layer] += fetch_end - started
        rec.fetches[layer] += 1
        rec.span(f"wait_L{layer}", self.track, reached, stall)
        return stall
