"""The serving engine of one device: its scheduler loop, one engine step after another.

Each step: admit arrived requests, let the continuous-batching scheduler pick decode tokens and
prefill chunks (:mod:`planner.sim.requests`), start the Engram prefetch for the step's tokens
(their ids are known now: decode tokens were sampled when the previous step ended), run the
forward pass on the compute stream (:mod:`planner.sim.device`), then sample: every sequence
whose prompt is done gets a token at the step's end.

Simplifies: scheduling, sampling and detokenising take no time (their CPU cost is what
``host.engine_cores`` reserves); a request arriving mid-step joins at the next step; a CPU device
prefetches only onto cores its compute leaves free (``CostModel.cpu_fetch_cores``: a profile
calibrated with fewer threads than cores), else it fetches on demand.
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
            ready = None
            if self.fetcher is not None and self.offloaded and self.prefetch:
                ready = self.fetcher.start(plan.tokens, self.offloaded)
            stall = yield from self.stream.run(self.stream.ops(shape), plan.tokens, ready)
            finish_step(plan, env.now, running)
            dur = env.now - start
            self.rec.steps.append(StepRecord(self.index, start, dur, plan.tokens, plan.decode_tokens,
                                             plan.seqs, stall))
            self.rec.span("step", f"dev{self.index} engine", start, dur, tokens=plan.tokens,
                          decode_tokens=plan.decode_tokens, seqs=plan.seqs)
