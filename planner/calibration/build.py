"""From raw measurements to a calibrated :class:`HardwareSpec`: fit every curve, read the
profile's scalars off the curves, record samples, residuals and the fingerprint.

Torch-free: it consumes the JSON-able results of :mod:`planner.calibration.tasks`, so a cached
run can be re-fitted (and tests can feed synthetic samples).

Curves (names as in the profile; docs/calibration.md explains each):

* ``gemm:<dtype>``: square GEMMs, efficiency vs FLOPs; its best sample (or the best of the same GEMMs
  timed between the engine runs' repetitions, ``peak_probes``) is the device's peak;
* ``op:<kind>:<dtype>``: the reference model's ops, efficiency vs the cost model's FLOPs for the
  op (bytes for ``embed``), i.e. ``flops / (peak x measured time)``;
* ``dram:copy``: stream-like copy rate vs bytes; ``link:<mode>``: ``latency + bytes / bandwidth``,
  or two bandwidths either side of a fitted size when one line does not fit (``fit.fit_link``);
* ``gather:<source>:<width>B:<threads>t``: gathered bytes/s vs rows per batch;
* ``hash:tokens``: hashed tokens/s on one core vs tokens per call;
* ``step:layers``: a whole decode step's seconds vs layers (linear: per-step + per-layer cost).
"""

from __future__ import annotations

import os

import numpy as np

from planner.calibration.fit import (
    Fit,
    bandwidth_of,
    fit_link,
    fit_saturating,
    latency_of,
    piecewise_params,
    relative_residuals,
)
from planner.calibration.tasks import REFERENCE_HASH_TOKENS, REFERENCE_ROW_BYTES
from planner.specs import HardwareSpec
from planner.specs.hardware import CurveFit

TARGET_ERROR = 0.10  # median relative error each curve should reach on its own samples


