"""``engram-planner bench NAME``: run a benchmark, print its figures, optionally write JSON."""

from __future__ import annotations

import importlib
import json

from planner.bench import BENCHES
from planner.cli.common import HELP_FORMATTER, add_json_flag, print_json
from planner.files import output_file, write_atomic


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="speed and memory benchmarks (figures printed and written as JSON)",
        description="Run one benchmark. Each prints its figures next to its target and can "
        "write them as JSON for tracking across machines and versions.",
        formatter_class=HELP_FORMATTER,
    )
    sub = p.add_subparsers(dest="bench", metavar="NAME", required=True)
    for name in BENCHES:
        module = importlib.import_module(f"planner.bench.{name}")
        bp = sub.add_parser(name, help=module.DESCRIPTION, description=module.DESCRIPTION,
                            formatter_class=HELP_FORMATTER)
        bp.add_argument("--quick", action="store_true", help="smaller sizes, for CI smoke runs")
        bp.add_argument("--out", help="also write the result JSON to this file")
        add_json_flag(bp)
        module.add_arguments(bp)
        bp.set_defaults(func=run, bench_module=module)


def run(args) -> int:
    module = args.bench_module
    if args.out is not None:
        output_file(args.out, "--out")
    result = module.run(args)
    if args.out is not None:
        write_atomic(args.out, json.dumps(result, indent=2, default=float) + "\n")
    if args.json:
        print_json(result)
    else:
        print(module.format_text(result))
    return 0
