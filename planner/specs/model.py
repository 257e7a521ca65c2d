"""The model spec: one description that builds the torch model and feeds the cost model.

Shapes follow DeepSeek-V3 (MLA attention, DeepSeekMoE FFN) and Llama-style dense backbones
(GQA attention, SwiGLU FFN), plus Engram (ENGRAM.md) and hyper-connections (``hc_mult``
residual branches, Zhu et al. 2024, "Hyper-Connections"). Parameter and byte counts derived
from this spec live in :mod:`planner.accounting` and nowhere else.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from planner.specs.base import Spec
from planner.specs.limits import ENGRAM_TABLES, LAYERS, MAX_ROW_ID, ROW_ID_SLACK

# ``fp8`` is one byte per value; for Engram rows it is the E4M3 format DeepSeek-V4.1-Flash
# stores its tables in (the byte count is what the planner uses; the format only names it).
DType = Literal["fp32", "bf16", "fp16", "fp8"]
DTYPE_BYTES: dict[str, int] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1}
# Weights may also be stored in 4 bits (routed experts only: MoESpec.routed_expert_dtype).
WEIGHT_BYTES: dict[str, float] = {**DTYPE_BYTES, "fp4": 0.5}
SCALE_BYTES = 1  # one block scale: a power of two stored as its exponent byte (UE8M0)

PositiveInt = Annotated[int, Field(gt=0)]


class GQAAttention(Spec):
    """Grouped-query attention (Llama 3, Qwen): ``n_kv_heads`` key/value heads shared by groups
    of query heads. ``n_kv_heads == n_heads`` is multi-head attention."""

    kind: Literal["gqa"] = "gqa"
    n_heads: PositiveInt
    n_kv_heads: PositiveInt
    head_dim: PositiveInt | None = Field(
        default=None, description="per-head width; default d_model / n_heads"
    )
    qkv_bias: bool = False

    @model_validator(mode="after")
    def _groups_divide(self) -> "GQAAttention":
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"n_heads = {self.n_heads} is not a multiple of n_kv_heads = {self.n_kv_heads}: "
                "each key/value head must serve a whole group of query heads"
            )
        return self


class MLAAttention(Spec):
    """Multi-head latent attention as in DeepSeek-V2/V3: keys and values are compressed into a
    ``kv_lora_rank`` latent (the only thing cached, with the shared RoPE key), queries
    optionally through a ``q_lora_rank`` latent (0 = no query compression)."""

    kind: Literal["mla"] = "mla"
    n_heads: PositiveInt
    q_lora_rank: int = Field(default=0, ge=0)
    kv_lora_rank: PositiveInt
    qk_nope_head_dim: PositiveInt
    qk_rope_head_dim: PositiveInt
    v_head_dim: PositiveInt


Attention = Annotated[Union[GQAAttention, MLAAttention], Field(discriminator="kind")]


class MoESpec(Spec):
    """DeepSeekMoE: ``n_shared_experts`` always-on experts plus top-k of ``n_routed_experts``,
    each a SwiGLU MLP of width ``expert_width``; routing is auxiliary-loss-free (a per-expert
    bias adjusted by ``bias_update_rate`` steers load, DeepSeek-V3 section 2.1.2)."""

    n_routed_experts: PositiveInt
    n_shared_experts: int = Field(default=1, ge=0)
    top_k: PositiveInt
    expert_width: PositiveInt
    n_leading_dense_layers: int = Field(default=1, ge=0)
    bias_update_rate: float = Field(default=1e-3, ge=0)
    routed_expert_dtype: Literal["fp32", "bf16", "fp16", "fp8", "fp4"] | None = Field(
        default=None, description="storage of the routed experts' weights when it differs from the model's "
        "(DeepSeek-V4.1-Flash: fp4 experts beside fp8 weights); none: the model dtype")
    routed_expert_scale_block: PositiveInt | None = Field(
        default=None, description="one 1-byte scale per this many routed-expert weights (MXFP4: 32)")

    @property
    def routed_bytes_per_param(self) -> float | None:
        """Bytes per routed-expert weight (scales included), None for the model dtype."""
        if self.routed_expert_dtype is None:
            return None
        scale = SCALE_BYTES / self.routed_expert_scale_block if self.routed_expert_scale_block else 0.0
        return WEIGHT_BYTES[self.routed_expert_dtype] + scale

    @model_validator(mode="after")
    def _top_k_fits(self) -> "MoESpec":
        if self.top_k > self.n_routed_experts:
            raise ValueError(
                f"top_k = {self.top_k} is larger than n_routed_experts = {self.n_routed_experts}"
            )
        return self


class FFNSpec(Spec):
    """SwiGLU feed-forward. Dense layers use ``dense_width``; with ``moe`` set, every layer after
    the first ``moe.n_leading_dense_layers`` is a MoE layer."""

    dense_width: PositiveInt
    moe: MoESpec | None = None


class EngramSpec(Spec):
    """Engram conditional memory (ENGRAM.md): hashed n-gram tables read by token ids alone.

    ``table_size_per_head[i]`` is the configured size of order ``i + 2``; each head takes a
    distinct prime at or above it (see :mod:`planner.primes`). A row is
    ``embed_dim_per_ngram / n_heads`` wide and the memory vector of a token is
    ``d_mem = (max_ngram - 1) * embed_dim_per_ngram`` wide (the paper's ``d_mem``).

    ``scale_block`` (optional) adds one 1-byte power-of-two scale per that many values of a row,
    stored with the row (DeepSeek-V4.1-Flash: fp8 E4M3 values with a UE8M0 scale per 32, so a
    256-wide row is 256 + 8 = 264 bytes). ``kernel_size`` 0 means no short convolution (the
    module's output is the gated value itself, as in DeepSeek-V4.1).
    """

    layer_ids: list[Annotated[int, Field(ge=0)]] = Field(min_length=1)
    max_ngram: int = Field(default=3, ge=2, description="orders 2..max_ngram are hashed")
    n_heads: PositiveInt = Field(default=8, description="hash heads per n-gram order")
    table_size_per_head: list[Annotated[int, Field(gt=1)]] = Field(
        description="rows per head before rounding up to primes, one per order 2..N "
        "(one integer means the same size for every order)"
    )
    embed_dim_per_ngram: PositiveInt = Field(description="width of one order's concatenated heads")
    dtype: DType = "bf16"
    scale_block: PositiveInt | None = Field(
        default=None,
        description="one 1-byte power-of-two scale per this many values of a row, stored with the row, "
        "as DeepSeek-V4.1-Flash's UE8M0 block scales (32); must divide the row width; null = no scales",
    )
    seed: int = 0
    pad_id: int = Field(default=2, ge=0, description="raw tokenizer id used before sequence start")
    kernel_size: int = Field(
        default=4, ge=0,
        description="taps of the depthwise causal short convolution; 0 = no convolution (DeepSeek-V4.1)",
    )
    gate: Literal["signed_sqrt", "paper"] = Field(
        default="signed_sqrt",
        description="signed_sqrt: sigmoid(sign(s) sqrt|s|) as in the public demo; "
        "paper: sigmoid(s) as in the paper's equations",
    )

    @model_validator(mode="before")
    @classmethod
    def _broadcast_size(cls, data):
        # One integer means "the same size for every order".
        if isinstance(data, dict) and isinstance(data.get("table_size_per_head"), int):
            orders = int(data.get("max_ngram", 3)) - 1 if str(data.get("max_ngram", 3)).isdigit() else 1
            layers = len(data["layer_ids"]) if isinstance(data.get("layer_ids"), list) else 1
            heads = data["n_heads"] if isinstance(data.get("n_heads"), int) else 1
            ENGRAM_TABLES.check(layers * orders * heads, "", f"{layers} layers x {orders:,} orders (max_ngram - 1) "
                                f"x {heads:,} heads")
            data = {**data, "table_size_per_head": [data["table_size_per_head"]] * max(orders, 1)}
        return data

    @model_validator(mode="after")
    def _shapes(self) -> "EngramSpec":
        if len(set(self.layer_ids)) != len(self.layer_ids):
            raise ValueError(f"layer_ids = {self.layer_ids} lists a layer twice")
        if len(self.table_size_per_head) != self.max_ngram - 1:
            raise ValueError(
                f"table_size_per_head has {len(self.table_size_per_head)} entries but "
                f"max_ngram = {self.max_ngram} needs one per order 2..{self.max_ngram} "
                f"({self.max_ngram - 1})"
            )
        ENGRAM_TABLES.check(len(self.layer_ids) * (self.max_ngram - 1) * self.n_heads, "",
                            f"{len(self.layer_ids)} layers x {self.max_ngram - 1:,} orders x {self.n_heads:,} heads")
        rows = self.n_heads * sum(self.table_size_per_head)
        if rows > MAX_ROW_ID - ROW_ID_SLACK:
            raise ValueError(
                f"table_size_per_head = {_sizes_text(self.table_size_per_head)} with n_heads = {self.n_heads} "
                f"makes a fused table of about {rows:.3g} rows per layer, past what 64-bit row ids "
                f"address ({MAX_ROW_ID:.3g})"
            )
        if self.embed_dim_per_ngram % self.n_heads:
            raise ValueError(
                f"embed_dim_per_ngram = {self.embed_dim_per_ngram} does not split into "
                f"n_heads = {self.n_heads} equal rows (a row would be "
                f"{self.embed_dim_per_ngram / self.n_heads:g} wide)"
            )
        if self.scale_block is not None and self.d_head % self.scale_block:
            raise ValueError(
                f"scale_block = {self.scale_block} does not divide the row width "
                f"embed_dim_per_ngram / n_heads = {self.d_head}: every scale covers a whole block of a row"
            )
        return self

    @property
    def orders(self) -> list[int]:
        return list(range(2, self.max_ngram + 1))

    @property
    def d_head(self) -> int:
        """Width of one table row."""
        return self.embed_dim_per_ngram // self.n_heads

    @property
    def scales_per_row(self) -> int:
        """Block scales stored with each row (0 without ``scale_block``)."""
        return self.d_head // self.scale_block if self.scale_block else 0

    @property
    def d_mem(self) -> int:
        """Width of a token's concatenated memory vector e_t."""
        return (self.max_ngram - 1) * self.embed_dim_per_ngram

    @property
    def rows_per_token(self) -> int:
        """Table rows one token reads in one Engram layer."""
        return (self.max_ngram - 1) * self.n_heads


def _sizes_text(sizes: list[int]) -> str:
    return "[" + ", ".join(f"{n:.3g}" if n >= 1e15 else str(n) for n in sizes) + "]"


class ModelSpec(Spec):
    """A decoder-only transformer: embedding, ``n_layers`` blocks, final norm, LM head.

    A block is ``h += Engram(h, ids)`` (Engram layers only), ``h += Attn(norm(h))``,
    ``h += FFN(norm(h))``; with ``hc_mult > 1`` the residual stream has that many branches
    mixed by hyper-connections around attention and FFN.
    """

    name: str
    description: str = ""
    vocab_size: PositiveInt
    n_layers: PositiveInt
    d_model: PositiveInt
    max_seq_len: PositiveInt = 4096
    attention: Attention
    ffn: FFNSpec
    hc_mult: PositiveInt = Field(default=1, description="hyper-connection branches; 1 = plain")
    hc_kind: Literal["mhc", "dynamic"] = Field(
        default="mhc", description="mhc: manifold-constrained hyper-connections (arXiv 2512.24880; the Engram "
        "paper's backbones), residual mixing projected onto doubly-stochastic matrices; dynamic: the "
        "unconstrained dynamic hyper-connections they refine (arXiv 2409.19606)")
    hc_sinkhorn_iters: PositiveInt = Field(
        default=20, le=1000, description="Sinkhorn-Knopp iterations of mHC's residual projection (the paper: 20)")
    engram: EngramSpec | None = None
    dtype: DType = "bf16"
    tie_embeddings: bool = False
    norm_eps: float = Field(default=1e-6, gt=0)
    rope_theta: float = Field(default=10000.0, gt=0)

    @field_validator("name")
    @classmethod
    def _name_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("name must not be blank")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "ModelSpec":
        LAYERS.check(self.n_layers, "n_layers")
        att = self.attention
        if isinstance(att, GQAAttention) and att.head_dim is None and self.d_model % att.n_heads:
            raise ValueError(
                f"attention.n_heads = {att.n_heads} does not divide d_model = {self.d_model}; "
                "set attention.head_dim explicitly"
            )
        if self.engram is not None:
            for i, layer in enumerate(self.engram.layer_ids):
                if layer >= self.n_layers:
                    raise ValueError(
                        f"engram.layer_ids[{i}] = {layer} is past the last layer: ids are 0-based "
                        f"and n_layers = {self.n_layers}, so the last block is {self.n_layers - 1}"
                    )
        moe = self.ffn.moe
        if moe is not None and moe.n_leading_dense_layers > self.n_layers:
            raise ValueError(
                f"ffn.moe.n_leading_dense_layers = {moe.n_leading_dense_layers} exceeds "
                f"n_layers = {self.n_layers}"
            )
        return self

    # ---- derived shapes used by the torch model and the cost model alike

    @property
    def head_dim(self) -> int:
        att = self.attention
        if isinstance(att, GQAAttention):
            return att.head_dim or self.d_model // att.n_heads
        return att.qk_nope_head_dim + att.qk_rope_head_dim

    def is_moe_layer(self, layer_id: int) -> bool:
        moe = self.ffn.moe
        return moe is not None and layer_id >= moe.n_leading_dense_layers

    @property
    def engram_layer_ids(self) -> list[int]:
        return list(self.engram.layer_ids) if self.engram else []

    def without_engram(self) -> "ModelSpec":
        """The same backbone with no Engram: the baseline every comparison is made against."""
        return self.model_copy(update={"engram": None, "name": f"{self.name} (no Engram)"})
