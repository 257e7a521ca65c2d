"""Curve forms and their fits: the few interpretable shapes every calibration curve takes.

* ``saturating``: ``y = y_max / (1 + (x_half / x)^p)``. A rate (FLOP/s, bytes/s, tokens/s) or an
  efficiency that grows with the size ``x`` of the work and levels off at ``y_max``; at
  ``x = x_half`` it reaches half of it. With ``p = 1`` it is exactly the latency-bandwidth model
  ``time = x / y = latency + x / y_max`` with ``latency = x_half / y_max`` (Hockney 1994), so a
  fixed launch or Python cost per op is part of the curve, not a separate constant. ``p`` lets
  the knee be sharper (cache and vector-width effects) or softer than that.
* ``linear``: ``y = intercept + slope * x`` (a step's fixed cost plus a cost per layer).
* ``two_regime``: a copy whose per-byte rate changes at a size: ``time = latency + x / bw_small``
  below ``x_break``, ``latency + x / bw_large`` from it on (the rate ``y = x / time``; one fixed
  cost, two bandwidths, a step at the breakpoint, which lies halfway (geometrically) between
  the two samples it separates). A CPU ``memcpy`` has two: caches and page-mapping costs
  below a few MiB, streaming stores beyond. :func:`fit_link` picks it over the one-line
  latency-bandwidth law only when that law does not suffice and the data pay for the two extra
  parameters (BIC).

Saturating curves are fitted in log space (``log y``), so every sample weighs by its *relative*
error whatever its magnitude, which is the error the calibrate command reports. All functions
take and return numpy arrays (SI units); torch is not needed here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Knee sharpness allowed for saturating fits. Negative p turns the curve over: a rate that falls
# past x_half (work spilling out of a cache), y_max being then the small-size rate.
P_BOUNDS = (-4.0, 4.0)


@dataclass(frozen=True)
class Fit:
    """A fitted curve: ``form`` and ``params``; call it on an array of x."""

    form: str
    params: dict[str, float]

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        if self.form == "saturating":
            return saturating(x, **self.params)
        if self.form == "linear":
            return self.params["intercept"] + self.params["slope"] * x
        if self.form == "two_regime":
            return two_regime(x, **self.params)
        if self.form == "piecewise":
            return piecewise(x, self.params)
        raise ValueError(f"a {self.form!r} curve is not a function of x alone")


def saturating(x, y_max: float, x_half: float, p: float) -> np.ndarray:
    x = np.maximum(np.asarray(x, dtype=float), 1e-300)
    return y_max / (1.0 + (x_half / x) ** p)


def two_regime(x, latency: float, bw_small: float, bw_large: float, x_break: float) -> np.ndarray:
    """Rate ``x / (latency + x / bw)`` with ``bw = bw_small`` below ``x_break``, else ``bw_large``."""
    x = np.maximum(np.asarray(x, dtype=float), 1e-300)
    return x / (latency + x / np.where(x < x_break, bw_small, bw_large))


def piecewise(x, params: dict[str, float]) -> np.ndarray:
    """Linear in ``log x`` between the knots ``(x0, y0), (x1, y1), ...`` (ascending x), flat
    beyond the first and the last."""
    k = len(params) // 2
    xs = np.log([params[f"x{i}"] for i in range(k)])
    ys = np.array([params[f"y{i}"] for i in range(k)])
    return np.interp(np.log(np.maximum(np.asarray(x, dtype=float), 1e-300)), xs, ys)


def piecewise_params(xs, ys) -> dict[str, float]:
    """Knots as the ``piecewise`` form's params (sorted by x; equal x averaged)."""
    xs, ys = np.asarray(xs, float), np.asarray(ys, float)
    out: dict[str, float] = {}
    for i, x in enumerate(np.unique(xs)):
        out[f"x{i}"] = float(x)
        out[f"y{i}"] = float(np.mean(ys[xs == x]))
    return out


