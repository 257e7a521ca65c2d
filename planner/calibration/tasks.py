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

from planner.specs import ModelSpec

DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "engram-planner" / "calibration"
# Row width the scalar ``host.gather_bandwidth_per_core`` is read at: engram-27b's 160 B rows
# (d_head 80 in bf16). The whole curve per width stays in the profile.
REFERENCE_ROW_BYTES = 160
# Call size the scalar ``host.hash_tokens_per_s_per_core`` is read at (one large step).
REFERENCE_HASH_TOKENS = 4096
HASH_MODEL = "engram-27b"
# Bumped whenever what a measurement does changes, so cached results of older code are not reused.
MEASURE_VERSION = 11  # 11: malloc keeps freed memory in timed runs; 10: engine spans averaged over the step's quiet repetitions (9: frozen heap, a cached run)
# Fingerprint fields that change measurements (the date does not).
_KEY_FIELDS = ("cpu", "cpu_count", "threads", "torch", "cuda", "gpu", "driver", "package_version")


class CorruptCacheWarning(UserWarning):
    """A cached raw measurement could not be read: it is measured again and overwritten."""


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
            kwargs["spec"] = ModelSpec.model_validate(kwargs["spec"])
        return getattr(module, self.function)(**kwargs)


def thp_available() -> bool:
    """Whether transparent huge pages can be asked for here (``madvise`` or ``always``)."""
    try:
        text = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    return "[never]" not in text


def _free_bytes() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return 0.0


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


def plan(device: str, quick: bool, engine_cores: int = 1, disk_dir: str | None = None,
         disk: bool = True) -> list[Task]:
    """The measurements of one run, cheapest first. ``quick``: fewer sizes and repeats (under
    3 minutes on a 2-core machine); full: more sizes, both dtypes and larger model variants.
    ``engine_cores``: cores the serving engine occupies (``host.engine_cores``), which bounds the
    gather thread counts (:func:`gather_thread_counts`). ``disk_dir``: the directory whose drive
    the disk tier is measured on (None: the system temp dir); ``disk`` False skips it."""

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
    # Random-row gathers from host tables inside the LLC up to a large share of RAM (quick:
    # 512 MiB; full: 4 GiB, at most a quarter of the free memory), 4 KiB and 2 MiB pages.
    mib = 1 << 20
    sizes = [8 * mib, 32 * mib, 128 * mib, 512 * mib]
    if not quick:
        sizes += [s for s in (2048 * mib, 4096 * mib) if s <= _free_bytes() / 4]
    tasks.append(Task("gather_tables", "measure_table_gathers", {
        "table_sizes": sizes, "widths": [64, 256, 1024], "rows": 4096, "repeats": reps,
        "huge_pages": [False, True] if thp_available() else [False],
        "threads": [1] + gather_thread_counts(quick, engine_cores)}))
    if disk:
        # The drive, read pre-staged (pread) and in the forward (mmap faults): nvme.*.
        mb = 1 << 20
        tasks.append(Task("disk", "measure_disk", {
            "dir": disk_dir, "file_bytes": (64 if quick else 512) * mb, "reads": 1024 if quick else 4096,
            "depths": [8, 32] if quick else [8, 32, 128], "seq_bytes": (32 if quick else 256) * mb,
            "repeats": 3}, module="measure_disk"))
    tasks.append(Task("hash", "measure_hash", {"model": HASH_MODEL, "tokens_list": [64, 512, 4096, 32768],
                                              "repeats": reps}))
    # The reference model's ops, hashing, lookups and per-step engine cost, timed inside the
    # engine's own loop (measure_engine): backbones 1x-8x the tiny models' widths, so the
    # planner's questions fall between the shapes, not beyond them.
    tasks.append(Task("engine", "measure_engine", {"runs": engine_runs(device, quick), "repeats": 9,
                                                   "device": device, "peak_sizes": gemm["fp32"][-2:]},
                      module="measure_engine"))
    return tasks


