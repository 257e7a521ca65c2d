"""The engine schedulers replayed on small cases: each step's (request, tokens) list and its
preemptions, worked out by hand from vLLM V1's and nano-vLLM's rules (planner/sim/schedulers.py),
then invariants over many random cases (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.sim.kvcache import BlockPool
from planner.sim.requests import Request
from planner.sim.schedulers import make_scheduler
from planner.specs import InferenceWorkload


def workload(scheduler: str, budget: int, seqs: int, block: int, chunked: bool = True) -> InferenceWorkload:
    return InferenceWorkload(num_sequences=1, prompt_len=1, output_len=1, scheduler=scheduler,
                             max_batched_tokens=budget, max_num_seqs=seqs, kv_block_size=block,
                             chunked_prefill=chunked)


def drive(scheduler: str, requests: list[tuple[int, int]], *, budget: int, seqs: int, block: int,
          blocks: int, chunked: bool = True, check=None):
    """Run requests (prompt, output), all queued at t = 0, to completion; returns each step as
    ([(rid, tokens)...], [preempted rids])."""
    w = workload(scheduler, budget, seqs, block, chunked)
    pool = BlockPool(blocks, block)
    sched = make_scheduler(w, pool)
    reqs = [Request(rid=i, arrival_s=0.0, prompt_len=p, output_len=o) for i, (p, o) in enumerate(requests)]
    for r in reqs:
        sched.arrive(r)
    steps = []
    while sched.busy:
        plan = sched.schedule()
        assert plan.tokens > 0, "the scheduler made no progress"
        steps.append(([(r.rid, n) for r, n in plan.items], [r.rid for r in plan.preempted]))
        if check is not None:
            check(sched, plan)
        before = {r.rid: r.generated for r, _ in plan.items}
        sched.finish(plan, float(len(steps)))
        for r, _ in plan.items:  # a step samples at most one token of a sequence
            assert r.generated - before[r.rid] in (0, 1)
        assert len(steps) < 10_000
    return steps, reqs


def test_vllm_decodes_first_then_continues_prefills_then_admits_within_budget_and_seqs():
    steps, reqs = drive("vllm", [(5, 2), (3, 1), (2, 1)], budget=6, seqs=2, block=4, blocks=4)
    assert steps == [
        ([(0, 5), (1, 1)], []),   # R0's whole prompt, then the budget's last token starts R1
        ([(0, 1), (1, 2)], []),   # R0 decodes first, R1 finishes its prompt; R2 waits (2 running)
        ([(2, 2)], []),
    ]
    assert [r.generated for r in reqs] == [2, 1, 1]


def test_vllm_preempts_the_lowest_priority_by_recompute_and_admits_nothing_that_step():
    steps, reqs = drive("vllm", [(2, 3), (2, 3)], budget=16, seqs=4, block=2, blocks=3)
    assert steps == [
        ([(0, 2), (1, 2)], []),
        ([(0, 1)], [1]),          # R1 needs a block, none is free: it is the last, so it goes
        ([(0, 1)], []),           # R1 (prompt + 1 generated = 3 tokens, 2 blocks) does not fit yet
        ([(1, 3)], []),           # recomputed: prompt and its one generated token, then a sample
        ([(1, 1)], []),
    ]
    assert [r.generated for r in reqs] == [3, 3]
    assert reqs[1].preemptions == 1 and reqs[0].preemptions == 0


def test_vllm_without_chunked_prefill_schedules_only_whole_prompts():
    steps, _ = drive("vllm", [(4, 1), (4, 1)], budget=6, seqs=4, block=4, blocks=8, chunked=False)
    assert steps == [([(0, 4)], []), ([(1, 4)], [])]


def test_nano_vllm_prefills_whole_sequences_first_and_preempts_the_newest():
    steps, reqs = drive("nano-vllm", [(2, 3), (2, 3), (1, 1)], budget=4, seqs=4, block=2, blocks=3)
    assert steps == [
        ([(0, 2), (1, 2)], []),   # R2 would pass the 4-token budget
        ([(2, 1)], []),           # prefill first: R2 runs alone, the decodes wait
        ([(0, 1)], [1]),          # R1 needs a block, none free, nobody behind it: itself
        ([(0, 1)], []),           # R1's recompute (3 tokens, 2 blocks) does not fit: decode
        ([(1, 3)], []),
        ([(1, 1)], []),
    ]
    assert [r.generated for r in reqs] == [3, 3, 1]


def test_nano_vllm_running_set_may_exceed_max_num_seqs_but_a_decode_batch_may_not():
    peak = []
    steps, _ = drive("nano-vllm", [(1, 2), (1, 2)], budget=64, seqs=1, block=4, blocks=8,
                     check=lambda s, p: peak.append(len(s.running)))
    assert steps == [([(0, 1)], []), ([(1, 1)], []), ([(0, 1)], []), ([(1, 1)], [])]
    assert max(peak) == 2  # nano-vLLM counts max_num_seqs per step, not over the running set


def test_nano_vllm_preempts_from_the_back_of_the_queue_before_itself():
    # Three decoding sequences whose next tokens each need a block; one block free: R0 gets it,
    # R1 takes R2's blocks (the newest), R2 goes to the front of the waiting queue.
    steps, reqs = drive("nano-vllm", [(2, 2), (2, 2), (2, 2)], budget=64, seqs=8, block=2, blocks=4)
    assert steps[0] == ([(0, 2), (1, 2), (2, 2)], [])
    assert steps[1] == ([(0, 1), (1, 1)], [2])
    assert [r.generated for r in reqs] == [2, 2, 2]


cases = st.lists(st.tuples(st.integers(1, 40), st.integers(1, 24)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(requests=cases, scheduler=st.sampled_from(["vllm", "nano-vllm"]), block=st.sampled_from([1, 2, 4, 16]),
       budget=st.integers(64, 256), seqs=st.integers(1, 16), spare=st.integers(0, 40), chunked=st.booleans())
def test_blocks_bound_concurrency_and_every_token_is_produced_once(requests, scheduler, block, budget, seqs,
                                                                    spare, chunked):
    longest = max(p + o for p, o in requests)
    blocks = -(-longest // block) + spare  # the longest sequence always fits (the simulator checks it)

    def check(sched, plan):
        pool = sched.pool
        assert 0 <= pool.free and sum(pool.held.values()) + pool.free == pool.total
        assert len(sched.running) <= pool.total  # a running sequence holds at least one block
        for req, n in plan.items:  # what runs this step has its blocks
            assert pool.held[req.rid] * block >= req.computed + n
        if scheduler == "vllm":
            assert len(sched.running) <= seqs and plan.tokens <= budget
        else:
            assert plan.seqs <= seqs
            assert plan.tokens <= budget or plan.decode_tokens == plan.tokens

    _, reqs = drive(scheduler, requests, budget=max(budget, longest), seqs=seqs, block=block, blocks=blocks,
                    chunked=chunked, check=check)
    assert [r.generated for r in reqs] == [o for _, o in requests]  # none lost, none produced twice
    # Every token but the last sampled one ends with its KV computed, preempted or not.
    assert [r.computed for r in reqs] == [p + o - 1 for p, o in requests]
