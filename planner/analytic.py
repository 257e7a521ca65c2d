"""Closed-form per-step and per-run estimates, vectorised over many configurations (sweeps, the
planner's screen, the dashboard's instant numbers).

The estimate is the simulator without queueing, built on the same stage definitions
(:mod:`planner.stages`): one engine step of one device is

    compute   = embed + sum over blocks (engram + attention + FFN) + head      (cost model)
    overhead  = the engine's own per-step seconds (+ the hash, on the engine thread, without
                prefetch; + the worker's whole work when it shares the compute cores)
    ready_j   = when layer j's rows are usable: the hash, then FIFO pipelines
                (NVMe read) -> host lookup (overhead + gather) -> copy, from the step start
    reach_j   = overhead + compute before layer j's Engram op + stalls of earlier layers
    exposed_j = max(0, ready_j - reach_j) (+ a pageable copy, on the stream)   with prefetch
              = the whole lookup, stage after stage                            without
    step      = overhead + compute + sum_j exposed_j (+ device-tier waits for the hash)

A run's waves decode at the mean output length, except the last batch, which drains (it
decodes until its longest output is done, shrinking as sequences finish): it is priced along
the expected batch of that drain. A training workload's step is a bottleneck model of :mod:`planner.sim.training` instead
(forward + backward on the stream, lookups a step ahead, row-gradient updates behind it: the
busiest of compute, worker pool and copy engines; :func:`_training_step`).

Every input may be a numpy array; they broadcast together (see :func:`estimate_step`), so one
call evaluates tens of thousands of configurations. :func:`estimate_run_arrays` turns steps into
whole offline runs (waves of ``max_num_seqs``) for arrays of engine settings, the planner's
screen; :func:`estimate_run` is its one-configuration form. Tests hold the estimate to the
simulator within 2% in steady regimes (tests/test_analytic.py).

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
from planner.costmodel import BatchShape, CostModel, Number
from planner.efficiency import Efficiency
from planner.ngram_model import ZipfTraffic, traffic_model
from planner.parallel import engine_view
from planner.specs import InferenceWorkload, Scenario, TrainingWorkload
from planner.stages import host_placement, layer_fetch

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
    """Arrays of one estimate per configuration (seconds; tokens/s per node). ``compute_s``:
    the ops; ``host_s``: the engine's own per-step seconds, its hash, and the worker's work when
    it holds the compute cores; ``exposed_s``: stalls waiting for offloaded layers' rows."""

    step_s: np.ndarray
    compute_s: np.ndarray
    exposed_s: np.ndarray
    fetch_s: np.ndarray
    window_s: np.ndarray
    tokens_per_step: np.ndarray
    throughput_tokens_per_s: np.ndarray
    bound: np.ndarray
    host_s: np.ndarray = None
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
    scenario = engine_view(scenario)  # a tensor-parallel group as one engine (planner.parallel)
    if isinstance(scenario.workload, TrainingWorkload):
        return _training_step(scenario, efficiency, base_dir, overrides)
    model, hw, placement = scenario.model, scenario.hardware, scenario.placement
    batch, context = _default_decode(scenario)
    arrays, cost = _inputs(scenario, efficiency, {"batch_size": batch, "context_len": context,
                                                  "prefill_tokens": 0.0, "prefill_seqs": 1.0}, overrides)
    if "layer_id" in overrides:
        if model.engram is None or len(model.engram_layer_ids) != 1:
            raise ValueError("layer_id can be swept only for a model with exactly one Engram layer")
        arrays["layer_id"] = np.broadcast_to(np.asarray(overrides["layer_id"], float), arrays["batch_size"].shape)
        if np.any((arrays["layer_id"] < 0) | (arrays["layer_id"] >= model.n_layers)):
            raise ValueError(f"layer_id must lie in [0, {model.n_layers - 1}]")

    b, c, pf = arrays["batch_size"], arrays["context_len"], arrays["prefill_tokens"]
    ps = np.where(pf > 0, np.maximum(arrays["prefill_seqs"], 1.0), 0.0)
    chunk = pf / np.maximum(ps, 1.0)
    shape = BatchShape.decode(b, c) + BatchShape(tokens=pf, seqs=ps, attn_pairs=ps * chunk * (chunk + 1) / 2,
                                                 kv_read=0.0 * pf)
    tokens = b + pf
    ops = _op_seconds(cost, model, shape)
    graph = _graph_steps(scenario, b, pf)
    if np.any(graph):  # decode-only steps within the engine's CUDA-graph batch replay a graph
        replayed = _op_seconds(cost.graphed(), model, shape)
        ops = {k: np.where(graph, replayed[k], v) for k, v in ops.items()}
    compute = _forward_s(model, placement, ops)
    overhead = cost.step_overhead(shape) + 0.0 * compute
    zero = np.zeros(np.shape(b))
    if not model.engram_layer_ids:
        return _result(overhead + compute, compute, zero, zero, tokens, hw, compute_bound(cost, shape, model), {},
                       host=overhead)
    pf_on = arrays["prefetch"] > 0
    on = _fetch_pipeline(scenario, cost, ops, tokens, arrays, overhead, True, base_dir)
    off = _fetch_pipeline(scenario, cost, ops, tokens, arrays, overhead, False, base_dir)
    pick = {k: np.where(pf_on, on[k], off[k]) for k in ("exposed", "stall", "host", "fetch", "window", "bound")}
    per_layer = {layer: {k: np.where(pf_on, on["per_layer"][layer][k], off["per_layer"][layer][k])
                         for k in on["per_layer"][layer]} for layer in on["per_layer"]}
    bound = np.where(pick["exposed"] > 0, pick["bound"], compute_bound(cost, shape, model))
    step = compute + pick["host"] + pick["exposed"] + pick["stall"]
    return _result(step, compute, pick["exposed"], pick["fetch"], tokens, hw, bound, per_layer, pick["window"],
                   host=pick["host"])


