"""A training step on one device, with offloaded Engram tables.

Per step k (ENGRAM.md sections 3 and 5: indices are known for the whole batch ahead):

1. start fetching batch k+1's rows (prefetch: queued behind whatever of batch k is in flight);
2. forward pass; each offloaded Engram block waits for batch k's rows;
3. backward pass in reverse block order, about twice the forward's FLOPs and bytes; when the
   backward of an Engram block ends, its row gradients (one per distinct row, accumulated on the
   device) go device-to-host and the host worker pool applies the sparse optimiser (Adam: read the
   gradient, read/write the row and two fp32 moments);
4. the step ends when the backward ends and step k-1's table updates have been applied
   (bounded staleness: rows prefetched for batch k+1 may miss steps k-1 and k's updates, as in
   pipelined embedding training).

Simplifies: no dense-weight optimiser step and no gradient all-reduce of the backbone (data
parallel communication is not modelled); activation checkpointing adds one more forward of
compute to the backward.
"""

from __future__ import annotations

import simpy

from planner.costmodel import BatchShape
from planner.sim.device import ComputeStream, Op
from planner.sim.fetch import Fetcher
from planner.sim.node import Recorder, StepRecord
from planner.specs import TrainingWorkload


class Trainer:
    """One data-parallel training replica."""

    def __init__(self, env: simpy.Environment, index: int, stream: ComputeStream, fetcher: Fetcher | None,
                 workload: TrainingWorkload, recorder: Recorder, prefetch: bool):
        self.env, self.index, self.stream, self.fetcher = env, index, stream, fetcher
        self.workload, self.rec, self.prefetch = workload, recorder, prefetch
        self.offloaded = sorted(stream.offloaded)

    def shape(self) -> BatchShape:
        w = self.workload
        # Causal attention over whole sequences; the loss needs logits at every position.
        return BatchShape(tokens=w.batch_size * w.seq_len, seqs=w.batch_size * w.seq_len,
                          attn_pairs=w.batch_size * w.seq_len * (w.seq_len + 1) / 2, kv_read=0)

    def run(self):
        env, w, shape = self.env, self.workload, self.shape()
        tokens = w.batch_size * w.seq_len
        backward_factor = 3.0 if w.activation_checkpointing else 2.0
        forward = self.stream.ops(shape)
        backward = self.stream.ops(shape, factor=backward_factor, reverse=True)
        fetching = self.fetcher is not None and bool(self.offloaded)
        ready = self.fetcher.start(tokens, self.offloaded, step=0) if fetching and self.prefetch else None
        previous_updates: list[simpy.Process] = []
        for k in range(w.steps):
            start = env.now
            next_ready = None
            if fetching and self.prefetch and k + 1 < w.steps:
                next_ready = self.fetcher.start(tokens, self.offloaded, step=k + 1)
            elif self.fetcher is not None and not self.prefetch:
                hashing = self.fetcher.hash_seconds(tokens)  # on the engine thread, before the forward
                yield env.timeout(hashing)
                self.rec.span("hash", f"dev{self.index} engine", env.now - hashing, hashing, step=k, tokens=tokens,
                              layers=len(self.offloaded))
            stall = yield from self.stream.run(forward, tokens, ready if self.prefetch else None, step=k,
                                               phase="forward", batch=w.batch_size)
            updates: list[simpy.Process] = []

            def after(op: Op) -> None:
                if fetching and op.kind == "engram" and op.layer in self.stream.offloaded:
                    updates.append(env.process(self.fetcher.write_back(op.layer, tokens, w.table_optimizer, k)))

            yield from self.stream.run(backward, tokens, None, wait_rows=False, after_op=after, step=k,
                                       phase="backward", batch=w.batch_size)
            barrier_start = env.now
            pending = [p for p in previous_updates if not p.processed]
            if k + 1 == w.steps:  # the last step drains everything
                pending += updates
            if pending:
                yield env.all_of(pending)
            stall += env.now - barrier_start
            previous_updates, ready = updates, next_ready
            dur = env.now - start
            self.rec.steps.append(StepRecord(self.index, start, dur, tokens, 0, w.batch_size, stall))
            self.rec.span("step", f"dev{self.index} engine", start, dur, step=k, tokens=tokens, batch=w.batch_size,
                          stall_s=stall)
