"""Cached library calls behind the pages, keyed on a scenario's JSON.

No modelling here: each function calls the library (:mod:`planner.analytic`,
:func:`planner.sim.simulate`, :mod:`planner.accounting`) and returns its values. The simulator's
spans are packed into numpy arrays (:class:`SpanTable`) because ``st.cache_data`` pickles what
it returns on every read, and 200k ``Span`` objects take seconds to pickle; arrays take
milliseconds, so a cached simulation costs nothing on the analytic path's reruns.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import streamlit as st

from planner.accounting import tier_footprint
from planner.analytic import estimate_run, estimate_step
from planner.specs import InferenceWorkload, Scenario, length_bounds
from planner.parallel import per_rank, tensor_parallel_size
from planner.trace import Span, chrome_trace


def scenario_json(scenario: Scenario) -> str:
    return scenario.model_dump_json()


def _load(scenario_json_text: str) -> Scenario:
    return Scenario.model_validate_json(scenario_json_text)


def baseline_of(scenario: Scenario) -> Scenario:
    """The same scenario without Engram (the comparison every drop is made against)."""
    return scenario.model_copy(update={"model": scenario.model.without_engram()})


def resident_kv_tokens(scenario: Scenario) -> int:
    """Tokens held in one device's KV cache at the workload's worst case (full batch of
    longest sequences); training keeps none (its activations are not a KV cache)."""
    w = scenario.workload
    if isinstance(w, InferenceWorkload):
        return w.max_num_seqs * (length_bounds(w.prompt_len)[1] + length_bounds(w.output_len)[1])
    return 0


@st.cache_data(max_entries=512, show_spinner=False)
def analytic(scenario_json_text: str) -> dict:
    """Analytic estimate of the scenario and of its no-Engram baseline.

    ``step`` / ``base_step``: :class:`planner.analytic.AnalyticResult` of the default decode step;
    ``run`` / ``base_run``: :func:`planner.analytic.estimate_run` (inference only, else None);
    ``drop``: 1 - throughput / baseline throughput (whole run for inference, step for training).
    """
    scenario = _load(scenario_json_text)
    base = baseline_of(scenario)
    step, base_step = estimate_step(scenario), estimate_step(base)
    run = base_run = None
    if isinstance(scenario.workload, InferenceWorkload):
        run, base_run = estimate_run(scenario), estimate_run(base)
        ours, theirs = run.throughput_output_tokens_per_s, base_run.throughput_output_tokens_per_s
    else:
        ours, theirs = float(step.throughput_tokens_per_s), float(base_step.throughput_tokens_per_s)
    kv_tokens = resident_kv_tokens(scenario)
    return {
        "step": step,
        "base_step": base_step,
        "run": run,
        "base_run": base_run,
        "throughput": ours,
        "base_throughput": theirs,
        "drop": (1.0 - ours / theirs) if scenario.model.engram is not None and theirs > 0 else None,
        # per device: a tensor-parallel group's ranks each hold their share (planner.parallel)
        "footprint": per_rank(tier_footprint(scenario.model, scenario.placement, kv_tokens), scenario.model,
                              tensor_parallel_size(scenario)),
        "kv_tokens": kv_tokens,
    }


@dataclass
class SpanTable:
    """Spans as columns: ``name_id`` / ``track_id`` index ``names`` / ``tracks``; times in s."""

    names: list[str]
    tracks: list[str]
    name_id: np.ndarray
    track_id: np.ndarray
    start_s: np.ndarray
    dur_s: np.ndarray
    args: dict[int, dict] = field(default_factory=dict)

    @classmethod
    def from_spans(cls, spans: list[Span]) -> "SpanTable":
        names: dict[str, int] = {}
        tracks: dict[str, int] = {}
        name_id = np.fromiter((names.setdefault(s.name, len(names)) for s in spans), np.int32, len(spans))
        track_id = np.fromiter((tracks.setdefault(s.track, len(tracks)) for s in spans), np.int32, len(spans))
        return cls(list(names), list(tracks), name_id, track_id,
                   np.fromiter((s.start_s for s in spans), float, len(spans)),
                   np.fromiter((s.dur_s for s in spans), float, len(spans)),
                   {i: dict(s.args) for i, s in enumerate(spans) if s.args})

    def __len__(self) -> int:
        return len(self.start_s)

    def spans(self) -> list[Span]:
        return [Span(self.names[n], self.tracks[t], float(a), float(d), self.args.get(i, {}))
                for i, (n, t, a, d) in enumerate(zip(self.name_id, self.track_id, self.start_s, self.dur_s))]


@st.cache_data(max_entries=16, show_spinner=False)
def simulated(scenario_json_text: str) -> dict:
    """``simulate(scenario, baseline=True, trace=True)``: metrics as a dict plus a SpanTable."""
    from planner.sim import simulate  # imported on first use: it pulls in SciPy (calibration fits)

    metrics = simulate(_load(scenario_json_text), baseline=True, trace=True)
    return {"metrics": metrics.as_dict(), "spans": SpanTable.from_spans(metrics.spans),
            "counters": list(metrics.counters)}


def chrome_trace_json(result: dict, process: str) -> str:
    import json

    return json.dumps(chrome_trace(result["spans"].spans(), process,
                                   {"scenario": process, "source": "planner.sim via engram-planner app"},
                                   counters=result.get("counters", [])))