def curve(name: str, fit: Fit, x, y, x_kind: str, y_kind: str, description: str = "",
          dtype: str | None = None, aux: dict | None = None, predicted=None) -> CurveFit:
    """A :class:`CurveFit` with its samples and residuals; ``predicted`` (the fit at each sample)
    for forms that are not functions of x alone."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    res = (np.asarray(predicted, float) - y) / y if predicted is not None else relative_residuals(fit, x, y)
    return CurveFit(name=name, description=description, form=fit.form, x=x_kind, y=y_kind, dtype=dtype,
                    params=fit.params, samples_x=x.tolist(), samples_y=y.tolist(),
                    samples_aux={key: np.asarray(v, float).tolist() for key, v in (aux or {}).items()},
                    residuals=res.tolist(), median_abs_rel_error=float(np.median(np.abs(res))))


def fit_all(results: dict, device: str) -> tuple[list[CurveFit], dict[str, float]]:
    """Every curve and the scalars read off them (SI units) from the tasks' raw results."""
    curves, k = [], {}
    peaks = {}
    # The same GEMMs timed between the engine's repetitions: the ceiling as it stood while the ops
    # were timed (a shared VM's speed moves by up to 1.7x over minutes); the higher one is kept.
    probes = (results.get("engine") or {}).get("peak_probes", {})
    for name, samples in results.items():
        if name.startswith("gemm:"):
            dtype = name.split(":", 1)[1]
            x = np.array([s["flops"] for s in samples])
            rate = x / np.array([s["seconds"] for s in samples])
            peaks[dtype] = float(max([rate.max(), *probes.get(dtype, [])]))
            curves.append(curve(name, fit_saturating(x, rate / peaks[dtype]), x, rate / peaks[dtype],
                                "flops", "efficiency", f"square {dtype} GEMMs (n = "
                                f"{min(s['n'] for s in samples)}..{max(s['n'] for s in samples)}) vs the best one",
                                dtype))
            k[f"peak_flops_{dtype}"] = peaks[dtype]
    for name, samples in results.items():
        if name.startswith("gemm_rows:") and peaks.get(name.split(":", 1)[1]):
            dtype = name.split(":", 1)[1]
            x = np.array([s["rows"] for s in samples], float)
            eff = np.array([s["flops"] / s["seconds"] for s in samples]) / peaks[dtype]
            curves.append(curve(name, fit_saturating(x, eff), x, eff, "tokens", "efficiency",
                                f"{dtype} GEMMs of M rows by a {samples[0]['n']}-square weight (distinct weights "
                                "per call) vs the best square GEMM: the ceiling of few-token matmuls", dtype))
    copy = results["dram"]
    x, t = np.array([s["bytes"] for s in copy]), np.array([s["seconds"] for s in copy])
    fit = fit_saturating(x, x / t)
    curves.append(curve("dram:copy", fit, x, x / t, "bytes", "bytes_per_s",
                        "stream-like copy of host buffers: bytes copied per second (each read and written once)"))
    k["dram_copy_bytes_per_s"] = float(fit(x.max()))
    k["device_memory_bytes_per_s"] = 2 * k["dram_copy_bytes_per_s"]
    if "device_memory" in results:
        dm = results["device_memory"]
        x, t = np.array([s["bytes"] for s in dm]), np.array([s["seconds"] for s in dm])
        fit = fit_saturating(x, x / t)
        curves.append(curve("device_memory:copy", fit, x, x / t, "bytes", "bytes_per_s", "device-memory copy"))
        k["device_memory_bytes_per_s"] = 2 * float(fit(x.max()))
    for mode, samples in results["link"].items():
        x, t = np.array([s["bytes"] for s in samples]), np.array([s["seconds"] for s in samples])
        fit = fit_link(x, t, TARGET_ERROR)
        what = ("latency + bytes / bandwidth (p = 1)" if fit.form == "saturating" else
                "latency + bytes / bandwidth, one bandwidth below x_break and another above")
        curves.append(curve(f"link:{mode}", fit, x, x / t, "bytes", "bytes_per_s", f"{mode} copies: {what}"))
        # The profile's scalar: the bandwidth of the largest copies (the curve keeps the rest).
        k[f"link_{mode}_bytes_per_s"] = float(bandwidth_of(fit, x.max()))
        k[f"link_{mode}_latency_s"] = latency_of(fit)
    if "uva" in results:
        u = results["uva"]
        x, t = np.array([s["rows"] for s in u]), np.array([s["seconds"] for s in u])
        rate = np.array([s["bytes"] for s in u]) / t
        fit = fit_saturating(x, rate)
        curves.append(curve("uva:read", fit, x, rate, "rows", "bytes_per_s", "GPU index_select from the pinned table's UVA view"))
        k["uva_read_bytes_per_s"] = float(fit(x.max()))
    curves += _gather_curves(results.get("gather_tables", []), k)
    h = results["hash"]
    x = np.array([s["tokens"] for s in h], float)
    rate = x / np.array([s["seconds"] for s in h])
    fit = fit_saturating(x, rate)
    curves.append(curve("hash:tokens", fit, x, rate, "tokens", "tokens_per_s",
                        f"NgramHasher.row_ids on one core, {h[0]['indices_per_token']} indices per token"))
    k["hash_tokens_per_s_per_core"] = float(fit(REFERENCE_HASH_TOKENS))
    k["hash_indices_per_token"] = float(h[0]["indices_per_token"])
    k["launch_s"] = float(results["launch"])
    if "engine" in results:
        curves += _engine_curves(results["engine"], curves, k, device)
    return curves, k


