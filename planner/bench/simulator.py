"""``engram-planner bench simulator``: wall time of the bundled 512-sequence simulation and the
analytic estimator's configurations per second, each next to its target."""

from __future__ import annotations

import time

import numpy as np

from planner.bench import machine_fingerprint
from planner.cli.common import number

DESCRIPTION = "simulator wall time (512-sequence scenario) and analytic estimator configs/s"
SCENARIO = "h800-dense8b-engram100b"
TARGET_SIM_S = 10.0
TARGET_CONFIGS_PER_S = 10_000.0
MAX_CONFIGS = 1_000_000  # six float64 input arrays and the estimator's temporaries per configuration


def add_arguments(parser) -> None:
    parser.add_argument("--scenario", default=SCENARIO, help=f"scenario to time (default {SCENARIO})")
    parser.add_argument("--configs", type=number(int, 1, MAX_CONFIGS), default=100_000,
                        help=f"analytic configurations per call (at most {MAX_CONFIGS:,}: about 0.5 GB)")


def run(args) -> dict:
    from planner.analytic import estimate_step
    from planner.loading import load_scenario
    from planner.sim import simulate

    from planner.specs.limits import check_simulation

    scenario = load_scenario(args.scenario)
    if args.quick:
        w = scenario.workload.model_copy(update={"num_sequences": 64})
        scenario = scenario.model_copy(update={"workload": w})
    check_simulation(scenario, f"--scenario {args.scenario}")
    start = time.perf_counter()
    metrics = simulate(scenario, baseline=True)
    sim_s = time.perf_counter() - start

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
        "scenario": scenario.name,
        "num_sequences": scenario.workload.num_sequences,
        "simulate_wall_s": sim_s,
        "simulate_target_s": TARGET_SIM_S,
        "simulate_ok": sim_s < TARGET_SIM_S,
        "simulated_steps": metrics.steps,
        "throughput_output_tokens_per_s": metrics.throughput_output_tokens_per_s,
        "throughput_drop": metrics.throughput_drop,
        "analytic_configs": n,
        "analytic_wall_s": ana_s,
        "analytic_configs_per_s": configs_per_s,
        "analytic_target_configs_per_s": TARGET_CONFIGS_PER_S,
        "analytic_ok": configs_per_s >= TARGET_CONFIGS_PER_S,
    }


def format_text(r: dict) -> str:
    ok = {True: "ok", False: "MISSED"}
    return "\n".join([
        f"simulate {r['scenario']} ({r['num_sequences']} sequences, with no-Engram baseline): "
        f"{r['simulate_wall_s']:.2f} s wall, target < {r['simulate_target_s']:.0f} s [{ok[r['simulate_ok']]}]",
        f"  {r['simulated_steps']} engine steps; {r['throughput_output_tokens_per_s']:,.0f} output tokens/s, "
        f"drop {100 * (r['throughput_drop'] or 0):.2f}% vs no Engram",
        f"analytic estimator: {r['analytic_configs']:,} configurations in {r['analytic_wall_s']:.3f} s = "
        f"{r['analytic_configs_per_s']:,.0f}/s, target >= {r['analytic_target_configs_per_s']:,.0f}/s "
        f"[{ok[r['analytic_ok']]}]",
        f"machine: {r['machine']['processor']}, {r['machine']['cpu_count']} CPUs, Python {r['machine']['python']}",
    ])