def _inputs(scenario: Scenario, efficiency, defaults: dict, overrides: dict) -> tuple[dict, CostModel]:
    """The step's inputs as broadcast float arrays (``defaults`` of the step kind, then the
    placement's and hardware's, then ``overrides``) and the cost model at their rates."""
    model, hw, placement = scenario.model, scenario.hardware, scenario.placement
    o = {**defaults, "cache_fraction": placement.cache_fraction, "flops_scale": 1.0,
         "prefetch": float(placement.prefetch), "h2d_bandwidth": hw.link.h2d_bandwidth,
         "host_memory_bandwidth": hw.host.memory_bandwidth, **overrides}
    arrays = dict(zip(o, np.broadcast_arrays(*[np.asarray(v, dtype=float) for v in o.values()])))
    cost = CostModel(model, hw, efficiency).with_rates(
        peak_flops=hw.device.flops_for(model.dtype) * arrays["flops_scale"],
        h2d_bandwidth=arrays["h2d_bandwidth"], host_memory_bandwidth=arrays["host_memory_bandwidth"])
    return arrays, cost


def _lookups(scenario: Scenario, cost: CostModel, placement, host, tokens, arrays: dict, base_dir) -> dict:
    """``{layer: (LayerFetch, table bytes)}`` of each offloaded layer's lookup for a step of
    ``tokens`` tokens (a ``table_rows`` sweep sizes every table alike; DRAM and NVMe split
    statically over the node's fetching devices)."""
    model, hw = scenario.model, scenario.hardware
    devices = 1 if hw.device.kind == "cpu" else hw.device.count
    out = {}
    for layer in (l for l in model.engram_layer_ids if placement.tier_of(l) != "device"):
        rows_total = arrays["table_rows"] if "table_rows" in arrays else engram_table_rows(model)[layer]
        table_bytes = rows_total * engram_row_bytes(model) if "table_rows" in arrays else None
        lf = layer_fetch(cost, placement, _traffic(scenario, model, rows_total, base_dir), layer, tokens, host,
                         arrays["cache_fraction"], devices, table_bytes)
        out[layer] = (lf, cost.table_bytes(layer) if table_bytes is None else table_bytes)
    return out


def _forward_s(model, placement, ops: dict) -> Number:
    """Seconds of one forward pass's ops (embed, blocks, head; device-tier in-layer gathers)."""
    device_tier = [l for l in model.engram_layer_ids if placement.tier_of(l) == "device"]
    return (ops["embed"] + ops["head"] + model.n_layers * ops["attn"] + _count(model, False) * ops["dense"]
            + _count(model, True) * ops["moe"] + len(model.engram_layer_ids) * ops["engram"]
            + len(device_tier) * ops["gather"])


