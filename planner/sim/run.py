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

from dataclasses import replace
from pathlib import Path

import simpy

from planner.accounting import engram_row_bytes, engram_table_rows
from planner.calibration.fingerprint import warn_if_mismatched
from planner.costmodel import CostModel
from planner.efficiency import Efficiency
from planner.memory import DeviceMemory, check_memory, device_memory, max_model_len
from planner.ngram_model import CachedTraffic, traffic_model
from planner.parallel import engine_view
from planner.sim.coalesce import Coalescer
from planner.sim.device import ComputeStream
from planner.sim.fetch import Fetcher
from planner.sim.inference import Replica
from planner.sim.kvcache import BlockPool
from planner.sim.metrics import SimMetrics, build_metrics
from planner.sim.node import Node, Recorder
from planner.sim.requests import sample_requests
from planner.sim.training import Trainer
from planner.specs import InferenceWorkload, ModelSpec, Scenario, length_bounds


def check_runnable(scenario: Scenario, trace: bool = False, model: ModelSpec | None = None,
                   kv_limit: bool = True) -> DeviceMemory | None:
    """Inputs that are valid specs but cannot make progress, or whose simulation is past the
    work limits (``planner.specs.limits``): explain instead of hanging. Returns the device
    memory plan of an inference workload (``model``: the scenario's or its baseline);
    ``kv_limit`` False: a KV cache with a block for every token of every request (what-if
    runs that ignore memory, ``simulate --ignore-memory``)."""
    from planner.specs.limits import check_simulation

    check_simulation(scenario, trace=trace)
    w = scenario.workload
    if not isinstance(w, InferenceWorkload):
        return None
    if not w.chunked_prefill or w.scheduler == "nano-vllm":
        longest = length_bounds(w.prompt_len)[1]
        if longest > w.max_batched_tokens:
            why = ("workload.scheduler is nano-vllm (whole prompts)" if w.scheduler == "nano-vllm"
                   else "workload.chunked_prefill is false")
            raise ValueError(
                f"{why} but prompts reach {longest} tokens, more than "
                f"workload.max_batched_tokens = {w.max_batched_tokens}: such a prompt never fits a step"
            )
    if w.scheduler == "nano-vllm" and max_model_len(scenario) > w.max_batched_tokens:
        # nano-vLLM's Config asserts this: a preempted sequence is prefilled again whole.
        raise ValueError(f"workload.scheduler is nano-vllm, which needs max_batched_tokens >= max_model_len "
                         f"(a preempted sequence is prefilled again whole), but workload.max_batched_tokens = "
                         f"{w.max_batched_tokens} and max_model_len = {max_model_len(scenario)}")
    if not kv_limit:
        mem = device_memory(scenario, model)
        longest = sum(length_bounds(d)[1] for d in (w.prompt_len, w.output_len))
        return replace(mem, blocks=w.num_sequences * mem.blocks_for(longest), limited=False)
    return check_memory(scenario, model)


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
             efficiency: Efficiency | None = None, coalesce: bool = True, kv_limit: bool = True) -> SimMetrics:
    """One simulation of ``scenario`` with ``model`` (the scenario's, or its baseline).
    ``coalesce``: advance steady decode stretches at once where that is exact
    (:mod:`planner.sim.coalesce`); False simulates every step. A tensor-parallel workload runs
    on the hardware's group view (:func:`planner.parallel.engine_view`)."""
    scenario = engine_view(scenario)
    memory = check_runnable(scenario, trace, model, kv_limit)
    hw, placement, w = scenario.hardware, scenario.placement, scenario.workload
    env = simpy.Environment()
    cost = CostModel(model, hw, efficiency)
    node = Node(env, cost)
    rec = Recorder(trace=trace)
    traffic = traffic_for(scenario, model, base_dir)
    in_place = hw.device.kind == "cpu" or hw.unified  # gathered rows need no copy (planner.sim.fetch)
    prefetch = placement.prefetch  # where the worker runs: planner.stages.host_placement
    requests = []
    if isinstance(w, InferenceWorkload):
        everyone = sample_requests(w, hw.devices_total)
        requests = [r for r in everyone if r.device < hw.device.count]  # node 0's share
    for ports in node.devices:
        fetcher, fetch_args = None, None
        if model.engram is not None:  # hashing serves device-tier layers too
            fetch_args = (placement, traffic, engram_row_bytes(model), in_place)
            fetcher = Fetcher(env, node, ports, cost, *fetch_args[:3], rec, fetch_args[3],
                              exclusive=isinstance(w, InferenceWorkload))
        stream = ComputeStream(env, cost, model, placement, fetcher, rec, ports.index)
        if isinstance(w, InferenceWorkload):
            mine = [r for r in requests if r.device == ports.index]
            pool = BlockPool(memory.blocks, memory.block_tokens)
            alone = hw.device.count == 1 or fetcher is None or not fetcher.offloaded
            coalescer = (Coalescer(env, node, cost, stream, fetcher, rec, ports.index, prefetch, fetch_args)
                         if coalesce and not trace and alone else None)
            actor = Replica(env, ports.index, stream, fetcher, w, mine, rec, prefetch, pool, coalescer)
        else:
            actor = Trainer(env, ports.index, stream, fetcher, w, rec, prefetch)
        env.process(actor.run())
    env.run()
    return build_metrics(scenario, model, rec, node, requests, env.now, memory)


def simulate(scenario: Scenario, *, baseline: bool = True, trace: bool = False,
             base_dir: str | Path | None = None, efficiency: Efficiency | None = None,
             coalesce: bool = True, kv_limit: bool = True) -> SimMetrics:
    """Simulate ``scenario``; with ``baseline``, also without Engram and report the drop.
    ``base_dir`` resolves a relative ``ngram_stats`` path (the scenario file's folder).
    A calibrated hardware profile measured on other software or hardware than this
    environment's raises a ``CalibrationMismatchWarning`` (docs/calibration.md). ``kv_limit``
    False gives every request room in the KV cache (no admission limit, no preemption)."""
    warn_if_mismatched(scenario.hardware)
    result = run_once(scenario, scenario.model, trace=trace, base_dir=base_dir, efficiency=efficiency,
                      coalesce=coalesce, kv_limit=kv_limit)
    if baseline and scenario.model.engram is not None:
        base = run_once(scenario, scenario.model.without_engram(), efficiency=efficiency, coalesce=coalesce,
                        kv_limit=kv_limit)
        result = result.with_baseline(base)
    return result