def _gather_curves(samples: list[dict], k: dict) -> list[CurveFit]:
    """Per page size: a random row's seconds ``latency(table) + row_bytes / bandwidth(table)``
    on one core, both ``piecewise`` in the table's bytes (fitted per table size across the row
    widths); the thread counts' parallel efficiency at the largest table."""
    out = []
    single = [s for s in samples if s["threads"] == 1]
    for huge in sorted({s["huge_pages"] for s in single}):
        tag = "ram+thp" if huge else "ram"
        lat, bw, sizes = [], [], []
        mine = [s for s in single if s["huge_pages"] == huge]
        for size in sorted({round(s["table_bytes"] / (1 << 20)) for s in mine}):
            group = [s for s in mine if round(s["table_bytes"] / (1 << 20)) == size]
            w = np.array([s["row_bytes"] for s in group], float)
            per_row = np.array([s["seconds"] / s["rows"] for s in group])
            slope, intercept = np.polyfit(w, per_row, 1) if len(group) > 1 else (per_row[0] / w[0], 0.0)
            sizes.append(float(np.mean([s["table_bytes"] for s in group])))
            lat.append(max(float(intercept), 0.0))
            bw.append(1.0 / max(float(slope), 1e-13))
        pages = "2 MiB (transparent huge) pages" if huge else "4 KiB pages"
        out.append(curve(f"gather:{tag}:latency", Fit("piecewise", piecewise_params(sizes, lat)), sizes,
                         np.maximum(lat, 1e-12), "table_bytes", "seconds",
                         f"DenseRows.gather of random rows, one thread, {pages}: seconds per row "
                         "independent of its width (cache and TLB misses), vs the table's bytes"))
        out.append(curve(f"gather:{tag}:bandwidth", Fit("piecewise", piecewise_params(sizes, bw)), sizes, bw,
                         "table_bytes", "bytes_per_s", "the same gathers: bytes/s of each row's width beyond "
                         f"its fixed cost, vs the table's bytes ({pages})"))
        if not huge:
            largest = max(sizes)
            per_row = lat[sizes.index(largest)] + REFERENCE_ROW_BYTES / bw[sizes.index(largest)]
            k["gather_bytes_per_s_per_core"] = REFERENCE_ROW_BYTES / per_row
            k["gather_largest_table_bytes"] = largest
    multi = [s for s in samples if s["threads"] > 1]
    if multi:
        ref = next(s for s in single if not s["huge_pages"] and s["table_bytes"] == multi[0]["table_bytes"]
                   and s["row_bytes"] == multi[0]["row_bytes"])
        n = [1.0] + [float(s["threads"]) for s in multi]
        eff = [1.0] + [ref["seconds"] / (s["seconds"] * s["threads"]) for s in multi]
        out.append(curve("gather:ram:threads", Fit("piecewise", piecewise_params(n, eff)), n, eff, "rows",
                         "efficiency", "parallel efficiency of one gather over intra-op threads (time on 1 / "
                         "(time on n x n)), largest table, 4 KiB pages"))
    return out