TRAINING_OVERRIDES = ("batch_size", "context_len", "cache_fraction", "table_rows", "h2d_bandwidth",
                      "host_memory_bandwidth", "flops_scale", "prefetch")


def _training_step(scenario: Scenario, efficiency, base_dir, overrides: dict) -> AnalyticResult:
    """One steady training step (:mod:`planner.sim.training`) as a bottleneck model.

    The compute stream runs the forward over ``batch_size x seq_len`` tokens (``batch_size``
    and ``context_len`` override them) and the backward at 2x its work (3x with activation
    checkpointing). Each offloaded layer's lookups go through the worker pool (hash, gather) and
    the h2d copy engine, its row gradients through the d2h engine and the pool (sparse
    optimiser). With prefetch the next batch's rows are fetched a whole step ahead and the
    updates may finish during the next step, so a steady step lasts as long as its busiest
    actor: ``max(compute, pool, h2d engine, d2h engine)`` (one engine for both directions when
    ``copy_engines`` is 1). Without prefetch the hash (engine thread) and each lookup, stage
    after stage, are on the compute path. Cannot see: the first step's fetch and the last step's
    drain (the simulator's mean includes them), FIFO interleaving on the pool."""
    bad = sorted(set(overrides) - set(TRAINING_OVERRIDES))
    if bad:
        raise ValueError(f"override(s) {bad} do not apply to a training workload; "
                         f"it takes {list(TRAINING_OVERRIDES)}")
    model, hw, placement, w = scenario.model, scenario.hardware, scenario.placement, scenario.workload
    a, cost = _inputs(scenario, efficiency, {"batch_size": float(w.batch_size), "context_len": float(w.seq_len)},
                      overrides)
    B, S = a["batch_size"], a["context_len"]
    tokens = B * S
    # Causal attention over whole sequences; the loss needs logits at every position.
    shape = BatchShape(tokens=tokens, seqs=tokens, attn_pairs=tokens * (S + 1) / 2, kv_read=0.0 * tokens)
    factor = 3.0 if w.activation_checkpointing else 2.0
    forward = _forward_s(model, placement, _op_seconds(cost, model, shape))
    compute = forward * (1.0 + factor)
    zero = np.zeros(np.shape(tokens))
    offloaded = [l for l in model.engram_layer_ids if placement.tier_of(l) != "device"]
    if model.engram is None or not offloaded:
        hashing = cost.hash(tokens, host_placement(cost, placement).hash_cores) + zero if model.engram else zero
        on_thread = np.where(a["prefetch"] > 0, 0.0, hashing)
        return _result(compute + on_thread, compute, zero, zero, tokens, hw, compute_bound(cost, shape, model), {},
                       host=on_thread)
    devices = 1 if hw.device.kind == "cpu" else hw.device.count
    pf_on = a["prefetch"] > 0
    steps = {}
    for prefetch in (True, False):
        p = placement.model_copy(update={"prefetch": prefetch})
        host = host_placement(cost, p)
        hashing = cost.hash(tokens, host.hash_cores) + zero
        pool, disk, h2d, d2h, on_demand, per_layer = zero.copy(), zero.copy(), zero.copy(), zero.copy(), zero.copy(), {}
        stages = {"host_gather": zero.copy(), "link": zero.copy(), "disk": zero.copy()}  # of the on-demand lookups
        for layer, (lf, table) in _lookups(scenario, cost, p, host, tokens, a, base_dir).items():
            grads = lf.rows * cost.row_bytes
            write = 0.0 * grads if hw.device.kind == "cpu" or hw.unified else cost.transfer(grads, "d2h", "pinned")
            optim = cost.optimizer_bytes(lf.rows, w.table_optimizer) / np.minimum(
                cost.gather_rate(host.cores, table), cost.host_dram_rate() / devices)
            pool, disk = pool + lf.host_s + optim, disk + lf.disk_s
            h2d, d2h = h2d + lf.copy_s, d2h + write
            on_demand = on_demand + lf.alone_s
            for key, part in (("host_gather", lf.host_s), ("link", lf.copy_s), ("disk", lf.disk_s)):
                stages[key] = stages[key] + part
            per_layer[layer] = {"rows": lf.rows, "bytes": lf.bytes, "fetch_s": lf.alone_s, "window_s": zero,
                                "exposed_s": zero}
        engines = [h2d + d2h] if hw.device.copy_engines == 1 else [h2d, d2h]
        if prefetch:  # the worker pool also hashes the next batch
            path = compute + 0.0 * hashing
            pool = pool + hashing
        else:  # hash on the engine thread, each lookup on demand at its layer, stage after stage
            path = compute + hashing + on_demand
        actors = {"compute": path, "host_gather": pool, "link": np.maximum.reduce(engines), "disk": disk}
        step = np.maximum.reduce(list(actors.values()))
        names = np.array(list(actors))
        busiest = names[np.argmax(np.stack(list(actors.values())), axis=0)]
        if not prefetch:  # the compute path holds the lookups: name their slowest stage
            stage_names = np.array(list(stages))
            slowest = stage_names[np.argmax(np.stack(list(stages.values())), axis=0)]
            busiest = np.where((busiest == "compute") & (on_demand > 0), slowest, busiest)
        stall = step - path
        first = offloaded[0]
        per_layer[first]["exposed_s"] = stall + (0.0 if prefetch else on_demand)
        if prefetch:
            for layer in offloaded:
                per_layer[layer]["window_s"] = step + zero  # fetched a whole step ahead
        steps[prefetch] = {"step": step, "exposed": stall + (0.0 if prefetch else on_demand),
                           "host": 0.0 * hashing if prefetch else hashing, "fetch": on_demand,
                           "bound": np.where(busiest == "compute", compute_bound(cost, shape, model), busiest),
                           "per_layer": per_layer}
    pick = {k: np.where(pf_on, steps[True][k], steps[False][k]) for k in ("step", "exposed", "host", "fetch", "bound")}
    per_layer = {layer: {k: np.where(pf_on, steps[True]["per_layer"][layer][k], steps[False]["per_layer"][layer][k])
                         for k in steps[True]["per_layer"][layer]} for layer in offloaded}
    window = per_layer[offloaded[0]]["window_s"]
    return _result(pick["step"], compute, pick["exposed"], pick["fetch"], tokens, hw, pick["bound"], per_layer,
                   window, host=pick["host"])


