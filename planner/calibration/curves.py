"""A calibrated profile's curves as values for plots and reports (torch-free).

:func:`profile_curves` turns ``hw.calibration`` into :class:`CurveView` values: samples, the
fitted function where it is one of x alone, and the fit's prediction at every sample (the
residuals' complement), which is what a multi-input curve (an op's roofline) can show.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.calibration.fit import Fit
from planner.specs import HardwareSpec
from planner.specs.hardware import CurveFit

# Op kinds of the cost model (``Work.kind``) that a calibration measures; curve "op:<kind>".
# Attention and FFN kinds of a model with hyper-connections end in "+hc" (``attention:mla+hc``).
OP_KINDS = ("attention:mla", "attention:gqa", "ffn:dense", "ffn:moe", "engram", "embed", "head")

_X_LABELS = {"flops": "FLOP per op", "bytes": "bytes", "rows": "rows per batch",
             "tokens": "tokens per call", "layers": "layers", "table_bytes": "table bytes",
             "indices": "indices per call", "seconds": "seconds"}
# The SI unit of each axis quantity ("" for counts and fractions), for plots that pick a prefix.
_UNITS = {"flops": "FLOP", "bytes": "B", "table_bytes": "B", "seconds": "s", "flop_per_s": "FLOP/s",
          "bytes_per_s": "B/s", "tokens_per_s": "tok/s"}
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
    residuals: np.ndarray
    x_unit: str = ""
    y_unit: str = ""

    @property
    def is_function(self) -> bool:
        """Whether the fit is a function of x alone (a roofline also reads bytes and tokens)."""
        return self.fit.form != "roofline"

    def fitted(self, x) -> np.ndarray:
        """The fitted curve at ``x`` (array in, array out; same units as the samples); only
        where :attr:`is_function`."""
        return self.fit(np.asarray(x, dtype=float))

    @property
    def predicted(self) -> np.ndarray:
        """The fit at each sample: ``measured x (1 + residual)``."""
        return self.samples_y * (1.0 + self.residuals)

    @staticmethod
    def of(curve: CurveFit) -> "CurveView":
        return CurveView(curve.name, curve.description, _X_LABELS[curve.x], _Y_LABELS[curve.y],
                         np.asarray(curve.samples_x, float), np.asarray(curve.samples_y, float),
                         curve.median_abs_rel_error, Fit(curve.form, dict(curve.params)),
                         np.asarray(curve.residuals, float), _UNITS.get(curve.x, ""), _UNITS.get(curve.y, ""))


def profile_curves(hw: HardwareSpec) -> dict[str, CurveView]:
    """``{name: CurveView}`` of a calibrated profile, in the profile's order; ``{}`` otherwise."""
    if hw.calibration is None:
        return {}
    return {c.name: CurveView.of(c) for c in hw.calibration.curves}
