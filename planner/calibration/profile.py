"""Calibrated profiles: reading their curves, using them in the cost model, checking where they
came from. Torch-free (``measure.py`` is the only torch user, imported by the CLI alone).

* :func:`profile_curves` turns ``hw.calibration`` into :class:`CurveView` values for plots;
* :class:`CalibratedEfficiency` is the cost model's :class:`planner.costmodel.Efficiency` for a
  calibrated profile (picked automatically by ``CostModel`` when ``hw.calibration`` is present);
* :func:`fingerprint_mismatches` / :func:`warn_if_mismatched` compare a profile's fingerprint
  with the running environment (HARDWARE.md: engine and kernel versions move predictions by
  large factors, so say so when they differ).
"""

from __future__ import annotations

import glob
import warnings
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from planner.calibration.fit import Fit, bandwidth_of
from planner.costmodel import Efficiency, Number
from planner.specs import HardwareSpec
from planner.specs.hardware import CurveFit

# Op kinds of the cost model (``Work.kind``) that a calibration measures; curve "op:<kind>".
# Attention and FFN kinds of a model with hyper-connections end in "+hc" (``attention:mla+hc``).
OP_KINDS = ("attention:mla", "attention:gqa", "ffn:dense", "ffn:moe", "engram", "embed", "head")

_X_LABELS = {"flops": "FLOP per op", "bytes": "bytes", "rows": "rows per batch",
             "tokens": "tokens per call", "layers": "layers"}
_Y_LABELS = {"efficiency": "fraction of peak", "flop_per_s": "FLOP/s", "bytes_per_s": "bytes/s",
             "tokens_per_s": "tokens/s", "seconds": "seconds"}


# ----------------------------------------------------------------------------- curve views


@dataclass(frozen=True)
class CurveView:
    """One calibration curve for display: raw samples, the fitted function, its error."""

    name: str
    description: str
    x_label: str
    y_label: str
    samples_x: np.ndarray
    samples_y: np.ndarray
    median_abs_rel_error: float
    fit: Fit

    def fitted(self, x) -> np.ndarray:
        """The fitted curve at ``x`` (array in, array out; same units as the samples)."""
        return self.fit(np.asarray(x, dtype=float))

    @staticmethod
    def of(curve: CurveFit) -> "CurveView":
        return CurveView(curve.name, curve.description, _X_LABELS[curve.x], _Y_LABELS[curve.y],
                         np.asarray(curve.samples_x, float), np.asarray(curve.samples_y, float),
                         curve.median_abs_rel_error, Fit(curve.form, dict(curve.params)))


def profile_curves(hw: HardwareSpec) -> dict[str, CurveView]:
    """``{name: CurveView}`` of a calibrated profile, in the profile's order; ``{}`` otherwise."""
    if hw.calibration is None:
        return {}
    return {c.name: CurveView.of(c) for c in hw.calibration.curves}


# ----------------------------------------------------------------------------- cost model


