"""Verify: simulate screened candidates and check every limit on the simulated metrics.

Each run is exactly ``planner.sim.run.simulate(scenario)``: the candidate, then the same
scenario with ``model.without_engram()``. The baseline run depends only on the backbone, the
hardware and the workload, so candidates that share them share one baseline run (the result
is identical to calling ``simulate`` per candidate; a test re-simulates recommendations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.plan import explain as ex
from planner.plan.candidates import candidate_scenario
from planner.plan.constraints import Limit, failures, margins, violation_text
from planner.plan.screen import Screen
from planner.plan.spec import Study
from planner.sim.run import run_once
from planner.specs import Scenario

SIM_KEYS = ("throughput_output_tokens_per_s", "throughput_drop", "exposed_fraction", "duration_s",
            "mean_step_time_s")


@dataclass(frozen=True)
class Verified:
    scenario: Scenario
    metrics: dict
    margins: dict
    failing: list[str]
    failing_text: list[str]
    bottleneck: str
    bottleneck_text: str

    @property
    def ok(self) -> bool:
        return not self.failing


class Verifier:
    def __init__(self, study: Study, lims: list[Limit]):
        self.study, self.lims = study, lims
        self.screen = Screen(study)
        self.results: dict[int, Verified] = {}
        self.feasible: list[int] = []
        self.count = 0
        self.baseline_count = 0
        self._baselines: dict = {}
        self._provenance: dict[int, str] = {}
        # Per estimated metric, how far the simulator has been from the screen so far: the
        # largest ratio sim / analytic (absolute difference for fractions).
        self.correction: dict[str, float] = {}

    def predicted_to_fail(self, table, i: int) -> bool:
        for l in self.lims:
            if l.exact or l.metric not in self.correction:
                continue
            value = float(table[l.metric][i])
            c = self.correction[l.metric]
            if not bool(l.ok(value + c if l.unit == "fraction" else value * c)):
                return True
        return False

    def _learn(self, analytic: dict, metrics: dict) -> None:
        for l in self.lims:
            a, s = analytic.get(l.metric), metrics.get(l.metric)
            if l.exact or a is None or s is None or not np.isfinite(a) or not np.isfinite(s):
                continue
            if l.unit == "fraction":
                c = s - a if l.upper else a - s
            else:
                c = s / a if (l.upper and a > 0) else (a / s if s > 0 else 1.0)
                c = 1.0 / c if not l.upper else c
            self.correction[l.metric] = max(self.correction.get(l.metric, c), c)

    def verify(self, i: int, g: int, j: int, gs) -> Verified:
        group = gs[g]
        scenario = candidate_scenario(group, j, f"{self.study.name} #{i}")
        sim = run_once(scenario, scenario.model)
        key = (scenario.model.without_engram().model_dump_json(), scenario.workload.model_dump_json())
        if key not in self._baselines:
            self._baselines[key] = run_once(scenario, scenario.model.without_engram())
            self.baseline_count += 1
        sim = sim.with_baseline(self._baselines[key])
        self.count += 1

        analytic = self.screen.evaluate(_single(group, j))
        metrics = {k: float(analytic.column(k)[0]) for k in analytic.keys() if k != "bound"}
        screened = dict(metrics)
        metrics.update({k: float(getattr(sim, k)) for k in SIM_KEYS if getattr(sim, k) is not None})
        for kind in ("ttft", "tpot"):
            for q, v in (getattr(sim, f"{kind}_s") or {}).items():
                metrics[f"{kind}_{q}_s"] = float(v)
        metrics["baseline_throughput_output_tokens_per_s"] = float(sim.baseline["throughput_output_tokens_per_s"])
        metrics.update({k: float(v[0]) for k, v in self.screen.cost(
            {k: _arr(metrics[k]) for k in ("device_bytes", "device_engram_bytes", "host_bytes", "disk_bytes",
                                           "throughput_output_tokens_per_s")}).items()})
        metrics["source"] = "simulator (throughput, drop, TTFT, TPOT); accounting (memory); quality model"
        fail = failures(metrics, self.lims)
        self._learn(screened, metrics)
        bound, text = ex.bottleneck(sim)
        est = self.screen.quality.estimate(scenario.model, self.study.scenario.model)
        self._provenance[i] = est.provenance + (f" ({est.note})" if est.note else "")
        applicable = [l for l in self.lims if not (l.name == "disk_capacity" and metrics["disk_bytes"] == 0)]
        v = Verified(scenario, metrics, margins(metrics, applicable), [l.name for l in fail],
                     [violation_text(l, metrics[l.metric]) for l in fail], bound, text)
        self.results[i] = v
        if v.ok:
            self.feasible.append(i)
        return v

    def quality_provenance(self, i: int) -> str:
        return self._provenance.get(i, "")


def _arr(x):
    import numpy as np

    return np.array([x], float)


def _single(group, j):
    from dataclasses import replace

    return replace(group, cache_fraction=group.cache_fraction[j:j + 1], prefetch=group.prefetch[j:j + 1],
                   max_num_seqs=group.max_num_seqs[j:j + 1], max_batched_tokens=group.max_batched_tokens[j:j + 1])
