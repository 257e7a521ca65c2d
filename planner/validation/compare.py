"""Predicted vs measured: simulate each measured run, compute errors, bands and coverage.

Errors are relative, ``(predicted - measured) / measured`` (reported as absolute fractions in
the summary); a metric whose measured value is 0 (exposed time of a device-tier run, bytes of a
device-tier run) has no relative error: it is reported in the run but left out of the summary's
error statistics, and the prediction is checked to be 0 too (``zero_mismatch``).

Prediction band (docs/validation.md, "Band"): the calibrated profile keeps every fitted curve's
relative residuals at its own samples. A simulated step is a sum of spans, each priced by one
curve (an op span by ``op:<kind>``, a lookup by ``lookup:overhead``, the engine's hash by
``hash:call``, the engine's own seconds by ``step:overhead``). For each curve ``c`` the samples
give the ratio ``rho = measured / fitted`` (``1 / (1 + r)`` for a curve of seconds, ``1 + r``
for a curve of rates or efficiencies, ``r`` its relative residual); the band moves every curve
to its lower and upper ratio quantile (``q`` and ``1 - q``, default 10% / 90%) together:

    band = step_pred + [sum_c t_c x (rho_lo_c - 1), sum_c t_c x (rho_hi_c - 1)]

with ``t_c`` the predicted seconds per step that curve prices. ``step:overhead`` (a constant
fitted to residual seconds that may be near 0) moves by the absolute quantiles of its samples'
deviations instead. Moving all curves together (fully correlated errors) gives the widest such
band; it is the conservative choice for a machine whose load changes between calibration and
use. Throughput's band is the step band inverted; exposed time uses the lookup curve's
quantiles alone; bytes are counted, not timed: their band is a point.

Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.sim.metrics import SimMetrics
from planner.specs import HardwareSpec, Scenario

METRICS = ("step_time_s", "throughput_tokens_per_s", "exposed_lookup_s", "bytes_to_device")
BAND_QUANTILE = 0.10


def predicted_metrics(sim: SimMetrics, scenario: Scenario) -> dict[str, float]:
    """The simulated run's metrics under the same names and definitions as the measured ones."""
    offloaded = [l for l in scenario.model.engram_layer_ids if scenario.placement.tier_of(l) != "device"]
    steps = max(sim.steps, 1)
    return {
        "step_time_s": sim.mean_step_time_s,
        "throughput_tokens_per_s": sim.throughput_output_tokens_per_s,
        "exposed_lookup_s": sum(sim.exposed_engram_s.get(l, 0.0) for l in offloaded) / steps,
        "bytes_to_device": sim.bytes_requested.get("to_device", 0.0) / steps,
    }


def gemm_efficiency(hw: HardwareSpec, flops: float, dtype: str) -> float:
    """The profile's square-GEMM efficiency at ``flops`` (1.0 without a gemm curve)."""
    from planner.calibration.curves import profile_curves

    curve = profile_curves(hw).get(f"gemm:{dtype}")
    return float(curve.fitted(flops)) if curve is not None else 1.0


def relative_error(predicted: float, measured: float) -> float | None:
    if measured == 0:
        return None
    return (predicted - measured) / measured


# ----------------------------------------------------------------------------- bands


def _time_error_quantiles(residuals: list[float], q: float, seconds: bool = False) -> tuple[float, float]:
    """Quantiles of ``measured / fitted - 1`` of a *time*, from a curve's relative residuals
    ``r = (fitted - measured) / measured``: ``1 / (1 + r) - 1`` for a curve of seconds, ``r``
    for a curve of rates (a rate fitted ``1 + r`` times the measured one predicts ``1 / (1 + r)``
    of the time: the measurement is ``1 + r`` times the prediction)."""
    # A fit of 0 seconds at a sample (r = -1: a clipped linear curve) bounds nothing: clip it.
    r = np.maximum(np.asarray(residuals, float), -0.99)
    e = 1.0 / (1.0 + r) - 1.0 if seconds else r
    return float(np.quantile(e, q)), float(np.quantile(e, 1 - q))


