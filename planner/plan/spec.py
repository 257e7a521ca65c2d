"""The plan file: many studies, each a base scenario + a search space + constraints/objectives.

A *study* is one planning question ("on this hardware, with this workload, how big may the
tables be, where, in which tier?") and yields one :class:`~planner.plan.results.PlanResult`.
``grid`` expands one study entry into several (one per combination of the listed values, set
at dotted paths into the base scenario, e.g. ``hardware: [h800, h100-sxm]``).

The spec keeps the scenario references as written (bundled names, or paths made absolute at
load time), so :func:`plan_to_yaml` writes a file the CLI runs unchanged from any folder.
Validation happens once, at load: :func:`plan_from_dict` also resolves every study's scenario,
so a bad field anywhere is a :class:`~planner.loading.SpecError` naming its path.
"""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, model_validator

from planner.loading import (MODELS_DIR, PROFILES_DIR, SCENARIOS_DIR, SpecError, _is_file, _resolve, _short,
                             did_you_mean, read_yaml, scenario_from_dict, validate)
from planner.specs import InferenceWorkload, Scenario, Spec, limits
from planner.specs.model import DType
from planner.specs.placement import Tier
from planner.units import Count, Seconds

Fraction = Annotated[float, Field(ge=0, le=1)]
PositiveInt = Annotated[int, Field(gt=0)]

OBJECTIVES = {
    "max_engram_params": ("engram_params", -1),
    "min_throughput_drop": ("throughput_drop", 1),
    "max_throughput": ("throughput_output_tokens_per_s", -1),
    "min_cost_per_million_tokens": ("usd_per_million_tokens", 1),
    "min_relative_loss": ("relative_loss", 1),
    "min_device_bytes": ("device_bytes", 1),
}
Objective = Literal[tuple(OBJECTIVES)]  # type: ignore[valid-type]


class SearchSpace(Spec):
    """Axes of the candidate grid (cartesian product). An axis left out keeps the base
    scenario's value. Table size is given by at most one of ``engram_params`` (all Engram
    layers together, split evenly), ``table_size_per_head`` (rows per head per order) or
    ``routed_experts_traded`` (sparsity allocation: remove k routed experts per MoE layer and
    give their parameters to Engram, total parameters fixed)."""

    engram_params: list[Count] | None = Field(default=None, min_length=1)
    table_size_per_head: list[Annotated[int, Field(gt=1)]] | None = Field(default=None, min_length=1)
    routed_experts_traded: list[Annotated[int, Field(ge=0)]] | None = Field(default=None, min_length=1)
    layer_ids: list[list[Annotated[int, Field(ge=0)]]] | None = Field(
        default=None, min_length=1, description="Engram layer sets (0-based block ids), e.g. [[1], [1, 14]]")
    n_heads: list[PositiveInt] | None = Field(default=None, min_length=1)
    row_width: list[PositiveInt] | None = Field(default=None, min_length=1,
                                                description="table row width (d_head) in elements")
    dtype: list[DType] | None = Field(default=None, min_length=1)
    tier: list[Tier] | None = Field(default=None, min_length=1)
    per_table_tiers: bool = Field(default=False, description="try every assignment of `tier` values "
                                  "to the tables of a layer set, not one tier for all")
    cache_fraction: list[Fraction] | None = Field(default=None, min_length=1)
    host_cache_fraction: list[Fraction] | None = Field(default=None, min_length=1)
    prefetch: list[bool] | None = Field(default=None, min_length=1)
    max_num_seqs: list[PositiveInt] | None = Field(default=None, min_length=1)
    max_batched_tokens: list[PositiveInt] | None = Field(default=None, min_length=1)

    def candidate_count(self, base_layer_ids: list[int]) -> tuple[int, str]:
        """An upper bound of the candidates this space holds (before axes that cannot matter are
        collapsed), and how it is made up; computed without building any of them."""
        n = lambda axis: len(axis) if axis else 1  # noqa: E731
        sizes = n(self.engram_params or self.table_size_per_head or self.routed_experts_traded)
        layer_sets = self.layer_ids or [base_layer_ids]
        tiers = sum(self.tier_assignments(len(layers)) for layers in layer_sets)
        inner = (n(self.cache_fraction) * n(self.host_cache_fraction) * n(self.prefetch) * n(self.max_num_seqs)
                 * n(self.max_batched_tokens))
        count = sizes * n(self.n_heads) * n(self.row_width) * n(self.dtype) * tiers * inner
        detail = (f"{sizes} sizes x {n(self.n_heads) * n(self.row_width) * n(self.dtype)} table geometries x "
                  f"{tiers} (layer set, tier) choices x {inner} cache/prefetch/batch settings")
        return count, detail

    def tier_assignments(self, n_tables: int) -> int:
        """Tier choices for a layer set of ``n_tables`` tables."""
        if self.tier is None:
            return 1
        return len(self.tier) ** n_tables if self.per_table_tiers else len(self.tier)

    @model_validator(mode="after")
    def _one_size_axis(self) -> "SearchSpace":
        given = [k for k in ("engram_params", "table_size_per_head", "routed_experts_traded")
                 if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(f"{' and '.join(given)} both set the table size: give one of them")
        return self


class Percentiles(Spec):
    """Latency limits per percentile (simulated p50/p90/p99 must stay at or below)."""

    p50: Seconds | None = None
    p90: Seconds | None = None
    p99: Seconds | None = None


class Constraints(Spec):
    """Limits every recommendation meets in simulation. Memory capacity is always enforced."""

    max_throughput_drop: Fraction | None = Field(
        default=None, description="1 - throughput / no-Engram throughput, a fraction (0.02 = 2%)")
    min_throughput: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="output tokens/s of the whole deployment")
    ttft: Percentiles | None = None
    tpot: Percentiles | None = None
    max_relative_loss: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="predicted loss / reference model's loss (quality model)")
    max_cost_per_hour: Annotated[float, Field(ge=0)] | None = None
    max_cost_per_million_tokens: Annotated[float, Field(ge=0)] | None = None


