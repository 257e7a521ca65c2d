"""Write a plan's results: CSV and JSON tables, a self-contained HTML report, a manifest.

The HTML report reads top-down: the answer first (per study, the plan to run with its
throughput and drop, or that nothing is feasible, and what is out of reach and why), then a
table per study (recommendations, dominated duplicates left out and why, what rejects the
rest), then the charts: lowest throughput drop vs table size per study, worst decode stall vs
first Engram layer (said in words when nothing stalls), and screened candidates (feasible and
infeasible apart) with the verified Pareto front. Studies whose curves coincide (H800 and H100
often do) get their own dash, marker and width, a legend note and a caption. Offline: inline
CSS, plotly.js embedded once (no CDN).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import math
from pathlib import Path

from planner.files import write_atomic
from planner.plan.engines import engine_settings
from planner.plan.results import PlanResult, _clean
from planner.plan.runner import code_version, study_key
from planner.plan.spec import PlanSpec, expand_plan, plan_to_yaml
from planner.units import format_bytes, format_params, format_rate, format_seconds

CANDIDATE_COLUMNS = ("study", "id", "engram_params", "table_size_per_head", "layer_ids", "first_layer", "n_heads",
                     "row_width", "dtype", "routed_experts_traded", "tiers", "cache_fraction", "host_cache_fraction",
                     "prefetch", "max_num_seqs", "max_batched_tokens", "table_bytes", "device_bytes", "host_bytes",
                     "disk_bytes", "throughput_output_tokens_per_s", "throughput_drop", "ttft_p99_s", "tpot_p99_s",
                     "stall_fraction", "exposed_decode_s", "bound", "relative_loss", "usd_per_million_tokens",
                     "screen", "verified", "simulated_throughput", "simulated_drop", "recommended", "dominated_by",
                     "dominated_reason")


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

# One look per study, so lines and markers that coincide stay apart: a colour, a dash, a
# marker symbol, and a width that shrinks with the index (an earlier, wider line shows around a
# later one drawn on top of it).
COLOURS = ("#1f5fa8", "#d1495b", "#2a9d5c", "#8e5cc2", "#e08a00", "#5f6b7a")
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
SYMBOLS = ("circle", "square", "diamond", "triangle-up", "triangle-down", "hexagon")
LIMIT_LABELS = {"device_memory": "device memory", "host_memory": "host memory", "disk_capacity": "NVMe capacity",
                "throughput_drop": "throughput drop", "min_throughput": "throughput", "relative_loss": "quality",
                "cost_per_hour": "cost per hour", "cost_per_million_tokens": "cost per million tokens"}
TIER_WORDS = {"device": "device HBM", "host": "host DRAM", "disk": "NVMe"}
FONT = 'system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif'
CSS = """
:root { --fg: #1d2330; --muted: #5b6473; --line: #d5dbe4; --zebra: #f5f7fa; --head: #e8ecf2;
        --accent: #1f5fa8; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; background: #eceff3; color: var(--fg);
       font: 16px/1.55 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1260px; margin: 0 auto; padding: 28px 44px 56px; background: #fff; min-height: 100vh;
       box-shadow: 0 0 0 1px var(--line); }
h1 { font-size: 1.85rem; line-height: 1.2; margin: 0 0 .25rem; }
h2 { font-size: 1.35rem; margin: 2.4rem 0 .3rem; padding-top: 1.1rem; border-top: 2px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.5rem 0 .45rem; }
p { margin: .4rem 0 .7rem; max-width: 80ch; }
.lede, .meta, .note, footer { color: var(--muted); }
.meta, .note { font-size: .92rem; }
.answer { border-left: 5px solid var(--accent); background: #f1f5fb; padding: 14px 22px 10px; border-radius: 6px;
          margin: 1.1rem 0 1.6rem; }
