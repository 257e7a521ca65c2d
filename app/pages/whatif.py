"""What-if: one scenario, edited in the sidebar. The analytic estimate redraws on every change;
the discrete-event simulator runs when asked and its result is cached on the scenario's JSON."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from app import figures, runs, widgets
from planner.units import format_bytes, format_seconds

P = "wi"

# ----------------------------------------------------------------------------- inputs (sidebar)

with st.sidebar:
    start, raw = widgets.scenario_picker(P)
    try:
        with st.expander("Model", expanded=False):
            model_data = widgets.model_input(P, raw.get("model", "engram-27b"))
        with st.expander("Hardware", expanded=False):
            hw_data = widgets.hardware_input(P, raw.get("hardware", "h100-sxm"))
        with st.expander("Workload", expanded=False):
            wl_data = widgets.workload_input(P, raw.get("workload", {}))
        with st.expander("Engram placement", expanded=True):
            pl_data = widgets.placement_input(P, raw.get("placement", {}), widgets.engram_layer_ids(model_data))
        input_error = None
    except (widgets.SpecError, ValueError) as exc:
        input_error = exc

st.title("What-if")
if input_error is not None:
    widgets.show_error(input_error)
    st.stop()
try:
    scenario = widgets.build_scenario(start, model_data, hw_data, wl_data, pl_data, raw.get("description", ""))
except (widgets.SpecError, ValueError) as exc:
    widgets.show_error(exc)
    st.stop()

key = runs.scenario_json(scenario)
est = runs.analytic(key)
step = est["step"]
hw, model, w = scenario.hardware, scenario.model, scenario.workload
st.caption(f"**{model.name}** on **{hw.name}** ({hw.nodes} × {hw.device.count} × {hw.device.name}), "
           f"{w.kind}. Analytic estimate, redrawn on every change; run the simulator below for "
           "queueing, contention and the timeline.")

# ----------------------------------------------------------------------------- headline numbers

per_token = "output tokens/s" if w.kind == "inference" else "tokens/s"
drop = est["drop"]
exposed_ms = 1e3 * float(step.exposed_s)
cols = st.columns(6)
cols[0].metric(f"Throughput ({per_token})", f"{est['throughput']:,.0f}",
               help="Analytic: whole offline run for inference (planner.analytic.estimate_run), "
                    "one steady step for training")
cols[1].metric("Drop vs no Engram", "—" if drop is None else f"{100 * drop:.2f}%",
               help=f"Same run without Engram: {est['base_throughput']:,.0f} {per_token}. Includes "
                    "the Engram module's compute, not only its fetch.")
cols[2].metric("TTFT (first wave)", format_seconds(est["run"]["ttft_s"]) if est["run"] else "—")
cols[3].metric("TPOT (decode step)", format_seconds(float(step.step_s)))
cols[4].metric("Exposed Engram / step", format_seconds(exposed_ms / 1e3) if exposed_ms else "0 (hidden)")
cols[5].metric("Step bound", str(np.asarray(step.bound).item()))

tab_mem, tab_layers, tab_sim, tab_files = st.tabs(
    ["Memory per tier", "Engram layers", "Simulator & timeline", "Scenario & downloads"])

# ----------------------------------------------------------------------------- memory

with tab_mem:
    fp = est["footprint"]
    fig_mem = figures.tier_memory(fp, hw)
    c1, c2 = st.columns([3, 2])
    c1.plotly_chart(fig_mem, key="wi.fig.mem")
    fits = fp.device <= hw.device.memory and fp.host <= hw.host.memory
    c2.markdown(
        f"**GPU, per device:** {format_bytes(fp.device)} of {format_bytes(hw.device.memory)}  \n"
        f"**Host DRAM, per node:** {format_bytes(fp.host)} of {format_bytes(hw.host.memory)}  \n"
        f"**NVMe, per node:** {format_bytes(fp.disk)}"
        + (f" of {format_bytes(hw.nvme.capacity)}" if hw.nvme else "")
        + f"\n\nKV cache sized for {est['kv_tokens']:,} resident tokens per device "
          "(full batch of longest sequences).")
    (c2.success if fits else c2.warning)("Fits in memory." if fits else "Does not fit: see the capacity marks.")

# ----------------------------------------------------------------------------- per layer

with tab_layers:
    tiers = {l: scenario.placement.tier_of(l) for l in model.engram_layer_ids}
    rows = []
    for layer in model.engram_layer_ids:
        pl = step.per_layer.get(layer)
        if pl is None:
            rows.append({"layer": layer, "tier": tiers[layer], "rows / step": "—", "bytes / step": "—",
                         "fetch": "—", "window": "—", "exposed": "—", "status": "on device"})
            continue
        exposed = float(np.asarray(pl["exposed_s"]))
        rows.append({"layer": layer, "tier": tiers[layer], "rows / step": f"{float(pl['rows']):,.0f}",
                     "bytes / step": format_bytes(float(pl["bytes"])),
                     "fetch": format_seconds(float(np.asarray(pl["fetch_s"]))),
                     "window": format_seconds(float(np.asarray(pl["window_s"]))),
                     "exposed": format_seconds(exposed),
                     "status": f"exposed, {np.asarray(step.bound).item()}-bound" if exposed > 0 else "hidden"})
    if rows:
        st.dataframe(rows, hide_index=True, key="wi.layers")
        if step.per_layer:
            fig_layers = figures.engram_layers(step.per_layer, tiers)
            st.plotly_chart(fig_layers, key="wi.fig.layers")
    else:
        st.info("This model has no Engram layers.")
    st.caption(f"Step of {float(step.tokens_per_step):,.0f} tokens per device: compute "
               f"{format_seconds(float(step.compute_s))} + exposed {format_seconds(float(step.exposed_s))}. "
               "A fetch hides when it ends inside its window; the simulator adds per-block bound labels.")

# ----------------------------------------------------------------------------- simulator

with tab_sim:
    done = st.session_state.setdefault("wi.simulated", [])
    c1, c2 = st.columns([1, 3])
    if c1.button("Run simulator", type="primary", key="wi.simulate", icon=":material/play_arrow:"):
        with st.spinner("Simulating (and the no-Engram baseline)…"):
            try:
                runs.simulated(key)
                done.append(key)
            except ValueError as exc:
                widgets.show_error(exc)
    c2.caption(f"Discrete-event simulation of {w.num_sequences if w.kind == 'inference' else w.steps} "
               f"{'requests' if w.kind == 'inference' else 'steps'} plus the same run without Engram; "
               "results are cached per scenario. Fewer requests (Workload) simulate faster.")
    if key in done:
        sim = runs.simulated(key)
        m = sim["metrics"]
        cols = st.columns(5)
        cols[0].metric("Simulated throughput", f"{m['throughput_output_tokens_per_s']:,.0f}")
        cols[1].metric("Simulated drop", "—" if m["throughput_drop"] is None else f"{100 * m['throughput_drop']:.2f}%")
        cols[2].metric("TTFT p50 / p90", " / ".join(format_seconds(m["ttft_s"][k]) for k in ("p50", "p90"))
                       if m["ttft_s"] else "—")
        cols[3].metric("TPOT p50", format_seconds(m["tpot_s"]["p50"]) if m["tpot_s"] else "—")
        cols[4].metric("Exposed share of step time", f"{100 * m['exposed_fraction']:.2f}%")

        table = sim["spans"]
        steps_tracks = [i for i, t in enumerate(table.tracks) if t.endswith(" engine")]
        g1, g2, g3 = st.columns(3)
        device = g1.selectbox("Device", list(range(hw.device.count)), key="wi.gantt.device")
        dev_track = table.tracks.index(f"dev{device} engine") if f"dev{device} engine" in table.tracks else -1
        step_idx = np.flatnonzero(table.track_id == dev_track)
        n_steps = max(len(step_idx), 1)
        first = g2.number_input("First step shown", 0, n_steps - 1, min(n_steps - 1, n_steps // 2), key="wi.gantt.first")
        count = g3.number_input("Steps shown", 1, 50, 3, key="wi.gantt.count")
        if len(step_idx):
            a = step_idx[int(first)]
            b = step_idx[min(int(first) + int(count), len(step_idx)) - 1]
            t0, t1 = table.start_s[a], table.start_s[b] + table.dur_s[b]
        else:
            t0, t1 = 0.0, m["duration_s"]
        fig_gantt = figures.gantt(table, int(device), float(t0), float(t1))
        st.plotly_chart(fig_gantt, key="wi.fig.gantt")
        st.caption("Red = compute stalled waiting for Engram rows (exposed). Green copies with no red "
                   "beside them were hidden behind earlier blocks. Hover a bar for its name and time.")
        fig_sim_layers = figures.sim_layers(m["layers"])
        st.plotly_chart(fig_sim_layers, key="wi.fig.simlayers")
        d1, d2, d3 = st.columns(3)
        d1.download_button("Metrics JSON", json.dumps(m, indent=2, default=float), f"{start}-metrics.json",
                           "application/json", key="wi.dl.metrics", icon=":material/download:")
        d2.download_button("Chrome trace (Perfetto)", lambda: runs.chrome_trace_json(sim, scenario.name),
                           f"{start}-trace.json", "application/json", key="wi.dl.trace", icon=":material/download:")
        d3.download_button("Timeline figure (HTML)", lambda: fig_gantt.to_html(include_plotlyjs=True),
                           f"{start}-timeline.html", "text/html", key="wi.dl.gantt", icon=":material/download:")
    elif done:
        st.info("Inputs changed since the last simulation: run the simulator again for this scenario.")

# ----------------------------------------------------------------------------- files

with tab_files:
    scenario_yaml = widgets.dump_yaml(scenario.to_yaml_dict())
    d1, d2, d3 = st.columns(3)
    d1.download_button("Scenario YAML", scenario_yaml, f"{start}.yaml", "application/x-yaml",
                       key="wi.dl.yaml", icon=":material/download:",
                       help="Runs unchanged with `engram-planner simulate FILE`")
    d2.download_button("Analytic estimate JSON",
                       json.dumps({"scenario": scenario.name, "step": step.as_dict(), "run": est["run"],
                                   "baseline_run": est["base_run"], "throughput_drop": drop,
                                   "footprint": est["footprint"].as_dict()}, indent=2, default=float),
                       f"{start}-analytic.json", "application/json", key="wi.dl.analytic",
                       icon=":material/download:")
    d3.download_button("Memory figure (HTML)", lambda: fig_mem.to_html(include_plotlyjs=True),
                       f"{start}-memory.html", "text/html", key="wi.dl.memfig", icon=":material/download:")
    st.code(scenario_yaml, language="yaml")
