"""Explain: the reasons behind a recommendation or an infeasible request, from numbers.

* **Binding constraint**: the limit with the least margin on the recommendation's simulated
  metrics (memory limits included).
* **Bottleneck**: from the simulator's per-layer ``bound``: an offloaded Engram layer that
  stalls names its slowest fetch stage (``link``, ``host_gather``, ``cpu``, ``disk``);
  when no layer stalls, the fetch is hidden and the roofline term of the blocks (``hbm``,
  ``compute``) limits the step.
* **What stops a bigger table**: the next larger table size of the same configuration and
  the limit it fails (simulated if it was verified, otherwise the analytic screen).
* **Infeasible**: the candidate closest to feasible (least summed violation), the count of
  candidates each limit rejects, and suggestions computed from the violated amounts.
"""

from __future__ import annotations

import numpy as np

from planner.plan.constraints import Limit, fmt, violation_text
from planner.units import format_bytes, format_params, format_seconds


def describe_candidate(row: dict, hardware: str) -> str:
    tiers = row["tiers"]
    where = {"device": "device HBM", "host": "host DRAM", "disk": "NVMe"}.get(tiers, tiers)
    text = (f"{format_params(row['engram_params']).replace(' params', '')} Engram parameters ({format_bytes(row['table_bytes'])}, "
            f"{row['dtype']}) at layer(s) {row['layer_ids']} in {where}")
    if tiers != "device":
        text += f", {100 * row['cache_fraction']:g}% of rows cached on the device, prefetch {'on' if row['prefetch'] else 'off'}"
    if "disk" in tiers:
        text += f", {100 * row['host_cache_fraction']:g}% of rows cached in DRAM"
    if row.get("routed_experts_traded"):
        text += f", {row['routed_experts_traded']} routed experts traded for Engram"
    return text + f", max_num_seqs {row['max_num_seqs']}, on {hardware}"


def bottleneck(sim) -> tuple[str, str]:
    """(resource, sentence) from the simulator's per-layer bounds."""
    engram = [l for l in sim.layers if l.tier is not None and l.tier != "device"]
    stalled = [l for l in engram if (l.exposed_s or 0.0) > 0.0]
    util = ", ".join(f"{k} {100 * v:.0f}%" for k, v in sim.utilisation.items() if v > 0.005)
    util = f" (utilisation: {util})" if util else ""
    if stalled:
        worst = max(stalled, key=lambda l: l.exposed_s)
        return worst.bound, (f"{worst.bound}: layer {worst.layer} waits {format_seconds(worst.exposed_s)} per step "
                             f"for its rows (fetch {format_seconds(worst.fetch_s)} vs a window of "
                             f"{format_seconds(worst.window_s)}){util}")
    weight: dict[str, float] = {}
    for l in sim.layers:
        weight[l.compute_bound] = weight.get(l.compute_bound, 0.0) + l.attention_s + l.ffn_s + l.engram_s
    bound = max(weight, key=weight.get) if weight else "compute"
    if engram:
        hidden = max(engram, key=lambda l: l.fetch_s or 0.0)
        return bound, (f"{bound}: the Engram fetch is hidden (layer {hidden.layer}: fetch "
                       f"{format_seconds(hidden.fetch_s or 0.0)} within a {format_seconds(hidden.window_s or 0.0)} "
                       f"window), the blocks' {bound} time limits the step{util}")
    return bound, f"{bound}: tables are on the device; the blocks' {bound} time limits the step"


def binding(margins: dict) -> str | None:
    return min(margins, key=margins.get) if margins else None


def explain(rank: int, row: dict, metrics: dict, margins: dict, lims: list[Limit], hardware: str,
            bottleneck_text: str, next_up: str | None) -> str:
    lim = {l.name: l for l in lims}
    drop = metrics.get("throughput_drop")
    lines = [f"#{rank}: {describe_candidate(row, hardware)}."]
    lines.append(f"Simulated: {metrics['throughput_output_tokens_per_s']:,.0f} output tokens/s, "
                 + (f"{100 * drop:.2f}% below the same run without Engram" if drop is not None else "")
                 + f"; TTFT p99 {format_seconds(metrics['ttft_p99_s'])}, TPOT p50 {format_seconds(metrics['tpot_p50_s'])}.")
    b = binding(margins)
    if b is not None:
        l = lim[b]
        lines.append(f"Binding constraint: {l.describe()} (at {l.show(metrics[l.metric])}, margin "
                     f"{_margin(l, margins[b])}).")
    lines.append(f"Bottleneck: {bottleneck_text}.")
    if next_up:
        lines.append(next_up)
    return " ".join(lines)


def _margin(limit: Limit, margin: float) -> str:
    return f"{100 * margin:.2f} percentage points" if limit.unit == "fraction" else f"{100 * margin:.1f}%"


def next_up_text(row: dict | None, failing: list[tuple[Limit, float]], source: str, bound: str | None) -> str | None:
    if row is None:
        return "This is the largest table size searched."
    if not failing:
        return None
    parts = "; ".join(violation_text(l, v) for l, v in failing)
    tail = f", bottleneck {bound}" if bound and bound not in ("compute", "hbm") else ""
    return f"A larger table ({format_params(row['engram_params'])}) fails ({source}{tail}): {parts}."


# ----------------------------------------------------------------------------- infeasible