def _graph_steps(scenario: Scenario, batch, prefill) -> np.ndarray:
    """Which configurations are decode-only steps the engine replays as a CUDA graph
    (:attr:`planner.specs.InferenceWorkload.graph_max_batch`; the simulator decides alike)."""
    w = scenario.workload
    limit = w.graph_max_batch if isinstance(w, InferenceWorkload) and scenario.hardware.device.kind == "cuda" else 0
    return (np.asarray(prefill) == 0) & (np.asarray(batch) <= limit) & (np.asarray(batch) > 0)


def _op_seconds(cost: CostModel, model, shape: BatchShape) -> dict[str, Number]:
    """Seconds of each op kind of one block (one dense and one MoE FFN serve every such block)."""
    return {"attn": cost.seconds(cost.attention(shape)),
            "dense": cost.seconds(cost.ffn(_first(model, moe=False), shape)) if _count(model, moe=False) else 0.0,
            "moe": cost.seconds(cost.ffn(_first(model, moe=True), shape)) if _count(model, moe=True) else 0.0,
            "embed": cost.seconds(cost.embed(shape)), "head": cost.seconds(cost.head(shape)),
            "engram": cost.seconds(cost.engram(shape)) if model.engram else 0.0,
            "gather": cost.seconds(cost.device_gather(shape)) if model.engram else 0.0}