# Engram geometry of every calibration run: orders 2-3 x 4 heads, 48-float rows (192 B in fp32),
# 40,000 rows a head (8 tables x 40,000 x 192 B = 61 MB a layer, twice the CI VM's LLC).
CALIBRATION_ENGRAM = {"max_ngram": 3, "n_heads": 4, "table_size_per_head": [40_000, 40_000],
                      "embed_dim_per_ngram": 192, "dtype": "fp32"}


def scaled_variant(spec: ModelSpec, factor: int, dtype: str | None = None) -> ModelSpec:
    """``spec`` with every width multiplied by ``factor`` (heads, latents, FFN, experts, Engram
    rows), the same layer layout: the same ops at larger sizes."""
    data = spec.model_dump()
    data["name"] = f"{spec.name} x{factor}" + (f" {dtype}" if dtype else "")
    data["d_model"] *= factor
    data["max_seq_len"] = max(data["max_seq_len"], 1024)
    att = data["attention"]
    for key in ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "v_head_dim", "head_dim"):
        if att.get(key):
            att[key] *= factor
    data["ffn"]["dense_width"] *= factor
    if data["ffn"].get("moe"):
        data["ffn"]["moe"]["expert_width"] *= factor
    if data.get("engram"):
        data["engram"]["embed_dim_per_ngram"] *= factor
    if dtype:
        data["dtype"] = dtype
    return ModelSpec.model_validate(data)



def engine_spec(base: str, factor: int, n_layers: int, engram_layers: tuple[int, ...], dtype: str,
                ffn_ratio: float | None = None):
    """A calibration backbone: bundled ``base`` with every width times ``factor``
    (:func:`scaled_variant`), ``n_layers`` blocks, the calibration Engram geometry at
    ``engram_layers``, computing in ``dtype``; ``ffn_ratio``: a dense FFN that many times
    ``d_model`` wide (multiples of 16) instead of the base's ratio, so the fits see FFN bytes
    vary apart from the width."""
    from planner.loading import load_model

    data = scaled_variant(load_model(base), factor, dtype).model_dump()
    data["name"] = f"{data['name'].split(' ')[0]} x{factor} L{n_layers} E{','.join(map(str, engram_layers))}"
    if ffn_ratio is not None:
        data["ffn"]["dense_width"] = int(round(ffn_ratio * data["d_model"] / 16)) * 16
        data["name"] += f" F{data['ffn']['dense_width']}"
    data["n_layers"] = n_layers
    data["max_seq_len"] = 512
    data["engram"].update(CALIBRATION_ENGRAM, layer_ids=list(engram_layers))
    if data["ffn"].get("moe"):
        data["ffn"]["moe"]["n_leading_dense_layers"] = 1
    return ModelSpec.model_validate(data)


def engine_runs(device: str, quick: bool) -> list[dict]:
    """The engine runs of a calibration (:mod:`planner.calibration.measure_engine`): each a
    backbone, a batch, a prompt and an output length. They span widths 64-512, decode batches
    2-16 (full: 1-32), prefill steps of 128-288 tokens and contexts up to 300, in the native
    dtype of the device (bf16 on CUDA, fp32 on a CPU), tables in host RAM (one run on the device
    tier: the baseline's in-layer gather; one with a static hot-row cache of 5% of the rows: the
    cache's own lookup work, ``lookup:cache``); the validation grid's backbones differ from all
    of them (``tests/test_validation.py``)."""
    dtype = "bf16" if device == "cuda" else "fp32"
    gqa, mla = "tiny-gqa", "tiny"
    plan = [  # (base, width factor, layers, Engram layers, batch, prompt, output[, tier[, FFN ratio[, cache]]])
        (gqa, 2, 4, (1,), 16, 16, 8),
        (gqa, 4, 4, (1,), 4, 64, 8),
        (gqa, 4, 4, (1,), 12, 24, 8),
        (gqa, 4, 4, (1,), 8, 40, 8, "host", 3.0),
        (gqa, 4, 4, (1,), 6, 40, 8, "device"),  # the baseline's in-layer gather
        (gqa, 4, 4, (1,), 10, 32, 8, "host", None, CALIBRATION_CACHE_FRACTION),
        (gqa, 6, 5, (1, 3), 2, 144, 6),
        (gqa, 6, 4, (1,), 6, 32, 6, "host", 3.0),
        (gqa, 8, 4, (2,), 6, 40, 6),
        (mla, 1, 4, (1, 2), 8, 24, 6),
        (mla, 2, 4, (1, 2), 4, 32, 6),
    ]
    if not quick:
        plan += [
            (gqa, 1, 4, (1,), 8, 32, 8),
            (gqa, 3, 6, (2,), 1, 200, 8),
            (gqa, 4, 4, (0, 2), 32, 8, 6),
            (gqa, 5, 4, (1,), 3, 96, 8),
            (gqa, 8, 4, (1,), 2, 300, 6),
            (gqa, 8, 4, (1,), 16, 24, 6, "device"),
            (mla, 3, 4, (1, 2), 6, 48, 6),
            (mla, 4, 4, (1, 2), 2, 128, 6),
        ]
    runs = []
    for base, factor, layers, engram, batch, prompt, output, *rest in plan:
        tier, ratio, cache = (list(rest) + ["host", None, 0.0][len(rest):])[:3]
        spec = engine_spec(base, factor, layers, engram, dtype, ratio)
        run = {"name": f"{spec.name} B{batch} P{prompt}" + ("" if tier == "host" else f" {tier}")
               + (f" cache{100 * cache:g}%" if cache else ""),
               "spec": spec.model_dump(mode="json"), "batch": batch, "prompt_len": prompt,
               "output_len": output, "tier": tier}
        if cache:
            run["cache_fraction"] = cache
        runs.append(run)
    return runs


