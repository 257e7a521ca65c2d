"""Hardware: profiles side by side (table and bar charts of the figures that decide Engram
offload), and a calibrated profile's fitted curves over the samples they were fitted to."""

from __future__ import annotations

import streamlit as st

from app import figures, widgets
from planner.calibration import profile_curves
from planner.loading import SpecError, load_hardware
from planner.units import format_percent

P = "hwp"
titles = widgets.profile_titles()

with st.sidebar:
    calibrated = [n for n, t in titles.items() if t.endswith("calibrated")]
    usual = [n for n in ("h100-sxm", "h100-pcie", "h200", "gh200", "a100-80gb", "l40s", "cpu-workstation") if n in titles]
    chosen = st.multiselect("Profiles to compare", list(titles), default=usual + calibrated or list(titles),
                            format_func=titles.get, key=f"{P}.profiles")

st.title("Hardware profiles")
st.caption("Datasheet presets and calibrated profiles from `hw_profiles/`. Per-device figures unless "
           "noted; a node shares its host DRAM bandwidth among its devices.")

specs, errors = {}, []
for name in chosen:
    try:
        specs[name] = load_hardware(name)
    except SpecError as exc:
        errors.append(str(exc))
for text in errors:
    widgets.show_error(SpecError(text))
if not specs:
    st.info("Pick one or more profiles in the sidebar.")
    st.stop()


def _figures(hw) -> dict[str, float]:
    """Key figures of a profile in display units (no derived modelling, only unit scaling and
    the per-device share of node-wide figures)."""
    n = hw.device.count
    return {
        "BF16 dense (TFLOP/s)": hw.device.flops_for("bf16") / 1e12,
        "device memory (GB)": hw.device.memory / 1e9,
        "device memory BW (TB/s)": hw.device.memory_bandwidth / 1e12,
        "H2D link (GB/s)": hw.link.h2d_bandwidth / 1e9,
        "UVA read (GB/s)": (hw.link.uva_read_bandwidth or 0) / 1e9,
        "host DRAM per device (GB)": hw.host.memory / n / 1e9,
        "host DRAM BW per device (GB/s)": hw.host.memory_bandwidth / n / 1e9,
        "host cores per device": hw.host.cores / n,
        "NVMe read (GB/s)": (hw.nvme.read_bandwidth / 1e9) if hw.nvme else 0.0,
    }


rows = []
for name, hw in specs.items():
    row = {"profile": name, "source": hw.source, "node": f"{hw.nodes} × {hw.device.count} × {hw.device.name}",
           "link": hw.link.kind}
    row.update({k: round(v, 3) for k, v in _figures(hw).items()})
    rows.append(row)
st.dataframe(rows, hide_index=True, key=f"{P}.table")

keys = list(_figures(next(iter(specs.values()))))
picked = st.multiselect("Bar charts", keys, default=keys[:2] + keys[3:4] + keys[6:7], key=f"{P}.bars")
cols = st.columns(2)
bar_figs = {}
for i, k in enumerate(picked):
    fig = figures.profile_bars(list(specs), [_figures(hw)[k] for hw in specs.values()], k, k.split("(")[-1].rstrip(")")
                               if "(" in k else "")
    bar_figs[k] = fig
    cols[i % 2].plotly_chart(fig, key=f"{P}.fig.{i}")
if bar_figs:
    st.download_button("Bar charts (HTML)",
                       lambda: "\n".join(f.to_html(include_plotlyjs=(j == 0), full_html=False)
                                         for j, f in enumerate(bar_figs.values())),
                       "hardware-profiles.html", "text/html", key=f"{P}.dl.bars", icon=":material/download:")

# ----------------------------------------------------------------------------- calibration

st.subheader("Calibration")
ordered = sorted(specs, key=lambda n: specs[n].source != "calibrated")  # calibrated ones first
name = st.selectbox("Profile", ordered, format_func=titles.get, key=f"{P}.calib")
hw = specs[name]
curves = {}
try:
    curves = profile_curves(hw) or {}
except (ValueError, AttributeError, KeyError) as exc:
    st.warning(f"Could not read this profile's calibration: {exc}")
if not curves:
    st.info(f"No calibration in this profile ({hw.source} figures). `engram-planner calibrate` writes a "
            "calibrated profile with measured samples and fitted curves.")
else:
    st.dataframe([{"curve": c.name, "x": c.x_label, "y": c.y_label, "samples": len(c.samples_x),
                   "median |rel. error|": format_percent(float(c.median_abs_rel_error), 2),
                   "what": getattr(c, "description", "")} for c in curves.values()],
                 hide_index=True, key=f"{P}.curves")
    shown = st.multiselect("Curves to plot", list(curves), default=list(curves)[:6], key=f"{P}.curve_pick")
    cols = st.columns(2)
    for i, cname in enumerate(shown):
        cols[i % 2].plotly_chart(figures.calibration_curve(curves[cname]), key=f"{P}.curve.{i}")
with st.expander("Sources of this profile's numbers"):
    for s in hw.sources:
        st.markdown(f"- {s}")
