"""The disk tier: one Engram table in a raw row-major file, read the two ways engines read it.

* ``read="pread"`` (**pre-staged**): the rows' pages are read with positional reads
  (libc ``pread``) into a page-aligned buffer, ``queue_depth`` reads in flight, and the rows
  copied out of it. The file is opened with ``O_DIRECT`` where the filesystem allows it, so
  every read goes to the drive and the page cache neither helps nor fills (an engine keeps its
  own DRAM row cache instead); where it refuses (tmpfs, some overlay and network filesystems,
  macOS) the reads are buffered and go through the page cache, and :attr:`DiskRows.label` says
  so. Run by the prefetch worker at the start of a step, these reads are the pre-staging an
  engine's io_uring or AIO reader does; io_uring itself is not in Python's standard library, so
  reads in flight are threads, each running one compiled loop of ``pread`` calls with the GIL
  released.
* ``read="mmap"`` (**in the forward**): the file is mapped (``MADV_RANDOM``: no read-ahead of
  neighbouring pages) and the gather touches the rows, so each cold page is a synchronous page
  fault, one at a time per gathering thread (the layout of vLLM's closed disk-offload PR #56757
  and of llama.cpp's mapped weights).

Both return the same bytes as the table. A row may straddle two pages (rows lie back to back:
``offset = id * row_bytes``); every page a row touches is read once per call, adjacent pages in
one read of up to ``MAX_RUN_PAGES``.

Legend: N = row ids of one call, P = distinct pages they touch, R = runs of adjacent pages.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import torch

from reference_model.store_sources import RowSource

PAGE = 4096  # O_DIRECT needs offsets, lengths and buffers aligned to the logical block size (512 or 4096)
MAX_RUN_PAGES = 32  # 128 KiB: one read covers a run of adjacent pages up to this
READ_MODES = ("pread", "mmap")
MAX_QUEUE_DEPTH = 4096  # reads in flight are threads here: one each


class DiskRows(RowSource):
    """A table in a raw row-major file on the disk tier (see the module doc for ``read``).

    ``queue_depth``: reads in flight for ``pread``. Simplification: the OS page cache (mmap,
    buffered pread) is the DRAM tier in front of the file; ``host_cache_fraction`` is not enforced
    separately, and an ``O_DIRECT`` reader has no DRAM row cache. :meth:`drop_page_cache` evicts
    the file's cached pages to measure cold reads."""

    tier = "disk"
    gather_track = "host_gather"

    def __init__(self, path: str | Path, num_rows: int, d_head: int, dtype: torch.dtype, *,
                 read: str = "pread", queue_depth: int = 32):
        super().__init__(num_rows, d_head, dtype)
        if read not in READ_MODES:
            raise ValueError(f"read must be one of {', '.join(READ_MODES)}, got {read!r}")
        if not 1 <= int(queue_depth) <= MAX_QUEUE_DEPTH:
            raise ValueError(f"queue_depth must lie in [1, {MAX_QUEUE_DEPTH}] (one reader thread per read in flight), "
                             f"got {queue_depth}")
        self.path, self.read, self.queue_depth = Path(path), read, int(queue_depth)
        need = self.num_rows * self.row_bytes
        if not self.path.is_file():
            raise ValueError(f"{self.path}: no such table file")
        have = self.path.stat().st_size
        if have < need:
            raise ValueError(
                f"{self.path}: {have:,} bytes, but {num_rows:,} rows x {d_head} x "
                f"{self.row_bytes // d_head} B need {need:,}"
            )
        self.file_bytes = need
        self.io_note = ""
        if read == "mmap":
            self._map()
            self.io = "mmap"
            self.label = "disk (memory-mapped file: cold pages fault in inside the gather, one at a time)"
        else:
            self._fd, self.io, self.io_note = _open_for_reads(self.path)
            self._buf: mmap.mmap | None = None
            self._buf_ref = None
            self._pool: ThreadPoolExecutor | None = None
            how = "O_DIRECT" if self.io == "direct" else f"buffered ({self.io_note})"
            self.label = f"disk (pread, {how}, {self.queue_depth} reads in flight)"

    def _map(self) -> None:
        with open(self.path, "rb") as f:
            # Private and writable so torch may wrap it without copying; nothing writes to it.
            self._mm = mmap.mmap(f.fileno(), self.file_bytes, flags=mmap.MAP_PRIVATE,
                                 prot=mmap.PROT_READ | mmap.PROT_WRITE)
        if hasattr(self._mm, "madvise") and hasattr(mmap, "MADV_RANDOM"):
            self._mm.madvise(mmap.MADV_RANDOM)
        flat = torch.frombuffer(self._mm, dtype=self.dtype, count=self.num_rows * self.d_head)
        self.weight_RD = flat.view(self.num_rows, self.d_head)

    @classmethod
    def write(cls, path: str | Path, weight_RD: torch.Tensor, chunk_rows: int = 1 << 20, **kwargs) -> "DiskRows":
        """Write ``weight_RD`` to ``path`` in chunks of rows (bounded extra memory) and open it
        (``kwargs``: ``read``, ``queue_depth``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        weight_RD = weight_RD.detach()
        with open(path, "wb") as f:
            for start in range(0, weight_RD.shape[0], chunk_rows):
                chunk = weight_RD[start : start + chunk_rows].cpu().contiguous()
                f.write(chunk.view(torch.uint8).numpy().tobytes())
        return cls(path, weight_RD.shape[0], weight_RD.shape[1], weight_RD.dtype, **kwargs)

    def drop_page_cache(self) -> bool:
        """Ask the kernel to evict this file's cached pages (POSIX_FADV_DONTNEED; no root).
        Dirty pages (a file just written) cannot be dropped, so they are flushed first. Pages a
        live mapping holds are not evicted, so the mmap reader unmaps the file first (rows it
        returned earlier stay valid: they were copied out) and maps it afresh. Returns False
        where the OS has no such call (nothing was dropped)."""
        if not hasattr(os, "posix_fadvise"):
            return False
        if self.read == "mmap":
            self.weight_RD = self._mm = None  # the tensor held the mapping's only other reference
        fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
            if self.read == "mmap":
                self._map()
        return True

    def gather(self, ids_N: torch.Tensor, out_ND: torch.Tensor) -> torch.Tensor:
        if self.read == "mmap":
            return torch.index_select(self.weight_RD, 0, ids_N, out=out_ND)
        return self._pread_rows(ids_N, out_ND)

    # ----------------------------------------------------------------- pread

    def _pread_rows(self, ids_N: torch.Tensor, out_ND: torch.Tensor) -> torch.Tensor:
        n, rb = ids_N.shape[0], self.row_bytes
        if n == 0:
            return out_ND
        ids = ids_N.to("cpu", torch.int64).numpy()
        off_N = ids * rb
        first_N = off_N // PAGE
        last_N = (off_N + rb - 1) // PAGE
        span = int((last_N - first_N).max()) + 1  # most pages one row touches
        touched = [first_N + k for k in range(span)]
        pages_P = np.unique(np.concatenate([t[t <= last_N] for t in touched]))  # sorted
        buf = self._buffer(pages_P.shape[0] * PAGE)
        runs = _runs(pages_P)
        self._read_runs(runs, pages_P, buf)
        # A row's pages are consecutive in pages_P (all present, sorted), so its bytes are
        # contiguous in the buffer: position = (index of its first page) x PAGE + offset in it.
        pos_N = np.searchsorted(pages_P, first_N) * PAGE + (off_N - first_N * PAGE)
        flat = np.frombuffer(buf, dtype=np.uint8, count=pages_P.shape[0] * PAGE)
        windows = np.lib.stride_tricks.sliding_window_view(flat, rb)
        # Fancy indexing of the sliding-window view copies each row's bytes in one pass (numpy's
        # take(..., out=) on the same view is orders of magnitude slower).
        out_ND.view(torch.uint8).view(n, rb).copy_(torch.from_numpy(windows[pos_N]))
        return out_ND

    def _buffer(self, nbytes: int) -> mmap.mmap:
        """A page-aligned read buffer (anonymous mmap), grown in powers of two, and its address."""
        if self._buf is None or len(self._buf) < nbytes:
            if self._buf is not None:
                self._buf_ref = None  # the ctypes view pins the mapping: drop it before closing
                self._buf.close()
            self._buf = mmap.mmap(-1, 1 << max(nbytes - 1, PAGE).bit_length())
            self._buf_ref = ctypes.c_char.from_buffer(self._buf)
        return self._buf

    def _read_runs(self, runs: tuple[np.ndarray, np.ndarray, np.ndarray], pages_P: np.ndarray, buf: mmap.mmap) -> None:
        """Read every run (first page, page count, buffer page): ``queue_depth`` threads, each
        one compiled loop of ``pread`` calls over its share of the runs with the GIL released
        for the whole share (a Python loop of ``os.preadv`` takes the GIL back after every read,
        and with many reader threads the engine thread then waits for it: measured on the CI
        VM, decode steps ran 2x slower behind 32 such readers)."""
        first_R, count_R, at_R = runs
        file_off = first_R * PAGE
        nbytes = count_R * PAGE
        want = np.minimum(nbytes, self.file_bytes - file_off)
        buf_off = at_R * PAGE
        base = np.uint64(ctypes.addressof(self._buf_ref))
        fd, view = self._fd, memoryview(buf)

        def read_share(lo: int, hi: int) -> None:
            while lo < hi:
                bad = _pread_runs(fd, base, file_off[lo:hi], nbytes[lo:hi], buf_off[lo:hi], want[lo:hi])
                if bad < 0:
                    return
                i = lo + bad  # an interrupted or failed read: again in Python, which retries EINTR or raises
                got = _preadv(fd, view[buf_off[i]:buf_off[i] + nbytes[i]], int(file_off[i]))
                if got < want[i]:
                    raise OSError(errno.EIO, f"{self.path}: short read of {got} of {want[i]} bytes at offset {file_off[i]}")
                lo = i + 1

        n = first_R.shape[0]
        q = min(self.queue_depth, n)
        if q <= 1:
            read_share(0, n)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.queue_depth, thread_name_prefix="engram-disk")
        bounds = np.linspace(0, n, q + 1).astype(int)
        for f in [self._pool.submit(read_share, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]:
            f.result()

    def close(self) -> None:
        if self.read == "pread":
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _runs(pages_P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted distinct pages as runs of adjacent pages, each at most ``MAX_RUN_PAGES`` long:
    ``(first page, page count, buffer page)`` arrays ``[R]``."""
    P = pages_P.shape[0]
    idx = np.arange(P)
    seg_start = np.zeros(P, dtype=np.int64)
    if P:
        breaks = np.flatnonzero(np.diff(pages_P) != 1) + 1
        seg_start[breaks] = breaks
        seg_start = np.maximum.accumulate(seg_start)  # index where each page's adjacent stretch starts
    at_R = np.flatnonzero((idx - seg_start) % MAX_RUN_PAGES == 0)
    count_R = np.diff(np.append(at_R, P))
    return pages_P[at_R].astype(np.int64), count_R.astype(np.int64), at_R.astype(np.int64)


