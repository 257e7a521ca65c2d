"""Fits of the engine-timed spans (:mod:`planner.calibration.measure_engine`): the op rooflines,
the hash call, the lookup's host overhead and the per-step engine cost. Torch-free.

Each step sample holds the step's shape and the seconds of every span in it. The cost model's
own work counts (:class:`planner.costmodel.CostModel`, hardware-free here) pair each span with
its FLOPs, bytes and tokens, so the fitted profile reproduces these spans by construction and
predicts other shapes from the same physical terms:

* ``op:<kind>:<dtype>`` (``roofline``): per kind, the mean span of the step's blocks of that
  kind (block 0 left out where the kind runs elsewhere too: it runs right after the step's hash
  and lookups with cold caches, a per-step cost that ``step:overhead`` carries), ``embed`` and
  ``head`` as they are;
* ``hash:call`` (``linear`` in indices hashed = tokens x indices per token): the engine thread's
  ``hash`` span (prefetch off: the whole call, compression and tensor hand-off included);
* ``lookup:overhead`` (``linear`` in requested rows): each ``wait_L`` span (prefetch off: the
  whole lookup) of the runs without a hot-row cache, less its rows' gather at the calibrated
  table-gather rate (and, on CUDA, their copy): planning, de-duplication, assembly, the hand-off;
* ``lookup:cache`` (``linear`` in requested rows): the cached run's ``wait_L`` spans less the
  same gather and ``lookup:overhead``: the cache's own work (the index search, splitting hits
  from misses, placing the hits; about 0.3 ms a lookup on the CI VM);
* ``step:overhead`` (``linear`` in the step's tokens): the step's span less everything above as
  the fitted curves predict it (ops) or as measured (hash, waits): the Python between spans and
  block 0's cold start (the intercept; on the CI VM block 0's attention takes about 1.5x and its
  FFN 1.2x what later blocks take) and per-token work outside the ops (the slope: a prefill
  step's fresh activation memory faulted in, its KV-cache writes).
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from planner.calibration.fit import Fit, fit_linear, fit_roofline, roofline_seconds
from planner.costmodel import BatchShape, CostModel
from planner.specs import HardwareSpec, ModelSpec

_BLOCK = re.compile(r"(attn|ffn|engram|gather)_L(\d+)$")
_WAIT = re.compile(r"wait_L(\d+)$")


def sample_shape(s: dict) -> BatchShape:
    """The :class:`BatchShape` of one engine step sample."""
    B, T, C = s["batch"], s["tokens"], s["context"]
    if s["phase"] == "prefill":
        return BatchShape(tokens=B * T, seqs=B, attn_pairs=B * T * (T + 1) / 2, kv_read=0.0)
    return BatchShape.decode(B, C)


def _work(cost: CostModel, name: str, layer: int | None, shape: BatchShape):
    if name == "gather":  # a device-tier layer's in-layer gather (host tiers' are lookup stages)
        return cost.device_gather(shape)
    if name == "attn":
        return cost.attention(shape)
    if name == "ffn":
        return cost.ffn(layer, shape)
    if name == "engram":
        return cost.engram(shape)
    return getattr(cost, name)(shape)


def op_spans(s: dict, cost: CostModel) -> list[tuple[object, float, int | None]]:
    """``(work, seconds, layer)`` of every op span of one step sample: the blocks' attention,
    FFN and Engram spans, ``embed``, ``head``, and a device-tier run's in-layer ``gather_L``
    (a host tier's ``gather_L`` is a lookup stage inside its ``wait_L``, not an op)."""
    shape = sample_shape(s)
    out = []
    for name, seconds in s["spans"].items():
        m = _BLOCK.match(name)
        if m and (m.group(1) != "gather" or s.get("tier") == "device"):
            layer = int(m.group(2))
            out.append((_work(cost, m.group(1), layer, shape), seconds, layer))
        elif name in ("embed", "head"):
            out.append((_work(cost, name, None, shape), seconds, None))
    return out


def op_samples(samples: list[dict], specs: dict[str, ModelSpec], counting: HardwareSpec) -> dict:
    """``{(kind, dtype): [(flops, bytes, tokens, seconds, n_blocks, (run, phase), seqs)]}``, one
    entry per step and kind: the mean over the step's blocks of that kind, block 0 left out."""
    groups: dict = defaultdict(list)
    for s in samples:
        spec = specs[s["model"]]
        per_kind: dict = defaultdict(list)
        for work, seconds, layer in op_spans(s, CostModel(spec, counting)):
            per_kind[work.kind].append((work, seconds, layer))
        for kind, entries in per_kind.items():
            # Block 0 runs cold (right after the hash and lookups): left out unless the kind
            # runs nowhere else (a leading dense FFN).
            later = [e for e in entries if e[2] != 0]
            entries = later or entries
            w = entries[0][0]
            groups[(kind, spec.dtype)].append((float(w.flops), float(w.bytes), float(w.tokens),
                                               float(np.mean([e[1] for e in entries])), len(entries),
                                               (s["run"], s["phase"]), float(w.seqs)))
    return groups


def phase_weights(rows: list[tuple]) -> np.ndarray:
    """Fit weights of :func:`op_samples` rows: each run's prefill and its decode steps weigh
    alike (a run has one prefill step and several decode steps; the prefill is the
    compute-bound end of the op)."""
    groups = [r[5] for r in rows]
    return np.array([1.0 / groups.count(g) for g in groups])


def fit_ops(samples: list[dict], specs: dict[str, ModelSpec], counting: HardwareSpec, peaks: dict[str, float],
            bandwidth: float) -> dict[tuple[str, str], tuple[Fit, np.ndarray]]:
    """Roofline per (kind, dtype): ``{(kind, dtype): (fit, samples array [n, 5]: flops, bytes,
    tokens, seconds, seqs)}``."""
    out = {}
    for (kind, dtype), rows in sorted(op_samples(samples, specs, counting).items()):
        arr = np.array([r[:4] for r in rows])
        peak = peaks.get(dtype, max(peaks.values()))
        seqs = np.array([r[6] for r in rows])
        fit = fit_roofline(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], peak, bandwidth, phase_weights(rows), seqs)
        out[(kind, dtype)] = (fit, np.column_stack([arr, seqs]))
    return out


