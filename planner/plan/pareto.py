"""The Pareto front of quality vs throughput vs cost (all minimised after sign flips).

Quality is the predicted relative loss when every candidate has one; otherwise (table-size
sweeps without measured points) the number of memory slots stands in for it, since the paper
finds loss falling monotonically in slots. Cost joins only when prices are known.
"""

from __future__ import annotations

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
