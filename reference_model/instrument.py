"""Timing of real runs: spans in the shared trace format, and the offload metrics from them.

:class:`SpanRecorder` is the ``tracer`` the model, the row provider and the benchmarks call as
``tracer(name, track)`` (a context manager); it returns :class:`planner.trace.Span` values that
export with :func:`planner.trace.chrome_trace`, the format simulated runs use too, so a measured
run and its simulation open side by side in Perfetto. Names follow ``planner.trace.SPAN_NAMES``.

Clocks. Host-side tracks (``host_gather``, ``engine``, ``hash``) use ``time.perf_counter``.
On CUDA, device tracks (``compute``, ``h2d``) use CUDA events recorded on the current stream,
because a kernel launch returns long before the kernel runs; events are read back, with one
synchronisation, only when :meth:`SpanRecorder.spans` is called, so recording adds no sync to
the timed steps. The two clocks are aligned at construction (synchronise, record a reference
event, read the host clock), to within a launch latency (microseconds).

:func:`offload_metrics` turns spans and lookup counts into per-step metrics named as in
``docs/metrics.md`` (the simulator's), plus the offload-only ones of ``docs/offload.md``.

:func:`frozen_heap` keeps Python's cycle collector from walking the whole heap inside timed runs
(a full pass over torch's and the harness's ~300k objects took 0.2-0.3 s on the 2-vCPU CI VM,
and about half of a gate's wall time went to them), and keeps the C allocator from handing a
step's freed memory back to the kernel (:func:`keep_freed_memory`).
"""

from __future__ import annotations

import gc
import re
import threading
import time
from contextlib import contextmanager
from typing import Iterable

import torch

from planner.trace import Span, chrome_trace

DEVICE_TRACKS = frozenset({"compute", "h2d"})
_WAIT = re.compile(r"wait_L\d+$")
_LOOKUP = re.compile(r"(gather|h2d)_L\d+$")


_FROZEN = 0  # depth of nested frozen_heap blocks
_KEPT: bool | None = None  # keep_freed_memory's outcome, once per process