def roofline_seconds(params: dict[str, float], flops, bytes_, tokens, peak: float, bandwidth: float,
                     seqs=0.0) -> np.ndarray:
    """Seconds of the ``roofline`` form: ``fixed_s + row_s x tokens + seq_s x seqs + max(flops /
    rate, bytes / byte rate)`` with ``byte rate = bandwidth x byte_fraction`` and ``rate = peak x
    flop_fraction x tokens / (tokens + t_half)``: the few-row knee (a GEMM of few rows cannot
    fill the register tiles and threads that reach the peak; half the fitted rate at ``t_half``
    rows). ``row_s``: the per-row seconds outside the roofline, the row-wise work around an op's
    GEMMs (norms, activations, the residual adds) that neither FLOPs at the GEMM rate nor bytes
    at the bandwidth describe. ``seq_s``: the per-sequence seconds, work scheduled once per
    sequence whatever its rows (a decode step's attention core is one small problem per sequence
    and head; a prefill's one per prompt); a decode step has one row a sequence, so ``row_s +
    seq_s`` is what a decode row costs beyond the roofline and ``row_s`` what a prefill row does.
    Profiles fitted before ``seq_s`` (``MEASURE_VERSION`` < 10) have none; before ``row_s`` and
    ``t_half`` (three numbers, priced with the ``gemm_rows`` ceiling) they are evaluated by
    :class:`planner.efficiency.CalibratedEfficiency`."""
    flops, bytes_ = np.asarray(flops, float), np.asarray(bytes_, float)
    tokens = np.asarray(tokens, float)
    frac = params["flop_fraction"] * few_row_knee(tokens, params["t_half"])
    return (params["fixed_s"] + params["row_s"] * tokens + params.get("seq_s", 0.0) * np.asarray(seqs, float)
            + np.maximum(flops / (peak * frac), bytes_ / (bandwidth * params["byte_fraction"])))


def few_row_knee(tokens, t_half: float):
    """The share of a roofline's FLOP rate an op of ``tokens`` rows reaches: ``rows / (rows +
    t_half)``, rows at least 1 (a float for a float: the simulator prices one op at a time)."""
    if isinstance(tokens, (int, float)):
        rows = max(float(tokens), 1.0)
    else:
        rows = np.maximum(np.asarray(tokens, float), 1.0)
    return rows / (rows + t_half)


ROOFLINE_PARAMS = ("fixed_s", "flop_fraction", "byte_fraction", "row_s", "t_half", "seq_s")


def fit_roofline(flops, bytes_, tokens, seconds, peak: float, bandwidth: float, weights=None, seqs=None) -> Fit:
    """Weighted least squares of ``log seconds`` (relative error) over the six ``roofline``
    numbers (:func:`roofline_seconds`), each rate at most its ceiling (fractions in (1e-5, 1]),
    the fixed cost in [1e-8, 1] s, ``row_s`` in [1e-12, 1e-3] s, ``seq_s`` in [1e-12, 1e-2] s and
    ``t_half`` in [1e-3, 1e4] rows. The max() makes the objective piecewise smooth: several
    starts of the plain roofline (no per-row or per-sequence cost, no knee), then the best one
    refined with all three. ``seqs`` None: one sequence a row (no prefill samples)."""
    flops, bytes_, seconds = (np.asarray(v, float) for v in (flops, bytes_, seconds))
    tokens = np.asarray(tokens, float)
    seqs = tokens if seqs is None else np.asarray(seqs, float)
    w = np.sqrt(np.ones_like(seconds) if weights is None else np.asarray(weights, float))
    lt = np.log(seconds)

    def unpack(theta):
        return dict(zip(ROOFLINE_PARAMS, (float(v) for v in np.exp(theta))))

    def resid(theta):
        return w * (np.log(roofline_seconds(unpack(theta), flops, bytes_, tokens, peak, bandwidth, seqs)) - lt)

    lower = np.log([1e-8, 1e-5, 1e-5, 1e-12, 1e-3, 1e-12])
    upper = np.log([1.0, 1.0, 1.0, 1e-3, 1e4, 1e-2])
    solve = _least_squares()
    best = None
    for fixed0 in (0.1, 0.5, 0.9):
        for flop0 in (0.02, 0.2, 0.9):
            for byte0 in (0.05, 0.3, 0.9):
                guess = np.log([max(float(seconds.min()) * fixed0, 1e-8), flop0, byte0, 1e-12, 1e-3, 1e-12])
                sol = solve(resid, guess, bounds=(lower, upper), method="trf")
                if best is None or sol.cost < best.cost:
                    best = sol
    start = np.exp(best.x)
    for row0 in (1e-9, 1e-7):
        for knee0 in (4.0, 32.0):
            sol = solve(resid, np.log([start[0], start[1], start[2], row0, knee0, row0]), bounds=(lower, upper),
                        method="trf")
            if sol.cost < best.cost:
                best = sol
    return Fit("roofline", unpack(best.x))


