"""Micro-measurements of this machine (torch): GEMMs (the device's ceilings), DRAM copies, the
host<->device link, random-row gathers from host tables of every size (inside the LLC to far
beyond the TLB's reach, 4 KiB and 2 MiB pages), n-gram hashing at large calls, and the fixed
cost of a dispatch. What a step costs in the engine is measured in the engine's own loop
(:mod:`planner.calibration.measure_engine`).

Every function returns plain values (seconds, bytes, FLOPs; lists of dicts) and prints nothing;
the ``calibrate`` command runs them as :mod:`planner.calibration.tasks`, caches them and fits
them (:mod:`planner.calibration.build`). The code paths are the ones the reference model and
its table store run: ``torch.matmul``, ``Tensor.copy_`` / ``Tensor.to(non_blocking=True)``,
``DenseRows.gather`` (``index_select(..., out=staging)``),
``NgramHasher.row_ids``.

Timing: each sample runs its call in a loop long enough (``min_time_s``) to swamp the clock,
repeats that ``repeats`` times and keeps the median (other processes share this machine).
CUDA work is timed with CUDA events on the current stream.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- timing


def cuda_ok(device: str) -> bool:
    return device == "cuda" and torch.cuda.is_available()


def time_call(fn: Callable[[], object], *, repeats: int = 5, min_time_s: float = 2e-3,
              device: str = "cpu", max_inner: int = 10_000) -> float:
    """Median seconds of one ``fn()`` call over ``repeats`` timed loops (after one warm-up)."""
    cuda = cuda_ok(device)
    fn()
    if cuda:
        torch.cuda.synchronize()
    inner, t0 = 1, time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = int(min(max_inner, max(1, min_time_s / once)))
    samples = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3 / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner)
    return statistics.median(samples)


def time_calls_interleaved(fns: dict, *, repeats: int = 5, min_time_s: float = 2e-3,
                            max_inner: int = 10_000) -> dict:
    """:func:`time_call` of several CPU calls at once, their repeats interleaved (repeat 1 of
    each, then repeat 2 of each, ...): a burst of load from other processes then lands on all of
    them alike instead of on one. ``fns``: ``{key: (setup, fn)}``; ``setup()`` runs before each
    timed loop of ``fn`` (e.g. setting the thread count). Median seconds of one call per key."""
    inner = {}
    for key, (setup, fn) in fns.items():
        setup()
        fn()
        t0 = time.perf_counter()
        fn()
        inner[key] = int(min(max_inner, max(1, min_time_s / max(time.perf_counter() - t0, 1e-7))))
    samples: dict = {key: [] for key in fns}
    for _ in range(repeats):
        for key, (setup, fn) in fns.items():
            setup()
            t0 = time.perf_counter()
            for _ in range(inner[key]):
                fn()
            samples[key].append((time.perf_counter() - t0) / inner[key])
    return {key: statistics.median(v) for key, v in samples.items()}


def quiet_repeats(step_s) -> np.ndarray:
    """Which repetitions of one engine step to keep: the (up to) three ranked around the lower
    quartile of the step's seconds (with 9 repeats the 2nd-4th fastest).

    The statistic for calls that cannot be looped (a model step and its spans): on a shared
    machine a preemption only ever adds time (a scheduler tick, 4 ms at 250 Hz), so the repeats
    are bimodal and their median jumps between modes; the repetitions around the lower quartile
    estimate the call's own cost and stay put. The step's spans are then averaged over the
    **same** repetitions, so they add up to the step as it was measured: a lower quartile taken
    span by span picks each span's luckiest repetition, and their sum fell short of the step's
    own lower quartile by 0.2-1.0 ms a decode step (up to 5 ms a prefill) on the CI VM, more
    the more spans a step has. Timed loops use the median."""
    step_s = np.asarray(step_s, float)
    n = len(step_s)
    q = (n - 1) // 4
    return np.argsort(step_s, kind="stable")[max(q - 1, 0):min(q + 2, n)]


@contextmanager
def torch_threads(n: int | None):
    """Run with ``n`` intra-op threads (None: leave as is)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ----------------------------------------------------------------------------- compute


def measure_gemm(sizes: list[int], dtype: str, device: str, repeats: int) -> list[dict]:
    """Square ``n x n @ n x n`` products: ``2 n^3`` FLOP each."""
    out = []
    for n in sizes:
        a = torch.randn(n, n, device=device).to(DTYPES[dtype])
        b = torch.randn(n, n, device=device).to(DTYPES[dtype])
        c = torch.empty(n, n, device=device, dtype=DTYPES[dtype])
        t = time_call(lambda: torch.matmul(a, b, out=c), repeats=repeats, device=device,
                      min_time_s=5e-3)
        out.append({"n": n, "flops": 2.0 * n**3, "seconds": t})
    return out


