"""Property tests of the simulator (hypothesis, few examples: each is a whole simulation)."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.sim import simulate
from tests.sim_helpers import hardware, scenario

FAST = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])

placements = st.fixed_dictionaries({
    "tier": st.sampled_from(["host", "device"]),
    "cache_fraction": st.sampled_from([0.0, 0.01, 0.2]),
    "prefetch": st.booleans(),
    "dedup": st.booleans(),
    "host_mode": st.sampled_from(["staged", "uva"]),
    "pinned": st.booleans(),
})


def with_rates(h2d=63e9, dram=614e9, flops=989e12):
    hw = hardware(2, 2, h2d_bandwidth=h2d)
    return hw.model_copy(update={
        "host": hw.host.model_copy(update={"memory_bandwidth": dram}),
        "device": hw.device.model_copy(update={"flops": {"bf16": flops}}),
    })


@FAST
@given(h2d=st.floats(1e6, 1e11), dram=st.floats(1e8, 1e12), flops=st.floats(1e12, 2e15),
       factor=st.floats(1.0, 10.0), placement=placements)
def test_more_bandwidth_or_flops_never_slows_a_run(h2d, dram, flops, factor, placement):
    def run(**rates):
        return simulate(scenario(seqs=4, prompt=32, output=6, hw=with_rates(**rates), placement=placement),
                        baseline=False).duration_s

    base = run(h2d=h2d, dram=dram, flops=flops)
    for faster in (dict(h2d=h2d * factor, dram=dram, flops=flops),
                   dict(h2d=h2d, dram=dram * factor, flops=flops),
                   dict(h2d=h2d, dram=dram, flops=flops * factor)):
        assert run(**faster) <= base * (1 + 1e-9)


@FAST
@given(placement=placements, seed=st.integers(0, 3), rate=st.sampled_from([None, 200.0]))
def test_engram_disabled_is_the_baseline_and_bytes_balance(placement, seed, rate):
    s = scenario(seqs=6, prompt={"kind": "uniform", "low": 8, "high": 48}, output=5, devices=2,
                 per_link=2, placement=placement, seed=seed, arrival_rate=rate)
    m = simulate(s)
    plain = simulate(s.model_copy(update={"model": s.model.without_engram()}), baseline=False)
    assert m.baseline["duration_s"] == plain.duration_s
    assert m.baseline["throughput_output_tokens_per_s"] == plain.throughput_output_tokens_per_s
    assert abs(m.bytes_moved["to_device"] - m.bytes_requested["to_device"]) <= 1e-6 * max(1.0, m.bytes_requested["to_device"])
    again = simulate(s)
    assert again.as_dict() == m.as_dict()


# ---- the paged KV cache: admission, preemption, memory

def tight(s, blocks: int):
    """``s`` on a device whose memory leaves about ``blocks`` KV blocks."""
    from planner.memory import device_memory
    from tests.sim_helpers import roomy

    mem = device_memory(s)
    memory = (mem.weights + mem.engram + mem.workspace + mem.runtime + blocks * mem.block_bytes) / mem.utilization
    return s.model_copy(update={"hardware": roomy(s.hardware, memory * (1 + 1e-12))})


KV = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@KV
@given(scheduler=st.sampled_from(["vllm", "nano-vllm"]), seqs=st.integers(2, 40), prompt=st.integers(1, 120),
       output=st.integers(1, 80), spare=st.integers(0, 30), rate=st.sampled_from([None, 50.0]),
       placement=placements)
def test_kv_blocks_bound_concurrency_and_no_token_is_lost_or_doubled(scheduler, seqs, prompt, output, spare,
                                                                     rate, placement):
    from planner.sim.requests import sample_requests

    s = scenario(seqs=seqs, prompt={"kind": "uniform", "low": 1, "high": prompt},
                 output={"kind": "uniform", "low": 1, "high": output}, placement=placement, scheduler=scheduler,
                 arrival_rate=rate, kv_block_size=8, max_batched_tokens=256, max_model_len=prompt + output)
    s = tight(s, -(-(prompt + output) // 8) + spare)
    m = simulate(s, baseline=False, trace=True)
    assert m.serving.peak_running <= m.serving.kv_blocks and m.serving.kv_peak_fraction <= 1.0
    kv = [c for c in m.counters if c.track.endswith(" kv")]
    assert kv
    for c in kv:
        assert c.values["blocks_used"] <= m.serving.kv_blocks
    assert m.output_tokens == sum(r.output_len for r in sample_requests(s.workload, 1))


@KV
@given(scheduler=st.sampled_from(["vllm", "nano-vllm"]), seqs=st.integers(16, 48), prompt=st.integers(8, 48),
       output=st.integers(96, 200), rate=st.sampled_from([None, 300.0]))
def test_more_device_memory_never_lowers_decode_heavy_throughput(scheduler, seqs, prompt, output, rate):
    """More KV blocks admit more sequences and preempt fewer. Decode-heavy runs only: with long
    prompts and short outputs a smaller cache can win, legitimately, by spreading prefill chunks
    over steps that are bound by the weights' bytes anyway (docs/simulator.md, "KV cache")."""
    s = scenario(model="dense-8b", seqs=seqs, prompt={"kind": "uniform", "low": 1, "high": prompt},
                 output={"kind": "uniform", "low": 1, "high": output}, placement={"tier": "device"},
                 scheduler=scheduler, arrival_rate=rate, kv_block_size=16, max_batched_tokens=512,
                 max_model_len=prompt + output)
    least = -(-(prompt + output) // 16)
    runs = [simulate(tight(s, least + extra), baseline=False) for extra in (0, 8, 32, 128, 10_000)]
    for fewer, more in zip(runs, runs[1:]):
        assert more.serving.kv_blocks >= fewer.serving.kv_blocks
        assert more.throughput_output_tokens_per_s >= fewer.throughput_output_tokens_per_s * (1 - 1e-9)
