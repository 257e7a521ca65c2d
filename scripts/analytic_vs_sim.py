"""The analytic estimator against the simulator on every bundled inference scenario: whole-run
output throughput of each and their ratio (docs/simulator.md, "Analytic estimator vs simulator").

    .venv/bin/python scripts/analytic_vs_sim.py        # about 6 s on 2 cores
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.analytic import estimate_run  # noqa: E402
from planner.loading import SCENARIOS_DIR, load_scenario  # noqa: E402
from planner.sim import simulate  # noqa: E402
from planner.specs import InferenceWorkload  # noqa: E402


def main() -> int:
    print("| scenario | analytic tok/s | simulated tok/s | simulated / analytic |")
    print("|---|---:|---:|---:|")
    for path in sorted(SCENARIOS_DIR.glob("*.yaml")):
        s = load_scenario(path.stem)
        if not isinstance(s.workload, InferenceWorkload) or s.workload.arrival_rate is not None:
            continue  # training steps and arrival traces are compared in tests/test_analytic.py
        ana = estimate_run(s).throughput_output_tokens_per_s
        sim = simulate(s, baseline=False).throughput_output_tokens_per_s
        print(f"| {s.name} | {ana:,.0f} | {sim:,.0f} | {sim / ana:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
