"""``engram-planner validate``: real reference-model runs with offloaded lookups vs the simulator's
prediction for the same scenarios (docs/validation.md). Exits 1 when the median absolute
step-time error exceeds ``--threshold``, so CI and users can gate on it. Torch is imported only
when it runs."""

from __future__ import annotations

import sys
from pathlib import Path

from planner.cli.common import HELP_FORMATTER, add_json_flag, number, print_json

EPILOG = """\
examples:
  engram-planner calibrate --quick --out hw_profiles/calibrated-my-box.yaml
  engram-planner validate --profile hw_profiles/calibrated-my-box.yaml --quick --out validation_results/my-box
  engram-planner validate --profile h100-node.yaml --device cuda --out validation_results/h100

writes DIR/validation.json (runs, errors, bands, summary, regimes), DIR/validation.html
(predicted vs measured, offline) and DIR/trace-measured-RUN.json / trace-simulated-RUN.json
(open both in ui.perfetto.dev). Exit status: 0 pass, 1 median |step-time error| above the
threshold, 2 bad input.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "validate",
        help="measure real offloaded runs and compare them with the simulator's predictions",
        description="Runs a grid of real reference-model generations (prefill + decode steps) with "
        "Engram tables in device memory, host RAM or on disk, cache and prefetch on or off; "
        "simulates each with the given (calibrated) profile; reports per-metric errors (step time, "
        "throughput, exposed lookup time, bytes moved), prediction-band coverage and the weakest "
        "regime. The grid never uses a shape that calibration timed.",
        epilog=EPILOG,
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("--profile", required=True, metavar="PROFILE.yaml",
                   help="hardware profile (a calibrated one: `engram-planner calibrate`)")
    p.add_argument("--quick", action="store_true", help="the 6-run CI grid (under a minute on 2 cores)")
    p.add_argument("--out", metavar="DIR", default="validation", help="output folder (default ./validation)")
    p.add_argument("--threshold", type=number(float), default=0.10,
                   help="fail (exit 1) above this median |step-time error| (fraction, default 0.10)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="where the model runs (default: the profile's "
                   "calibration device, else cuda if available)")
    p.add_argument("--host-mode", choices=["staged", "uva"], default="staged",
                   help="CUDA host-tier reads: staged copies or UVA (falls back to staged when unavailable)")
    p.add_argument("--repeats", type=number(int, 1, 1000), help="timed repetitions of each run (default 5 quick, 7 full)")
    p.add_argument("--runs", metavar="NAME,...", help="only these runs of the grid")
    p.add_argument("--no-plot", action="store_true", help="skip the HTML plot")
    add_json_flag(p, help="print validation.json instead of the table")
    p.set_defaults(func=run)


def run(args) -> int:
    from planner.loading import load_hardware
    from planner.validation import grid, report
    from planner.validation.run import validate

    if not 0 < args.threshold < 10:
        raise ValueError(f"--threshold is a fraction (0.10 = 10%), got {args.threshold}")
    if args.repeats is not None and args.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {args.repeats}")
    from planner.files import output_dir

    output_dir(args.out, "--out")
    try:
        import torch
    except ImportError:
        sys.stderr.write("engram-planner validate: needs torch (pip install torch)\n")
        return 2
    hw = load_hardware(args.profile)
    device = args.device or (hw.calibration.device if hw.calibration else None) or (
        "cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device on this machine")
    if hw.device.kind != device:
        # The runs measure this machine's `device`; predictions for another kind of device would be
        # compared with them and the gap blamed on the simulator (or on "other work on the cores").
        raise ValueError(f"--profile {args.profile}: describes a {hw.device.kind} device ({hw.device.name}) but the "
                         f"runs would be on {device}: validate this machine with a profile of it "
                         f"(engram-planner calibrate --out PROFILE.yaml), or pass --device {hw.device.kind} "
                         "on such a machine")
    configs = grid.grid(args.quick)
    if args.runs:
        wanted = args.runs.split(",")
        known = {c.name for c in grid.full_grid()}
        unknown = sorted(set(wanted) - known)
        if unknown:
            from planner.loading import did_you_mean

            hint = did_you_mean(unknown[0], known)
            raise ValueError(f"--runs names unknown runs {unknown}{hint} (known: {', '.join(sorted(known))})")
        configs = [c for c in grid.full_grid() if c.name in wanted]
    out_dir = Path(args.out)
    progress = None if args.json else (lambda line: print(line, file=sys.stderr, flush=True))
    v = validate(hw, args.profile, out_dir / ".work", quick=args.quick, device=device, threshold=args.threshold,
                 repeats=args.repeats, configs=configs, host_mode=args.host_mode, progress=progress)
    report.write_json(out_dir / "validation.json", v.data)
    if not args.no_plot:
        report.write_plot(out_dir / "validation.html", v.data)
    if v.measured_spans:
        report.write_traces(out_dir, v.trace_run, v.measured_spans, v.simulated_spans,
                            {"run": v.trace_run, "profile": args.profile})
    if args.json:
        print_json(v.data)
    else:
        print(report.format_text(v.data))
        print(f"wrote {out_dir / 'validation.json'}" + ("" if args.no_plot else f", {out_dir / 'validation.html'}")
              + (f", trace-measured-{v.trace_run}.json, trace-simulated-{v.trace_run}.json" if v.measured_spans else ""))
    return 0 if v.data["passed"] else 1