def _fetch_pipeline(scenario: Scenario, cost: CostModel, ops: dict, tokens, arrays: dict, overhead,
                    prefetch: bool, base_dir) -> dict:
    """Exposed, stall and host seconds of the Engram lookups of one step with prefetch on or off
    (see the module docstring and :mod:`planner.stages`)."""
    model = scenario.model
    placement = scenario.placement.model_copy(update={"prefetch": prefetch})
    host = host_placement(cost, placement)
    zero = np.zeros(np.shape(tokens))
    hashing = cost.hash(tokens, host.hash_cores) + zero
    fetches = {layer: lf for layer, (lf, _) in _lookups(scenario, cost, placement, host, tokens, arrays,
                                                         base_dir).items()}
    exposed_total, stall_total, per_layer = zero.copy(), zero.copy(), {}
    fetch_last, window_last = zero.copy(), zero.copy()
    stage_max = {k: zero.copy() for k in ("cpu", "host_gather", "link", "disk")}
    if not host.prefetch:  # on demand: hash on the engine thread, each lookup at its layer
        for layer, lf in fetches.items():
            exposed_total = exposed_total + lf.alone_s
            for key, part in (("host_gather", lf.host_s), ("link", lf.copy_s), ("disk", lf.disk_s)):
                stage_max[key] = np.maximum(stage_max[key], part)
            per_layer[layer] = {"rows": lf.rows, "bytes": lf.bytes, "fetch_s": lf.alone_s, "window_s": zero,
                                "exposed_s": lf.alone_s}
            fetch_last = lf.alone_s
        return _pipeline_out(exposed_total, stall_total, overhead + hashing, fetch_last, window_last, stage_max,
                             per_layer)
    if host.shared:  # the worker holds the compute cores: its work delays compute, hides nothing
        work = hashing + sum((lf.host_s + lf.disk_s for lf in fetches.values()), zero)
        for layer, lf in fetches.items():
            per_layer[layer] = {"rows": lf.rows, "bytes": lf.bytes, "fetch_s": lf.alone_s, "window_s": zero,
                                "exposed_s": zero}
        return _pipeline_out(zero, zero, overhead + work, fetch_last, window_last, stage_max, per_layer)
    # The lookups launch when the engine's own step work is done (planner.sim.inference): every
    # pipeline starts then, after the step's hash; fetch and window are measured from the launch.
    launch = overhead
    gather_end = copy_end = disk_end = launch + hashing
    for j, layer in enumerate(model.engram_layer_ids):
        layer_pos = arrays.get("layer_id", float(layer))
        device_before = sum(l not in fetches for l in model.engram_layer_ids[:j])
        reach = (overhead + ops["embed"] + layer_pos * ops["attn"] + _dense_before(model, layer_pos) * ops["dense"]
                 + (layer_pos - _dense_before(model, layer_pos)) * ops["moe"] + j * ops["engram"]
                 + device_before * ops["gather"] + exposed_total + stall_total)
        if layer not in fetches:  # device tier: its in-layer gather needs the worker's ids
            stall_total = stall_total + np.maximum(0.0, launch + hashing - reach)
            continue
        lf = fetches[layer]
        sync_copy = lf.copy_s if lf.copy_mode == "pageable" else zero
        disk_end = disk_end + lf.disk_s
        gather_end = np.maximum(gather_end, disk_end) + lf.host_s
        copy_end = np.maximum(copy_end, gather_end) + (lf.copy_s - sync_copy)
        exposed = np.maximum(0.0, copy_end - reach) + sync_copy
        exposed_total = exposed_total + exposed
        for key, part in (("cpu", hashing), ("host_gather", lf.host_s), ("link", lf.copy_s), ("disk", lf.disk_s)):
            stage_max[key] = np.maximum(stage_max[key], np.where(exposed > 0, part, 0.0))
        fetch_last, window_last = copy_end + sync_copy - launch, reach - launch
        per_layer[layer] = {"rows": lf.rows, "bytes": lf.bytes, "fetch_s": fetch_last, "window_s": window_last,
                            "exposed_s": exposed}
    return _pipeline_out(exposed_total, stall_total, overhead, fetch_last, window_last, stage_max, per_layer)


def _pipeline_out(exposed, stall, host, fetch, window, stage_max, per_layer) -> dict:
    names = np.array(list(stage_max))
    bound = names[np.argmax(np.stack([stage_max[k] for k in names]), axis=0)]
    return {"exposed": exposed, "stall": stall, "host": host, "fetch": fetch, "window": window, "bound": bound,
            "per_layer": per_layer}