class CalibratedEfficiency(Efficiency):
    """Fitted curves in place of the constant fractions of a datasheet preset.

    Models: each op kind the calibration measured (``op:<kind>:<dtype>`` curves: the reference
    model's real modules timed at several shapes) reaches ``eff(x)`` of the profile's peak, a
    saturating curve of the op's FLOPs (bytes for ``embed``, which has none). The measured time
    includes launch, dispatch and Python costs, so for those kinds the separate per-kernel
    launch term is zero and the HBM term is a plain floor at the measured bandwidth. Other work
    (kinds not measured, sums of ops) uses the ``gemm:<dtype>`` curve, else the profile's
    constant fractions.

    Past the largest FLOPs an op curve was measured at, the curve is not extrapolated: the op
    costs what it cost at that largest sample (its fixed overheads included) plus the extra FLOPs
    at the ``gemm:<dtype>`` curve's efficiency (a wider model's op is its GEMMs growing, not its
    dispatch; a flat extrapolation of a curve fitted on tiny ops charged them the tiny ops'
    overhead share, up to 3x too slow in ``engram-planner validate``).

    Host<->device copies (``link_copy``): a ``link:memcpy`` (CPU device) or
    ``link:<direction>_pinned`` curve gives the bandwidth of a copy of that size relative to the
    profile's line rate (the largest copies' bandwidth), so a two-regime copy is charged the
    regime its size falls in; the fixed latency stays ``link.latency``.

    Simplifies: an op's efficiency depends on its FLOPs only (not on which shape produced them);
    a backward pass (2x FLOPs) reads the same curve further out. A kind measured only in another
    dtype is assumed to reach the same FLOP/s there (its efficiency is rescaled by the peaks),
    except in a dtype the device emulates (``calibration.emulated_dtypes``, e.g. bf16 on a CPU
    without bf16 units): there it reaches the same fraction of that dtype's measured GEMM peak,
    i.e. the fp32 op times scaled by the ratio of the two GEMM peaks.
    """

    def __init__(self, hw: HardwareSpec, dtype: str | None = None):
        super().__init__(hw.efficiency)
        assert hw.calibration is not None
        self.dtype = dtype
        peaks = hw.device.flops
        here = hw.device.flops_for(dtype) if dtype else None
        self.ops: dict[str, tuple[Fit, str, float]] = {}
        self.op_x_max: dict[str, float] = {}  # largest measured x of each op curve
        self.gemm: tuple[Fit, str, float] | None = None
        self.gemm_rows: tuple[Fit, str, float] | None = None
        self.lookup_fit: Fit | None = None  # lookup:overhead, seconds vs rows
        self.links: dict[str, tuple[Fit, float]] = {}  # direction -> (curve, profile line rate)
        lines = {"h2d": hw.link.h2d_bandwidth, "d2h": hw.link.d2h_bandwidth}
        emulated = dtype in hw.calibration.emulated_dtypes
        for c in hw.calibration.curves:
            # Same dtype first; otherwise the same FLOP/s: scale = peak(curve dtype) / peak(here);
            # an emulated dtype instead the same fraction of its own (measured) GEMM peak.
            exact = c.dtype is None or dtype is None or c.dtype == dtype
            scale = 1.0 if exact or emulated or c.dtype not in peaks or here is None else peaks[c.dtype] / here
            entry = (Fit(c.form, dict(c.params)), c.x, scale)
            if c.name.startswith("op:"):
                kind = c.name[3:].rsplit(":", 1)[0] if c.dtype else c.name[3:]
                if exact or kind not in self.ops:
                    self.ops[kind] = entry
                    self.op_x_max[kind] = max(c.samples_x)
            elif c.name.startswith("gemm:") and (exact or self.gemm is None):
                self.gemm = entry
            elif c.name.startswith("gemm_rows:") and (exact or self.gemm_rows is None):
                self.gemm_rows = entry
            elif c.name == "lookup:overhead":
                self.lookup_fit = entry[0]
            elif c.name == "link:memcpy":
                self.links = {d: (entry[0], line) for d, line in lines.items()}
            elif c.name in ("link:h2d_pinned", "link:d2h_pinned"):
                self.links[c.name[5:8]] = (entry[0], lines[c.name[5:8]])

    def matmul(self, flops: Number, bytes_: Number) -> Number:
        if self.gemm is None:
            return self.spec.matmul
        fit, _, scale = self.gemm
        return fit(np.maximum(flops, 1.0)) * scale

    def _kind(self, kind: str) -> str:
        """The curve a kind reads: its own; for a hyper-connection-wrapped sublayer
        (``...+hc``) measured only bare, the bare sublayer's (the wrapper's cost then missing),
        and the other way round."""
        if kind in self.ops:
            return kind
        other = kind[:-3] if kind.endswith("+hc") else kind + "+hc"
        return other if other in self.ops else kind

    def op_matmul(self, flops: Number, bytes_: Number, kind: str) -> Number:
        kind = self._kind(kind)
        op = self.ops.get(kind)
        if op is None:
            return self.matmul(flops, bytes_)
        fit, axis, scale = op
        if axis != "flops":
            return _ONE
        flops = np.maximum(flops, 1.0)
        x_max = self.op_x_max[kind]
        inside = fit(np.minimum(flops, x_max)) * scale
        # Beyond the samples: time(x) = time(x_max) + (x - x_max) / (peak x gemm efficiency).
        extra = np.maximum(flops - x_max, 0.0)
        beyond = flops / (np.minimum(flops, x_max) / inside + extra / self.matmul(flops, bytes_))
        return np.where(flops > x_max, beyond, inside)

    def op_memory(self, bytes_: Number, kind: str) -> Number:
        op = self.ops.get(self._kind(kind))
        if op is None:
            return self.memory(bytes_)
        fit, axis, _ = op
        return fit(np.maximum(bytes_, 1.0)) if axis == "bytes" else _ONE

    def launch(self, kernels: Number, launch_s: float, kind: str) -> Number:
        return 0.0 * kernels if self._kind(kind) in self.ops else kernels * launch_s

    def link_copy(self, bytes_: Number, direction: str) -> Number:
        if direction not in self.links:
            return self.link(bytes_)
        fit, line = self.links[direction]
        return bandwidth_of(fit, bytes_) / line

    def lookup(self, rows: Number) -> Number:
        """The ``lookup:overhead`` line (seconds vs rows), never negative; 0 without it."""
        if self.lookup_fit is None:
            return 0.0 * rows
        return np.maximum(self.lookup_fit(np.asarray(rows, float)), 0.0)

    def rows(self, tokens: Number, kind: str) -> Number:
        """The ``gemm_rows:<dtype>`` curve: efficiency of a GEMM with ``tokens`` rows and
        memory-resident weights (1.0, no ceiling, when the profile has none)."""
        if self.gemm_rows is None:
            return _ONE
        fit, _, scale = self.gemm_rows
        return fit(np.maximum(tokens, 1.0)) * scale


