"""Does each Engram layer cost the engine more than its own spans? One backbone and shape
(Tiny-GQA x4, 4 blocks, batch 8, prompt 32, 8 tokens out, host tier, prefetch off) with 1, 2
and 3 Engram layers, timed as ``calibrate`` times its engine runs
(:func:`planner.calibration.measure_engine.measure_engine`, 9 repeats, spans over each step's
quiet repetitions). Prints, per decode step (mean), the step, the time outside every span, and the spans by
kind: if the time outside the spans (or the blocks after a lookup) grew with the Engram layers,
``step:overhead`` would need a per-lookup term.

Usage: ``.venv/bin/python scripts/engram_layers_probe.py`` (about a minute on 2 cores).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

KINDS = ("attn_L", "ffn_L", "engram_L", "wait_L", "hash", "embed", "head")


def main() -> None:
    from planner.calibration.measure_engine import measure_engine
    from planner.calibration.tasks import engine_spec

    runs = []
    for layers in ((1,), (1, 2), (1, 2, 3)):
        spec = engine_spec("tiny-gqa", 4, 4, layers, "fp32", None)
        runs.append({"name": f"{len(layers)} Engram layer(s)", "spec": spec.model_dump(mode="json"), "batch": 8,
                     "prompt_len": 32, "output_len": 8, "tier": "host"})
    result = measure_engine(runs, repeats=9)
    print(f"{'run':<20} {'step ms':>8} {'outside':>8}  " + " ".join(f"{k.rstrip('_L'):>7}" for k in KINDS))
    for run in runs:
        steps = [s for s in result["steps"] if s["run"] == run["name"] and s["phase"] == "decode"]

        def mean_ms(keep) -> float:
            return float(np.mean([sum(v for k, v in s["spans"].items() if keep(k)) for s in steps])) * 1e3

        step = mean_ms(lambda k: k == "step")
        # gather_L / h2d_L run inside their wait_L on a host tier: counted once, in the wait.
        inside = mean_ms(lambda k: k != "step" and not k.startswith(("gather_L", "h2d_L")))
        kinds = " ".join(f"{mean_ms(lambda k, p=p: k.startswith(p)):7.2f}" for p in KINDS)
        print(f"{run['name']:<20} {step:8.2f} {step - inside:8.2f}  {kinds}")


if __name__ == "__main__":
    main()