def curve_quantiles(hw: HardwareSpec, q: float = BAND_QUANTILE) -> dict[str, tuple[float, float]]:
    """``{curve name: (lo, hi)}`` quantiles of ``measured / fitted - 1`` of the time each curve
    prices (``step:overhead``: absolute seconds), for a calibrated profile ({} otherwise)."""
    if hw.calibration is None:
        return {}
    out = {}
    for c in hw.calibration.curves:
        if c.name == "step:overhead":
            dev = np.asarray(c.samples_y, float) - (c.params["intercept"] + c.params["slope"] * np.asarray(c.samples_x))
            out[c.name] = (float(np.quantile(dev, q)), float(np.quantile(dev, 1 - q)))
        else:
            out[c.name] = _time_error_quantiles(c.residuals, q, seconds=c.y == "seconds")
    return out


def _op_curve(kind: str, dtype: str, quant: dict) -> str | None:
    for name in (f"op:{kind}:{dtype}", f"op:{kind}"):
        if name in quant:
            return name
    matches = [n for n in quant if n.startswith(f"op:{kind}:")]
    return matches[0] if matches else None


def _hc(kind: str, quant: dict, dtype: str) -> str | None:
    """The op curve of ``kind`` or of its hyper-connection twin."""
    return _op_curve(kind, dtype, quant) or _op_curve(kind + "+hc", dtype, quant)


def step_shares(sim: SimMetrics, scenario: Scenario, quant: dict) -> dict[str, float]:
    """Seconds per step each calibration curve prices (from the simulation's spans)."""
    model = scenario.model
    dtype = model.dtype
    att = f"attention:{model.attention.kind}"
    ffn_kind = {f"ffn_L{i}": "ffn:moe" if model.is_moe_layer(i) else "ffn:dense" for i in range(model.n_layers)}
    out: dict[str, float] = {}
    steps = max(sim.steps, 1)
    lookup = "lookup:overhead" if "lookup:overhead" in quant else None
    for s in sim.spans:
        name = s.name
        if name.startswith("attn_L"):
            curve = _hc(att, quant, dtype)
        elif name.startswith("ffn_L"):
            curve = _hc(ffn_kind[name], quant, dtype)
        elif name.startswith("engram_L"):
            curve = _op_curve("engram", dtype, quant)
        elif name in ("embed", "head"):
            curve = _hc(name, quant, dtype)
        elif name.startswith("gather_L"):  # a device tier's in-layer gather is an op
            curve = _op_curve("engram:gather", dtype, quant) if s.track.endswith("compute") else lookup
        elif name == "hash":
            curve = "hash:call" if "hash:call" in quant else None
        elif name == "overhead":
            curve = "step:overhead" if "step:overhead" in quant else None
        else:
            curve = None
        if curve is not None:
            out[curve] = out.get(curve, 0.0) + s.dur_s / steps
    return out


def bands(pred: dict[str, float], sim: SimMetrics, scenario: Scenario, quant: dict) -> dict[str, list[float]]:
    """``{metric: [lo, hi]}`` for one run (see the module doc)."""
    if not quant:
        return {m: [v, v] for m, v in pred.items()}
    shares = step_shares(sim, scenario, quant)
    step = pred["step_time_s"]
    lo = hi = 0.0
    for curve, sec in shares.items():
        a, b = quant[curve]
        if curve == "step:overhead":
            lo, hi = lo + a, hi + b
        else:
            lo, hi = lo + sec * a, hi + sec * b
    step_lo, step_hi = max(step + lo, 0.0), step + hi
    out = {"step_time_s": [step_lo, step_hi]}
    tput = pred["throughput_tokens_per_s"]
    out["throughput_tokens_per_s"] = [tput * step / step_hi if step_hi > 0 else tput,
                                      tput * step / step_lo if step_lo > 0 else tput]
    exp = pred["exposed_lookup_s"]
    a, b = quant.get("lookup:overhead", (0.0, 0.0))
    out["exposed_lookup_s"] = [max(exp * (1 + a), 0.0), exp * (1 + b)] if exp > 0 else [0.0, 0.0]
    out["bytes_to_device"] = [pred["bytes_to_device"], pred["bytes_to_device"]]
    return out


