"""Step coalescing: a stretch of decode steps advanced at once, equal to running them one by one.

Most of a long serving run is decode steps between arrivals and completions in which nothing
changes but every sequence's context growing by one token. When the scheduler is *steady*
(:meth:`planner.sim.schedulers.Scheduler.steady`: it would decode every running sequence and
admit nothing), the next ``K`` steps are known in advance: the same sequences, one token each,
until the first of

* a sequence completes (that step is the stretch's last: it frees blocks and shrinks the batch),
* a step would need more KV blocks than are free (it may preempt: run it normally),
* a request arrives before a step starts (it may be admitted: run that step normally).

Their durations are the same ops at shapes that differ only in context length, priced for all
``K`` steps at once (the cost model takes arrays), and the Engram host work of a step of ``n``
tokens is the same every time: it is measured once per token count by running the fetch
pipeline of :mod:`planner.sim.fetch` on an idle copy of the node (:class:`FetchTemplate`) and
laid on the timeline as :mod:`planner.sim.device` does (rows usable ``ready`` seconds after the
launch; the stream waits for them at the layer). That is exact only if nothing else uses the
node's shared pipes meanwhile, so coalescing is on when the device is alone in its node or the
run fetches no offloaded rows; traces (one span per op) and training always run step by step.
Everything a step would record (op time by kind and bound, exposed waits, fetch stages, bytes,
pipe utilisation, step records) is added for the ``K`` steps, so metrics equal the step-by-step
run's to rounding (``tests/test_sim_coalesce.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import simpy

from planner.costmodel import BatchShape, CostModel
from planner.sim.device import ComputeStream
from planner.sim.fetch import Fetcher
from planner.sim.node import Node, Recorder, StepRecord
from planner.sim.schedulers import Scheduler


@dataclass(frozen=True)
class FetchTemplate:
    """The Engram host work of one step of ``tokens`` tokens on idle resources. Times are
    seconds after the launch (the end of the engine's overhead): ``wait`` the engine's own
    extra (a hash on the engine thread, or a worker holding the compute cores), ``ready`` when
    each offloaded layer's rows are usable (prefetch) or how long its fetch takes once its layer
    is reached (on demand), ``copy`` a pageable copy the stream then performs, ``hash_end`` when
    the worker's hash is done (device-tier gathers wait for it). ``rec`` and ``pipes`` hold what
    one such step adds to the recorder and to each shared pipe (units moved, busy seconds)."""

    wait: float
    ready: dict[int, float]
    copy: dict[int, float]
    hash_end: float | None
    rec: Recorder
    pipes: list[tuple[float, float]]


# Stretches shorter than this run step by step: pricing K steps as arrays costs about what a
# handful of steps one by one do (a speed choice only: either way the result is the same).
MIN_STRETCH = 6


def _pipes(node: Node) -> list:
    return [node.dram] + ([node.nvme] if node.nvme is not None else []) + node.h2d_links + node.d2h_links


class Coalescer:
    """Advances steady stretches of one device (see the module docstring)."""

    def __init__(self, env: simpy.Environment, node: Node, cost: CostModel, stream: ComputeStream,
                 fetcher: Fetcher | None, rec: Recorder, index: int, prefetch: bool, fetch_args: tuple):
        self.env, self.node, self.cost, self.stream = env, node, cost, stream
        self.fetcher, self.rec, self.index, self.prefetch = fetcher, rec, index, prefetch
        self.fetch_args = fetch_args  # what builds a Fetcher on a scratch node
        self.templates: dict[int, FetchTemplate] = {}
        self.last_step_s = 0.0  # the device's latest step (the replica sets it): how far arrivals are

    # ---- the fetch of one step, measured on an idle node

    def template(self, tokens: int) -> FetchTemplate | None:
        if self.fetcher is None or not self.stream.engram_layers:
            return None
        if tokens not in self.templates:
            self.templates[tokens] = self._measure(tokens)
        return self.templates[tokens]

    def _scratch(self):
        env = simpy.Environment()
        node = Node(env, self.cost)
        rec = Recorder()
        placement, traffic, row_bytes, in_place = self.fetch_args
        fetcher = Fetcher(env, node, node.devices[self.index], self.cost, placement, traffic, row_bytes, rec, in_place,
                          exclusive=True)
        return env, node, rec, fetcher

    def _measure(self, tokens: int) -> FetchTemplate:
        env, node, rec, f = self._scratch()
        ready, copy, hash_end, wait = {}, {}, None, 0.0
        offloaded = self.stream.offloaded
        if self.prefetch:
            handles = f.start(tokens, f.offloaded)
            done: dict = {}
            for key, h in handles.items():
                h.process.callbacks.append(lambda _e, key=key: done.__setitem__(key, env.now))
            env.run()
            ready = {layer: done[layer] for layer in offloaded if layer in handles}
            hash_end = done.get("hash")
            if f.host.shared:
                wait = max(done.values(), default=0.0)
        else:
            wait = f.hash_seconds(tokens)
            for layer in sorted(offloaded):
                start = env.now
                handle = f.start(tokens, [layer], hashed=False)[layer]
                env.run()
                ready[layer] = handle.process.value - start
        if f.copies_on_stream:
            for layer in sorted(offloaded):
                plan = f.plan(layer, tokens)
                start = env.now
                if plan.rows > 0:
                    env.process(f.copy(plan, "pageable"))
                    env.run()
                copy[layer] = env.now - start
        return FetchTemplate(wait, ready, copy, hash_end, rec, [(p.moved, p.busy_s) for p in _pipes(node)])

    # ---- a stretch

    def stretch_length(self, sched: Scheduler, next_arrival_s: float) -> int:
        """Steps the steady scheduler will run unchanged (before arrivals are considered)."""
        running = sched.running
        left = min(r.output_len - r.generated for r in running)
        pool = sched.pool
        residues = np.bincount(np.array([r.computed for r in running]) % pool.block_tokens,
                               minlength=pool.block_tokens)
        ks = np.arange(left)
        cum = np.cumsum(residues[(-ks) % pool.block_tokens])
        short = np.nonzero(cum > pool.free)[0]
        return int(short[0]) if short.size else int(left)

    def advance(self, sched: Scheduler, next_arrival_s: float, graph: bool = False):
        """Run the stretch that starts now (a SimPy process body; ``graph``: its steps replay a
        CUDA graph). Returns the steps run."""
        env = self.env
        k_max = self.stretch_length(sched, next_arrival_s)
        if k_max < MIN_STRETCH or (next_arrival_s - env.now) < MIN_STRETCH * self.last_step_s:
            return 0  # too short to pay for pricing it as arrays: the steps run one by one
        running = sched.running
        n = len(running)
        ks = np.arange(k_max, dtype=float)
        computed = float(sum(r.computed for r in running))
        kv_read = computed + n * ks
        shape = BatchShape(tokens=np.full(k_max, float(n)), seqs=np.full(k_max, float(n)),
                           attn_pairs=kv_read + n, kv_read=kv_read, decode_tokens=np.full(k_max, float(n)),
                           decode_pairs=kv_read + n)
        dur, stall, books = self._timeline(shape, n, k_max, graph)
        starts = env.now + np.concatenate([[0.0], np.cumsum(dur)[:-1]])
        k = k_max
        if math.isfinite(next_arrival_s):
            late = np.nonzero(starts[1:] >= next_arrival_s)[0]
            if late.size:
                k = int(late[0]) + 1
        self._book(books, k, sched, starts, dur, stall, n)
        self.last_step_s = float(dur[k - 1])
        yield env.timeout(float(starts[k - 1] + dur[k - 1] - env.now))
        self._apply(sched, k, env.now)
        return k

    def _timeline(self, shape: BatchShape, n: int, k: int, graph: bool):
        """Durations and stalls of ``k`` steps (arrays), and what to record for each op kind."""
        c, stream = self.stream.cost_for(graph), self.stream
        works = stream.works(shape, note=False)
        secs, bounds = {}, {}
        for kind, w in works.items():
            terms = c.terms(w)
            secs[kind] = np.broadcast_to(np.asarray(terms.seconds, float), (k,))
            bounds[kind] = np.broadcast_to(terms.bounds(), (k,))
        overhead = np.broadcast_to(np.asarray(c.step_overhead(shape), float), (k,))
        tpl = self.template(n)
        launch = overhead  # the lookups launch when the engine's own step work is done
        host = overhead + (tpl.wait if tpl is not None else 0.0)
        t = host
        stall = np.zeros(k)
        layer_books = {}
        for point, kinds in stream.segments():
            if point is not None and tpl is not None:
                kind, layer = point
                if kind == "engram" and layer in tpl.ready:
                    reach = t
                    ready, copy = tpl.ready[layer], tpl.copy.get(layer, 0.0)
                    if self.prefetch:
                        end = np.maximum(reach, launch + ready) + copy
                        fetch = (end - launch) if copy else np.full(k, ready)
                        window = reach - launch
                    else:
                        end = reach + ready + copy
                        fetch, window = np.full(k, ready + copy), np.zeros(k)
                    wait = end - reach
                    layer_books[layer] = (wait, window, fetch)
                    stall, t = stall + wait, end
                elif kind == "gather" and self.prefetch and tpl.hash_end is not None:
                    wait = np.maximum(0.0, launch + tpl.hash_end - t)
                    stall, t = stall + wait, t + wait
            for kind, count in kinds.items():  # the ops up to the next wait point
                t = t + count * secs[kind]
        return t, stall, (secs, bounds, layer_books, host, tpl, works)

    def _book(self, books, k: int, sched: Scheduler, starts, dur, stall, n: int) -> None:
        secs, bounds, layer_books, host, tpl, works = books
        rec = self.rec
        self.stream.note_extrapolation(works, k)
        for kind, count in self.stream.op_counts().items():
            s, b = secs[kind][:k], bounds[kind][:k]
            for name in np.unique(b):
                rec.op_s[kind][str(name)] += count * float(s[b == name].sum())
        for layer, (wait, window, fetch) in layer_books.items():
            rec.wait_s[layer] += float(np.sum(wait[:k]))
            rec.window_s[layer] += float(np.sum(window[:k]))
            rec.fetch_s[layer] += float(np.sum(fetch[:k]))
            rec.fetches[layer] += k
        rec.host_s += float(np.sum(host[:k]))
        if tpl is not None:
            t = tpl.rec
            for mine, theirs in ((rec.rows_requested, t.rows_requested), (rec.rows_fetched, t.rows_fetched),
                                 (rec.bytes_requested, t.bytes_requested), (rec.bytes_by_tier, t.bytes_by_tier)):
                for key, value in theirs.items():
                    mine[key] += k * value
            for layer, stages in t.stage_s.items():
                for stage, value in stages.items():
                    rec.stage_s[layer][stage] += k * value
            rec.regime.update(t.regime)
            rec.in_place_gathered += k * t.in_place_gathered
            for pipe, (moved, busy) in zip(_pipes(self.node), tpl.pipes):
                pipe.moved += k * moved
                pipe.busy_s += k * busy
        pool = sched.pool
        residues = np.bincount(np.array([r.computed for r in sched.running]) % pool.block_tokens,
                               minlength=pool.block_tokens)
        used = pool.used + np.cumsum(residues[(-np.arange(k)) % pool.block_tokens])
        steps = rec.steps
        for j in range(k):
            steps.append(StepRecord(self.index, float(starts[j]), float(dur[j]), n, n, n, float(stall[j]),
                                    n, int(used[j]), 0))

    def _apply(self, sched: Scheduler, k: int, now_s: float) -> None:
        """The requests and blocks after ``k`` steps; the last step's completions finish."""
        pool, finished = sched.pool, []
        for req in sched.running:
            req.computed += k
            req.generated += k
            if req.generated >= req.output_len:
                req.finish_s = now_s
                finished.append(req)
        pool.settle(sched.running)
        if finished:
            gone = set(finished)
            sched.running = [r for r in sched.running if r not in gone]
            for req in finished:
                pool.release(req.rid)
