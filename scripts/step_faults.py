"""Minor page faults inside the engine's steps, for any ``engram-planner`` command that runs them.

Runs the command in this process with :meth:`reference_model.engine.Engine.step` wrapped: the
faults the process takes inside each step (its span: the cache eviction before it is left out)
are summed, and printed at exit with the number of steps. ``--fresh-heap``: the timed blocks
leave glibc's allocator as it was (:func:`reference_model.instrument.keep_freed_memory` made a
no-op), the A/B of docs/calibration.md, "The allocator".

    .venv/bin/python scripts/step_faults.py [--fresh-heap] calibrate --quick --out /tmp/p.yaml
    .venv/bin/python scripts/step_faults.py validate --quick --profile /tmp/p.yaml --out /tmp/v
    .venv/bin/python scripts/step_faults.py --fault-cost

``--fault-cost``: what a fault costs here. A loop that allocates, touches and frees 60 arrays of
64-256 KiB an iteration (a small model's activations), timed in two fresh processes, one with
glibc as it starts and one with the timed runs' setting; prints faults and microseconds an
iteration for each, and their difference per fault.

Linux only (``resource.getrusage``'s ``ru_minflt``).
"""

from __future__ import annotations

import atexit
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


_LOOP = """
import resource, sys, time
import numpy as np
if sys.argv[1] == "kept":
    from reference_model.instrument import keep_freed_memory
    keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():
    xs = [np.empty((64 << 10 >> 3) << (k % 3)) for k in range(60)]
    for x in xs:
        x[::512] = 1.0  # touch every 4 KiB page
    del xs
for _ in range(5):
    step()
f, t = faults(), time.perf_counter()
for _ in range(200):
    step()
print((faults() - f) / 200, (time.perf_counter() - t) / 200)
"""


def fault_cost() -> int:
    import subprocess

    root = Path(__file__).resolve().parents[1]
    got = {}
    for mode in ("default", "kept"):
        out = subprocess.run([sys.executable, "-c", _LOOP, mode], capture_output=True, text=True, cwd=root,
                             timeout=300)
        if out.returncode:
            sys.exit(f"the {mode} loop failed: {out.stderr.strip()[-300:]}")
        got[mode] = [float(v) for v in out.stdout.split()]
        print(f"{mode:8s} {got[mode][0]:7.0f} faults, {1e6 * got[mode][1]:8.1f} µs an iteration")
    extra = got["default"][0] - got["kept"][0]
    if extra > 0:
        print(f"per fault: {1e6 * (got['default'][1] - got['kept'][1]) / extra:.2f} µs")
    return 0


def main() -> int:
    if sys.argv[1:] == ["--fault-cost"]:
        return fault_cost()
    from planner.cli import main as cli
    from reference_model import engine, instrument

    args = sys.argv[1:]
    if args[:1] == ["--fresh-heap"]:
        args = args[1:]
        instrument.keep_freed_memory = lambda: False  # frozen_heap looks it up when entered
    if not args:
        sys.exit("usage: step_faults.py [--fresh-heap] COMMAND [ARGS...] (an engram-planner command)")
    total = {"faults": 0, "steps": 0}
    step = engine.Engine.step

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    def counted(self, ids_BT, cache):
        self.evict()
        buffer, self._evict = self._evict, None  # evicted above, outside the count
        try:
            before = faults()
            out = step(self, ids_BT, cache)
            total["faults"] += faults() - before
            total["steps"] += 1
        finally:
            self._evict = buffer
        return out

    engine.Engine.step = counted
    atexit.register(lambda: total["steps"] and print(
        f"engine steps: {total['steps']}, minor page faults per step: {total['faults'] / total['steps']:.1f}",
        file=sys.stderr))
    return cli(args)


if __name__ == "__main__":
    sys.exit(main())
