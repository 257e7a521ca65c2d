"""Engine schedulers: which requests one engine step runs, bounded by tokens, sequences and
free KV blocks. A scheduler owns the device's queues (``waiting``, ``running``) and its
:class:`planner.sim.kvcache.BlockPool`; :meth:`Scheduler.schedule` plans a step,
:meth:`Scheduler.finish` applies it when it ends.

``vllm`` (vLLM's V1 scheduler as configured by default, ``scheduler.py``): each step fills a
token budget (``max_batched_tokens``): one decode token for every running sequence whose
prompt is done, then chunks of partially prefilled ones, then, if nothing was preempted this
step, waiting requests in arrival order while fewer than ``max_num_seqs`` run and their first
chunk gets blocks (chunked prefill; without it a prompt is scheduled only whole). A running
sequence that cannot get a block preempts the lowest-priority one not yet scheduled this step
(the last admitted); if that is itself, it is preempted.

``nano-vllm`` (nano-vLLM's ``engine/scheduler.py``): prefill first: admit waiting sequences
whole, in order, while the step has fewer than ``max_num_seqs`` of them, their tokens fit
``max_batched_tokens`` and their blocks are free; a step that admitted any runs only those.
Otherwise decode: take running sequences from the front, up to ``max_num_seqs``; one that
needs a block it cannot get preempts the newest running sequence (the back of the queue), or
itself when none is left. A preempted sequence goes to the front of the waiting queue.

Both preempt by recompute (:meth:`planner.sim.requests.Request.preempt`): its blocks are freed
and its tokens prefilled again on readmission. Scheduling itself takes no simulated time here;
the engine's per-step host cost is the replica's (:mod:`planner.sim.inference`).
"""

from __future__ import annotations

from collections import deque

from planner.sim.kvcache import BlockPool
from planner.sim.requests import Request, StepPlan
from planner.specs import InferenceWorkload


class Scheduler:
    """Queues, blocks and the bookkeeping every policy shares."""

    name = ""

    def __init__(self, workload: InferenceWorkload, pool: BlockPool):
        self.w, self.pool = workload, pool
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.preemptions = 0
        self.recomputed_tokens = 0  # KV tokens lost to preemption (prefilled again later)

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def arrive(self, req: Request) -> None:
        self.waiting.append(req)

    def schedule(self) -> StepPlan:
        raise NotImplementedError

    def steady(self) -> bool:
        """Would the next step decode one token of every running sequence and admit nothing?
        Then so would every following step until a sequence completes, runs out of blocks or a
        request arrives: free blocks only shrink while sequences decode, so a waiting request
        refused now stays refused (:mod:`planner.sim.coalesce` advances such stretches at once)."""
        raise NotImplementedError

    def _all_decoding(self) -> bool:
        return bool(self.running) and not any(r.prefilling for r in self.running)

    def preempt(self, req: Request, plan: StepPlan) -> None:
        """Recompute-mode preemption: free the blocks, back to the front of the queue."""
        self.running.remove(req)
        self._evict(req, plan)

    def _evict(self, req: Request, plan: StepPlan) -> None:
        """:meth:`preempt` for a request already taken off ``running``."""
        self.pool.release(req.rid)
        self.recomputed_tokens += req.preempt()
        self.preemptions += 1
        self.waiting.appendleft(req)
        plan.preempted.append(req)

    def finish(self, plan: StepPlan, now_s: float) -> list[Request]:
        """Apply a finished step: advance each request, stamp first-token and finish times,
        free the blocks of those that completed and return them."""
        finished = []
        for req, n in plan.items:
            before = req.computed
            req.computed = before + n
            if before + n < req.prefill_target:
                continue  # mid-prompt chunk: no token sampled yet
            req.generated += 1
            if req.first_token_s is None:
                req.first_token_s = now_s
            if req.generated >= req.output_len:
                req.finish_s = now_s
                finished.append(req)
        if finished:
            gone = set(finished)
            self.running = [r for r in self.running if r not in gone]
            for req in finished:
                self.pool.release(req.rid)
        return finished


def _chunk(req: Request, budget: int, chunked: bool) -> int:
    left = req.prefill_target - req.computed
    if chunked:
        return min(left, budget)
    return left if left <= budget else 0


