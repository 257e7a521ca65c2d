"""Closed-form checks of the cost model."""

import numpy as np
import pytest

from planner.accounting import attention_params, engram_row_bytes, hyper_connection_flops, swiglu_params
from planner.costmodel import BatchShape, CostModel
from planner.efficiency import Efficiency
from planner.loading import load_hardware, load_model
from planner.specs import NVMeSpec


@pytest.fixture(scope="module")
def cost():
    return CostModel(load_model("dense-8b-engram-100b"), load_hardware("h800"))


def test_one_transfer_is_latency_plus_bytes_over_bandwidth(cost):
    link, eff = cost.hardware.link, cost.hardware.efficiency.link
    assert cost.transfer(1e9) == pytest.approx(link.latency + 1e9 / (link.h2d_bandwidth * eff))
    assert cost.transfer(0.0) == 0.0
    assert cost.transfer(1e9, mode="pageable") == pytest.approx(link.latency + 1e9 / link.pageable_h2d_bandwidth)
    assert cost.transfer(1e9, mode="uva") == pytest.approx(link.latency + 1e9 / link.uva_read_bandwidth)


def test_roofline_takes_the_larger_term_plus_launches(cost):
    peak = cost.peak_flops * cost.hardware.efficiency.matmul
    hbm = cost.hbm_bandwidth * cost.hardware.efficiency.memory
    decode, prefill = BatchShape.decode(8, 512), BatchShape.prefill(8192)
    w = cost.ffn(0, decode)
    assert cost.seconds(w) == pytest.approx(max(w.flops / peak, w.bytes / hbm) + 3 * cost.launch_s)
    assert cost.bound(cost.ffn(0, decode)) == "hbm"
    assert cost.bound(cost.ffn(0, prefill)) == "compute"
    # Weights are read once per step whatever the batch: FLOPs count per token.
    assert w.flops == pytest.approx(2 * 8 * swiglu_params(4096, 14336))
    assert cost.attention(decode).flops > 2 * 8 * attention_params(cost.model)


def test_efficiency_is_a_replaceable_strategy(cost):
    class Half(Efficiency):
        def matmul_fraction(self, flops):
            return 0.5 * super().matmul_fraction(flops)

    slow = CostModel(cost.model, cost.hardware, Half(cost.hardware))
    w = cost.ffn(0, BatchShape.prefill(8192))
    launch = w.kernels * cost.launch_s
    assert slow.seconds(w) - launch == pytest.approx(2 * (cost.seconds(w) - launch))


def test_moe_decode_reads_only_touched_experts():
    c = CostModel(load_model("engram-27b"), load_hardware("h100-sxm"))
    one, many = c.ffn(5, BatchShape.decode(1, 100)), c.ffn(5, BatchShape.decode(4096, 100))
    expert_bytes = swiglu_params(2560, 1536) * 2
    assert one.bytes < (6 + 2 + 1) * expert_bytes  # top-6 + 2 shared (+ router, activations)
    assert many.bytes > 55 * expert_bytes  # every routed expert touched


def test_host_gather_is_bounded_by_cores_then_dram(cost):
    host, table = cost.hardware.host, cost.table_bytes(cost.model.engram_layer_ids[0])
    assert cost.gather_rate(1, table) == pytest.approx(host.gather_bandwidth_per_core)
    assert cost.gather_rate(10_000, table) == pytest.approx(host.memory_bandwidth * cost.hardware.efficiency.host_memory)
    assert cost.gather(4e9, 1, table) == pytest.approx(1.0)


def test_nvme_reads_whole_pages():
    hw = load_hardware("h100-sxm")
    hw = hw.model_copy(update={"nvme": NVMeSpec(capacity=8e12, read_bandwidth=8e9, read_iops=1e6)})
    c = CostModel(load_model("dense-8b-engram-100b"), hw)
    row = engram_row_bytes(c.model)
    assert row == 160
    # A 160 B row costs a 4 KiB page; rows start at multiples of gcd(160, 4096) = 32 B, so
    # (160 - 32) / 4096 of them straddle two pages.
    assert c.nvme_pages(1000, row) == pytest.approx(1000 * (1 + 128 / 4096))
    assert c.nvme_pages(10, 4096) == 10 and c.nvme_pages(10, 2048) == 10  # page-aligned rows never straddle
    assert c.nvme_pages(10, 8192) == 20
    pages = c.nvme_pages(1e6, row)
    # IOPS bound: 1e6 pages/s < 8e9 / 4096 = 1.95e6 pages/s, with enough reads in flight.
    assert c.nvme_read(1e6, row, "pread", 1024) == pytest.approx(80e-6 + pages / 1e6)


