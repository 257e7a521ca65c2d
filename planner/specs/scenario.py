"""A scenario: one model on one hardware profile under one workload and Engram placement.

In YAML, ``model`` and ``hardware`` may be given inline or by reference: a bundled name
(``engram-27b``, ``h100-sxm``) or a path relative to the scenario file. References are
resolved by :func:`planner.loading.load_scenario` before validation.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from planner.specs.base import Spec
from planner.specs.hardware import HardwareSpec
from planner.specs.model import ModelSpec
from planner.specs.placement import EngramPlacement
from planner.specs.workload import InferenceWorkload, Workload, length_bounds


class Scenario(Spec):
    name: str = "scenario"
    description: str = ""
    model: ModelSpec
    hardware: HardwareSpec
    workload: Workload
    placement: EngramPlacement = EngramPlacement()
    ngram_stats: str | None = Field(
        default=None,
        description="JSON written by `engram-planner ngram-stats`; its measured de-duplication "
        "and cache-hit curves replace the Zipf model",
    )

    @model_validator(mode="after")
    def _consistent(self) -> "Scenario":
        engram_layers = set(self.model.engram_layer_ids)
        for layer in self.placement.layer_tiers:
            if layer not in engram_layers:
                raise ValueError(
                    f"placement.layer_tiers names layer {layer}, which has no Engram module "
                    f"(model.engram.layer_ids = {sorted(engram_layers)})"
                )
        if self.placement.any_offloaded(self.model.engram_layer_ids):
            tiers = {self.placement.tier_of(layer) for layer in engram_layers}
            if "disk" in tiers and self.hardware.nvme is None:
                raise ValueError(
                    f"placement puts Engram tables on disk but hardware has no nvme section "
                    f"({self.hardware.name} has no data drives): add one, e.g. `nvme: {{capacity: 7.68 TB, "
                    "read_bandwidth: 6.9 GB/s, read_iops: 1400000}` (one Gen4 U.2 drive; in the dashboard: "
                    "Hardware, YAML overrides), pick a profile with drives (h100-sxm, h800, h200, a100-80gb), "
                    "or use the host tier"
                )
        workload = self.workload
        tp, devices = workload.tensor_parallel_size, self.hardware.device.count * self.hardware.device.ranks
        if self.hardware.device.ranks not in (1, tp) or devices % tp:
            raise ValueError(f"workload.tensor_parallel_size = {tp} does not divide hardware.device.count = "
                             f"{devices}: a tensor-parallel group takes whole devices of one node")
        if isinstance(workload, InferenceWorkload):
            longest = length_bounds(workload.prompt_len)[1] + length_bounds(workload.output_len)[1]
            limit = workload.max_model_len
            if limit is not None and limit > self.model.max_seq_len:
                raise ValueError(
                    f"workload.max_model_len = {limit} exceeds model.max_seq_len = {self.model.max_seq_len}"
                )
            if longest > workload.model_len(self.model.max_seq_len):
                where = (f"workload.max_model_len = {limit}" if limit is not None
                         else f"model.max_seq_len = {self.model.max_seq_len}" if workload.scheduler == "vllm"
                         else f"max_model_len = {workload.model_len(self.model.max_seq_len)} (nano-vLLM's "
                         "default; set workload.max_model_len)")
                raise ValueError(
                    f"workload allows sequences of {longest} tokens (prompt_len + output_len "
                    f"maxima) but {where}"
                )
        elif workload.seq_len > self.model.max_seq_len:
            raise ValueError(
                f"workload.seq_len = {workload.seq_len} exceeds model.max_seq_len = "
                f"{self.model.max_seq_len}"
            )
        return self
