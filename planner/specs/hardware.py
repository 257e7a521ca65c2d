"""The hardware spec: one node type (and how many of them) as the simulator sees it.

A preset built from datasheets holds ceilings, not predictions: ``efficiency`` states the
fractions of those ceilings the cost model assumes until a calibration run replaces them with
fitted curves (``source: calibrated``). Every profile cites where its numbers come from.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from planner.specs.base import Spec
from planner.specs.model import DType
from planner.units import Bytes, BytesPerSecond, FlopPerSecond, Seconds

Positive = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(gt=0, le=1)]


class DeviceSpec(Spec):
    """The accelerator that runs the model. ``kind: cuda`` is a GPU driven through torch's cuda
    API (NVIDIA CUDA, or AMD ROCm/HIP), with CUDA graphs; ``metal`` an Apple GPU (MLX/MPS: no CUDA
    graphs, every kernel launched); ``cpu`` means the host CPU itself computes: then the "link" is
    a memory copy and gathers compete with compute for the same cores."""

    name: str
    kind: Literal["cuda", "metal", "cpu"] = "cuda"
    count: Annotated[int, Field(gt=0)] = Field(default=1, description="devices per node")
    flops: dict[DType, Annotated[FlopPerSecond, Field(gt=0)]] = Field(
        description="dense (not 2:4-sparse) peak per dtype"
    )
    memory: Annotated[Bytes, Field(gt=0)]
    memory_bandwidth: Annotated[BytesPerSecond, Field(gt=0)]
    copy_engines: Annotated[int, Field(gt=0)] = Field(
        default=2, description="DMA engines: concurrent host<->device copies (one per direction)"
    )
    interconnect_bandwidth: Annotated[BytesPerSecond, Field(gt=0)] | None = Field(
        default=None, description="device-to-device bandwidth per device and direction (NVLink, Infinity Fabric) for "
        "tensor-parallel collectives; none: peer copies over the host link")
    interconnect_latency: Seconds = Field(default=5e-6, description="fixed cost of one collective step between devices")
    ranks: Annotated[int, Field(gt=0)] = Field(
        default=1, description="devices acting as this one: a tensor-parallel group's view of the hardware "
        "(planner.parallel.engine_view sets it from workload.tensor_parallel_size; presets leave it 1)")
    kernel_launch_overhead: Seconds = Field(default=5e-6, description="fixed cost per kernel launched eagerly")
    graph_kernel_overhead: Seconds = Field(
        default=1e-6, description="fixed cost per kernel replayed in a CUDA graph (CUDA.jl's graph docs: 80 small "
        "kernels take 260 us eager, 70 us as one graph, about 0.9 us each)")

    @model_validator(mode="after")
    def _has_bf16_or_fp32(self) -> "DeviceSpec":
        if not self.flops:
            raise ValueError("flops must list at least one dtype, e.g. {bf16: '989 TFLOP/s'}")
        return self

    def flops_for(self, dtype: str) -> float:
        """Peak dense FLOP/s for ``dtype``, falling back to the nearest wider dtype listed."""
        for candidate in (dtype, "bf16", "fp16", "fp32"):
            if candidate in self.flops:
                return self.flops[candidate]
        return next(iter(self.flops.values()))


class LinkSpec(Spec):
    """The host<->device link (per device, per direction). ``unified``: host and device share one
    physical memory (Apple M-series, DGX Spark's GB10): there is no link to copy over; rows a
    host worker gathers are read by the device in place, and ``host.memory`` is the one pool that
    device allocations and host-tier tables share (``nvlink_c2c`` is a coherent link between two
    memories, GH200/GB200/GB300: rows still cross it)."""

    kind: Literal["pcie3", "pcie4", "pcie5", "pcie6", "nvlink_c2c", "memcpy", "unified"]
    h2d_bandwidth: Annotated[BytesPerSecond, Field(gt=0)] = Field(
        description="host-to-device, pinned source, large transfers"
    )
    d2h_bandwidth: Annotated[BytesPerSecond, Field(gt=0)]
    latency: Seconds = Field(default=10e-6, description="fixed cost of one transfer")
    pageable_h2d_bandwidth: Annotated[BytesPerSecond, Field(gt=0)] | None = Field(
        default=None,
        description="pageable (unpinned) source: staged through a bounce buffer and synchronous",
    )
    uva_read_bandwidth: Annotated[BytesPerSecond, Field(gt=0)] | None = Field(
        default=None,
        description="GPU kernels reading rows straight from mapped pinned host memory",
    )
    devices_per_link: Annotated[int, Field(gt=0)] = Field(
        default=1, description="devices sharing one upstream link (a PCIe switch), 1 = dedicated"
    )


class HostSpec(Spec):
    """The host CPU and its DRAM, shared by all devices of the node."""

    cpu: str
    sockets: Annotated[int, Field(gt=0)] = 1
    cores: Annotated[int, Field(gt=0)] = Field(description="physical cores per node")
    memory: Annotated[Bytes, Field(gt=0)]
    memory_bandwidth: Annotated[BytesPerSecond, Field(gt=0)] = Field(
        description="peak DRAM bandwidth of the whole node"
    )
    gather_bandwidth_per_core: Annotated[BytesPerSecond, Field(gt=0)] = Field(
        default=4e9,
        description="rate one core copies scattered table rows into a staging buffer "
        "(no public figure: an assumption until calibrated)",
    )
    hash_tokens_per_s_per_core: Positive = Field(
        default=2e7, description="n-gram hashing rate of one core, all layers' ids of one token"
    )
    engine_cores: Annotated[int, Field(ge=0)] = Field(
        default=1, description="cores the serving engine's own Python/CPU work occupies per device"
    )
    engine_step_overhead: Seconds = Field(
        default=0.0, description="the serving engine's host seconds per step outside the forward (scheduling, "
        "input preparation, the sampler's sync, output processing), on the critical path of a synchronous engine")
    engine_seq_overhead: Seconds = Field(
        default=0.0, description="the engine's further host seconds per sequence scheduled in a step")
    numa_nodes: Annotated[int, Field(gt=0)] = 1
    remote_numa_factor: Fraction = Field(
        default=1.0, description="fraction of link bandwidth left when the source is on a remote socket"
    )


class NVMeSpec(Spec):
    """Local SSDs for the coldest table rows (the ``disk`` tier)."""

    capacity: Annotated[Bytes, Field(gt=0)]
    read_bandwidth: Annotated[BytesPerSecond, Field(gt=0)]
    read_latency: Seconds = 80e-6
    read_iops: Positive = Field(default=1e6, description="random 4 KiB reads per second")
    page_size: Annotated[Bytes, Field(gt=0)] = Field(default=4096.0, description="smallest read")
    fault_latency: Seconds | None = Field(
        default=None, description="one cold page fault of a memory-mapped file (disk_read: mmap), "
        "read from the drive; None: read_latency")


class NetworkSpec(Spec):
    """Between nodes (tables sharded across nodes are gathered over it)."""

    bandwidth: Annotated[BytesPerSecond, Field(gt=0)] = Field(description="per node, per direction")
    latency: Seconds = 5e-6


class EfficiencySpec(Spec):
    """Fractions of the datasheet ceilings that real kernels reach. Assumptions for presets;
    a calibrated profile fits them from measurements."""

    matmul: Fraction = Field(default=0.6, description="large GEMMs vs dense peak")
    memory: Fraction = Field(default=0.8, description="streaming kernels vs HBM peak")
    link: Fraction = Field(default=0.9, description="large pinned copies vs link rate")
    host_memory: Fraction = Field(default=0.7, description="achievable vs theoretical DRAM bandwidth")


class PriceSpec(Spec):
    """Prices for the planner's cost objective (USD)."""

    device_per_hour: Annotated[float, Field(ge=0)] = Field(description="one device, one hour")
    host_dram_per_gb_hour: Annotated[float, Field(ge=0)] = 0.0
    nvme_per_gb_hour: Annotated[float, Field(ge=0)] = 0.0
    source: str = ""


class CurveFit(Spec):
    """One fitted curve of a calibration run: its form and parameters, the raw samples it was
    fitted to (SI units) and the relative residual of the fit at each sample.

    Forms (``planner.calibration.fit``): ``saturating`` is ``y = y_max / (1 + (x_half / x)^p)``
    (a rate or efficiency that grows with the size of the work and levels off; ``p = 1`` is
    exactly ``time = latency + size / rate`` with ``latency = x_half / y_max``); ``linear`` is
    ``y = intercept + slope * x``; ``two_regime`` is a copy rate ``x / (latency + x / bw)`` whose
    ``bw`` is ``bw_small`` below ``x_break`` bytes and ``bw_large`` from there on;
    ``piecewise`` is linear in ``log x`` between knots ``(x0, y0), (x1, y1), ...`` and flat
    outside them; ``roofline`` is an op's seconds ``fixed_s + row_s x rows + seq_s x sequences +
    max(flops / (flop_fraction x peak x rows / (rows + t_half)), bytes / (byte_fraction x memory
    bandwidth))`` (its samples carry ``bytes``, ``tokens`` and, with ``seq_s``, ``seqs`` in
    ``samples_aux``; ``y`` is then the measured seconds; profiles fitted before ``seq_s`` have
    none (no per-sequence cost), before ``row_s`` and ``t_half`` neither and take the
    ``gemm_rows`` curve as the few-row ceiling).
    """

    name: str
    description: str = ""
    form: Literal["saturating", "linear", "two_regime", "piecewise", "roofline"]
    x: Literal["flops", "bytes", "rows", "tokens", "layers", "table_bytes", "indices", "seconds"] = Field(
        description="what x counts")
    y: Literal["efficiency", "flop_per_s", "bytes_per_s", "tokens_per_s", "seconds"] = Field(
        description="what y measures; efficiency is a fraction of the profile's own peak"
    )
    dtype: DType | None = Field(default=None, description="compute curves: the dtype measured")
    params: dict[str, float] = Field(description="saturating: y_max, x_half, p; linear: intercept, slope; "
                                     "two_regime: latency, bw_small, bw_large, x_break; piecewise: x0, y0, "
                                     "x1, y1, ...; roofline: fixed_s, flop_fraction, byte_fraction[, row_s, t_half[, seq_s]]")
    samples_x: list[float] = Field(min_length=1)
    samples_y: list[float] = Field(min_length=1)
    samples_aux: dict[str, list[float]] = Field(
        default_factory=dict, description="further sample columns a multi-input form needs (roofline: bytes, tokens[, seqs])")
    residuals: list[float] = Field(description="(fitted - measured) / measured, one per sample")
    median_abs_rel_error: Annotated[float, Field(ge=0)]

    @model_validator(mode="after")
    def _consistent(self) -> "CurveFit":
        n = len(self.samples_x)
        if len(self.samples_y) != n or len(self.residuals) != n:
            raise ValueError(
                f"curve {self.name!r}: samples_x, samples_y and residuals must have equal lengths "
                f"(got {n}, {len(self.samples_y)}, {len(self.residuals)})"
            )
        bad = sorted(k for k, v in self.samples_aux.items() if len(v) != n)
        if bad:
            raise ValueError(f"curve {self.name!r}: samples_aux {bad} must have {n} values like samples_x")
        if self.form == "piecewise":
            k = len(self.params) // 2
            need = {f"{c}{i}" for i in range(k) for c in "xy"}
            if k < 1 or len(self.params) % 2:
                need = {"x0", "y0"}
        else:
            need = {"saturating": {"y_max", "x_half", "p"}, "linear": {"intercept", "slope"},
                    "two_regime": {"latency", "bw_small", "bw_large", "x_break"},
                    "roofline": {"fixed_s", "flop_fraction", "byte_fraction"}}[self.form]
        if self.form == "roofline" and set(self.params) in (need | {"row_s", "t_half"}, need | {"row_s", "t_half", "seq_s"}):
            # the per-row cost and the few-row knee (MEASURE_VERSION >= 9), the per-sequence cost (>= 10)
            need = set(self.params)
        if set(self.params) != need:
            raise ValueError(f"curve {self.name!r}: a {self.form} curve has params {sorted(need)}, got {sorted(self.params)}")
        if self.form == "roofline" and not {"bytes", "tokens"} <= set(self.samples_aux):
            raise ValueError(f"curve {self.name!r}: a roofline curve needs samples_aux bytes and tokens")
        if self.form == "roofline" and "seq_s" in self.params and "seqs" not in self.samples_aux:
            raise ValueError(f"curve {self.name!r}: a roofline curve with seq_s needs samples_aux seqs")
        # Scales of the forms (a ceiling, a size, a latency, a bandwidth, a fraction) are
        # positive; a linear curve of seconds is never negative over its own samples.
        positive = {"saturating": ("y_max", "x_half"), "linear": (), "piecewise": (),
                    "two_regime": ("latency", "bw_small", "bw_large", "x_break"),
                    "roofline": ("fixed_s", "flop_fraction", "byte_fraction")}[self.form]
        if self.form == "piecewise":
            positive = tuple(k for k in self.params if k.startswith("x"))
        for key in positive:
            if not self.params[key] > 0:
                raise ValueError(f"curve {self.name!r}: params.{key} = {self.params[key]!r} must be > 0 "
                                 f"(a damaged profile? re-run `engram-planner calibrate`)")
        if self.form == "roofline" and "t_half" in self.params and not (self.params["t_half"] > 0
                                                                         and self.params["row_s"] >= 0):
            raise ValueError(f"curve {self.name!r}: a roofline's t_half is > 0 and its row_s >= 0, got "
                             f"{self.params['t_half']!r}, {self.params['row_s']!r}")
        if self.form == "roofline" and not self.params.get("seq_s", 0.0) >= 0:
            raise ValueError(f"curve {self.name!r}: a roofline's seq_s is >= 0, got {self.params['seq_s']!r}")
        if self.form == "roofline" and not all(self.params[k] <= 1 for k in ("flop_fraction", "byte_fraction")):
            raise ValueError(f"curve {self.name!r}: a roofline's fractions of the ceilings are at most 1, got "
                             f"{self.params['flop_fraction']!r}, {self.params['byte_fraction']!r}")
        if self.form == "piecewise" and any(not v >= 0 for k, v in self.params.items() if k.startswith("y")):
            raise ValueError(f"curve {self.name!r}: a piecewise curve's values are >= 0 (a damaged profile?)")
        if self.form == "linear":
            for x in (min(self.samples_x), max(self.samples_x)):
                y = self.params["intercept"] + self.params["slope"] * x
                if not y >= 0:
                    raise ValueError(f"curve {self.name!r}: intercept {self.params['intercept']!r} + slope "
                                     f"{self.params['slope']!r} x {x:g} = {y:.3g} is negative at a sample "
                                     f"(a damaged profile? re-run `engram-planner calibrate`)")
        return self


class CalibrationFingerprint(Spec):
    """The software and hardware a calibration ran on. Predictions made elsewhere warn when
    the detectable parts (torch major.minor, CPU model, GPU model) differ."""

    cpu: str
    cpu_count: Annotated[int, Field(gt=0)]
    threads: Annotated[int, Field(gt=0)] = Field(description="torch intra-op threads during the run")
    torch: str
    cuda: str | None = None
    gpu: str | None = None
    driver: str | None = None
    python: str
    platform: str
    package_version: str
    date: str
    machine: str | None = Field(
        default=None, description="identity of the machine and boot the calibration ran on (a hash of "
        "/etc/machine-id and the kernel's boot id): another value means another machine, or the same one "
        "rebooted, whose speed may differ")


class CalibrationSpec(Spec):
    """What ``engram-planner calibrate`` measured and fitted (docs/calibration.md): every curve
    with its raw samples and residuals, scalar results, and the fingerprint of the run."""

    device: Literal["cuda", "cpu"]
    quick: bool = False
    wall_s: Annotated[float, Field(ge=0)] = 0.0
    fingerprint: CalibrationFingerprint
    curves: list[CurveFit] = Field(min_length=1)
    constants: dict[str, float] = Field(
        default_factory=dict, description="scalar results in SI units, e.g. per_layer_overhead_s"
    )
    notes: list[str] = Field(default_factory=list)
    anchors: dict[str, Annotated[float, Field(gt=0)]] = Field(
        default_factory=dict,
        description="mean step seconds of each engine run calibration timed (by run name): `validate` times two "
        "of them again to measure how much faster or slower the machine runs now")
    emulated_dtypes: list[DType] = Field(
        default_factory=list,
        description="dtypes the device has no native units for (e.g. bf16 on a CPU without "
        "avx512_bf16/amx_bf16): its ops were measured in fp32 and take the fp32 op curves' "
        "efficiency against this dtype's measured GEMM peak (times scale by the GEMM ratio)",
    )

    @model_validator(mode="after")
    def _unique_names(self) -> "CalibrationSpec":
        for key, value in self.constants.items():
            if value < 0:
                raise ValueError(f"constants.{key} = {value!r} is negative: every constant is a "
                                 "rate, a duration or a count (a damaged profile? re-run `engram-planner calibrate`)")
        names = [c.name for c in self.curves]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"calibration.curves lists {dup} more than once")
        return self


