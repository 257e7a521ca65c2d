"""Parameter, byte and footprint accounting: the one place these numbers are computed.

The torch reference model, the cost model, the simulator, the planner and the app all call
these functions; a test instantiates the torch model and checks its ``numel`` against them.

Conventions (stated once, used everywhere):

* FFNs are SwiGLU: three ``d x width`` matrices, no biases.
* MLA follows DeepSeek-V3 (``wq_a, q_norm, wq_b`` or a single ``wq``; ``wkv_a, kv_norm,
  wkv_b, wo``); GQA has ``wq, wk, wv, wo`` (biases on q/k/v when ``qkv_bias``).
* Hyper-connections (``hc_mult = M > 1``), per wrapped sublayer (attention and FFN), hold the
  dynamic form of Zhu et al. 2024: static ``alpha`` (M x (M+1)) and ``beta`` (M), dynamic
  projections ``d -> M+1`` and ``d -> 1``, an RMSNorm weight and two scalar scales.
* The Engram module (per Engram layer) is the public demo's: tables of ``sum(primes)`` rows of
  ``d_head``, a value projection and ``M`` key projections ``d_mem -> d`` with biases, two
  RMSNorms per branch for the gate, and a depthwise causal conv over ``M * d`` channels with
  one RMSNorm per branch (none of the two with ``kernel_size`` 0, DeepSeek-V4.1's form).
* An Engram row is ``d_head`` values in the Engram dtype plus, with ``scale_block``, one byte per
  block scale (DeepSeek-V4.1-Flash: 256 fp8 E4M3 values + 8 UE8M0 scales = 264 B). Every byte
  figure (tables, rows read, copies, gathers) uses that row size; parameter counts do not count
  the scales (they are not parameters, as in the checkpoint's tensor count).
* "Active" parameters are those a token's matrix multiplies and norms use: everything but the
  routed experts it was not sent to and the lookup tables. The input embedding and the Engram
  tables are lookups (a token reads one row, or ``rows_per_token`` rows), so they are not
  active; the LM head is, and so is a tied embedding (it is the LM head). With this rule the
  paper's MoE-27B comes to 3.84B active (paper: 3.8B). Engram values read per token are
  reported separately (``engram_rows_read_per_token``, in parameters).
* KV cache per token: GQA stores K and V per KV head; MLA stores the compressed latent and
  the shared RoPE key (``kv_lora_rank + qk_rope_head_dim``), as DeepSeek-V3 inference does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from planner.primes import engram_table_primes
from planner.specs.model import DTYPE_BYTES, SCALE_BYTES, GQAAttention, MLAAttention, ModelSpec
from planner.specs.placement import EngramPlacement


# ----------------------------------------------------------------------------- per component


def attention_params(model: ModelSpec) -> int:
    d, att = model.d_model, model.attention
    if isinstance(att, GQAAttention):
        hd = model.head_dim
        q, kv = att.n_heads * hd, att.n_kv_heads * hd
        bias = (q + 2 * kv) if att.qkv_bias else 0
        return d * q + 2 * d * kv + q * d + bias
    assert isinstance(att, MLAAttention)
    h, qk = att.n_heads, att.qk_nope_head_dim + att.qk_rope_head_dim
    if att.q_lora_rank:
        q_params = d * att.q_lora_rank + att.q_lora_rank + att.q_lora_rank * h * qk
    else:
        q_params = d * h * qk
    kv_params = (
        d * (att.kv_lora_rank + att.qk_rope_head_dim)
        + att.kv_lora_rank
        + att.kv_lora_rank * h * (att.qk_nope_head_dim + att.v_head_dim)
    )
    return q_params + kv_params + h * att.v_head_dim * d


def swiglu_params(d_model: int, width: int) -> int:
    return 3 * d_model * width


def hyper_connection_params(model: ModelSpec) -> int:
    """Parameters of one hyper-connection wrapper (0 when hc_mult == 1). mHC: the projection
    ``phi`` from the flattened ``M d`` branches to ``M^2 + 2M`` coefficients, their biases and
    three gates (``reference_model.hyper.ManifoldHyperConnection``). Dynamic HC: the static mixes,
    the per-branch projections ``d -> M+1`` and ``d -> 1``, a norm gain and two scales."""
    m, d = model.hc_mult, model.d_model
    if m == 1:
        return 0
    if model.hc_kind == "mhc":
        return m * d * (m * m + 2 * m) + m * m + 2 * m + 3
    return m * (m + 1) + m + d * (m + 1) + d + d + 2


def hyper_connection_flops(model: ModelSpec) -> int:
    """FLOPs of one hyper-connection wrapper per token (0 when hc_mult == 1): 2 per
    multiply-add. mHC: the projection of the flattened branches (``2 M d (M^2 + 2M)``), their
    RMS (``2 M d``), ``Hpre x`` (``2 M d``), ``Hres x`` (``2 M^2 d``), the depth sum
    (``2 M d``) and Sinkhorn-Knopp (``exp`` and ``4 M^2`` a round). Dynamic HC: the per-branch
    norm and projections (``M (2d + 2d (M + 2))``), the width mix (``2 M (M + 1) d``) and the
    depth sum (``2 M d``)."""
    m, d = model.hc_mult, model.d_model
    if m == 1:
        return 0
    if model.hc_kind == "mhc":
        return (2 * m * d * (m * m + 2 * m) + 2 * m * d + 2 * m * d + 2 * m * m * d + 2 * m * d
                + m * m + 4 * m * m * model.hc_sinkhorn_iters)
    return m * (2 * d + 2 * d * (m + 2)) + 2 * m * (m + 1) * d + 2 * m * d


def engram_dense_params(model: ModelSpec) -> int:
    """Engram module parameters other than its tables, for one Engram layer."""
    if model.engram is None:
        return 0
    d, m, d_mem, k = model.d_model, model.hc_mult, model.engram.d_mem, model.engram.kernel_size
    projections = (m + 1) * (d_mem * d + d)  # value + one key per branch, with biases
    gate_norms = 2 * m * d
    conv = (m * d * k + m * d) if k else 0  # depthwise weights + per-branch RMSNorm; 0 = no conv
    return projections + gate_norms + conv


def engram_table_rows(model: ModelSpec) -> dict[int, int]:
    """Rows of each Engram layer's fused table (the sum of its heads' primes)."""
    if model.engram is None:
        return {}
    e = model.engram
    primes = engram_table_primes(e.layer_ids, e.table_size_per_head, e.n_heads)
    return {layer: sum(sum(heads) for heads in orders) for layer, orders in primes.items()}


# ----------------------------------------------------------------------------- totals


@dataclass(frozen=True)
class ParamCounts:
    """Parameter counts of a model spec, by component. All integers."""

    embedding: int
    lm_head: int
    attention: int
    dense_ffn: int
    routed_experts: int
    shared_experts: int
    router: int
    norms: int
    hyper_connections: int
    engram_dense: int
    engram_tables: int
    active: int
    engram_rows_read_per_token: int = field(default=0)

    @property
    def total(self) -> int:
        return (
            self.embedding
            + self.lm_head
            + self.attention
            + self.dense_ffn
            + self.routed_experts
            + self.shared_experts
            + self.router
            + self.norms
            + self.hyper_connections
            + self.engram_dense
            + self.engram_tables
        )

    @property
    def backbone(self) -> int:
        """Everything but the Engram tables (what lives on the device in every placement)."""
        return self.total - self.engram_tables

    def as_dict(self) -> dict[str, int]:
        out = asdict(self)
        out["total"] = self.total
        out["backbone"] = self.backbone
        return out


def param_counts(model: ModelSpec) -> ParamCounts:
    d, n = model.d_model, model.n_layers
    moe = model.ffn.moe
    n_moe = sum(model.is_moe_layer(i) for i in range(n))
    n_dense = n - n_moe

    embedding = model.vocab_size * d
    lm_head = 0 if model.tie_embeddings else model.vocab_size * d
    attention = n * attention_params(model)
    dense_ffn = n_dense * swiglu_params(d, model.ffn.dense_width)
    if moe is not None:
        expert = swiglu_params(d, moe.expert_width)
        routed = n_moe * moe.n_routed_experts * expert
        shared = n_moe * moe.n_shared_experts * expert
        router = n_moe * moe.n_routed_experts * d
        routed_active = n_moe * moe.top_k * expert
    else:
        routed = shared = router = routed_active = 0
    norms = 2 * n * d + d  # pre-attention and pre-FFN per block, final norm
    hyper = 2 * n * hyper_connection_params(model)
    n_engram = len(model.engram_layer_ids)
    engram_dense = n_engram * engram_dense_params(model)
    engram_tables = sum(engram_table_rows(model).values()) * (model.engram.d_head if model.engram else 0)

    active = (
        (embedding if model.tie_embeddings else 0) + lm_head + attention + dense_ffn + routed_active + shared + router + norms
        + hyper + engram_dense
    )
    rows_read = n_engram * (model.engram.d_mem if model.engram else 0)
    return ParamCounts(
        embedding=embedding,
        lm_head=lm_head,
        attention=attention,
        dense_ffn=dense_ffn,
        routed_experts=routed,
        shared_experts=shared,
        router=router,
        norms=norms,
        hyper_connections=hyper,
        engram_dense=engram_dense,
        engram_tables=engram_tables,
        active=active,
        engram_rows_read_per_token=rows_read,
    )


# ----------------------------------------------------------------------------- bytes


def weight_bytes(model: ModelSpec) -> float:
    """Bytes of every weight except the Engram tables, in the model dtype (routed experts in
    their own, ``ffn.moe.routed_expert_dtype``, where given)."""
    counts, width = param_counts(model), DTYPE_BYTES[model.dtype]
    routed = model.ffn.moe.routed_bytes_per_param if model.ffn.moe is not None else None
    if routed is None:
        return counts.backbone * width
    return (counts.backbone - counts.routed_experts) * width + counts.routed_experts * routed


def engram_row_bytes(model: ModelSpec) -> int:
    """Bytes of one table row: its values in the Engram dtype plus its block scales, if any."""
    assert model.engram is not None
    e = model.engram
    return e.d_head * DTYPE_BYTES[e.dtype] + e.scales_per_row * SCALE_BYTES


def engram_table_bytes(model: ModelSpec) -> dict[int, float]:
    """Bytes of each Engram layer's table."""
    if model.engram is None:
        return {}
    row = engram_row_bytes(model)
    return {layer: rows * row for layer, rows in engram_table_rows(model).items()}


