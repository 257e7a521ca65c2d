"""The validation grid: which real runs are measured, and the scenario that describes each one.

A validation run is a fixed-length batched generation on the reference model: ``batch``
sequences of ``prompt_len`` corpus tokens are prefilled in one engine step, then
``output_len - 1`` decode steps feed one token per sequence (teacher-forced from the corpus, so
the n-gram traffic is that of real text, not of a random model's output). The same run, as a
:class:`planner.specs.Scenario`, is an offline :class:`InferenceWorkload` of ``batch`` requests
with fixed prompt and output lengths whose token budget admits every prompt whole
(``max_batched_tokens = batch x prompt_len``), so the simulator's continuous-batching
scheduler produces exactly the measured step sequence: one prefill step of
``batch x prompt_len`` tokens, then ``output_len - 1`` decode steps of ``batch`` tokens with
a growing KV cache. The scenario reads the n-gram curves measured on the same corpus for the
same Engram config (``ngram_stats``), as a user would (docs/offload.md).

Backbones are the dense GQA family of the bundled ``tiny-gqa`` model (and one MLA+MoE variant
of ``tiny``) resized with ``spec.model_copy(update=...)``: widths, depths, Engram layers and
table sizes that ``engram-planner calibrate`` never timed (its shapes are listed by
:func:`calibration_shapes`, and ``tests/test_validation.py`` asserts the two are disjoint), in
the dtype calibration times on the device (fp32 on a CPU, bf16 on CUDA: :meth:`RunConfig.for_device`).

Torch-free.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

from planner.specs import (
    EngramPlacement,
    HardwareSpec,
    InferenceWorkload,
    ModelSpec,
    NVMeSpec,
    Scenario,
)


@dataclass(frozen=True)
class RunConfig:
    """One measured run. ``base`` is a bundled model; the other model fields resize it."""

    name: str
    base: str = "tiny-gqa"
    d_model: int = 256
    n_layers: int = 4
    ffn_width: int = 688
    n_heads: int = 4
    n_kv_heads: int = 2
    engram_layers: tuple[int, ...] = (1,)
    table_size_per_head: int = 50_000
    engram_heads: int = 4
    engram_dim: int = 160  # embed_dim_per_ngram: 4 heads x 40 fp32 = 160 B rows
    batch: int = 4
    prompt_len: int = 64
    output_len: int = 12
    tier: str = "host"
    cache_fraction: float = 0.0
    prefetch: bool = False
    dtype: str = "fp32"  # the backbone's; the device's native one (bf16 on CUDA: for_device)

    def for_device(self, device: str) -> "RunConfig":
        """This run as measured on ``device``: backbones in the dtype calibration times there
        (bf16 on CUDA, fp32 on a CPU), so a prediction never rests on another dtype's curves."""
        from dataclasses import replace

        return replace(self, dtype="bf16" if device == "cuda" else "fp32")

    @property
    def regime(self) -> dict[str, str]:
        """Labels the report groups errors by."""
        return {
            "tier": self.tier,
            "prefetch": "on" if self.prefetch else "off",
            "batch": f"B={self.batch}",
            "phase": "prefill-heavy" if self.prompt_len * self.batch >= 8 * self.batch * (self.output_len - 1)
            else "decode-heavy",
            "cache": "cached" if self.cache_fraction > 0 else "no cache",
            "backbone": self.base,
        }

    def as_dict(self) -> dict:
        d = asdict(self)
        d["engram_layers"] = list(self.engram_layers)
        return d


def model_spec(cfg: RunConfig) -> ModelSpec:
    """The backbone of ``cfg``: its bundled base resized with ``model_copy(update=...)`` and
    re-validated (``model_copy`` alone does not validate)."""
    from planner.loading import load_model

    base = load_model(cfg.base)
    engram = base.engram.model_copy(update={
        "layer_ids": list(cfg.engram_layers), "max_ngram": 3, "n_heads": cfg.engram_heads,
        "table_size_per_head": [cfg.table_size_per_head] * 2, "embed_dim_per_ngram": cfg.engram_dim,
        "dtype": "fp32"})
    update = {"name": f"{base.name} d{cfg.d_model} L{cfg.n_layers}", "d_model": cfg.d_model,
              "n_layers": cfg.n_layers, "max_seq_len": max(base.max_seq_len, cfg.prompt_len + cfg.output_len),
              "engram": engram, "dtype": cfg.dtype}
    if base.attention.kind == "gqa":
        update["attention"] = base.attention.model_copy(update={"n_heads": cfg.n_heads, "n_kv_heads": cfg.n_kv_heads})
        update["ffn"] = base.ffn.model_copy(update={"dense_width": cfg.ffn_width})
    else:  # MLA + MoE: scale the latent widths with d_model
        f = cfg.d_model // base.d_model
        att = base.attention
        update["attention"] = att.model_copy(update={
            "q_lora_rank": att.q_lora_rank * f, "kv_lora_rank": att.kv_lora_rank * f,
            "qk_nope_head_dim": att.qk_nope_head_dim * f, "v_head_dim": att.v_head_dim * f})
        moe = base.ffn.moe.model_copy(update={"expert_width": base.ffn.moe.expert_width * f})
        update["ffn"] = base.ffn.model_copy(update={"dense_width": base.ffn.dense_width * f, "moe": moe})
    spec = base.model_copy(update=update)
    return ModelSpec.model_validate(spec.model_dump())