.answer h2 { border: 0; margin: 0 0 .3rem; padding: 0; font-size: 1.15rem; }
.answer ul { margin: .3rem 0; padding-left: 1.2rem; }
.answer li { margin: .1rem 0 .7rem; }
.answer .why { display: block; color: var(--muted); font-size: .92rem; }
.answer .none { color: var(--bad); font-weight: 600; }
table { border-collapse: collapse; width: 100%; font-size: .86rem; margin: .3rem 0 .8rem; }
th, td { border: 1px solid var(--line); padding: 5px 8px; vertical-align: top; }
th { background: var(--head); text-align: left; font-weight: 600; }
tbody tr:nth-child(even) { background: var(--zebra); }
td { white-space: nowrap; }
td.wrap { white-space: normal; min-width: 18rem; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.scroll { overflow-x: auto; }
.chip { display: inline-block; border: 1px solid var(--line); border-radius: 999px; padding: 0 10px;
        margin: 2px 4px 2px 0; font-size: .84rem; background: #fafbfc; }
.callout { border-left: 5px solid var(--bad); background: #fcf1f0; padding: 8px 18px; border-radius: 6px; }
.callout h3 { margin-top: .5rem; }
.callout ul { margin: .2rem 0 .6rem; }
details { margin: .35rem 0; }
summary { cursor: pointer; font-weight: 600; }
details p { font-size: .93rem; }
.chart { margin: .4rem 0 1.8rem; }
footer { margin-top: 3rem; font-size: .85rem; border-top: 1px solid var(--line); padding-top: .6rem; }
"""


def html_report(plan: PlanSpec, results: list[PlanResult]) -> str:
    """The report a person reads: the answer first (one sentence per study: the recommended
    plan with its throughput and drop, and what is infeasible and why), a table per study,
    then the charts, each with a caption saying how to read it. Self-contained and offline:
    inline CSS, plotly.js embedded once (no CDN)."""
    labels = _labels(results)
    body = [f"<h1>Engram plan: {_e(plan.name)}</h1>"]
    if plan.description:
        body.append(f'<p class="lede">{_e(plan.description)}</p>')
    body.append('<section class="answer" id="answer"><h2>Answer</h2><ul>'
                + "".join(f"<li>{_headline(r, label)}</li>" for r, label in zip(results, labels)) + "</ul></section>")
    for k, r in enumerate(results):
        body.append(_study_section(k, r))
    body.append('<h2 id="charts">Charts</h2>')
    first = True
    for title, fig, notes in figures(results, labels):
        body.append(f'<section class="chart"><h3>{_e(title)}</h3>')
        if fig is not None:
            body.append(fig.to_html(full_html=False, include_plotlyjs=first, default_width="100%",
                                    default_height="460px", config={"displaylogo": False, "responsive": True}))
            first = False
        body += [f'<p class="note">{_e(n)}</p>' for n in notes]
        body.append("</section>")
    body.append(f"<footer>engram-planner {_e(code_version())}; plan seed {plan.seed}. Tables: results.json, "
                "candidates.csv, recommendations.csv; inputs and provenance: manifest.json, plan.yaml.</footer>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>Engram plan: {_e(plan.name)}</title><style>{CSS}</style></head><body><main>"
            + "\n".join(body) + "</main></body></html>\n")


# ----------------------------------------------------------------------------- words and tables


def _e(text: object) -> str:
    return html.escape(str(text))


def _labels(results: list[PlanResult]) -> list[str]:
    """What to call each study in sentences and legends: its hardware when that tells the
    studies apart (the usual grid), else its name."""
    hw = [r.hardware for r in results]
    return hw if len(set(hw)) == len(hw) else [r.study for r in results]


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _show(value, fn) -> str:
    """A formatted value, or an em dash for one that does not apply (the formatters refuse NaN)."""
    return "—" if _missing(value) else fn(float(value))


def _pct(fraction) -> str:
    return _show(fraction, lambda f: f"{100 * f:.2f}%")


def _params(value: float) -> str:
    """``800B``, ``50M``: a count of parameters where the sentence says "Engram parameters"."""
    return format_params(value).removesuffix(" params")


def _layers(text: str) -> str:
    return ("layers " if "," in text else "layer ") + text.replace(",", ", ")


def _plan_phrase(c: dict) -> str:
    """'800B Engram parameters (1.6 TB) at layer 1 in host DRAM, prefetch on, no hot-row cache,
    max_num_seqs 32'."""
    text = (f"{_params(c['engram_params'])} Engram parameters ({format_bytes(c['table_bytes'])}) at "
            f"{_layers(c['layer_ids'])} in {TIER_WORDS.get(c['tiers'], c['tiers'])}")
    if c["tiers"] != "device":
        cache = ("no hot-row cache" if c["cache_fraction"] == 0
                 else f"{100 * c['cache_fraction']:g}% of rows cached on the GPU")
        text += f", prefetch {'on' if c['prefetch'] else 'off'}, {cache}"
    if c.get("routed_experts_traded"):
        text += f", {c['routed_experts_traded']} routed experts traded"
    return text + f", max_num_seqs {c['max_num_seqs']}"


def _headline(r: PlanResult, label: str) -> str:
    """One sentence: the plan to run and what it gives; then, muted, what is out of reach."""
    where = f"<b>{_e(label)}</b>" + ("" if label == r.hardware else f" on {_e(r.hardware)}")
    if r.best is None:
        inf = r.infeasible
        rejects = [x for x in (inf.reasons[1:] if inf else []) if " rejects " in x]
        why = _sentence("; ".join(_reject_words(x) for x in rejects)) if rejects else ""
        fix = f" Closest fix: {inf.suggestions[0]}." if inf and inf.suggestions else ""
        return (f"{where}: <span class='none'>no candidate meets every constraint</span>."
                f"<span class='why'>{_e(why + fix)}</span>")
    m = r.best.metrics
    text = (f"{where}: run <b>{_e(_plan_phrase(r.best.candidate))}</b> — "
            f"<b>{_e(format_rate(m['throughput_output_tokens_per_s']))} output tokens/s</b>, "
            f"<b>{_e(_pct(m['throughput_drop']))}</b> below the same run without Engram.")
    if r.best.larger_table:
        text += f"<span class='why'>{_e(r.best.larger_table)}</span>"
    return text


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _reject_words(reason: str) -> str:
    """'host_memory rejects 12 of 12 ...' -> 'host memory rejects 12 of 12 ...'."""
    name, _, rest = reason.partition(" rejects ")
    return f"{_limit_label(name)} rejects {rest}"


def _limit_label(name: str) -> str:
    if name in LIMIT_LABELS:
        return LIMIT_LABELS[name]
    kind, _, q = name.partition("_")  # ttft_p99 -> TTFT p99
    return f"{kind.upper()} {q}" if kind in ("ttft", "tpot") else name.replace("_", " ")


def _table(head: list[str], rows: list[list[str]], numeric: set[int], wrap: frozenset[int] = frozenset()) -> str:
    """An HTML table of escaped text; columns in ``numeric`` right-aligned, cells stay on one
    line except in the prose columns ``wrap``."""
    cls = lambda j: ' class="num"' if j in numeric else ' class="wrap"' if j in wrap else ""  # noqa: E731
    out = ["<div class='scroll'><table><thead><tr>"] + [f"<th{cls(j)}>{_e(h)}</th>" for j, h in enumerate(head)]
    out.append("</tr></thead><tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td{cls(j)}>{_e(v)}</td>" for j, v in enumerate(row)) + "</tr>")
    return "".join(out) + "</tbody></table></div>"


KNOBS = ["Engram tables", "placement", "hot cache", "prefetch", "max seqs"]


def _knobs(c: dict) -> list[str]:
    """The candidate's choices as table cells (``KNOBS``)."""
    offloaded = c["tiers"] != "device"
    return [f"{_params(c['engram_params'])} · {format_bytes(c['table_bytes'])}",
            f"{_layers(c['layer_ids'])} · {TIER_WORDS.get(c['tiers'], c['tiers'])}",
            f"{100 * c['cache_fraction']:g}%" if offloaded else "—",
            ("on" if c["prefetch"] else "off") if offloaded else "—", str(c["max_num_seqs"])]


def _study_section(k: int, r: PlanResult) -> str:
    meta = r.meta
    parts = [f"<h2 id='study-{k}'>{_e(r.study)}</h2>",
             f"<p class='meta'>{_e(r.model)} (base) on {_e(r.hardware)} · {meta.get('candidates', 0):,} candidates · "
             f"{meta.get('passed_screen', 0):,} passed the analytic screen · {meta.get('simulations', 0)} simulated"
             + (" · from the resume cache" if meta.get("from_cache") else "") + "</p>",
             "<p>" + "".join(f"<span class='chip'>{_e(x)}</span>" for x in r.limits) + "</p>"]
    if r.recommendations:
        parts.append("<h3>Recommendations (simulated)</h3>")
        head = ["#", *KNOBS, "output tok/s", "drop", "TTFT p99", "TPOT p99", "GPU memory / device",
                "host memory / node", "binding", "bottleneck"]
        rows = []
        for rec in r.recommendations:
            c, m = rec.candidate, rec.metrics
            rows.append([str(rec.rank), *_knobs(c),
                         _show(m["throughput_output_tokens_per_s"], format_rate), _pct(m["throughput_drop"]),
                         _show(m.get("ttft_p99_s"), format_seconds), _show(m.get("tpot_p99_s"), format_seconds),
                         format_bytes(m["device_bytes"]), format_bytes(m["host_bytes"]),
                         _limit_label(rec.binding_constraint) if rec.binding_constraint else "—", rec.bottleneck])
        parts.append(_table(head, rows, {0, 3, 5, 6, 7, 8, 9, 10, 11}))
        parts += [f"<details{' open' if rec.rank == 1 else ''}><summary>Why #{rec.rank}</summary>"
                  f"<p>{_e(rec.explanation)}</p>"
                  + "".join(f"<p><b>{_e(engine)}</b>: <code>{_e(command)}</code></p>"
                            for engine, command in engine_settings(rec.scenario).items())
                  + "</details>" for rec in r.recommendations]
    duplicates = [c for c in r.candidates if c.get("dominated_by") is not None]
    if duplicates:
        parts.append("<h3>Not recommended: the same outcome for more memory</h3>")
        rows = [[str(c["id"]), *_knobs(c), format_bytes(c["device_bytes"]), c["dominated_reason"]]
                for c in duplicates]
        parts.append(_table(["candidate", *KNOBS, "GPU memory / device", "why not"], rows, {0, 3, 5, 6},
                            frozenset({7})))
    rejected = _rejections(r)
    if rejected and not r.infeasible:  # an infeasible study's callout counts them itself
        parts.append("<p class='note'>Infeasible candidates, by the limit they fail (a candidate may fail several): "
                     + _e("; ".join(rejected)) + ".</p>")
    if r.infeasible:
        inf = r.infeasible
        parts.append("<div class='callout'><h3>No candidate meets every constraint</h3><ul>"
                     + "".join(f"<li>{_e(_reject_words(x) if ' rejects ' in x else x)}</li>" for x in inf.reasons)
                     + "</ul>" + ("<p><b>What would make it feasible</b></p><ul>"
                                  + "".join(f"<li>{_e(x)}</li>" for x in inf.suggestions) + "</ul>"
                                  if inf.suggestions else "") + "</div>")
    parts.append(f"<p class='note'>Quality model: {_e(r.quality_provenance)}</p>")
    return "\n".join(parts)


def _rejections(r: PlanResult) -> list[str]:
    """'host memory 24 (screen)', 'TPOT p99 2 (simulated)': what rules candidates out, and where."""
    counts: dict[tuple[str, str], int] = {}
    for c in r.candidates:
        for column, where in (("screen", "screen"), ("verified", "simulated")):
            text = c.get(column) or ""
            if text.startswith("fails "):
                for name in text[len("fails "):].split(","):
                    counts[(name, where)] = counts.get((name, where), 0) + 1
    return [f"{_limit_label(name)} {n} ({where})" for (name, where), n in counts.items()]


# ----------------------------------------------------------------------------- charts


def _look(k: int) -> dict:
    return {"color": COLOURS[k % len(COLOURS)], "dash": DASHES[k % len(DASHES)], "symbol": SYMBOLS[k % len(SYMBOLS)],
            "width": max(1.5, 5.0 - 1.5 * k), "size": max(6, 13 - 2 * k)}


def _same(a: tuple[list, list], b: tuple[list, list]) -> bool:
    """Two curves (xs, ys) that a reader could not tell apart."""
    return (len(a[0]) == len(b[0]) > 0 and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a[0], b[0]))
            and all(math.isclose(x, y, rel_tol=1e-4, abs_tol=1e-9) for x, y in zip(a[1], b[1])))


