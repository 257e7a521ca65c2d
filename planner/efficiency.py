"""How close real work gets to a profile's ceilings, and the fixed time it pays regardless.

The cost model (:mod:`planner.costmodel`) counts work (FLOPs, bytes, rows, tokens); this module
turns work into seconds for one hardware profile. Two implementations share one interface:

* :class:`Efficiency`: a datasheet preset's constant fractions (its ``efficiency`` section) and
  assumed host rates. Assumptions, stated as such in every preset.
* :class:`CalibratedEfficiency`: a calibrated profile's fitted curves
  (:mod:`planner.calibration.build`), every one fitted to work timed on the machine.

Names say what a method returns: ``*_fraction`` a share of a ceiling (dimensionless), ``*_s``
seconds, ``*_rate`` bytes or tokens per second.

The op model (both implementations), per op kind (``Work.kind``)::

    seconds = fixed_s + row_s x rows + seq_s x sequences + max(flops / flop_rate, bytes / byte_rate)
    flop_rate <= peak FLOP/s x few-row ceiling(rows),   byte_rate <= memory bandwidth

the roofline of Williams et al. (2009) plus a fixed per-call cost (dispatch and kernel
launches), a per-row cost (row-wise work around the GEMMs) and a per-sequence cost (work
scheduled once a sequence: a decode step's attention core is one small problem per sequence
and head). A preset's fixed cost is its kernels times ``device.kernel_launch_overhead``, its
per-row and per-sequence costs 0, its rates the constant fractions, with no few-row ceiling; a
calibrated profile's six numbers per kind (fixed, per row, per sequence, FLOP and byte
fractions, the rows ``t_half`` at which the FLOP rate is half its fraction) are fitted to the
reference model's spans timed inside the engine
(:mod:`planner.calibration.measure_engine`). Neither rate can exceed its ceiling, so no op is
ever priced faster than the device's peak.

Torch-free; imports nothing of :mod:`planner.costmodel` (which imports this module).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from planner.calibration.fit import Fit, bandwidth_of, few_row_knee
from planner.specs import HardwareSpec

Number = Union[float, np.ndarray]

# Indices per token the scalar ``host.hash_tokens_per_s_per_core`` is quoted at: engram-27b's
# 2 layers x 2 orders x 8 heads (planner.calibration.tasks.HASH_MODEL).
REFERENCE_HASH_INDICES = 32.0


BOUNDS = ("launch", "hbm", "compute", "interconnect")  # in the order ties go (max of (value, name) pairs)


@dataclass(frozen=True)
class OpTerms:
    """The three terms of one op's time (floats or arrays, seconds). ``fixed_s`` holds the
    per-call cost and, for a calibrated op curve, its per-row and per-sequence costs (work paid
    regardless of the roofline: the ``launch`` bound)."""

    fixed_s: Number
    compute_s: Number
    memory_s: Number
    comm_s: Number = 0.0  # tensor-parallel collectives after the op (not overlapped with it)

    @property
    def seconds(self) -> Number:
        return self.fixed_s + self.comm_s + np.maximum(self.compute_s, self.memory_s)

    @property
    def bound(self) -> str:
        """``compute``, ``hbm``, ``launch`` or ``interconnect``: the largest term (scalars only)."""
        return max((float(self.compute_s), "compute"), (float(self.memory_s), "hbm"),
                   (float(self.fixed_s), "launch"), (float(self.comm_s), "interconnect"))[1]

    def bounds(self) -> np.ndarray:
        """:attr:`bound` of each element of array terms (ties broken as :attr:`bound` does)."""
        stack = np.broadcast_arrays(np.asarray(self.fixed_s, float), np.asarray(self.memory_s, float),
                                    np.asarray(self.compute_s, float), np.asarray(self.comm_s, float))
        return np.array(BOUNDS)[np.argmax(np.stack(stack), axis=0)]


class Efficiency:
    """A datasheet preset: constant fractions of its ceilings (``hardware.efficiency``).

    Models: every op reaches ``efficiency.matmul`` of the peak FLOP/s and ``efficiency.memory``
    of the memory bandwidth, and pays ``kernels x kernel_launch_overhead``; host gathers run at
    ``host.gather_bandwidth_per_core`` whatever the table size; hashing at
    ``host.hash_tokens_per_s_per_core`` (quoted at 32 indices a token) with no fixed cost.
    The engine's own cost per step is ``host.engine_step_overhead`` plus
    ``host.engine_seq_overhead`` per sequence (0 unless the preset sources them).
    Simplifies: no dependence on op size, no few-row ceiling.
    """

    # Whether :meth:`extrapolation` can ever exceed 1 (a fitted op model); callers skip it if not.
    fitted = False

    def __init__(self, hardware: HardwareSpec, dtype: str | None = None):
        self.hardware = hardware
        self.spec = hardware.efficiency
        self.dtype = dtype

    # ---- fractions of a ceiling

    def matmul_fraction(self, flops: Number) -> Number:
        return self.spec.matmul + 0.0 * flops

    def memory_fraction(self, bytes_: Number) -> Number:
        return self.spec.memory + 0.0 * bytes_

    def rows_fraction(self, tokens: Number) -> Number:
        """Ceiling on the FLOP rate of a GEMM with ``tokens`` rows (a decode step's few rows
        cannot use the peak). None here."""
        return 1.0 + 0.0 * tokens

    def link_fraction(self, bytes_: Number, direction: str) -> Number:
        """Share of the line rate (``link.h2d_bandwidth`` / ``d2h_bandwidth``) a pinned copy of
        ``bytes_`` reaches, its latency aside."""
        return self.spec.link + 0.0 * bytes_

    def network_fraction(self, bytes_: Number) -> Number:
        return self.spec.link + 0.0 * bytes_

    def host_memory_fraction(self, bytes_: Number) -> Number:
        return self.spec.host_memory + 0.0 * bytes_

    # ---- seconds

    def op_terms(self, work, peak_flops: Number, memory_bandwidth: Number, launch_s: float) -> OpTerms:
        """The roofline terms of ``work`` (a :class:`planner.costmodel.Work`)."""
        rate = peak_flops * np.minimum(self.matmul_fraction(work.flops), self._rows(work))
        return OpTerms(work.kernels * launch_s, work.flops / rate,
                       work.bytes / (memory_bandwidth * self.memory_fraction(work.bytes)))

    def _rows(self, work) -> Number:
        tokens = work.tokens
        if isinstance(tokens, (int, float)):  # one op of one step (the simulator's hot path)
            return self.rows_fraction(max(float(tokens), 1.0)) if tokens > 0 else 1.0
        tokens = np.asarray(tokens, float)
        return np.where(tokens > 0, self.rows_fraction(np.maximum(tokens, 1.0)), 1.0)

    def extrapolation(self, work) -> Number:
        """How far ``work`` lies beyond what this profile's op model was fitted on: 1 inside,
        else the largest ratio of its FLOPs, bytes or tokens to the fitted range. Always 1
        here (nothing was fitted: the datasheet fractions are assumptions everywhere)."""
        return 1.0 + 0.0 * np.asarray(work.flops, float)

    def lookup_overhead_s(self, requested_rows: Number) -> Number:
        """Host seconds of one offloaded lookup besides gathering its rows (plan,
        de-duplication, assembly). None here."""
        return 0.0 * requested_rows

    def lookup_cache_s(self, requested_rows: Number) -> Number:
        """Host seconds a hot-row cache adds to one lookup (index search, hit/miss split,
        placing the hits). None here."""
        return 0.0 * requested_rows

    def hash_s(self, tokens: Number, indices_per_token: float, cores: Number) -> Number:
        """Seconds to hash ``tokens`` tokens (every Engram layer's ``indices_per_token``
        indices) on ``cores`` cores: perfectly parallel, no fixed cost."""
        rate = self.hardware.host.hash_tokens_per_s_per_core * REFERENCE_HASH_INDICES / max(indices_per_token, 1e-9)
        return tokens / (cores * rate)

    def step_overhead_s(self, tokens: Number, seqs: Number = 0.0) -> Number:
        """The serving engine's own seconds per step of ``tokens`` tokens over ``seqs``
        sequences outside every op and lookup (scheduling, input preparation, sampling, output
        processing): ``host.engine_step_overhead + host.engine_seq_overhead x seqs``."""
        host = self.hardware.host
        return (host.engine_step_overhead + host.engine_seq_overhead * np.asarray(seqs, float)
                + 0.0 * np.asarray(tokens, float))

    def gather_rate(self, table_bytes: Number, row_bytes: Number, huge_pages: bool = False) -> Number:
        """Bytes/s one core copies random rows of a ``table_bytes`` table into staging, alone
        on the node: ``host.gather_bandwidth_per_core`` (an assumption until calibrated)."""
        return self.hardware.host.gather_bandwidth_per_core + 0.0 * np.asarray(table_bytes, float)

    def gather_regime(self, table_bytes: float, huge_pages: bool = False) -> str:
        """Where a random row of the table comes from, as the gather rate prices it."""
        return "assumed (uncalibrated)"


# ----------------------------------------------------------------------------- calibrated


@dataclass(frozen=True)
class OpCurve:
    """One op kind's fitted roofline (:func:`planner.calibration.fit.roofline_seconds`):
    ``fixed_s`` plus ``row_s`` a row and ``seq_s`` a sequence, plus the larger of FLOPs at ``flop_fraction`` of the
    curve's dtype peak (times ``rows / (rows + t_half)``: the few-row knee; profiles fitted
    before it have none and take the ``gemm_rows`` ceiling) and bytes at ``byte_fraction`` of
    the memory bandwidth; ``ranges`` are the (min, max) FLOPs, bytes, tokens (and sequences) of
    its samples."""

    fixed_s: float
    flop_fraction: float
    byte_fraction: float
    flop_scale: float  # peak of the curve's dtype / peak of the model's dtype (1 when equal)
    ranges: dict[str, tuple[float, float]]
    row_s: float = 0.0
    t_half: float | None = None
    seq_s: float = 0.0


class CalibratedEfficiency(Efficiency):
    """A calibrated profile's fitted curves (docs/calibration.md lists every one).

    * ``op:<kind>:<dtype>`` (form ``roofline``): fixed seconds and the two rate fractions of
      each op kind, fitted to engine-timed spans. A kind measured only in another dtype reaches
      the same FLOP/s there, except in a dtype the device emulates
      (``calibration.emulated_dtypes``, e.g. bf16 on a CPU without bf16 units): there the same
      fraction of that dtype's own measured GEMM peak. A kind with no curve falls back to the
      ``gemm`` curve and the preset's launch term.
    * ``gemm:<dtype>``, ``gemm_rows:<dtype>``: square-GEMM efficiency and the few-row ceiling.
    * ``link:<mode>``: copy bandwidth by size (two regimes where one line does not fit).
    * ``gather:<source>:latency`` / ``gather:<source>:bandwidth`` (form ``piecewise``, vs the
      table's bytes): a random row costs ``latency(table) + row_bytes / bandwidth(table)`` on
      one core: rows of a table inside the LLC come from the cache, beyond it from DRAM, and
      beyond the TLB's reach each row also walks the page table. ``+thp`` curves were measured
      with transparent huge pages.
    * ``lookup:overhead``: a lookup's host seconds besides its gather, by requested rows;
      ``lookup:cache``: what a hot-row cache adds to it.
    * ``hash:call`` (form ``linear``): the hash call's fixed seconds, and ``hash:tokens`` its
      tokens/s at large calls (32 indices a token).
    * ``step:overhead`` (form ``linear`` in the step's tokens): the engine's per-step seconds not
      inside any op, hash or lookup span (the Python between ops, block 0's cold start) and its
      per-token work outside the ops (a prefill's fresh activation memory, KV-cache writes).
    """

    fitted = True

    def __init__(self, hardware: HardwareSpec, dtype: str | None = None):
        super().__init__(hardware, dtype)
        cal = hardware.calibration
        assert cal is not None
        peaks = hardware.device.flops
        here = hardware.device.flops_for(dtype) if dtype else None
        emulated = dtype in cal.emulated_dtypes
        self.ops: dict[str, OpCurve] = {}
        self.gemm: Fit | None = None
        self.gemm_rows: Fit | None = None
        self.links: dict[str, tuple[Fit, float]] = {}
        self.curves: dict[str, Fit] = {}
        lines = {"h2d": hardware.link.h2d_bandwidth, "d2h": hardware.link.d2h_bandwidth}
        for c in cal.curves:
            exact = c.dtype is None or dtype is None or c.dtype == dtype
            fit = Fit(c.form, dict(c.params))
            if c.name.startswith("op:"):
                kind = c.name[3:].rsplit(":", 1)[0] if c.dtype else c.name[3:]
                if exact or kind not in self.ops:
                    scale = 1.0 if exact or emulated or c.dtype not in peaks or here is None else peaks[c.dtype] / here
                    self.ops[kind] = OpCurve(c.params["fixed_s"], c.params["flop_fraction"], c.params["byte_fraction"],
                                             scale, _ranges(c), c.params.get("row_s", 0.0), c.params.get("t_half"),
                                             c.params.get("seq_s", 0.0))
            elif c.name.startswith("gemm:") and (exact or self.gemm is None):
                self.gemm = fit
            elif c.name.startswith("gemm_rows:") and (exact or self.gemm_rows is None):
                self.gemm_rows = fit
            elif c.name == "link:memcpy":
                self.links = {d: (fit, line) for d, line in lines.items()}
            elif c.name in ("link:h2d_pinned", "link:d2h_pinned"):
                self.links[c.name[5:8]] = (fit, lines[c.name[5:8]])
            else:
                self.curves[c.name] = fit
        self.constants = dict(cal.constants)

    # ---- compute

    def matmul_fraction(self, flops: Number) -> Number:
        if self.gemm is None:
            return super().matmul_fraction(flops)
        return np.minimum(self.gemm(np.maximum(flops, 1.0)), 1.0)

    def rows_fraction(self, tokens: Number) -> Number:
        """The ``gemm_rows`` curve (a GEMM of ``tokens`` rows against memory-resident weights),
        at most 1."""
        if self.gemm_rows is None:
            return super().rows_fraction(tokens)
        return np.minimum(self.gemm_rows(np.maximum(tokens, 1.0)), 1.0)

    def _op(self, kind: str) -> OpCurve | None:
        """A kind's curve; a hyper-connection-wrapped sublayer (``...+hc``) measured only bare
        takes the bare one's (and the other way round)."""
        if kind in self.ops:
            return self.ops[kind]
        other = kind[:-3] if kind.endswith("+hc") else kind + "+hc"
        return self.ops.get(other)

    def op_terms(self, work, peak_flops: Number, memory_bandwidth: Number, launch_s: float) -> OpTerms:
        op = self._op(work.kind) if work.kind else None
        if op is None:
            return super().op_terms(work, peak_flops, memory_bandwidth, launch_s)
        tokens = work.tokens if isinstance(work.tokens, (int, float)) else np.asarray(work.tokens, float)
        if op.t_half is not None:
            rate = peak_flops * op.flop_scale * op.flop_fraction * few_row_knee(tokens, op.t_half)
        else:
            rate = peak_flops * op.flop_scale * np.minimum(op.flop_fraction, self._rows(work))
        per_call = op.fixed_s + op.row_s * tokens + op.seq_s * work.seqs
        return OpTerms(per_call + 0.0 * np.asarray(work.flops, float), work.flops / rate,
                       work.bytes / (memory_bandwidth * op.byte_fraction))

    def extrapolation(self, work) -> Number:
        op = self._op(work.kind) if work.kind else None
        if op is None:
            return super().extrapolation(work)
        ratio = 1.0 + 0.0 * np.asarray(work.flops, float)
        for name, value in (("flops", work.flops), ("bytes", work.bytes), ("tokens", work.tokens), ("seqs", work.seqs)):
            lo, hi = op.ranges.get(name, (0.0, np.inf))
            v = np.asarray(value, float)
            beyond = np.where(v > hi, v / max(hi, 1e-300), np.where((v < lo) & (v > 0), lo / np.maximum(v, 1e-300), 1.0))
            ratio = np.maximum(ratio, beyond)
        return ratio

    # ---- links

    def link_fraction(self, bytes_: Number, direction: str) -> Number:
        if direction not in self.links:
            return super().link_fraction(bytes_, direction)
        fit, line = self.links[direction]
        return bandwidth_of(fit, bytes_) / line

    # ---- host work

    def lookup_overhead_s(self, requested_rows: Number) -> Number:
        fit = self.curves.get("lookup:overhead")
        if fit is None:
            return super().lookup_overhead_s(requested_rows)
        return np.maximum(fit(np.asarray(requested_rows, float)), 0.0)

    def lookup_cache_s(self, requested_rows: Number) -> Number:
        fit = self.curves.get("lookup:cache")
        if fit is None:
            return super().lookup_cache_s(requested_rows)
        return np.maximum(fit(np.asarray(requested_rows, float)), 0.0)

    def hash_s(self, tokens: Number, indices_per_token: float, cores: Number) -> Number:
        """The engine-timed ``hash:call`` line: its fixed seconds per call plus its seconds per
        index hashed, that part split over ``cores``; without it, the datasheet rate."""
        call = self.curves.get("hash:call")
        if call is None:
            return super().hash_s(tokens, indices_per_token, cores)
        per_index = max(float(call.params["slope"]), 0.0)
        return max(float(call.params["intercept"]), 0.0) + tokens * indices_per_token * per_index / cores

    def step_overhead_s(self, tokens: Number, seqs: Number = 0.0) -> Number:
        fit = self.curves.get("step:overhead")  # the reference engine's, fitted against step tokens
        if fit is None:
            return super().step_overhead_s(tokens, seqs)
        return np.maximum(fit(np.asarray(tokens, float)), 0.0)

    def _gather_curves(self, huge_pages: bool) -> tuple[Fit, Fit] | None:
        for suffix in (("+thp", "") if huge_pages else ("",)):
            lat = self.curves.get(f"gather:ram{suffix}:latency")
            bw = self.curves.get(f"gather:ram{suffix}:bandwidth")
            if lat is not None and bw is not None:
                return lat, bw
        return None

    def gather_rate(self, table_bytes: Number, row_bytes: Number, huge_pages: bool = False) -> Number:
        curves = self._gather_curves(huge_pages)
        if curves is None:
            return super().gather_rate(table_bytes, row_bytes, huge_pages)
        lat, bw = curves
        t = np.asarray(table_bytes, float)
        return row_bytes / (np.maximum(lat(t), 0.0) + row_bytes / bw(t))

    def gather_regime(self, table_bytes: float, huge_pages: bool = False) -> str:
        curves = self._gather_curves(huge_pages)
        if curves is None:
            return super().gather_regime(table_bytes, huge_pages)
        llc = self.constants.get("llc_bytes")
        where = "llc" if llc and table_bytes <= llc else "dram"
        page = "2M pages" if huge_pages and "gather:ram+thp:latency" in self.curves else "4K pages"
        beyond = table_bytes > 1.5 * _last_knot(curves[0])
        return f"{where}, {page}" + (", beyond the tables measured" if beyond else "")


def _last_knot(fit: Fit) -> float:
    xs = [v for k, v in fit.params.items() if k.startswith("x")]
    return max(xs) if xs else np.inf


def _ranges(curve) -> dict[str, tuple[float, float]]:
    out = {"flops": (min(curve.samples_x), max(curve.samples_x))}
    for name, values in (curve.samples_aux or {}).items():
        if values:
            out[name] = (min(values), max(values))
    return out


def default_efficiency(hardware: HardwareSpec, dtype: str | None = None) -> Efficiency:
    """The profile's own efficiency: its fitted curves when it carries a calibration section,
    else its constant fractions."""
    if hardware.calibration is not None:
        return CalibratedEfficiency(hardware, dtype)
    return Efficiency(hardware, dtype)