class MemoryRules(Spec):
    """How capacity is checked (see docs/planner.md, "Memory tiers")."""

    device_headroom: Fraction = Field(default=0.1, description="share of device memory kept free "
                                      "(activations, CUDA context, fragmentation)")
    host_headroom: Fraction = Field(default=0.1, description="share of host memory kept free (OS, engine)")
    kv_cache: Literal["max", "mean"] = Field(default="max", description="KV cache sized for max_num_seqs "
                                             "sequences of the longest (max) or mean length")


class VerifySpec(Spec):
    """Which screened candidates the simulator re-checks."""

    top_n: PositiveInt = Field(default=3, description="recommendations to return")
    pareto: bool = Field(default=True, description="also verify the screened Pareto front")
    pareto_max: Annotated[int, Field(ge=0)] = 4
    max_simulations: PositiveInt = Field(default=12, description="simulated candidates per study, at most")
    screen_slack: Annotated[float, Field(ge=0)] = Field(
        default=0.25, description="the analytic screen keeps candidates up to this relative margin "
        "past a limit (the simulator decides)")


class PlanPrice(Spec):
    """Prices (USD) for the cost objective; overrides the hardware profile's ``price``.
    The device price covers the device and its HBM; the per-GB prices charge the bytes the
    Engram tables add to each tier."""

    device_per_hour: Annotated[float, Field(ge=0)]
    hbm_per_gb_hour: Annotated[float, Field(ge=0)] = 0.0
    host_dram_per_gb_hour: Annotated[float, Field(ge=0)] = 0.0
    nvme_per_gb_hour: Annotated[float, Field(ge=0)] = 0.0
    source: str = ""


class QualitySpec(Spec):
    """Quality model: the paper's sparsity-allocation U-curve by default; measured
    ``(slots, loss)`` points replace the unquantified memory scaling by a fitted power law."""

    memory_points: list[tuple[Annotated[float, Field(gt=0)], Annotated[float, Field(gt=0)]]] | None = Field(
        default=None, min_length=2)
    source: str = "user-measured points"


class StudySettings(Spec):
    """Sections a study shares with the plan's ``defaults`` (a study's own section wins)."""

    constraints: Constraints = Constraints()
    memory: MemoryRules = MemoryRules()
    objectives: list[Objective] = Field(  # type: ignore[valid-type]
        default_factory=lambda: ["max_engram_params", "max_throughput", "min_throughput_drop", "min_device_bytes"], min_length=1)
    verify: VerifySpec = VerifySpec()
    price: PlanPrice | None = None
    quality: QualitySpec = QualitySpec()


class StudyEntry(StudySettings):
    """One entry of ``studies``: a base scenario, the values to set or grid over, the search."""

    name: str
    scenario: str | dict[str, Any] = Field(description="bundled scenario name, path, or inline mapping")
    set: dict[str, Any] = Field(default_factory=dict, description="dotted path -> value, e.g. "
                                "{workload.num_sequences: 64}")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="dotted path -> values: one "
                                       "study per combination")
    search: SearchSpace = SearchSpace()


class PlanSpec(Spec):
    """A plan file (``engram-planner plan PLAN.yaml``)."""

    name: str = "plan"
    description: str = ""
    seed: int = Field(default=0, description="recorded in the manifest; every model here is deterministic")
    defaults: StudySettings = StudySettings()
    studies: list[StudyEntry] = Field(min_length=1)


class Study(Spec):
    """One resolved planning question: what a worker needs, hashed for resume."""

    index: int
    name: str
    scenario: Scenario
    search: SearchSpace
    settings: StudySettings