def _coincide(curves: list[tuple[str, tuple[list, list]]]) -> dict[str, str]:
    """``{label: label of the earlier curve it lies on}``."""
    out: dict[str, str] = {}
    for j, (name, curve) in enumerate(curves):
        same = next((other for other, c in curves[:j] if other not in out and _same(c, curve)), None)
        if same is not None:
            out[name] = same
    return out


def _coincide_notes(same: dict[str, str], what: str, how: str) -> list[str]:
    return [f"{a} gives the same {what} as {b}; {how}." for a, b in same.items()]


def _fits(r: PlanResult) -> list[dict]:
    return [c for c in r.candidates if not any(w in (c["screen"] or "") for w in ("memory", "capacity"))]


def _size_axis(results: list[PlanResult], title: str) -> dict:
    """A log axis of Engram parameters ticked at the searched sizes (``25B``, ``400B``), not at
    plotly's 2, 3, ... 9 between decades."""
    sizes = sorted({float(f"{c['engram_params'] / 1e9:.3g}") for r in results for c in r.candidates})
    axis = {"title": title, "type": "log", "tickvals": sizes, "ticktext": [f"{x:g}B" for x in sizes]}
    if len(sizes) == 1:  # one size: a linear axis around it
        axis.update(type="linear", range=[0.5 * sizes[0], 1.5 * sizes[0]])
    return axis


