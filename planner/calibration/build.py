"""From raw measurements to a calibrated :class:`HardwareSpec`: fit every curve, read the
profile's scalars off the curves, record samples, residuals and the fingerprint.

Torch-free: it consumes the JSON-able results of :mod:`planner.calibration.tasks`, so a cached
run can be re-fitted (and tests can feed synthetic samples).

Curves (names as in the profile; docs/calibration.md explains each):

* ``gemm:<dtype>``: square GEMMs, efficiency vs FLOPs; its best sample is the device's peak;
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
from collections import defaultdict

import numpy as np

from planner.calibration.fit import (
    Fit,
    bandwidth_of,
    fit_link,
    fit_linear,
    fit_saturating,
    latency_of,
    relative_residuals,
)
from planner.calibration.tasks import REFERENCE_HASH_TOKENS, REFERENCE_ROW_BYTES
from planner.specs import HardwareSpec
from planner.specs.hardware import CurveFit

TARGET_ERROR = 0.10  # median relative error each curve should reach on its own samples


def curve(name: str, fit: Fit, x, y, x_kind: str, y_kind: str, description: str = "",
          dtype: str | None = None) -> CurveFit:
    x, y = np.asarray(x, float), np.asarray(y, float)
    res = relative_residuals(fit, x, y)
    return CurveFit(name=name, description=description, form=fit.form, x=x_kind, y=y_kind, dtype=dtype,
                    params=fit.params, samples_x=x.tolist(), samples_y=y.tolist(),
                    residuals=res.tolist(), median_abs_rel_error=float(np.median(np.abs(res))))


def fit_all(results: dict, device: str) -> tuple[list[CurveFit], dict[str, float]]:
    """Every curve and the scalars read off them (SI units) from the tasks' raw results."""
    curves, k = [], {}
    peaks = {}
    for name, samples in results.items():
        if name.startswith("gemm:"):
            dtype = name.split(":", 1)[1]
            x = np.array([s["flops"] for s in samples])
            rate = x / np.array([s["seconds"] for s in samples])
            peaks[dtype] = float(rate.max())
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
    groups = defaultdict(list)
    for s in results.get("gather", []) + results.get("gather_threads", []):
        groups[(s["source"], s["row_bytes"], s["threads"])].append(s)
    for (source, width, threads), samples in sorted(groups.items()):
        x = np.array([s["rows"] for s in samples], float)
        rate = x * width / np.array([s["seconds"] for s in samples])
        fit = fit_saturating(x, rate)
        name = f"gather:{source}:{width}B:{threads}t"
        curves.append(curve(name, fit, x, rate, "rows", "bytes_per_s",
                            f"{'DenseRows (RAM)' if source == 'ram' else 'DiskRows (mapped file, warm)'}.gather of "
                            f"random {width} B rows into staging, {threads} thread(s)"))
        if source == "ram" and width == REFERENCE_ROW_BYTES and threads == 1:
            k["gather_bytes_per_s_per_core"] = float(fit(x.max()))
    if "lookup" in results:
        lk = results["lookup"]
        x, t = np.array([s["rows"] for s in lk], float), np.array([s["seconds"] for s in lk])
        curves.append(curve("lookup:overhead", fit_linear(x, t), x, t, "rows", "seconds",
                            "LayerStore.lookup minus the gather of its rows (plan, de-duplication, "
                            "assembly), CPU path, one thread: fixed + per-row seconds of one lookup"))
    h = results["hash"]
    x = np.array([s["tokens"] for s in h], float)
    rate = x / np.array([s["seconds"] for s in h])
    fit = fit_saturating(x, rate)
    curves.append(curve("hash:tokens", fit, x, rate, "tokens", "tokens_per_s",
                        f"NgramHasher.row_ids on one core, {h[0]['indices_per_token']} indices per token"))
    k["hash_tokens_per_s_per_core"] = float(fit(REFERENCE_HASH_TOKENS))
    k["hash_indices_per_token"] = float(h[0]["indices_per_token"])
    k["launch_s"] = float(results["launch"])
    curves += _op_curves(results, peaks, k["device_memory_bytes_per_s"])
    st = results["step"]
    x, t = np.array([s["layers"] for s in st], float), np.array([s["seconds"] for s in st])
    fit = fit_linear(x, t)
    curves.append(curve("step:layers", fit, x, t, "layers", "seconds",
                        "whole decode step of tiny-gqa (batch 1) cut to L layers: per-step + per-layer cost"))
    k["per_step_overhead_s"], k["per_layer_overhead_s"] = fit.params["intercept"], fit.params["slope"]
    return curves, k


def _op_curves(results: dict, peaks: dict[str, float], memory_bw: float) -> list[CurveFit]:
    groups = defaultdict(list)
    for name, samples in results.items():
        if name.startswith("ops:"):
            for s in samples:
                groups[(s["kind"], s["dtype"])].append(s)
    out = []
    for (kind, dtype), samples in sorted(groups.items()):
        t = np.array([s["seconds"] for s in samples])
        models = sorted({s["model"] for s in samples})
        if kind.startswith("embed"):  # no FLOPs: efficiency of its bytes against the memory bandwidth
            x = np.array([s["bytes"] for s in samples])
            eff, axis, what = x / (memory_bw * t), "bytes", "bytes"
        else:
            x = np.array([s["flops"] for s in samples])
            eff, axis, what = x / (peaks.get(dtype, max(peaks.values())) * t), "flops", "FLOPs"
        out.append(curve(f"op:{kind}:{dtype}", fit_saturating(x, eff), x, eff, axis, "efficiency",
                         f"reference-model {kind} spans ({', '.join(models)}; {len(samples)} shapes): "
                         f"cost-model {what} / (peak x measured time)", dtype))
    return out