@dataclass(frozen=True)
class RunEstimate:
    """Whole runs, one per configuration (arrays): every request at t = 0, per device waves of
    ``max_num_seqs`` sequences, each a prefill in ``max_batched_tokens`` chunks then
    ``output - 1`` decode steps at the wave's mean context; with Poisson arrivals the run lasts
    at least until the last request has arrived and been served alone, and an arrival-bound run
    (arrivals slower than the engine) prices TTFT as a request's own prefill and every decode
    step at ``running_seqs``, the concurrency the arrivals sustain (Little's law). TTFT/TPOT
    quantiles are a screen, not a prediction: queueing under arrivals is invisible here (the
    simulator sees it)."""

    duration_s: np.ndarray
    throughput_output_tokens_per_s: np.ndarray
    ttft_s: np.ndarray
    decode_step_s: np.ndarray
    exposed_decode_s: np.ndarray
    stall_fraction: np.ndarray
    first_layer_exposed_s: np.ndarray
    bound: np.ndarray
    ttft_quantiles_s: dict[int, np.ndarray]
    tpot_quantiles_s: dict[int, np.ndarray]
    running_seqs: np.ndarray  # sequences decoding at once per device (the batch, or what arrivals sustain)

    def as_dict(self) -> dict:
        """JSON-able: arrays as lists (scalars as numbers), quantiles keyed ``p50`` ..."""
        def plain(v):
            a = np.asarray(v)
            return a.item() if a.ndim == 0 else a.tolist()
        return {k: ({f"p{q}": plain(a) for q, a in v.items()} if isinstance(v, dict) else plain(v))
                for k, v in self.__dict__.items()}

    def item(self) -> "RunEstimate":
        """The same estimate with scalar (0-d) fields: one configuration."""
        return RunEstimate(**{k: (np.asarray(v).reshape(-1)[0].item() if not isinstance(v, dict)
                                  else {q: float(np.asarray(a).reshape(-1)[0]) for q, a in v.items()})
                              for k, v in self.__dict__.items()})


