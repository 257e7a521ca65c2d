"""Calibration: measure this machine with the reference model, fit a few interpretable curves,
and write a hardware profile the simulator trusts (docs/calibration.md).

Torch-free on import: ``measure`` and ``measure_engine`` need torch and are
imported only by the ``calibrate`` command. The rest reads, fits and compares profiles; the cost
model reads them through :class:`planner.efficiency.CalibratedEfficiency`.
"""

from planner.calibration.curves import OP_KINDS, CurveView, profile_curves
from planner.calibration.fingerprint import (
    CalibrationMismatchWarning,
    current_environment,
    fingerprint_mismatches,
    warn_if_mismatched,
)
from planner.calibration.fit import Fit, fit_latency_bandwidth, fit_linear, fit_saturating

__all__ = [
    "OP_KINDS",
    "CalibrationMismatchWarning",
    "CurveView",
    "Fit",
    "current_environment",
    "fingerprint_mismatches",
    "fit_latency_bandwidth",
    "fit_linear",
    "fit_saturating",
    "profile_curves",
    "warn_if_mismatched",
]
