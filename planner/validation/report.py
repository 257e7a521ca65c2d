"""The validation report: ``validation.json`` (the format the dashboard reads), a text table, the
predicted-vs-measured plot (plotly HTML with plotly.js embedded, so it opens offline) and the
side-by-side Chrome traces of one measured run and its simulation.

``validation.json``::

    {"fingerprint": {...}, "profile": "<path or name>",
     "runs": [{"name", "config", "measured": {metric: value}, "predicted": {metric: value},
               "band": {metric: [lo, hi]}, ...}],
     "summary": {metric: {"median_abs_error", "p90_abs_error", "coverage"}}, ...}

Runs also carry ``regime`` and ``error``; the top level adds ``regimes`` (step-time errors
grouped by tier, prefetch, batch, phase, cache, backbone), ``weakest_regime``, ``threshold``,
``passed``, ``wall_s`` and ``notes``. Errors are signed fractions in runs, absolute in the
summary. Torch-free; plotly is imported only to write the plot.
"""

from __future__ import annotations

import json
from pathlib import Path

from planner.trace import Span, write_chrome_trace
from planner.units import describe_metric
from planner.validation.compare import METRICS, RunResult

UNITS = {"step_time_s": ("step time", 1e3, "ms"), "throughput_tokens_per_s": ("throughput", 1.0, "tok/s"),
         "exposed_lookup_s": ("exposed lookup", 1e3, "ms"), "bytes_to_device": ("bytes to device", 1e-3, "KB")}


def result_dict(*, fingerprint: dict, profile: str, results: list[RunResult], summary: dict, regimes: dict,
                weakest: dict | None, threshold: float, wall_s: float, notes: list[str], extra: dict | None = None) -> dict:
    step = summary["step_time_s"]["median_abs_error"]
    return {
        "fingerprint": fingerprint,
        "profile": profile,
        "runs": [r.as_dict() for r in results],
        "summary": summary,
        "regimes": regimes,
        "weakest_regime": weakest,
        "threshold": threshold,
        "passed": step is not None and step <= threshold,
        "wall_s": wall_s,
        "notes": notes,
        **(extra or {}),
    }


def write_json(path: str | Path, data: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, default=float) + "\n")
    return path


def _fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    _, scale, _ = UNITS[metric]
    v = value * scale
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:+.1%}" if abs(x) >= 0.0005 else "0.0%"  # no "-0.0%"


