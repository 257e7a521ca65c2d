"""What a simulation reports: a small value type, defined in docs/metrics.md.

Validation computes the same metrics from measured runs with the same definitions, so every
field below says exactly what it is. Times in seconds, sizes in bytes, rates per second.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from planner.memory import DeviceMemory
from planner.sim.node import Node, Recorder
from planner.sim.requests import Request
from planner.specs import InferenceWorkload, ModelSpec, Scenario
from planner.trace import Counter, Span
from planner.units import format_bytes

PERCENTILES = (50, 90, 99)

# Which physical resource a fetch stage waits on, for the per-layer "bound" column.
STAGE_BOUND = {"hash": "cpu", "gather": "host_gather", "link": "link", "disk": "disk"}


def percentiles(values: list[float]) -> dict[str, float] | None:
    """p50/p90/p99 with numpy's default linear interpolation; None for no values."""
    if not values:
        return None
    arr = np.asarray(values, dtype=float)
    return {f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}


@dataclass(frozen=True)
class LayerMetrics:
    """One block, averaged per engine step. ``bound``: for an Engram block whose rows arrive
    late (exposed > 0), the fetch stage that took longest (``cpu`` hashing, ``host_gather``,
    ``link``, ``disk``); otherwise the roofline term that dominates the block's compute
    (``compute``, ``hbm``, ``launch``)."""

    layer: int
    attention_s: float
    ffn_s: float
    engram_s: float
    compute_bound: str
    bound: str
    tier: str | None = None
    rows_per_step: float | None = None
    bytes_per_step: float | None = None
    fetch_s: float | None = None
    window_s: float | None = None
    exposed_s: float | None = None
    stage_s: dict[str, float] | None = None
    regime: str | None = None  # where a random row comes from, as the gather rate priced it


@dataclass(frozen=True)
class ServingMetrics:
    """Admission under the paged KV cache, per device (docs/metrics.md): sequences holding
    blocks while a step runs (peak, and the mean weighted by step time), preemptions and the
    KV tokens they dropped (prefilled again later), and the cache's size and use."""

    scheduler: str
    peak_running: int
    mean_running: float
    preemptions: int
    recomputed_tokens: int
    kv_blocks: int
    kv_block_tokens: int
    kv_peak_fraction: float
    kv_mean_fraction: float
    memory: dict
    kv_limited: bool = True
    tensor_parallel: int = 1  # devices per engine: the KV cache above is the group's


@dataclass(frozen=True)
class SimMetrics:
    """The result of one simulated run (see docs/metrics.md for each definition)."""

    scenario: str
    model: str
    hardware: str
    workload: str
    devices: int
    nodes: int
    duration_s: float
    steps: int
    mean_step_time_s: float
    output_tokens: int
    total_tokens: int
    throughput_output_tokens_per_s: float
    throughput_total_tokens_per_s: float
    ttft_s: dict[str, float] | None
    tpot_s: dict[str, float] | None
    exposed_engram_s: dict[int, float]
    exposed_per_step_s: dict[int, float]
    exposed_fraction: float
    utilisation: dict[str, float]
    bytes_moved: dict[str, float]
    bytes_requested: dict[str, float]
    bytes_requested_by_layer: dict[int, float]
    bytes_requested_by_tier: dict[str, float]
    layers: list[LayerMetrics]
    serving: ServingMetrics | None = None
    host_s: float = 0.0  # per step: the engine's own host work (overhead, engine-thread hash, a worker on its cores)
    extrapolated: dict[str, float] = field(default_factory=dict)  # op kind -> how far beyond its fitted shapes
    baseline: dict | None = None
    throughput_drop: float | None = None
    spans: list[Span] = field(default_factory=list, repr=False)
    tensor_parallel: int = 1  # devices per engine (a tensor-parallel group)
    counters: list[Counter] = field(default_factory=list, repr=False)  # traced runs: KV use, pipe loads
    approximations: list[str] = field(default_factory=list)

    def with_baseline(self, base: "SimMetrics") -> "SimMetrics":
        """Attach the no-Engram run: drop = 1 - throughput / baseline throughput (output tokens
        for inference, trained tokens for training)."""
        ours, theirs = self.throughput_output_tokens_per_s, base.throughput_output_tokens_per_s
        summary = {k: getattr(base, k) for k in ("duration_s", "steps", "mean_step_time_s",
                                                 "throughput_output_tokens_per_s",
                                                 "throughput_total_tokens_per_s", "ttft_s", "tpot_s")}
        summary["serving"] = asdict(base.serving) if base.serving is not None else None
        return replace(self, baseline=summary, throughput_drop=1.0 - ours / theirs if theirs > 0 else None)

    def as_dict(self, include_spans: bool = False) -> dict:
        out = asdict(self)
        out.pop("spans")
        out.pop("counters")
        if include_spans:
            out["spans"] = [asdict(s) for s in self.spans]
        return out


