"""Requests of a simulated run and the plan of one engine step.

A request's life: it arrives, waits, is admitted and prefills its prompt (in chunks or whole,
as the scheduler of :mod:`planner.sim.schedulers` decides), then decodes one token per step
until ``output_len`` tokens are out. Preemption by recompute (vLLM V1's and nano-vLLM's only
mode) drops its KV cache: it waits again and, when readmitted, prefills its prompt and every
token it has generated so far before it decodes on. Tokens already generated stay generated:
none is lost or sampled twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.specs import FixedLength, InferenceWorkload, LognormalLength, UniformLength


@dataclass(eq=False)
class Request:
    """One sequence. Times in seconds; ``computed`` = tokens whose KV is cached;
    ``prefill_target`` = tokens to compute before the next sample (the prompt, or after a
    preemption the prompt and the tokens generated so far)."""

    rid: int
    arrival_s: float
    prompt_len: int
    output_len: int
    device: int = 0
    computed: int = 0
    generated: int = 0
    prefill_target: int = 0
    preemptions: int = 0
    first_token_s: float | None = None
    finish_s: float | None = None

    def __post_init__(self) -> None:
        self.prefill_target = self.prefill_target or self.prompt_len

    @property
    def prefilling(self) -> bool:
        return self.computed < self.prefill_target

    @property
    def num_tokens(self) -> int:
        """Tokens the sequence has: its prompt and every token generated."""
        return self.prompt_len + self.generated

    def preempt(self) -> int:
        """Drop the KV cache (recompute mode); returns the tokens whose KV was lost."""
        lost = self.computed
        self.computed = 0
        self.prefill_target = self.num_tokens
        self.preemptions += 1
        return lost

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
    preempted: list[Request] = field(default_factory=list)  # this step's victims
    tokens: int = 0
    decode_tokens: int = 0
    attn_pairs: float = 0.0
    kv_read: float = 0.0
    decode_pairs: float = 0.0  # the decode tokens' share of attn_pairs

    def add_decodes(self, reqs: list[Request]) -> None:
        """:meth:`add` of one decode token for each of ``reqs`` (the hot path of a step)."""
        self.items.extend((req, 1) for req in reqs)
        prior = sum(req.computed for req in reqs)
        n = len(reqs)
        self.tokens += n
        self.decode_tokens += n
        self.kv_read += prior
        self.attn_pairs += prior + n
        self.decode_pairs += prior + n

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
