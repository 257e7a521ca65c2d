"""Planner: constraints and a search space in, ranked recommendations and the Pareto front out,
each with its reasons. The plan is built as the same YAML `engram-planner plan` runs (download
it), validated by :func:`planner.plan.plan_from_dict` and run by :func:`planner.plan.run_plan`,
whose progress events drive a progress bar (candidates screened, simulations run)."""

from __future__ import annotations

import json
from typing import Callable

import streamlit as st

from app import figures, widgets
from planner.loading import SCENARIOS_DIR, SpecError, read_yaml
from planner.units import format_bytes, format_params, format_seconds

P = "pl"
OBJECTIVE_TEXT = {
    "max_engram_params": "largest Engram tables",
    "min_throughput_drop": "smallest throughput drop",
    "max_throughput": "highest throughput",
    "min_cost_per_million_tokens": "lowest cost per million tokens",
    "min_relative_loss": "lowest predicted loss",
    "min_device_bytes": "least GPU memory",
}


def _list(text: str, cast, where: str) -> list | None:
    items = [t.strip() for t in text.replace(";", ",").split(",") if t.strip()]
    try:
        return [cast(t) for t in items] or None
    except ValueError:
        raise SpecError(f"plan: {where}: cannot read {text!r} as a comma-separated list") from None


def _layer_sets(text: str) -> list[list[int]] | None:
    sets = [s.strip() for s in text.split(";") if s.strip()]
    try:
        return [[int(x) for x in s.split(",") if x.strip()] for s in sets] or None
    except ValueError:
        raise SpecError(f"plan: studies[0].search.layer_ids: cannot read {text!r}: write layer sets "
                        "separated by ';', layers within a set by ',' (e.g. '1; 1, 15')") from None


KEPT_RUNS = 8  # plans whose results a session keeps, so going back to earlier inputs shows them again


def _run(plan_yaml: str, progress: Callable) -> list[dict]:
    """Run a plan (given as its YAML) and return each PlanResult as a dict. Not st.cache_data:
    a cached function must not drive an element made outside it (the progress bar)."""
    from planner.plan import plan_from_dict, run_plan

    plan = plan_from_dict(widgets.parse_yaml_text(plan_yaml, "plan"))
    return [r.as_dict() for r in run_plan(plan, workers=1, progress=progress)]


# ----------------------------------------------------------------------------- inputs

inference = sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml")
                   if (read_yaml(p) or {}).get("workload", {}).get("kind", "inference") == "inference")
titles = widgets.profile_titles()
with st.sidebar:
    start = st.selectbox("Base scenario", inference, key=f"{P}.start",
                         index=inference.index("h800-dense8b-engram100b") if "h800-dense8b-engram100b" in inference else 0)
    raw = read_yaml(SCENARIOS_DIR / f"{start}.yaml")
    own_hw = raw.get("hardware") if isinstance(raw.get("hardware"), str) else None
    hardware = st.multiselect("Hardware (one study each)", list(titles), default=[own_hw] if own_hw else [],
                              format_func=titles.get, key=f"{P}.hw")
    with st.expander("Workload", expanded=False):
        num_seqs = st.number_input("Requests simulated per candidate", 1, value=64, key=f"{P}.nseq",
                                   help="`workload.num_sequences`: fewer is faster to verify")
        prompt = st.text_input("Prompt length", "{kind: uniform, low: 128, high: 512}", key=f"{P}.prompt")
        output = st.text_input("Output length", "16", key=f"{P}.output")
    with st.expander("Search space", expanded=True):
        params_text = st.text_input("Engram parameters (all layers)", "25B, 100B, 400B, 1000B", key=f"{P}.params")
        layers_text = st.text_input("Layer sets ('; ' between sets)", "1; 1, 15", key=f"{P}.layers")
        tiers = st.multiselect("Tiers", widgets.TIERS, default=["device", "host"], key=f"{P}.tiers")
        cache_text = st.text_input("Hot-row cache fractions", "0, 0.02", key=f"{P}.cache")
        prefetch = st.multiselect("Prefetch", [True, False], default=[True, False], key=f"{P}.prefetch",
                                  format_func=lambda b: "on" if b else "off")