def build_profile(results: dict, base: HardwareSpec, fingerprint: dict, *, device: str, quick: bool,
                  wall_s: float, name: str | None = None, native: set[str] | None = None) -> HardwareSpec:
    """The calibrated profile: ``base`` (a preset) with every measured number replaced, its
    ``efficiency`` set to what the curves say for large work, and the calibration section.
    ``native``: dtypes the device computes in hardware (default: ``tasks.native_dtypes``); a
    GEMM-measured dtype outside it is listed in ``calibration.emulated_dtypes``."""
    from planner.calibration.tasks import HASH_MODEL, native_dtypes

    curves, k = fit_all(results, device)
    native = native_dtypes(device) if native is None else native
    emulated = sorted(dt for dt in ("fp32", "bf16", "fp16") if f"peak_flops_{dt}" in k and dt not in native)
    gather_threads = sorted({s["threads"] for s in results.get("gather", []) + results.get("gather_threads", [])})
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
        dev.update(name=gpu)
        link.update(h2d_bandwidth=k["link_h2d_pinned_bytes_per_s"], d2h_bandwidth=k["link_d2h_pinned_bytes_per_s"],
                    latency=k["link_h2d_pinned_latency_s"], pageable_h2d_bandwidth=k["link_h2d_pageable_bytes_per_s"])
        if "uva_read_bytes_per_s" in k:
            link["uva_read_bandwidth"] = k["uva_read_bytes_per_s"]
    host.update(cpu=cpu, cores=os.cpu_count() or host["cores"], memory=_ram_bytes() or host["memory"],
                memory_bandwidth=2 * k["dram_copy_bytes_per_s"],
                gather_bandwidth_per_core=k["gather_bytes_per_s_per_core"],
                hash_tokens_per_s_per_core=k["hash_tokens_per_s_per_core"])
    data.update(
        name=name or f"calibrated {device}: {cpu}" + (f" + {fingerprint.get('gpu')}" if device == "cuda" else ""),
        description=f"Measured by `engram-planner calibrate{' --quick' if quick else ''}` on {cpu}"
                    + (f" with {fingerprint.get('gpu')}" if device == "cuda" else "")
                    + f", {fingerprint['cpu_count']} logical CPUs, torch {fingerprint['torch']}, "
                    f"{fingerprint['threads']} threads, {fingerprint['date']}",
        source="calibrated", link=link,
        efficiency={"matmul": 1.0, "memory": 1.0, "link": 1.0, "host_memory": 0.5},
        sources=_sources(fingerprint, base, k, quick, HASH_MODEL)
        + _emulated_sources(emulated, k) + _gather_sources(gather_threads, fingerprint, base),
        calibration={"device": device, "quick": quick, "wall_s": wall_s, "fingerprint": _fp(fingerprint),
                     "curves": [c.model_dump(mode="json", exclude_none=True) for c in curves], "constants": k,
                     "notes": _notes(), "emulated_dtypes": emulated},
    )
    return HardwareSpec.model_validate(data)


def _fp(fingerprint: dict) -> dict:
    keys = ("cpu", "cpu_count", "threads", "torch", "cuda", "gpu", "driver", "python", "platform",
            "package_version", "date")
    return {key: fingerprint.get(key) for key in keys if fingerprint.get(key) is not None}


def _sources(fp: dict, base: HardwareSpec, k: dict, quick: bool, hash_model: str) -> list[str]:
    return [
        f"engram-planner {fp['package_version']} calibrate{' --quick' if quick else ''} on {fp['cpu']}"
        + (f" / {fp['gpu']} (driver {fp.get('driver')}, CUDA {fp.get('cuda')})" if fp.get("gpu") else "")
        + f", torch {fp['torch']}, {fp['threads']} threads, {fp['date']}",
        "device.flops: best measured square GEMM per dtype (not a datasheet figure)",
        "device.memory_bandwidth, host.memory_bandwidth: 2 x the measured stream-copy rate (read + write); "
        "efficiency.host_memory 0.5 leaves the copy rate itself for row traffic",
        "link: latency + bytes / bandwidth fitted to measured copies (a host memcpy on a CPU device); "
        "bandwidth = the largest copies' rate; a two_regime link curve gives the rate below its breakpoint "
        "(the cost model evaluates the curve)",
        f"host.gather_bandwidth_per_core: DenseRows.gather, one thread, {REFERENCE_ROW_BYTES} B rows, largest batch",
        f"host.hash_tokens_per_s_per_core: NgramHasher.row_ids on {hash_model} ({k['hash_indices_per_token']:.0f} "
        f"indices a token), one thread, {REFERENCE_HASH_TOKENS} tokens a call",
        "device.kernel_launch_overhead: one tiny op's dispatch; ops with an op:<kind> curve include their own fixed costs",
        f"unmeasured fields (sockets, NUMA, NVMe, network, prices) from preset {base.name!r}",
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
        "op curves: efficiency = cost-model FLOPs / (device peak x measured span time); the cost model "
        "uses them in place of efficiency.matmul and the per-kernel launch term for those op kinds",
        "the cost model's head counts one logit row per sequence: head curves are fitted on decode steps only",
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
