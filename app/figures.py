"""Plotly figure builders: library values in, figures out. No Streamlit, no modelling.

Colours carry meaning across pages: red is always time the GPU stalled on Engram rows
(exposed), green the host-to-device copies that hid behind compute, blue/teal compute.
Times are shown in milliseconds and sizes in GB (10^9 bytes), as datasheets write them.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

from planner import units

EXPOSED = "#d62728"
COLORS = {
    "engine step": "#cfd8dc",
    "attention": "#4c78a8",
    "FFN / MoE": "#72b7b2",
    "Engram module": "#b279a2",
    "embed / head": "#9d9d9d",
    "hash (CPU)": "#f58518",
    "gather (host)": "#eeca3b",
    "disk read": "#8c564b",
    "copy H2D": "#54a24b",
    "wait: exposed fetch": EXPOSED,
    "grad D2H": "#bab0ac",
    "optimizer (host)": "#ff9da6",
    "other": "#7f7f7f",
}
# Track order in the Gantt, top to bottom (a track is "dev<k> <actor>").
TRACK_ORDER = ["engine", "compute", "host_cpu", "nvme", "host_gather", "h2d", "d2h", "host_optim"]
SERIES = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d",
          "#ff9da6", "#bab0ac"]


def style(fig: go.Figure, title: str = "", x: str = "", y: str = "", height: int = 380) -> go.Figure:
    fig.update_layout(
        template="plotly_white", title={"text": title, "x": 0, "font": {"size": 15}},
        height=height, margin={"l": 10, "r": 10, "t": 48 if title else 20, "b": 10},
        legend={"orientation": "h", "yanchor": "top", "y": -0.22 if x else -0.14, "x": 0, "title": None,
                "font": {"size": 11}},
        font={"family": "Inter, Segoe UI, Helvetica, Arial, sans-serif", "size": 12},
        hoverlabel={"namelength": -1},
    )
    fig.update_xaxes(title=x, showline=True, linecolor="#ccc", gridcolor="#eee")
    fig.update_yaxes(title=y, showline=True, linecolor="#ccc", gridcolor="#eee")
    return fig


def span_category(name: str) -> str:
    """Display category of a span name from :data:`planner.trace.SPAN_NAMES`."""
    for prefix, category in (("wait_", "wait: exposed fetch"), ("h2d_", "copy H2D"),
                             ("gather_", "gather (host)"), ("hash", "hash (CPU)"),
                             ("attn_", "attention"), ("ffn_", "FFN / MoE"),
                             ("engram_", "Engram module"), ("embed", "embed / head"),
                             ("head", "embed / head"), ("step", "engine step"),
                             ("d2h_", "grad D2H"), ("optim_", "optimizer (host)"),
                             ("disk", "disk read"), ("nvme", "disk read"), ("read_", "disk read")):
        if name.startswith(prefix):
            return category
    return "other"


# ----------------------------------------------------------------------------- what-if


def tier_memory(footprint, hardware) -> go.Figure:
    """Stacked bytes per tier (:class:`planner.accounting.TierFootprint`) with each tier's capacity."""
    tiers = {"device": "GPU, per device", "host": "host DRAM", "disk": "NVMe"}  # short: three fit unrotated
    where = {"weights": "device", "kv_cache": "device", "engram_table": "device", "engram_cache": "device",
             "engram_host": "host", "engram_page_cache": "host", "engram_disk": "disk"}
    label = {"weights": "weights", "kv_cache": "KV cache (worst case)", "engram_table": "Engram table",
             "engram_cache": "Engram hot-row cache", "engram_host": "Engram table",
             "engram_page_cache": "page cache", "engram_disk": "Engram table"}
    # Engram tables in purples (one shade per layer), never red: red means a stall elsewhere.
    shades = {"weights": ["#4c78a8"], "kv_cache": ["#f58518"], "engram_cache": ["#72b7b2", "#9ecae9"],
              "engram_page_cache": ["#eeca3b", "#f2cf5b"]}
    purples = ["#b279a2", "#7b4173", "#ce6dbd", "#a55194", "#de9ed6"]
    capacity = {"device": hardware.device.memory, "host": hardware.host.memory,
                "disk": hardware.nvme.capacity if hardware.nvme is not None else None}
    seen: dict[str, int] = {}
    used: dict[str, float] = {}
    fig = go.Figure()
    for part, nbytes in footprint.breakdown.items():
        if nbytes <= 0:
            continue
        stem, _, layer = part.rpartition("_L") if "_L" in part else (part, "", "")
        tier = where.get(stem, "device")
        cap = capacity[tier]
        if not cap:
            continue  # a disk tier without drives: the page says so in words
        used[tier] = used.get(tier, 0.0) + nbytes
        name = label.get(stem, stem) + (f" L{layer}" if layer else "")
        n = seen[stem] = seen.get(stem, -1) + 1
        palette = shades.get(stem, purples)
        fig.add_bar(x=[tiers[tier]], y=[100 * nbytes / cap], name=name, marker_color=palette[n % len(palette)],
                    customdata=[units.format_bytes(nbytes)],
                    hovertemplate=f"{name}: %{{customdata}} (%{{y:.3g}}% of the tier)<extra></extra>")
    # Shares of each tier's own capacity on a linear axis: stacked bars on a log GB axis distort
    # the shares, and the tiers differ by 10-1000x, so bytes on one linear axis would hide the GPU.
    shown = [t for t in tiers if t in used]
    fig.add_scatter(x=[tiers[t] for t in shown], y=[100 * used[t] / capacity[t] for t in shown], mode="text",
                    text=[f"{units.format_bytes(used[t])} of {units.format_bytes(capacity[t])}" for t in shown],
                    textposition="top center", showlegend=False, hoverinfo="skip")
    fig.add_hline(y=100, line={"color": "#222", "width": 2, "dash": "dot"},
                  annotation_text="capacity", annotation_position="top left")
    fig.update_layout(barmode="stack")
    top = max([100 * used[t] / capacity[t] for t in shown] + [100])
    return style(fig, "Memory per tier (share of each tier's capacity)", "", "% of the tier's capacity",
                 360).update_yaxes(range=[0, 1.18 * top])


