"""Estimate: memory per tier, analytic throughput/latency, quality and cost of every candidate.

One call per :class:`~planner.plan.candidates.Group` evaluates all its candidates at once with
numpy arrays. The run model is the analytic estimator's own
(:func:`planner.analytic.estimate_run_arrays`, vectorised over ``max_num_seqs``,
``max_batched_tokens``, the hot-cache fraction and prefetch): the screen, the estimator and the
simulator price a step from the same stages (:mod:`planner.stages`).

Latency percentiles here are a screen, not a prediction: TTFT of the request at quantile q is
the start of its wave plus the wave's prefill; TPOT is the decode step. Queueing under Poisson
arrivals is invisible to it; the simulator verifies.

Memory (docs/planner.md, "Memory tiers"), from :func:`planner.accounting.tier_footprint`:

* device, per device: weights + KV cache + device-tier tables + hot-row cache. Every device
  holds a full replica (the simulator's model: requests are spread over independent replicas).
* host, per node: ONE copy of each host-tier table, shared by the node's devices (pinned and
  mapped into every device's address space), plus the disk tier's DRAM page cache.
* disk, per node: one copy of each disk-tier table on the node's NVMe.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from planner.accounting import engram_table_bytes, kv_cache_bytes_per_token, param_counts, tier_footprint
from planner.analytic import _mean_len, estimate_run_arrays
from planner.parallel import host_table_copies, kv_replication, per_rank, tensor_parallel_size
from planner.plan.candidates import Group
from planner.plan.spec import Study
from planner.quality import MemoryPowerLaw, QualityModel, memory_slots
from planner.specs import Scenario, length_bounds


def quality_model(study: Study) -> QualityModel:
    q = study.settings.quality
    memory = MemoryPowerLaw.fit(list(q.memory_points), q.source) if q.memory_points else None
    return QualityModel(memory=memory)


def memory(group: Group, study: Study) -> dict[str, np.ndarray]:
    """Bytes per tier of each candidate (device: per device; host and disk: per node)."""
    model, placement = group.choice.model, group.scenario.placement
    w = study.scenario.workload
    # Per device: a tensor-parallel group splits weights, tables and caches over its ranks and
    # each rank holds its share of the KV cache, or a copy of it (planner.parallel).
    tp = tensor_parallel_size(study.scenario)
    zero = per_rank(tier_footprint(model, placement.model_copy(update={"cache_fraction": 0.0})), model, tp)
    full = per_rank(tier_footprint(model, placement.model_copy(update={"cache_fraction": 1.0})), model, tp)
    seqs = np.minimum(group.max_num_seqs, _per_device(study.scenario))
    if study.settings.memory.kv_cache == "max":
        seq_len = length_bounds(w.prompt_len)[1] + length_bounds(w.output_len)[1]
    else:
        seq_len = _mean_len(w.prompt_len) + _mean_len(w.output_len)
    kv = seqs * seq_len * kv_cache_bytes_per_token(model) * kv_replication(model, tp) / tp
    f = group.cache_fraction
    cache = f * (full.device - zero.device)
    device_tables = sum(v for k, v in zero.breakdown.items() if k.startswith("engram_table_"))
    device = zero.device + cache + kv
    # One memory pool (link.kind: unified): every device's allocations are host memory too.
    pooled = device * study.scenario.hardware.device.count if study.scenario.hardware.unified else 0.0
    return {
        "device_bytes": device,
        "device_engram_bytes": device_tables + cache,
        "weight_bytes": np.full(f.shape, zero.breakdown["weights"]),
        "kv_cache_bytes": kv,
        "host_bytes": np.full(f.shape, zero.host * host_table_copies(group.scenario)) + pooled,
        "disk_bytes": np.full(f.shape, zero.disk),
    }


def _per_device(scenario: Scenario) -> int:
    """Requests per engine: per device, or per tensor-parallel group."""
    groups = scenario.hardware.devices_total // tensor_parallel_size(scenario)
    return int(np.ceil(scenario.workload.num_sequences / groups))


def run_arrays(scenario: Scenario, max_num_seqs, max_batched_tokens, **overrides) -> dict[str, np.ndarray]:
    """The screen's run columns of :func:`planner.analytic.estimate_run_arrays`."""
    r = estimate_run_arrays(scenario, max_num_seqs, max_batched_tokens, **overrides)
    out = {"duration_s": r.duration_s, "throughput_output_tokens_per_s": r.throughput_output_tokens_per_s,
           "decode_step_s": r.decode_step_s, "exposed_decode_s": r.exposed_decode_s,
           "stall_fraction": r.stall_fraction, "bound": r.bound, "first_layer_exposed_s": r.first_layer_exposed_s}
    for q in (50, 90, 99):
        out[f"ttft_p{q}_s"] = r.ttft_quantiles_s[q]
        out[f"tpot_p{q}_s"] = r.tpot_quantiles_s[q]
    return out


