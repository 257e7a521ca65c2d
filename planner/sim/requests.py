"""Requests and the continuous-batching scheduler (vLLM's, as of its V1 engine).

Each engine step the scheduler fills a token budget (``max_batched_tokens``) over at most
``max_num_seqs`` running sequences: first one decode token for every running sequence whose
prompt is done, then prefill chunks, continuing partially prefilled sequences before admitting
waiting ones in arrival order (chunked prefill). Without chunked prefill a prompt is scheduled
only if it fits whole in the remaining budget.

Simplifies: no KV-cache capacity limit and so no preemption (size ``max_num_seqs`` to the
memory); no prefix caching; no speculative decoding; scheduling itself takes no time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.specs import FixedLength, InferenceWorkload, LognormalLength, UniformLength


@dataclass
class Request:
    """One sequence. Times in seconds; ``computed`` = tokens whose KV is cached."""

    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int
    device: int = 0
    computed: int = 0
    generated: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prompt_len

    @property
    def done(self) -> bool:
        return self.generated >= self.output_len


def sample_lengths(dist, n: int, rng: np.random.Generator) -> np.ndarray:
    if isinstance(dist, FixedLength):
        return np.full(n, dist.value, dtype=int)
    if isinstance(dist, UniformLength):
        return rng.integers(dist.low, dist.high + 1, size=n)
    assert isinstance(dist, LognormalLength)
    raw = dist.median * np.exp(dist.sigma * rng.standard_normal(n))
    return np.clip(np.rint(raw), dist.min, dist.max).astype(int)


def sample_requests(workload: InferenceWorkload, devices: int) -> list[Request]:
    """All requests of a run, seeded: lengths, Poisson (or t = 0) arrivals, and the device each
    goes to (round-robin, as a data-parallel load balancer does)."""
    rng = np.random.default_rng(workload.seed)
    n = workload.num_sequences
    prompts = sample_lengths(workload.prompt_len, n, rng)
    outputs = sample_lengths(workload.output_len, n, rng)
    if workload.arrival_rate is None:
        arrivals = np.zeros(n)
    else:
        arrivals = np.cumsum(rng.exponential(1.0 / workload.arrival_rate, size=n))
    return [
        Request(rid=i, arrival_s=float(arrivals[i]), prompt_len=int(prompts[i]),
                output_len=int(outputs[i]), device=i % devices)
        for i in range(n)
    ]


@dataclass
class StepPlan:
    """What one step runs: (request, tokens) pairs, decode first. Aggregates are what the cost
    model needs (see :class:`planner.costmodel.BatchShape`)."""

    items: list[tuple[Request, int]] = field(default_factory=list)
    tokens: int = 0
    decode_tokens: int = 0
    attn_pairs: float = 0.0
    kv_read: float = 0.0
    decode_pairs: float = 0.0  # the decode tokens' share of attn_pairs

    def add(self, req: Request, n: int) -> None:
        prior = req.computed
        self.items.append((req, n))
        self.tokens += n
        self.kv_read += prior
        self.attn_pairs += n * prior + n * (n + 1) / 2
        if not req.prefilling:
            self.decode_tokens += 1
            self.decode_pairs += n * prior + n * (n + 1) / 2

    @property
    def seqs(self) -> int:
        return len(self.items)

    @property
    def prefill_tokens(self) -> int:
        return self.tokens - self.decode_tokens


def schedule_step(running: list[Request], waiting: list[Request], workload: InferenceWorkload) -> StepPlan:
    """Pick this step's work; moves admitted requests from ``waiting`` to ``running``."""
    plan, budget = StepPlan(), workload.max_batched_tokens
    for req in running:  # decode tokens first
        if budget == 0:
            break
        if not req.prefilling:
            plan.add(req, 1)
            budget -= 1
    for req in running:  # then continue partial prefills
        if budget == 0:
            break
        if req.prefilling:
            n = _chunk(req, budget, workload.chunked_prefill)
            if n == 0:
                break
            plan.add(req, n)
            budget -= n
    while waiting and budget > 0 and len(running) < workload.max_num_seqs:
        n = _chunk(waiting[0], budget, workload.chunked_prefill)
        if n == 0:
            break
        req = waiting.pop(0)
        running.append(req)
        plan.add(req, n)
        budget -= n
    return plan


def _chunk(req: Request, budget: int, chunked: bool) -> int:
    left = req.prompt_len - req.computed
    if chunked:
        return min(left, budget)
    return left if left <= budget else 0


def finish_step(plan: StepPlan, now_s: float, running: list[Request]) -> list[Request]:
    """Apply a finished step: advance each request, stamp first-token and finish times, and
    return the requests that completed (removed from ``running``)."""
    finished = []
    for req, n in plan.items:
        was_prefilling = req.prefilling
        req.computed += n
        if was_prefilling and req.prefilling:
            continue  # mid-prompt chunk: no token sampled yet
        req.generated += 1
        if req.first_token_s is None:
            req.first_token_s = now_s
        if req.done:
            req.finish_s = now_s
            finished.append(req)
    for req in finished:
        running.remove(req)
    return finished
