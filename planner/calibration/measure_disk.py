"""Calibration of the disk tier: the drive under a directory, read the two ways the reference
model's :class:`reference_model.store_disk.DiskRows` reads a table (docs/calibration.md):

* **pre-staged** (``read: pread``): one-page reads at 1 and at several reads in flight
  (``O_DIRECT`` where the filesystem allows it, else buffered with the file's cached pages
  dropped first), giving ``nvme.read_latency`` and ``nvme.read_iops``;
* **in the forward** (``read: mmap``): cold page faults of the mapped file, one at a time,
  giving ``nvme.fault_latency``;
* sequential 1 MiB reads, giving ``nvme.read_bandwidth``.

Rows are one page wide (4 KiB), so a row is a page, and the reads go through ``DiskRows`` itself:
the same code, threads and copies as the runs they predict. The scratch file is filled with
pseudo-random bytes (a drive or a thin-provisioned volume may skip reading zeros) and removed
afterwards. A directory on a memory filesystem (tmpfs, ramfs) has no drive under it: nothing
is measured, and the result says why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

PAGE = 4096
MEMORY_FILESYSTEMS = {"tmpfs", "ramfs", "devtmpfs", "hugetlbfs"}


def filesystem_of(path: Path) -> str | None:
    """The type of the filesystem ``path`` lives on (longest mount point in /proc/self/mounts),
    None where that cannot be read."""
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return None
    target, best = str(path.resolve()), (None, -1)
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = parts[1].replace("\\040", " ")
        if (target == mount or target.startswith(mount.rstrip("/") + "/")) and len(mount) > best[1]:
            best = (parts[2], len(mount))
    return best[0]


def measure_disk(dir: str | None, file_bytes: int, reads: int, depths: list[int], seq_bytes: int,
                 repeats: int = 3) -> dict:
    """Raw disk-tier samples under ``dir`` (None: the system temp dir): see the module doc.
    Each figure is the best (lowest time) of ``repeats`` cold passes over fresh random pages."""
    import torch

    from reference_model.store_disk import DiskRows

    where = Path(dir or tempfile.gettempdir())
    if not where.is_dir():
        raise ValueError(f"disk calibration directory {where} does not exist")
    fs = filesystem_of(where)
    out: dict = {"dir": str(where), "filesystem": fs, "file_bytes": int(file_bytes)}
    if fs in MEMORY_FILESYSTEMS:
        out["skipped"] = f"{where} is on {fs}, a memory filesystem: no drive to measure (pass --disk-dir on a drive)"
        return out
    free = shutil.disk_usage(where).free
    if free < 2 * file_bytes:
        out["skipped"] = f"{where} has {free / 1e9:.3g} GB free, under twice the {file_bytes / 1e9:.3g} GB scratch file"
        return out
    out["free_bytes"] = float(free)
    pages = file_bytes // PAGE
    rng = np.random.default_rng(0)
    scratch = tempfile.mkdtemp(prefix="engram-disk-calibration-", dir=where)
    try:
        path = Path(scratch) / "table.bin"
        with open(path, "wb") as f:
            for _ in range(0, file_bytes, 1 << 22):
                f.write(rng.bytes(min(1 << 22, file_bytes - f.tell())))
        open_rows = lambda read, depth=1: DiskRows(path, pages, PAGE // 4, torch.float32, read=read, queue_depth=depth)

        def cold_pass(source, n: int) -> float:
            ids = torch.from_numpy(rng.choice(pages, size=n, replace=False).astype(np.int64))
            dst = torch.empty(n, PAGE // 4)
            source.drop_page_cache()
            start = time.perf_counter()
            source.gather(ids, dst)
            return time.perf_counter() - start

        pread = open_rows("pread")
        out["io"], out["io_note"] = pread.io, pread.io_note
        n1 = max(16, reads // 4)
        out["pread_qd1_s_per_read"] = min(cold_pass(pread, n1) for _ in range(repeats)) / n1
        pread.close()
        out["pread_reads_per_s"] = {}
        for depth in depths:
            src = open_rows("pread", depth)
            out["pread_reads_per_s"][str(depth)] = reads / min(cold_pass(src, reads) for _ in range(repeats))
            src.close()
        mapped = open_rows("mmap")
        out["mmap_s_per_fault"] = min(cold_pass(mapped, n1) for _ in range(repeats)) / n1
        del mapped
        out["sequential_bytes_per_s"] = _sequential(path, min(seq_bytes, file_bytes), repeats, pread.io == "direct")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return out


def _sequential(path: Path, nbytes: int, repeats: int, direct: bool) -> float:
    """Bytes/s of 1 MiB reads from the start of the file, cold (O_DIRECT, or cache dropped)."""
    import mmap

    chunk = 1 << 20
    buf = mmap.mmap(-1, chunk)
    view = memoryview(buf)
    times = []
    for _ in range(repeats):
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            if not direct and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            start = time.perf_counter()
            for offset in range(0, nbytes, chunk):
                os.preadv(fd, [view], offset)
            times.append(time.perf_counter() - start)
        finally:
            os.close(fd)
    view.release()
    buf.close()
    return nbytes / min(times)


def fit_disk(raw: dict) -> tuple[dict | None, list[str]]:
    """The profile's ``nvme`` section from :func:`measure_disk`'s samples, and the sources lines
    saying how each field was read; ``(None, [why])`` when nothing was measured."""
    if "skipped" in raw:
        return None, [f"nvme: not measured ({raw['skipped']}); from the base preset"]
    latency = raw["pread_qd1_s_per_read"]
    depth, rate = max(((int(q), r) for q, r in raw["pread_reads_per_s"].items()), key=lambda x: x[1])
    how = "O_DIRECT" if raw["io"] == "direct" else f"buffered, cached pages dropped first ({raw['io_note']})"
    nvme = {"capacity": raw["free_bytes"], "read_bandwidth": raw["sequential_bytes_per_s"], "read_latency": latency,
            "read_iops": rate, "page_size": float(PAGE), "fault_latency": raw["mmap_s_per_fault"]}
    bound = "the drive's bound" if rate < 0.8 * depth / latency else f"a lower bound ({depth} in flight / latency caps it)"
    sources = [
        f"nvme: measured under {raw['dir']} ({raw['filesystem'] or 'unknown filesystem'}, {how}) through "
        f"DiskRows on a {raw['file_bytes'] / 1e6:.0f} MB scratch file of random bytes, cold reads, best of the repeats",
        f"nvme.read_latency: one 4 KiB pread at a time ({latency * 1e6:.1f} us); nvme.read_iops: 4 KiB pread reads "
        f"per second with {depth} in flight, the best of {', '.join(raw['pread_reads_per_s'])} ({bound})",
        f"nvme.fault_latency: a cold page fault of the mapped file, one at a time ({raw['mmap_s_per_fault'] * 1e6:.1f} us)",
        "nvme.read_bandwidth: sequential 1 MiB reads; nvme.capacity: free space of that filesystem",
    ]
    return nvme, sources
