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


class InferenceWorkload(Spec):
    """``num_sequences`` requests served by continuous batching (vLLM-style): each engine step
    runs at most ``max_num_seqs`` sequences and ``max_batched_tokens`` tokens, mixing decode
    tokens with prefill chunks. ``arrival_rate: null`` puts every request in the queue at time 0
    (an offline batch); a rate gives Poisson arrivals."""

    kind: Literal["inference"] = "inference"
    num_sequences: PositiveInt
    prompt_len: LengthDistribution
    output_len: LengthDistribution
    arrival_rate: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="requests per second (Poisson); null = all at t = 0"
    )
    max_batched_tokens: PositiveInt = 8192
    max_num_seqs: PositiveInt = 256
    chunked_prefill: bool = True
    seed: int = 0


class TrainingWorkload(Spec):
    """Training steps of ``batch_size`` sequences of ``seq_len`` tokens per device. Engram rows
    are fetched for the next batch while the current one runs; their gradients are written
    back to the tier that holds the table and applied there by a sparse optimiser."""

    kind: Literal["training"] = "training"
    batch_size: PositiveInt
    seq_len: PositiveInt
    steps: PositiveInt = 4
    table_optimizer: Literal["adam", "sgd"] = "adam"
    activation_checkpointing: bool = False
    seed: int = 0


Workload = Annotated[Union[InferenceWorkload, TrainingWorkload], Field(discriminator="kind")]