def _dodge(k: int, n: int) -> float:
    """Factor spreading study ``k`` of ``n`` sideways around a table size (log axis), so points
    of studies with the same results sit side by side instead of on top of each other."""
    return 10 ** (0.02 * (k - (n - 1) / 2))


def _layout(fig, **axes) -> None:
    fig.update_layout(template="plotly_white", height=460, margin={"l": 70, "r": 20, "t": 20, "b": 10},
                      font={"family": FONT, "size": 13},
                      legend={"orientation": "h", "yanchor": "top", "y": -0.16, "x": 0}, **axes)


def figures(results: list[PlanResult], labels: list[str]) -> list[tuple[str, object | None, list[str]]]:
    """``(title, figure or None, notes)`` per chart; a chart without data is None and its notes
    say why, rather than an empty plot."""
    return [_drop_chart(results, labels), _stall_chart(results, labels), _pareto_chart(results, labels)]


def _drop_chart(results, labels):
    import plotly.graph_objects as go

    fig = go.Figure()
    curves = []
    for r, label in zip(results, labels):
        best: dict[float, float] = {}
        for c in _fits(r):
            p = float(f"{c['engram_params'] / 1e9:.3g}")
            best[p] = min(best.get(p, math.inf), 100 * c["throughput_drop"])
        xs = sorted(best)
        curves.append((label, (xs, [best[x] for x in xs])))
    title = "Lowest throughput drop vs Engram table size"
    if not any(xs for _, (xs, _) in curves):
        return title, None, ["No candidate of any study fits in memory, so there is no throughput drop to chart."]
    same = _coincide(curves)
    for k, (label, (xs, ys)) in enumerate(curves):
        if not xs:
            continue
        look = _look(k)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers",
                                 name=label + (f" (same as {same[label]})" if label in same else ""),
                                 line={"color": look["color"], "dash": look["dash"], "width": look["width"]},
                                 marker={"symbol": look["symbol"], "size": look["size"], "color": look["color"]},
                                 hovertemplate="%{x}B params: %{y:.3f}% drop<extra>" + _e(label) + "</extra>"))
    _layout(fig, xaxis=_size_axis(results, "Engram parameters"),
            yaxis={"title": "throughput drop vs no Engram", "ticksuffix": "%", "rangemode": "tozero"})
    notes = ["Per table size, the smallest throughput drop any candidate that fits in memory reaches "
             "(analytic screen). A size missing from a line fits in no tier there."]
    notes += _coincide_notes(same, "curve", "the lines lie on top of each other, told apart by dash and marker "
                             "(the earlier one is drawn wider)")
    missing = [label for label, (xs, _) in curves if not xs]
    if missing:
        notes.append(f"No line for {', '.join(missing)}: no candidate fits in memory there.")
    return title, fig, notes


