"""Is validation's "machine drift" the machine? Times calibration's four anchor runs three ways
in one process, alternating (A B C C B A ...), so that all three see the same machine:

* **C**: as ``calibrate`` times them (``measure_engine``: random ids, its own setup);
* **A**: as ``validate`` times them, alone (``Runner.measure_all`` on the anchors only);
* **B**: as ``validate`` times them, beside the quick grid (all set up in one Runner, interleaved).

``validate`` reports drift = B now / C at calibration. If B is slower than C here too, the drift
is in how the two commands measure, not in the machine.

``--worker-threads N`` gives the prefetch worker (the quick grid's ``host-prefetch-B8``) an
intra-op team of N threads instead of :func:`reference_model.prefetch.worker_threads`'s count;
N = the compute threads is what it had before that function existed (torch's default), which
made B 1.20-1.28x slower than C on the 2-core CI VM (docs/validation.md).

``--beside NAME --copies K`` times B beside K copies of one quick-grid run instead of the whole
grid: which run slows the others.

Usage: ``.venv/bin/python scripts/drift_probe.py PROFILE.yaml [--rounds N] [--repeats R]
[--worker-threads N] [--beside NAME [--copies K]]``
(PROFILE: a calibrated profile with anchors, e.g. validation_results/cpu-ci-epyc/quick/profile.yaml).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile")
    ap.add_argument("--rounds", type=int, default=2, help="A B C C B A rounds")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions per pass")
    ap.add_argument("--worker-threads", type=int, default=None,
                    help="the prefetch worker's intra-op threads (default: reference_model.prefetch.worker_threads)")
    ap.add_argument("--beside", default=None, help="B beside copies of this quick-grid run only")
    ap.add_argument("--copies", type=int, default=6, help="copies of --beside's run (default 6)")
    args = ap.parse_args()
    for flag, value, low in (("--worker-threads", args.worker_threads, 1), ("--copies", args.copies, 1),
                             ("--rounds", args.rounds, 1), ("--repeats", args.repeats, 1)):
        if value is not None and not low <= value <= 64:
            raise SystemExit(f"{flag}: {value} (expected {low}-64)")

    import torch

    from planner.calibration.build import engine_anchors
    from planner.calibration.measure_engine import measure_engine
    from planner.calibration.tasks import anchor_runs
    from planner.loading import SpecError, load_hardware
    from planner.validation import grid
    from planner.validation.measure import Runner
    from planner.validation.run import anchor_configs

    if args.worker_threads is not None:
        import reference_model.prefetch as prefetch

        prefetch.worker_threads = lambda device: args.worker_threads
    try:
        hw = load_hardware(args.profile)
    except SpecError as e:
        raise SystemExit(f"profile: {e}") from None
    if hw.calibration is None or not hw.calibration.anchors:
        raise SystemExit(f"{args.profile}: no calibration anchors")
    threads = hw.calibration.fingerprint.threads
    if threads:
        torch.set_num_threads(threads)
    anchors = anchor_configs(hw, "cpu")  # {RunConfig: calibration run name}
    runs = [r for r in anchor_runs("cpu") if r["name"] in hw.calibration.anchors]
    quick = grid.grid(True, "cpu")
    if args.beside is not None:
        from dataclasses import replace

        named = {c.name: c for c in quick}
        if args.beside not in named:
            raise SystemExit(f"--beside: {args.beside!r} is not a quick-grid run ({', '.join(named)})")
        quick = [replace(named[args.beside], name=f"{args.beside}#{i}") for i in range(args.copies)]
    work = tempfile.mkdtemp(prefix="drift-probe-")
    times: dict[str, dict[str, list[float]]] = {k: {r["name"]: [] for r in runs} for k in "ABC"}

    def runner_pass(key: str, configs):
        runner = Runner(work, device="cpu", threads=threads, repeats=args.repeats)
        try:
            for cfg in configs:
                runner.bundle(cfg)
            for cfg, m in zip(configs, runner.measure_all(configs)):
                if cfg in anchors:
                    times[key][anchors[cfg]].append(m.metrics["step_time_s"])
        finally:
            runner.close()

    passes = {"A": lambda: runner_pass("A", list(anchors)),
              "B": lambda: runner_pass("B", quick + list(anchors)),
              "C": lambda: [times["C"][n].append(s) for n, s in
                            engine_anchors(measure_engine(runs, args.repeats, "cpu")).items()]}
    for _ in range(args.rounds):
        for key in "ABCCBA":
            passes[key]()
            print(f"pass {key} done", file=sys.stderr)
    print(f"{'anchor run':<34} {'profile':>9} {'C calib':>9} {'A alone':>9} {'B w/ grid':>9}   B/C   A/C")
    for r in runs:
        n = r["name"]
        c, a, b = (float(np.median(times[k][n])) for k in "CAB")
        print(f"{n:<34} {hw.calibration.anchors[n] * 1e3:9.2f} {c * 1e3:9.2f} {a * 1e3:9.2f} {b * 1e3:9.2f}  "
              f"{b / c:5.2f} {a / c:5.2f}")


if __name__ == "__main__":
    main()
