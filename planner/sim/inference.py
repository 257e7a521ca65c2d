"""The serving engine of one device: its scheduler loop, one engine step after another.

Each step (the stages of :mod:`planner.stages`): admit arrived requests, let the continuous-
batching scheduler pick decode tokens and prefill chunks (:mod:`planner.sim.requests`), pay the
engine's own per-step host work (``overhead``: a calibrated profile's ``step:overhead``), then

* prefetch: start the Engram fetch for the step's tokens on the worker pool (their ids are
  known now: decode tokens were sampled when the previous step ended), hash first;
* prefetch with a worker that holds the compute cores (a CPU device with none spare): the same,
  but the forward starts only when the worker is done (nothing overlaps, nothing is exposed);
* on demand: hash on the engine thread, then each lookup when its layer is reached;

run the forward pass on the compute stream (:mod:`planner.sim.device`), then sample: every
sequence whose prompt is done gets a token at the step's end.

Simplifies: scheduling and sampling are part of ``overhead`` (0 for a datasheet preset: their
CPU cost is what ``host.engine_cores`` reserves); a request arriving mid-step joins at the next
step.
"""

from __future__ import annotations

import simpy

from planner.costmodel import BatchShape
from planner.sim.device import ComputeStream
from planner.sim.fetch import Fetcher
from planner.sim.node import Recorder, StepRecord
from planner.sim.requests import Request, finish_step, schedule_step
from planner.specs import InferenceWorkload


class Replica:
    """One data-parallel replica (one device) and the requests routed to it."""

    def __init__(self, env: simpy.Environment, index: int, stream: ComputeStream, fetcher: Fetcher | None,
                 workload: InferenceWorkload, requests: list[Request], recorder: Recorder, prefetch: bool):
        self.env, self.index, self.stream, self.fetcher = env, index, stream, fetcher
        self.workload, self.rec, self.prefetch = workload, recorder, prefetch
        self.pending = sorted(requests, key=lambda r: (r.arrival_s, r.rid))
        self.offloaded = sorted(stream.offloaded)

    def run(self):
        env, waiting, running = self.env, [], []
        pending = self.pending
        while pending or waiting or running:
            while pending and pending[0].arrival_s <= env.now:
                waiting.append(pending.pop(0))
            if not waiting and not running:
                yield env.timeout(pending[0].arrival_s - env.now)
                continue
            plan = schedule_step(running, waiting, self.workload)
            assert plan.tokens > 0, "scheduler made no progress (validated before the run)"
            shape = BatchShape(tokens=plan.tokens, seqs=plan.seqs, attn_pairs=plan.attn_pairs, kv_read=plan.kv_read,
                               decode_tokens=plan.decode_tokens, decode_pairs=plan.decode_pairs)
            start = env.now
            ready = yield from self.host_work(plan.tokens, shape)
            stall = yield from self.stream.run(self.stream.ops(shape), plan.tokens, ready)
            finish_step(plan, env.now, running)
            dur = env.now - start
            self.rec.steps.append(StepRecord(self.index, start, dur, plan.tokens, plan.decode_tokens,
                                             plan.seqs, stall))
            self.rec.span("step", f"dev{self.index} engine", start, dur, tokens=plan.tokens,
                          decode_tokens=plan.decode_tokens, seqs=plan.seqs)

    def host_work(self, tokens: int, shape: BatchShape):
        """The step's host work before the forward (see the module docstring); returns the
        prefetch handles (None on demand)."""
        return (yield from engine_host_work(self.env, self.stream, self.fetcher, self.rec, self.index, tokens,
                                            self.prefetch, shape))


def engine_host_work(env, stream: ComputeStream, fetcher: Fetcher | None, rec: Recorder, index: int, tokens: int,
                     prefetch: bool, shape: BatchShape):
    """Per-step engine host work (inference and training share it): the overhead, then the hash
    and the prefetch launch as :mod:`planner.stages` places them. Returns the handles."""
    track = f"dev{index} engine"
    start = env.now
    overhead = float(stream.cost.step_overhead(shape))
    if overhead > 0:
        yield env.timeout(overhead)
        rec.span("overhead", track, start, overhead)
    if fetcher is None or not stream.engram_layers:
        rec.host_s += env.now - start
        return None
    if prefetch:
        ready = fetcher.start(tokens, fetcher.offloaded)
        if fetcher.host.shared:  # the worker holds the compute cores: the forward waits for it
            yield env.all_of([h.process for h in ready.values()])
        rec.host_s += env.now - start
        return ready
    hashing = fetcher.hash_seconds(tokens)
    if hashing > 0:
        t0 = env.now
        yield env.timeout(hashing)
        rec.span("hash", track, t0, hashing, tokens=tokens)
    rec.host_s += env.now - start
    return None
