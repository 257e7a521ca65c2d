"""Write a plan's results: CSV and JSON tables, a self-contained HTML report, a manifest.

The HTML embeds plotly.js (``include_plotlyjs=True``, no CDN) so it opens offline. Figures:
throughput drop vs table size per hardware, decode stall vs (first) Engram layer id, and the
Pareto front of quality vs throughput (cost as colour when priced).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
from pathlib import Path

from planner.files import write_atomic
from planner.plan.results import PlanResult, _clean
from planner.plan.runner import code_version, study_key
from planner.plan.spec import PlanSpec, expand_plan, plan_to_yaml

CANDIDATE_COLUMNS = ("study", "id", "engram_params", "table_size_per_head", "layer_ids", "first_layer", "n_heads",
                     "row_width", "dtype", "routed_experts_traded", "tiers", "cache_fraction", "host_cache_fraction",
                     "prefetch", "max_num_seqs", "max_batched_tokens", "table_bytes", "device_bytes", "host_bytes",
                     "disk_bytes", "throughput_output_tokens_per_s", "throughput_drop", "ttft_p99_s", "tpot_p99_s",
                     "stall_fraction", "exposed_decode_s", "bound", "relative_loss", "usd_per_million_tokens",
                     "screen", "verified", "simulated_throughput", "simulated_drop", "recommended")


def manifest(plan: PlanSpec, results: list[PlanResult]) -> dict:
    studies = expand_plan(plan)
    profiles = {}
    for s in studies:
        hw = s.scenario.hardware
        profiles[hw.name] = {"fingerprint": hashlib.sha256(hw.model_dump_json().encode()).hexdigest()[:16],
                             "source": hw.source, "sources": hw.sources}
    text = plan_to_yaml(plan)
    return {"plan": plan.name, "code_version": code_version(), "seed": plan.seed,
            "inputs_hash": hashlib.sha256(text.encode()).hexdigest()[:20],
            "studies": [{"name": s.name, "key": study_key(s), "workload_seed": s.scenario.workload.seed,
                         "from_cache": r.meta.get("from_cache", False)} for s, r in zip(studies, results)],
            "hardware_profiles": profiles}


def write_report(plan: PlanSpec, results: list[PlanResult], out_dir: str | Path) -> dict[str, Path]:
    """Write every output file; each atomically (a run killed here leaves whole files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "candidates": out / "candidates.csv",
             "recommendations": out / "recommendations.csv", "html": out / "report.html",
             "manifest": out / "manifest.json", "plan": out / "plan.yaml"}
    write_atomic(paths["json"], json.dumps([r.as_dict() for r in results], indent=1, sort_keys=True) + "\n")
    f = io.StringIO(newline="")
    w = csv.DictWriter(f, CANDIDATE_COLUMNS, extrasaction="ignore")
    w.writeheader()
    for r in results:
        for row in r.candidates:
            w.writerow(_clean({**row, "study": r.study}))
    write_atomic(paths["candidates"], f.getvalue())
    f = io.StringIO(newline="")
    cols = ["study", "rank", "engram_params", "layer_ids", "tiers", "cache_fraction", "prefetch", "max_num_seqs",
            "throughput_output_tokens_per_s", "throughput_drop", "ttft_p99_s", "tpot_p99_s",
            "binding_constraint", "bottleneck", "explanation"]
    w = csv.DictWriter(f, cols, extrasaction="ignore")
    w.writeheader()
    for r in results:
        for rec in r.recommendations:
            w.writerow(_clean({**rec.candidate, **rec.metrics, "study": r.study, "rank": rec.rank,
                               "binding_constraint": rec.binding_constraint, "bottleneck": rec.bottleneck,
                               "explanation": rec.explanation}))
    write_atomic(paths["recommendations"], f.getvalue())
    write_atomic(paths["manifest"], json.dumps(manifest(plan, results), indent=2) + "\n")
    write_atomic(paths["plan"], plan_to_yaml(plan))
    write_atomic(paths["html"], html_report(plan, results))
    return paths