def test_nvme_latency_bound_with_few_reads_in_flight():
    """Waves of reads: 128 in flight at 80 us each sustain 1.6M pages/s at most; an mmap'd
    file faults one page at a time, so its reads cost a latency each."""
    hw = load_hardware("h100-sxm")
    nvme = NVMeSpec(capacity=8e12, read_bandwidth=55e9, read_iops=11.2e6, fault_latency=100e-6)
    c = CostModel(load_model("dense-8b-engram-100b"), hw.model_copy(update={"nvme": nvme}))
    rows = 1000
    pages = c.nvme_pages(rows, 160)
    assert c.nvme_read(rows, 160, "pread", 128) == pytest.approx(80e-6 * np.ceil(pages / 128))
    assert c.nvme_read(rows, 160, "pread", 1) == pytest.approx(80e-6 * np.ceil(pages))
    assert c.nvme_read(rows, 160, "mmap", 128) == pytest.approx(100e-6 * np.ceil(pages))
    assert c.nvme_read(0, 160, "mmap", 128) == 0
    # Rate bound where the queue is deep: latency + pages / rate.
    assert c.nvme_read(rows, 160, "pread", 65536) == pytest.approx(80e-6 + pages / 11.2e6)


def test_array_inputs_broadcast(cost):
    t = cost.transfer(np.array([1e6, 1e9]))
    assert t.shape == (2,) and t[1] > t[0]
    w = cost.attention(BatchShape.decode(np.array([1.0, 64.0]), 1024.0))
    assert np.shape(cost.seconds(w)) == (2,)


def test_mla_counts_expanded_prefill_and_absorbed_decode_pairs():
    """Prefill pairs in the expanded form, decode pairs in the absorbed form (what the
    reference MLA runs); a mixed step is the sum of its parts."""
    model = load_model("tiny")
    att, c = model.attention, CostModel(load_model("tiny"), load_hardware("h800"))
    h, kv, r = att.n_heads, att.kv_lora_rank, att.qk_rope_head_dim
    per_token = 2 * attention_params(model) + hyper_connection_flops(model)
    dec, pre = BatchShape.decode(4, 63), BatchShape.prefill(32)
    assert c.attention(dec).flops == pytest.approx(4 * per_token + 4 * 64 * (2 * h * (kv + r) + 2 * h * kv))
    expanded = 2 * h * (att.qk_nope_head_dim + r + att.v_head_dim)
    assert c.attention(pre).flops == pytest.approx(32 * per_token + 32 * 33 / 2 * expanded)
    assert c.attention(dec + pre).flops == pytest.approx(c.attention(dec).flops + c.attention(pre).flops)
    # A prefill chunk after cached keys re-expands their latent.
    chunk = BatchShape.prefill(8, 16)
    assert c.attention(chunk).flops == pytest.approx(
        8 * per_token + (8 * 16 + 8 * 9 / 2) * expanded + 16 * 2 * h * kv * (att.qk_nope_head_dim + att.v_head_dim))


def test_a_dram_cache_of_the_whole_table_reads_nothing_from_nvme():
    """host_cache_fraction covering every row the device cache leaves: no NVMe page is read,
    even though a measured hit-rate curve stops below 1 at fraction 1 (its held-out reuse
    ceiling: rows the counted part never saw, which a page cache of the whole file still
    holds). Part of it: the rest is read from the drive."""
    from planner.ngram_model import NgramStats
    from planner.specs import EngramPlacement
    from planner.stages import host_placement, layer_fetch

    hw = load_hardware("h100-sxm")
    c = CostModel(load_model("engram-27b"), hw)
    k = c.model.engram.rows_per_token
    stats = NgramStats(zipf_exponent=1.0, rows_per_token=k, table_rows=10**6, batch_tokens=[1, 1024],
                       unique_fraction_values=[1.0, 0.5], cache_fraction=[0.01, 1.0], hit_rate_values=[0.5, 0.9])
    layer = c.model.engram.layer_ids[0]
    for f, hcf, none_from_disk in [(0.0, 1.0, True), (0.01, 0.99, True), (0.0, 0.5, False)]:
        p = EngramPlacement(tier="disk", cache_fraction=f, host_cache_fraction=hcf)
        fetch = layer_fetch(c, p, stats, layer, 512.0, host_placement(c, p))
        assert (float(fetch.disk_rows) == 0.0 and float(fetch.disk_s) == 0.0) == none_from_disk, (f, hcf)


def test_cpu_prefetch_worker_cores_follow_the_reference_worker():
    """A CPU device's prefetch worker gets the cores the compute threads leave free; with none
    free it is one thread sharing theirs (reference_model.prefetch.worker_threads), while an
    on-demand lookup runs with the compute threads' parallelism."""
    from planner.specs import EngramPlacement
    from planner.stages import HostPlacement, compute_cores, host_placement

    hw = load_hardware("cpu-workstation")
    c = CostModel(load_model("tiny"), hw)
    compute, cores = compute_cores(c), hw.host.cores
    on, off = EngramPlacement(tier="host", prefetch=True), EngramPlacement(tier="host", prefetch=False)
    assert host_placement(c, off) == HostPlacement(False, False, compute, 1)
    spare = cores - compute
    assert host_placement(c, on) == (HostPlacement(True, False, spare, 1) if spare else HostPlacement(True, True, 1, 1))
    full = hw.model_copy(update={"host": hw.host.model_copy(update={"cores": compute})})
    assert host_placement(CostModel(load_model("tiny"), full), on) == HostPlacement(True, True, 1, 1)