def measure_gemm_rows(rows_list: list[int], n: int, dtype: str, device: str, repeats: int,
                      pool_bytes: int = 64 << 20) -> list[dict]:
    """``x[M, n] @ W[n, n]`` for small row counts ``M`` (a decode step's tokens): a GEMM with few
    rows reaches a fraction of the square-GEMM peak whatever its FLOPs (the kernel cannot block
    it for the cache). Successive calls cycle through ``pool_bytes`` of distinct weights, as a
    forward pass reads each block's own weights from memory. ``2 M n^2`` FLOP each."""
    dt = DTYPES[dtype]
    slots = max(2, pool_bytes // (n * n * torch.empty(0, dtype=dt).element_size()))
    weights = [torch.randn(n, n, device=device).to(dt) for _ in range(slots)]
    out = []
    for m in rows_list:
        x = torch.randn(m, n, device=device).to(dt)
        state = {"i": 0}

        def call():
            i = state["i"] = (state["i"] + 1) % slots
            torch.nn.functional.linear(x, weights[i])

        t = time_call(call, repeats=repeats, device=device, min_time_s=5e-3)
        out.append({"rows": m, "n": n, "flops": 2.0 * m * n * n, "seconds": t})
    return out


def measure_launch(device: str, repeats: int) -> float:
    """Seconds of one tiny op (a dispatch, plus a kernel launch on CUDA): the fixed cost every
    kernel pays, ``device.kernel_launch_overhead``."""
    a = torch.ones(1, device=device)
    b = torch.ones(1, device=device)
    c = torch.empty(1, device=device)
    return time_call(lambda: torch.add(a, b, out=c), repeats=repeats, device=device, min_time_s=5e-3)


# ----------------------------------------------------------------------------- memory and link


def measure_copy(sizes: list[int], repeats: int, device: str = "cpu", pool_bytes: int = 256 << 20) -> list[dict]:
    """``dst.copy_(src)`` of contiguous byte buffers on one memory: a stream-like copy (each
    byte read once and written once). Successive calls copy different slices of a
    ``pool_bytes`` pool, so small copies start from DRAM (as a step's fresh rows or staging
    buffers do), not from a cache that still holds the previous call's bytes."""
    out = []
    for n in sizes:
        slots = max(1, pool_bytes // max(n, 1) // 2)
        src = torch.ones(slots, n, dtype=torch.uint8, device=device)
        dst = torch.empty_like(src)
        pairs = list(zip(dst.unbind(0)[::-1], src.unbind(0)))  # views made once, not per call
        state = {"i": 0}

        def copy():
            i = state["i"] = (state["i"] + 1) % slots
            d, s = pairs[i]
            d.copy_(s)

        t = time_call(copy, repeats=repeats, device=device)
        out.append({"bytes": float(n), "seconds": t})
    return out


def measure_link(sizes: list[int], repeats: int, device: str) -> dict[str, list[dict]]:
    """Host<->device copies vs size. CUDA: ``tensor.to(non_blocking=True)`` from pinned and
    pageable host memory, and back into pinned and pageable buffers, timed with CUDA events.
    CPU: the "link" is a memory copy between two host buffers (``memcpy``)."""
    if not cuda_ok(device):
        return {"memcpy": measure_copy(sizes, repeats)}
    out: dict[str, list[dict]] = {k: [] for k in ("h2d_pinned", "h2d_pageable", "d2h_pinned", "d2h_pageable")}
    for n in sizes:
        for pinned in (True, False):
            host = torch.ones(n, dtype=torch.uint8, pin_memory=pinned)
            dev = torch.empty(n, dtype=torch.uint8, device="cuda")
            mode = "pinned" if pinned else "pageable"
            t = time_call(lambda: dev.copy_(host, non_blocking=True), repeats=repeats, device="cuda")
            out[f"h2d_{mode}"].append({"bytes": float(n), "seconds": t})
            t = time_call(lambda: host.copy_(dev, non_blocking=True), repeats=repeats, device="cuda")
            out[f"d2h_{mode}"].append({"bytes": float(n), "seconds": t})
    return out


def measure_uva(row_bytes: int, rows_list: list[int], table_bytes: int, repeats: int) -> list[dict]:
    """CUDA only: a GPU kernel (``index_select``) gathering rows straight from a pinned host
    table through its UVA view (``reference_model.store_uva``), as ``host_mode: uva`` does."""
    from reference_model.store_uva import uva_view

    d = row_bytes // 4
    table = torch.empty(table_bytes // row_bytes, d, dtype=torch.float32, pin_memory=True)
    table.uniform_()
    view = uva_view(table, torch.cuda.current_device())
    out = []
    for rows in rows_list:
        ids = torch.randint(0, table.shape[0], (rows,), device="cuda")
        dst = torch.empty(rows, d, device="cuda")
        t = time_call(lambda: torch.index_select(view, 0, ids, out=dst), repeats=repeats, device="cuda")
        out.append({"rows": rows, "bytes": float(rows * row_bytes), "seconds": t})
    return out


# ----------------------------------------------------------------------------- host gathers


HUGE_PAGE = 2 << 20


def thp_mode() -> str | None:
    """Transparent huge pages setting (``always``, ``madvise`` or ``never``), None if unknown."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return None
    return text.split("[", 1)[1].split("]", 1)[0] if "[" in text else None


def host_table(n_bytes: int, huge_pages: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A float32 host buffer of ``n_bytes`` whose pages are asked to be 2 MiB
    (``madvise(MADV_HUGEPAGE)``) or 4 KiB (``MADV_NOHUGEPAGE``) before first touch, then filled.
    Returns ``(keep_alive, table)``. Linux only; elsewhere the kernel's default pages."""
    import ctypes

    raw = torch.empty(n_bytes // 4 + HUGE_PAGE // 4, dtype=torch.float32)
    start = (raw.data_ptr() + HUGE_PAGE - 1) // HUGE_PAGE * HUGE_PAGE
    offset = (start - raw.data_ptr()) // 4
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(n_bytes // HUGE_PAGE * HUGE_PAGE),
                     14 if huge_pages else 15)  # MADV_HUGEPAGE / MADV_NOHUGEPAGE
    except (OSError, AttributeError):
        pass
    table = raw[offset:offset + n_bytes // 4]
    table.uniform_()
    return raw, table


def measure_table_gathers(table_sizes: list[int], widths: list[int], rows: int, repeats: int,
                          huge_pages: list[bool], threads: list[int] = (1,)) -> list[dict]:
    """Random rows gathered by :class:`reference_model.store_sources.DenseRows` (one thread,
    ``index_select`` into a staging buffer) from tables of each size in ``table_sizes``, for each
    row width: the per-row cost of a table inside the last-level cache, in DRAM, and beyond the
    TLB's reach (4 KiB pages) or with 2 MiB pages. Each table size is a prefix of one buffer of the
    largest size, so one allocation serves every size; each call reads a fresh set of ``rows``
    random rows (sets rotate through >= 64 MiB of rows, so no call finds the previous one's rows
    in a cache unless the whole table fits there). ``threads`` beyond 1: the same gather with
    that many intra-op threads, at the largest table and the second width, 4 KiB pages."""
    from reference_model.store_sources import DenseRows

    out = []
    for huge in huge_pages:
        keep, base = host_table(max(table_sizes), huge)
        for size in sorted(table_sizes):
            for width in widths:
                d = width // 4
                n_rows = size // width
                src = DenseRows(base[: n_rows * d].view(n_rows, d), "host", pin=False)
                counts = [1] + ([n for n in threads if n > 1] if not huge and size == max(table_sizes)
                                and width == widths[min(1, len(widths) - 1)] else [])
                sets = max(8, (64 << 20) // (rows * width))
                ids = torch.randint(0, n_rows, (sets, rows))
                staging = torch.empty(rows, d, dtype=torch.float32)
                state = {"i": 0}

                def gather(src=src, ids=ids, staging=staging, sets=sets, state=state):
                    state["i"] = (state["i"] + 1) % sets
                    src.gather(ids[state["i"]], staging)

                for n in counts:
                    with torch_threads(n):
                        t = time_call(gather, repeats=repeats, min_time_s=5e-3)
                    out.append({"table_bytes": float(n_rows * width), "row_bytes": width, "rows": rows,
                                "huge_pages": huge, "threads": n, "seconds": t})
        del keep, base
    return out


# ----------------------------------------------------------------------------- hashing


def measure_hash(model: str, tokens_list: list[int], repeats: int) -> list[dict]:
    """Tokens hashed per second by the reference hasher on one core (every Engram layer, order
    and head of ``model``, as ``host.hash_tokens_per_s_per_core`` counts them), per call size."""
    import numpy as np

    from planner.loading import load_model
    from reference_model.hashing import NgramHasher

    spec = load_model(model)
    hasher = NgramHasher(spec.engram, spec.vocab_size, spec.engram.pad_id)
    rng = np.random.default_rng(0)
    out = []
    with torch_threads(1):
        for tokens in tokens_list:
            batch = max(1, tokens // 2048)
            ids = rng.integers(0, spec.vocab_size, size=(batch, tokens // batch), dtype=np.int64)
            t = time_call(lambda: hasher.row_ids(ids), repeats=repeats, min_time_s=5e-3)
            out.append({"tokens": tokens, "seconds": t, "indices_per_token": hasher.rows_per_token * len(spec.engram.layer_ids)})
    return out
