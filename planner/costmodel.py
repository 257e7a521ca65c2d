"""The cost model: how long one op, copy, gather, hash or disk read takes. Durations only.

The simulator owns time (it decides *when* work runs and what it contends with); this module
answers *how long* a piece of work takes when it runs alone at the rates it is given. Every
function is plain arithmetic that accepts Python floats or numpy arrays (broadcasting), so the
analytic estimator evaluates the very same formulas over thousands of configurations at once.

Legend (names carry units): T = tokens in a step, S = sequences in a step, C = keys attended,
P = pairs (query token, key) in attention, d = d_model, w = FFN width, E = routed experts,
k = top-k, M = hyper-connection branches, r = Engram rows per token.

Approximations, stated once:

* Roofline per op: ``fixed + max(flops / flop_rate, bytes / byte_rate)``, rates bounded by the
  profile's peak and memory bandwidth (Williams et al. 2009, "Roofline"); the fixed cost and the
  two rates come from :mod:`planner.efficiency` (a preset's constant fractions and kernel
  launches, or a calibrated profile's engine-timed fits). Compute and memory of one op overlap
  perfectly; ops of a block run back to back on one stream.
* Bytes are the compulsory HBM traffic: weights read once per step (they are shared by every
  token of the batch), KV cache read and written, activations in and out. L2 reuse is ignored.
* MoE routing is uniform over experts (DeepSeek-V3's auxiliary-loss-free balancing steers it
  there), so ``E * (1 - (1 - k/E)^T)`` distinct experts are touched by T tokens and only their
  weights are read.
* MLA as DeepSeek-V3 inference (and the reference model) runs it: prefill pairs in the expanded
  form (per-head keys and values from the latent), decode pairs in the absorbed form (attention
  straight over the cached latent, ``W_UK``/``W_UV`` folded into query and output); bytes read
  the cached latent (``kv_lora_rank + rope``) in both.
* Links: ``latency + bytes / rate``. ``efficiency.link`` scales the line-rate figures (h2d,
  d2h); the pageable and UVA figures in a profile are already achieved rates and are used as is.
* Host gathers: one core copies random rows at the rate the profile gives for the table's size
  (a table beyond the LLC and the TLB's reach pays a DRAM miss and a page walk per row).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Union

import numpy as np

from planner.accounting import (
    attention_params,
    engram_dense_params,
    engram_row_bytes,
    engram_table_bytes,
    hyper_connection_flops,
    hyper_connection_params,
    kv_cache_bytes_per_token,
    swiglu_params,
)
from planner.efficiency import Efficiency, default_efficiency
from planner.parallel import kv_replication
from planner.specs import DTYPE_BYTES, GQAAttention, HardwareSpec, ModelSpec

Number = Union[float, np.ndarray]

# Kernels launched per op (forward). Counted from a typical eager implementation; CUDA graphs
# (vLLM decode) hide most launch cost, which calibration captures as a smaller overhead.
KERNELS = {"attention": 6, "ffn": 3, "moe": 10, "engram": 8, "embed": 1, "head": 2, "gather": 2}


# ----------------------------------------------------------------------------- work and shapes


@dataclass(frozen=True)
class Work:
    """FLOPs, HBM bytes and kernel launches of one op (floats or arrays); adds up. ``kind``
    names the op (``attention:mla``, ``ffn:moe``, ...) for calibrated per-op curves; a sum of
    different ops has none."""

    flops: Number
    bytes: Number
    kernels: Number
    kind: str = ""
    tokens: Number = 0.0  # rows of the op's GEMMs (0: unknown, no few-row ceiling)
    # Tensor parallelism: bytes each rank contributes to the collectives that end the op, and
    # how many collectives (planner.parallel; 0 on one device).
    comm_bytes: Number = 0.0
    collectives: Number = 0.0
    seqs: Number = 0.0  # sequences the op serves (a decode step: one a row; a prefill: one a prompt)

    def __add__(self, other: "Work") -> "Work":
        kind = self.kind if self.kind == other.kind else ""
        tokens, seqs = (self.tokens, self.seqs) if kind else (0.0, 0.0)
        return Work(self.flops + other.flops, self.bytes + other.bytes, self.kernels + other.kernels, kind, tokens,
                    self.comm_bytes + other.comm_bytes, self.collectives + other.collectives, seqs)

    def scaled(self, factor: float) -> "Work":
        if factor == 1.0:
            return self
        return Work(self.flops * factor, self.bytes * factor, self.kernels * factor, self.kind, self.tokens,
                    self.comm_bytes * factor, self.collectives * factor, self.seqs)


@dataclass(frozen=True)
class BatchShape:
    """What one engine step computes, as the cost model needs it.

    ``tokens``: query tokens (decode tokens + prefill chunk tokens); ``seqs``: sequences in the
    step (each gets one logit row); ``attn_pairs``: sum over query tokens of keys attended
    (causal); ``kv_read``: keys read from the cache, summed over sequences. ``decode_tokens``
    and ``decode_pairs``: the part of ``tokens`` and ``attn_pairs`` that are decode steps (one
    new token of a sequence against its cache; MLA computes those in the absorbed form), the
    rest is prefill.
    """

    tokens: Number
    seqs: Number
    attn_pairs: Number
    kv_read: Number
    decode_tokens: Number = 0.0
    decode_pairs: Number = 0.0

    @staticmethod
    def decode(batch: Number, context: Number) -> "BatchShape":
        """``batch`` sequences each decoding one token against ``context`` cached keys."""
        return BatchShape(tokens=batch, seqs=batch, attn_pairs=batch * (context + 1), kv_read=batch * context,
                          decode_tokens=batch, decode_pairs=batch * (context + 1))

    @staticmethod
    def prefill(chunk: Number, prior: Number = 0) -> "BatchShape":
        """One sequence prefilling ``chunk`` tokens after ``prior`` already-cached ones."""
        return BatchShape(
            tokens=chunk, seqs=1, attn_pairs=chunk * prior + chunk * (chunk + 1) / 2, kv_read=prior
        )

    def __add__(self, other: "BatchShape") -> "BatchShape":
        return BatchShape(
            self.tokens + other.tokens,
            self.seqs + other.seqs,
            self.attn_pairs + other.attn_pairs,
            self.kv_read + other.kv_read,
            self.decode_tokens + other.decode_tokens,
            self.decode_pairs + other.decode_pairs,
        )


# ----------------------------------------------------------------------------- the model


class CostModel:
    """Durations of compute, copies, gathers, hashing and disk reads for one model on one
    hardware profile. Stateless; every method says what it models and what it leaves out."""

    def __init__(self, model: ModelSpec, hardware: HardwareSpec, efficiency: Efficiency | None = None):
        self.model = model
        self.hardware = hardware
        self.eff = efficiency or default_efficiency(hardware, model.dtype)
        self.width = DTYPE_BYTES[model.dtype]
        # Rates the analytic estimator may replace by arrays (see :meth:`with_rates`).
        self.peak_flops: Number = hardware.device.flops_for(model.dtype)
        self.hbm_bandwidth: Number = hardware.device.memory_bandwidth
        self.h2d_bandwidth: Number = hardware.link.h2d_bandwidth
        self.d2h_bandwidth: Number = hardware.link.d2h_bandwidth
        self.host_memory_bandwidth: Number = hardware.host.memory_bandwidth
        self.launch_s = hardware.device.kernel_launch_overhead
        self.ranks = hardware.device.ranks  # a tensor-parallel group's view (planner.parallel)
        # Per-layer constants (parameter counts come from planner.accounting only).
        self._attn_params = attention_params(model)
        self._hc_params = hyper_connection_params(model)
        self._hc_flops = hyper_connection_flops(model)  # per token, the wrapper of one sublayer
        self._kv_bytes_layer = kv_cache_bytes_per_token(model) * kv_replication(model, self.ranks) / model.n_layers
        self._dense_ffn_params = swiglu_params(model.d_model, model.ffn.dense_width)
        moe = model.ffn.moe
        self._expert_params = swiglu_params(model.d_model, moe.expert_width) if moe else 0
        self._engram_params = engram_dense_params(model)
        e = model.engram
        self.row_bytes = float(engram_row_bytes(model)) if e else 0.0
        self.hash_indices_per_token = float(e.rows_per_token * len(e.layer_ids)) if e else 0.0
        # Sublayers wrapped in hyper-connections (hc_mult > 1) run extra small kernels per call
        # (mHC: the flattened projection, its norm, sigmoids, Sinkhorn-Knopp's rounds, the
        # mixes; dynamic HC: norm, two projections, tanh, the mix), and the embedding
        # broadcasts to the branches: different ops for calibrated curves, whose kinds say so
        # (``attention:mla+hc``, ``ffn:dense+hc``, ``embed+hc``).
        self._hc_kind = "+hc" if model.hc_mult > 1 else ""

    def with_rates(self, **rates: Number) -> "CostModel":
        """A copy with some rates replaced (scalars or arrays): ``peak_flops``,
        ``hbm_bandwidth``, ``h2d_bandwidth``, ``d2h_bandwidth``, ``host_memory_bandwidth``."""
        clone = object.__new__(CostModel)
        clone.__dict__.update(self.__dict__)
        for name, value in rates.items():
            if not hasattr(self, name) or name.startswith("_"):
                raise ValueError(f"unknown rate {name!r}")
            setattr(clone, name, value)
        return clone

    # ---- roofline

    def seconds(self, work: Work) -> Number:
        """Roofline time of one op: compute and memory traffic overlap, the fixed cost and a
        tensor-parallel group's collectives do not (:meth:`planner.efficiency.Efficiency.op_terms`)."""
        return self.terms(work).seconds

    def bound(self, work: Work) -> str:
        """``compute``, ``hbm``, ``launch`` or ``interconnect``: the largest term (scalars only)."""
        return self.terms(work).bound

    def terms(self, work: Work):
        """The roofline terms of ``work`` (:class:`planner.efficiency.OpTerms`; arrays allowed)."""
        terms = self.eff.op_terms(work, self.peak_flops, self.hbm_bandwidth, self.launch_s)
        if self.ranks > 1 and np.any(np.asarray(work.collectives) > 0):
            terms = replace(terms, comm_s=self.collective_s(work.comm_bytes, work.collectives))
        return terms

    def collective_s(self, nbytes: Number, count: Number = 1.0) -> Number:
        """``count`` ring collectives (all-reduce: reduce-scatter then all-gather) over the
        group's ranks, moving ``nbytes`` per rank in all: each rank sends and receives
        ``2 (r - 1) / r`` of it over its interconnect link, in ``2 (r - 1)`` latency-bound
        steps per collective (planner.parallel)."""
        r, d = self.ranks, self.hardware.device
        return (2.0 * (r - 1) / r * nbytes / d.interconnect_bandwidth
                + count * 2 * (r - 1) * d.interconnect_latency)

    def extrapolation(self, work: Work) -> Number:
        """1 where the profile's op model was fitted on work like this, else how far beyond."""
        return self.eff.extrapolation(work)

    # ---- per-block work

    def attention(self, b: BatchShape) -> Work:
        """Attention of one block, with its hyper-connection wrapper.

        FLOPs: projections (2 per weight per token) plus QK^T and PV per (query, key) pair.
        MLA (``reference_model.attention.MLA``): prefill pairs in the expanded form,
        ``2 H (nope + rope + v)`` each, plus re-expanding the latent of keys cached before a
        prefill chunk (``2 H C (nope + v)`` each); decode pairs in the absorbed form,
        ``2 H (C + rope) + 2 H C`` each (C = kv_lora_rank), whose per-token absorb matmuls cost
        what the ``W_kvb`` projection counted per token does.
        Bytes: weights once, KV cache read (``kv_read``) and written (``tokens``), activations.
        Simplifies: FlashAttention-style fused core (no score matrix in HBM), no paging overhead.
        """
        m, att = self.model, self.model.attention
        if isinstance(att, GQAAttention):
            pair_flops = b.attn_pairs * 4 * att.n_heads * m.head_dim
        else:
            h, c, r = att.n_heads, att.kv_lora_rank, att.qk_rope_head_dim
            prefill_pairs = b.attn_pairs - b.decode_pairs
            prior_keys = b.kv_read - (b.decode_pairs - b.decode_tokens)  # cached keys of prefill chunks
            pair_flops = (prefill_pairs * 2 * h * (att.qk_nope_head_dim + r + att.v_head_dim)
                          + prior_keys * 2 * h * c * (att.qk_nope_head_dim + att.v_head_dim)
                          + b.decode_pairs * (2 * h * (c + r) + 2 * h * c))
        flops = 2 * b.tokens * self._attn_params + b.tokens * self._hc_flops + pair_flops
        bytes_ = (
            (self._attn_params + self._hc_params) * self.width
            + (b.kv_read + b.tokens) * self._kv_bytes_layer
            + b.tokens * m.d_model * self.width * 2 * m.hc_mult
        )
        return Work(flops, bytes_, KERNELS["attention"], f"attention:{att.kind}{self._hc_kind}", b.tokens,
                    *self._all_reduce(b), seqs=b.seqs)

    def ffn(self, layer_id: int, b: BatchShape) -> Work:
        """Dense SwiGLU FFN, or MoE (shared + top-k routed experts) on MoE layers.

        MoE bytes are the weights of the experts actually touched (uniform routing); FLOPs count
        every token's k routed and all shared experts plus the router. Simplifies: no token
        dropping, no all-to-all (experts are local to the device).
        """
        m = self.model
        d, act = m.d_model, b.tokens * m.d_model * self.width * 2 * m.hc_mult
        hc = b.tokens * self._hc_flops
        if not m.is_moe_layer(layer_id):
            flops = 2 * b.tokens * self._dense_ffn_params + hc
            bytes_ = (self._dense_ffn_params + self._hc_params) * self.width + act
            return Work(flops, bytes_, KERNELS["ffn"], "ffn:dense" + self._hc_kind, b.tokens, *self._all_reduce(b),
                        seqs=b.seqs)
        moe = m.ffn.moe
        e = moe.n_routed_experts
        touched = e * (1.0 - (1.0 - moe.top_k / e) ** b.tokens)
        flops = 2 * b.tokens * ((moe.top_k + moe.n_shared_experts) * self._expert_params + d * e) + hc
        routed = moe.routed_bytes_per_param or self.width  # fp4 experts beside fp8 weights, say
        bytes_ = (
            touched * self._expert_params * routed
            + (moe.n_shared_experts * self._expert_params + d * e + self._hc_params) * self.width
            + act * (1 + moe.top_k)
        )
        return Work(flops, bytes_, KERNELS["moe"], "ffn:moe" + self._hc_kind, b.tokens, *self._all_reduce(b),
                    seqs=b.seqs)

    def engram(self, b: BatchShape) -> Work:
        """Engram module compute of one block (ENGRAM.md section 3): value and M key
        projections (d_mem -> d), the gate's norms and dot products, the depthwise conv.
        Elementwise FLOPs per branch channel: 8 for the gate (two RMSNorms, the dot product,
        the scaling), and with a conv (``kernel_size`` k > 0) 2 per tap plus 4 for its RMSNorm,
        SiLU and residual add; ``kernel_size`` 0 has no conv work. Block-scaled rows
        (``scale_block``) are de-quantised on the device: one multiply per value read, the
        scale bytes being part of the row bytes read.
        Bytes: its dense weights, the rows it reads (already on the device), activations.
        Simplifies: the fetch of the rows is not here (see link / gather costs)."""
        m, e = self.model, self.model.engram
        assert e is not None
        mult, d = m.hc_mult, m.d_model
        conv = 2 * e.kernel_size + 4 if e.kernel_size else 0
        dequant = e.rows_per_token * e.d_head if e.scale_block else 0
        flops = b.tokens * (2 * (mult + 1) * e.d_mem * d + mult * d * (8 + conv) + dequant)
        bytes_ = (
            self._engram_params * self.width
            + b.tokens * e.rows_per_token * engram_row_bytes(m)
            + b.tokens * (e.d_mem + 4 * mult * d) * self.width
        )
        # Tables sharded by hash head over a tensor-parallel group: the rows are all-gathered
        # (half an all-reduce's traffic) before the module runs (planner.parallel).
        gathered = (0.5 * b.tokens * e.rows_per_token * engram_row_bytes(m), 1.0 + 0.0 * b.tokens) \
            if self.ranks > 1 else (0.0, 0.0)
        return Work(flops, bytes_, KERNELS["engram"], "engram", b.tokens, *gathered, seqs=b.seqs)

    def _all_reduce(self, b: BatchShape) -> tuple[Number, Number]:
        """(bytes, collectives) of the all-reduce that ends a sublayer under tensor parallelism:
        the step's hidden states, ``tokens x d_model`` (0 on one device)."""
        if self.ranks == 1:
            return 0.0, 0.0
        return b.tokens * self.model.d_model * self.width, 1.0 + 0.0 * b.tokens

    def device_gather(self, b: BatchShape) -> Work:
        """The in-layer gather of a device-tier Engram layer (the baseline's lookup): every
        requested row read from the device table and written out, ``[B, T, K, D]``."""
        e = self.model.engram
        assert e is not None
        nbytes = 2 * b.tokens * e.rows_per_token * self.row_bytes
        return Work(0.0 * b.tokens, nbytes, KERNELS["gather"], "engram:gather", b.tokens, seqs=b.seqs)

    def embed(self, b: BatchShape) -> Work:
        """Input embedding: one row read per token and written to each of the ``hc_mult``
        hyper-connection branches."""
        m = self.model
        return Work(0.0 * b.tokens, b.tokens * m.d_model * self.width * (1 + m.hc_mult), KERNELS["embed"],
                    "embed" + self._hc_kind)

    def head(self, b: BatchShape) -> Work:
        """Final norm and LM head for one logit row per sequence (vLLM computes logits only
        for each sequence's last scheduled token)."""
        m = self.model
        return Work(2 * b.seqs * m.d_model * m.vocab_size,
                    m.d_model * m.vocab_size * self.width + b.seqs * m.vocab_size * 4, KERNELS["head"], "head", b.seqs)

    # ---- links

    def link_rate(self, direction: str = "h2d", mode: str = "pinned", bytes_: Number = 0.0) -> Number:
        """Sustained bytes/s of one host<->device stream.

        ``mode``: ``pinned`` (DMA from page-locked memory; line rate x efficiency.link),
        ``pageable`` (staged through a driver bounce buffer; the profile's achieved figure, or
        half the pinned rate when it gives none, cf. HARDWARE.md's RTX 4090 numbers), ``uva``
        (GPU kernels reading rows from mapped host memory; the profile's achieved figure, or
        half the pinned rate); both at most the pinned rate of the same link."""
        link = self.hardware.link
        line = self.h2d_bandwidth if direction == "h2d" else self.d2h_bandwidth
        pinned = line * self.eff.link_fraction(bytes_, direction)
        if mode == "pinned":
            return pinned
        # Both cross the same link: never faster than its pinned rate.
        if mode == "pageable":
            return np.minimum(link.pageable_h2d_bandwidth or 0.5 * pinned, pinned)
        if mode == "uva":
            return np.minimum(link.uva_read_bandwidth or 0.5 * pinned, pinned)
        raise ValueError(f"unknown link mode {mode!r} (pinned, pageable, uva)")

    def transfer(self, bytes_: Number, direction: str = "h2d", mode: str = "pinned") -> Number:
        """One copy alone on its link: ``latency + bytes / rate``. Simplifies: no chunking,
        no NUMA penalty (``host.remote_numa_factor`` is applied by the caller that knows the
        socket), zero bytes still pay the latency only when a copy is issued at all."""
        rate = self.link_rate(direction, mode, bytes_)
        return np.where(bytes_ > 0, self.hardware.link.latency + bytes_ / rate, 0.0)

    # ---- host CPU and DRAM

    def host_dram_rate(self, bytes_: Number = 0.0) -> Number:
        """Achievable DRAM bandwidth of the whole node (shared by every host-side stream)."""
        return self.host_memory_bandwidth * self.eff.host_memory_fraction(bytes_)

    def table_bytes(self, layer: int) -> float:
        """Bytes of Engram layer ``layer``'s whole table (what its random rows are drawn from)."""
        return float(engram_table_bytes(self.model)[layer])

    def gather_rate(self, cores: Number, table_bytes: Number, huge_pages: bool = False) -> Number:
        """Bytes/s that ``cores`` cores achieve copying random rows of a ``table_bytes`` table
        into a staging buffer, alone on the node: the per-core rate for that table size and this
        model's row size, times the cores, bounded by DRAM. Simplifies: perfect scaling over
        cores up to the DRAM bound."""
        per_core = self.eff.gather_rate(table_bytes, self.row_bytes, huge_pages)
        return np.minimum(cores * per_core, self.host_dram_rate())

    def gather_regime(self, table_bytes: float, huge_pages: bool = False) -> str:
        """Where a table's random rows come from (``llc`` or ``dram``, page size)."""
        return self.eff.gather_regime(table_bytes, huge_pages)

    def lookup_overhead(self, rows: Number, cached: Number = False) -> Number:
        """Host seconds of one lookup of ``rows`` requested rows besides the gather itself
        (plan, de-duplication, assembly): the profile's ``lookup:overhead`` curve, plus its
        ``lookup:cache`` curve where ``cached`` (the layer has a hot-row cache), else 0."""
        base = self.eff.lookup_overhead_s(rows)
        if np.ndim(cached) == 0:
            return base + self.eff.lookup_cache_s(rows) if cached else base
        return base + np.where(cached, self.eff.lookup_cache_s(rows), 0.0)

    def gather(self, bytes_: Number, cores: Number, table_bytes: Number, huge_pages: bool = False) -> Number:
        """Time to gather ``bytes_`` of rows of a ``table_bytes`` table with ``cores`` cores,
        alone on the node."""
        return bytes_ / self.gather_rate(cores, table_bytes, huge_pages)

    def hash(self, tokens: Number, cores: Number) -> Number:
        """N-gram hashing of ``tokens`` tokens (every Engram layer's ids, device-tier layers
        too: their in-layer gather needs them) on ``cores`` cores, the call's fixed cost
        included (:meth:`planner.efficiency.Efficiency.hash_s`). Simplifies: perfectly
        parallel over cores; compression included in the rate."""
        return self.eff.hash_s(tokens, self.hash_indices_per_token, cores)

    def step_overhead(self, shape: BatchShape) -> Number:
        """The engine's own seconds per step outside every op, hash and lookup (scheduling,
        input preparation, sampling, the Python between ops): a calibrated profile's
        ``step:overhead`` at the step's tokens, else the host's ``engine_step_overhead`` plus
        ``engine_seq_overhead`` per sequence of the step."""
        return self.eff.step_overhead_s(shape.tokens, shape.seqs)

    def graphed(self) -> "CostModel":
        """This cost model for a step replayed as a CUDA graph: each kernel costs
        ``device.graph_kernel_overhead`` instead of an eager launch."""
        clone = object.__new__(CostModel)
        clone.__dict__.update(self.__dict__)
        clone.launch_s = self.hardware.device.graph_kernel_overhead
        return clone

    def optimizer_bytes(self, rows: Number, optimizer: str = "adam") -> Number:
        """DRAM bytes of a sparse update of ``rows`` table rows: read the gradient, read and
        write the row; Adam also reads and writes two fp32 moments per element."""
        e = self.model.engram
        assert e is not None
        row = engram_row_bytes(self.model)
        moments = 2 * 2 * e.d_head * 4 if optimizer == "adam" else 0
        return rows * (3 * row + moments)

    # ---- NVMe and network

    def nvme_pages(self, rows: Number, row_bytes: float) -> Number:
        """Pages read for ``rows`` random rows. Rows lie back to back in the table file, so a
        row starts at a multiple of ``g = gcd(row_bytes, page)`` within its page, each such
        offset equally likely, and spans ``(row_bytes - g) / page + 1`` pages on average: a
        160 B row costs a whole 4 KiB page, 1.03 of one counting the rows that straddle two,
        a 264 B row 1.06. Distinct rows never share a page (hashing scatters them)."""
        nvme = self.hardware.nvme
        assert nvme is not None
        page = float(nvme.page_size)
        if float(row_bytes).is_integer() and page.is_integer():
            g = float(math.gcd(int(row_bytes), int(page)))
        else:
            g = min(float(row_bytes), page)
        return rows * ((row_bytes - g) / page + 1.0)

    def nvme_page_rate(self) -> float:
        """Pages/s the drives sustain: the smaller of the IOPS and bandwidth bounds."""
        nvme = self.hardware.nvme
        assert nvme is not None
        return min(nvme.read_iops, nvme.read_bandwidth / nvme.page_size)

    def nvme_access(self, disk_read: str, queue_depth: int) -> tuple[float, float]:
        """``(latency, reads in flight)`` of one reader of disk-tier rows: ``pread`` keeps
        ``queue_depth`` reads in flight, each ``read_latency`` long; ``mmap`` touches a mapped
        file's pages, one synchronous fault at a time (``fault_latency``, else the read's)."""
        nvme = self.hardware.nvme
        assert nvme is not None
        if disk_read == "mmap":
            return (nvme.read_latency if nvme.fault_latency is None else nvme.fault_latency), 1.0
        return nvme.read_latency, float(queue_depth)

    def nvme_waves_s(self, pages: Number, disk_read: str, queue_depth: int) -> Number:
        """The latency bound of reading ``pages``: waves of reads in flight, each a latency long
        (``latency x ceil(pages / reads in flight)``; an mmap fault at a time)."""
        latency, in_flight = self.nvme_access(disk_read, queue_depth)
        return latency * np.ceil(np.asarray(pages, float) / in_flight)

    def nvme_read(self, rows: Number, row_bytes: float, disk_read: str = "pread", queue_depth: int = 128,
                  share: float = 1.0) -> Number:
        """Seconds to read ``rows`` random rows with the drives to itself (``share``: the fraction
        of their page rate this reader gets): the larger of the latency bound, ``latency x
        ceil(pages / reads in flight)`` (waves of reads, each a latency long), and the rate bound,
        ``latency + pages / (share x page rate)``. No page cache (the caller splits it off)."""
        pages = self.nvme_pages(rows, row_bytes)
        latency, _ = self.nvme_access(disk_read, queue_depth)
        waves = self.nvme_waves_s(pages, disk_read, queue_depth)
        return np.where(pages > 0, np.maximum(waves, latency + pages / (share * self.nvme_page_rate())), 0.0)

    def network(self, bytes_: Number) -> Number:
        """One message between nodes: latency + bytes / (bandwidth x efficiency.link)."""
        net = self.hardware.network
        assert net is not None
        return net.latency + bytes_ / (net.bandwidth * self.eff.network_fraction(bytes_))
