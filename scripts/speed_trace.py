"""How steady is this machine? One of calibration's anchor runs, timed back to back.

Runs the first drift anchor (:func:`planner.calibration.tasks.anchor_runs`: a 256-wide tiny-GQA
model, batch 12, decode-heavy) in validation's runner (:class:`planner.validation.measure.Runner`)
over and over for ``--seconds``, with a 512x512 fp32 GEMM after each repetition, and prints, per
window of about ``--seconds`` / 40, the median mean step time and GEMM time. On a quiet machine
both lines are flat; on a shared VM they show how far and how fast its speed moves between
the minutes a ``calibrate`` and a ``validate`` run in, which no model of the reference model
can predict (docs/validation.md, "The machine's drift, measured beside the grid").

Usage: ``.venv/bin/python scripts/speed_trace.py [--seconds 180] [--json OUT.json]``
(``--json``: every repetition as ``[seconds since start, mean step s, GEMM s]``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=180.0, help="how long to trace (10-3600)")
    ap.add_argument("--json", type=Path, default=None, help="write every repetition here")
    args = ap.parse_args()
    if not 10 <= args.seconds <= 3600:
        ap.error(f"--seconds must be 10-3600, got {args.seconds:g}")
    if args.json is not None and not args.json.parent.is_dir():
        ap.error(f"--json {args.json}: directory {args.json.parent} does not exist")

    import torch

    from planner.calibration.tasks import anchor_runs
    from planner.validation import grid
    from planner.validation.measure import Runner

    cfg = grid.anchor_config(anchor_runs("cpu")[0])
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    rows = []
    with tempfile.TemporaryDirectory(prefix="speed-trace-") as work:
        runner = Runner(work, repeats=1, threads=torch.get_num_threads())
        try:
            runner.measure_all([cfg])  # the process's first run: imports, allocations, page faults
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                t = time.perf_counter() - start
                step = float(np.mean(runner.measure_all([cfg])[0].step_s[0]))
                g0 = time.perf_counter()
                for _ in range(5):
                    a @ b
                rows.append((t, step, (time.perf_counter() - g0) / 5))
        finally:
            runner.close()
    r = np.array(rows)
    width = max(1, len(r) // 40)
    print(f"{cfg.name}: {len(r)} repetitions in {args.seconds:g} s, {torch.get_num_threads()} threads")
    print("   start   mean step    512-GEMM")
    for k in range(0, len(r), width):
        seg = r[k:k + width]
        print(f"{seg[0, 0]:7.1f}s  {1e3 * np.median(seg[:, 1]):7.2f} ms  {1e3 * np.median(seg[:, 2]):7.3f} ms")
    windows = [np.median(r[k:k + width, 1]) for k in range(0, len(r), width)]
    print(f"windows: step {1e3 * min(windows):.2f}-{1e3 * max(windows):.2f} ms "
          f"({max(windows) / min(windows):.2f}x)")
    if args.json is not None:
        args.json.write_text(json.dumps(rows))


if __name__ == "__main__":
    main()