def serving_lines(serving: dict, baseline: dict | None = None, label: str = "with Engram") -> list[str]:
    """The KV cache and admission in words (``serving`` and the baseline's as ``as_dict`` gives
    them), for the CLI and the dashboard."""
    where = "per engine (a tensor-parallel group's ranks together)" if serving.get("tensor_parallel", 1) > 1 \
        else "per device"
    out = [f"scheduler {serving['scheduler']}; KV cache {where}: {kv_text(serving['memory'])}"]

    def line(name: str, s: dict) -> str:
        return (f"{name}: peak {s['peak_running']} running sequences (mean {s['mean_running']:.1f}), "
                f"{s['preemptions']} preemptions ({s['recomputed_tokens']:,} tokens recomputed), "
                f"KV use peak {100 * s['kv_peak_fraction']:.0f}% / mean {100 * s['kv_mean_fraction']:.0f}% "
                f"of {s['kv_blocks']:,} blocks")

    out.append(line(label, serving))
    if baseline:
        out.append(line("without Engram", baseline))
    return out


def kv_text(mem: dict) -> str:
    """One device's memory plan (:meth:`planner.memory.DeviceMemory.as_dict`) in words."""
    if not mem.get("limited", True):
        return f"not limited by memory (--ignore-memory: {mem['blocks']:,} blocks of {mem['block_tokens']} tokens)"
    return (f"{format_bytes(mem['kv_bytes'])} = {mem['blocks']:,} blocks of {mem['block_tokens']} tokens "
            f"({mem['kv_tokens']:,} tokens) after weights {format_bytes(mem['weights'])}, Engram on device "
            f"{format_bytes(mem['engram'])}, activations {format_bytes(mem['workspace'])} and runtime "
            f"{format_bytes(mem['runtime'])} of {mem['utilization']:g} x {format_bytes(mem['capacity'])}")


def serving_metrics(scenario: Scenario, rec: Recorder, memory: DeviceMemory) -> ServingMetrics:
    busy = sum(st.dur_s for st in rec.steps)
    peak_blocks = max((st.kv_blocks_used for st in rec.steps), default=0)
    weighted = sum(st.kv_blocks_used * st.dur_s for st in rec.steps) / busy if busy else 0.0
    return ServingMetrics(
        scheduler=scenario.workload.scheduler,
        peak_running=max((st.running for st in rec.steps), default=0),
        mean_running=sum(st.running * st.dur_s for st in rec.steps) / busy if busy else 0.0,
        preemptions=rec.preemptions, recomputed_tokens=rec.recomputed_tokens,
        kv_blocks=memory.blocks, kv_block_tokens=memory.block_tokens,
        kv_peak_fraction=peak_blocks / memory.blocks, kv_mean_fraction=weighted / memory.blocks,
        memory=memory.as_dict(), kv_limited=memory.limited, tensor_parallel=scenario.hardware.device.ranks,
    )