def placement(cfg: RunConfig, host_mode: str = "staged") -> EngramPlacement:
    """The measured placement: static hot-row cache (counted on the corpus' first 80%),
    de-duplication on, ``host_mode`` as ``--host-mode`` asks (UVA only on CUDA: the store falls
    back to staged elsewhere, and so does the scenario), and for the disk tier the mapped file
    with a warm page cache (``disk_read: mmap``; the file was just written: every row comes from
    DRAM. O_DIRECT reads would bypass that cache)."""
    return EngramPlacement(tier=cfg.tier, cache_fraction=cfg.cache_fraction, cache_policy="static",
                           prefetch=cfg.prefetch, dedup=True, host_mode=host_mode,
                           host_cache_fraction=1.0 if cfg.tier == "disk" else 0.0, disk_read="mmap")


def one_device(hw: HardwareSpec) -> HardwareSpec:
    """``hw`` cut to the one device a validation run measures (a node profile keeps its count of
    devices and their shared uplinks; the run uses one device and its own link)."""
    if hw.device.count == 1 and hw.link.devices_per_link == 1:
        return hw
    return hw.model_copy(update={"device": hw.device.model_copy(update={"count": 1}),
                                 "link": hw.link.model_copy(update={"devices_per_link": 1})})


def with_disk(hw: HardwareSpec) -> HardwareSpec:
    """A profile that can hold a disk-tier table. A profile calibrated with ``--no-disk`` (or on a
    memory filesystem) has no NVMe; with a warm page cache (``host_cache_fraction: 1``) the
    simulator reads no page from it, so the figures here are placeholders that never enter a
    prediction."""
    if hw.nvme is not None:
        return hw
    return hw.model_copy(update={"nvme": NVMeSpec(capacity=1e12, read_bandwidth=3e9)})


def scenario(cfg: RunConfig, hw: HardwareSpec, ngram_stats: str | None, host_mode: str = "staged") -> Scenario:
    """The scenario that describes the measured run (see the module doc): one device of ``hw``,
    the run's placement in ``host_mode`` (``uva`` only where the device is a GPU)."""
    spec = model_spec(cfg)
    workload = InferenceWorkload(num_sequences=cfg.batch, prompt_len=cfg.prompt_len, output_len=cfg.output_len,
                                 max_batched_tokens=cfg.batch * cfg.prompt_len, max_num_seqs=cfg.batch,
                                 chunked_prefill=True)
    hw = one_device(hw)
    mode = host_mode if hw.device.kind == "cuda" else "staged"
    return Scenario(name=cfg.name, model=spec, hardware=with_disk(hw) if cfg.tier == "disk" else hw,
                    workload=workload, placement=placement(cfg, mode), ngram_stats=ngram_stats)


