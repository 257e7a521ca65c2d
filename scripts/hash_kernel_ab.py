"""A/B of two n-gram hashing kernels inside measured reference-model runs, interleaved.

Usage: ``.venv/bin/python scripts/hash_kernel_ab.py [--old-commit C] [--rounds N]``

Loads the hashing kernel of ``--old-commit`` (``git show C:reference_model/hashing.py``, so run
it in a clone with history) next to the working tree's, sets up the quick validation grid's
host-tier runs once, then alternates the kernel every repetition (ABBA order, so a drift of the
machine's speed over the session hits both alike) and prints, per run and kernel, the lower
quartile of the mean step time and of the ``hash`` span. This is how a kernel change's effect
on measured steps is told apart from the shared machine's drift between two validation runs
minutes apart.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def load_kernel(commit: str | None):
    """``_hash_kernel`` of ``commit`` (None: the working tree), compiled in this process (no
    on-disk cache), so both sides of the A/B are built the same way."""
    if commit is None:
        src = (ROOT / "reference_model" / "hashing.py").read_text()
    else:
        src = subprocess.run(["git", "show", f"{commit}:reference_model/hashing.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "ab_hashing.py"
    path.write_text(src.replace("cache=True", "cache=False"))
    spec = importlib.util.spec_from_file_location("old_hashing", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod._hash_kernel


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old-commit", default="65df8a2", help="commit whose kernel is A (default: the token-by-token one)")
    ap.add_argument("--control", action="store_true",
                    help="A/A: both sides the working tree's kernel (what the same code differs by)")
    ap.add_argument("--rounds", type=int, default=8, help="ABBA rounds (each times every run twice per kernel)")
    args = ap.parse_args()

    import reference_model.hashing as hashing
    from planner.validation.grid import quick_grid
    from planner.validation.measure import Runner
    from reference_model.instrument import SpanRecorder

    current = hashing._hash_kernel
    kernels = {"old": load_kernel(None if args.control else args.old_commit), "new": load_kernel(None)}
    configs = [c for c in quick_grid() if c.tier == "host"]
    runner = Runner(tempfile.mkdtemp(prefix="hash-ab-"), threads=None, repeats=1)
    out = {(c.name, k): {"step": [], "hash": []} for c in configs for k in kernels}
    try:
        with ExitStack() as stack, torch.no_grad():
            runs = [runner._setup(c, stack) for c in configs]
            order = []
            for r in range(args.rounds):
                order += ["old", "new", "new", "old"] if r % 2 == 0 else ["new", "old", "old", "new"]
            for i, name in enumerate(["old", "new"] + order):  # first pair: warm-up
                hashing._hash_kernel = kernels[name]
                for run in runs:
                    rec = SpanRecorder()
                    run.engine.set_tracer(rec)
                    run.engine.teacher_forced(run.ids, run.cfg.prompt_len)
                    run.engine.set_tracer(None)
                    if i < 2:
                        continue
                    spans = rec.spans()
                    steps = [s.dur_s for s in spans if s.name == "step"]
                    hashes = [s.dur_s for s in spans if s.name == "hash"]
                    out[(run.cfg.name, name)]["step"].append(float(np.mean(steps)))
                    out[(run.cfg.name, name)]["hash"].append(float(np.mean(hashes)))
    finally:
        hashing._hash_kernel = current
        runner.close()
    # Samples alternate in ABBA order, so sample i of "old" and sample i of "new" ran next to
    # each other: their ratio cancels the machine's drift, and the spread of the ratios says
    # what the same comparison differs by from one moment to the next.
    lq = lambda x: float(np.sort(x)[(len(x) - 1) // 4])
    print(f"{'run':<22} {'step old/new (ms, LQ)':>22} {'hash old/new (us, LQ)':>22} "
          f"{'new/old step: median [IQR]':>28}  n")
    for c in configs:
        a, b = out[(c.name, "old")], out[(c.name, "new")]
        ratio = np.asarray(b["step"]) / np.asarray(a["step"])
        q1, med, q3 = np.percentile(ratio, [25, 50, 75])
        print(f"{c.name:<22} {lq(a['step']) * 1e3:10.3f} {lq(b['step']) * 1e3:10.3f} "
              f"{lq(a['hash']) * 1e6:10.1f} {lq(b['hash']) * 1e6:10.1f}   "
              f"{med:8.3f} [{q1:.3f}, {q3:.3f}]     {len(ratio)}")

if __name__ == "__main__":
    main()
