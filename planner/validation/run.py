"""One validation: measure every run of the grid, simulate each with the profile, compare.

``validate(profile, ...)`` returns the ``validation.json`` dict (:mod:`planner.validation.report`)
and the artefacts for the side-by-side traces; the CLI writes files and decides the exit code.
Torch is imported only through :mod:`planner.validation.measure`, at call time.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from planner.calibration.fingerprint import CalibrationMismatchWarning, fingerprint_mismatches, same_machine
from planner.sim.run import simulate
from planner.specs import HardwareSpec
from planner.trace import Span
from planner.validation import compare, grid, report

DEFAULT_THRESHOLD = 0.10


@dataclass
class Validation:
    data: dict
    trace_run: str | None = None
    measured_spans: list[Span] = field(default_factory=list)
    simulated_spans: list[Span] = field(default_factory=list)


def validate(hw: HardwareSpec, profile: str, work_dir: str | Path, *, quick: bool = False,
             device: str = "cpu", threshold: float = DEFAULT_THRESHOLD, repeats: int | None = None,
             configs: list[grid.RunConfig] | None = None, host_mode: str = "staged",
             trace_run: str | None = None, progress: Callable[[str], None] | None = None) -> Validation:
    """Measure and simulate ``configs`` (default: the quick or full grid) on ``device``.

    Torch runs with the profile's calibration thread count (its fingerprint), so the measured
    runs see the machine as calibration did. ``trace_run``: the run exported as side-by-side
    traces (default: the first host-tier prefetch run, else the first run)."""
    import os

    from planner.validation.measure import Runner, device_fingerprint, speed_probe

    t0 = time.perf_counter()
    configs = [c.for_device(device) for c in configs] if configs is not None else grid.grid(quick, device)
    threads = hw.calibration.fingerprint.threads if hw.calibration is not None else None
    repeats = repeats or 9
    notes = [f"mismatch with the profile's calibration: {m}" for m in fingerprint_mismatches(hw)]
    here = same_machine(hw)
    if hw.calibration is None:
        notes.append("uncalibrated profile: no prediction bands (band = prediction)")
    elif hw.calibration.device != device:
        notes.append(f"profile calibrated on {hw.calibration.device}, runs measured on {device}")
    if trace_run is None:
        pick = [c for c in configs if c.prefetch and c.tier == "host"] or configs
        trace_run = pick[0].name
    quant = compare.curve_quantiles(hw)
    gemm_dtype = "fp32" if "fp32" in hw.device.flops else next(iter(hw.device.flops))
    peak = hw.device.flops[gemm_dtype]
    # The profile's gemm curve at n = 512 is what the probe should reach on a quiet machine.
    expected = peak * (compare.gemm_efficiency(hw, 2.0 * 512**3, gemm_dtype))
    load = {"loadavg_before": os.getloadavg()[0], "speed_before": speed_probe(device, threads, gemm_dtype) / expected}
    runner = Runner(work_dir, device=device, threads=threads, repeats=repeats, host_mode=host_mode)
    results, out = [], Validation({}, trace_run)
    anchors = anchor_configs(hw, device)
    try:
        for cfg in configs + list(anchors):
            runner.bundle(cfg)  # hash the corpus, write n-gram curves, fill tables: before timing
        # The anchors are interleaved with the grid: they sample the same moments of the machine.
        measured = runner.measure_all(configs + list(anchors), progress=(lambda r: progress(
            f"repetition {r}/{repeats}{' (warm-up)' if r == 0 else ''} of {len(configs)} runs"
            f" (+ {len(anchors)} drift anchors) done")) if progress else None)
        drift_runs = {anchors[cfg]: m.metrics["step_time_s"] for cfg, m in zip(configs + list(anchors), measured)
                      if cfg in anchors}
        measured = measured[:len(configs)]
        for cfg, m in zip(configs, measured):
            scen = grid.scenario(cfg, hw, str(runner.bundle(cfg).stats_path), host_mode)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", CalibrationMismatchWarning)  # reported once in notes
                sim = simulate(scen, baseline=False, trace=True)
            pred = compare.predicted_metrics(sim, scen)
            band = compare.bands(pred, sim, scen, quant)
            results.append(compare.RunResult(cfg.name, cfg.as_dict(), cfg.regime, m.metrics, pred, band))
            notes += [f"{cfg.name}: {n}" for n in m.notes]
            if cfg.name == trace_run:
                out.measured_spans, out.simulated_spans = m.spans, sim.spans
            if progress:
                e = compare.relative_error(pred["step_time_s"], m.metrics["step_time_s"])
                progress(f"{cfg.name}: step {m.metrics['step_time_s'] * 1e3:.2f} ms measured, "
                         f"{pred['step_time_s'] * 1e3:.2f} ms predicted ({e:+.1%})")
        load.update(loadavg_after=os.getloadavg()[0], speed_after=speed_probe(device, threads, gemm_dtype) / expected)
        fp = device_fingerprint(device, threads)
    finally:
        runner.close()
    summary = compare.summarise(results)
    drifted = drift(hw, [drift_runs])
    ratio = drifted["ratio"] if drifted else None
    regimes = compare.by_regime(results)
    origin = profile_origin(hw, here, load)
    if origin["foreign"]:
        notes.insert(0, origin["why"])
    out.data = report.result_dict(
        fingerprint=fp, profile=profile, results=results, summary=summary, regimes=regimes,
        weakest=compare.weakest_regime(regimes), threshold=threshold, wall_s=time.perf_counter() - t0,
        notes=notes + _load_notes(load),
        extra={"code": _code_version(), "machine_state": load, "profile_origin": origin, "device": device,
               "host_mode": host_mode,
               "drift": {**(drifted or {"ratio": None}), "controlled": compare.controlled(results, ratio)},
               "quick": quick, "repeats": repeats, "trace_run": trace_run, "band_quantile": compare.BAND_QUANTILE})
    return out


def anchor_configs(hw: HardwareSpec, device: str) -> dict:
    """``{RunConfig: calibration run name}`` of the anchor runs the profile recorded
    (``calibration.anchors``; :func:`planner.calibration.tasks.anchor_runs`); {} without."""
    if hw.calibration is None or not hw.calibration.anchors:
        return {}
    from planner.calibration.tasks import anchor_runs

    return {grid.anchor_config(r): r["name"] for r in anchor_runs(device) if r["name"] in hw.calibration.anchors}


def drift(hw: HardwareSpec, measured: list[dict[str, float]]) -> dict | None:
    """How much slower (> 1) or faster the machine runs now than when ``hw`` was calibrated:
    the median over the anchor runs (calibration's own runs, timed again interleaved with the
    grid) of their mean step time now / at calibration. ``{"ratio", "runs": {name: [now /
    then, ...]}}``; None without anchors."""
    recorded = hw.calibration.anchors if hw.calibration is not None else {}
    ratios: dict[str, list[float]] = {}
    for m in measured:
        for name, seconds in m.items():
            if recorded.get(name):
                ratios.setdefault(name, []).append(seconds / recorded[name])
    values = [v for vs in ratios.values() for v in vs]
    if not values:
        return None
    import numpy as np

    return {"ratio": float(np.median(values)), "runs": ratios}


SPEED_TOLERANCE = 0.15  # a GEMM probe this far from the profile's speed: another machine's numbers


def profile_origin(hw: HardwareSpec, same: bool | None, load: dict) -> dict:
    """Whether the profile describes this machine: calibrated here (the fingerprint's machine
    and boot) and running GEMMs at its speed now. A foreign profile's errors measure the
    difference between two machines, not the model: the report says so instead of a plain
    PASS or FAIL."""
    speed = max(load["speed_before"], load["speed_after"])
    reasons = []
    if same is False:
        reasons.append("it was calibrated on another machine (or before this machine's last boot): its "
                       f"fingerprint says {hw.calibration.fingerprint.cpu}, {hw.calibration.fingerprint.date}")
    if same is not True and abs(speed - 1.0) > SPEED_TOLERANCE:
        # Calibrated here (same machine and boot): a slow probe is load, said by _load_notes.
        reasons.append(f"this machine runs the profile's reference GEMM at {speed:.0%} of the profile's speed")
    why = ""
    if reasons:
        why = ("FOREIGN PROFILE: " + "; ".join(reasons) + ". The errors below compare this machine with the "
               "profile's, not the model with reality: run `engram-planner calibrate` here first, then validate.")
    return {"same_machine": same, "speed_ratio": speed, "foreign": bool(reasons), "why": why}


def _load_notes(load: dict) -> list[str]:
    """Say when the machine was slower than at calibration: errors then measure the load."""
    slow = min(load["speed_before"], load["speed_after"])
    if slow >= 0.85:
        return []
    return [f"the machine ran a 512-GEMM at {slow:.0%} of the speed its profile predicts (load average "
            f"{load['loadavg_before']:.1f} -> {load['loadavg_after']:.1f}): other work shares the cores, so "
            "measured times are inflated and errors here overstate the model's (docs/validation.md, Reliability)"]


def _code_version() -> str | None:
    """``git describe`` of the checkout that ran (with ``-dirty``), when there is one."""
    import subprocess

    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