def engram_layers(per_layer: dict[int, dict], tiers: dict[int, str]) -> go.Figure:
    """Analytic per-layer fetch vs window on a log time axis (a 13 µs fetch beside an 8 ms window
    must stay visible): a fetch longer than its window is exposed (red). Each bar is labelled
    with its duration; a zero exposure is written as "hidden" where its bar would be."""
    layers = sorted(per_layer)
    x = [f"L{l} ({tiers.get(l, '?')})" for l in layers]
    seconds = {key: [float(np.asarray(per_layer[l][key])) for l in layers] for key in ("window_s", "fetch_s", "exposed_s")}
    positive = [v for vals in seconds.values() for v in vals if v > 0]
    scale, shown = axis_unit(positive, "s")
    fig = go.Figure()
    for key, name, color in (("window_s", "window (compute before the layer)", "#4c78a8"),
                             ("fetch_s", "fetch (hash → gather → copy)", "#54a24b"),
                             ("exposed_s", "exposed (stall)", EXPOSED)):
        vals = seconds[key]
        fig.add_bar(x=x, y=[v / scale if v > 0 else None for v in vals], name=name, marker_color=color,
                    text=[units.format_seconds(v) if v > 0 else ("hidden" if key == "exposed_s" else "0")
                          for v in vals], textposition="outside", cliponaxis=False,
                    hovertemplate=f"%{{x}}<br>{name}: %{{text}}<extra></extra>")
    fig.update_layout(barmode="group", uniformtext={"minsize": 9, "mode": "show"})
    fig = style(fig, "Offloaded Engram layers: fetch vs prefetch window (per step)", "", f"{shown} (log)", 360)
    if positive:
        lo, hi = min(positive) / scale, max(positive) / scale
        fig.update_yaxes(type="log", range=[np.log10(lo) - 0.5, np.log10(hi) + 0.6], exponentformat="none",
                         dtick=1)  # powers of ten only: the 2s and 5s between them read as noise
    return fig


