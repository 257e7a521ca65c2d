"""Closed-form per-step estimate, vectorised over many configurations (sweeps, planner pass 1).

For one engine step of one device the model is the simulator's critical path without queueing:

    compute  = embed + sum over blocks (engram + attention + FFN) + head      (cost model)
    ready_j  = when layer j's rows are on the device: hash, then FIFO pipelines
               (NVMe read) -> gather -> copy, all layers issued at the step start (prefetch)
    reach_j  = compute before layer j's Engram op + stalls of earlier layers  (the window)
    exposed_j = max(0, ready_j - reach_j)          with prefetch
              = hash_j + disk_j + gather_j + copy_j   without (the fetch starts at the layer)
    step     = compute + sum_j exposed_j

Every input may be a numpy array; they broadcast together (see :func:`estimate_step`), so one
call evaluates tens of thousands of configurations.

What it cannot see (the simulator can): contention between devices for a shared PCIe uplink
(each device is assumed to own its link), queueing of requests (arrival bursts, TTFT under
load), steps whose batch changes as sequences finish, and prefetches of one step spilling into
the next. Host DRAM and NVMe are split statically: each device gets ``1 / device.count`` of them
(all devices fetching at once), which is exact in lockstep and pessimistic otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from planner.accounting import engram_row_bytes, engram_table_rows
from planner.costmodel import BatchShape, CostModel, Efficiency, Number
from planner.ngram_model import ZipfTraffic, traffic_model
from planner.specs import InferenceWorkload, Scenario

OVERRIDES = {
    "batch_size": "decode sequences per device in the step",
    "context_len": "cached tokens each decoding sequence attends to",
    "prefill_tokens": "prefill tokens added to the step (no prior context)",
    "prefill_seqs": "sequences those prefill tokens split into, equally (default 1)",
    "cache_fraction": "share of each offloaded table's rows hot on the device",
    "table_rows": "rows of each Engram layer's table (Zipf model only)",
    "layer_id": "the Engram layer's block id (models with one Engram layer)",
    "h2d_bandwidth": "host-to-device line rate, bytes/s",
    "host_memory_bandwidth": "node DRAM bandwidth, bytes/s",
    "flops_scale": "multiplier on the device's peak FLOP/s",
    "prefetch": "1 = fetch at step start, 0 = at the Engram layer",
}


@dataclass(frozen=True)
class AnalyticResult:
    """Arrays of one estimate per configuration (seconds; tokens/s per node)."""

    step_s: np.ndarray
    compute_s: np.ndarray
    exposed_s: np.ndarray
    fetch_s: np.ndarray
    window_s: np.ndarray
    tokens_per_step: np.ndarray
    throughput_tokens_per_s: np.ndarray
    bound: np.ndarray
    per_layer: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(np.size(self.step_s))

    def as_dict(self) -> dict:
        return {k: np.asarray(v).tolist() for k, v in self.__dict__.items() if k != "per_layer"}


def estimate_step(scenario: Scenario, efficiency: Efficiency | None = None, base_dir=None,
                  **overrides: Number) -> AnalyticResult:
    """Per-step estimate of ``scenario`` with any of :data:`OVERRIDES` given as arrays.

    Defaults: a steady decode step of ``workload.max_num_seqs`` sequences (bounded by the
    device's share of ``num_sequences``) at the mean prompt + half the mean output of context.
    """
    unknown = set(overrides) - set(OVERRIDES)
    if unknown:
        raise ValueError(f"unknown override(s) {sorted(unknown)}; known: {sorted(OVERRIDES)}")
    model, hw, placement = scenario.model, scenario.hardware, scenario.placement
    batch, context = _default_decode(scenario)
    o = {"batch_size": batch, "context_len": context, "prefill_tokens": 0.0, "prefill_seqs": 1.0,
         "cache_fraction": placement.cache_fraction, "flops_scale": 1.0,
         "prefetch": float(placement.prefetch), "h2d_bandwidth": hw.link.h2d_bandwidth,
         "host_memory_bandwidth": hw.host.memory_bandwidth, **overrides}
    keys = list(o)
    arrays = dict(zip(keys, np.broadcast_arrays(*[np.asarray(o[k], dtype=float) for k in keys])))
    if "layer_id" in overrides:
        if model.engram is None or len(model.engram_layer_ids) != 1:
            raise ValueError("layer_id can be swept only for a model with exactly one Engram layer")
        arrays["layer_id"] = np.broadcast_to(np.asarray(overrides["layer_id"], float), arrays["batch_size"].shape)
        if np.any((arrays["layer_id"] < 0) | (arrays["layer_id"] >= model.n_layers)):
            raise ValueError(f"layer_id must lie in [0, {model.n_layers - 1}]")

    cost = CostModel(model, hw, efficiency).with_rates(
        peak_flops=hw.device.flops_for(model.dtype) * arrays["flops_scale"],
        h2d_bandwidth=arrays["h2d_bandwidth"], host_memory_bandwidth=arrays["host_memory_bandwidth"])
    b, c, pf = arrays["batch_size"], arrays["context_len"], arrays["prefill_tokens"]
    ps = np.where(pf > 0, np.maximum(arrays["prefill_seqs"], 1.0), 0.0)
    chunk = pf / np.maximum(ps, 1.0)
    shape = BatchShape.decode(b, c) + BatchShape(tokens=pf, seqs=ps, attn_pairs=ps * chunk * (chunk + 1) / 2,
                                                 kv_read=0.0 * pf)
    tokens = b + pf

    attn = cost.seconds(cost.attention(shape))
    dense = cost.seconds(cost.ffn(_first(model, moe=False), shape)) if _count(model, moe=False) else 0.0
    moe = cost.seconds(cost.ffn(_first(model, moe=True), shape)) if _count(model, moe=True) else 0.0
    embed, head = cost.seconds(cost.embed(shape)), cost.seconds(cost.head(shape))
    engram = cost.seconds(cost.engram(shape)) if model.engram else 0.0
    layers = model.engram_layer_ids
    compute = (embed + head + model.n_layers * attn + _count(model, False) * dense
               + _count(model, True) * moe + len(layers) * engram)
    zero = np.zeros(np.shape(b))
    if not layers:
        return _result(compute, zero, zero, zero, tokens, hw, compute_bound(cost, shape, model), {})

    offloaded = [l for l in layers if placement.tier_of(l) != "device"]
    cpu = hw.device.kind == "cpu"
    prefetch = (arrays["prefetch"] > 0) & (not cpu)
    cores = hw.host.cores if cpu else cost.engram_cores_per_device()
    dram_share = cost.host_dram_rate() / (1 if cpu else hw.device.count)
    gather_rate = np.minimum(cores * hw.host.gather_bandwidth_per_core, dram_share)
    row_bytes = engram_row_bytes(model)
    table_rows = engram_table_rows(model)
    hash_all = cost.hash(tokens, cores)

    exposed_total, per_layer = zero.copy(), {}
    gather_end = copy_end = disk_end = hash_all * prefetch
    fetch_last, window_last = zero.copy(), zero.copy()
    stage_max = {k: zero.copy() for k in ("cpu", "host_gather", "link", "disk")}
    for j, layer in enumerate(layers):
        layer_pos = arrays.get("layer_id", float(layer))
        reach = (embed + layer_pos * attn + _dense_before(model, layer_pos) * dense
                 + (layer_pos - _dense_before(model, layer_pos)) * moe + j * engram + exposed_total)
        if layer not in offloaded:
            continue
        rows_total = arrays["table_rows"] if "table_rows" in arrays else table_rows[layer]
        traffic = _traffic(scenario, model, rows_total, base_dir)
        rows = traffic.rows_fetched(tokens, arrays["cache_fraction"], placement.dedup)
        nbytes = rows * row_bytes
        disk = _disk_time(cost, traffic, rows, placement, layer, row_bytes, hw.device.count)
        uva = placement.host_mode == "uva" and not cpu
        gather = zero if uva else nbytes / gather_rate
        link_mode = "uva" if uva else ("pinned" if placement.pinned else "pageable")
        copy = zero if cpu else cost.transfer(nbytes, "h2d", link_mode)
        sync_copy = copy if (link_mode == "pageable") else zero
        async_copy = copy - sync_copy
        hash_j = hash_all / len(offloaded)
        # Prefetch: FIFO pipelines from the step start (disk reads, gathers, copies in layer order).
        disk_end = disk_end + disk
        gather_end = np.maximum(gather_end, disk_end) + gather
        copy_end = np.maximum(copy_end, gather_end) + async_copy
        ready = copy_end
        exposed_pf = np.maximum(0.0, ready - reach) + sync_copy
        exposed_od = hash_j + disk + gather + copy
        exposed = np.where(prefetch, exposed_pf, exposed_od)
        exposed_total = exposed_total + exposed
        fetch = np.where(prefetch, ready + sync_copy, exposed_od)
        window = np.where(prefetch, reach, 0.0)
        for key, part in (("cpu", hash_j), ("host_gather", gather), ("link", copy), ("disk", disk)):
            stage_max[key] = np.maximum(stage_max[key], np.where(exposed > 0, part, 0.0))
        per_layer[layer] = {"rows": rows, "bytes": nbytes, "fetch_s": fetch, "window_s": window,
                            "exposed_s": exposed}
        fetch_last, window_last = fetch, window
    names = np.array(list(stage_max))
    fetch_bound = names[np.argmax(np.stack([stage_max[k] for k in names]), axis=0)]
    bound = np.where(exposed_total > 0, fetch_bound, compute_bound(cost, shape, model))
    return _result(compute + exposed_total, compute, exposed_total, fetch_last, tokens, hw, bound,
                   per_layer, window_last)


def estimate_run(scenario: Scenario, efficiency: Efficiency | None = None, base_dir=None) -> dict:
    """Whole offline run (all requests at t = 0) from per-step estimates: per device, waves of
    ``max_num_seqs`` sequences, each one prefill (in ``max_batched_tokens`` chunks) then
    ``output - 1`` decode steps at the mean context. Exact for fixed lengths when each wave's
    prompts fit the prefill budget; cannot model arrivals (``arrival_rate`` is ignored)."""
    w, hw = scenario.workload, scenario.hardware
    if not isinstance(w, InferenceWorkload):
        raise ValueError("estimate_run models inference workloads")
    prompt, output = _mean_len(w.prompt_len), _mean_len(w.output_len)
    per_device = int(np.ceil(w.num_sequences / hw.devices_total))
    total = ttft = 0.0
    left = per_device
    while left > 0:
        b = min(left, w.max_num_seqs)
        steps = int(np.ceil(b * prompt / w.max_batched_tokens))
        pre = estimate_step(scenario, efficiency, base_dir, batch_size=0.0, context_len=0.0,
                            prefill_tokens=b * prompt / steps, prefill_seqs=b / steps)
        pre_s = float(pre.step_s) * steps
        dec = estimate_step(scenario, efficiency, base_dir, batch_size=float(b),
                            context_len=prompt + (output - 2) / 2.0)
        if total == 0.0:
            ttft = pre_s
        total += pre_s + float(dec.step_s) * max(output - 1, 0)
        left -= b
    out_tokens = w.num_sequences * output
    return {"duration_s": total, "throughput_output_tokens_per_s": out_tokens / total,
            "ttft_s": ttft, "mean_decode_step_s": float(dec.step_s)}


# ----------------------------------------------------------------------------- helpers


def compute_bound(cost: CostModel, shape: BatchShape, model) -> np.ndarray:
    """``compute`` or ``hbm``: whichever roofline term dominates the attention + FFN work."""
    work = cost.attention(shape) + cost.ffn(model.n_layers - 1, shape)
    flops_s = work.flops / (cost.peak_flops * cost.eff.matmul(work.flops, work.bytes))
    bytes_s = work.bytes / (cost.hbm_bandwidth * cost.eff.memory(work.bytes))
    return np.where(flops_s >= bytes_s, "compute", "hbm")


def _result(step, compute, exposed, fetch, tokens, hw, bound, per_layer, window=None) -> AnalyticResult:
    shape = np.shape(step)
    throughput = np.asarray(tokens, float) * hw.device.count * hw.nodes / np.asarray(step)
    return AnalyticResult(
        step_s=np.asarray(step, float), compute_s=np.broadcast_to(compute, shape).astype(float),
        exposed_s=np.asarray(exposed, float), fetch_s=np.asarray(fetch, float),
        window_s=np.zeros(shape) if window is None else np.asarray(window, float),
        tokens_per_step=np.broadcast_to(tokens, shape).astype(float),
        throughput_tokens_per_s=throughput, bound=np.broadcast_to(bound, shape), per_layer=per_layer)


def _traffic(scenario: Scenario, model, rows_total, base_dir):
    r = model.engram.rows_per_token
    if scenario.ngram_stats is None:
        return ZipfTraffic(rows_per_head=np.asarray(rows_total, float) / r, rows_per_token=r)
    return traffic_model(r, float(np.max(rows_total)), scenario.ngram_stats, base_dir)


def _disk_time(cost: CostModel, traffic, rows, placement, layer, row_bytes, devices) -> Number:
    if placement.tier_of(layer) != "disk":
        return 0.0
    f, fh = placement.cache_fraction, placement.host_cache_fraction
    hit_dev, hit_both = traffic.hit_rate(f), traffic.hit_rate(np.minimum(1.0, np.asarray(f) + fh))
    in_dram = np.where(hit_dev < 1, (hit_both - hit_dev) / np.maximum(1 - hit_dev, 1e-300), 1.0)
    pages = cost.nvme_pages(rows * (1 - in_dram), row_bytes)
    return np.where(pages > 0, cost.hardware.nvme.read_latency + pages * devices / cost.nvme_page_rate(), 0.0)


def _default_decode(scenario: Scenario) -> tuple[float, float]:
    w, hw = scenario.workload, scenario.hardware
    if isinstance(w, InferenceWorkload):
        per_device = int(np.ceil(w.num_sequences / hw.devices_total))
        return float(min(w.max_num_seqs, per_device)), _mean_len(w.prompt_len) + _mean_len(w.output_len) / 2
    return float(w.batch_size), float(w.seq_len)


def _mean_len(dist) -> float:
    if dist.kind == "fixed":
        return float(dist.value)
    if dist.kind == "uniform":
        return (dist.low + dist.high) / 2
    return float(np.clip(dist.median * np.exp(dist.sigma**2 / 2), dist.min, dist.max))


def _count(model, moe: bool) -> int:
    return sum(model.is_moe_layer(i) == moe for i in range(model.n_layers))


def _first(model, moe: bool) -> int:
    return next(i for i in range(model.n_layers) if model.is_moe_layer(i) == moe)


def _dense_before(model, layer_pos):
    """Dense-FFN blocks before block ``layer_pos`` (dense blocks lead, then MoE)."""
    lead = model.ffn.moe.n_leading_dense_layers if model.ffn.moe else model.n_layers
    return np.minimum(layer_pos, lead)