@dataclass(frozen=True)
class RunResult:
    name: str
    config: dict
    regime: dict[str, str]
    measured: dict[str, float]
    predicted: dict[str, float]
    band: dict[str, list[float]]

    def error(self, metric: str) -> float | None:
        return relative_error(self.predicted[metric], self.measured[metric])

    def inside(self, metric: str) -> bool:
        lo, hi = self.band[metric]
        m = self.measured[metric]
        return lo <= m <= hi

    def as_dict(self) -> dict:
        errors = {m: self.error(m) for m in METRICS}
        return {"name": self.name, "config": self.config, "regime": self.regime, "measured": self.measured,
                "predicted": self.predicted, "band": self.band, "error": errors}


def drift_out_errors(runs: list[tuple[str, float, float]], ratio: float) -> dict[str, float]:
    """``{name: error}`` of each ``(name, predicted, measured)`` step time with the prediction
    scaled by the machine's drift ``ratio`` (runs measured as 0 left out)."""
    return {name: relative_error(pred * ratio, meas) for name, pred, meas in runs if meas > 0}


def controlled(results: list[RunResult], ratio: float | None) -> dict[str, float | None] | None:
    """Step-time errors with every prediction scaled by the machine's drift (``ratio``): the
    model's transfer from calibration's shapes to the grid's, the machine's change of speed
    since calibration taken out. ``median_abs_error``, ``p90_abs_error``, ``runs`` and
    ``per_run`` (``{run name: signed error}``: which runs the model itself gets wrong); None
    without a drift measurement."""
    if ratio is None:
        return None
    per_run = drift_out_errors([(r.name, r.predicted["step_time_s"], r.measured["step_time_s"]) for r in results],
                               ratio)
    errs = [abs(e) for e in per_run.values()]
    return {"median_abs_error": float(np.median(errs)) if errs else None,
            "p90_abs_error": float(np.percentile(errs, 90)) if errs else None, "runs": len(errs),
            "per_run": per_run}


def summarise(results: list[RunResult]) -> dict[str, dict[str, float | None]]:
    """Per metric: median and p90 of |relative error| over runs where it is defined, the
    share of runs whose measurement falls inside the band (coverage; None for a point prediction)
    and the band's median half-width relative to the prediction (a wide band covers easily: read
    the two together)."""
    out = {}
    for m in METRICS:
        errs = [abs(e) for e in (r.error(m) for r in results) if e is not None]
        cover = [r.inside(m) for r in results if r.measured[m] != 0]
        widths = [(r.band[m][1] - r.band[m][0]) / (2 * r.predicted[m]) for r in results
                  if r.measured[m] != 0 and r.predicted[m] > 0]
        # A point prediction (every band of zero width: bytes moved) has no coverage to report:
        # "0%" would read as a band that missed every run.
        point = bool(widths) and max(widths) == 0.0
        out[m] = {
            "median_abs_error": float(np.median(errs)) if errs else None,
            "p90_abs_error": float(np.percentile(errs, 90)) if errs else None,
            "coverage": float(np.mean(cover)) if cover and not point else None,
            "band_half_width": float(np.median(widths)) if widths else None,
            "runs": len(errs),
        }
    return out


def by_regime(results: list[RunResult], metric: str = "step_time_s") -> dict[str, dict[str, dict]]:
    """``{dimension: {label: {"median_abs_error", "runs"}}}``: errors grouped by regime."""
    out: dict[str, dict[str, dict]] = {}
    for r in results:
        e = r.error(metric)
        if e is None:
            continue
        for dim, label in r.regime.items():
            out.setdefault(dim, {}).setdefault(label, []).append(abs(e))
    return {dim: {label: {"median_abs_error": float(np.median(v)), "max_abs_error": float(np.max(v)), "runs": len(v)}
                  for label, v in sorted(groups.items())} for dim, groups in out.items()}


def weakest_regime(regimes: dict[str, dict[str, dict]]) -> dict | None:
    """The (dimension, label) group with the largest median |step error|, single-run groups
    included (a regime the grid samples once can still be the one the model gets wrong; its
    ``runs`` says how much evidence there is)."""
    cands = [(g["median_abs_error"], g["runs"], dim, label) for dim, groups in regimes.items()
             for label, g in groups.items()]
    if not cands:
        return None
    err, runs, dim, label = max(cands)
    return {"dimension": dim, "label": label, "median_abs_error": err, "runs": runs}
