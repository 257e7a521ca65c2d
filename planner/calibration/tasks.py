"""The calibration plan: which measurements a ``--quick`` or full run takes, each a :class:`Task`
whose raw result is cached under a hash of its inputs (the task, its arguments, the machine and
software fingerprint, the package version), so a re-fit or an interrupted run re-measures
nothing that is still valid (vidur caches its profiled predictors the same way).

Torch is imported only when a task runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "engram-planner" / "calibration"
# Row width the scalar ``host.gather_bandwidth_per_core`` is read at: engram-27b's 160 B rows
# (d_head 80 in bf16). The whole curve per width stays in the profile.
REFERENCE_ROW_BYTES = 160
# Call size the scalar ``host.hash_tokens_per_s_per_core`` is read at (one large step).
REFERENCE_HASH_TOKENS = 4096
HASH_MODEL = "engram-27b"
# Bumped whenever what a measurement does changes, so cached results of older code are not reused.
MEASURE_VERSION = 4
# Fingerprint fields that change measurements (the date does not).
_KEY_FIELDS = ("cpu", "cpu_count", "threads", "torch", "cuda", "gpu", "driver", "package_version")


@dataclass(frozen=True)
class Task:
    """One measurement: ``module.function(**kwargs)`` returning JSON-able values."""

    name: str
    function: str
    kwargs: dict = field(default_factory=dict)
    module: str = "measure"

    def key(self, fingerprint: dict) -> str:
        ident = {"task": self.name, "version": MEASURE_VERSION, "module": self.module, "function": self.function,
                 "kwargs": self.kwargs, **{k: fingerprint.get(k) for k in _KEY_FIELDS}}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def run(self, workdir: Path):
        import importlib

        module = importlib.import_module(f"planner.calibration.{self.module}")
        kwargs = dict(self.kwargs)
        if "spec" in kwargs:
            from planner.specs import ModelSpec

            kwargs["spec"] = ModelSpec.model_validate(kwargs["spec"])
        if self.function == "measure_gathers":
            kwargs["workdir"] = str(workdir)
        return getattr(module, self.function)(**kwargs)


def native_dtypes(device: str) -> set[str]:
    """Dtypes the device computes in hardware: all on CUDA; fp32 on a CPU, plus bf16 when
    ``/proc/cpuinfo`` lists ``avx512_bf16`` or ``amx_bf16`` (without them torch emulates bf16
    GEMMs in software, tens of times slower, and few-row and many-row GEMMs slow down unequally,
    so bf16 op spans fit no one efficiency curve)."""
    if device == "cuda":
        return {"fp32", "bf16", "fp16"}
    try:
        flags = {word for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("flags") for word in line.split(":", 1)[1].split()}
    except OSError:
        flags = set()
    return {"fp32"} | ({"bf16"} if flags & {"avx512_bf16", "amx_bf16"} else set())


def gather_thread_counts(quick: bool, engine_cores: int = 1) -> list[int]:
    """Thread counts (besides 1) the gathers are measured with: at most the cores the serving
    engine leaves free (``os.cpu_count() - engine_cores``, at least 1; the engine's own thread
    takes the rest, and a gather thread on its core measures the collision, not the gather)."""
    free = max(1, (os.cpu_count() or 1) - engine_cores)
    return sorted(n for n in ({2, free} if quick else {2, 4, free}) if 2 <= n <= free)


def plan(device: str, quick: bool, engine_cores: int = 1) -> list[Task]:
    """The measurements of one run, cheapest first. ``quick``: fewer sizes and repeats (under
    3 minutes on a 2-core machine); full: more sizes, both dtypes and larger model variants.
    ``engine_cores``: cores the serving engine occupies (``host.engine_cores``), which bounds the
    gather thread counts (:func:`gather_thread_counts`)."""
    from planner.calibration.measure_ops import scaled_variant, with_dtype
    from planner.loading import load_model

    reps = 15 if quick else 21
    tasks = [Task("launch", "measure_launch", {"device": device, "repeats": reps})]
    gemm = {"fp32": [32, 64, 128, 256, 512, 1024] + ([] if quick else [1536, 2048]),
            "bf16": [32, 64, 128, 256, 512] + ([] if quick else [1024])}
    if device == "cuda":
        gemm = {dt: [256, 512, 1024, 2048, 4096, 8192] for dt in ("bf16", "fp32")}
    for dtype, sizes in gemm.items():
        tasks.append(Task(f"gemm:{dtype}", "measure_gemm", {"sizes": sizes, "dtype": dtype, "device": device, "repeats": reps}))
    for dtype in gemm:  # few-row GEMMs: the efficiency ceiling of a decode step's matmuls
        tasks.append(Task(f"gemm_rows:{dtype}", "measure_gemm_rows", {
            "rows_list": [1, 2, 4, 8, 16, 32, 64, 128, 256], "n": 4096 if device == "cuda" else 1024,
            "dtype": dtype, "device": device, "repeats": reps}))
    mb = 1 << 20
    tasks.append(Task("dram", "measure_copy", {"sizes": [s * mb for s in ([16, 64, 128] if quick else [16, 32, 64, 128, 256])], "repeats": reps}))
    if device == "cuda":
        tasks.append(Task("device_memory", "measure_copy", {"sizes": [s * mb for s in (64, 256, 1024)], "repeats": reps, "device": "cuda"}))
    link_sizes = [4096 * 4**i for i in range(8 if quick else 10)]  # 4 KiB .. 64 MiB (1 GiB)
    tasks.append(Task("link", "measure_link", {"sizes": link_sizes, "repeats": reps, "device": device}))
    if device == "cuda":
        tasks.append(Task("uva", "measure_uva", {"row_bytes": 256, "rows_list": [1000, 10_000, 100_000, 1_000_000],
                                                 "table_bytes": 1 << 30, "repeats": reps}))
    widths = [64, REFERENCE_ROW_BYTES, 1024, 4096]
    rows = [64, 256, 1024, 4096, 16384, 65536]
    table = (128 if quick else 512) * mb
    tasks.append(Task("gather", "measure_gathers", {"sources": ["ram", "mmap"], "widths": widths, "rows_list": rows,
                                                   "threads": [1], "table_bytes": table, "repeats": reps}))
    tasks.append(Task("lookup", "measure_lookup_overhead", {"rows_list": [32, 256, 2048, 16384],
                                                          "row_bytes": REFERENCE_ROW_BYTES,
                                                          "table_rows": table // REFERENCE_ROW_BYTES, "repeats": reps}))
    threads = gather_thread_counts(quick, engine_cores)
    if threads:
        tasks.append(Task("gather_threads", "measure_gathers", {
            "sources": ["ram"], "widths": [REFERENCE_ROW_BYTES], "rows_list": rows,
            "threads": threads, "table_bytes": table, "repeats": reps}))
    tasks.append(Task("hash", "measure_hash", {"model": HASH_MODEL, "tokens_list": [64, 512, 4096, 32768],
                                              "repeats": reps}))
    # The reference model's ops: the two tiny test models as shipped (MLA + MoE + HC in bf16,
    # GQA dense in fp32); the full run adds the other dtype and 4x and 8x wider variants. Only
    # dtypes the device computes natively: an emulated one (bf16 on most CPUs) is measured as
    # fp32 and priced from the fp32 curves and the two GEMM peaks (CalibratedEfficiency).
    native = native_dtypes(device)
    shipped = load_model("tiny"), load_model("tiny-gqa")
    tiny, gqa = (s if s.dtype in native else with_dtype(s, "fp32") for s in shipped)
    specs = [tiny, gqa]
    prefill = [8, 32, 128] if quick else [4, 16, 64, 256, 512]
    decode = [(1, 16), (4, 64), (16, 128)] if quick else [(1, 32), (4, 128), (16, 256), (64, 512)]
    if not quick:
        specs += [with_dtype(s, dt) for s in (tiny, gqa) for dt in ("fp32", "bf16") if dt in native and dt != s.dtype]
        wide = [(f, dt) for f in (4, 8) for dt in ("fp32", "bf16") if dt in native]
        specs += [scaled_variant(s, f, dt) for s in shipped for f, dt in wide]
    shapes = [("prefill", 1, t) for t in prefill] + [("decode", b, c) for b, c in decode]
    for spec in specs:
        tasks.append(Task(f"ops:{spec.name}", "measure_model_ops", {
            "spec": spec.model_dump(mode="json"), "shapes": shapes, "repeats": reps, "device": device},
            module="measure_ops"))
    tasks.append(Task("step", "measure_step_overhead", {
        "spec": gqa.model_dump(mode="json"), "layers_list": [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16],
        "repeats": 2 * reps, "device": device}, module="measure_ops"))
    return tasks


def run_task(task: Task, fingerprint: dict, cache_dir: Path | None, workdir: Path) -> tuple[object, bool]:
    """``(result, from_cache)``; ``cache_dir`` None disables the cache."""
    path = cache_dir / f"{task.key(fingerprint)}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())["result"], True
        except (OSError, ValueError, KeyError):
            pass
    result = task.run(workdir)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        record = {"task": task.name, "function": task.function, "kwargs": task.kwargs,
                  "fingerprint": fingerprint, "result": result}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
    return result, False


def measure_fingerprint(device: str) -> dict:
    """The machine and software a run measures (torch imported here)."""
    import torch

    from planner.bench import _cpu_model

    fp = {"cpu": _cpu_model(), "cpu_count": os.cpu_count() or 1, "threads": torch.get_num_threads(),
          "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
          "package_version": _package_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if device == "cuda" and torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name(0)
        fp["cuda"] = torch.version.cuda
        fp["driver"] = _nvidia_driver()
    return fp


def _package_version() -> str:
    try:
        return metadata.version("engram-planner")
    except metadata.PackageNotFoundError:
        return "unknown"


def _nvidia_driver() -> str | None:
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        if word[:1].isdigit() and word.count(".") >= 1:
            return word
    return None
