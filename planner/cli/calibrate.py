"""``engram-planner calibrate``: measure this machine with the reference model, fit the curves,
write a calibrated hardware profile (docs/calibration.md). Torch is imported only when it runs."""

from __future__ import annotations

import math
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

from planner.cli.common import HELP_FORMATTER, add_json_flag, format_table, number, print_json
from planner.units import format_bytes, format_seconds, format_si

EPILOG = """\
examples:
  engram-planner calibrate --quick --out hw_profiles/calibrated-my-box.yaml
  engram-planner calibrate --device cuda --base h100-sxm --out h100-node.yaml
  engram-planner simulate my-scenario.yaml      # with  hardware: h100-node.yaml

Raw measurements are cached under ~/.cache/engram-planner/calibration/<hash>.json (the hash
covers each measurement's inputs, the machine and the software), so a re-run only re-fits.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate",
        help="measure this machine and write a calibrated hardware profile",
        description="Times the reference model's own ops (GEMMs, attention, MoE, Engram), host "
        "row gathers from RAM and a mapped file, host<->device copies, hashing and fixed "
        "overheads on this machine; fits efficiency and bandwidth curves; writes a hardware "
        "profile (YAML) with the fitted parameters, raw samples, residuals and a fingerprint.",
        epilog=EPILOG,
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("--out", required=True, metavar="PROFILE.yaml", help="where to write the profile")
    p.add_argument("--quick", action="store_true", help="fewer sizes and repeats (minutes, not tens of minutes)")
    p.add_argument("--device", choices=["cuda", "cpu"], help="what computes (default: cuda if available)")
    p.add_argument("--base", metavar="PRESET", help="preset for unmeasured fields (default: "
                   "cpu-workstation on cpu, h100-sxm on cuda)")
    p.add_argument("--threads", type=number(int, 1, 4096), metavar="N", help="torch intra-op threads while measuring "
                   "(default: torch's own, usually all cores; recorded in the fingerprint)")
    p.add_argument("--disk-dir", metavar="DIR", help="a directory on the drive disk-tier tables would live on: "
                   "a scratch file is written there and read back cold, pre-staged (pread) and in the "
                   "forward (mmap) (default: the system temp dir)")
    p.add_argument("--no-disk", action="store_true", help="do not measure a drive (nvme comes from --base)")
    p.add_argument("--name", help="profile name (default: from the machine)")
    p.add_argument("--cache-dir", metavar="DIR", help="raw-measurement cache (default ~/.cache/engram-planner/calibration)")
    p.add_argument("--no-cache", action="store_true", help="measure everything again, cache nothing")
    add_json_flag(p, help="print the fit report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from tqdm import tqdm

    from planner.calibration.build import TARGET_ERROR, build_profile
    from planner.calibration.tasks import DEFAULT_CACHE, measure_fingerprint, native_dtypes, plan, run_task
    from planner.files import output_dir, output_file
    from planner.loading import load_hardware

    output_file(args.out, "--out")
    if args.cache_dir is not None:
        if args.no_cache:
            raise ValueError("--cache-dir means nothing with --no-cache (nothing is read from or written to a cache)")
        output_dir(args.cache_dir, "--cache-dir")
    if args.disk_dir is not None:
        if args.no_disk:
            raise ValueError("--disk-dir means nothing with --no-disk (no drive is measured)")
        if not Path(args.disk_dir).is_dir():
            raise ValueError(f"--disk-dir {args.disk_dir}: no such directory")
        if not os.access(args.disk_dir, os.W_OK):
            raise ValueError(f"--disk-dir {args.disk_dir}: not writable (the scratch file is written there)")
    try:
        import torch
    except ImportError:
        sys.stderr.write("engram-planner calibrate: needs torch (pip install torch)\n")
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but torch sees no CUDA device on this machine")
    base = load_hardware(args.base or ("cpu-workstation" if device == "cpu" else "h100-sxm"))
    cache_dir = None if args.no_cache else Path(args.cache_dir or DEFAULT_CACHE)
    fingerprint = measure_fingerprint(device)
    tasks = plan(device, args.quick, base.host.engine_cores,
                 disk_dir=str(Path(args.disk_dir).resolve()) if args.disk_dir else None, disk=not args.no_disk)
    started = time.perf_counter()
    state = {"loadavg_before": os.getloadavg()[0], "probe_before": _probe(device)}
    results, cached = {}, 0
    with tempfile.TemporaryDirectory(prefix="engram-calibrate-") as workdir:
        bar = tqdm(tasks, desc="calibrate", unit="task", file=sys.stderr, leave=False)
        for task in bar:
            bar.set_postfix_str(task.name)
            results[task.name], hit = run_task(task, fingerprint, cache_dir, Path(workdir))
            cached += hit
    measured_s = time.perf_counter() - started
    state.update(loadavg_after=os.getloadavg()[0], probe_after=_probe(device))
    warning = load_warning(state, fingerprint["threads"], os.cpu_count() or 1, cached == len(tasks))
    profile = build_profile(results, base, fingerprint, device=device, quick=args.quick,
                            wall_s=measured_s, name=args.name, native=native_dtypes(device),
                            notes=[warning] if warning else [])
    out = write_profile(profile, args.out)
    load_hardware(out)  # what we wrote loads back through the presets' loader
    report = fit_report(profile, TARGET_ERROR)
    report.update(profile=str(out), wall_s=time.perf_counter() - started, tasks=len(tasks), cached_tasks=cached,
                  machine_state=state, warning=warning)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0


def _probe(device: str) -> float:
    """FLOP/s of a 512-square fp32 GEMM right now (calibration's own ``measure_gemm``)."""
    from planner.calibration.measure import measure_gemm

    r = measure_gemm([512], "fp32", device, repeats=7)[0]
    return r["flops"] / r["seconds"]


def load_warning(state: dict, threads: int, cores: int, all_cached: bool) -> str | None:
    """A warning when other work shared the machine while it was measured: the GEMM probe moved
    by more than 15% between the start and the end, or the load average (our own threads aside)
    stayed above half a core. Such a profile measured the load, not the machine."""
    if all_cached:
        return None
    moved = abs(state["probe_after"] / state["probe_before"] - 1.0)
    others = max(state["loadavg_before"], state["loadavg_after"]) - min(threads, cores)
    if moved <= 0.15 and others <= 0.5:
        return None
    return (f"other work shared this machine while it was measured (a 512-GEMM ran at "
            f"{state['probe_before'] / 1e9:.3g} then {state['probe_after'] / 1e9:.3g} GFLOP/s; load average "
            f"{state['loadavg_before']:.1f} -> {state['loadavg_after']:.1f} with {min(threads, cores)} threads of "
            "ours): the profile measured the load as much as the machine; calibrate again when it is quiet")


def write_profile(profile, path) -> Path:
    from planner.files import write_atomic

    path = Path(path)
    data = _round(profile.to_yaml_dict())
    header = (f"# {profile.name}\n# Written by `engram-planner calibrate`; numbers are measured on the machine "
              "named in `calibration.fingerprint`.\n# Re-fit or audit from the raw samples below "
              "(docs/calibration.md).\n")
    return write_atomic(path, header + yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=110))