def _stall_chart(results, labels):
    import plotly.graph_objects as go

    worst: dict[tuple[int, bool], dict[int, float]] = {}
    for k, r in enumerate(results):
        for c in _fits(r):
            if c["tiers"] != "device":
                d = worst.setdefault((k, bool(c["prefetch"])), {})
                d[c["first_layer"]] = max(d.get(c["first_layer"], 0.0), 100 * c["stall_fraction"])
    title = "Worst decode stall vs first Engram layer"
    stalls = {pf: any(v > 0 for (_, p), d in worst.items() if p == pf for v in d.values()) for pf in (False, True)}
    if not worst:
        return title, None, ["No candidate that fits in memory offloads its tables: every table is in device "
                             "HBM, so no fetch can stall decode and there is nothing to chart."]
    if not any(stalls.values()):
        return title, None, ["No offloaded candidate that fits in memory stalls decode at any layer: every Engram "
                             "fetch is hidden behind the blocks before its layer (analytic screen), so there is "
                             "nothing to chart."]
    notes = ["Per first Engram layer, the largest share of a decode step spent waiting for offloaded rows, over "
             "the offloaded candidates that fit in memory (analytic screen). A later layer gives the fetch a "
             "longer window to hide in."]
    curves = []
    for pf in (False, True):
        if not stalls[pf]:
            if any(p == pf for _, p in worst):
                notes.append(f"With prefetch {'on' if pf else 'off'} no candidate stalls at any layer (0% "
                             f"everywhere), so only prefetch {'off' if pf else 'on'} is drawn.")
            continue
        for k, label in enumerate(labels):
            d = worst.get((k, pf), {})
            if d:
                curves.append((k, pf, f"{label}, prefetch {'on' if pf else 'off'}", sorted(d), d))
    same = _coincide([(name, (ls, [d[l] for l in ls])) for _, _, name, ls, d in curves])
    fig = go.Figure()
    for k, pf, name, ls, d in curves:
        fig.add_trace(go.Bar(x=[f"layer {l}" for l in ls], y=[d[l] for l in ls],
                             name=name + (f" (same as {same[name]})" if name in same else ""),
                             marker={"color": COLOURS[k % len(COLOURS)], "pattern": {"shape": "/" if pf else ""}},
                             hovertemplate="%{x}: %{y:.3f}% of the step<extra>" + _e(name) + "</extra>"))
    _layout(fig, barmode="group", bargap=0.35, xaxis={"title": "first Engram layer id"},
            yaxis={"title": "exposed fetch time (share of a decode step)", "ticksuffix": "%", "rangemode": "tozero"})
    return title, fig, notes + _coincide_notes(same, "stalls", "their bars stand side by side at equal height")


