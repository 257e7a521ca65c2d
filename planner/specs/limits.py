"""Work limits: every count of work is checked against its limit before the work is built.

A request that multiplies out to a billion studies, a million-sequence simulation or a
3^20-way tier search should be refused in milliseconds with the count, not discovered when
the machine runs out of memory. Each :class:`Limit` has a default sized so that work at the
limit still finishes on a laptop (minutes, well under a few GB), and an environment variable
that raises it (docs/limits.md lists them all). A refusal is a :class:`LimitError` (a
``ValueError``) that names where the count comes from, the count, the limit and that variable.

Counts are computed from the specs alone (no simulation, no candidate built): the simulated
engine steps are an upper estimate from the workload's sizes (see :func:`simulated_steps`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass


class LimitError(ValueError):
    """Work above a documented limit; the message says how to raise the limit."""


def count_text(n: float) -> str:
    """``1,000,000`` up to 1e15, ``3.49e+40`` beyond (a count can be astronomically large)."""
    return f"{int(n):,}" if n < 1e15 else f"{n:.3g}"


@dataclass(frozen=True)
class Limit:
    """One bounded kind of work: ``what`` is counted, at most ``default`` (or ``$env``)."""

    env: str
    default: int
    what: str

    def value(self) -> int:
        text = os.environ.get(self.env)
        if text is None or not text.strip():
            return self.default
        try:
            value = int(text.replace("_", "").replace(",", ""))
        except ValueError:
            value = 0
        if value < 1:
            raise LimitError(f"environment variable {self.env}={text[:40]!r} must be a positive integer "
                             f"(the limit on {self.what}; default {self.default:,})")
        return value

    def check(self, count: float, where: str, detail: str = "") -> None:
        """Refuse ``count`` above the limit. ``detail`` says how the count was made up."""
        limit = self.value()
        if count > limit:
            made_of = f" ({detail})" if detail else ""
            prefix = f"{where}: " if where else ""
            raise LimitError(f"{prefix}{count_text(count)} {self.what}{made_of} is above the limit of "
                             f"{limit:,}; set {self.env} to raise it (docs/limits.md)")


SEQUENCES = Limit("ENGRAM_PLANNER_MAX_SEQUENCES", 1_000_000, "sequences in one simulated run")
SIMULATED_STEPS = Limit("ENGRAM_PLANNER_MAX_SIMULATED_STEPS", 16_000_000,
                        "engine steps (upper estimate) in one simulated run")
TRACED_STEPS = Limit("ENGRAM_PLANNER_MAX_TRACED_STEPS", 50_000,
                     "engine steps (upper estimate) in one traced run")  # about 70 spans, 20 kB, per step
ANALYTIC_WAVES = Limit("ENGRAM_PLANNER_MAX_ANALYTIC_WAVES", 2_000,
                       "batches of max_num_seqs sequences per device in the analytic whole-run estimate")
STUDIES = Limit("ENGRAM_PLANNER_MAX_STUDIES", 1_000, "studies in one plan")
CANDIDATES = Limit("ENGRAM_PLANNER_MAX_CANDIDATES", 200_000, "candidates in one study")
TIER_ASSIGNMENTS = Limit("ENGRAM_PLANNER_MAX_TIER_ASSIGNMENTS", 4_096,
                         "per-table tier assignments of one layer set")
LAYERS = Limit("ENGRAM_PLANNER_MAX_LAYERS", 1_024, "transformer blocks")
ENGRAM_TABLES = Limit("ENGRAM_PLANNER_MAX_ENGRAM_TABLES", 16_384, "Engram hash tables")
DEVICES = Limit("ENGRAM_PLANNER_MAX_DEVICES_PER_NODE", 1_024, "devices in one simulated node")
YAML_BYTES = Limit("ENGRAM_PLANNER_MAX_YAML_BYTES", 16 * 2**20, "bytes of YAML")
YAML_NODES = Limit("ENGRAM_PLANNER_MAX_YAML_NODES", 200_000,
                   "YAML values (with every alias expanded)")
YAML_DEPTH = Limit("ENGRAM_PLANNER_MAX_YAML_DEPTH", 64, "levels of YAML nesting")

ALL = (SEQUENCES, SIMULATED_STEPS, TRACED_STEPS, ANALYTIC_WAVES, STUDIES, CANDIDATES, TIER_ASSIGNMENTS, LAYERS,
       ENGRAM_TABLES, DEVICES, YAML_BYTES, YAML_NODES, YAML_DEPTH)

# Engram row ids are int64 (torch index tensors, numpy gathers, the store's offsets): a layer's
# fused table (every order's and head's prime-sized table, end to end) must stay below 2^63.
# The primes sit a few dozen above the configured sizes, so 2^32 of slack is ample.
MAX_ROW_ID = 2**63 - 1
ROW_ID_SLACK = 2**32


# ----------------------------------------------------------------------------- simulated work


def simulated_steps(scenario) -> int:
    """Upper estimate of the engine steps one simulation of ``scenario`` runs (all devices of
    the simulated node together), from the workload's sizes alone.

    Inference: per device, ``n`` sequences of at most ``P`` prompt and ``O`` output tokens.
    All queued at t = 0, batches stay full (``b = min(max_num_seqs, max_batched_tokens)``):
    ``ceil(n / b) * (O + 1)`` decode steps plus ``ceil(n * P / max_batched_tokens)`` prefill
    steps. With Poisson arrivals a batch may hold a single sequence, so every sequence may
    need its own ``O + 1`` steps: ``n * (O + 1)`` plus the prefill steps (a bound, often far
    above what a busy server runs). Training: ``steps`` per device.
    """
    from planner.specs.workload import InferenceWorkload, length_bounds

    w, hw = scenario.workload, scenario.hardware
    if not isinstance(w, InferenceWorkload):
        return w.steps * hw.device.count
    per_device = math.ceil(w.num_sequences / hw.devices_total)
    prompt, output = length_bounds(w.prompt_len)[1], length_bounds(w.output_len)[1]
    prefill = math.ceil(per_device * prompt / w.max_batched_tokens)
    if w.arrival_rate is None:
        batch = max(1, min(w.max_num_seqs, w.max_batched_tokens))
        decode = math.ceil(per_device / batch) * (output + 1)
    else:
        decode = per_device * (output + 1)
    return (decode + prefill) * min(hw.device.count, max(1, w.num_sequences))


def check_simulation(scenario, where: str = "scenario", *, trace: bool = False) -> None:
    """Refuse a simulation whose sequences or engine steps are above their limits."""
    from planner.specs.workload import InferenceWorkload

    w = scenario.workload
    DEVICES.check(scenario.hardware.device.count, f"{where}: hardware.device.count")
    if isinstance(w, InferenceWorkload):
        SEQUENCES.check(w.num_sequences, f"{where}: workload.num_sequences")
        detail = ("Poisson arrivals: every sequence may run alone" if w.arrival_rate is not None
                  else "full batches of max_num_seqs")
    else:
        detail = "workload.steps x devices per node"
    steps = simulated_steps(scenario)
    SIMULATED_STEPS.check(steps, f"{where}: workload", detail)
    if trace:
        TRACED_STEPS.check(steps, f"{where}: workload (with a trace)", detail)


def check_analytic_run(scenario, where: str = "scenario") -> None:
    """Refuse a whole-run analytic estimate (:func:`planner.analytic.estimate_run`, one pair of
    step estimates per batch of ``max_num_seqs`` sequences) with too many batches."""
    from planner.specs.workload import InferenceWorkload

    w = scenario.workload
    if isinstance(w, InferenceWorkload):
        per_device = math.ceil(w.num_sequences / scenario.hardware.devices_total)
        ANALYTIC_WAVES.check(math.ceil(per_device / w.max_num_seqs), f"{where}: workload",
                             f"{per_device:,} sequences per device / max_num_seqs = {w.max_num_seqs:,}")


# ----------------------------------------------------------------------------- physical capacity


def capacity_problems(scenario) -> list[str]:
    """What cannot physically fit: weights and device-tier tables (plus hot-row caches) beyond
    one device's memory, host-tier tables beyond the node's DRAM, disk-tier tables beyond its
    NVMe. The KV cache is not checked here: :func:`planner.memory.check_memory` sizes it from
    what these leave (the simulator admits by its blocks); the planner enforces the full
    footprint with headroom (docs/planner.md)."""
    from planner.accounting import tier_footprint
    from planner.units import format_bytes

    from planner.parallel import host_table_copies, per_rank, tensor_parallel_size

    hw = scenario.hardware
    tp = tensor_parallel_size(scenario)  # weights and device-tier tables split over the group's ranks
    fp = per_rank(tier_footprint(scenario.model, scenario.placement, 0), scenario.model, tp)
    copies = host_table_copies(scenario)  # each replica's own host tables, when not shared
    if copies > 1:
        fp = type(fp)(device=fp.device, host=fp.host * copies, disk=fp.disk, breakdown=fp.breakdown)
    out = []
    if fp.device > hw.device.memory:
        tables = sum(v for k, v in fp.breakdown.items() if k.startswith(("engram_table_", "engram_cache_")))
        out.append(f"weights ({format_bytes(fp.breakdown['weights'])}) and device-tier Engram tables and "
                   f"caches ({format_bytes(tables)}) need {format_bytes(fp.device)} per device"
                   + (f" (split over {tp} tensor-parallel ranks)" if tp > 1 else "") + ", but "
                   f"hardware.device.memory is {format_bytes(hw.device.memory)}")
    if hw.unified and fp.host + fp.device * hw.device.count > hw.host.memory:
        out.append(f"one memory pool (link.kind: unified): the devices' weights and tables "
                   f"({format_bytes(fp.device * hw.device.count)}) and the host-tier tables ({format_bytes(fp.host)}) "
                   f"need {format_bytes(fp.host + fp.device * hw.device.count)}, but hardware.host.memory (the "
                   f"pool) is {format_bytes(hw.host.memory)}")
    elif fp.host > hw.host.memory:
        out.append(f"host-tier Engram tables (and the disk tier's page cache) need {format_bytes(fp.host)} "
                   f"of DRAM per node, but hardware.host.memory is {format_bytes(hw.host.memory)}")
    if fp.disk and hw.nvme is not None and fp.disk > hw.nvme.capacity:
        out.append(f"disk-tier Engram tables need {format_bytes(fp.disk)} of NVMe per node, but "
                   f"hardware.nvme.capacity is {format_bytes(hw.nvme.capacity)}")
    return out
