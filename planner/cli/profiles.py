"""``engram-planner profiles``: list hardware presets and calibrated profiles."""

from __future__ import annotations

from planner.cli.common import HELP_FORMATTER, add_json_flag, format_table, print_json
from planner.loading import bundled_profiles, load_hardware
from planner.units import format_bytes, format_si


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "profiles",
        help="list hardware presets and calibrated profiles",
        description="List the hardware profiles in hw_profiles/ (datasheet presets and "
        "calibrated profiles), or show one in full.",
        epilog="examples:\n  engram-planner profiles\n  engram-planner profiles h800 --json",
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("name", nargs="?", help="show this profile (name or path) in full")
    add_json_flag(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.name:
        hw = load_hardware(args.name)
        if args.json:
            print_json(hw.model_dump(mode="json"))
        else:
            import yaml

            print(yaml.safe_dump(hw.to_yaml_dict(), sort_keys=False), end="")
        return 0
    profiles = {name: load_hardware(path) for name, path in bundled_profiles().items()}
    if args.json:
        print_json({name: hw.model_dump(mode="json") for name, hw in profiles.items()})
        return 0
    rows = []
    for name, hw in profiles.items():
        d = hw.device
        rows.append((
            name, hw.source, f"{hw.nodes}x{d.count} {d.name}",
            format_si(d.flops_for("bf16"), "FLOP/s"), format_bytes(d.memory),
            f"{hw.link.kind} {format_si(hw.link.h2d_bandwidth, 'B/s')}",
            format_bytes(hw.host.memory),
        ))
    print(format_table(["name", "source", "devices", "bf16 peak", "device mem", "host link", "host RAM"],
                       rows, "lllrrll"))
    return 0
