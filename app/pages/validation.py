"""Validation: predicted vs measured for each validation run (``engram-planner validate`` writes
JSON under ``validation_results/``), with the prediction's band and a per-metric error table.

Files are read from ``validation_results/`` in the checkout (or, when set, the folders listed in
``ENGRAM_VALIDATION_DIR``, os.pathsep-separated, instead), or uploaded in the sidebar."""

from __future__ import annotations

import json
import os
from pathlib import Path

import streamlit as st

from app import figures, widgets
from planner import units
from planner.loading import ROOT

P = "va"


def result_files() -> dict[str, Path]:
    """``{label: path}`` of every result file, the most recently measured first (the date its
    measuring machine's fingerprint records; files without one, unreadable ones included, after
    those, by path): the page opens on the newest measurement, not the first folder by name."""
    env = os.environ.get("ENGRAM_VALIDATION_DIR")
    folders = [Path(p) for p in env.split(os.pathsep) if p] if env else [ROOT / "validation_results"]
    files: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            # `validate --out DIR` writes DIR/validation.json (beside traces and plots)
            for path in sorted(folder.rglob("validation*.json")):
                if not any(part.startswith(".") for part in path.relative_to(folder).parts):
                    files[str(path.relative_to(folder.parent))] = path
    dates = {label: measured_on(str(path), path.stat().st_mtime_ns) for label, path in files.items()}
    dated = sorted((label for label in files if dates[label]), key=lambda label: dates[label], reverse=True)
    return {label: files[label] for label in dated + [label for label in files if not dates[label]]}


def _drift(data: dict) -> tuple[float | None, dict]:
    """The result's drift ratio (None unless a positive number) and its ``drift.controlled``
    mapping ({} without one)."""
    drift = data.get("drift") if isinstance(data.get("drift"), dict) else {}
    ratio = drift.get("ratio")
    controlled = drift.get("controlled") if isinstance(drift.get("controlled"), dict) else {}
    return (ratio if isinstance(ratio, (int, float)) and ratio > 0 else None), controlled


def drift_caption(data: dict) -> str | None:
    """One line on the machine's drift between calibration and validation (``validate``'s
    anchors: calibration's own runs timed again beside the grid) and the step-time error with
    it taken out; None when the result has no drift measurement (older files, uploads)."""
    ratio, controlled = _drift(data)
    if ratio is None:
        return None
    line = (f"**Machine drift since calibration: {ratio:.2f}x.** Calibration's own runs, timed again beside "
            f"these, took {ratio:.2f}x their calibrated time")
    med, p90 = controlled.get("median_abs_error"), controlled.get("p90_abs_error")
    if isinstance(med, (int, float)) and isinstance(p90, (int, float)):
        line += (f"; with every prediction scaled by that, the step-time error is "
                 f"{units.format_quantity(med, '%')} median, {units.format_quantity(p90, '%')} p90 "
                 "(the model's own error; the table above includes the machine's change of speed)")
    return line + "."


def drift_out(data: dict) -> dict:
    """``{run name: step-time error with the machine's drift taken out}``: as ``validate`` wrote
    it (``drift.controlled.per_run``), or, for results written before it did, from the file's
    own drift ratio and step times (the same arithmetic); {} for results without a drift."""
    from planner.validation.compare import drift_out_errors

    ratio, controlled = _drift(data)
    if isinstance(controlled.get("per_run"), dict):
        return controlled["per_run"]
    if ratio is None:
        return {}
    return drift_out_errors([(r["name"], float(r["predicted"]["step_time_s"]), float(r["measured"]["step_time_s"]))
                             for r in data["runs"] if "step_time_s" in r["measured"] and "step_time_s" in r["predicted"]],
                            ratio)


@st.cache_data(show_spinner=False)
def measured_on(path: str, mtime_ns: int) -> str:
    """The ISO date in a result's ``fingerprint.date``; "" when the file has none or cannot be
    read (the page reports what is wrong with it when it is chosen). Cached per file version
    (``mtime_ns``): the page reruns on every widget change and need not reread every file."""
    try:
        date = json.loads(Path(path).read_text()).get("fingerprint", {}).get("date")
    except (OSError, ValueError, AttributeError):
        return ""
    return date if isinstance(date, str) else ""