@dataclass(frozen=True)
class ScreenTable:
    """Every screened candidate of a study, one aligned array per metric (bytes, seconds,
    tokens/s, USD, fractions; ``bound`` is text). A typed table: limits and objectives name
    their metric (``column(name)``, ``table[name]``) and a name that is not a field is an
    error, not a silent new column. Arrays may be written in place (the verifier replaces
    screened values with simulated ones)."""

    device_bytes: np.ndarray
    device_engram_bytes: np.ndarray
    weight_bytes: np.ndarray
    kv_cache_bytes: np.ndarray
    host_bytes: np.ndarray
    disk_bytes: np.ndarray
    table_bytes: np.ndarray
    duration_s: np.ndarray
    throughput_output_tokens_per_s: np.ndarray
    decode_step_s: np.ndarray
    exposed_decode_s: np.ndarray
    stall_fraction: np.ndarray
    first_layer_exposed_s: np.ndarray
    bound: np.ndarray
    ttft_p50_s: np.ndarray
    ttft_p90_s: np.ndarray
    ttft_p99_s: np.ndarray
    tpot_p50_s: np.ndarray
    tpot_p90_s: np.ndarray
    tpot_p99_s: np.ndarray
    baseline_throughput_output_tokens_per_s: np.ndarray
    throughput_drop: np.ndarray
    engram_params: np.ndarray
    total_params: np.ndarray
    memory_slots: np.ndarray
    relative_loss: np.ndarray
    cost_per_hour_usd: np.ndarray
    usd_per_million_tokens: np.ndarray

    def __len__(self) -> int:
        return int(np.size(self.device_bytes))

    def column(self, metric: str) -> np.ndarray:
        if metric not in _SCREEN_FIELDS:
            raise KeyError(f"no screened metric {metric!r}; the screen has {sorted(_SCREEN_FIELDS)}")
        return getattr(self, metric)

    __getitem__ = column

    def keys(self) -> tuple[str, ...]:
        return _SCREEN_FIELDS

    def copy(self) -> "ScreenTable":
        return ScreenTable(**{k: np.array(getattr(self, k), copy=True) for k in _SCREEN_FIELDS})

    @staticmethod
    def concat(parts: list["ScreenTable"]) -> "ScreenTable":
        return ScreenTable(**{k: np.concatenate([getattr(p, k) for p in parts]) for k in _SCREEN_FIELDS})


_SCREEN_FIELDS = tuple(f.name for f in fields(ScreenTable))


RUN_KEYS = ("duration_s", "throughput_output_tokens_per_s", "decode_step_s", "exposed_decode_s", "stall_fraction",
            "first_layer_exposed_s") + tuple(f"{k}_p{q}_s" for k in ("ttft", "tpot") for q in (50, 90, 99))


class Screen:
    """Evaluates groups of one study; caches the no-Engram baselines and quality per model."""

    def __init__(self, study: Study):
        self.study = study
        self.quality = quality_model(study)
        self.price = study.settings.price or study.scenario.hardware.price
        self._baselines: dict = {}

    def evaluate(self, group: Group) -> ScreenTable:
        scenario = group.scenario
        m = memory(group, self.study)
        if "disk" in group.layer_tiers.values() and scenario.hardware.nvme is None:
            # No drives: the memory check rejects it; there is nothing to time.
            nan = np.full(len(group), np.nan)
            run = {k: nan for k in RUN_KEYS} | {"bound": np.full(len(group), "n/a")}
        else:
            run = run_arrays(scenario, group.max_num_seqs, group.max_batched_tokens,
                             cache_fraction=group.cache_fraction, prefetch=group.prefetch.astype(float))
        base = self._baseline(scenario, group)
        n = len(group)
        model = group.choice.model
        est = self.quality.estimate(model, self.study.scenario.model)
        quantified = not (est.relative_loss == 1.0 and not est.valid and est.note.startswith("not quantified"))
        counts = param_counts(model)
        out = {**m, **run,
               "baseline_throughput_output_tokens_per_s": base,
               "throughput_drop": 1.0 - run["throughput_output_tokens_per_s"] / base,
               "engram_params": np.full(n, float(counts.engram_tables)),
               "total_params": np.full(n, float(counts.total)),
               "memory_slots": np.full(n, float(memory_slots(model))),
               "relative_loss": np.full(n, est.relative_loss if quantified else np.nan),
               "table_bytes": np.full(n, float(sum(engram_table_bytes(model).values())))}
        out.update(self.cost(out))
        return ScreenTable(**{k: np.broadcast_to(np.asarray(v), (n,)).copy() for k, v in out.items()})

    def cost(self, m: dict) -> dict[str, np.ndarray]:
        """USD per hour of the deployment and per million output tokens (NaN without prices).
        The device price covers the device and its HBM; per-GB prices charge Engram's bytes."""
        if self.price is None:
            nan = np.full(np.shape(m["device_bytes"]), np.nan)
            return {"cost_per_hour_usd": nan, "usd_per_million_tokens": nan}
        p, hw = self.price, self.study.scenario.hardware
        hbm = getattr(p, "hbm_per_gb_hour", 0.0)
        per_node = (hw.device.count * (p.device_per_hour + m["device_engram_bytes"] / 1e9 * hbm)
                    + m["host_bytes"] / 1e9 * p.host_dram_per_gb_hour + m["disk_bytes"] / 1e9 * p.nvme_per_gb_hour)
        per_hour = hw.nodes * per_node
        return {"cost_per_hour_usd": per_hour,
                "usd_per_million_tokens": per_hour / (m["throughput_output_tokens_per_s"] * 3600.0) * 1e6}

    def _baseline(self, scenario: Scenario, group: Group) -> np.ndarray:
        backbone = group.choice.model.without_engram()
        key = (backbone.model_dump_json(), group.max_num_seqs.tobytes(), group.max_batched_tokens.tobytes())
        if key not in self._baselines:
            base = scenario.model_copy(update={"model": backbone, "placement": scenario.placement.model_copy(
                update={"layer_tiers": {}})})
            self._baselines[key] = run_arrays(base, group.max_num_seqs, group.max_batched_tokens)[
                "throughput_output_tokens_per_s"]
        return self._baselines[key]