# The cached engine run's static hot-row cache: its rows' share of each table (the validation
# grid's cached runs hold 1% and 10%).
CALIBRATION_CACHE_FRACTION = 0.05


ANCHORS = ("Tiny-GQA x4 L4 E1 B12 P24", "Tiny-GQA x4 L4 E1 B4 P64", "Tiny-GQA x4 L4 E1 F768 B8 P40",
           "Tiny-GQA x6 L5 E1,3 B2 P144")


def anchor_runs(device: str) -> list[dict]:
    """Four engine runs of every calibration (quick and full) that ``validate`` replays,
    interleaved with its grid, to measure the machine's drift since calibration: three
    decode-heavy runs of the 256-wide backbone (batches 4, 8 and 12, like most of the grid) and
    the prefill-heavy 384-wide one (batch 2, a 144-token prompt). The machine does not slow
    every op alike (memory-bound decode steps more than compute-bound prefills under a busy
    neighbour), so the anchors sample both."""
    runs = {r["name"]: r for r in engine_runs(device, quick=True)}
    return [runs[name] for name in ANCHORS]


def run_task(task: Task, fingerprint: dict, cache_dir: Path | None, workdir: Path) -> tuple[object, bool]:
    """``(result, from_cache)``; ``cache_dir`` None disables the cache."""
    path = cache_dir / f"{task.key(fingerprint)}.json" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return json.loads(path.read_text())["result"], True
        except (OSError, ValueError, KeyError, TypeError) as exc:
            import warnings

            warnings.warn(f"{path}: damaged calibration cache entry for {task.name} ({type(exc).__name__}: "
                          f"{str(exc)[:80]}); measuring it again", CorruptCacheWarning, stacklevel=2)
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

    from reference_model.engine import llc_bytes

    fp = {"cpu": _cpu_model(), "cpu_count": os.cpu_count() or 1, "threads": torch.get_num_threads(),
          "llc_bytes": llc_bytes(),
          "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
          "package_version": _package_version(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
          "machine": machine_identity()}
    if device == "cuda" and torch.cuda.is_available():
        fp["gpu"] = torch.cuda.get_device_name(0)
        fp["gpu_count"] = torch.cuda.device_count()
        fp["cuda"] = torch.version.cuda
        fp["driver"] = _nvidia_driver()
    return fp


def machine_identity() -> str | None:
    """This machine and boot: a short hash of ``/etc/machine-id`` and the kernel's boot id
    (a fresh VM of the same image gets a new boot id). None where neither can be read."""
    parts = []
    for path in ("/etc/machine-id", "/proc/sys/kernel/random/boot_id"):
        try:
            parts.append(Path(path).read_text().strip())
        except OSError:
            pass
    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:16] if parts else None


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
