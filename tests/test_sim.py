"""The discrete-event simulator: closed-form timelines and behaviour."""

import pytest

from planner.accounting import engram_row_bytes, engram_table_rows
from planner.costmodel import BatchShape, CostModel
from planner.ngram_model import ZipfTraffic
from planner.sim import simulate
from planner.stages import engram_cores_per_device
from planner.trace import SPAN_NAMES, chrome_trace
from tests.sim_helpers import hardware, scenario, training


def one_step(**kw):
    """One prefill step of one 16-token prompt on one device (output_len 1)."""
    return scenario(seqs=1, prompt=16, output=1, **kw)


def fetch_and_window(s):
    """The closed form of one step: rows hashed (on the worker with prefetch, on the engine
    thread without), gathered at the table's rate, copied; vs the blocks before L1."""
    cost = CostModel(s.model, s.hardware)
    shape = BatchShape(tokens=16, seqs=1, attn_pairs=16 * 17 / 2, kv_read=0)
    rows = ZipfTraffic(engram_table_rows(s.model)[1] / 16, 16).rows_fetched(16, 0.0)
    nbytes = rows * engram_row_bytes(s.model)
    cores = engram_cores_per_device(cost)
    lookup = cost.gather(nbytes, cores, cost.table_bytes(1)) + cost.transfer(nbytes)
    hashing = cost.hash(16, cores if s.placement.prefetch else 1)
    fetch = (hashing if s.placement.prefetch else 0.0) + lookup
    window = sum(float(cost.seconds(w)) for w in (cost.embed(shape), cost.attention(shape), cost.ffn(0, shape)))
    return float(fetch), window


def device_gather_s(s):
    """The device tier's in-layer gather of one 16-token step (the baseline's lookup op)."""
    cost = CostModel(s.model, s.hardware)
    return float(cost.seconds(cost.device_gather(BatchShape(tokens=16, seqs=1, attn_pairs=16 * 17 / 2, kv_read=0))))


def test_fetch_shorter_than_window_adds_no_stall():
    host = simulate(one_step(), baseline=False)
    device = simulate(one_step(placement={"tier": "device"}), baseline=False)
    fetch, window = fetch_and_window(one_step())
    assert fetch < window
    assert host.exposed_engram_s[1] == 0.0
    assert host.duration_s == pytest.approx(device.duration_s - device_gather_s(one_step()), rel=1e-12)
    assert host.layers[1].fetch_s == pytest.approx(fetch, rel=1e-9)
    assert host.layers[1].window_s == pytest.approx(window, rel=1e-9)


def test_fetch_longer_than_window_adds_exactly_the_difference():
    slow = hardware(h2d_bandwidth=2e6)  # 2 MB/s: the copy outlasts the window
    s = one_step(hw=slow)
    host = simulate(s, baseline=False)
    device = simulate(one_step(hw=slow, placement={"tier": "device"}), baseline=False)
    fetch, window = fetch_and_window(s)
    assert fetch > window
    assert host.duration_s - device.duration_s + device_gather_s(s) == pytest.approx(fetch - window, rel=1e-9)
    assert host.exposed_engram_s[1] == pytest.approx(fetch - window, rel=1e-9)
    assert host.layers[1].bound == "link"


def test_without_prefetch_the_whole_lookup_is_exposed_and_the_hash_is_the_engines():
    s = one_step(placement={"tier": "host", "prefetch": False})
    lookup, _ = fetch_and_window(s)
    m = simulate(s, baseline=False, trace=True)
    assert m.exposed_engram_s[1] == pytest.approx(lookup, rel=1e-9)
    hashes = [sp for sp in m.spans if sp.name == "hash"]
    cost = CostModel(s.model, s.hardware)
    assert [sp.track for sp in hashes] == ["dev0 engine"] and hashes[0].dur_s == pytest.approx(float(cost.hash(16, 1)))
    device = simulate(one_step(placement={"tier": "device", "prefetch": False}), baseline=False)
    # Both hash on the engine; the device tier gathers in-layer instead of looking up.
    assert m.duration_s - device.duration_s + device_gather_s(s) == pytest.approx(lookup, rel=1e-9)


def test_pageable_copy_blocks_compute():
    pinned = simulate(scenario(placement={"tier": "host"}), baseline=False)
    pageable = simulate(scenario(placement={"tier": "host", "pinned": False}), baseline=False)
    assert pageable.exposed_fraction > 0 and pinned.exposed_fraction == 0
    assert pageable.duration_s > pinned.duration_s


def test_two_devices_on_one_uplink_share_it():
    slow = dict(h2d_bandwidth=2e6)
    alone = simulate(scenario(seqs=2, hw=hardware(2, 1, **slow)), baseline=False)
    shared = simulate(scenario(seqs=2, hw=hardware(2, 2, **slow)), baseline=False)
    # Link-bound steps in lockstep: each copy takes twice as long on the shared uplink.
    ratio = shared.layers[1].stage_s["link"] / alone.layers[1].stage_s["link"]
    assert ratio == pytest.approx(2.0, rel=0.01)


def test_cache_and_dedup_cut_traffic():
    base = simulate(scenario(placement={"tier": "host"}), baseline=False)
    cached = simulate(scenario(placement={"tier": "host", "cache_fraction": 0.05}), baseline=False)
    nodedup = simulate(scenario(placement={"tier": "host", "dedup": False}), baseline=False)
    assert cached.bytes_requested["to_device"] < 0.6 * base.bytes_requested["to_device"]
    assert nodedup.bytes_requested["to_device"] > base.bytes_requested["to_device"]


