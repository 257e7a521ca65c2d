"""Calibration: measure this machine with the reference model, fit a few interpretable curves,
and write a hardware profile the simulator trusts (docs/calibration.md).

Torch-free on import: ``measure`` (and ``measure_ops``) need torch and are imported only by the
``calibrate`` command. The rest reads, fits and uses profiles.
"""

from planner.calibration.fit import Fit, fit_latency_bandwidth, fit_linear, fit_saturating
from planner.calibration.profile import (
    OP_KINDS,
    CalibratedEfficiency,
    CalibrationMismatchWarning,
    CurveView,
    current_environment,
    fingerprint_mismatches,
    profile_curves,
    warn_if_mismatched,
)

__all__ = [
    "OP_KINDS",
    "CalibratedEfficiency",
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
