"""``engram-planner plan``: run a plan file's studies and write tables, an HTML report and a manifest."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Callable, TextIO

from planner.cli.common import HELP_FORMATTER, add_json_flag, number, print_json
from planner.plan.engines import engine_settings

if TYPE_CHECKING:
    from planner.plan.results import PlanProgress

EPILOG = """\
examples:
  engram-planner plan examples/plans/offload.yaml --out out/plan
  engram-planner plan examples/plans/offload.yaml --out out/plan --workers 2
  engram-planner plan examples/plans/infeasible.yaml --out out/infeasible
  engram-planner plan PLAN.yaml --out out/plan --cluster ray://head:10001

A second run with the same --out recomputes only the studies whose inputs or code changed.
Method, memory-tier rules and the plan file reference: docs/planner.md.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "plan",
        help="recommend Engram table sizes, layers and memory tiers for the studies of a plan file",
        description="Screen every candidate of each study with the analytic estimator, verify the best "
        "with the simulator, and explain the recommendations (or why nothing is feasible).",
        epilog=EPILOG,
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("plan", help="plan YAML file (see examples/plans/)")
    p.add_argument("--out", required=True, help="directory for results, report.html, manifest.json and the resume cache")
    p.add_argument("--cluster", help="ray://HOST:PORT or auto: run studies as Ray tasks on an existing cluster")
    p.add_argument("--workers", type=number(int, 1, 1024), default=1, help="local worker processes (default 1)")
    add_json_flag(p, help="print the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from planner.files import output_dir
    from planner.plan import load_plan, run_plan
    from planner.plan.report import write_report
    from planner.plan.runner import ClusterError

    output_dir(args.out, "--out")
    if args.cluster is not None and args.workers != 1:
        raise ValueError(f"--workers {args.workers} means nothing with --cluster: Ray schedules the studies "
                         "over the cluster's workers")
    plan = load_plan(args.plan)
    try:
        results = run_plan(plan, workers=args.workers, cluster=args.cluster, out_dir=args.out,
                           progress=None if args.json else progress_lines(sys.stderr))
    except ClusterError as exc:  # its message starts "cluster 'ADDRESS': ": say it as the flag
        raise ValueError(f"--{exc}") from None
    paths = write_report(plan, results, args.out)
    if args.json:
        print_json([r.as_dict() for r in results])
        return 0
    print(summary(results))
    print(f"\nwrote {paths['html']}, {paths['json']}, {paths['candidates']}, {paths['manifest']}")
    return 0


def progress_lines(stream: TextIO) -> Callable[[PlanProgress], None]:
    """A progress callback writing one line per study stage to ``stream`` (screened, then done),
    not one per event: a plan of many studies stays readable in a log."""
    seen: set[tuple[str, str]] = set()

    def show(event: PlanProgress) -> None:
        if event.stage == "screen" or (event.study, event.stage) in seen:
            return
        seen.add((event.study, event.stage))
        if event.stage == "verify":
            what = "screen done"
        else:
            what = "from cache" if event.result is not None and event.result.meta.get("from_cache") else "done"
        print(f"{event.study}: {what} ({event.text()})", file=stream, flush=True)
    return show


def summary(results) -> str:
    lines = []
    for r in results:
        cached = " (from cache)" if r.meta.get("from_cache") else ""
        lines.append(f"{r.study}: {r.meta['candidates']} candidates, {r.meta['passed_screen']} passed the screen, "
                     f"{r.meta['simulations']} simulated{cached}")
        for rec in r.recommendations:
            lines.append(f"  {rec.explanation}")
            lines += [f"    {engine}: {command}" for engine, command in engine_settings(rec.scenario).items()]
        for c in r.candidates:
            if c.get("dominated_by") is not None:
                lines.append(f"  not recommended: candidate {c['id']} ({c['layer_ids']}, {c['tiers']}, cache "
                             f"{c['cache_fraction']:g}): {c['dominated_reason']}")
        if r.infeasible:
            lines.append("  no recommendation:")
            lines += [f"    - {x}" for x in r.infeasible.reasons]
            lines.append("  what would make it feasible:")
            lines += [f"    - {x}" for x in r.infeasible.suggestions]
    return "\n".join(lines)
