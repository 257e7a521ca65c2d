"""What-if: one scenario, edited in the sidebar. The analytic estimate redraws on every change;
the discrete-event simulator runs when asked and its result is cached on the scenario's JSON."""

from __future__ import annotations

import json

import numpy as np
import streamlit as st

from app import figures, runs, widgets
from planner.specs.limits import capacity_problems, check_analytic_run, check_simulation
from planner.units import format_bytes, format_percent, format_rate, format_seconds

P = "wi"


def card(col, label: str, value: str, help: str | None = None) -> None:
    col.metric(label, value, help=help, border=True)


def card_slots(n: int = 6) -> list:
    """``n`` card places, three to a row: six in one row truncate labels and values
    ("174,..." for 174,027) at 1400 px."""
    return [col for _ in range(-(-n // 3)) for col in st.columns(3)][:n]


# ----------------------------------------------------------------------------- inputs (sidebar)

with st.sidebar:
    start, raw = widgets.scenario_picker(P)
    scope = f"{P}.{start}"
    parts, input_error = widgets.scenario_inputs(scope, raw)
    model_data, hw_data = parts.get("model"), parts.get("hardware")
    wl_data, pl_data = parts.get("workload"), parts.get("placement")

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
try:
    check_analytic_run(scenario)  # the estimate loops over batches: count them first
    est = runs.analytic(key)
except ValueError as exc:  # a valid spec the estimator cannot price says why, in the page
    widgets.show_error(exc)
    st.stop()
step = est["step"]
hw, model, w = scenario.hardware, scenario.model, scenario.workload
per_token = "output tokens/s" if w.kind == "inference" else "tokens/s"
st.caption(f"**{model.name}** on **{hw.name}** ({hw.nodes} × {hw.device.count} × {hw.device.name}), "
           f"{w.kind}. Analytic estimate, redrawn on every change (drop: against the same run without "
           f"Engram, {format_rate(est['base_throughput'])} {per_token}, Engram compute included); run the simulator "
           "below for queueing, contention and the timeline.")

# ----------------------------------------------------------------------------- headline numbers

drop = est["drop"]
exposed_ms = 1e3 * float(step.exposed_s)
fp = est["footprint"]
over_tier = [f"{what} needs {format_bytes(need)} of {format_bytes(cap)}" for what, need, cap in (
    ("the GPU", fp.device, hw.device.memory), ("host DRAM", fp.host, hw.host.memory),
    ("NVMe", fp.disk, hw.nvme.capacity if hw.nvme else 0.0)) if need > cap]
if over_tier:
    # Said before the numbers, not beside them: they price a placement that cannot be built.
    st.warning("**Does not fit in memory:** " + "; ".join(over_tier) + ". The numbers below are what it "
               "would run at if it fit; shrink the tables, offload them or pick a machine with more memory.")
cols = card_slots(6)
card(cols[0], "Throughput, tok/s" if w.kind == "training" else "Output tok/s", format_rate(est["throughput"]),
               help="Analytic: whole run for inference (planner.analytic.estimate_run: waves of "
                    "max_num_seqs; with an arrival rate, no faster than the requests arrive), "
                    "one steady step for training")
card(cols[1], "Drop vs no Engram", "—" if drop is None else format_percent(drop),
     help="Throughput lost against the same run without Engram (its compute and its lookups)")
if w.kind == "training":
    card(cols[2], "Step time", format_seconds(float(step.step_s)),
         help="Forward + backward over the batch, lookups a step ahead, row-gradient updates behind it "
              "(planner.analytic: the busiest of compute, worker pool and copy engines)")
    card(cols[3], "Tokens / step", f"{float(step.tokens_per_step):,.0f}", help="batch_size x seq_len per device")
else:
    run = est["run"]
    running = float(run.running_seqs) if run is not None else float(step.tokens_per_step)
    arrivals = w.arrival_rate is not None and run is not None and running < w.max_num_seqs
    card(cols[2], "TTFT (one request)" if arrivals else "TTFT (first wave)",
         format_seconds(float(run.ttft_s)) if run is not None else "—",
         help="Time to first token of a request arriving at an engine with room for it: its own prefill"
              if arrivals else "Time to first token of the first batch: its prefill (chunked by the token "
              "budget) and the first decode step")
    card(cols[3], "TPOT (decode step)", format_seconds(float(run.decode_step_s if run is not None else step.step_s)),
         help=(f"Time per output token: one decode step at the {running:.3g} sequences per GPU the arrivals "
               "sustain (Little's law), exposed lookups included") if arrivals else
              "Time per output token: one steady decode step of the full batch, exposed lookups included")
card(cols[4], "Exposed / step", format_seconds(exposed_ms / 1e3) if exposed_ms else "0 s",
     help="Time per step the GPU waits for Engram rows that did not arrive within their prefetch window")
card(cols[5], "Step bound", str(np.asarray(step.bound).item()),
     help="What limits the step: compute, device memory (hbm), the host link, host gathers or disk")

# ----------------------------------------------------------------------------- memory and layers

tiers = {l: scenario.placement.tier_of(l) for l in model.engram_layer_ids}
left, right = st.columns(2, gap="large")
with left:
    fig_mem = figures.tier_memory(fp, hw)
    st.plotly_chart(fig_mem, key="wi.fig.mem")
    nvme = f" of {format_bytes(hw.nvme.capacity)}" if hw.nvme else ""
    text = (f"GPU {format_bytes(fp.device)} of {format_bytes(hw.device.memory)} per device · host DRAM "
            f"{format_bytes(fp.host)} of {format_bytes(hw.host.memory)} · NVMe {format_bytes(fp.disk)}{nvme}."
            + (f" KV cache for {est['kv_tokens']:,} resident tokens per device (full batch of longest sequences)."
               if w.kind == "inference" else " Weights and tables only: gradients, optimiser moments and "
               "activations of training are not counted."))
    st.caption(text)
with right:
    if step.per_layer:
        fig_layers = figures.engram_layers(step.per_layer, tiers)
        st.plotly_chart(fig_layers, key="wi.fig.layers")
    elif model.engram is None:
        st.info("This model has no Engram layers: it is its own baseline.")
    else:
        st.info("Every Engram table is on the device: nothing is fetched, so nothing can be exposed. "
                "Pick host or disk to see the fetch against its prefetch window.")
    rows = []
    for layer in model.engram_layer_ids:
        pl = step.per_layer.get(layer)
        if pl is None:
            rows.append({"layer": layer, "tier": tiers[layer], "bytes / step": "—",
                         "fetch": "—", "window": "—", "exposed": "—", "status": "on device"})
            continue
        exposed = float(np.asarray(pl["exposed_s"]))
        rows.append({"layer": layer, "tier": tiers[layer],
                     "bytes / step": format_bytes(float(pl["bytes"])),
                     "fetch": format_seconds(float(np.asarray(pl["fetch_s"]))),
                     "window": format_seconds(float(np.asarray(pl["window_s"]))),
                     "exposed": format_seconds(exposed),
                     "status": f"exposed ({np.asarray(step.bound).item()}-bound)" if exposed > 0 else "hidden"})
    if rows:
        st.dataframe(rows, hide_index=True, key="wi.layers")
    cache = scenario.placement.cache_fraction
    offloaded = [l for l in model.engram_layer_ids if tiers[l] != "device"]
    why_cache = ""
    if cache > 0 and offloaded and float(step.exposed_s) == 0:
        cached = sum(v for k, v in fp.breakdown.items() if k.startswith("engram_cache_L"))
        why_cache = (f" The hot-row cache ({format_bytes(cached)} of GPU memory) cuts the bytes fetched, but "
                     "every fetch already hides behind its window, so it saves no time here; the memory it "
                     "takes is not left to the KV cache.")
    st.caption(f"Step of {float(step.tokens_per_step):,.0f} tokens per device: compute "
               f"{format_seconds(float(step.compute_s))} + exposed {format_seconds(float(step.exposed_s))}. "
               "A fetch hides when it ends inside its window." + why_cache)

tab_sim, tab_files = st.tabs(["Simulator & timeline", "Scenario & downloads"])

# ----------------------------------------------------------------------------- simulator

with tab_sim:
    done = st.session_state.setdefault("wi.simulated", [])
    c1, c2 = st.columns([1, 3])
    over = capacity_problems(scenario)
    if over:
        st.warning("**Physically impossible as placed:** " + "; ".join(over)
                   + ". The simulator refuses a device that leaves no room for a KV cache, but it does not "
                   "model host DRAM or NVMe capacity; the planner would not run this.")
    if c1.button("Run simulator", type="primary", key="wi.simulate", icon=":material/play_arrow:"):
        with st.spinner("Simulating (and the no-Engram baseline)…"):
            try:
                check_simulation(scenario, "scenario", trace=True)  # counted before anything is built
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
        cols = card_slots(6)
        simulated = m["throughput_output_tokens_per_s"]
        card(cols[0], "Simulated tok/s", format_rate(simulated),
             help="Output tokens over the simulated run's wall time (training: tokens trained)")
        card(cols[1], "Simulated drop", "—" if m["throughput_drop"] is None else format_percent(m["throughput_drop"]),
             help="Against the same simulation without Engram")
        if w.kind == "training":
            card(cols[2], "Mean step", format_seconds(m["mean_step_time_s"]), help="Forward + backward + updates")
            card(cols[3], "Steps (all devices)", f"{m['steps']:,}", help="Training steps simulated, summed over devices")
            card(cols[4], "Run", format_seconds(m["duration_s"]), help="Simulated wall time of the whole run")
        else:
            card(cols[2], "TTFT p50", format_seconds(m["ttft_s"]["p50"]) if m["ttft_s"] else "—",
                 help="Median time from a request's arrival to its first token, queueing included")
            card(cols[3], "TTFT p90", format_seconds(m["ttft_s"]["p90"]) if m["ttft_s"] else "—",
                 help="90th percentile of time to first token")
            card(cols[4], "TPOT p50", format_seconds(m["tpot_s"]["p50"]) if m["tpot_s"] else "—",
                 help="Median time per output token after the first")
        card(cols[5], "Exposed share", format_percent(m["exposed_fraction"]),
             help="Stalled time waiting for Engram rows / total step time")
        if est["throughput"] > 0:
            st.caption(
                f"Simulated {format_rate(simulated)} vs analytic {format_rate(est['throughput'])} {per_token} "
                f"({simulated / est['throughput'] - 1:+.1%}). The analytic estimate has no queueing between "
                "requests, splits shared DRAM and links statically between devices, and prices batches at "
                "their mean lengths (the last batch's drain aside); the simulator runs every step with sampled "
                "lengths and arrivals (docs/simulator.md, \"Analytic estimator vs simulator\").")
        if m.get("serving"):
            from planner.sim.metrics import serving_lines  # with the simulator, on first use (runs.simulated)

            st.caption("  \n".join(serving_lines(m["serving"], (m.get("baseline") or {}).get("serving"))))

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
                       json.dumps({"scenario": scenario.name, "step": step.as_dict(),
                                   "run": est["run"].as_dict() if est["run"] else None,
                                   "baseline_run": est["base_run"].as_dict() if est["base_run"] else None,
                                   "throughput_drop": drop,
                                   "footprint": est["footprint"].as_dict()}, indent=2, default=float),
                       f"{start}-analytic.json", "application/json", key="wi.dl.analytic",
                       icon=":material/download:")
    d3.download_button("Memory figure (HTML)", lambda: fig_mem.to_html(include_plotlyjs=True),
                       f"{start}-memory.html", "text/html", key="wi.dl.memfig", icon=":material/download:")
    st.code(scenario_yaml, language="yaml")