# libc's pread(fd, buf, count, offset), called from compiled code. The buffer address travels as
# a uint64 (a pointer is a 64-bit integer register in the x86-64 and AArch64 C ABIs); an external
# symbol, not a ctypes pointer, so the function caches like the hashing kernel.
_libc_pread = numba.types.ExternalFunction(
    "pread", numba.types.int64(numba.types.int32, numba.types.uint64, numba.types.uint64, numba.types.int64))


@numba.njit(cache=True, nogil=True)
def _pread_runs(fd, base, file_off_R, nbytes_R, buf_off_R, want_R):
    """``pread`` every run into ``base + buf_off``; the index of the first read shorter than
    ``want`` (an error, an interrupt or a short read), or -1 when all are whole."""
    for i in range(file_off_R.shape[0]):
        got = _libc_pread(np.int32(fd), base + np.uint64(buf_off_R[i]), np.uint64(nbytes_R[i]), file_off_R[i])
        if got < want_R[i]:
            return i
    return -1


def _preadv(fd: int, dst: memoryview, offset: int) -> int:
    if hasattr(os, "preadv"):
        return os.preadv(fd, [dst], offset)
    data = os.pread(fd, len(dst), offset)
    dst[: len(data)] = data
    return len(data)


def _open_for_reads(path: Path) -> tuple[int, str, str]:
    """``(fd, "direct" | "buffered", why buffered)``: ``O_DIRECT`` if the OS has it and an aligned
    read of the first page succeeds (filesystems that refuse it fail the open or the read with
    EINVAL), else a plain buffered descriptor."""
    flag = getattr(os, "O_DIRECT", None)
    if flag is None:
        return os.open(path, os.O_RDONLY), "buffered", f"O_DIRECT does not exist on {sys.platform}"
    try:
        fd = os.open(path, os.O_RDONLY | flag)
    except OSError as exc:
        return os.open(path, os.O_RDONLY), "buffered", f"O_DIRECT refused by this filesystem: {exc.strerror}"
    probe = mmap.mmap(-1, PAGE)
    try:
        _preadv(fd, memoryview(probe), 0)
    except OSError as exc:
        os.close(fd)
        return os.open(path, os.O_RDONLY), "buffered", f"O_DIRECT reads refused by this filesystem: {exc.strerror}"
    finally:
        probe.close()
    return fd, "direct", ""
