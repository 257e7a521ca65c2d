"""The Pareto front of quality vs throughput vs cost (all minimised after sign flips).

Quality is the predicted relative loss when every candidate has one; otherwise (table-size
sweeps without measured points) the number of memory slots stands in for it, since the paper
finds loss falling monotonically in slots. Cost joins only when prices are known.

Dominated duplicates: candidates that give a user the same outcome (simulated performance and
quality, within :data:`OUTCOME_RTOL`) as another that needs less memory are not recommended;
:func:`dominated_duplicates` says which, and by whom.
"""

from __future__ import annotations

import math

import numpy as np


def objectives(table, idx: np.ndarray) -> np.ndarray:
    """Rows = candidates in ``idx``, columns = minimised objectives."""
    loss = np.asarray(table["relative_loss"], float)[idx]
    quality = loss if np.isfinite(loss).all() else -np.asarray(table["memory_slots"], float)[idx]
    cols = [quality, -np.asarray(table["throughput_output_tokens_per_s"], float)[idx]]
    cost = np.asarray(table["usd_per_million_tokens"], float)[idx]
    if np.isfinite(cost).all():
        cols.append(cost)
    return np.stack(cols, axis=1)


def pareto_front(table, idx: np.ndarray) -> list[int]:
    """Non-dominated members of ``idx``, in the order of ``idx`` (duplicates keep the first)."""
    idx = np.asarray(idx, int)
    if idx.size == 0:
        return []
    pts = objectives(table, idx)
    order = np.lexsort(pts.T[::-1])  # a dominating point sorts before what it dominates
    front: list[int] = []
    kept = np.empty((0, pts.shape[1]))
    for k in order:
        p = pts[k]
        if kept.size and np.any(np.all(kept <= p, axis=1)):
            continue
        front.append(int(k))
        kept = np.vstack([kept, p])
    return [int(idx[k]) for k in sorted(front)]


# ----------------------------------------------------------------------------- duplicates

# What a user gets from a candidate: performance and quality. Two candidates whose simulated
# outcomes agree on every one of these are the same plan to a user, whatever their knobs.
OUTCOME_METRICS = ("throughput_output_tokens_per_s", "throughput_drop", "ttft_p50_s", "ttft_p90_s", "ttft_p99_s",
                   "tpot_p50_s", "tpot_p90_s", "tpot_p99_s", "relative_loss")
# Table size (quality when no loss is quantified) at 3 significant digits, as ranking compares it:
# the prime rule adds ~1e-6 noise between layer sets of the same nominal size.
SIZE_METRICS = ("engram_params", "memory_slots")
# Relative tolerance of "the same outcome": the simulator is deterministic, so runs that differ
# only in a knob that does not matter (a hot cache behind a hidden fetch) agree to ~1e-15;
# 1e-6 absorbs float summation order and nothing a user could measure.
OUTCOME_RTOL = 1e-6
MEMORY_KEYS = ("device_bytes", "host_bytes", "disk_bytes")  # scarcest first


def _close(a: float | None, b: float | None, rtol: float) -> bool:
    """Equal within ``rtol`` (and 1e-12 absolute, for zeros); NaN/None equal only to themselves."""
    a = float("nan") if a is None else float(a)
    b = float("nan") if b is None else float(b)
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12)


def same_outcome(a: dict, b: dict) -> bool:
    """Whether two candidates' (simulated) metrics give a user the same thing."""
    return (all(_close(a.get(k), b.get(k), OUTCOME_RTOL) for k in OUTCOME_METRICS)
            and all(_close(float(f"{a[k]:.3g}"), float(f"{b[k]:.3g}"), 0.0) for k in SIZE_METRICS))


def memory_difference(a: dict, b: dict) -> tuple[str, float] | None:
    """The first of :data:`MEMORY_KEYS` where ``a`` and ``b`` differ and by how much ``b``
    exceeds ``a`` there (negative: ``b`` needs less); None when their footprints are equal
    (within 1e-9: one footprint, two float sums)."""
    for k in MEMORY_KEYS:
        if not _close(a[k], b[k], 1e-9):
            return k, float(b[k]) - float(a[k])
    return None


def _less_memory(a: dict, b: dict) -> bool:
    """``a`` needs less memory than ``b``: fewer device bytes, then (equal device) fewer host
    bytes, then disk bytes."""
    diff = memory_difference(a, b)
    return diff is not None and diff[1] > 0


def _no_dearer(a: dict, b: dict) -> bool:
    """``a`` costs no more per million tokens than ``b`` (or neither is priced)."""
    ca, cb = a.get("usd_per_million_tokens"), b.get("usd_per_million_tokens")
    if ca is None or cb is None or not (math.isfinite(ca) and math.isfinite(cb)):
        return True
    return ca <= cb * (1 + OUTCOME_RTOL)


def dominated_duplicates(metrics: dict[int, dict]) -> dict[int, int]:
    """``{dominated id: dominating id}`` among candidates (id -> metrics): a candidate is a
    dominated duplicate when another has :func:`same_outcome`, needs less memory (device bytes,
    then host, then disk) and costs no more. Its dominator is the least-memory such candidate
    that is not itself dominated. Candidates with the same outcome and the same footprint (e.g.
    layer 1 vs layer 6 when both hide the fetch) are real alternatives and are both kept."""
    order = sorted(metrics, key=lambda i: (*(metrics[i][k] for k in MEMORY_KEYS), i))
    kept: list[int] = []
    out: dict[int, int] = {}
    for i in order:
        m = metrics[i]
        by = next((k for k in kept if _less_memory(metrics[k], m) and same_outcome(metrics[k], m)
                   and _no_dearer(metrics[k], m)), None)
        if by is None:
            kept.append(i)
        else:
            out[i] = by
    return out