# ----------------------------------------------------------------------------- loading


def load_plan(path: str | Path) -> PlanSpec:
    path = Path(path)
    return plan_from_dict(read_yaml(path), path.parent, str(path))


def plan_from_dict(data: Any, base_dir: str | Path | None = None, where: str = "plan") -> PlanSpec:
    """Validate a plan mapping; relative scenario references become absolute paths and every
    study's scenario is resolved once (so errors surface here, naming the field path)."""
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    plan = validate(PlanSpec, data, where)
    studies = [s.model_copy(update={"scenario": _absolute_ref(s.scenario, base, ("studies", i, "scenario"), where)})
               for i, s in enumerate(plan.studies)]
    plan = plan.model_copy(update={"studies": studies})
    expand_plan(plan, where)
    return plan


def plan_to_yaml(plan: PlanSpec) -> str:
    """YAML text that :func:`load_plan` (and the CLI) reads back to an equal plan."""
    return yaml.safe_dump(plan.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def expand_plan(plan: PlanSpec, where: str = "plan") -> list[Study]:
    """The studies of a plan in file order, grids expanded (deterministic order)."""
    # Count before expanding: a grid of 9 axes x 10 values is a billion studies.
    sizes = [" x ".join(str(len(v)) for v in entry.grid.values()) or "1" for entry in plan.studies]
    limits.STUDIES.check(sum(math.prod(len(v) for v in e.grid.values()) for e in plan.studies),
                         f"{where}: studies", "grid combinations: " + (" + ".join(sizes) if len(sizes) <= 6
                                                                        else f"{len(sizes)} entries"))
    out: list[Study] = []
    for i, entry in enumerate(plan.studies):
        settings = _settings(plan.defaults, entry)
        raw, base_dir = _scenario_dict(entry.scenario, where, i)
        for path, value in entry.set.items():
            _set_path(raw, path, value, f"{where}: studies[{i}].set.{path}", base_dir)
        keys = list(entry.grid)
        for values in itertools.product(*(entry.grid[k] for k in keys)) if keys else [()]:
            data = copy.deepcopy(raw)
            for key, value in zip(keys, values):
                _set_path(data, key, value, f"{where}: studies[{i}].grid.{key}", base_dir)
            label = ", ".join(f"{k}={_label(v)}" for k, v in zip(keys, values))
            name = f"{entry.name} [{label}]" if label else entry.name
            scenario = _scenario(data, base_dir, f"{where}: studies[{i}].scenario"
                                 + (f" (grid {label})" if label else ""))
            _check_study(scenario, entry.search, settings, f"{where}: studies[{i}]")
            out.append(Study(index=len(out), name=name, scenario=scenario, search=entry.search,
                             settings=settings))
    return out


# ----------------------------------------------------------------------------- helpers


def _settings(defaults: StudySettings, entry: StudyEntry) -> StudySettings:
    fields = {k: getattr(defaults, k) for k in StudySettings.model_fields}
    fields.update({k: getattr(entry, k) for k in StudySettings.model_fields if k in entry.model_fields_set})
    return StudySettings(**fields)


def _absolute_ref(ref, base: Path, loc: tuple, where: str):
    if not isinstance(ref, str):
        return ref
    if _is_file(base / ref):
        return str((base / ref).resolve())
    if _is_file(SCENARIOS_DIR / f"{ref}.yaml"):
        return ref  # a bundled name: valid from any folder
    bundled = sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml"))
    raise SpecError(f"{where}: studies[{loc[1]}].scenario: {_short(ref, 80)} is neither a file nor a bundled "
                    f"scenario{did_you_mean(ref, bundled)} (bundled: {', '.join(bundled)})")


def _scenario_dict(ref, where: str, i: int) -> tuple[dict, Path]:
    if isinstance(ref, dict):
        return copy.deepcopy(ref), Path.cwd()
    path = Path(ref) if Path(ref).is_file() else SCENARIOS_DIR / f"{ref}.yaml"
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise SpecError(f"{where}: studies[{i}].scenario: {path} does not hold a mapping")
    return data, path.parent


_REFS = {"model": (MODELS_DIR, "model"), "hardware": (PROFILES_DIR, "hardware profile")}


def _set_path(data: dict, dotted: str, value: Any, where: str, base_dir: Path) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part) if isinstance(node, dict) else None
        if isinstance(child, str) and node is data and part in _REFS:
            bundled, kind = _REFS[part]
            child = read_yaml(_resolve(child, base_dir, bundled, kind))  # inline the reference
        if isinstance(child, str):
            raise SpecError(f"{where}: cannot set inside {part!r}, which is {child!r}")
        if not isinstance(child, dict):
            known = list(node) if isinstance(node, dict) else []
            if node is data:
                known += list(Scenario.model_fields)
            raise SpecError(f"{where}: the scenario has no section {part!r} to set {dotted!r} in"
                            f"{did_you_mean(part, known)}")
        node[part] = child = dict(child)
        node = child
    node[parts[-1]] = value