def test_disk_tier_reads_pages_from_nvme():
    from planner.specs import NVMeSpec

    hw = hardware().model_copy(update={"nvme": NVMeSpec(capacity=8e12, read_bandwidth=7e9)})
    m = simulate(scenario(hw=hw, placement={"tier": "disk"}), baseline=False)
    # No page cache: every fetched 160 B row costs a 4 KiB page, and 1/32 of them a second
    # (rows start at multiples of gcd(160, 4096) = 32 B: (160 - 32) / 4096 straddle a page edge).
    pages_per_row = 1 + (160 - 32) / 4096
    assert m.bytes_moved["nvme"] == pytest.approx(pages_per_row * 4096 / 160 * m.bytes_requested["to_device"], rel=1e-9)
    assert m.utilisation["nvme"] > 0
    warm = simulate(scenario(hw=hw, placement={"tier": "disk", "host_cache_fraction": 0.01}), baseline=False)
    assert warm.bytes_moved["nvme"] < 0.5 * m.bytes_moved["nvme"]
    assert m.bytes_moved["to_device"] == pytest.approx(m.bytes_requested["to_device"], rel=1e-9)


def test_uva_mode_reads_over_the_link_without_gathers():
    m = simulate(scenario(placement={"tier": "host", "host_mode": "uva"}), baseline=False)
    assert m.bytes_moved["host_dram"] == 0
    assert m.bytes_moved["h2d"] == pytest.approx(m.bytes_requested["to_device"], rel=1e-9)


def test_training_writes_gradients_back_and_updates_on_host():
    m = simulate(training(), baseline=True)
    assert m.workload == "training" and m.steps == 3 * 2
    assert m.bytes_requested["d2h"] > 0
    assert m.bytes_moved["d2h"] == pytest.approx(m.bytes_requested["d2h"], rel=1e-9)
    assert m.throughput_drop is not None and m.ttft_s is None


def test_cpu_device_gathers_on_its_own_cores():
    """A CPU device computing on every core has no core for a prefetch worker: the worker's
    hash and lookups hold the compute cores (nothing overlaps, nothing is exposed); on demand
    the lookups are exposed; the step costs the same host work either way."""
    from planner.loading import load_hardware
    hw = load_hardware("cpu-workstation")
    shared = simulate(scenario(model="tiny", hw=hw), baseline=False)
    demand = simulate(scenario(model="tiny", hw=hw, placement={"tier": "host", "prefetch": False}), baseline=False)
    assert shared.bytes_moved["to_device"] == pytest.approx(shared.bytes_requested["to_device"], rel=1e-9)
    assert shared.exposed_fraction == 0 and demand.exposed_fraction > 0
    assert shared.duration_s == pytest.approx(demand.duration_s, rel=0.02)


def test_poisson_arrivals_and_metrics_shape():
    m = simulate(scenario(seqs=16, arrival_rate=50.0), baseline=False)
    assert set(m.ttft_s) == {"p50", "p90", "p99"} and m.tpot_s["p50"] > 0
    assert m.output_tokens == 16 * 16


def test_trace_spans_use_the_shared_vocabulary():
    m = simulate(scenario(seqs=2, output=2), trace=True, baseline=False)
    names = {s.name for s in m.spans}
    vocab = {n.replace("{i}", "") for n in SPAN_NAMES}
    assert all(n.rstrip("0123456789") in vocab for n in names), names - vocab
    assert {"step", "hash", "gather_L1", "h2d_L1", "engram_L1", "attn_L0", "embed", "head"} <= names
    assert chrome_trace(m.spans, "sim")["traceEvents"]


def test_unrunnable_workload_is_explained():
    with pytest.raises(ValueError, match="chunked_prefill"):
        simulate(scenario(prompt=64, max_batched_tokens=32, chunked_prefill=False))


def test_prestaged_nvme_reads_hide_behind_compute_and_in_forward_reads_do_not():
    """Pre-staged (``pread``, 128 reads in flight, prefetch on): a decode step's ~130 pages
    arrive in two waves of 80 us, inside the window of the blocks before Engram layer 1. In
    the forward (``mmap``, prefetch off): the gather faults the same pages in one at a time,
    inside the layer, and the step waits for all of them. Prefetching the mapped file does not
    rescue it: one fault at a time takes far longer than the window."""
    from planner.specs import NVMeSpec

    nvme = NVMeSpec(capacity=8e12, read_bandwidth=7e9, read_iops=1.5e6, read_latency=80e-6)
    hw = hardware().model_copy(update={"nvme": nvme})

    def run(**placement):
        m = simulate(scenario(hw=hw, placement={"tier": "disk", **placement}, prompt=16, output=32), baseline=False)
        (layer,) = [r for r in m.layers if r.stage_s]
        return layer.stage_s["disk"], layer.exposed_s

    disk, exposed = run(prefetch=True, disk_read="pread")
    assert disk > 100e-6 and exposed < 0.25 * disk  # the prompt's prefill step is the exposed part
    disk_mmap, exposed_mmap = run(prefetch=False, disk_read="mmap")
    assert disk_mmap > 30 * disk and exposed_mmap >= disk_mmap
    _, exposed_mmap_prefetched = run(prefetch=True, disk_read="mmap")
    assert exposed_mmap_prefetched > 0.9 * disk_mmap