def sim_layers(layers: list[dict]) -> go.Figure:
    """Simulated compute per block per step, stacked, with exposed Engram time in red and the
    block's bound (``compute``, ``hbm``, ``link``, ``host_gather``…) written above each bar."""
    x = [str(l["layer"]) for l in layers]
    fig = go.Figure()
    for key, name, color in (("attention_s", "attention", COLORS["attention"]),
                             ("ffn_s", "FFN / MoE", COLORS["FFN / MoE"]),
                             ("engram_s", "Engram module", COLORS["Engram module"]),
                             ("exposed_s", "exposed fetch", EXPOSED)):
        fig.add_bar(x=x, y=[1e3 * (l.get(key) or 0.0) for l in layers], name=name, marker_color=color)
    totals = [1e3 * sum(l.get(k) or 0.0 for k in ("attention_s", "ffn_s", "engram_s", "exposed_s"))
              for l in layers]
    # One label per run of blocks with the same bound, over the run's middle ("compute x 29"):
    # a label on each of 30 bars runs into its neighbours.
    runs: list[list[int]] = []
    for i, l in enumerate(layers):
        if runs and layers[runs[-1][-1]]["bound"] == l["bound"]:
            runs[-1].append(i)
        else:
            runs.append([i])
    mid = [r[len(r) // 2] for r in runs]
    fig.add_scatter(x=[x[i] for i in mid], y=[max(totals[j] for j in r) for i, r in zip(mid, runs)], mode="text",
                    text=[layers[r[0]]["bound"] + (f" × {len(r)}" if len(r) > 1 else "") for r in runs],
                    textposition="top center", textfont={"size": 10, "color": "#555"}, showlegend=False,
                    hoverinfo="skip")
    fig.update_layout(barmode="stack")
    return style(fig, "Per block (simulated, per step) with bound labels", "block", "ms", 380)


def gantt(table, device: int, t0_s: float, t1_s: float, max_spans: int = 6000) -> go.Figure:
    """Timeline of one device's actors between ``t0_s`` and ``t1_s`` from a
    :class:`app.runs.SpanTable`. Waits (exposed fetch) are red; copies hidden under compute
    show as green bars with no red beside them."""
    prefix = f"dev{device} "
    track_ok = np.array([t.startswith(prefix) for t in table.tracks] + [False])
    mask = track_ok[table.track_id] & (table.start_s + table.dur_s >= t0_s) & (table.start_s <= t1_s)
    idx = np.flatnonzero(mask)[:max_spans]
    fig = go.Figure()
    labels = {t: t[len(prefix):] for t in table.tracks if t.startswith(prefix)}
    order = sorted(labels.values(), key=lambda a: (TRACK_ORDER.index(a) if a in TRACK_ORDER else 99, a))
    by_cat: dict[str, list[int]] = {}
    for i in idx:
        by_cat.setdefault(span_category(table.names[table.name_id[i]]), []).append(i)
    for cat in [c for c in COLORS if c in by_cat]:
        ids = np.array(by_cat[cat])
        fig.add_bar(
            orientation="h", y=[labels[table.tracks[t]] for t in table.track_id[ids]],
            base=1e3 * table.start_s[ids], x=1e3 * table.dur_s[ids], name=cat,
            marker={"color": COLORS[cat], "line": {"width": 0}},
            customdata=np.stack([[table.names[n] for n in table.name_id[ids]], 1e3 * table.dur_s[ids]], -1),
            hovertemplate="%{customdata[0]}<br>start %{base:.3f} ms, %{customdata[1]:.3f} ms<extra></extra>")
    fig.update_layout(barmode="overlay", bargap=0.25)
    fig.update_yaxes(categoryorder="array", categoryarray=list(reversed(order)))
    fig.update_xaxes(range=[1e3 * t0_s, 1e3 * t1_s])
    return style(fig, f"Simulated timeline, device {device}", "time (ms)", "", 420)


# ----------------------------------------------------------------------------- sweeps, hardware


DASHES = ["solid", "dash", "dot", "dashdot", "longdash", "longdashdot"]
SYMBOLS = ["circle", "square", "diamond", "triangle-up", "x", "cross"]


def sweep_lines(x: np.ndarray, series: dict[str, np.ndarray], title: str, x_label: str, y_label: str,
                log_x: bool = False, marks: Sequence[tuple[float, str, int]] = ()) -> go.Figure:
    """One line per profile. Lines differ in dash and marker as well as colour, so two profiles
    with identical figures (H800 and H100 SXM) both stay visible; a series equal to an earlier
    one says so in its legend entry. ``marks`` are vertical lines ``(x, label, series index)``:
    where a profile's link speed sits, where a tier's capacity ends."""
    fig = go.Figure()
    names = list(series)
    for i, (name, y) in enumerate(series.items()):
        same = next((names[j] for j in range(i) if np.allclose(series[names[j]], y, rtol=1e-9, atol=0)), None)
        fig.add_scatter(x=x, y=y, mode="lines+markers", name=name + (f" (= {same})" if same else ""),
                        marker={"size": 6, "symbol": SYMBOLS[i % len(SYMBOLS)]},
                        line={"color": SERIES[i % len(SERIES)], "width": 2.5 if i == 0 else 2,
                              "dash": DASHES[i % len(DASHES)]})
    for k, (xv, label, i) in enumerate(marks):
        fig.add_vline(x=xv, line={"color": SERIES[i % len(SERIES)], "width": 1.5, "dash": "dot"})
        # plotly places a log axis's annotation at log10(x)
        fig.add_annotation(x=np.log10(xv) if log_x else xv, y=1 - 0.07 * (k % 4), xref="x", yref="paper",
                           text=label, showarrow=False, xanchor="left", font={"size": 10, "color": SERIES[i % len(SERIES)]},
                           bgcolor="rgba(255,255,255,0.8)")
    fig = style(fig, title, x_label, y_label, 460)
    if log_x:
        xs = np.asarray(x, float)
        decades = np.log10(xs.max() / xs.min()) if len(xs) and xs.min() > 0 else 0.0
        # powers of ten only over wide ranges (the 2s and 5s between them read as noise)
        fig.update_xaxes(type="log", exponentformat="none", **({"dtick": 1} if decades >= 2 else {}))
    return fig


def profile_bars(names: Sequence[str], values: Sequence[float], title: str, unit: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(names), y=list(values), marker_color=SERIES[: len(names)] * 2,
                           text=[f"{v:.3g}" for v in values], textposition="outside",
                           hovertemplate=f"%{{x}}: %{{y:.4g}} {unit}<extra></extra>"))
    return style(fig, title, "", unit, 300)


def calibration_curve(curve: Any) -> go.Figure:
    """Samples and fitted curve of one calibration view (``samples_x``, ``samples_y``, ``fitted``),
    each axis in its unit with a prefix chosen for the samples (``MB``, ``µs``), so a tick never
    reads ``6B`` or a bare ``400µ``."""
    xs = np.asarray(curve.samples_x, float)
    ys = np.asarray(curve.samples_y, float)
    x_unit, y_unit = getattr(curve, "x_unit", ""), getattr(curve, "y_unit", "")
    xk, x_shown = axis_unit(xs, x_unit)
    yk, y_shown = axis_unit(ys, y_unit)
    fig = go.Figure()
    fig.add_scatter(x=xs / xk, y=ys / yk, mode="markers", name="measured", marker={"size": 7, "color": "#4c78a8"})
    if len(xs) and not getattr(curve, "is_function", True):
        # A roofline reads bytes and tokens too: its fit at each sample, not a line over x.
        fig.add_scatter(x=xs / xk, y=np.asarray(curve.predicted, float) / yk, mode="markers", name="fitted",
                        marker={"size": 7, "color": "#f58518", "symbol": "x"})
    elif len(xs):
        grid = np.geomspace(max(xs.min(), 1e-30), xs.max(), 200) if xs.min() > 0 else np.linspace(xs.min(), xs.max(), 200)
        fig.add_scatter(x=grid / xk, y=np.asarray(curve.fitted(grid), float) / yk, mode="lines", name="fitted",
                        line={"color": "#f58518", "width": 2})
    title = f"{curve.name}  (median |rel. error| {units.format_percent(float(curve.median_abs_rel_error), 2)})"
    x_title, y_title = _titled(curve.x_label, x_shown), _titled(curve.y_label, y_shown)
    fig = style(fig, title, x_title, y_title, 340)
    fig.update_xaxes(exponentformat="none")
    fig.update_yaxes(exponentformat="none")
    if len(xs) and xs.min() > 0 and xs.max() / xs.min() > 50:
        fig.update_xaxes(type="log")
    return fig


# ----------------------------------------------------------------------------- planner, validation


def pareto(points: list[dict], x_key: str, y_key: str, x_label: str, y_label: str,
           front: Iterable[int] = ()) -> go.Figure:
    """Candidates as grey dots, the Pareto front as a connected line, recommendations labelled."""
    front = set(front)
    fig = go.Figure()
    xs = [p[x_key] for p in points]
    ys = [p[y_key] for p in points]
    fig.add_scatter(x=xs, y=ys, mode="markers", name="candidates", marker={"color": "#bbb", "size": 6},
                    text=[p.get("label", "") for p in points], hovertemplate="%{text}<extra></extra>")
    fx = sorted((xs[i], ys[i], points[i].get("label", "")) for i in front)
    if fx:
        fig.add_scatter(x=[f[0] for f in fx], y=[f[1] for f in fx], mode="lines+markers", name="Pareto front",
                        marker={"color": "#4c78a8", "size": 9}, line={"color": "#4c78a8"},
                        text=[f[2] for f in fx], hovertemplate="%{text}<extra></extra>")
    return style(fig, "Candidates and Pareto front", x_label, y_label, 420)


def validation_scatter(runs: list[dict], metric: str) -> go.Figure:
    """Predicted vs measured for one metric, the prediction's band as error bars, y = x dashed;
    axes in the metric's unit with a prefix chosen for its values (``ms``, ``KB``)."""
    label, unit = units.describe_metric(metric)
    rows = [r for r in runs if metric in r.get("measured", {}) and metric in r.get("predicted", {})]
    meas = np.array([float(r["measured"][metric]) for r in rows])
    pred = np.array([float(r["predicted"][metric]) for r in rows])
    bands = [(r.get("band") or {}).get(metric) or [p, p] for r, p in zip(rows, pred)]
    lo = np.array([float(b[0]) for b in bands])
    hi = np.array([float(b[1]) for b in bands])
    inside = (meas >= lo) & (meas <= hi)
    scale, shown = axis_unit(np.concatenate([meas, pred]), unit)
    meas, pred, lo, hi = meas / scale, pred / scale, lo / scale, hi / scale
    fig = go.Figure()
    if len(rows):
        edge = [min(meas.min(), lo.min()) * 0.95, max(meas.max(), hi.max()) * 1.05]
        fig.add_scatter(x=edge, y=edge, mode="lines", name="predicted = measured",
                        line={"dash": "dash", "color": "#999"})
    for flag, name, color in ((True, "measured inside band", "#54a24b"), (False, "outside band", EXPOSED)):
        sel = inside == flag
        if sel.any():
            fig.add_scatter(
                x=meas[sel], y=pred[sel], mode="markers", name=name, marker={"size": 9, "color": color},
                error_y={"type": "data", "symmetric": False, "array": (hi - pred)[sel],
                         "arrayminus": (pred - lo)[sel], "color": color, "thickness": 1.2},
                text=[r["name"] for r, s in zip(rows, sel) if s],
                hovertemplate=f"%{{text}}<br>measured %{{x:.4g}} {shown}<br>predicted %{{y:.4g}} {shown}<extra></extra>")
    suffix = f" ({shown})" if shown else ""
    return style(fig, f"{label}: predicted vs measured", f"measured {label}{suffix}", f"predicted {label}{suffix}", 440)


def _titled(label: str, unit: str) -> str:
    """An axis title with its display unit: ``table bytes (GB)``; a label that is only a unit
    word (``FLOP/s``, ``seconds``) becomes the unit (``TFLOP/s``, ``ms``)."""
    if not unit:
        return label
    if label.lower() == "bytes":
        return f"size ({unit})"
    return unit if label.lower() in ("flop/s", "bytes/s", "tokens/s", "seconds") else f"{label} ({unit})"


def axis_unit(values, unit: str) -> tuple[float, str]:
    """:func:`planner.units.axis_scale`, but a unitless axis (counts) keeps its values."""
    if not unit or unit == "tok/s":  # "ktok/s" is no one's unit
        return 1.0, unit
    return units.axis_scale(values, unit)
