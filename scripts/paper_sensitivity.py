"""How far each assumption of the paper-offload scenarios moves their result.

The Engram paper's offload experiment (arXiv 2601.07372, Table 4) leaves the backbones' shapes,
the table's layout, the harness settings and where the host work runs unstated; the bundled
``paper-offload-dense4b`` and ``paper-offload-dense8b`` fix one reading of each
(their headers list them). This script simulates each scenario as bundled and with one
assumption changed at a time, and prints a markdown table: throughput with and without the
offloaded table, the drop, peak concurrency and preemptions. docs/simulator.md quotes its output.

    .venv/bin/python scripts/paper_sensitivity.py            # both scenarios, markdown
    .venv/bin/python scripts/paper_sensitivity.py --json F   # also every figure as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from planner.loading import SCENARIOS_DIR, _merged, read_yaml, scenario_from_dict  # noqa: E402
from planner.sim import simulate  # noqa: E402

PAPER = {"paper-offload-dense4b": (9031.62, 8858.28), "paper-offload-dense8b": (6315.52, 6140.02)}

# (label, overrides of the scenario mapping); model/hardware overrides merge over their bases.
VARIANTS = [
    ("as bundled", {}),
    ("backbone: Qwen3-4B / Llama-3-8B shape (GQA, no hyper-connections)", "gqa"),
    ("prompt + output together uniform in [100, 1024] (outputs 50-512)",
     {"workload": {"prompt_len": {"kind": "uniform", "low": 50, "high": 512},
                   "output_len": {"kind": "uniform", "low": 50, "high": 512}}}),
    ("table in fp32 (320 B rows)", {"model": {"engram": {"dtype": "fp32"}}}),
    ("n-grams de-duplicated within a step (Zipf model)", {"placement": {"dedup": True}}),
    ("gathers on 1 host thread", {"hardware": {"host": {"cores": 2}}}),
    ("no prefetch: hash and lookup when block 2 is reached", {"placement": {"prefetch": False}}),
    ("pageable staging buffer (synchronous copy)", {"placement": {"pinned": False}}),
    ("no engine host overhead", {"hardware": {"host": {"engine_step_overhead": 0, "engine_seq_overhead": 0}}}),
    ("engine overhead 10 us per sequence (Python per-sequence loops)",
     {"hardware": {"host": {"engine_seq_overhead": "10 us"}}}),
    ("eager everywhere (no CUDA graphs)", {"workload": {"cuda_graphs": False}}),
    ("vLLM's scheduler (chunked prefill, blocks of 16)", {"workload": {"scheduler": "vllm", "kv_block_size": 16}}),
    ("half the device memory for the engine (gpu_memory_utilization 0.45)",
     {"workload": {"gpu_memory_utilization": 0.45}}),
]
GQA_BACKBONE = {"paper-offload-dense4b": "dense-4b", "paper-offload-dense8b": "dense-8b"}


def scenario_with(name: str, overrides) -> object:
    data = read_yaml(SCENARIOS_DIR / f"{name}.yaml")
    if overrides == "gqa":
        model = dict(data["model"])
        model["base"] = GQA_BACKBONE[name]
        model["max_seq_len"] = 4096
        overrides = {"model": model}
        data = {**data, "model": model}
    else:
        data = _merged(data, overrides)
    return scenario_from_dict(data, SCENARIOS_DIR, f"{name} ({overrides})")


def run(name: str) -> list[dict]:
    rows = []
    for label, overrides in VARIANTS:
        start = time.perf_counter()
        m = simulate(scenario_with(name, overrides))
        rows.append({"variant": label, "engram_tok_s": m.throughput_output_tokens_per_s,
                     "baseline_tok_s": m.baseline["throughput_output_tokens_per_s"],
                     "drop": m.throughput_drop, "peak_running": m.serving.peak_running,
                     "preemptions": m.serving.preemptions,
                     "baseline_preemptions": m.baseline["serving"]["preemptions"],
                     "wall_s": time.perf_counter() - start})
    return rows


def markdown(name: str, rows: list[dict]) -> str:
    base, engram = PAPER[name]
    out = [f"**{name}** (paper, Table 4: {base:,.0f} -> {engram:,.0f} tok/s, drop {100 * (1 - engram / base):.2f}%)", "",
           "| variant | baseline tok/s | Engram tok/s | drop | peak running | preemptions (Engram / baseline) |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['variant']} | {r['baseline_tok_s']:,.0f} | {r['engram_tok_s']:,.0f} | "
                   f"{100 * r['drop']:.2f}% | {r['peak_running']} | {r['preemptions']} / {r['baseline_preemptions']} |")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", metavar="FILE", help="also write every figure as JSON")
    parser.add_argument("scenarios", nargs="*", default=list(PAPER))
    args = parser.parse_args()
    results = {}
    for name in args.scenarios:
        if name not in PAPER:
            parser.error(f"unknown scenario {name!r}; known: {', '.join(PAPER)}")
        results[name] = run(name)
        print(markdown(name, results[name]) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