st.title("Planner")
st.caption("How big may the Engram tables be, at which layers, in which tier? Every candidate is "
           "screened analytically, the best are simulated and explained.")

c1, c2, c3, c4 = st.columns(4)
max_drop = c1.number_input("Max throughput drop (%)", 0.0, 100.0, 2.0, 0.5, key=f"{P}.drop")
tpot_p99 = c2.number_input("Max TPOT p99 (ms, 0 = none)", 0.0, value=30.0, key=f"{P}.tpot")
ttft_p99 = c3.number_input("Max TTFT p99 (ms, 0 = none)", 0.0, value=0.0, key=f"{P}.ttft")
top_n = c4.number_input("Recommendations", 1, 10, 3, key=f"{P}.topn")
objectives = st.multiselect("Objectives (ranking order)", list(OBJECTIVE_TEXT),
                            default=["max_engram_params", "min_throughput_drop", "min_device_bytes"],
                            format_func=OBJECTIVE_TEXT.get, key=f"{P}.objectives")

try:
    from planner.plan import plan_from_dict, plan_to_yaml

    constraints: dict = {"max_throughput_drop": max_drop / 100}
    if tpot_p99 > 0:
        constraints["tpot"] = {"p99": f"{tpot_p99:g} ms"}
    if ttft_p99 > 0:
        constraints["ttft"] = {"p99": f"{ttft_p99:g} ms"}
    search = {"engram_params": _list(params_text, str, "studies[0].search.engram_params"),
              "layer_ids": _layer_sets(layers_text), "tier": tiers or None,
              "cache_fraction": _list(cache_text, float, "studies[0].search.cache_fraction"),
              "prefetch": prefetch or None}
    study = {"name": start, "scenario": start,
             "set": {"workload.num_sequences": int(num_seqs),
                     "workload.prompt_len": widgets.parse_yaml_text(prompt, "workload.prompt_len"),
                     "workload.output_len": widgets.parse_yaml_text(output, "workload.output_len")},
             "search": {k: v for k, v in search.items() if v is not None}}
    if len(hardware) > 1:
        study["grid"] = {"hardware": list(hardware)}
    elif hardware:
        study["set"]["hardware"] = hardware[0]
    data = {"name": f"app-{start}", "description": "written by the engram-planner dashboard",
            "defaults": {"constraints": constraints, "objectives": objectives or ["max_engram_params"],
                         "verify": {"top_n": int(top_n), "max_simulations": max(int(top_n) + 2, 4),
                                    "pareto_max": 3}},
            "studies": [study]}
    plan = plan_from_dict(data)
    plan_yaml = plan_to_yaml(plan)
except ImportError:
    st.info("The planner (planner.plan) is not installed in this build.")
    st.stop()
except (SpecError, ValueError) as exc:
    widgets.show_error(exc)
    st.stop()

d1, d2 = st.columns([1, 3])
d1.download_button("Plan YAML", plan_yaml, f"plan-{start}.yaml", "application/x-yaml", key=f"{P}.dl.plan",
                   icon=":material/download:", help="Runs unchanged: engram-planner plan FILE")
with d2.expander("Plan YAML (what `engram-planner plan` runs)"):
    st.code(plan_yaml, language="yaml")

runs: dict[str, list[dict]] = st.session_state.setdefault(f"{P}.runs", {})  # plan YAML -> results
if st.button("Run plan", type="primary", key=f"{P}.run", icon=":material/play_arrow:"):
    bar = st.progress(0.0, text="Screening candidates…")
    try:
        runs[plan_yaml] = _run(plan_yaml, lambda event: bar.progress(event.fraction, text=event.text()))
        while len(runs) > KEPT_RUNS:
            runs.pop(next(iter(runs)))
    except (SpecError, ValueError) as exc:
        bar.empty()
        widgets.show_error(exc)
