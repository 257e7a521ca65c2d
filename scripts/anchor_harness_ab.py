"""Do calibration and validation time the same run alike? The drift anchors, A/B.

``validate``'s drift is the anchors' step time in its runner
(:class:`planner.validation.measure.Runner`) over their step time in ``calibrate``'s
(:func:`planner.calibration.measure_engine.measure_engine`). That ratio is the machine's change
of speed only if the two harnesses time the same run alike. They differ: calibration's runs
read random token ids and keep tables of their own, while validation's read held-out corpus text
and share one set of tables between runs of the same Engram geometry. This script times the four
anchor runs in both harnesses, alternating (``--rounds`` times, 5 repeats each), in one process,
and prints each run's mean step (ms) and the validation/calibration ratio per round. Ratios
below 1 in every round, where the machine cannot have drifted the same way each time, mean the
harnesses differ.

``--context``: each harness times the anchors among the runs it times them with in the two
commands: calibration's whole quick engine task (11 runs, with its GEMM probes after every
repetition) against validation's whole quick grid plus the anchors (10 runs). ``--repeats``:
timed repetitions of each pass (5; the commands use 9).

Usage: ``.venv/bin/python scripts/anchor_harness_ab.py [--rounds 3] [--context] [--repeats 5]``
(about 40 s a round on 2 cores, alone; 35-45 s with ``--context`` and 9 repeats on the Zen 5
box).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from planner.calibration.measure_engine import measure_engine
    from planner.calibration.tasks import anchor_runs, engine_runs
    from planner.validation import grid
    from planner.validation.measure import Runner

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two harnesses (1-20)")
    p.add_argument("--context", action="store_true",
                   help="each harness with the runs its command times beside the anchors")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions of each pass (1-50)")
    args = p.parse_args()
    if not 1 <= args.rounds <= 20:
        p.error(f"--rounds must be 1-20, got {args.rounds}")
    if not 1 <= args.repeats <= 50:
        p.error(f"--repeats must be 1-50, got {args.repeats}")
    runs = anchor_runs("cpu")
    configs = [grid.anchor_config(r) for r in runs]
    cal_runs, probes = (engine_runs("cpu", quick=True), (384, 512)) if args.context else (runs, ())
    beside = grid.grid(True, "cpu") if args.context else []
    with tempfile.TemporaryDirectory(prefix="anchor-ab-") as work:
        runner = Runner(work, repeats=args.repeats)
        try:
            print("round  " + "  ".join(f"{r['name'][9:]:>22}" for r in runs) + "   (calibration / validation ms, ratio)")
            for k in range(args.rounds):
                steps: dict[str, list[float]] = {}
                for s in measure_engine(cal_runs, repeats=args.repeats, peak_sizes=probes)["steps"]:
                    steps.setdefault(s["run"], []).append(s["spans"]["step"])
                cal = [float(np.mean(steps[r["name"]])) for r in runs]
                val = [m.metrics["step_time_s"] for m in runner.measure_all(beside + configs)[len(beside):]]
                ratios = [v / c for c, v in zip(cal, val)]
                print(f"{k:>5}  " + "  ".join(f"{1e3 * c:6.2f} / {1e3 * v:6.2f} {r:4.2f}" for c, v, r in zip(cal, val, ratios))
                      + f"   median {np.median(ratios):.2f}", flush=True)
        finally:
            runner.close()


if __name__ == "__main__":
    main()