def format_text(data: dict) -> str:
    """The CLI table: one row per run (step time measured / predicted / error and band), then
    the per-metric summary and the regimes."""
    lines = [f"profile: {data['profile']}", ""]
    # The error with the machine's drift taken out, per run, where validate measured the drift.
    ctl = ((data.get("drift") or {}).get("controlled") or {}).get("per_run")
    head = (f"{'run':<24}{'step ms meas':>13}{'pred':>8}{'err':>8}" + (f"{'drift out':>10}" if ctl else "")
            + f"{'band':>17}{'exposed ms m/p':>17}{'KB/step m/p':>15}")
    lines += [head, "-" * len(head)]
    for r in data["runs"]:
        m, p, b, e = r["measured"], r["predicted"], r["band"], r["error"]
        band = f"[{_fmt('step_time_s', b['step_time_s'][0])}, {_fmt('step_time_s', b['step_time_s'][1])}]"
        lines.append(
            f"{r['name']:<24}{_fmt('step_time_s', m['step_time_s']):>13}{_fmt('step_time_s', p['step_time_s']):>8}"
            f"{_pct(e['step_time_s']):>8}" + (f"{_pct(ctl.get(r['name'])):>10}" if ctl else "") + f"{band:>17}"
            f"{_fmt('exposed_lookup_s', m['exposed_lookup_s']) + '/' + _fmt('exposed_lookup_s', p['exposed_lookup_s']):>17}"
            f"{_fmt('bytes_to_device', m['bytes_to_device']) + '/' + _fmt('bytes_to_device', p['bytes_to_device']):>15}")
    lines += ["", f"{'metric':<32}{'median |err|':>13}{'p90 |err|':>11}{'coverage':>10}{'band +-':>9}{'runs':>6}"]
    for metric, s in data["summary"].items():
        cov = "-" if s["coverage"] is None else f"{s['coverage']:.0%}"
        med = "-" if s["median_abs_error"] is None else f"{s['median_abs_error']:.1%}"
        p90 = "-" if s["p90_abs_error"] is None else f"{s['p90_abs_error']:.1%}"
        width = "-" if s.get("band_half_width") is None else f"{s['band_half_width']:.0%}"
        lines.append(f"{describe_metric(metric)[0]:<32}{med:>13}{p90:>11}{cov:>10}{width:>9}{s['runs']:>6}")
    lines += ["", "step-time |error| by regime (median, max, runs):"]
    for dim, groups in data["regimes"].items():
        parts = [f"{label} {g['median_abs_error']:.1%}/{g['max_abs_error']:.1%}/{g['runs']}" for label, g in groups.items()]
        lines.append(f"  {dim:<9} " + "; ".join(parts))
    w = data.get("weakest_regime")
    if w:
        lines.append(f"weakest regime: {w['dimension']} = {w['label']} (median |step error| "
                     f"{w['median_abs_error']:.1%} over {w['runs']} runs)")
    step = data["summary"]["step_time_s"]["median_abs_error"]
    verdict = "PASS" if data["passed"] else "FAIL"
    if (data.get("profile_origin") or {}).get("foreign"):
        verdict += " (foreign profile: not a test of the model)"
    lines.append(f"{verdict}: median |step-time error| {step:.1%} vs threshold {data['threshold']:.0%} "
                 f"({len(data['runs'])} runs, {data['wall_s']:.0f} s)")
    d = data.get("drift") or {}
    c = d.get("controlled")
    if d.get("ratio") is not None and c and c["median_abs_error"] is not None:
        lines.append(f"machine drift: {len(d.get('runs') or {})} of calibration's own engine runs, timed again interleaved with the grid, "
                     f"took {d['ratio']:.2f}x their calibrated time; step-time error with predictions scaled by that: median "
                     f"{c['median_abs_error']:.1%}, p90 {c['p90_abs_error']:.1%} (the model's transfer to unseen "
                     "shapes; the figures above include the machine's change of speed since calibration)")
    ms = data.get("machine_state")
    if ms:
        lines.append(f"machine: GEMM speed vs profile {ms['speed_before']:.0%} before, {ms['speed_after']:.0%} after; "
                     f"load average {ms['loadavg_before']:.1f} -> {ms['loadavg_after']:.1f}")
    for note in data.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def write_plot(path: str | Path, data: dict) -> Path:
    """Predicted vs measured, one panel per metric, log axes, the y = x line and each run's
    band as an error bar; hover shows the run's name and config."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    metrics = [m for m in METRICS if any(r["measured"][m] > 0 for r in data["runs"])]
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[
        f"{UNITS[m][0]} ({UNITS[m][2]})" for m in metrics])
    for col, m in enumerate(metrics, start=1):
        scale = UNITS[m][1]
        runs = [r for r in data["runs"] if r["measured"][m] > 0 and r["predicted"][m] > 0]
        xs = [r["measured"][m] * scale for r in runs]
        ys = [r["predicted"][m] * scale for r in runs]
        lo = [max(y - r["band"][m][0] * scale, 0) for r, y in zip(runs, ys)]
        hi = [max(r["band"][m][1] * scale - y, 0) for r, y in zip(runs, ys)]
        text = [f"{r['name']}<br>error {_pct(r['error'][m])}<br>" +
                ", ".join(f"{k}={v}" for k, v in r["regime"].items()) for r in runs]
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name=UNITS[m][0], text=text,
                                 hovertemplate="%{text}<br>measured %{x:.3g}<br>predicted %{y:.3g}<extra></extra>",
                                 error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo, thickness=1),
                                 showlegend=False), row=1, col=col)
        if xs:
            a, b = min(xs + ys) * 0.8, max(xs + ys) * 1.25
            fig.add_trace(go.Scatter(x=[a, b], y=[a, b], mode="lines", line=dict(dash="dot", color="gray"),
                                     showlegend=False, hoverinfo="skip"), row=1, col=col)
        fig.update_xaxes(type="log", title_text="measured", row=1, col=col)
        fig.update_yaxes(type="log", title_text="predicted", row=1, col=col)
    s = data["summary"]["step_time_s"]
    fig.update_layout(title=f"Predicted vs measured: {data['profile']} (median |step error| "
                            f"{s['median_abs_error']:.1%}, p90 {s['p90_abs_error']:.1%}, band coverage "
                            f"{s['coverage']:.0%})", height=480, width=420 * len(metrics))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.write_html(str(path), include_plotlyjs=True, full_html=True)
    return path


def simulated_spans_for_trace(spans: list[Span]) -> list[Span]:
    """The simulator's spans with the device prefix dropped from track names (``dev0 compute``
    -> ``compute``), so both traces have the same tracks as well as the same span names."""
    out = []
    for s in spans:
        track = s.track.split(" ", 1)[1] if s.track.startswith("dev") and " " in s.track else s.track
        out.append(Span(s.name, track, s.start_s, s.dur_s, s.args))
    return out


def write_traces(out_dir: str | Path, run_name: str, measured: list[Span], simulated: list[Span],
                 metadata: dict) -> tuple[Path, Path]:
    """``trace-measured-<run>.json`` and ``trace-simulated-<run>.json``, both starting at t = 0."""
    out_dir = Path(out_dir)
    t0 = min((s.start_s for s in measured), default=0.0)
    measured = [Span(s.name, s.track, s.start_s - t0, s.dur_s, s.args) for s in measured]
    a = write_chrome_trace(out_dir / f"trace-measured-{run_name}.json", measured, "measured (reference model)",
                           {**metadata, "kind": "measured"})
    b = write_chrome_trace(out_dir / f"trace-simulated-{run_name}.json", simulated_spans_for_trace(simulated),
                           "simulated (planner.sim)", {**metadata, "kind": "simulated"})
    return a, b
