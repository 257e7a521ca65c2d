"""Two ways to score an engine step's spans over repetitions, on this machine.

Times the quick calibration plan's engine runs as ``calibrate --quick`` does
(:func:`planner.calibration.measure_engine.measure_engine`, 9 repeats, every repetition kept)
and prints, per run, the mean decode step and the time it spends outside its top-level spans
(``hash``, ``embed``, ``attn_L*``, ``ffn_L*``, ``engram_L*``, ``wait_L*``, ``head``) scored
two ways:

* **per span**: each span's own lower quartile over the repeats, summed (how calibration scored
  spans until ``MEASURE_VERSION`` 10). Each span keeps its luckiest repetitions, so their sum
  falls short of the step's lower quartile, and by more the more spans and the noisier the
  machine: the "outside" time it leaves is inflated and varies from run to run;
* **quiet repetitions**: the step's repetitions ranked around its lower quartile and every span's
  mean over the same ones (:func:`planner.calibration.measure.quiet_repeats`, what calibration
  and validation use now): the spans add up to the step, and the outside time is the engine's own.

Usage: ``.venv/bin/python scripts/span_statistics.py [NAME-SUBSTRING ...]`` (about 2 minutes on
2 cores for all 11 runs; substrings pick runs by name).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TOP = ("hash", "embed", "head")


def top_level(name: str) -> bool:
    return name in TOP or name.startswith(("wait_L", "attn_L", "ffn_L", "engram_L"))


def outside_s(sample: dict) -> tuple[float, float]:
    """(per-span lower quartiles, quiet repetitions): seconds of the step outside its spans."""
    from planner.calibration.measure import quiet_repeats

    reps = sample["repeats"]
    q = (len(reps) - 1) // 4
    steps = np.array([r["step"] for r in reps])
    names = [n for n in sample["spans"] if top_level(n)]
    per_span = np.sort(steps)[q] - sum(np.sort([r.get(n, 0.0) for r in reps])[q] for n in names)
    keep = quiet_repeats(steps)
    quiet = float(np.mean([steps[i] - sum(reps[i].get(n, 0.0) for n in names) for i in keep]))
    return float(per_span), quiet


def main(picks: list[str]) -> None:
    from planner.calibration.measure_engine import measure_engine
    from planner.calibration.tasks import engine_runs

    runs = [r for r in engine_runs("cpu", quick=True) if not picks or any(p in r["name"] for p in picks)]
    if not runs:
        raise SystemExit(f"no quick-plan engine run's name contains any of {picks}")
    result = measure_engine(runs, repeats=9, keep_repeats=True)
    print(f"{'run':<36} {'blocks':>6} {'step ms':>8}  outside ms: {'per span':>8} {'quiet':>6}")
    for run in runs:
        decode = [s for s in result["steps"] if s["run"] == run["name"] and s["phase"] == "decode"]
        out = np.array([outside_s(s) for s in decode]) * 1e3
        step = np.mean([s["spans"]["step"] for s in decode]) * 1e3
        print(f"{run['name']:<36} {decode[0]['n_layers']:>6} {step:8.2f}  {'':11} {out[:, 0].mean():8.2f} "
              f"{out[:, 1].mean():6.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