def _engine_curves(engine: dict, curves: list[CurveFit], k: dict, device: str) -> list[CurveFit]:
    """Op rooflines, the hash call, the lookup overhead and the step overhead from engine-timed
    spans (:mod:`planner.calibration.engine_fit`)."""
    from planner.calibration import engine_fit as ef
    from planner.calibration.fit import roofline_seconds
    from planner.loading import load_hardware
    from planner.specs import ModelSpec

    counting = load_hardware("cpu-workstation")  # work counts only: hardware-free
    specs = {name: ModelSpec.model_validate(data) for name, data in engine["specs"].items()}
    samples = engine["steps"]
    by_name = {c.name: Fit(c.form, dict(c.params)) for c in curves}
    peaks = {dt[len("peak_flops_"):]: v for dt, v in k.items() if dt.startswith("peak_flops_")}
    bandwidth = k["device_memory_bytes_per_s"]

    out, ops = [], {}
    models = sorted({s["model"] for s in samples})
    for dtype in sorted({specs[s["model"]].dtype for s in samples}):
        mine = [s for s in samples if specs[s["model"]].dtype == dtype]
        for (kind, dt), (fit, arr) in ef.fit_ops(mine, specs, counting, peaks, bandwidth).items():
            ops[(kind, dt)] = (fit, arr)
            predicted = roofline_seconds(fit.params, arr[:, 0], arr[:, 1], arr[:, 2],
                                         peaks.get(dt, max(peaks.values())), bandwidth, arr[:, 4])
            out.append(curve(f"op:{kind}:{dt}", fit, arr[:, 0], arr[:, 3], "flops", "seconds",
                             f"reference-model {kind} spans timed in the engine loop ({len(arr)} steps of "
                             f"{len(models)} backbones): fixed + per row + per sequence + max(FLOPs / rate rising "
                             "with rows to its ceiling, bytes / rate)", dt,
                             aux={"bytes": arr[:, 1], "tokens": arr[:, 2], "seqs": arr[:, 4]}, predicted=predicted))
    fit, x, t = ef.fit_hash(samples, specs)
    out.append(curve("hash:call", fit, x, t, "indices", "seconds",
                     "the engine thread's hash span (compress, hash every Engram layer, hand the ids over): "
                     "fixed seconds per call + seconds per index"))
    k["hash_call_s"] = max(fit.params["intercept"], 0.0)
    lat, bw = by_name.get("gather:ram:latency"), by_name.get("gather:ram:bandwidth")
    link = by_name.get("link:h2d_pinned")

    def fetch_s(spec, layer, fetched):
        from planner.accounting import engram_row_bytes, engram_table_bytes

        row = float(engram_row_bytes(spec))
        table = float(engram_table_bytes(spec)[layer])
        seconds = fetched * (max(float(lat(table)), 0.0) + row / float(bw(table))) if lat is not None else 0.0
        if device == "cuda" and link is not None and fetched:
            seconds += k.get("link_h2d_pinned_latency_s", 0.0) + fetched * row / float(bandwidth_of(link, fetched * row))
        return seconds

    x, t = ef.lookup_samples(samples, specs, fetch_s)
    if len(x):
        overhead = ef.fit_positive_linear(x, t)
        out.append(curve("lookup:overhead", overhead, x, np.maximum(t, 1e-7), "rows", "seconds",
                         "each wait_L span of an on-demand lookup less its rows' gather at the table-gather rate: "
                         "plan, de-duplication, assembly (fixed + per requested row)"))
        x, t = ef.lookup_samples(samples, specs, fetch_s, cached=True)
        if len(x):
            t = t - np.maximum(overhead(x), 0.0)
            fit = ef.fit_positive_linear(x, t)
            out.append(curve("lookup:cache", fit, x, np.maximum(t, 1e-7), "rows", "seconds",
                             "each wait_L span of an on-demand lookup with a static hot-row cache less its fetched "
                             "rows' gather and lookup:overhead: the cache's index search, hit/miss split and "
                             "placing the hits (fixed + per requested row)"))

    def ops_s(s, spec):
        return ef.predicted_ops_s(s, spec, counting, ops, peaks, bandwidth)

    x, t = ef.step_residuals(samples, specs, ops_s)
    fit = ef.fit_positive_linear(x, t)
    out.append(curve("step:overhead", fit, x, np.maximum(t, 1e-7), "tokens", "seconds",
                     "engine step span less its ops (as fitted), hash and lookups (as measured), vs the step's "
                     "tokens: the Python between spans and block 0's cold start (intercept), per-token work "
                     "outside the ops (slope)"))
    k["per_step_overhead_s"], k["per_token_overhead_s"] = fit.params["intercept"], fit.params["slope"]
    return out


