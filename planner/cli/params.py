"""``engram-planner params``: parameter, byte and footprint accounting of a model."""

from __future__ import annotations

from planner.accounting import model_summary
from planner.cli.common import HELP_FORMATTER, add_json_flag, format_table, human_count, number, print_json
from planner.loading import load_model
from planner.specs import EngramPlacement
from planner.units import format_bytes

EPILOG = """\
examples:
  engram-planner params engram-27b
  engram-planner params examples/models/engram-40b.yaml --tier host --cache-fraction 0.05
  engram-planner params dense-8b-engram-100b --tier disk --kv-tokens 262144 --json

Counting rules (what "active" means, how MLA caches keys) are in docs/accounting.md.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "params",
        help="parameter, byte and memory-tier accounting of a model",
        description="Count a model's parameters (total, active, Engram tables with the "
        "distinct-prime rule), bytes read per token, KV-cache bytes, and where a placement "
        "puts each byte.",
        epilog=EPILOG,
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("model", help="model YAML file or bundled name (see examples/models/)")
    p.add_argument("--tier", choices=["device", "host", "disk"], default="device",
                   help="where the Engram tables live (default: device)")
    p.add_argument("--cache-fraction", type=number(float, 0, 1), default=0.0,
                   help="share of offloaded rows kept hot on the device (0-1)")
    p.add_argument("--kv-tokens", type=number(int, 0), default=0,
                   help="tokens resident in the KV cache, for the device footprint")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    model = load_model(args.model)
    if args.kv_tokens < 0:
        raise ValueError(f"--kv-tokens must be >= 0, got {args.kv_tokens}")
    if args.cache_fraction and args.tier == "device":
        raise ValueError(f"--cache-fraction {args.cache_fraction:g} means nothing with --tier device: the hot-row "
                         "cache keeps offloaded rows on the device (use --tier host or --tier disk)")
    placement = EngramPlacement(tier=args.tier, cache_fraction=args.cache_fraction)
    summary = model_summary(model, placement, args.kv_tokens)
    if args.json:
        print_json(summary)
        return 0
    p = summary["params"]
    print(f"{model.name}: {human_count(p['total'])} parameters, {human_count(p['active'])} active per token")
    rows = [
        (key.replace("_", " "), f"{p[key]:,}", human_count(p[key]))
        for key in ("embedding", "lm_head", "attention", "dense_ffn", "routed_experts",
                    "shared_experts", "router", "norms", "hyper_connections", "engram_dense",
                    "engram_tables", "total", "active")
        if p[key] or key in ("total", "active")
    ]
    print(format_table(["component", "parameters", ""], rows))
    moe = model.ffn.moe
    routed = f", routed experts {moe.routed_expert_dtype}" if moe is not None and moe.routed_expert_dtype else ""
    print(f"\nweights other than Engram tables: {format_bytes(summary['weight_bytes'])} ({model.dtype}{routed})")
    print(f"KV cache per token: {summary['kv_cache_bytes_per_token']:,.0f} B")
    engram = summary["engram"]
    if engram:
        print(f"\nEngram tables ({engram['dtype']}, rows of {engram['row_width']} = {engram['row_bytes']} B):")
        rows = [
            (layer["layer_id"], f"{layer['rows']:,}", human_count(layer["params"]),
             format_bytes(layer["bytes"]), layer["tier"])
            for layer in engram["layers"]
        ]
        print(format_table(["layer", "rows", "params", "bytes", "tier"], rows, "rrrrl"))
        total = sum(layer["bytes"] for layer in engram["layers"])
        print(f"all Engram tables: {total:,.0f} B ({format_bytes(total)}, {total / 2**30:,.2f} GiB)")
        print(f"each token reads {engram['rows_per_token_per_layer']} rows = "
              f"{engram['bytes_per_token_per_layer']:,.0f} B per Engram layer")
    fp = summary["footprint"]
    print(f"\nfootprint ({args.tier}, cache {args.cache_fraction:g}, {args.kv_tokens} KV tokens): "
          f"device {format_bytes(fp['device'])}, host {format_bytes(fp['host'])}, disk {format_bytes(fp['disk'])}")
    return 0