def engram_bytes_per_token(model: ModelSpec) -> float:
    """Bytes one token reads from one Engram layer's table (before de-duplication)."""
    if model.engram is None:
        return 0.0
    return model.engram.rows_per_token * engram_row_bytes(model)


def kv_cache_bytes_per_token(model: ModelSpec) -> float:
    """KV-cache bytes one token occupies across all layers, in the model dtype."""
    att, width = model.attention, DTYPE_BYTES[model.dtype]
    if isinstance(att, GQAAttention):
        per_layer = 2 * att.n_kv_heads * model.head_dim
    else:
        per_layer = att.kv_lora_rank + att.qk_rope_head_dim
    return model.n_layers * per_layer * width


@dataclass(frozen=True)
class TierFootprint:
    """Bytes a placement puts in each tier (per device for ``device``, per node otherwise)."""

    device: float
    host: float
    disk: float
    breakdown: dict[str, float]

    def as_dict(self) -> dict:
        return {"device": self.device, "host": self.host, "disk": self.disk, "breakdown": self.breakdown}


def tier_footprint(
    model: ModelSpec, placement: EngramPlacement, kv_cache_tokens: int = 0
) -> TierFootprint:
    """Where the bytes go. ``kv_cache_tokens`` is the number of tokens resident in the KV cache
    (e.g. max_num_seqs x mean sequence length) on one device.

    Offloaded tables keep ``cache_fraction`` of their rows hot on the device; the disk tier
    keeps ``host_cache_fraction`` of its rows in DRAM.
    """
    breakdown: dict[str, float] = {
        "weights": weight_bytes(model),
        "kv_cache": kv_cache_tokens * kv_cache_bytes_per_token(model),
    }
    device = breakdown["weights"] + breakdown["kv_cache"]
    host = disk = 0.0
    for layer, table in engram_table_bytes(model).items():
        tier = placement.tier_of(layer)
        if tier == "device":
            breakdown[f"engram_table_L{layer}"] = table
            device += table
            continue
        cache = table * placement.cache_fraction
        breakdown[f"engram_cache_L{layer}"] = cache
        device += cache
        if tier == "host":
            breakdown[f"engram_host_L{layer}"] = table
            host += table
        else:
            breakdown[f"engram_disk_L{layer}"] = table
            page_cache = table * placement.host_cache_fraction
            breakdown[f"engram_page_cache_L{layer}"] = page_cache
            disk += table
            host += page_cache
    return TierFootprint(device=device, host=host, disk=disk, breakdown=breakdown)