def bandwidth_of(fit: Fit, x) -> np.ndarray:
    """The per-byte rate of a link curve at size ``x``, its fixed latency aside: ``y_max`` of a
    ``p = 1`` saturating curve, the regime's bandwidth of a two-regime one."""
    x = np.asarray(x, dtype=float)
    if fit.form == "two_regime":
        return np.where(x < fit.params["x_break"], fit.params["bw_small"], fit.params["bw_large"])
    return fit.params["y_max"] + 0.0 * x


def relative_residuals(fit: Fit, x, y) -> np.ndarray:
    """``(fitted - measured) / measured`` per sample."""
    y = np.asarray(y, dtype=float)
    return (fit(x) - y) / y


def median_abs_rel_error(fit: Fit, x, y) -> float:
    return float(np.median(np.abs(relative_residuals(fit, x, y))))


def fit_saturating(x, y, p: float | None = None) -> Fit:
    """Least squares of ``log y`` over ``(log y_max, log x_half, p)``; ``p`` fixed if given.

    Several starts (knees at quantiles of x, rising and falling) guard against the flat valley where all samples lie
    on one side of the knee (then only ``y_max / x_half^p`` or only ``y_max`` is determined and
    any knee beyond the samples fits equally well: the fit keeps the knee within 1e4x of them).
    """
    x, y = _clean(x, y)
    if len(x) == 1:
        return Fit("saturating", {"y_max": float(y[0]) * 2.0, "x_half": float(x[0]), "p": p or 1.0})
    lx, ly = np.log(x), np.log(y)
    lo_h, hi_h = lx.min() - np.log(1e4), lx.max() + np.log(1e4)
    lo_m, hi_m = ly.min() - np.log(2.0), ly.max() + np.log(1e4)

    def unpack(theta):
        log_ymax, log_xhalf = theta[0], theta[1]
        return log_ymax, log_xhalf, (theta[2] if p is None else p)

    def resid(theta):
        log_ymax, log_xhalf, q = unpack(theta)
        # log y_fit = log y_max - log(1 + exp(q (log x_half - log x))), computed stably
        return log_ymax - np.logaddexp(0.0, q * (log_xhalf - lx)) - ly

    best = None
    for frac, p0 in ((0.1, 1.0), (0.5, 1.0), (0.9, 1.0), (0.5, -1.0)):
        guess = [min(max(ly.max() + np.log(1.5), lo_m), hi_m), float(np.quantile(lx, frac))]
        lower, upper = [lo_m, lo_h], [hi_m, hi_h]
        if p is None:
            guess.append(p0)
            lower.append(P_BOUNDS[0])
            upper.append(P_BOUNDS[1])
        sol = _least_squares()(resid, guess, bounds=(lower, upper), method="trf", x_scale="jac")
        if best is None or sol.cost < best.cost:
            best = sol
    log_ymax, log_xhalf, q = unpack(best.x)
    return Fit("saturating", {"y_max": float(np.exp(log_ymax)), "x_half": float(np.exp(log_xhalf)), "p": float(q)})


def fit_latency_bandwidth(bytes_, seconds) -> Fit:
    """``time = latency + bytes / bandwidth`` as a saturating rate curve with ``p = 1``
    (``y_max`` = bandwidth, ``x_half`` = latency x bandwidth); fitted on relative error."""
    x, t = _clean(bytes_, seconds)
    return fit_saturating(x, x / t, p=1.0)


