"""Helpers shared by command modules: JSON output, table printing, checked flag values."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any, Sequence

HELP_FORMATTER = argparse.RawDescriptionHelpFormatter


def number(kind: type = float, low: float | None = None, high: float | None = None, what: str = ""):
    """An argparse ``type=``: an int or a finite float within ``[low, high]``. A bad value is a
    usage error (exit 2) that names the flag, the value and the range: ``argument --configs: must
    be between 1 and 1,000,000, got -5``."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text[:40]!r}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text[:40]!r}")
        if (low is not None and value < low) or (high is not None and value > high):
            if high is None:
                bound = f"must be >= {low:,}"
            elif low is None:
                bound = f"must be <= {high:,}"
            else:
                bound = f"must be between {low:,} and {high:,}"
            raise argparse.ArgumentTypeError(f"{bound}{what}, got {text[:40]}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def add_json_flag(parser: argparse.ArgumentParser,
                  help: str = "print machine-readable JSON instead of text") -> None:
    parser.add_argument("--json", action="store_true", help=help)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return value


def print_json(data: Any) -> None:
    json.dump(_jsonable(data), sys.stdout, indent=2)
    sys.stdout.write("\n")


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """Plain monospace table; ``align`` is a string of 'l'/'r' per column."""
    cells = [[str(c) for c in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for n, row in enumerate(cells):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def human_count(n: float) -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{suffix}"
    return f"{n:.0f}"
