"""Plotly figure builders: library values in, figures out. No Streamlit, no modelling.

Colours carry meaning across pages: red is always time the GPU stalled on Engram rows
(exposed), green the host-to-device copies that hid behind compute, blue/teal compute.
Times are shown in milliseconds and sizes in GB (10^9 bytes), as datasheets write them.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import numpy as np
import plotly.graph_objects as go

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
    seen: dict[str, int] = {}
    fig = go.Figure()
    for part, nbytes in footprint.breakdown.items():
        if nbytes <= 0:
            continue
        stem, _, layer = part.rpartition("_L") if "_L" in part else (part, "", "")
        tier = where.get(stem, "device")
        name = label.get(stem, stem) + (f" L{layer}" if layer else "")
        n = seen[stem] = seen.get(stem, -1) + 1
        palette = shades.get(stem, purples)
        fig.add_bar(x=[tiers[tier]], y=[nbytes / 1e9], name=name, marker_color=palette[n % len(palette)],
                    hovertemplate=f"{name}: %{{y:.3g}} GB<extra></extra>")
    caps = [("device", hardware.device.memory), ("host", hardware.host.memory)]
    if hardware.nvme is not None:
        caps.append(("disk", hardware.nvme.capacity))
    fig.add_scatter(x=[tiers[t] for t, _ in caps], y=[c / 1e9 for _, c in caps], mode="markers",
                    marker={"symbol": "line-ew", "size": 60, "line": {"width": 3, "color": "#222"}},
                    name="capacity", hovertemplate="capacity %{y:.4g} GB<extra></extra>")
    fig.update_layout(barmode="stack")
    return style(fig, "Memory per tier", "", "GB (log)", 360).update_yaxes(type="log")


def engram_layers(per_layer: dict[int, dict], tiers: dict[int, str]) -> go.Figure:
    """Analytic per-layer fetch vs window: a fetch longer than its window is exposed (red)."""
    layers = sorted(per_layer)
    x = [f"L{l} ({tiers.get(l, '?')})" for l in layers]
    ms = lambda key: [1e3 * float(np.asarray(per_layer[l][key])) for l in layers]  # noqa: E731
    fig = go.Figure()
    fig.add_bar(x=x, y=ms("window_s"), name="window (compute before the layer)", marker_color="#4c78a8")
    fig.add_bar(x=x, y=ms("fetch_s"), name="fetch (hash → gather → copy)", marker_color="#54a24b")
    fig.add_bar(x=x, y=ms("exposed_s"), name="exposed (stall)", marker_color=EXPOSED)
    fig.update_layout(barmode="group")
    return style(fig, "Offloaded Engram layers: fetch vs prefetch window (per step)", "", "ms", 340)


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
    fig.add_scatter(x=x, y=totals, mode="text", text=[l["bound"] for l in layers], textposition="top center",
                    textfont={"size": 9, "color": "#555"}, showlegend=False, hoverinfo="skip")
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


def sweep_lines(x: np.ndarray, series: dict[str, np.ndarray], title: str, x_label: str, y_label: str,
                log_x: bool = False) -> go.Figure:
    fig = go.Figure()
    for i, (name, y) in enumerate(series.items()):
        fig.add_scatter(x=x, y=y, mode="lines+markers", name=name, marker={"size": 5},
                        line={"color": SERIES[i % len(SERIES)], "width": 2})
    fig = style(fig, title, x_label, y_label, 440)
    if log_x:
        fig.update_xaxes(type="log")
    return fig


def profile_bars(names: Sequence[str], values: Sequence[float], title: str, unit: str) -> go.Figure:
    fig = go.Figure(go.Bar(x=list(names), y=list(values), marker_color=SERIES[: len(names)] * 2,
                           text=[f"{v:.3g}" for v in values], textposition="outside",
                           hovertemplate=f"%{{x}}: %{{y:.4g}} {unit}<extra></extra>"))
    return style(fig, title, "", unit, 300)


def calibration_curve(curve: Any) -> go.Figure:
    """Samples and fitted curve of one calibration view (``samples_x``, ``samples_y``, ``fitted``)."""
    xs = np.asarray(curve.samples_x, float)
    fig = go.Figure()
    fig.add_scatter(x=xs, y=np.asarray(curve.samples_y, float), mode="markers", name="measured",
                    marker={"size": 7, "color": "#4c78a8"})
    if len(xs) and not getattr(curve, "is_function", True):
        # A roofline reads bytes and tokens too: its fit at each sample, not a line over x.
        fig.add_scatter(x=xs, y=np.asarray(curve.predicted, float), mode="markers", name="fitted",
                        marker={"size": 7, "color": "#f58518", "symbol": "x"})
    elif len(xs):
        grid = np.geomspace(max(xs.min(), 1e-30), xs.max(), 200) if xs.min() > 0 else np.linspace(xs.min(), xs.max(), 200)
        fig.add_scatter(x=grid, y=np.asarray(curve.fitted(grid), float), mode="lines", name="fitted",
                        line={"color": "#f58518", "width": 2})
    title = f"{curve.name}  (median |rel. error| {100 * float(curve.median_abs_rel_error):.1f}%)"
    fig = style(fig, title, curve.x_label, curve.y_label, 340)
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
    """Predicted vs measured for one metric, the prediction's band as error bars, y = x dashed."""
    rows = [r for r in runs if metric in r.get("measured", {}) and metric in r.get("predicted", {})]
    meas = np.array([float(r["measured"][metric]) for r in rows])
    pred = np.array([float(r["predicted"][metric]) for r in rows])
    bands = [(r.get("band") or {}).get(metric) or [p, p] for r, p in zip(rows, pred)]
    lo = np.array([float(b[0]) for b in bands])
    hi = np.array([float(b[1]) for b in bands])
    inside = (meas >= lo) & (meas <= hi)
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
                hovertemplate="%{text}<br>measured %{x:.4g}<br>predicted %{y:.4g}<extra></extra>")
    return style(fig, f"{metric}: predicted vs measured", f"measured {metric}", f"predicted {metric}", 440)