def infeasible(table, fails: dict[str, np.ndarray], lims: list[Limit], rows, study,
               unknown: np.ndarray) -> tuple[list[str], list[str], int]:
    """Reasons, suggestions and the index of the closest candidate of ``table`` (a
    :class:`planner.plan.screen.ScreenTable`). ``fails[name]`` is a boolean array per limit;
    violations are summed relative margins; ``unknown`` candidates (passed the screen, never
    simulated) cannot be the closest."""
    n = len(table)
    total = np.zeros(n)
    for l in lims:
        total += np.where(fails[l.name], np.minimum(-l.margin(table[l.metric]), 1e6), 0.0)
    total = np.where(unknown, np.inf, total) if not unknown.all() else total
    closest = int(np.argmin(total))
    reasons = [f"none of {n} candidates meets every constraint"]
    for l in lims:
        count = int(fails[l.name].sum())
        if count:
            text = f"{l.name} rejects {count} of {n}"
            finite = np.isfinite(table[l.metric]) & ~unknown
            if not l.exact and finite.any():
                best = float(np.min(table[l.metric][finite]) if l.upper else np.max(table[l.metric][finite]))
                text += f" (best: {l.show(best)} vs limit {l.show(l.bound)})"
            reasons.append(text)
    # The closest candidate of each tier assignment, so every tier's obstacle is named.
    suggestions: list[str] = []
    tiers = [rows(i)["tiers"] for i in range(n)]
    for tier in dict.fromkeys(tiers):
        members = np.array([t == tier for t in tiers])
        k = int(np.argmin(np.where(members, total, np.inf)))
        row = rows(k)
        failing = [l for l in lims if fails[l.name][k]]
        if not failing:
            continue
        reasons.append(f"closest with tier {tier}: " + describe_candidate(row, study.scenario.hardware.name) + ": "
                       + "; ".join(violation_text(l, float(table[l.metric][k])) for l in failing))
        for l in failing:
            for text in suggest(l, float(table[l.metric][k]), row, table, fails, lims, study):
                if text not in suggestions:
                    suggestions.append(text)
    return reasons, suggestions, closest


def suggest(l: Limit, value: float, row: dict, table, fails, lims, study) -> list[str]:
    hw, rules = study.scenario.hardware, study.settings.memory
    params = row["engram_params"]
    if l.name == "host_memory":
        fit = params * l.bound / value
        out = [f"host tables need {format_bytes(value)} but the limit is {format_bytes(l.bound)} "
               f"(host.memory {format_bytes(hw.host.memory)}): shrink the tables to <= {format_params(fit)}"]
        if hw.nvme is not None and hw.nvme.capacity >= row["table_bytes"]:
            out.append(f"use the disk tier (NVMe holds {format_bytes(hw.nvme.capacity)})")
        else:
            out.append(f"use the disk tier on a node with >= {format_bytes(row['table_bytes'])} of NVMe")
        out.append(f"or a node with >= {format_bytes(value / (1 - rules.host_headroom))} of host memory")
        return out
    if l.name == "device_memory":
        return [f"device memory needs {format_bytes(value)} per device but the limit is {format_bytes(l.bound)}: "
                "offload the tables (tier: host or disk), lower max_num_seqs or the hot-cache fraction, "
                f"or a device with >= {format_bytes(value / (1 - rules.device_headroom))}"]
    if l.name == "disk_capacity":
        if hw.nvme is None:
            return [f"the disk tier needs {format_bytes(value)} of NVMe but {hw.name} has none: add NVMe "
                    f"(>= {format_bytes(value)}) or use the host tier"]
        return [f"NVMe holds {format_bytes(l.bound)} but the tables need {format_bytes(value)}: shrink the "
                f"tables to <= {format_params(params * l.bound / value)} or add NVMe"]
    if l.name == "relative_loss" and np.isnan(value):
        return ["quality is not quantified for table-size changes: give quality.memory_points "
                "(measured (slots, loss) pairs) or drop max_relative_loss"]
    memory_ok = ~(fails["device_memory"] | fails["host_memory"] | fails["disk_capacity"])
    if not memory_ok.any():
        return []
    vals = np.where(memory_ok, table[l.metric], np.nan)
    if not np.isfinite(vals).any():
        return []
    best = float(np.nanmin(vals) if l.upper else np.nanmax(vals))
    hint = {"throughput_drop": "more hot cache, prefetch on, a later Engram layer (a longer window) or a "
                               "smaller table",
            "min_throughput": "larger max_num_seqs or a faster node",
            "cost_per_hour": "fewer or cheaper devices", "cost_per_million_tokens": "higher throughput per device"}
    try_ = hint.get(l.name, "a smaller max_num_seqs or a faster node")
    if l.ok(best):  # the screen passed it: the simulation is what failed it
        return [f"{l.describe()}: the analytic screen puts the best candidate that fits at {l.show(best)}, within "
                f"the limit, but the simulated runs exceed it (queueing and the last batch's drain, which the screen "
                f"does not see); try {try_}, or relax the limit"]
    return [f"{l.describe()}: the best candidate that fits in memory reaches {l.show(best)}; try "
            f"{try_}, or relax the limit to {l.show(best)}"]


def fmt_value(limit: Limit, value: float) -> str:
    return fmt(value, limit.unit)