def build_profile(results: dict, base: HardwareSpec, fingerprint: dict, *, device: str, quick: bool,
                  wall_s: float, name: str | None = None, native: set[str] | None = None,
                  notes: list[str] | None = None) -> HardwareSpec:
    """The calibrated profile: ``base`` (a preset) with every measured number replaced, its
    ``efficiency`` set to what the curves say for large work, and the calibration section.
    ``native``: dtypes the device computes in hardware (default: ``tasks.native_dtypes``); a
    GEMM-measured dtype outside it is listed in ``calibration.emulated_dtypes``."""
    from planner.calibration.tasks import HASH_MODEL, native_dtypes

    curves, k = fit_all(results, device)
    native = native_dtypes(device) if native is None else native
    emulated = sorted(dt for dt in ("fp32", "bf16", "fp16") if f"peak_flops_{dt}" in k and dt not in native)
    gather_threads = sorted({s["threads"] for s in results.get("gather_tables", [])})
    if fingerprint.get("llc_bytes"):
        k["llc_bytes"] = float(fingerprint["llc_bytes"])
    cpu = fingerprint["cpu"]
    data = base.model_dump(mode="json", exclude_none=True)
    data.pop("calibration", None)
    dev, link, host = data["device"], data["link"], data["host"]
    flops = {dt: k[f"peak_flops_{dt}"] for dt in ("fp32", "bf16", "fp16") if f"peak_flops_{dt}" in k}
    dev.update(kind=device, flops=flops, memory_bandwidth=k["device_memory_bytes_per_s"],
               kernel_launch_overhead=k["launch_s"])
    if device == "cpu":
        dev.update(name=f"{cpu} (as compute device)", count=1, copy_engines=1, memory=_ram_bytes() or dev["memory"])
        link = {"kind": "memcpy", "h2d_bandwidth": k["link_memcpy_bytes_per_s"],
                "d2h_bandwidth": k["link_memcpy_bytes_per_s"], "latency": k["link_memcpy_latency_s"]}
    else:
        gpu = fingerprint.get("gpu") or dev["name"]
        # The node as found: as many devices as torch sees (not the --base preset's count);
        # devices sharing an uplink only as the preset says when that still divides the count.
        count = int(fingerprint.get("gpu_count") or 1)
        dev.update(name=gpu, count=count)
        if count % link.get("devices_per_link", 1):
            link["devices_per_link"] = 1
        link.update(h2d_bandwidth=k["link_h2d_pinned_bytes_per_s"], d2h_bandwidth=k["link_d2h_pinned_bytes_per_s"],
                    latency=k["link_h2d_pinned_latency_s"], pageable_h2d_bandwidth=k["link_h2d_pageable_bytes_per_s"])
        if "uva_read_bytes_per_s" in k:
            link["uva_read_bandwidth"] = k["uva_read_bytes_per_s"]
    host.update(cpu=cpu, cores=os.cpu_count() or host["cores"], memory=_ram_bytes() or host["memory"],
                memory_bandwidth=2 * k["dram_copy_bytes_per_s"],
                gather_bandwidth_per_core=k["gather_bytes_per_s_per_core"],
                hash_tokens_per_s_per_core=k["hash_tokens_per_s_per_core"])
    nvme, disk_sources = None, []
    if "disk" in results:
        from planner.calibration.measure_disk import fit_disk

        nvme, disk_sources = fit_disk(results["disk"])
        if nvme is not None:
            data["nvme"] = nvme
    data.update(
        name=name or f"calibrated {device}: {cpu}" + (f" + {fingerprint.get('gpu')}" if device == "cuda" else ""),
        description=f"Measured by `engram-planner calibrate{' --quick' if quick else ''}` on {cpu}"
                    + (f" with {fingerprint.get('gpu')}" if device == "cuda" else "")
                    + f", {fingerprint['cpu_count']} logical CPUs, torch {fingerprint['torch']}, "
                    f"{fingerprint['threads']} threads, {fingerprint['date']}",
        source="calibrated", link=link,
        efficiency={"matmul": 1.0, "memory": 1.0, "link": 1.0, "host_memory": 0.5},
        sources=_sources(fingerprint, base, k, quick, HASH_MODEL, nvme_measured=nvme is not None)
        + _emulated_sources(emulated, k) + _gather_sources(gather_threads, fingerprint, base) + disk_sources,
        calibration={"device": device, "quick": quick, "wall_s": wall_s, "fingerprint": _fp(fingerprint),
                     "curves": [c.model_dump(mode="json", exclude_none=True) for c in curves], "constants": k,
                     "notes": _notes() + list(notes or []), "emulated_dtypes": emulated,
                     "anchors": engine_anchors(results.get("engine"))},
    )
    return HardwareSpec.model_validate(data)