class _Dumper(yaml.SafeDumper):
    """Block style, except lists and mappings of numbers (samples, params) on one line."""

    def represent_list(self, data):
        flow = all(isinstance(v, (int, float)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)

    def represent_dict(self, data):
        flow = all(isinstance(v, (int, float)) for v in data.values())
        return self.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)
_Dumper.add_representer(dict, _Dumper.represent_dict)


def _round(value, digits: int = 5):
    """Floats to ``digits`` significant digits: readable YAML, far below the measurement noise."""
    if isinstance(value, float):
        return value if value == 0 or not math.isfinite(value) else float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: _round(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v, digits) for v in value]
    return value


def fit_report(profile, target: float) -> dict:
    cal = profile.calibration
    curves = [{"name": c.name, "form": c.form, "params": c.params, "samples": len(c.samples_x),
               "median_abs_rel_error": c.median_abs_rel_error, "within_target": c.median_abs_rel_error <= target}
              for c in cal.curves]
    threads = next(([int(x) for x in c.samples_x] for c in cal.curves if c.name == "gather:ram:threads"), [1])
    return {"target_median_abs_rel_error": target, "curves": curves, "constants": cal.constants,
            "fingerprint": cal.fingerprint.model_dump(exclude_none=True),
            "emulated_dtypes": list(cal.emulated_dtypes), "gather_threads": threads,
            "engine_cores": profile.host.engine_cores}


