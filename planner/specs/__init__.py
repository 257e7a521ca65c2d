"""Typed, torch-free descriptions of models, hardware, workloads and placements."""

from planner.specs.base import Spec
from planner.specs.hardware import (
    DeviceSpec,
    EfficiencySpec,
    HardwareSpec,
    HostSpec,
    LinkSpec,
    NetworkSpec,
    NVMeSpec,
    PriceSpec,
)
from planner.specs.model import (
    DTYPE_BYTES,
    EngramSpec,
    FFNSpec,
    GQAAttention,
    MLAAttention,
    ModelSpec,
    MoESpec,
)
from planner.specs.placement import EngramPlacement, Tier
from planner.specs.scenario import Scenario
from planner.specs.workload import (
    FixedLength,
    InferenceWorkload,
    LognormalLength,
    TrainingWorkload,
    UniformLength,
    length_bounds,
)

__all__ = [
    "DTYPE_BYTES",
    "DeviceSpec",
    "EfficiencySpec",
    "EngramPlacement",
    "EngramSpec",
    "FFNSpec",
    "FixedLength",
    "GQAAttention",
    "HardwareSpec",
    "HostSpec",
    "InferenceWorkload",
    "LinkSpec",
    "LognormalLength",
    "MLAAttention",
    "ModelSpec",
    "MoESpec",
    "NVMeSpec",
    "NetworkSpec",
    "PriceSpec",
    "Scenario",
    "Spec",
    "Tier",
    "TrainingWorkload",
    "UniformLength",
    "length_bounds",
]