def engram_key(cfg: RunConfig) -> str:
    """Runs sharing this key share tables, corpus row stream, hot rows and n-gram curves."""
    spec = model_spec(cfg)
    return hashlib.sha256(json.dumps(spec.engram.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()[:12]


# ----------------------------------------------------------------------------- the grids

_Q = RunConfig


def quick_grid() -> list[RunConfig]:
    """Six runs (< 1 minute): tier x prefetch x batch x phase on two backbones. Used by CI."""
    return [
        _Q("host-decode-B8", batch=8, prompt_len=32, output_len=16),
        _Q("host-prefill-B4", batch=4, prompt_len=96, output_len=4),
        _Q("host-prefetch-B8", batch=8, prompt_len=32, output_len=16, prefetch=True),
        _Q("device-B8", batch=8, prompt_len=48, output_len=12, tier="device"),
        _Q("disk-cache-B16", batch=16, prompt_len=24, output_len=12, tier="disk", cache_fraction=0.01),
        _Q("host-2layers-d384", d_model=384, ffn_width=1024, n_layers=5, engram_layers=(1, 3),
           table_size_per_head=120_000, batch=4, prompt_len=48, output_len=12),
    ]


def full_grid() -> list[RunConfig]:
    """The ``validate --quick`` grid: the CI runs plus model size, context, table size, layer
    ids, cache fraction and prefetch varied one or two at a time."""
    return quick_grid() + [
        _Q("host-small-d128", d_model=128, ffn_width=352, batch=8, prompt_len=32, output_len=16),
        _Q("host-deep-L6", n_layers=6, engram_layers=(2,), batch=4, prompt_len=48, output_len=12),
        _Q("host-bigtable", table_size_per_head=400_000, batch=8, prompt_len=32, output_len=12),
        _Q("host-longctx", batch=2, prompt_len=192, output_len=12),
        _Q("host-cache10-B16", batch=16, prompt_len=24, output_len=12, cache_fraction=0.1),
        _Q("host-prefetch-prefill", batch=4, prompt_len=96, output_len=4, prefetch=True),
        _Q("host-prefetch-2layers", engram_layers=(0, 2), batch=8, prompt_len=32, output_len=12, prefetch=True),
        _Q("disk-nocache-B8", batch=8, prompt_len=48, output_len=12, tier="disk"),
        _Q("disk-prefetch-B8", batch=8, prompt_len=32, output_len=12, tier="disk", prefetch=True),
        _Q("device-d512", d_model=512, ffn_width=1376, n_heads=8, batch=4, prompt_len=32, output_len=12,
           tier="device"),
        _Q("mla-moe-host", base="tiny", d_model=128, n_layers=4, engram_layers=(1, 2), batch=4,
           prompt_len=48, output_len=12),
    ]


def grid(quick: bool, device: str = "cpu") -> list[RunConfig]:
    return [c.for_device(device) for c in (quick_grid() if quick else full_grid())]


def anchor_config(run: dict) -> RunConfig:
    """One of calibration's engine runs (:func:`planner.calibration.tasks.anchor_runs`) as a
    validation run: the same backbone, Engram geometry, batch, prompt and output length, tier
    and placement, measured by the validation runner interleaved with the grid."""
    from planner.calibration.tasks import CALIBRATION_ENGRAM

    spec = run["spec"]
    base = "tiny" if spec["attention"]["kind"] == "mla" else "tiny-gqa"
    return RunConfig(f"anchor: {run['name']}", base=base, d_model=spec["d_model"],
                     ffn_width=spec["ffn"]["dense_width"], n_layers=spec["n_layers"],
                     engram_layers=tuple(spec["engram"]["layer_ids"]),
                     table_size_per_head=CALIBRATION_ENGRAM["table_size_per_head"][0],
                     engram_heads=CALIBRATION_ENGRAM["n_heads"], engram_dim=CALIBRATION_ENGRAM["embed_dim_per_ngram"],
                     batch=run["batch"], prompt_len=run["prompt_len"], output_len=run["output_len"],
                     tier=run.get("tier", "host"), dtype=spec["dtype"])


# ----------------------------------------------------------------------------- disjointness


@dataclass(frozen=True)
class ShapeKey:
    """What a timed op depends on: the backbone's widths and the step shape (op level: the
    number of layers is left out, so a validation backbone that only differs from a
    calibration one in depth still counts as the same shapes)."""

    d_model: int
    ffn_width: int
    attention: str
    dtype: str
    phase: str
    batch: int
    tokens: int
    context: int


def _key(spec: ModelSpec, phase: str, batch: int, tokens: int, context: int) -> ShapeKey:
    return ShapeKey(spec.d_model, spec.ffn.dense_width, spec.attention.kind, spec.dtype, phase, batch, tokens, context)


def calibration_shapes(device: str = "cpu") -> set[ShapeKey]:
    """Every (backbone, step shape) a ``calibrate`` run (quick or full) times: the engine runs of
    :func:`planner.calibration.tasks.engine_runs`, each a prefill step and its decode steps."""
    from planner.calibration.tasks import engine_runs

    out = set()
    for quick in (True, False):
        for run in engine_runs(device, quick):
            spec = ModelSpec.model_validate(run["spec"])
            B, P = run["batch"], run["prompt_len"]
            out.add(_key(spec, "prefill", B, P, 0))
            for j in range(1, run["output_len"]):
                out.add(_key(spec, "decode", B, 1, P + j - 1))
    return out


def run_shapes(cfg: RunConfig) -> set[ShapeKey]:
    """The (backbone, step shape) pairs a validation run times."""
    spec = model_spec(cfg)
    out = {_key(spec, "prefill", cfg.batch, cfg.prompt_len, 0)}
    for j in range(1, cfg.output_len):
        out.add(_key(spec, "decode", cfg.batch, 1, cfg.prompt_len + j - 1))
    return out
