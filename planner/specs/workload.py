"""Workloads: offline or online inference under continuous batching, or a training step."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BeforeValidator, Field, model_validator

from planner.specs.base import Spec

PositiveInt = Annotated[int, Field(gt=0)]


class FixedLength(Spec):
    kind: Literal["fixed"] = "fixed"
    value: PositiveInt


class UniformLength(Spec):
    """Integers drawn uniformly from [low, high]."""

    kind: Literal["uniform"] = "uniform"
    low: PositiveInt
    high: PositiveInt

    @model_validator(mode="after")
    def _ordered(self) -> "UniformLength":
        if self.low > self.high:
            raise ValueError(f"low = {self.low} is above high = {self.high}")
        return self


class LognormalLength(Spec):
    """Lengths whose logarithm is normal with the given median and sigma, clipped to
    [min, max]: the usual shape of chat prompt and answer lengths."""

    kind: Literal["lognormal"] = "lognormal"
    median: Annotated[float, Field(gt=0)]
    sigma: Annotated[float, Field(ge=0)] = 1.0
    min: PositiveInt = 1
    max: PositiveInt = 32768

    @model_validator(mode="after")
    def _ordered(self) -> "LognormalLength":
        if self.min > self.max:
            raise ValueError(f"min = {self.min} is above max = {self.max}")
        return self


def _int_is_fixed(value):
    if isinstance(value, int) and not isinstance(value, bool):
        return {"kind": "fixed", "value": value}
    return value


LengthDistribution = Annotated[
    Union[FixedLength, UniformLength, LognormalLength],
    Field(discriminator="kind"),
    BeforeValidator(_int_is_fixed),
]


def length_bounds(dist: FixedLength | UniformLength | LognormalLength) -> tuple[int, int]:
    """Smallest and largest length a distribution can produce."""
    if isinstance(dist, FixedLength):
        return dist.value, dist.value
    if isinstance(dist, UniformLength):
        return dist.low, dist.high
    return dist.min, dist.max


Scheduler = Literal["vllm", "nano-vllm"]

# The KV block size each engine uses unless told otherwise: vLLM's ``--block-size`` default
# (16 tokens, vllm/config CacheConfig) and nano-vLLM's ``kvcache_block_size`` (256, its config.py).
DEFAULT_KV_BLOCK = {"vllm": 16, "nano-vllm": 256}
# nano-vLLM's Config: max_model_len = 4096, capped by the model's max_position_embeddings; vLLM
# takes the model's own limit.
NANO_VLLM_MAX_MODEL_LEN = 4096


class InferenceWorkload(Spec):
    """``num_sequences`` requests served by continuous batching: each engine step runs at most
    ``max_num_seqs`` sequences and ``max_batched_tokens`` tokens. ``scheduler`` picks the
    engine's policy (:mod:`planner.sim.schedulers`): ``vllm`` mixes decode tokens with chunked
    prefill, ``nano-vllm`` runs whole prompts first and decodes otherwise. Admission is bounded by
    the paged KV cache: ``gpu_memory_utilization`` of device memory, less weights, hot rows and
    activation workspace, in blocks of ``kv_block_size`` tokens; a sequence that cannot get a
    block is preempted and recomputed later. ``arrival_rate: null`` puts every request in the
    queue at time 0 (an offline batch); a rate gives Poisson arrivals."""

    kind: Literal["inference"] = "inference"
    num_sequences: PositiveInt
    prompt_len: LengthDistribution
    output_len: LengthDistribution
    arrival_rate: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="requests per second (Poisson); null = all at t = 0"
    )
    max_batched_tokens: PositiveInt = 8192
    max_num_seqs: PositiveInt = 256
    tensor_parallel_size: PositiveInt = Field(
        default=1, description="devices serving one model replica with tensor parallelism (vLLM/SGLang "
        "--tensor-parallel-size); must divide hardware.device.count, the node's other groups are data-parallel replicas")
    chunked_prefill: bool = True
    scheduler: Scheduler = Field(default="vllm", description="engine scheduling policy: vllm (decode first, "
                                 "chunked prefill) or nano-vllm (whole prompts first, then decode)")
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.9, description="share of device memory the engine may use (weights, activations, KV cache); "
        "vLLM's and nano-vLLM's default 0.9")
    kv_block_size: PositiveInt | None = Field(
        default=None, description="tokens per KV-cache block; null = the scheduler's engine default "
        "(vllm 16, nano-vllm 256)")
    max_model_len: PositiveInt | None = Field(
        default=None, description="longest sequence (prompt + output) the engine accepts; null = the engine's "
        "default (vllm: model.max_seq_len; nano-vllm: 4096, at most model.max_seq_len)")
    cuda_graphs: bool = Field(default=True, description="replay CUDA graphs for decode-only steps of up to "
                              "cuda_graph_max_batch sequences (false: eager everywhere, enforce_eager)")
    cuda_graph_max_batch: PositiveInt | None = Field(
        default=None, description="largest decode batch run as a graph; null = the engine's default (vllm: "
        "min(2 x max_num_seqs, 512, max_batched_tokens); nano-vllm: min(max_num_seqs, 512))")
    seed: int = 0

    @property
    def graph_max_batch(self) -> int:
        """The largest decode batch replayed as a CUDA graph (0: none)."""
        if not self.cuda_graphs:
            return 0
        if self.cuda_graph_max_batch is not None:
            return self.cuda_graph_max_batch
        if self.scheduler == "nano-vllm":  # nano-vLLM model_runner.capture_cudagraph
            return min(self.max_num_seqs, 512)
        return min(2 * self.max_num_seqs, 512, self.max_batched_tokens)  # vLLM _set_cudagraph_sizes

    def model_len(self, model_max: int) -> int:
        """The longest sequence the engine accepts for a model of ``model_max`` positions."""
        if self.max_model_len is not None:
            return self.max_model_len
        return min(NANO_VLLM_MAX_MODEL_LEN, model_max) if self.scheduler == "nano-vllm" else model_max

    @property
    def block_size(self) -> int:
        """Tokens per KV block: ``kv_block_size`` or the scheduler's default."""
        return self.kv_block_size or DEFAULT_KV_BLOCK[self.scheduler]


class TrainingWorkload(Spec):
    """Training steps of ``batch_size`` sequences of ``seq_len`` tokens per device. Engram rows
    are fetched for the next batch while the current one runs; their gradients are written
    back to the tier that holds the table and applied there by a sparse optimiser."""

    kind: Literal["training"] = "training"
    tensor_parallel_size: PositiveInt = Field(
        default=1, description="devices serving one model replica with tensor parallelism (vLLM/SGLang "
        "--tensor-parallel-size); must divide hardware.device.count, the node's other groups are data-parallel replicas")
    batch_size: PositiveInt
    seq_len: PositiveInt
    steps: PositiveInt = 4
    table_optimizer: Literal["adam", "sgd"] = "adam"
    activation_checkpointing: bool = False
    seed: int = 0


Workload = Annotated[Union[InferenceWorkload, TrainingWorkload], Field(discriminator="kind")]