def engine_anchors(engine: dict | None) -> dict[str, float]:
    """Mean step seconds of each engine run (each step over its quiet repetitions): what
    ``validate`` compares a re-measurement with (:func:`planner.validation.run.drift`)."""
    if not engine:
        return {}
    by_run: dict[str, list[float]] = {}
    for s in engine["steps"]:
        by_run.setdefault(s["run"], []).append(s["spans"]["step"])
    return {name: float(np.mean(v)) for name, v in by_run.items()}


def _fp(fingerprint: dict) -> dict:
    keys = ("cpu", "cpu_count", "threads", "torch", "cuda", "gpu", "driver", "python", "platform",
            "package_version", "date", "machine")
    return {key: fingerprint.get(key) for key in keys if fingerprint.get(key) is not None}


def _sources(fp: dict, base: HardwareSpec, k: dict, quick: bool, hash_model: str,
             nvme_measured: bool = False) -> list[str]:
    return [
        f"engram-planner {fp['package_version']} calibrate{' --quick' if quick else ''} on {fp['cpu']}"
        + (f" / {fp['gpu']} (driver {fp.get('driver')}, CUDA {fp.get('cuda')})" if fp.get("gpu") else "")
        + f", torch {fp['torch']}, {fp['threads']} threads, {fp['date']}",
        "device.flops: best measured square GEMM per dtype, in the GEMM task or between the engine runs' repetitions (not a datasheet figure)",
        "device.memory_bandwidth, host.memory_bandwidth: 2 x the measured stream-copy rate (read + write); "
        "efficiency.host_memory 0.5 leaves the copy rate itself for row traffic",
        "link: latency + bytes / bandwidth fitted to measured copies (a host memcpy on a CPU device); "
        "bandwidth = the largest copies' rate; a two_regime link curve gives the rate below its breakpoint "
        "(the cost model evaluates the curve)",
        f"host.gather_bandwidth_per_core: DenseRows.gather, one thread, {REFERENCE_ROW_BYTES} B rows of the largest "
        "table measured, 4 KiB pages (the gather:ram curves give every table size)",
        f"host.hash_tokens_per_s_per_core: NgramHasher.row_ids on {hash_model} ({k['hash_indices_per_token']:.0f} "
        f"indices a token), one thread, {REFERENCE_HASH_TOKENS} tokens a call",
        "device.kernel_launch_overhead: one tiny op's dispatch; ops with an op:<kind> curve carry their own "
        "fixed cost, fitted to engine-timed spans",
        f"unmeasured fields (sockets, NUMA, {'' if nvme_measured else 'NVMe, '}network, prices) from preset "
        f"{base.name!r}",
    ]


def _emulated_sources(emulated: list[str], k: dict) -> list[str]:
    return [f"{dt}: no native {dt} units on this device (GEMM peak {k[f'peak_flops_{dt}'] / 1e9:.3g} vs fp32 "
            f"{k['peak_flops_fp32'] / 1e9:.3g} GFLOP/s): model ops measured in fp32; {dt} op times = the fp32 "
            f"op curves scaled by the measured GEMM ratio ({k['peak_flops_fp32'] / k[f'peak_flops_{dt}']:.3g}x)"
            for dt in emulated if "peak_flops_fp32" in k]


def _gather_sources(threads: list[int], fp: dict, base: HardwareSpec) -> list[str]:
    engine = base.host.engine_cores
    return [f"gathers measured with {', '.join(map(str, threads))} thread(s): at most the cores the serving "
            f"engine leaves free ({fp['cpu_count']} - host.engine_cores {engine}, at least 1)"]


def _notes() -> list[str]:
    return [
        "op curves (roofline): seconds = fixed_s + row_s x rows + seq_s x sequences + max(FLOPs / (flop_fraction x device peak x "
        "rows / (rows + t_half)), bytes / (byte_fraction x device.memory_bandwidth)), fitted to the reference model's spans timed inside the "
        "engine loop (caches evicted before each step, as a deployment's weights evict them)",
        "hash:call, lookup:overhead, lookup:cache, step:overhead: the engine's own host seconds, fitted to the same runs",
        "the engine computes logits for each sequence's last position only (as the cost model's head counts)",
    ]


def _ram_bytes() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None
