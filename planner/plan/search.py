"""The planner: a loop over propose (candidates) -> estimate (screen) -> check (constraints)
-> verify (simulator) -> rank -> explain, for one study.

1. **Screen** every candidate: exact memory per tier, analytic throughput/latency (vectorised
   per group), quality and cost. A candidate passes when it meets every memory limit exactly
   and every other limit within ``verify.screen_slack`` (the analytic model is a screen).
2. **Rank** the passing candidates by the study's objectives (lexicographic), ties broken by
   candidate id, so the order is deterministic.
3. **Verify** in rank order with the simulator until ``top_n`` candidates meet every limit on
   their simulated metrics (or ``max_simulations`` is spent), then the screened Pareto front
   (quality vs throughput vs cost; up to ``pareto_max``). The no-Engram baseline run is shared
   by candidates with the same backbone and workload.
4. **Recommend** the verified feasible candidates ranked on simulated metrics, less the
   dominated duplicates (:func:`planner.plan.pareto.dominated_duplicates`: the same simulated
   outcome as another feasible candidate that needs less memory; its row says which, and
   ``top_n`` counts distinct plans); explain each, or explain why nothing is feasible.

``progress`` (optional) receives a :class:`~planner.plan.results.PlanProgress` for this study
alone after each screened group and each simulation; it never changes the result.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from planner.plan import explain as ex
from planner.plan.candidates import groups
from planner.plan.constraints import limits
from planner.plan.pareto import dominated_duplicates, memory_difference, pareto_front
from planner.plan.results import Infeasibility, PlanProgress, PlanResult, Recommendation
from planner.plan.screen import Screen, ScreenTable
from planner.plan.spec import OBJECTIVES, Study
from planner.plan.verify import Verifier
from planner.units import format_bytes

ROW_AXES = ("engram_params", "table_size_per_head", "layer_ids", "n_heads", "row_width", "dtype",
            "routed_experts_traded", "tiers", "cache_fraction", "host_cache_fraction", "prefetch",
            "max_num_seqs", "max_batched_tokens")
TABLE_METRICS = ("memory_slots", "table_bytes", "device_bytes", "host_bytes", "disk_bytes",
                 "throughput_output_tokens_per_s", "throughput_drop", "ttft_p50_s", "ttft_p99_s", "tpot_p50_s",
                 "stall_fraction", "exposed_decode_s", "first_layer_exposed_s", "bound", "relative_loss",
                 "cost_per_hour_usd", "usd_per_million_tokens")


def plan_study(study: Study, progress: Callable[[PlanProgress], None] | None = None) -> PlanResult:
    lims = limits(study)
    screen = Screen(study)
    gs = groups(study)
    v = study.settings.verify
    total = sum(len(g) for g in gs)
    report = _reporter(study.name, total, progress)
    table, where = _screen_all(gs, screen, lambda done: report("screen", done, 0, min(v.max_simulations, total)))
    n = len(where)
    slack = v.screen_slack
    # NaN = not estimated (a disk tier without drives, already rejected by its memory check);
    # only an unquantified quality counts as a failure.
    fails = {l.name: ~l.ok(table[l.metric], slack) & (~np.isnan(table[l.metric]) | (l.metric == "relative_loss"))
             for l in lims}
    passed = ~np.any(np.stack([fails[l.name] for l in lims]), axis=0)
    size_rank = _size_ranks(gs, where)
    base_rows = [_row(gs, where, table, i, size_rank) for i in range(n)]
    rows = lambda i: dict(base_rows[i])  # noqa: E731
    families = {(_family(r), r["size_rank"]): r["id"] for r in reversed(base_rows)}

    order = [int(i) for i in _rank(table, study.settings.objectives, np.flatnonzero(passed))]
    verifier = Verifier(study, lims)
    budget = min(v.max_simulations, len(order))

    def simulate(i: int) -> None:
        verifier.verify(i, *where[i], gs)
        report("verify", total, verifier.count, budget)

    def enough() -> bool:  # top_n distinct plans: a dominated duplicate does not count
        distinct = len(verifier.feasible) - len(dominated_duplicates(_feasible_metrics(verifier)))
        return distinct >= v.top_n or verifier.count >= v.max_simulations

    report("verify", total, 0, budget)
    skipped = []
    for i in order:  # rank order; skip what the screen, corrected by the runs so far, says fails
        if enough():
            break
        if verifier.predicted_to_fail(table, i):
            skipped.append(i)
            continue
        simulate(i)
    for i in skipped:  # the correction may be too pessimistic: spend what budget is left
        if enough():
            break
        simulate(i)
    if v.pareto and order:
        for i in pareto_front(table, np.array(order))[: v.pareto_max]:
            if i not in verifier.results and verifier.count < v.max_simulations:
                simulate(int(i))

    dominated = dominated_duplicates(_feasible_metrics(verifier))
    feasible = [i for i in verifier.feasible if i not in dominated]
    sim_table = {k: np.array([verifier.results[i].metrics[k] for i in feasible], float)
                 for k in ("engram_params", "throughput_drop", "throughput_output_tokens_per_s",
                           "usd_per_million_tokens", "relative_loss", "device_bytes", "memory_slots")}
    ranked = [feasible[j] for j in _rank(sim_table, study.settings.objectives, np.arange(len(feasible)))]
    recs = {}
    for k, i in enumerate(ranked):
        nxt = families.get((_family(base_rows[i]), base_rows[i]["size_rank"] + 1))
        recs[i] = _recommendation(k + 1, i, rows, verifier, table, fails, lims, study,
                                  None if nxt is None else rows(nxt))
    front = [feasible[j] for j in pareto_front(sim_table, np.array([feasible.index(i) for i in ranked], int))]

    candidates = []
    for i in range(n):
        row = rows(i)
        row["screen"] = "pass" if passed[i] else "fails " + ",".join(l.name for l in lims if fails[l.name][i])
        res = verifier.results.get(i)
        row["verified"] = None if res is None else ("ok" if res.ok else "fails " + ",".join(res.failing))
        row["simulated_drop"] = None if res is None else res.metrics["throughput_drop"]
        row["simulated_throughput"] = None if res is None else res.metrics["throughput_output_tokens_per_s"]
        row["recommended"] = recs[i].rank if i in recs else None
        row["dominated_by"] = dominated.get(i)
        row["dominated_reason"] = (None if i not in dominated else
                                   _duplicate_text(verifier.results[dominated[i]].metrics, res.metrics,
                                                   recs[dominated[i]].rank, dominated[i], v.top_n))
        candidates.append(row)

    infeasible = None
    if not ranked:
        infeasible = _infeasible(table, fails, passed, lims, rows, study, verifier, candidates)
    return PlanResult(
        study=study.name, index=study.index, hardware=study.scenario.hardware.name,
        model=study.scenario.model.name,
        recommendations=[recs[i] for i in ranked[: v.top_n]], pareto=[recs[i] for i in front],
        infeasible=infeasible, candidates=candidates, limits=[l.describe() for l in lims],
        objectives=list(study.settings.objectives), quality_provenance=_provenance(screen),
        meta={"candidates": n, "passed_screen": int(passed.sum()), "simulations": verifier.count,
              "baseline_simulations": verifier.baseline_count, "dominated": len(dominated), "from_cache": False})


# ----------------------------------------------------------------------------- helpers


def _reporter(name: str, total: int, progress: Callable[[PlanProgress], None] | None):
    """``report(stage, screened, verified, to_verify)``: one event for this study (a plan of one)."""
    def report(stage: str, screened: int, verified: int, to_verify: int) -> None:
        if progress is not None:
            progress(PlanProgress(stage, name, screened, total, verified, to_verify, 0, 1))
    return report


def _screen_all(gs, screen: Screen, screened: Callable[[int], None] | None = None
                ) -> tuple[ScreenTable, list[tuple[int, int]]]:
    """Screen every group; ``screened(count so far)`` after each one."""
    parts, where = [], []
    for g, group in enumerate(gs):
        parts.append(screen.evaluate(group))
        where += [(g, i) for i in range(len(group))]
        if screened is not None:
            screened(len(where))
    return ScreenTable.concat(parts), where


def _feasible_metrics(verifier: Verifier) -> dict[int, dict]:
    return {i: verifier.results[i].metrics for i in verifier.feasible}


def _duplicate_text(by: dict, dup: dict, rank: int, by_id: int, top_n: int) -> str:
    """Why a candidate is not recommended: "same outcome as #1 (candidate 170) with 32 GB less
    GPU memory per device" (the first memory tier where the two differ, as the rule compares
    them; a dominator past ``top_n`` is named by its id alone)."""
    who = f"#{rank} (candidate {by_id})" if rank <= top_n else f"candidate {by_id}"
    key, more = memory_difference(by, dup)  # dominated: its footprint differs, by more
    what = {"device_bytes": "GPU memory per device", "host_bytes": "host memory per node",
            "disk_bytes": "NVMe per node"}[key]
    return f"same outcome as {who} with {format_bytes(more)} less {what}"


def _rank(table, objectives: list[str], idx: np.ndarray) -> np.ndarray:
    """Indices ``idx`` sorted by the objectives (lexicographic), NaN last, ties by index."""
    if len(idx) == 0:
        return idx
    keys = [idx]
    for name in reversed(objectives):
        metric, sign = OBJECTIVES[name]
        vals = np.asarray(table[metric], float)[idx]
        if metric == "engram_params":  # primes add ~1e-6 noise: compare at 3 significant digits
            vals = np.array([float(f"{x:.3g}") for x in vals])
        vals = sign * vals
        keys.append(np.where(np.isnan(vals), np.inf, vals))
    return idx[np.lexsort(keys)]


def _size_ranks(gs, where) -> list[int]:
    sizes = sorted({(g.choice.axes.size_axis, g.choice.axes.size_value) for g in gs}, key=lambda t: t[1])
    pos = {s: k for k, s in enumerate(sizes)}
    return [pos[(gs[g].choice.axes.size_axis, gs[g].choice.axes.size_value)] for g, _ in where]


def _row(gs, where, table, i: int, size_rank) -> dict:
    g, j = where[i]
    group = gs[g]
    a = group.choice.axes
    row = {"id": i, "engram_params": float(table.engram_params[i]),
           "table_size_per_head": a.table_size_per_head, "layer_ids": ",".join(map(str, a.layer_ids)),
           "n_heads": a.n_heads, "row_width": a.row_width, "dtype": a.dtype,
           "routed_experts_traded": a.routed_experts_traded, "tiers": group.tiers_label,
           "cache_fraction": float(group.cache_fraction[j]), "host_cache_fraction": group.host_cache_fraction,
           "prefetch": bool(group.prefetch[j]), "max_num_seqs": int(group.max_num_seqs[j]),
           "max_batched_tokens": int(group.max_batched_tokens[j]), "first_layer": min(a.layer_ids),
           "size_rank": size_rank[i]}
    for k in TABLE_METRICS:
        value = table[k][i]
        row[k] = str(value) if k == "bound" else float(value)
    return row


def _family(row: dict) -> tuple:
    return tuple(row[k] for k in ROW_AXES if k not in ("engram_params", "table_size_per_head",
                                                          "routed_experts_traded"))


def _recommendation(rank, i, rows, verifier, table, fails, lims, study, nxt) -> Recommendation:
    res = verifier.results[i]
    row = rows(i)
    if nxt is None:
        text = ex.next_up_text(None, [], "", None)
    elif nxt["id"] in verifier.results:
        r = verifier.results[nxt["id"]]
        text = ex.next_up_text(nxt, [(l, r.metrics[l.metric]) for l in lims if l.name in r.failing],
                               "simulated", r.bottleneck)
    else:
        text = ex.next_up_text(nxt, [(l, float(table[l.metric][nxt["id"]])) for l in lims
                                     if fails[l.name][nxt["id"]]], "analytic screen", nxt["bound"])
    explanation = ex.explain(rank, row, res.metrics, res.margins, lims, study.scenario.hardware.name,
                             res.bottleneck_text, text)
    return Recommendation(rank=rank, scenario=res.scenario, candidate=row, metrics=res.metrics,
                          margins=res.margins, binding_constraint=ex.binding(res.margins),
                          bottleneck=res.bottleneck, explanation=explanation,
                          quality_provenance=verifier.quality_provenance(i), larger_table=text)


def _infeasible(table, fails, passed, lims, rows, study, verifier, candidates) -> Infeasibility:
    """Screen results, with simulated metrics in place of the analytic ones where a candidate
    was simulated; passing candidates never simulated are not 'closest' (they are unknown)."""
    table = table.copy()
    fails = {k: np.array(v, copy=True) for k, v in fails.items()}
    for i, r in verifier.results.items():
        for l in lims:
            table[l.metric][i] = r.metrics[l.metric]
            fails[l.name][i] = l.name in r.failing
    unknown = passed.copy()
    unknown[list(verifier.results)] = False
    reasons, suggestions, closest = ex.infeasible(table, fails, lims, rows, study, unknown)
    if unknown.any():
        suggestions.append(f"{int(unknown.sum())} candidates passed the analytic screen but were not simulated: "
                           "raise verify.max_simulations")
    return Infeasibility(reasons, suggestions, candidates[closest])


def _provenance(screen: Screen) -> str:
    q = screen.quality
    text = q.allocation.provenance
    if q.memory is not None:
        text += f"; memory scaling: {q.memory.provenance} (a={q.memory.a:.4g}, alpha={q.memory.alpha:.4g})"
    else:
        text += "; memory scaling: not quantified (no quality.memory_points given)"
    return text