class HardwareSpec(Spec):
    """A node type: devices, their host link, the host, optional NVMe and network."""

    name: str
    description: str = ""
    source: Literal["datasheet", "calibrated"] = "datasheet"
    sources: list[str] = Field(min_length=1, description="where each number comes from")
    nodes: Annotated[int, Field(gt=0)] = 1
    device: DeviceSpec
    link: LinkSpec
    host: HostSpec
    nvme: NVMeSpec | None = None
    network: NetworkSpec | None = None
    efficiency: EfficiencySpec = EfficiencySpec()
    price: PriceSpec | None = None
    calibration: CalibrationSpec | None = Field(
        default=None, description="fitted curves, raw samples and fingerprint of a calibration run"
    )

    @model_validator(mode="after")
    def _consistent(self) -> "HardwareSpec":
        if self.calibration is not None and self.source != "calibrated":
            raise ValueError("a calibration section needs source: calibrated")
        if self.device.kind == "cpu" and self.link.kind != "memcpy":
            raise ValueError(
                f"device.kind is 'cpu' but link.kind is {self.link.kind!r}: a CPU computes on "
                "host memory, so its 'link' is a memory copy (link.kind: memcpy)"
            )
        if self.link.kind == "unified" and self.device.memory > self.host.memory:
            raise ValueError(
                f"link.kind is 'unified' (one memory pool) but device.memory = {self.device.memory:.4g} B exceeds "
                f"host.memory = {self.host.memory:.4g} B, the pool: device.memory is the part of the pool the "
                "device may use")
        if self.device.kind == "metal" and self.link.kind != "unified":
            raise ValueError(f"device.kind is 'metal' (an Apple GPU) but link.kind is {self.link.kind!r}: Apple "
                             "silicon has one memory pool (link.kind: unified)")
        if self.nodes > 1 and self.network is None:
            raise ValueError(f"nodes = {self.nodes} but no network is described")
        if self.device.count % self.link.devices_per_link:
            raise ValueError(
                f"link.devices_per_link = {self.link.devices_per_link} does not divide "
                f"device.count = {self.device.count}"
            )
        return self

    @property
    def unified(self) -> bool:
        """One memory pool for host and device (``link.kind: unified``)."""
        return self.link.kind == "unified"

    @property
    def devices_total(self) -> int:
        return self.nodes * self.device.count