def check(data, where: str) -> dict:
    """The fields this page reads, with a clear message when one is missing."""
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{where}: not a validation result (expected a mapping with a 'runs' list)")
    for i, run in enumerate(data["runs"]):
        for key in ("name", "measured", "predicted"):
            if key not in run:
                raise ValueError(f"{where}: runs[{i}].{key}: missing")
        for key in ("measured", "predicted"):
            for metric, value in (run[key] or {}).items():
                if not isinstance(value, (int, float)) or value != value:
                    raise ValueError(f"{where}: runs[{i}].{key}.{metric}: expected a number, got {value!r}")
    return data


st.title("Validation")
files = result_files()
with st.sidebar:
    upload = st.file_uploader("Validation result (JSON)", type=["json"], key=f"{P}.upload")
    choice = st.selectbox("Result file", list(files), key=f"{P}.file") if files else None

if upload is None and choice is None:
    st.info(
        "**No validation results yet.** Validation runs the reference model on this machine with "
        "Engram tables offloaded, measures throughput and latency, and compares them with the "
        "simulator's predictions for the same configurations:\n\n"
        "```\nengram-planner calibrate --quick --out hw_profiles/calibrated-my-box.yaml\n"
        "engram-planner validate --profile hw_profiles/calibrated-my-box.yaml --quick \\\n"
        "    --out validation_results/my-box     # writes validation_results/my-box/validation.json\n```\n\n"
        "Then reload this page, or upload a result file in the sidebar.")
    st.stop()

try:
    if upload is not None:
        data = check(json.loads(upload.getvalue()), upload.name)
        source = upload.name
    else:
        data = check(json.loads(files[choice].read_text()), choice)
        source = choice
except (ValueError, OSError) as exc:  # json.JSONDecodeError is a ValueError
    widgets.show_error(exc)
    st.stop()

runs = data["runs"]
# The profile as the measuring machine named it: its file name (the path was that machine's).
st.caption(f"**{source}** · profile **{Path(str(data.get('profile', '?'))).name}** · {len(runs)} runs")
metrics = list(dict.fromkeys(m for r in runs for m in r["measured"] if m in r["predicted"]))
if not metrics:
    st.warning("No metric is both measured and predicted in these runs.")
    st.stop()

summary = data.get("summary") or {}
if summary:
    st.subheader("Error per metric")
    st.dataframe([{"metric": units.metric_label(m),
                   "median |error|": units.format_quantity(s.get("median_abs_error"), "%"),
                   "p90 |error|": units.format_quantity(s.get("p90_abs_error"), "%"),
                   "band coverage": units.format_quantity(s.get("coverage"), "%")}
                  for m, s in summary.items()], hide_index=True, key=f"{P}.summary")
    st.caption("As written by `engram-planner validate` (errors relative to the measured value unless "
               "the result file says otherwise); coverage = share of runs whose measurement lies in the band.")
    drift_line = drift_caption(data)
    if drift_line:
        st.markdown(drift_line)

metric = st.selectbox("Metric", metrics, format_func=units.metric_label, key=f"{P}.metric")
fig = figures.validation_scatter(runs, metric)
st.plotly_chart(fig, key=f"{P}.fig")

unit = units.describe_metric(metric)[1]
# Step time only: the drift is measured on step times (validate's anchors).
controlled = drift_out(data) if metric == "step_time_s" else {}
rows = []
for r in runs:
    if metric not in r["measured"] or metric not in r["predicted"]:
        continue
    meas, pred = float(r["measured"][metric]), float(r["predicted"][metric])
    lo, hi = (r.get("band") or {}).get(metric) or [pred, pred]
    rows.append({"run": r["name"], "measured": units.format_quantity(meas, unit),
                 "predicted": units.format_quantity(pred, unit),
                 "band": f"{units.format_quantity(lo, unit)} – {units.format_quantity(hi, unit)}",
                 "error": units.format_percent((pred - meas) / meas, signed=True) if meas else "—",
                 **({"error, drift out": units.format_percent(controlled[r["name"]], signed=True)
                     if isinstance(controlled.get(r["name"]), (int, float)) else "—"} if controlled else {}),
                 "in band": "yes" if lo <= meas <= hi else "no",
                 "config": json.dumps(r.get("config", {}), separators=(",", ":"))[:120]})
st.dataframe(rows, hide_index=True, key=f"{P}.runs")
d1, d2 = st.columns(2)
d1.download_button("Figure (HTML)", lambda: fig.to_html(include_plotlyjs=True), f"validation-{metric}.html",
                   "text/html", key=f"{P}.dl.fig", icon=":material/download:")
with d2.expander("Fingerprint of the measuring machine"):
    st.json(data.get("fingerprint", {}))
