"""The serving engine of one device: its scheduler loop, one engine step after another.

Each step (the stages of :mod:`planner.stages`): admit arrived requests, let the scheduler
(:mod:`planner.sim.schedulers`, bounded by the device's KV blocks) pick decode tokens and
prefill chunks and preempt what does not fit, pay the engine's own per-step host work
(``overhead``: a calibrated profile's ``step:overhead``), then

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
from planner.sim.kvcache import BlockPool
from planner.sim.node import Recorder, StepRecord
from planner.sim.requests import Request
from planner.sim.schedulers import make_scheduler
from planner.specs import InferenceWorkload


class Replica:
    """One data-parallel replica (one device) and the requests routed to it."""

    def __init__(self, env: simpy.Environment, index: int, stream: ComputeStream, fetcher: Fetcher | None,
                 workload: InferenceWorkload, requests: list[Request], recorder: Recorder, prefetch: bool,
                 pool: BlockPool, coalescer=None):
        self.env, self.index, self.stream, self.fetcher = env, index, stream, fetcher
        self.workload, self.rec, self.prefetch = workload, recorder, prefetch
        self.pending = sorted(requests, key=lambda r: (r.arrival_s, r.rid))
        self.offloaded = sorted(stream.offloaded)
        self.scheduler = make_scheduler(workload, pool)
        # Decode-only steps of up to this many sequences replay a CUDA graph (0: none; a CPU has none).
        self.graph_max = workload.graph_max_batch if stream.cost.hardware.device.kind == "cuda" else 0
        self.coalescer = coalescer  # planner.sim.coalesce.Coalescer, or None: every step simulated

    def run(self):
        env, sched, pending = self.env, self.scheduler, self.pending
        pool, track, rec = sched.pool, f"dev{self.index} kv", self.rec
        nxt = 0
        step = 0  # this device's steps so far: the index its spans carry
        while nxt < len(pending) or sched.busy:
            while nxt < len(pending) and pending[nxt].arrival_s <= env.now:
                sched.arrive(pending[nxt])
                nxt += 1
            if not sched.busy:
                yield env.timeout(pending[nxt].arrival_s - env.now)
                continue
            if self.coalescer is not None and sched.steady():
                arrival = pending[nxt].arrival_s if nxt < len(pending) else float("inf")
                ran = yield from self.coalescer.advance(sched, arrival, len(sched.running) <= self.graph_max)
                if ran:
                    step += ran
                    continue
            plan = sched.schedule()
            if plan.tokens == 0:
                raise RuntimeError(self._stuck(sched))
            shape = BatchShape(tokens=plan.tokens, seqs=plan.seqs, attn_pairs=plan.attn_pairs, kv_read=plan.kv_read,
                               decode_tokens=plan.decode_tokens, decode_pairs=plan.decode_pairs)
            start = env.now
            running, used = len(sched.running), pool.used
            if rec.trace:
                rec.counter(track, start, blocks_used=used, running=running, waiting=len(sched.waiting))
            ready = yield from self.host_work(plan.tokens, shape, step)
            graph = plan.decode_tokens == plan.tokens and plan.seqs <= self.graph_max
            stall = yield from self.stream.forward(shape, plan.tokens, ready, graph, step)
            sched.finish(plan, env.now)
            dur = env.now - start
            if self.coalescer is not None:
                self.coalescer.last_step_s = dur
            rec.steps.append(StepRecord(self.index, start, dur, plan.tokens, plan.decode_tokens,
                                        plan.seqs, stall, running, used, len(plan.preempted)))
            if rec.trace:
                rec.span("step", f"dev{self.index} engine", start, dur, step=step, tokens=plan.tokens,
                         decode_tokens=plan.decode_tokens, seqs=plan.seqs, preempted=len(plan.preempted),
                         running=running, kv_blocks=used, graph=graph)
            step += 1
        rec.preemptions += sched.preemptions
        rec.recomputed_tokens += sched.recomputed_tokens
        rec.counter(track, env.now, blocks_used=pool.used, running=0, waiting=0)

    def _stuck(self, sched) -> str:
        head = sched.waiting[0] if sched.waiting else None
        if head is not None and not self.workload.chunked_prefill and self.workload.scheduler == "vllm":
            return (f"device {self.index}: request {head.rid} must prefill {head.prefill_target - head.computed} "
                    f"tokens (its prompt and, after {head.preemptions} preemption(s), what it had generated) but "
                    f"workload.max_batched_tokens = {self.workload.max_batched_tokens} and chunked_prefill is "
                    "false: enable chunked_prefill or raise max_batched_tokens")
        return (f"device {self.index}: the {sched.name} scheduler could schedule nothing with "
                f"{len(sched.running)} running and {len(sched.waiting)} waiting sequences and "
                f"{sched.pool.free} of {sched.pool.total} KV blocks free")

    def host_work(self, tokens: int, shape: BatchShape, step: int):
        """The step's host work before the forward (see the module docstring); returns the
        prefetch handles (None on demand)."""
        return (yield from engine_host_work(self.env, self.stream, self.fetcher, self.rec, self.index, tokens,
                                            self.prefetch, shape, step))


def engine_host_work(env, stream: ComputeStream, fetcher: Fetcher | None, rec: Recorder, index: int, tokens: int,
                     prefetch: bool, shape: BatchShape, step: int | None = None):
    """Per-step engine host work (inference and training share it): the overhead, then the hash
    and the prefetch launch as :mod:`planner.stages` places them. Returns the handles. ``step``:
    the device's step (a span arg)."""
    track = f"dev{index} engine"
    start = env.now
    overhead = float(stream.cost.step_overhead(shape))
    if overhead > 0:
        yield env.timeout(overhead)
        rec.span("overhead", track, start, overhead, step=step, tokens=tokens)
    if fetcher is None or not stream.engram_layers:
        rec.host_s += env.now - start
        return None
    if prefetch:
        ready = fetcher.start(tokens, fetcher.offloaded, step=step)
        if fetcher.host.shared:  # the worker holds the compute cores: the forward waits for it
            yield env.all_of([h.process for h in ready.values()])
        rec.host_s += env.now - start
        return ready
    hashing = fetcher.hash_seconds(tokens)
    if hashing > 0:
        t0 = env.now
        yield env.timeout(hashing)
        rec.span("hash", track, t0, hashing, step=step, tokens=tokens, layers=len(fetcher.offloaded))
    rec.host_s += env.now - start
    return None