def latency_of(fit: Fit) -> float:
    """The fixed time of a link curve: ``x_half / y_max`` of a ``p = 1`` saturating rate curve,
    ``latency`` of a two-regime one."""
    if fit.form == "two_regime":
        return fit.params["latency"]
    return fit.params["x_half"] / fit.params["y_max"]


def fit_two_regime(bytes_, seconds) -> Fit:
    """``time = latency + bytes / bw`` with one ``bw`` below a breakpoint and another above,
    least squares of ``log rate`` (relative error) for every split of the sorted sizes that
    leaves at least two samples on each side; the best split wins."""
    x, t = _clean(bytes_, seconds)
    order = np.argsort(x)
    x, t = x[order], t[order]
    lr = np.log(x / t)
    best, best_cost = None, np.inf
    for k in range(2, len(x) - 1):
        x_break = float(np.sqrt(x[k - 1] * x[k]))
        small = x < x_break

        def resid(theta):
            lat, bw_s, bw_l = np.exp(theta)
            return np.log(x / (lat + x / np.where(small, bw_s, bw_l))) - lr

        r_lo, r_hi = x[:k] / t[:k], x[k:] / t[k:]
        guess = np.log([max(float(t.min()) * 0.5, 1e-9), float(r_lo.max()), float(np.median(r_hi))])
        sol = _least_squares()(resid, guess, method="trf", x_scale="jac",
                            bounds=([np.log(1e-12), -np.inf, -np.inf], [np.log(1.0), np.inf, np.inf]))
        if sol.cost < best_cost:
            lat, bw_s, bw_l = np.exp(sol.x)
            best_cost, best = sol.cost, Fit("two_regime", {"latency": float(lat), "bw_small": float(bw_s),
                                                           "bw_large": float(bw_l), "x_break": x_break})
    assert best is not None, "a two-regime fit needs at least 4 samples"
    return best


def fit_link(bytes_, seconds, enough: float) -> Fit:
    """Model choice for copies: the one-line ``latency + bytes / bandwidth`` law (2 parameters)
    when its median relative error is within ``enough``; otherwise the two-regime form
    (4 parameters) if the Bayesian information criterion ``n log(RSS / n) + k log n`` on the
    log rates prefers it, else still the line."""
    x, t = _clean(bytes_, seconds)
    line = fit_latency_bandwidth(x, t)
    if median_abs_rel_error(line, x, x / t) <= enough or len(x) < 4:
        return line
    two = fit_two_regime(x, t)

    def bic(fit: Fit, k: int) -> float:
        rss = float(np.sum(np.log(fit(x) / (x / t)) ** 2))
        return len(x) * np.log(max(rss, 1e-300) / len(x)) + k * np.log(len(x))

    return two if bic(two, 4) < bic(line, 2) else line


def fit_linear(x, y) -> Fit:
    """Least squares of the relative error ``(a + b x - y) / y`` (weights 1 / y)."""
    x, y = _clean(x, y, positive_x=False)
    a = np.stack([np.ones_like(x), x], axis=1) / y[:, None]
    (intercept, slope), *_ = np.linalg.lstsq(a, np.ones_like(y), rcond=None)
    return Fit("linear", {"intercept": float(intercept), "slope": float(slope)})


def _clean(x, y, positive_x: bool = True) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape or not len(x):
        raise ValueError(f"need equal, non-empty x and y (got {x.shape} and {y.shape})")
    ok = np.isfinite(x) & np.isfinite(y) & (y > 0) & ((x > 0) if positive_x else True)
    if not ok.any():
        raise ValueError("no finite positive samples to fit")
    return x[ok], y[ok]


def _least_squares():
    """scipy's ``least_squares``, imported when a curve is fitted: importing scipy.optimize
    takes about 0.4 s, and every CLI command that only evaluates fitted curves (simulate,
    plan) would pay it at start-up."""
    from scipy.optimize import least_squares

    return least_squares