_ONE = 1.0


# ----------------------------------------------------------------------------- fingerprint


class CalibrationMismatchWarning(UserWarning):
    """A calibrated profile is used with software or hardware it was not measured on."""


def current_environment() -> dict[str, str | None]:
    """What can be detected here without importing torch: CPU model, torch version (from the
    installed package's metadata), GPU model (from the NVIDIA driver's /proc entries)."""
    from planner.bench import _cpu_model

    try:
        torch_version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        torch_version = None
    gpu = None
    for info in sorted(glob.glob("/proc/driver/nvidia/gpus/*/information")):
        try:
            with open(info) as f:
                for line in f:
                    if line.startswith("Model:"):
                        gpu = line.split(":", 1)[1].strip()
                        break
        except OSError:
            continue
        if gpu:
            break
    return {"cpu": _cpu_model(), "torch": torch_version, "gpu": gpu}


def _major_minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = version.split("+")[0].split(".")
    return ".".join(parts[:2])


def fingerprint_mismatches(hw: HardwareSpec, env: dict | None = None) -> list[str]:
    """Differences between a calibrated profile's fingerprint and this environment, compared
    only where both sides are known: torch major.minor, CPU model, and (CUDA profiles, when a
    GPU is visible) GPU model. Empty for uncalibrated profiles."""
    if hw.calibration is None:
        return []
    fp, env = hw.calibration.fingerprint, env if env is not None else current_environment()
    out = []
    have, want = _major_minor(env.get("torch")), _major_minor(fp.torch)
    if have and want and have != want:
        out.append(f"torch {want} when calibrated, {have} here")
    if env.get("cpu") and fp.cpu and env["cpu"] != fp.cpu:
        out.append(f"CPU {fp.cpu!r} when calibrated, {env['cpu']!r} here")
    if hw.calibration.device == "cuda" and env.get("gpu") and fp.gpu and env["gpu"] not in fp.gpu and fp.gpu not in env["gpu"]:
        out.append(f"GPU {fp.gpu!r} when calibrated, {env['gpu']!r} here")
    return out


def warn_if_mismatched(hw: HardwareSpec, env: dict | None = None) -> list[str]:
    """Warn (``CalibrationMismatchWarning``) when :func:`fingerprint_mismatches` finds any;
    never raises. Returns the mismatches."""
    try:
        found = fingerprint_mismatches(hw, env)
    except Exception as exc:  # detection must never stop a prediction
        found = []
        warnings.warn(f"could not check the calibration fingerprint of {hw.name!r}: {exc}",
                      CalibrationMismatchWarning, stacklevel=3)
    if found:
        warnings.warn(
            f"hardware profile {hw.name!r} was calibrated on different software/hardware "
            f"({'; '.join(found)}; calibrated {hw.calibration.fingerprint.date}): its fitted curves "
            "may not hold here. Re-run `engram-planner calibrate` on the machine you predict for.",
            CalibrationMismatchWarning, stacklevel=3,
        )
    return found