# glibc mallopt parameters (malloc.h) and the values the timed runs use.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's own ceiling for its sliding threshold (64-bit)
TRIM_THRESHOLD_BYTES = 512 << 20


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep what a step frees, for the rest of the process: blocks up to
    32 MiB come from the heap instead of fresh ``mmap`` s, and the heap's top is returned to the
    kernel only past 512 MiB free. Torch's CPU tensors and numpy arrays are malloc'd, so
    otherwise each step of a small model can hand its activations back (glibc trims the heap
    once its free top exceeds twice the largest mmapped block freed so far, 128 KiB at start)
    and fault them in again, zeroed, the next step: how often depends on what the process did
    before (the largest block it happened to free), not on the model. Measured on the 2-vCPU
    Zen 5 VM, calibration's engine steps took 32-42 minor page faults each inside
    ``calibrate --quick``, validation's 9-10; with this, 11 and 9, at 2.3-2.7 µs a fault (``tests/test_instrument.py`` checks a loop of
    freed activations stops faulting). A long-running server reaches this state on its own
    (or runs jemalloc or tcmalloc, which keep freed memory). True where applied; False off
    glibc (macOS, musl), where nothing changes. Idempotent."""
    global _KEPT
    if _KEPT is None:
        import ctypes
        import platform

        _KEPT = False
        if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _KEPT = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                             and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
            except (OSError, AttributeError):
                _KEPT = False
    return _KEPT


@contextmanager
def frozen_heap():
    """Collect once, then move every live object to the collector's permanent generation for
    the block (``gc.freeze``), as serving engines do after start-up: full collections inside
    the block walk only what it allocates, so a run's steps are not paused by a walk over the
    interpreter's, torch's and the test runner's objects, whose cost grows with whatever else
    the process imported. Cyclic garbage made inside the block is still collected. Nested
    blocks freeze once; the outermost unfreezes. The first block also calls
    :func:`keep_freed_memory` (process-wide, and kept after the block: glibc cannot go back to
    its sliding thresholds)."""
    global _FROZEN
    if _FROZEN == 0:
        keep_freed_memory()
        gc.collect()
        gc.freeze()
    _FROZEN += 1
    try:
        yield
    finally:
        _FROZEN -= 1
        if _FROZEN == 0:
            gc.unfreeze()


class _Ctx:
    __slots__ = ("rec", "name", "track", "args", "t0", "ev0")

    def __init__(self, rec: "SpanRecorder", name: str, track: str, args: dict):
        self.rec, self.name, self.track, self.args = rec, name, track, args

    def __enter__(self):
        if self.rec._events_for(self.track):
            self.ev0 = torch.cuda.Event(enable_timing=True)
            self.ev0.record()
        else:
            self.ev0 = None
            self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.ev0 is not None:
            ev1 = torch.cuda.Event(enable_timing=True)
            ev1.record()
            with self.rec._lock:
                self.rec._pending.append((self.name, self.track, self.ev0, ev1, self.args))
        else:
            t1 = time.perf_counter()
            span = Span(self.name, self.track, self.t0 - self.rec._t0, t1 - self.t0, self.args)
            with self.rec._lock:
                self.rec._spans.append(span)
        return False


class SpanRecorder:
    """Records named intervals per track (actor) from any thread.

    Use as the model's ``tracer`` and the provider's: ``with rec("attn_L1", "compute"): ...``.
    ``enabled=False`` makes every span a no-op (for untimed runs). ``cuda``: time device tracks
    with CUDA events (default: whenever CUDA is available). Simplification: a span is one
    interval; nested spans on one track are kept as separate, overlapping spans.
    """

    def __init__(self, *, enabled: bool = True, cuda: bool | None = None):
        self.enabled = enabled
        self.cuda = torch.cuda.is_available() if cuda is None else cuda
        self._lock = threading.Lock()
        self._spans: list[Span] = []
        self._pending: list = []
        self._ref = None
        if self.cuda and enabled:
            torch.cuda.synchronize()
            self._ref = torch.cuda.Event(enable_timing=True)
            self._ref.record()
        self._t0 = time.perf_counter()

    def _events_for(self, track: str) -> bool:
        return self._ref is not None and track in DEVICE_TRACKS

    def __call__(self, name: str, track: str, **args):
        if not self.enabled:
            return _NULL
        return _Ctx(self, name, track, args)

    def now_s(self) -> float:
        """Host time since the recorder started (seconds)."""
        return time.perf_counter() - self._t0

    def spans(self) -> list[Span]:
        """All spans so far, sorted by start (synchronises CUDA once if events are pending)."""
        with self._lock:
            pending, self._pending = self._pending, []
        if pending:
            torch.cuda.synchronize()
            resolved = [
                Span(name, track, self._ref.elapsed_time(e0) / 1e3, e0.elapsed_time(e1) / 1e3, args)
                for name, track, e0, e1, args in pending
            ]
            with self._lock:
                self._spans.extend(resolved)
        with self._lock:
            return sorted(self._spans, key=lambda s: s.start_s)

    def clear(self) -> None:
        self.spans()
        with self._lock:
            self._spans = []

    def chrome_trace(self, process: str = "reference_model", metadata: dict | None = None) -> dict:
        return chrome_trace(self.spans(), process, metadata)


class _NullCtx:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_NULL = _NullCtx()


def offload_metrics(spans: Iterable[Span], stats: dict | None = None) -> dict:
    """Per-step offload metrics of a measured run from its spans and ``{layer: LookupStats}``.

    Names and definitions follow docs/metrics.md where a simulated metric exists:

    * ``steps``, ``mean_step_time_s``: count and mean duration of ``step`` spans;
    * ``exposed_per_step_s[layer]``: the ``wait_L{layer}`` spans (compute stalled waiting for
      rows) per step; ``exposed_s`` their sum over layers; ``exposed_fraction`` = total wait /
      total step time. With prefetch off a wait span holds the whole lookup;
    * ``lookup_s``: per step, the sum of ``gather_L{i}`` and ``h2d_L{i}`` spans, the lookup's own
      work wherever it ran (worker thread, copy stream, or inside the wait);
    * ``hidden_fraction``: ``1 - exposed_s / lookup_s`` clipped to [0, 1] (0 without lookup work):
      the share of lookup work that overlapped compute;
    * from the counts, per step: ``bytes_to_device`` (``bytes_requested.to_device`` of
      docs/metrics.md: rows after de-duplication and the device cache, times the row size),
      ``rows_to_device``, ``unique_rows``, ``requested_rows``; and ``cache_hit_rate`` = reads
      served by the device cache / reads requested.
    """
    spans = list(spans)
    steps = [s for s in spans if s.name == "step"]
    n = max(len(steps), 1)
    exposed: dict[int, float] = {}
    for s in spans:
        if _WAIT.match(s.name):
            layer = int(s.name.rsplit("_L", 1)[1])
            exposed[layer] = exposed.get(layer, 0.0) + s.dur_s / n
    exposed_s = sum(exposed.values())
    lookup = sum(s.dur_s for s in spans if _LOOKUP.match(s.name)) / n
    step_total = sum(s.dur_s for s in steps)
    out = {
        "steps": len(steps),
        "mean_step_time_s": step_total / n if steps else None,
        "exposed_per_step_s": exposed,
        "exposed_s": exposed_s,
        "exposed_fraction": exposed_s * n / step_total if step_total > 0 else None,
        "lookup_s": lookup,
        "hidden_fraction": min(max(1.0 - exposed_s / lookup, 0.0), 1.0) if lookup > 0 else 0.0,
    }
    if stats:
        layer_steps = max(max(s.steps for s in stats.values()), 1)
        for key, field in (("bytes_to_device", "bytes_moved"), ("rows_to_device", "fetched_rows"),
                           ("unique_rows", "unique_rows"), ("requested_rows", "requested_rows")):
            out[key] = sum(getattr(s, field) for s in stats.values()) / layer_steps
        requested = sum(s.requested_rows for s in stats.values())
        out["cache_hit_rate"] = sum(s.cache_hits for s in stats.values()) / requested if requested else 0.0
    return out
