"""``engram-planner simulate``: run the discrete-event simulator on a scenario and report."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from planner.cli.common import HELP_FORMATTER, add_json_flag, format_table, print_json
from planner.files import output_file, write_atomic
from planner.loading import load_scenario
from planner.sim import simulate
from planner.sim.metrics import serving_lines
from planner.specs.limits import capacity_problems, check_simulation
from planner.trace import chrome_trace
from planner.units import format_bytes, format_rate, format_seconds

EPILOG = """\
examples:
  engram-planner simulate examples/scenarios/h800-dense8b-engram100b.yaml
  engram-planner simulate h100-engram27b-host-cache --json
  engram-planner simulate examples/scenarios/h100-engram27b-host.yaml --trace out/trace.json

Open the trace in ui.perfetto.dev. Metric definitions: docs/metrics.md; the model: docs/simulator.md.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="simulate a scenario: throughput, latency, exposed Engram time, bottlenecks",
        description="Discrete-event simulation of one node serving (or training) a model with "
        "Engram tables on device, host DRAM or NVMe: GPU compute, PCIe copies, host gathers "
        "and prefetch. Reports throughput and its drop against the same run without Engram.",
        epilog=EPILOG,
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("scenario", help="scenario YAML file or bundled name (see examples/scenarios/)")
    add_json_flag(p, help="print every metric as JSON")
    p.add_argument("--trace", metavar="FILE", help="write a Chrome trace (JSON) of the run")
    p.add_argument("--no-baseline", action="store_true", help="skip the run without Engram")
    p.add_argument("--ignore-memory", action="store_true",
                   help="simulate even when weights and tables do not fit the memory of their tier "
                   "(and give every request room in the KV cache: no admission limit, no preemption)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.trace is not None:
        output_file(args.trace, "--trace")
    scenario = load_scenario(args.scenario)
    check_simulation(scenario, args.scenario, trace=bool(args.trace))
    problems = capacity_problems(scenario)
    if problems and not args.ignore_memory:
        raise ValueError(f"{args.scenario}: cannot run as placed: " + "; ".join(problems)
                         + ". Shrink the tables or move them to a tier with room (placement.tier, "
                         "placement.layer_tiers), or pass --ignore-memory to simulate it anyway")
    for problem in problems:
        sys.stderr.write(f"engram-planner simulate: warning: {problem} (simulated anyway: --ignore-memory)\n")
    base_dir = Path(args.scenario).parent if Path(args.scenario).is_file() else None
    metrics = simulate(scenario, baseline=not args.no_baseline, trace=bool(args.trace), base_dir=base_dir,
                       kv_limit=not args.ignore_memory)
    if args.trace:
        trace = chrome_trace(metrics.spans, f"simulated: {scenario.name}",
                             {"scenario": scenario.name, "source": "planner.sim"}, counters=metrics.counters)
        path = write_atomic(args.trace, json.dumps(trace))
        sampled = trace["metadata"].get("sampled")
        if sampled:  # on stderr, so that --json output stays one JSON document
            sys.stderr.write(f"engram-planner simulate: the trace keeps {sampled['kept_events']:,} of "
                             f"{sampled['of_events']:,} events to stay under {format_bytes(sampled['max_bytes'])}: "
                             f"{sampled['rule']}\n")
    if args.json:
        print_json(metrics.as_dict())
    else:
        print(report(metrics))
    if args.trace and not args.json:
        print(f"\nwrote {path}")
    return 0


def _pct(d: dict | None) -> str:
    if not d:
        return "-"
    return " / ".join(format_seconds(d[k]) for k in ("p50", "p90", "p99"))


def report(m) -> str:
    tp = f" as {m.devices // m.tensor_parallel} tensor-parallel group(s) of {m.tensor_parallel}" if m.tensor_parallel > 1 else ""
    lines = [f"{m.scenario}: {m.model} on {m.hardware} ({m.nodes} node(s) x {m.devices} devices{tp}, {m.workload})"]
    if m.workload == "inference":
        lines.append(f"throughput: {format_rate(m.throughput_output_tokens_per_s)} output tokens/s, "
                     f"{format_rate(m.throughput_total_tokens_per_s)} total tokens/s")
    else:
        lines.append(f"throughput: {format_rate(m.throughput_total_tokens_per_s)} trained tokens/s")
    if m.throughput_drop is not None:
        lines.append(f"without Engram: {format_rate(m.baseline['throughput_output_tokens_per_s'])} tokens/s -> "
                     f"drop {100 * m.throughput_drop:.2f}%")
    lines.append(f"run {format_seconds(m.duration_s)}, {m.steps} steps, mean step {format_seconds(m.mean_step_time_s)}")
    if m.serving is not None:
        lines.extend(serving_lines(asdict(m.serving), (m.baseline or {}).get("serving"),
                                   "with Engram" if m.baseline else "admission"))
    if m.ttft_s:
        lines.append(f"TTFT p50/p90/p99: {_pct(m.ttft_s)}")
        lines.append(f"TPOT p50/p90/p99: {_pct(m.tpot_s)}")
    lines.append(f"exposed Engram time: {100 * m.exposed_fraction:.2f}% of step time")
    rows = []
    for layer in m.layers:
        if layer.tier is None:
            continue
        rows.append((layer.layer, layer.tier, f"{layer.rows_per_step:,.0f}", format_bytes(layer.bytes_per_step),
                     format_seconds(layer.fetch_s), format_seconds(layer.window_s),
                     format_seconds(layer.exposed_s), layer.bound, layer.regime or "-"))
    if rows:
        lines.append("\nEngram layers (per step; rows from: where a random row of the table comes from):")
        lines.append(format_table(["layer", "tier", "rows", "bytes", "fetch", "window", "exposed", "bound", "rows from"],
                                  rows, "rlrrrrrll"))
    kinds: dict[tuple, list[int]] = {}
    for layer in m.layers:
        kinds.setdefault((layer.attention_s, layer.ffn_s, layer.compute_bound), []).append(layer.layer)
    lines.append("\nblocks (compute per step):")
    lines.append(format_table(
        ["blocks", "attention", "ffn", "bound"],
        [(_ranges(ids), format_seconds(a), format_seconds(f), b) for (a, f, b), ids in kinds.items()], "lrrl"))
    if m.host_s > 0:
        lines.append(f"engine host work: {format_seconds(m.host_s)} per step (the profile's per-step overhead, "
                     "hashing on the engine thread, a prefetch worker on the compute cores)")
    for kind, ratio in sorted(m.extrapolated.items()):
        lines.append(f"note: {kind} priced {ratio:.1f}x beyond the shapes its calibrated curve was fitted on "
                     "(the roofline extrapolates physically, but calibrate on wider models to trust it)")
    util = ", ".join(f"{k} {100 * v:.1f}%" for k, v in m.utilisation.items())
    lines.append(f"\nutilisation: {util}")
    moved = ", ".join(f"{k} {format_bytes(v)}" for k, v in m.bytes_moved.items() if v)
    lines.append(f"bytes moved: {moved or 'none'}")
    return "\n".join(lines)


def _ranges(ids: list[int]) -> str:
    out, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            out.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ",".join(out)