# ----------------------------------------------------------------------------- HTML


def figures(results: list[PlanResult]) -> list:
    import plotly.graph_objects as go

    drop = go.Figure()
    stall = go.Figure()
    pareto = go.Figure()
    for r in results:
        fits = [c for c in r.candidates if "memory" not in (c["screen"] or "") and "capacity" not in (c["screen"] or "")]
        best: dict[float, float] = {}
        for c in fits:
            p = round(c["engram_params"] / 1e9, 1)
            best[p] = min(best.get(p, float("inf")), c["throughput_drop"])
        xs = sorted(best)
        drop.add_trace(go.Scatter(x=xs, y=[100 * best[x] for x in xs], mode="lines+markers", name=r.study))
        by_layer: dict[int, float] = {}
        for c in fits:
            if c["tiers"] != "device" and c["prefetch"]:
                by_layer[c["first_layer"]] = max(by_layer.get(c["first_layer"], 0.0), 100 * c["stall_fraction"])
        ls = sorted(by_layer)
        stall.add_trace(go.Bar(x=[str(l) for l in ls], y=[by_layer[l] for l in ls], name=r.study))
        pts = [c for c in r.candidates if c["screen"] == "pass"]
        pareto.add_trace(go.Scatter(x=[c["engram_params"] / 1e9 for c in pts],
                                    y=[c["throughput_output_tokens_per_s"] for c in pts], mode="markers",
                                    marker={"size": 5, "opacity": 0.4}, name=f"{r.study}: screened"))
        front = r.pareto
        pareto.add_trace(go.Scatter(x=[p.metrics["engram_params"] / 1e9 for p in front],
                                    y=[p.metrics["throughput_output_tokens_per_s"] for p in front],
                                    mode="markers", marker={"size": 12, "symbol": "star"},
                                    name=f"{r.study}: verified Pareto front"))
    drop.update_layout(title="Lowest throughput drop vs Engram table size (candidates that fit in memory; analytic)",
                       xaxis_title="Engram parameters (B)", yaxis_title="throughput drop vs no Engram (%)")
    stall.update_layout(title="Worst decode stall vs first Engram layer id (offloaded, prefetch on; analytic)",
                        xaxis_title="first Engram layer id", yaxis_title="exposed fetch time (% of step)",
                        barmode="group")
    pareto.update_layout(title="Quality (memory slots ~ table size) vs throughput: screened and Pareto front",
                         xaxis_title="Engram parameters (B)", yaxis_title="output tokens/s")
    return [drop, stall, pareto]


def html_report(plan: PlanSpec, results: list[PlanResult]) -> str:
    figs = figures(results)
    parts = [f.to_html(full_html=False, include_plotlyjs=(k == 0)) for k, f in enumerate(figs)]
    body = [f"<h1>Engram plan: {html.escape(plan.name)}</h1><p>{html.escape(plan.description)}</p>"]
    for r in results:
        body.append(f"<h2>{html.escape(r.study)}</h2><p>{html.escape(r.model)} on {html.escape(r.hardware)}; "
                    f"{r.meta.get('candidates')} candidates, {r.meta.get('passed_screen')} passed the screen, "
                    f"{r.meta.get('simulations')} simulated.</p>")
        body.append("<p>Limits: " + html.escape("; ".join(r.limits)) + "</p>")
        if r.infeasible:
            body.append("<p><b>Infeasible.</b></p><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in r.infeasible.reasons)
                        + "</ul><p>Suggestions:</p><ul>"
                        + "".join(f"<li>{html.escape(x)}</li>" for x in r.infeasible.suggestions) + "</ul>")
        body.append("<ol>" + "".join(f"<li>{html.escape(rec.explanation)}</li>" for rec in r.recommendations) + "</ol>")
        body.append(f"<p><small>Quality model: {html.escape(r.quality_provenance)}</small></p>")
    return ("<!DOCTYPE html><html><head><meta charset='utf-8'><title>Engram plan</title></head><body>"
            + "\n".join(body) + "\n".join(parts) + "</body></html>\n")