def estimate_run_arrays(scenario: Scenario, max_num_seqs=None, max_batched_tokens=None,
                        efficiency: Efficiency | None = None, base_dir=None, **overrides) -> RunEstimate:
    """:class:`RunEstimate` of ``scenario`` (an inference workload) for arrays of
    ``max_num_seqs`` and ``max_batched_tokens`` (default: the workload's), and any step
    :data:`OVERRIDES` (e.g. ``cache_fraction``, ``prefetch``)."""
    scenario = engine_view(scenario)
    w, hw = scenario.workload, scenario.hardware
    if not isinstance(w, InferenceWorkload):
        raise ValueError("estimate_run models inference workloads")
    max_num_seqs = w.max_num_seqs if max_num_seqs is None else max_num_seqs
    max_batched_tokens = w.max_batched_tokens if max_batched_tokens is None else max_batched_tokens
    prompt, output = _mean_len(w.prompt_len), _mean_len(w.output_len)
    n = int(np.ceil(w.num_sequences / hw.devices_total))
    b = np.minimum(np.asarray(max_num_seqs, float), n)
    mbt = np.asarray(max_batched_tokens, float)
    full = np.floor(n / b)
    rem = n - full * b
    decode_steps = max(output - 1, 0)

    def wave(batch):
        steps = np.ceil(batch * prompt / mbt)
        pre = estimate_step(scenario, efficiency, base_dir, batch_size=0.0, context_len=0.0,
                            prefill_tokens=batch * prompt / steps, prefill_seqs=batch / steps, **overrides)
        dec = estimate_step(scenario, efficiency, base_dir, batch_size=batch, context_len=prompt + (output - 2) / 2.0,
                            **overrides)
        return pre.step_s * steps, dec

    pre_f, dec_f = wave(b)
    pre_r, dec_r = wave(np.where(rem > 0, rem, 1.0))
    wave_f = pre_f + dec_f.step_s * decode_steps
    total = full * wave_f + (rem > 0) * (pre_r + dec_r.step_s * decode_steps)
    # The drain. While requests wait, a finished sequence's slot is refilled at once (continuous
    # batching), so a full batch decodes at the mean output length; the last batch is not
    # refilled: it runs until its longest output is done, shrinking as its sequences finish.
    # Its decode is the sum over steps k of the step at the expected batch L x P(output > k),
    # up to the expected longest of its L outputs, by the midpoint rule on DRAIN_POINTS steps
    # (equal to the mean-length waves above for fixed lengths).
    last = np.where(rem > 0, rem, b)
    longest = _expected_max_len(w.output_len, last)
    if np.any(longest > output):
        u = (np.arange(DRAIN_POINTS) + 0.5) / DRAIN_POINTS
        k = 1.0 + u.reshape((-1,) + (1,) * np.ndim(last)) * np.maximum(longest - 1.0, 0.0)
        running = np.maximum(last * _survival(w.output_len, k), 1.0)
        at = estimate_step(scenario, efficiency, base_dir, batch_size=running,
                           context_len=prompt + (output - 2) / 2.0, **overrides).step_s
        drain = np.maximum(longest - 1.0, 0.0) * at.mean(axis=0)
        counted = np.where(rem > 0, dec_r.step_s, dec_f.step_s) * decode_steps
        total = total + np.maximum(drain - counted, 0.0)
    arrival_bound = np.zeros(np.shape(total), bool)
    if w.arrival_rate is not None:
        # Poisson arrivals: the last of the run's requests arrives about (n - 1) / rate after the
        # first, and the run cannot end before it is served (at best alone): an arrival-bound
        # run's throughput is the offered load, whatever the engine could do.
        pre_1, dec_1 = wave(np.ones_like(b))
        offered = (w.num_sequences - 1) / w.arrival_rate + pre_1 + dec_1.step_s * decode_steps
        arrival_bound = offered > total
        total = np.maximum(total, offered)
        # Such a run decodes far below its batch limit: by Little's law a device holds
        # L = (its arrival rate) x (a request's time in the engine) sequences, and a request's
        # time is its prefill plus its decode steps at that L (a few fixed-point rounds).
        per_device_rate = w.arrival_rate / hw.devices_total
        running = np.ones_like(b)
        for _ in range(ARRIVAL_ROUNDS):
            at = estimate_step(scenario, efficiency, base_dir, batch_size=running,
                               context_len=prompt + (output - 2) / 2.0, **overrides)
            running = np.clip(per_device_rate * (pre_1 + at.step_s * decode_steps), 1.0, b)
        dec_a = estimate_step(scenario, efficiency, base_dir, batch_size=running,
                              context_len=prompt + (output - 2) / 2.0, **overrides)
    waves = full + (rem > 0)
    # With chunked prefill a request whose prompt finishes early decodes through the wave's
    # remaining prefill chunks; the request at quantile q sees about q of them.
    chunks = np.ceil(b * prompt / mbt)
    chunk_s = pre_f / chunks
    ttft, tpot = {}, {}
    for q in (50, 90, 99):
        k = np.minimum(np.floor(q / 100 * (n - 1) / b), waves - 1)
        within = np.clip(q / 100 * n / b - k, 0.0, 1.0)  # position inside its wave
        ttft[q] = k * wave_f + chunk_s * np.maximum(1.0, np.ceil(within * chunks))
        seen = np.minimum(np.floor(q / 100 * (chunks - 1)), decode_steps)
        tpot[q] = (seen * np.maximum(chunk_s, dec_f.step_s) + (decode_steps - seen) * dec_f.step_s) \
            / max(decode_steps, 1)
    ttft_s, dec = pre_f, dec_f
    if np.any(arrival_bound):
        # No queue and no wave: a request's first token is its own prefill, and every decode
        # step runs at the concurrency the arrivals sustain.
        ttft_s = np.where(arrival_bound, pre_1, pre_f)
        for q in ttft:
            ttft[q] = np.where(arrival_bound, pre_1, ttft[q])
            tpot[q] = np.where(arrival_bound, dec_a.step_s, tpot[q])
        dec = dec_a if np.all(arrival_bound) else dec_f
    first = min(scenario.model.engram_layer_ids, default=None)
    first_exposed = dec.per_layer[first]["exposed_s"] if first in dec.per_layer else np.zeros_like(total)
    decode_s = np.where(arrival_bound, dec_a.step_s, dec_f.step_s) if np.any(arrival_bound) else dec_f.step_s
    return RunEstimate(duration_s=total, throughput_output_tokens_per_s=w.num_sequences * output / total,
                       ttft_s=ttft_s, decode_step_s=decode_s, exposed_decode_s=dec.exposed_s,
                       stall_fraction=dec.exposed_s / dec.step_s, first_layer_exposed_s=first_exposed,
                       bound=np.asarray(dec.bound).astype(str), ttft_quantiles_s=ttft, tpot_quantiles_s=tpot,
                       running_seqs=np.where(arrival_bound, running, b) if np.any(arrival_bound) else b)