def build_metrics(scenario: Scenario, model: ModelSpec, rec: Recorder, node: Node,
                  requests: list[Request], end_s: float, memory: DeviceMemory | None = None) -> SimMetrics:
    hw, w = scenario.hardware, scenario.workload
    inference = isinstance(w, InferenceWorkload)
    if inference:
        start_s = min((r.arrival_s for r in requests), default=0.0)
        output = sum(r.generated for r in requests)  # tokens produced (each sampled once: tests)
        total = output + sum(r.prompt_len for r in requests)
        ttft = percentiles([r.first_token_s - r.arrival_s for r in requests])
        tpot = percentiles([(r.finish_s - r.first_token_s) / (r.output_len - 1)
                            for r in requests if r.output_len > 1])
    else:
        start_s = 0.0
        output = total = w.batch_size * w.seq_len * w.steps * hw.device.count
        ttft = tpot = None
    duration = max(end_s - start_s, 1e-30)
    steps = len(rec.steps)
    step_time = sum(s.dur_s for s in rec.steps)
    exposed = {l: float(rec.wait_s.get(l, 0.0)) for l in model.engram_layer_ids
               if scenario.placement.tier_of(l) != "device"}
    to_device_requested = sum(rec.bytes_requested.values())
    h2d_moved = sum(link.moved for link in node.h2d_links)
    d2h_moved = sum(link.moved for link in node.d2h_links)
    util = {
        "h2d": float(np.mean([l.utilisation(duration) for l in node.h2d_links])),
        "d2h": float(np.mean([l.utilisation(duration) for l in node.d2h_links])),
        "host_dram": node.dram.utilisation(duration),
    }
    moved = {"h2d": h2d_moved, "d2h": d2h_moved, "host_dram": node.dram.moved,
             "to_device": h2d_moved + rec.in_place_gathered}
    if node.nvme is not None:
        util["nvme"] = node.nvme.utilisation(duration)
        moved["nvme"] = rec.bytes_by_tier.get("nvme_read", 0.0)
    nodes = hw.nodes
    return SimMetrics(
        scenario=scenario.name,
        model=model.name,
        hardware=hw.name,
        workload=w.kind,
        devices=hw.device.count * hw.device.ranks,
        tensor_parallel=hw.device.ranks,
        nodes=nodes,
        duration_s=duration,
        steps=steps,
        mean_step_time_s=step_time / steps if steps else 0.0,
        output_tokens=output * nodes,
        total_tokens=total * nodes,
        throughput_output_tokens_per_s=nodes * output / duration,
        throughput_total_tokens_per_s=nodes * total / duration,
        ttft_s=ttft,
        tpot_s=tpot,
        exposed_engram_s=exposed,
        exposed_per_step_s={l: v / steps for l, v in exposed.items()} if steps else {},
        exposed_fraction=sum(exposed.values()) / step_time if step_time else 0.0,
        utilisation=util,
        bytes_moved=moved,
        bytes_requested={"to_device": to_device_requested, "d2h": rec.d2h_requested},
        bytes_requested_by_layer=dict(rec.bytes_requested),
        bytes_requested_by_tier={k: v for k, v in rec.bytes_by_tier.items() if k != "nvme_read"},
        layers=_layers(scenario, model, rec, steps),
        serving=serving_metrics(scenario, rec, memory) if inference and memory is not None else None,
        host_s=rec.host_s / steps if steps else 0.0,
        extrapolated=dict(rec.extrapolated),
        spans=rec.spans,
        counters=rec.counters,
        approximations=[
            "rows per step are expected values of the n-gram model (Zipf or measured curves)",
            "host DRAM, PCIe uplinks and NVMe are fair-shared fluid pipes (max-min, per-flow caps)",
            "multi-node: identical nodes, node 0 simulated, throughput x nodes",
            "paged KV cache sized once from device memory (weights, hot rows, an estimated activation "
            "workspace); preemption by recompute; scheduling is part of the engine's per-step overhead",
        ],
    )


def _layers(scenario: Scenario, model: ModelSpec, rec: Recorder, steps: int) -> list[LayerMetrics]:
    """Per-block averages per engine step (op totals by kind are shared by all blocks of
    that kind: every attention block costs the same)."""
    counts = {"attention": model.n_layers,
              "ffn_moe": sum(model.is_moe_layer(i) for i in range(model.n_layers)),
              "engram": len(model.engram_layer_ids)}
    counts["ffn_dense"] = model.n_layers - counts["ffn_moe"]

    def per_block(kind: str) -> float:
        return sum(rec.op_s.get(kind, {}).values()) / (counts[kind] * steps) if counts.get(kind) and steps else 0.0

    out = []
    for i in range(model.n_layers):
        ffn = "ffn_moe" if model.is_moe_layer(i) else "ffn_dense"
        kinds = ["attention", ffn] + (["engram"] if i in model.engram_layer_ids else [])
        by_bound: dict[str, float] = {}
        for kind in kinds:
            for bound, secs in rec.op_s.get(kind, {}).items():
                by_bound[bound] = by_bound.get(bound, 0.0) + secs / max(counts[kind], 1)
        compute_bound = max(by_bound, key=by_bound.get) if by_bound else "compute"
        layer = LayerMetrics(i, per_block("attention"), per_block(ffn),
                             per_block("engram") if i in model.engram_layer_ids else 0.0,
                             compute_bound, compute_bound)
        if i in model.engram_layer_ids:
            tier = scenario.placement.tier_of(i)
            n = rec.fetches.get(i, 0)
            stages = {k: v / n for k, v in rec.stage_s.get(i, {}).items()} if n else {}
            exposed = rec.wait_s.get(i, 0.0) / steps if steps else 0.0
            bound = compute_bound
            late = {k: v for k, v in stages.items() if k in STAGE_BOUND}
            if exposed > 0 and late:
                bound = STAGE_BOUND[max(late, key=late.get)]
            layer = replace(
                layer, tier=tier, bound=bound,
                rows_per_step=rec.rows_fetched.get(i, 0.0) / n if n else 0.0,
                bytes_per_step=rec.bytes_requested.get(i, 0.0) / n if n else 0.0,
                fetch_s=rec.fetch_s.get(i, 0.0) / n if n else 0.0,
                window_s=rec.window_s.get(i, 0.0) / n if n else 0.0,
                exposed_s=exposed, stage_s=stages, regime=rec.regime.get(i),
            )
        out.append(layer)
    return out
