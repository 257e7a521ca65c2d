"""``engram-planner schema``: export the JSON schemas of the YAML formats."""

from __future__ import annotations

import json
from planner.cli.common import HELP_FORMATTER, print_json
from planner.files import output_dir, write_atomic
from planner.schema import json_schemas


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "schema",
        help="export JSON schemas of the model, hardware and scenario YAML formats",
        description="Print the JSON schemas, or write NAME.schema.json files into --out.",
        epilog="example:\n  engram-planner schema --out schema",
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("--out", help="directory to write model/hardware/scenario .schema.json into")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.out is not None:
        output_dir(args.out, "--out")
    schemas = json_schemas()
    if args.out is None:
        print_json(schemas)
        return 0
    out = output_dir(args.out, "--out")
    for name, schema in schemas.items():
        write_atomic(out / f"{name}.schema.json", json.dumps(schema, indent=2, sort_keys=True) + "\n")
        print(f"wrote {out / f'{name}.schema.json'}")
    return 0
