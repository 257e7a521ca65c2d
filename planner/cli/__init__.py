"""The ``engram-planner`` command line: thin entry points over the library.

Each command lives in its own module with ``register(subparsers)``, which adds a parser whose
``func(args) -> int`` runs it. Commands print and write files; the library only returns values.
Bad input (:class:`planner.loading.SpecError`, ``ValueError`` from a spec, a limit or an
output path) exits with code 2 and a one-paragraph message, never a traceback; a file that
cannot be read or written mid-run (a full disk) exits 1 naming the file. Warnings print as one
line each.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

from planner.loading import SpecError

# Command modules, in the order --help lists them.
COMMANDS = [
    "params",
    "profiles",
    "schema",
    "bench",
    "simulate",
    "plan",
    "calibrate",
    "ngram-stats",
    "app",
    "validate",
]

DESCRIPTION = """\
Plan Engram conditional-memory tables: how big, at which layers, in which memory tier.

Engram tables are read by token ids alone, so they can live in host RAM or on SSD and be
prefetched while the GPU computes earlier layers. This tool accounts for their parameters and
bytes, simulates what offloading costs on given hardware, and recommends placements.

Start with:
  engram-planner params engram-27b            parameter and byte accounting of a bundled model
  engram-planner profiles                     hardware presets and calibrated profiles
"""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors: exit 2 with a short message
        self.print_usage(sys.stderr)
        sys.stderr.write(f"engram-planner: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="engram-planner",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        importlib.import_module(f"planner.cli.{name.replace('-', '_')}").register(subparsers)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"engram-planner: {category.__name__}: {message}\n"  # one line, no source line


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    warnings.formatwarning = _format_warning
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        sys.stderr.write(f"engram-planner {args.command}: {exc}\n")
        return 2
    except ValueError as exc:
        sys.stderr.write(f"engram-planner {args.command}: invalid input: {exc}\n")
        return 2
    except MemoryError:
        sys.stderr.write(f"engram-planner {args.command}: out of memory; the work limits (docs/limits.md) "
                         "bound what a request may allocate: lower the one that applies\n")
        return 1
    except OSError as exc:  # reading or writing a file failed mid-run (disk full, permissions)
        where = f"{exc.filename}: " if exc.filename else ""
        sys.stderr.write(f"engram-planner {args.command}: {where}{exc.strerror or exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