def _pareto_chart(results, labels):
    import plotly.graph_objects as go

    fig = go.Figure()
    hover = "%{text}<br>%{y:,.0f} output tokens/s<extra></extra>"

    def text(c: dict) -> str:
        status = c["screen"] if c["screen"] != "pass" else (f"simulated: {c['verified']}" if c["verified"]
                                                              else "passes the screen")
        return (f"candidate {c['id']}: {_params(c['engram_params'])} at {_layers(c['layer_ids'])}, "
                f"{TIER_WORDS.get(c['tiers'], c['tiers'])}, cache {100 * c['cache_fraction']:g}%, "
                f"prefetch {'on' if c['prefetch'] else 'off'} ({status})")

    def feasible(c: dict) -> bool:
        return c["screen"] == "pass" and c["verified"] in (None, "ok")

    curves = []
    n = len(results)
    for k, (r, label) in enumerate(zip(results, labels)):
        colour, shift = COLOURS[k % len(COLOURS)], _dodge(k, n)
        rows = {c["id"]: c for c in r.candidates}
        for group, name, marker in (
                ([c for c in r.candidates if feasible(c)], "feasible",
                 {"symbol": "circle", "size": 7, "opacity": 0.6}),
                ([c for c in r.candidates if not feasible(c)], "infeasible (fails a limit)",
                 {"symbol": "x-thin-open", "size": 8, "opacity": 0.5, "line": {"width": 1.5, "color": colour}})):
            if group:
                fig.add_trace(go.Scatter(x=[shift * c["engram_params"] / 1e9 for c in group],
                                         y=[c["throughput_output_tokens_per_s"] for c in group], mode="markers",
                                         name=f"{label}: {name}", legendgroup=label, text=[text(c) for c in group],
                                         hovertemplate=hover, marker={**marker, "color": colour}))
        front = ([p.metrics["engram_params"] / 1e9 for p in r.pareto],
                 [p.metrics["throughput_output_tokens_per_s"] for p in r.pareto])
        curves.append((label, front))
        if r.pareto:
            fig.add_trace(go.Scatter(x=[shift * x for x in front[0]], y=front[1], mode="markers", legendgroup=label,
                                     name=f"{label}: verified Pareto front (simulated)",
                                     text=[f"#{p.rank}, " + text(rows[p.candidate["id"]]) for p in r.pareto],
                                     hovertemplate=hover,
                                     marker={"symbol": "star", "size": 20, "color": colour,
                                             "line": {"width": 1.5, "color": "#1d2330"}}))
    same = _coincide(curves)
    _layout(fig, xaxis=_size_axis(results, "Engram parameters (more memory slots: better quality)"),
            yaxis={"title": "output tokens/s"})
    notes = ["Every candidate screened: circles meet every limit, crosses fail at least one (memory exactly; "
             "latency and drop on the analytic screen, or when simulated). Circles and crosses show the screen's "
             "throughput; stars, the verified front of quality (table size) against simulated throughput. "
             "Studies are spread slightly sideways around each table size so none hides another."]
    notes += _coincide_notes(same, "Pareto front", "its stars stand beside the other's at the same height")
    return "Quality vs throughput: screened candidates and the verified Pareto front", fig, notes