def _params(c: dict) -> str:
    p = c["params"]
    if c["form"] == "linear":
        return f"intercept {p['intercept']:.3g}, slope {p['slope']:.3g}"
    if c["form"] == "two_regime":
        return (f"lat {p['latency']:.3g}, bw {p['bw_small']:.3g} < {p['x_break']:.3g} B <= "
                f"{p['bw_large']:.3g}")
    if c["form"] == "roofline":
        knee = (f" (half at {p['t_half']:.3g} rows), {p['row_s'] * 1e6:.3g} µs/row" if "t_half" in p else "")
        knee += f", {p['seq_s'] * 1e6:.3g} µs/sequence" if "seq_s" in p else ""
        return (f"fixed {p['fixed_s']:.3g} s, {100 * p['flop_fraction']:.3g}% of peak{knee}, "
                f"{100 * p['byte_fraction']:.3g}% of bandwidth")
    if c["form"] == "piecewise":
        k = len(p) // 2
        return f"{k} knots, {p['y0']:.3g} at {p['x0']:.3g} .. {p[f'y{k - 1}']:.3g} at {p[f'x{k - 1}']:.3g}"
    return f"y_max {p['y_max']:.3g}, x_half {p['x_half']:.3g}, p {p['p']:.2f}"


def format_report(r: dict) -> str:
    k = r["constants"]
    rows = [(c["name"], c["form"], _params(c), c["samples"], f"{100 * c['median_abs_rel_error']:.1f}%",
             "ok" if c["within_target"] else "ABOVE TARGET") for c in r["curves"]]
    lines = [f"wrote {r['profile']} ({r['tasks']} measurements, {r['cached_tasks']} from cache, "
             f"{r['wall_s']:.0f} s)", "",
             f"fitted curves: median |relative error| on their own samples (target <= {100 * r['target_median_abs_rel_error']:.0f}%)",
             format_table(["curve", "form", "parameters", "n", "median err", ""], rows, "lllrrl"), ""]
    peaks = ", ".join(f"{key.removeprefix('peak_flops_')} {format_si(v, 'FLOP/s')}" for key, v in k.items()
                      if key.startswith("peak_flops_"))
    lines.append(f"peak GEMM: {peaks}")
    lines.append(f"DRAM copy: {format_si(k['dram_copy_bytes_per_s'], 'B/s')} (memory_bandwidth "
                 f"{format_si(2 * k['dram_copy_bytes_per_s'], 'B/s')} read + write)")
    lines.append(f"gather, 1 core, 160 B rows of a {format_bytes(k['gather_largest_table_bytes'])} table: "
                 f"{format_si(k['gather_bytes_per_s_per_core'], 'B/s')}; threads measured: "
                 f"{', '.join(map(str, r['gather_threads']))} (up to the {r['fingerprint']['cpu_count']} cores minus "
                 f"host.engine_cores {r['engine_cores']}: more would collide with the engine)")
    for dt in r["emulated_dtypes"]:
        if "peak_flops_fp32" in k:
            lines.append(f"{dt}: emulated (no native {dt} units): ops measured in fp32; {dt} op times = fp32 op "
                         f"curves x GEMM ratio {k['peak_flops_fp32'] / k[f'peak_flops_{dt}']:.3g}")
    for key in sorted(k):
        if key.startswith("link_") and key.endswith("_bytes_per_s"):
            mode = key[5:-12]
            lines.append(f"link {mode}: {format_si(k[key], 'B/s')}, latency {format_seconds(k[f'link_{mode}_latency_s'])}")
    lines.append(f"hashing: {format_si(k['hash_tokens_per_s_per_core'], 'tokens/s')} per core "
                 f"({k['hash_indices_per_token']:.0f} indices a token)")
    lines.append(f"engine (timed in its own loop): hash call {format_seconds(k.get('hash_call_s', 0.0))}, per step "
                 f"{format_seconds(k.get('per_step_overhead_s', 0.0))} + {format_seconds(k.get('per_token_overhead_s', 0.0))}"
                 f" per token outside ops and lookups; dispatch {format_seconds(k['launch_s'])}")
    fp = r["fingerprint"]
    lines.append(f"fingerprint: {fp['cpu']}, {fp.get('gpu', 'no GPU')}, torch {fp['torch']}, "
                 f"{fp['threads']} threads, {fp['date']}")
    if r.get("warning"):
        lines.append(f"WARNING: {r['warning']}")
    return "\n".join(lines)