if plan_yaml not in runs:
    if runs:
        st.info("Inputs changed since the last run: run the plan again.")
    st.stop()

results = runs[plan_yaml]
st.download_button("Results JSON", json.dumps(results, indent=2), f"plan-{start}-results.json",
                   "application/json", key=f"{P}.dl.results", icon=":material/download:")
tabs = st.tabs([r["study"] for r in results]) if len(results) > 1 else [st.container()]
for i, (tab, r) in enumerate(zip(tabs, results)):
    with tab:
        st.markdown(f"**{r['model']}** on **{r['hardware']}** — limits: " + "; ".join(r["limits"]))
        if r["infeasible"]:
            inf = r["infeasible"]
            st.warning("**No candidate meets every constraint.**\n\n"
                       + "\n".join(f"- {x}" for x in inf["reasons"])
                       + ("\n\n**What would make it feasible:**\n\n" + "\n".join(f"- {x}" for x in inf["suggestions"])
                          if inf["suggestions"] else ""))
        rows = []
        for rec in r["recommendations"]:
            c, m = rec["candidate"], rec["metrics"]
            rows.append({"rank": rec["rank"], "Engram params": format_params(c["engram_params"]),
                         "table bytes": format_bytes(c["table_bytes"]), "layers": c["layer_ids"],
                         "tier": c["tiers"], "cache": f"{c['cache_fraction']:.3g}",
                         "prefetch": "on" if c["prefetch"] else "off",
                         "tokens/s": f"{m['throughput_output_tokens_per_s']:,.0f}",
                         "drop": f"{100 * m['throughput_drop']:.2f}%",
                         "TPOT p99": format_seconds(m["tpot_p99_s"]) if m.get("tpot_p99_s") else "—",
                         "GPU bytes": format_bytes(m["device_bytes"]),
                         "binding": rec["binding_constraint"] or "—", "bottleneck": rec["bottleneck"]})
        if rows:
            st.subheader("Recommendations")
            st.dataframe(rows, hide_index=True, key=f"{P}.recs.{i}")
            for rec in r["recommendations"]:
                with st.expander(f"#{rec['rank']}: why", expanded=rec["rank"] == 1):
                    st.markdown(rec["explanation"])
                    st.caption("Margins: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in rec["margins"].items()))
        duplicates = [c for c in r["candidates"] if c.get("dominated_by") is not None]
        if duplicates:
            st.caption("Not recommended, the same outcome for more memory: " + "; ".join(
                f"candidate {c['id']} ({c['tiers']}, cache {c['cache_fraction']:g}): {c['dominated_reason']}"
                for c in duplicates))
        front_ids = {p["candidate"]["id"] for p in r["pareto"]}
        points = [{"x": c["engram_params"] / 1e9, "y": 100 * c["throughput_drop"],
                   "label": f"#{c['id']}: {c['engram_params'] / 1e9:.0f}B at {c['layer_ids']} on {c['tiers']}, "
                            f"cache {c['cache_fraction']:g}, prefetch {'on' if c['prefetch'] else 'off'} ({c['screen']})"}
                  for c in r["candidates"] if c.get("throughput_drop") is not None]
        front = [j for j, c in enumerate(c for c in r["candidates"] if c.get("throughput_drop") is not None)
                 if c["id"] in front_ids]
        fig = figures.pareto(points, "x", "y", "Engram parameters (B)", "throughput drop (%, screened)", front)
        st.plotly_chart(fig, key=f"{P}.fig.{i}")
        st.download_button("Pareto figure (HTML)", lambda fig=fig: fig.to_html(include_plotlyjs=True),
                           f"pareto-{i}.html", "text/html", key=f"{P}.dl.fig.{i}", icon=":material/download:")
        st.caption(f"{len(r['candidates'])} candidates screened; the line joins the verified Pareto front "
                   f"({len(r['pareto'])}). Objectives: " + ", ".join(OBJECTIVE_TEXT.get(o, o) for o in r["objectives"]))