def estimate_run(scenario: Scenario, efficiency: Efficiency | None = None, base_dir=None) -> RunEstimate:
    """Whole run of ``scenario`` as the workload sets it (one configuration; see
    :class:`RunEstimate`). Exact for fixed lengths when each wave's prompts fit the prefill
    budget; arrivals only bound the run's length from below (no queueing)."""
    return estimate_run_arrays(scenario, efficiency=efficiency, base_dir=base_dir).item()


# ----------------------------------------------------------------------------- helpers


def compute_bound(cost: CostModel, shape: BatchShape, model) -> np.ndarray:
    """``compute`` or ``hbm``: whichever roofline term dominates the attention + FFN work."""
    attn = cost.eff.op_terms(cost.attention(shape), cost.peak_flops, cost.hbm_bandwidth, cost.launch_s)
    ffn = cost.eff.op_terms(cost.ffn(model.n_layers - 1, shape), cost.peak_flops, cost.hbm_bandwidth, cost.launch_s)
    return np.where(attn.compute_s + ffn.compute_s >= attn.memory_s + ffn.memory_s, "compute", "hbm")


def _result(step, compute, exposed, fetch, tokens, hw, bound, per_layer, window=None, host=0.0) -> AnalyticResult:
    shape = np.shape(step)
    throughput = np.asarray(tokens, float) * hw.device.count * hw.nodes / np.asarray(step)
    return AnalyticResult(
        step_s=np.asarray(step, float), compute_s=np.broadcast_to(compute, shape).astype(float),
        exposed_s=np.broadcast_to(exposed, shape).astype(float), fetch_s=np.broadcast_to(fetch, shape).astype(float),
        window_s=np.zeros(shape) if window is None else np.broadcast_to(window, shape).astype(float),
        tokens_per_step=np.broadcast_to(tokens, shape).astype(float),
        throughput_tokens_per_s=throughput, bound=np.broadcast_to(bound, shape),
        host_s=np.broadcast_to(host, shape).astype(float), per_layer=per_layer)


def _traffic(scenario: Scenario, model, rows_total, base_dir):
    r = model.engram.rows_per_token
    if scenario.ngram_stats is None:
        return ZipfTraffic(rows_per_head=np.asarray(rows_total, float) / r, rows_per_token=r)
    return traffic_model(r, float(np.max(rows_total)), scenario.ngram_stats, base_dir)


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


DRAIN_POINTS = 8  # decode steps priced along the last batch's drain
ARRIVAL_ROUNDS = 6  # fixed-point rounds of Little's law for an arrival-bound run's concurrency


def _survival(dist, k) -> np.ndarray:
    """P(length > k) of a length distribution (``k`` an array)."""
    k = np.asarray(k, float)
    if dist.kind == "fixed":
        return (k < dist.value).astype(float)
    if dist.kind == "uniform":
        return np.clip((dist.high - np.floor(k)) / (dist.high - dist.low + 1.0), 0.0, 1.0)
    from scipy.special import ndtr

    z = (np.log(np.maximum(k, 1e-300)) - np.log(dist.median)) / max(dist.sigma, 1e-12)
    return np.where(k < dist.min, 1.0, np.where(k >= dist.max, 0.0, 1.0 - ndtr(z)))


def _expected_max_len(dist, k) -> np.ndarray:
    """About the expected longest of ``k`` independent draws of ``dist``: its quantile at
    ``k / (k + 1)`` (exact in the mean for a continuous uniform)."""
    k = np.asarray(k, float)
    q = k / (k + 1.0)
    if dist.kind == "fixed":
        return np.full(np.shape(k), float(dist.value))
    if dist.kind == "uniform":
        return dist.low + (dist.high - dist.low) * q
    from scipy.special import ndtri

    return np.clip(dist.median * np.exp(dist.sigma * ndtri(q)), dist.min, dist.max)


def _count(model, moe: bool) -> int:
    return sum(model.is_moe_layer(i) == moe for i in range(model.n_layers))


def _first(model, moe: bool) -> int:
    return next(i for i in range(model.n_layers) if model.is_moe_layer(i) == moe)


def _dense_before(model, layer_pos):
    """Dense-FFN blocks before block ``layer_pos`` (dense blocks lead, then MoE)."""
    lead = model.ffn.moe.n_leading_dense_layers if model.ffn.moe else model.n_layers
    return np.minimum(layer_pos, lead)
