"""``engram-planner bench simulator``: wall time of two simulations and the analytic estimator's
configurations per second, each next to its target.

* the paper's offload experiment (``paper-offload-dense8b``: 512 sequences on one H800, with
  its no-Engram baseline), target 2 s: one device, so steady decode stretches are coalesced;
* a 20,000-request Poisson trace on an 8-device node (``h800-dense8b-poisson``, with its
  baseline), target 60 s: devices share host DRAM and uplinks, so every step of the Engram run
  is simulated;
* the analytic estimator over random configurations, target 10,000 per second.
"""

from __future__ import annotations

import time

import numpy as np

from planner.bench import machine_fingerprint
from planner.cli.common import number

DESCRIPTION = ("simulator wall time (the paper's 512-sequence scenario; a 20,000-request Poisson trace on "
               "8 devices) and analytic estimator configs/s")
SCENARIO = "paper-offload-dense8b"
POISSON_SCENARIO = "h800-dense8b-poisson"
TARGETS_S = {"offline": 2.0, "poisson": 60.0}
QUICK_SEQUENCES = {"offline": 64, "poisson": 1_000}
TARGET_CONFIGS_PER_S = 10_000.0
MAX_CONFIGS = 1_000_000  # six float64 input arrays and the estimator's temporaries per configuration


def add_arguments(parser) -> None:
    parser.add_argument("--scenario", default=SCENARIO,
                        help=f"offline scenario to time (default {SCENARIO}; target {TARGETS_S['offline']:.0f} s)")
    parser.add_argument("--poisson-scenario", default=POISSON_SCENARIO,
                        help=f"arrival-trace scenario to time (default {POISSON_SCENARIO}; "
                             f"target {TARGETS_S['poisson']:.0f} s)")
    parser.add_argument("--configs", type=number(int, 1, MAX_CONFIGS), default=100_000,
                        help=f"analytic configurations per call (at most {MAX_CONFIGS:,}: about 0.5 GB)")


def _time_simulation(name: str, flag: str, case: str, quick: bool) -> dict:
    from planner.loading import load_scenario
    from planner.sim import simulate
    from planner.specs.limits import check_simulation

    scenario = load_scenario(name)
    if quick:
        w = scenario.workload.model_copy(update={"num_sequences": QUICK_SEQUENCES[case]})
        scenario = scenario.model_copy(update={"workload": type(w).model_validate(w.model_dump())})
    check_simulation(scenario, f"{flag} {name}")
    start = time.perf_counter()
    metrics = simulate(scenario, baseline=True)
    wall = time.perf_counter() - start
    w, serving = scenario.workload, metrics.serving
    return {
        "scenario": scenario.name,
        "devices": scenario.hardware.device.count,
        "num_sequences": w.num_sequences,
        "arrival_rate": w.arrival_rate,
        "wall_s": wall,
        "target_s": None if quick else TARGETS_S[case],  # the targets are for the full runs
        "ok": None if quick else wall <= TARGETS_S[case],
        "simulated_steps": metrics.steps,
        "baseline_steps": metrics.baseline["steps"] if metrics.baseline else None,
        "throughput_output_tokens_per_s": metrics.throughput_output_tokens_per_s,
        "throughput_drop": metrics.throughput_drop,
        "peak_running": serving.peak_running if serving else None,
        "preemptions": serving.preemptions if serving else None,
    }


def run(args) -> dict:
    from planner.analytic import estimate_step
    from planner.loading import load_scenario

    offline = _time_simulation(args.scenario, "--scenario", "offline", args.quick)
    poisson = _time_simulation(args.poisson_scenario, "--poisson-scenario", "poisson", args.quick)

    scenario = load_scenario(args.scenario)
    n = 10_000 if args.quick else args.configs
    rng = np.random.default_rng(0)
    kw = dict(batch_size=rng.integers(1, 512, n).astype(float), cache_fraction=rng.random(n) * 0.1,
              table_rows=rng.uniform(1e6, 1e9, n), h2d_bandwidth=rng.uniform(8e9, 64e9, n),
              layer_id=rng.integers(0, scenario.model.n_layers, n).astype(float),
              prefetch=rng.integers(0, 2, n).astype(float))
    estimate_step(scenario, **{k: v[:10] for k, v in kw.items()})  # warm-up (imports, caches)
    start = time.perf_counter()
    estimate_step(scenario, **kw)
    ana_s = time.perf_counter() - start
    configs_per_s = n / ana_s
    return {
        "machine": machine_fingerprint(),
        "quick": bool(args.quick),
        "offline": offline,
        "poisson": poisson,
        "analytic_configs": n,
        "analytic_wall_s": ana_s,
        "analytic_configs_per_s": configs_per_s,
        "analytic_target_configs_per_s": TARGET_CONFIGS_PER_S,
        "analytic_ok": configs_per_s >= TARGET_CONFIGS_PER_S,
    }


def _sim_lines(r: dict, ok: dict) -> list[str]:
    arrivals = "all at t = 0" if r["arrival_rate"] is None else f"Poisson at {r['arrival_rate']:g}/s"
    drop = 100 * (r["throughput_drop"] or 0)
    return [
        f"simulate {r['scenario']} ({r['num_sequences']:,} sequences {arrivals}, {r['devices']} device(s), "
        f"with no-Engram baseline): {r['wall_s']:.2f} s wall"
        + (f", target <= {r['target_s']:.0f} s" if r["target_s"] is not None else "") + f" [{ok[r['ok']]}]",
        f"  {r['simulated_steps']:,} engine steps (+{r['baseline_steps'] or 0:,} baseline); "
        f"{r['throughput_output_tokens_per_s']:,.0f} output tokens/s, drop {drop:.2f}% vs no Engram; "
        f"peak {r['peak_running']} running, {r['preemptions']} preemptions",
    ]


def format_text(r: dict) -> str:
    ok = {True: "ok", False: "MISSED", None: "quick run: no target"}
    m = r["machine"]
    return "\n".join([
        *_sim_lines(r["offline"], ok),
        *_sim_lines(r["poisson"], ok),
        f"analytic estimator: {r['analytic_configs']:,} configurations in {r['analytic_wall_s']:.3f} s = "
        f"{r['analytic_configs_per_s']:,.0f}/s, target >= {r['analytic_target_configs_per_s']:,.0f}/s "
        f"[{ok[r['analytic_ok']]}]",
        f"machine: {m['processor']}, {m['cpu_count']} CPUs, Python {m['python']}",
    ])