def _scenario(data: dict, base_dir: Path, where: str) -> Scenario:
    return scenario_from_dict(data, base_dir, where)


def _check_study(scenario: Scenario, search: SearchSpace, settings: StudySettings, where: str) -> None:
    if not isinstance(scenario.workload, InferenceWorkload):
        raise SpecError(f"{where}.scenario.workload.kind: the planner plans inference workloads, "
                        f"got {scenario.workload.kind!r}")
    model = scenario.model
    for j, layers in enumerate(search.layer_ids or []):
        if len(set(layers)) != len(layers) or not layers:
            raise SpecError(f"{where}.search.layer_ids[{j}]: a layer set lists a layer twice or is empty "
                            f"(got {layers})")
        for layer in layers:
            if layer >= model.n_layers:
                raise SpecError(f"{where}.search.layer_ids[{j}]: layer {layer} is past the last block "
                                f"(ids are 0-based, n_layers = {model.n_layers}) (got {layers})")
    for j, layers in enumerate(search.layer_ids or [model.engram_layer_ids]):
        if search.per_table_tiers and search.tier is not None:
            limits.TIER_ASSIGNMENTS.check(search.tier_assignments(len(layers)),
                                          f"{where}.search.per_table_tiers",
                                          f"{len(search.tier)} tiers ^ {len(layers)} tables of layer set {layers}")
    count, detail = search.candidate_count(model.engram_layer_ids)
    limits.CANDIDATES.check(count, f"{where}.search", detail)
    _check_row_ids(model, search, where)
    w = scenario.workload
    worst = w.model_copy(update={"max_num_seqs": min(search.max_num_seqs or [w.max_num_seqs]),
                                 "max_batched_tokens": min(search.max_batched_tokens or [w.max_batched_tokens])})
    limits.check_simulation(scenario.model_copy(update={"workload": worst}), f"{where}.scenario")
    if model.engram is None and search.layer_ids is None:
        raise SpecError(f"{where}.search.layer_ids: the base model has no Engram module, so the search "
                        "must list the layer sets to place it at, e.g. [[1], [1, 14]]")
    if search.routed_experts_traded is not None:
        moe = model.ffn.moe
        if moe is None:
            raise SpecError(f"{where}.search.routed_experts_traded: the base model has no MoE experts to trade")
        for k in search.routed_experts_traded:
            if k >= moe.n_routed_experts - moe.top_k + 1:
                raise SpecError(f"{where}.search.routed_experts_traded: trading {k} of "
                                f"{moe.n_routed_experts} routed experts leaves fewer than top_k = {moe.top_k}")
    c, price = settings.constraints, settings.price or scenario.hardware.price
    wants_cost = (c.max_cost_per_hour is not None or c.max_cost_per_million_tokens is not None
                  or "min_cost_per_million_tokens" in settings.objectives)
    if wants_cost and price is None:
        raise SpecError(f"{where}: a cost constraint or objective needs prices, but hardware "
                        f"{scenario.hardware.name!r} has no price section: add `price:` to the plan")


def _check_row_ids(model, search: SearchSpace, where: str) -> None:
    """Table sizes of the search whose fused tables would overflow 64-bit row ids (the model
    built from them would be refused later, far from the value that caused it)."""
    e = model.engram
    orders = (e.max_ngram if e else 3) - 1
    layer_counts = [len(x) for x in (search.layer_ids or [model.engram_layer_ids]) if x]
    heads = search.n_heads or [e.n_heads if e else 8]
    widths = search.row_width or [e.d_head if e else 80]
    limit = limits.MAX_ROW_ID - limits.ROW_ID_SLACK
    for j, value in enumerate(search.engram_params or []):
        rows = value / (min(layer_counts or [1]) * min(widths))  # heads x orders x size per layer
        if rows > limit:
            raise SpecError(f"{where}.search.engram_params[{j}]: {value:.3g} parameters make about {rows:.3g} rows "
                            f"per Engram layer, past what 64-bit row ids address ({limits.MAX_ROW_ID:.3g})")
    for j, size in enumerate(search.table_size_per_head or []):
        rows = max(heads) * orders * size
        if rows > limit:
            raise SpecError(f"{where}.search.table_size_per_head[{j}]: {size:.3g} rows per head x {max(heads)} heads "
                            f"x {orders} orders = {rows:.3g} rows per Engram layer, past what 64-bit row ids "
                            f"address ({limits.MAX_ROW_ID:.3g})")


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", "inline"))
    return str(value)
