"""Does the op roofline's per-sequence cost (``seq_s``) predict runs it has not seen better?

Times the full calibration plan's engine runs as ``calibrate`` does
(:func:`planner.calibration.measure_engine.measure_engine`, 9 repeats; about a minute on 2
cores), or reads them from ``--samples FILE`` (written by an earlier ``--save FILE``), then,
per op kind, fits the roofline (:func:`planner.calibration.fit.fit_roofline`) with and without
the per-sequence term, leaving one engine run out at a time and predicting its steps' ops. It
prints the held-out runs' median and 90th-percentile |error| for prefill and decode steps, and
the signed median: a form that transfers does better on runs it was not fitted to, not just on
its own samples.

Usage: ``.venv/bin/python scripts/op_form_cv.py [--kinds attention:gqa,ffn:dense] [--save F | --samples F]``
(the fits take about 2 minutes a kind).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    from planner.calibration import engine_fit as ef
    from planner.calibration.fit import fit_roofline, roofline_seconds
    from planner.loading import load_hardware
    from planner.specs import ModelSpec

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kinds", default="attention:gqa,ffn:dense", help="op kinds, comma-separated")
    p.add_argument("--samples", type=Path, help="engine samples saved by --save (skips the measurement)")
    p.add_argument("--save", type=Path, help="write the measured engine samples here")
    args = p.parse_args()
    if args.save and not args.save.parent.is_dir():
        p.error(f"--save {args.save}: no directory {args.save.parent}")
    if args.samples:
        try:
            engine = json.loads(args.samples.read_text())
            engine["steps"], engine["peak_flops"], engine["bandwidth"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            p.error(f"--samples {args.samples}: not a file written by --save ({type(exc).__name__}: {exc})")
    else:
        from planner.calibration.measure import measure_copy, measure_gemm
        from planner.calibration.measure_engine import measure_engine
        from planner.calibration.tasks import engine_runs

        engine = measure_engine(engine_runs("cpu", quick=False), repeats=9)
        # The two ceilings as calibrate measures them: the best GEMM, twice the copy rate.
        gemm = measure_gemm([256, 512, 1024], "fp32", "cpu", repeats=7)
        engine["peak_flops"] = max(r["flops"] / r["seconds"] for r in gemm)
        copies = measure_copy([64 << 20, 128 << 20], repeats=7)
        engine["bandwidth"] = 2 * max(r["bytes"] / r["seconds"] for r in copies)
        if args.save:
            args.save.write_text(json.dumps(engine))
    specs = {n: ModelSpec.model_validate(s) for n, s in engine["specs"].items()}
    counting = load_hardware("cpu-workstation")  # work counts only
    peak, bandwidth = engine["peak_flops"], engine["bandwidth"]
    groups = ef.op_samples(engine["steps"], specs, counting)
    for kind in args.kinds.split(","):
        rows = groups.get((kind, "fp32"))
        if not rows:
            raise SystemExit(f"no {kind!r} spans in the samples; kinds: {sorted(k for k, _ in groups)}")
        arr = np.array([r[:4] for r in rows])
        seqs = np.array([r[6] for r in rows])
        runs = np.array([r[5][0] for r in rows])
        phases = np.array([r[5][1] for r in rows])
        weights = ef.phase_weights(rows)  # as calibrate weighs them
        print(f"{kind}: {len(rows)} steps of {len(set(runs))} runs, each left out in turn")
        for label, s in (("per row only", np.zeros_like(seqs)), ("per row + per sequence", seqs)):
            err = np.zeros(len(rows))
            for run in sorted(set(runs)):
                out = runs == run
                fit = fit_roofline(*arr[~out].T, peak, bandwidth, weights[~out], s[~out])
                pred = roofline_seconds(fit.params, *arr[out, :3].T, peak, bandwidth, s[out])
                err[out] = pred / arr[out, 3] - 1
            parts = []
            for phase in ("prefill", "decode"):
                e = err[phases == phase]
                parts.append(f"{phase} median {100 * np.median(np.abs(e)):4.1f}% p90 "
                             f"{100 * np.percentile(np.abs(e), 90):4.1f}% signed {100 * np.median(e):+5.1f}%")
            print(f"  {label:<24} " + " | ".join(parts))


if __name__ == "__main__":
    main()