def predicted_ops_s(s: dict, spec: ModelSpec, counting: HardwareSpec, ops: dict, peaks: dict[str, float],
                    bandwidth: float, layer: int | None = None) -> float:
    """The step's op seconds as the fitted rooflines price them (every block, block 0 too;
    ``layer``: that block's attention, FFN and Engram ops only)."""
    total = 0.0
    for work, _, at in op_spans(s, CostModel(spec, counting)):
        if layer is not None and (at != layer or work.kind.startswith("engram:gather")):
            continue
        fit = ops.get((work.kind, spec.dtype))
        if fit is None:
            continue
        peak = peaks.get(spec.dtype, max(peaks.values()))
        total += float(roofline_seconds(fit[0].params, work.flops, work.bytes, work.tokens, peak, bandwidth, work.seqs))
    return total


def hash_samples(samples: list[dict], specs: dict[str, ModelSpec]) -> tuple[np.ndarray, np.ndarray]:
    """(indices hashed per call, seconds) of the engine thread's ``hash`` spans."""
    x, t = [], []
    for s in samples:
        if "hash" in s["spans"]:
            spec = specs[s["model"]]
            x.append(s["batch"] * s["tokens"] * spec.engram.rows_per_token * len(spec.engram_layer_ids))
            t.append(s["spans"]["hash"])
    return np.array(x, float), np.array(t, float)


def fit_hash(samples: list[dict], specs: dict[str, ModelSpec]) -> tuple[Fit, np.ndarray, np.ndarray]:
    """The hash call: fixed seconds + seconds per index (relative error); a negative slope (the
    per-index cost lost in the noise of a fixed cost that dominates) is clipped to 0."""
    x, t = hash_samples(samples, specs)
    fit = fit_linear(x, t)
    if fit.params["slope"] < 0:
        fit = Fit("linear", {"intercept": float(np.median(t)), "slope": 0.0})
    return fit, x, t


def lookup_samples(samples: list[dict], specs: dict[str, ModelSpec], fetch_s,
                   cached: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(requested rows, seconds beyond the rows' own gather/copy) of every ``wait_L`` span of
    the runs without a hot-row cache (``cached``: of those with one);
    ``fetch_s(spec, layer, fetched_rows)`` prices the gather (and copy) of the fetched rows."""
    x, t = [], []
    for s in samples:
        if s.get("tier", "host") == "device":
            continue  # no lookup: the in-layer gather is an op
        if bool(s.get("cache_fraction", 0.0)) != cached:
            continue
        spec = specs[s["model"]]
        for name, seconds in s["spans"].items():
            m = _WAIT.match(name)
            if not m:
                continue
            counts = s["lookups"][m.group(1)]
            x.append(counts["requested"])
            t.append(seconds - fetch_s(spec, int(m.group(1)), counts["fetched"]))
    return np.array(x, float), np.array(t, float)


def step_residuals(samples: list[dict], specs: dict[str, ModelSpec], ops_s) -> tuple[np.ndarray, np.ndarray]:
    """(tokens in the step, seconds) of each step not covered by its ops (as ``ops_s(sample,
    spec)`` prices them, block 0 at its steady-state cost), its hash and its waits (as
    measured)."""
    x, t = [], []
    for s in samples:
        spec = specs[s["model"]]
        spans = s["spans"]
        # A device-tier wait holds its in-layer gather (an op, priced above): its rest only.
        gathers = sum(v for k, v in spans.items() if k.startswith("gather_L")) if s.get("tier") == "device" else 0.0
        waits = sum(v for k, v in spans.items() if _WAIT.match(k))
        known = ops_s(s, spec) + spans.get("hash", 0.0) + waits - gathers
        x.append(s["batch"] * s["tokens"])
        t.append(spans["step"] - known)
    return np.array(x, float), np.array(t, float)


def fit_positive_linear(x, y) -> Fit:
    """A line on absolute error (the targets are differences of measured and fitted seconds,
    near zero or negative for some samples, so a relative fit does not apply), never negative:
    a negative slope is clipped to 0 (the intercept is then the median), and so is a negative
    intercept (seconds the engine spends cannot be negative; the ops' fits then over-explain
    the step)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) >= 2 and np.ptp(x) > 0:
        slope, intercept = np.polyfit(x, y, 1)
    else:
        slope, intercept = 0.0, float(np.median(y))
    if slope < 0:
        slope, intercept = 0.0, float(np.median(y))
    return Fit("linear", {"intercept": float(max(intercept, 0.0)), "slope": float(slope)})