def model_summary(
    model: ModelSpec, placement: EngramPlacement | None = None, kv_cache_tokens: int = 0
) -> dict:
    """Everything ``engram-planner params`` reports, as plain values (SI units)."""
    placement = placement or EngramPlacement()
    counts = param_counts(model)
    out: dict = {
        "model": model.name,
        "params": counts.as_dict(),
        "dtype": model.dtype,
        "weight_bytes": weight_bytes(model),
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model),
        "engram": None,
        "footprint": tier_footprint(model, placement, kv_cache_tokens).as_dict(),
        "placement": placement.model_dump(mode="json"),
        "kv_cache_tokens": kv_cache_tokens,
    }
    if model.engram is not None:
        e = model.engram
        primes = engram_table_primes(e.layer_ids, e.table_size_per_head, e.n_heads)
        rows = engram_table_rows(model)
        table_bytes = engram_table_bytes(model)
        out["engram"] = {
            "dtype": e.dtype,
            "row_width": e.d_head,
            "scale_block": e.scale_block,
            "row_bytes": engram_row_bytes(model),
            "rows_per_token_per_layer": e.rows_per_token,
            "bytes_per_token_per_layer": engram_bytes_per_token(model),
            "layers": [
                {
                    "layer_id": layer,
                    "rows": rows[layer],
                    "params": rows[layer] * e.d_head,
                    "bytes": table_bytes[layer],
                    "tier": placement.tier_of(layer),
                    "primes_per_order": {str(order): primes[layer][i] for i, order in enumerate(e.orders)},
                }
                for layer in e.layer_ids
            ],
        }
    return out