class VllmScheduler(Scheduler):
    name = "vllm"

    def steady(self) -> bool:
        w, n = self.w, len(self.running)
        if n > w.max_batched_tokens or not self._all_decoding():
            return False
        left = w.max_batched_tokens - n
        if not self.waiting or left == 0 or n >= w.max_num_seqs:
            return True
        head = self.waiting[0]
        chunk = _chunk(head, left, w.chunked_prefill)
        return chunk == 0 or not self.pool.can_hold(head.rid, head.computed + chunk)

    def schedule(self) -> StepPlan:
        plan, budget, w, pool = StepPlan(), self.w.max_batched_tokens, self.w, self.pool
        scheduled: set[Request] = set()

        def room(req: Request, tokens: int) -> bool:
            """Blocks for ``tokens`` tokens of ``req``, preempting from the back if needed."""
            while not pool.can_hold(req.rid, tokens):
                victim = next(r for r in reversed(self.running) if r not in scheduled)
                self.preempt(victim, plan)
                if victim is req:
                    return False
            pool.grow(req.rid, tokens)
            return True

        decoding = [r for r in self.running if r.computed >= r.prefill_target][:budget]  # decode tokens first
        while decoding:
            served = pool.grow_decodes(decoding)
            plan.add_decodes(served)
            scheduled.update(served)
            budget -= len(served)
            if len(served) == len(decoding):
                break
            req = decoding[len(served)]  # needs a block and none is free
            if not room(req, req.computed + 1):
                break  # it was the lowest priority left: preempted itself
            plan.add(req, 1)
            scheduled.add(req)
            budget -= 1
            gone = set(plan.preempted)
            decoding = [r for r in decoding[len(served) + 1:] if r not in gone]
        for req in [r for r in self.running if r.computed < r.prefill_target]:  # then partial prefills
            if budget == 0:
                break
            if req in scheduled or req in plan.preempted:
                continue
            n = _chunk(req, budget, w.chunked_prefill)
            if n == 0:
                break
            if not room(req, req.computed + n):
                break
            plan.add(req, n)
            scheduled.add(req)
            budget -= n
        if plan.preempted:
            return plan
        while self.waiting and budget > 0 and len(self.running) < w.max_num_seqs:
            req = self.waiting[0]
            n = _chunk(req, budget, w.chunked_prefill)
            if n == 0 or not pool.can_hold(req.rid, req.computed + n):
                break
            self.waiting.popleft()
            pool.grow(req.rid, req.computed + n)
            self.running.append(req)
            plan.add(req, n)
            budget -= n
        return plan


class NanoVllmScheduler(Scheduler):
    name = "nano-vllm"

    def steady(self) -> bool:
        w = self.w
        if len(self.running) > w.max_num_seqs or not self._all_decoding():
            return False
        if not self.waiting:
            return True
        head = self.waiting[0]
        return (head.prefill_target - head.computed > w.max_batched_tokens
                or not self.pool.can_hold(head.rid, head.prefill_target))

    def schedule(self) -> StepPlan:
        plan, w, pool = StepPlan(), self.w, self.pool
        batched = 0
        while self.waiting and plan.seqs < w.max_num_seqs:  # prefill first, whole sequences
            req = self.waiting[0]
            n = req.prefill_target - req.computed
            if batched + n > w.max_batched_tokens or not pool.can_hold(req.rid, req.prefill_target):
                break
            self.waiting.popleft()
            pool.grow(req.rid, req.prefill_target)
            self.running.append(req)
            plan.add(req, n)
            batched += n
        if plan.items:
            return plan
        queue, kept = deque(self.running), []
        while queue and len(kept) < w.max_num_seqs:  # decode from the front of the queue
            front = [queue[i] for i in range(min(len(queue), w.max_num_seqs - len(kept)))]
            served = pool.grow_decodes(front)
            for _ in served:
                queue.popleft()
            kept.extend(served)
            if len(served) == len(front):
                continue
            req = queue.popleft()  # needs a block and none is free: preempt the newest
            while not pool.can_hold(req.rid, req.computed + 1):
                victim = queue.pop() if queue else req
                self._evict(victim, plan)
                if victim is req:
                    break
            else:
                pool.grow(req.rid, req.computed + 1)
                kept.append(req)
        plan.add_decodes(kept)
        self.running = kept + list(queue)
        return plan


SCHEDULERS = {cls.name: cls for cls in (VllmScheduler, NanoVllmScheduler)}


def make_scheduler(workload: InferenceWorkload, pool: BlockPool) -> Scheduler:
    return SCHEDULERS[workload.scheduler](workload, pool)
