"""Build one node's actors from a scenario, run the SimPy environment, return metrics.

``simulate(scenario)`` runs the scenario and, unless ``baseline=False``, the same scenario with
``model.without_engram()``, and reports the throughput drop. Everything is deterministic for a
given scenario (request lengths and arrivals are drawn from ``workload.seed``; rows per step are
expected values of the n-gram model, not samples).

Multi-node hardware: nodes are identical and serve disjoint shares of the requests
(round-robin over all ``nodes x device.count`` devices), so node 0 is simulated and throughput
multiplied by ``nodes``.
"""

from __future__ import annotations

from pathlib import Path

import simpy

from planner.accounting import engram_row_bytes, engram_table_rows
from planner.calibration.fingerprint import warn_if_mismatched
from planner.costmodel import CostModel
from planner.efficiency import Efficiency
from planner.ngram_model import CachedTraffic, traffic_model
from planner.sim.device import ComputeStream
from planner.sim.fetch import Fetcher
from planner.sim.inference import Replica
from planner.sim.metrics import SimMetrics, build_metrics
from planner.sim.node import Node, Recorder
from planner.sim.requests import sample_requests
from planner.sim.training import Trainer
from planner.specs import InferenceWorkload, ModelSpec, Scenario, length_bounds


def check_runnable(scenario: Scenario, trace: bool = False) -> None:
    """Inputs that are valid specs but cannot make progress, or whose simulation is past the
    work limits (``planner.specs.limits``): explain instead of hanging."""
    from planner.specs.limits import check_simulation

    check_simulation(scenario, trace=trace)
    w = scenario.workload
    if isinstance(w, InferenceWorkload) and not w.chunked_prefill:
        longest = length_bounds(w.prompt_len)[1]
        if longest > w.max_batched_tokens:
            raise ValueError(
                f"workload.chunked_prefill is false but prompts reach {longest} tokens, more than "
                f"workload.max_batched_tokens = {w.max_batched_tokens}: such a prompt never fits a step"
            )


def traffic_for(scenario: Scenario, model: ModelSpec, base_dir: str | Path | None = None) -> dict:
    """The n-gram traffic model of each Engram layer (measured curves or Zipf)."""
    if model.engram is None:
        return {}
    rows = engram_table_rows(model)
    return {
        layer: CachedTraffic(traffic_model(model.engram.rows_per_token, rows[layer], scenario.ngram_stats, base_dir))
        for layer in model.engram_layer_ids
    }


def run_once(scenario: Scenario, model: ModelSpec, *, trace: bool = False, base_dir=None,
             efficiency: Efficiency | None = None) -> SimMetrics:
    """One simulation of ``scenario`` with ``model`` (the scenario's, or its baseline)."""
    check_runnable(scenario, trace)
    hw, placement, w = scenario.hardware, scenario.placement, scenario.workload
    env = simpy.Environment()
    cost = CostModel(model, hw, efficiency)
    node = Node(env, cost)
    rec = Recorder(trace=trace)
    traffic = traffic_for(scenario, model, base_dir)
    cpu = hw.device.kind == "cpu"
    prefetch = placement.prefetch  # where the worker runs: planner.stages.host_placement
    requests = []
    if isinstance(w, InferenceWorkload):
        everyone = sample_requests(w, hw.devices_total)
        requests = [r for r in everyone if r.device < hw.device.count]  # node 0's share
    for ports in node.devices:
        fetcher = None
        if model.engram is not None:  # hashing serves device-tier layers too
            fetcher = Fetcher(env, node, ports, cost, placement, traffic, engram_row_bytes(model), rec, cpu)
        stream = ComputeStream(env, cost, model, placement, fetcher, rec, ports.index)
        if isinstance(w, InferenceWorkload):
            mine = [r for r in requests if r.device == ports.index]
            actor = Replica(env, ports.index, stream, fetcher, w, mine, rec, prefetch)
        else:
            actor = Trainer(env, ports.index, stream, fetcher, w, rec, prefetch)
        env.process(actor.run())
    env.run()
    return build_metrics(scenario, model, rec, node, requests, env.now)


def simulate(scenario: Scenario, *, baseline: bool = True, trace: bool = False,
             base_dir: str | Path | None = None, efficiency: Efficiency | None = None) -> SimMetrics:
    """Simulate ``scenario``; with ``baseline``, also without Engram and report the drop.
    ``base_dir`` resolves a relative ``ngram_stats`` path (the scenario file's folder).
    A calibrated hardware profile measured on other software or hardware than this
    environment's raises a ``CalibrationMismatchWarning`` (docs/calibration.md)."""
    warn_if_mismatched(scenario.hardware)
    result = run_once(scenario, scenario.model, trace=trace, base_dir=base_dir, efficiency=efficiency)
    if baseline and scenario.model.engram is not None:
        base = run_once(scenario, scenario.model.without_engram(), efficiency=efficiency)
        result = result.with_baseline(base)
    return result
