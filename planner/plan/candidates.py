"""Propose: the candidate grid of a study, grouped for vectorised screening.

A candidate is one point of the search space. Candidates are built in two levels so that
10,000 of them cost a few hundred spec constructions, not 10,000:

* a :class:`Group` holds what changes the model or the placement's structure (table size,
  layer set, heads, row width, dtype, experts traded, tier of each table, DRAM page cache);
  it owns one validated :class:`~planner.specs.ModelSpec` and one representative scenario;
* inside a group, the axes the analytic estimator takes as arrays (hot-cache fraction,
  prefetch, ``max_num_seqs``, ``max_batched_tokens``) are flattened into numpy arrays.

Axes that cannot matter for a group are collapsed (no hot cache or prefetch when every table
is on the device; no page cache without a disk tier), so the grid holds no duplicates.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

from planner.accounting import param_counts
from planner.plan.spec import Study
from planner.specs import EngramSpec, ModelSpec, Scenario

# The paper's Engram-27B geometry, used when the base model has no Engram module.
DEFAULT_ENGRAM = {"max_ngram": 3, "n_heads": 8, "embed_dim_per_ngram": 640, "dtype": "bf16"}


@dataclass(frozen=True)
class SizeAxes:
    """The axis values that built one model of the grid. ``size_axis``: the search's size axis
    (``engram_params``, ``table_size_per_head`` or ``routed_experts_traded``) and
    ``size_value`` its value; ``table_size_per_head`` the rows a head got from it."""

    size_axis: str
    size_value: float
    table_size_per_head: int
    layer_ids: tuple[int, ...]
    n_heads: int
    row_width: int
    dtype: str
    routed_experts_traded: int


@dataclass(frozen=True)
class ModelChoice:
    """One distinct model of the grid and the axis values that built it."""

    model: ModelSpec
    axes: SizeAxes


@dataclass(frozen=True)
class Group:
    """Candidates sharing a model and a tier assignment; inner axes as equal-length arrays."""

    choice: ModelChoice
    layer_tiers: dict[int, str]
    host_cache_fraction: float
    scenario: Scenario  # representative: first inner point; placement tiers set
    cache_fraction: np.ndarray
    prefetch: np.ndarray
    max_num_seqs: np.ndarray
    max_batched_tokens: np.ndarray

    def __len__(self) -> int:
        return int(self.cache_fraction.size)

    @property
    def tiers_label(self) -> str:
        tiers = set(self.layer_tiers.values())
        if len(tiers) == 1:
            return next(iter(tiers))
        return ",".join(f"L{l}:{t}" for l, t in sorted(self.layer_tiers.items()))


def model_choices(study: Study) -> list[ModelChoice]:
    """Every distinct model the search space describes, in a deterministic order."""
    base, s = study.scenario.model, study.search
    e = base.engram.model_dump() if base.engram is not None else dict(DEFAULT_ENGRAM)
    if base.engram is None:
        e["table_size_per_head"] = None
    layer_sets = [tuple(x) for x in (s.layer_ids or [base.engram_layer_ids])]
    heads = s.n_heads or [e["n_heads"]]
    widths = s.row_width or [e["embed_dim_per_ngram"] // e["n_heads"]]
    dtypes = s.dtype or [e["dtype"]]
    if s.engram_params is not None:
        sizes = [("engram_params", float(p)) for p in s.engram_params]
    elif s.table_size_per_head is not None:
        sizes = [("table_size_per_head", int(n)) for n in s.table_size_per_head]
    elif s.routed_experts_traded is not None:
        sizes = [("routed_experts_traded", int(k)) for k in s.routed_experts_traded]
    elif e.get("table_size_per_head"):
        sizes = [("table_size_per_head", int(max(e["table_size_per_head"])))]
    else:
        raise ValueError("the base model has no Engram tables: give search.engram_params, "
                         "search.table_size_per_head or search.routed_experts_traded")
    total = param_counts(base).total
    out = []
    for (kind, value), layers, h, width, dtype in itertools.product(sizes, layer_sets, heads, widths, dtypes):
        engram = {**e, "layer_ids": list(layers), "n_heads": h, "embed_dim_per_ngram": h * width, "dtype": dtype}
        if e.get("scale_block") and (dtype != e["dtype"] or width % e["scale_block"]):
            # block scales belong to the base's quantised rows: a candidate in another dtype
            # (bf16 rows need none) or of a width they do not tile has rows without them
            engram["scale_block"] = None
        ffn, traded = base.ffn, 0
        orders = engram["max_ngram"] - 1
        if kind == "routed_experts_traded":
            traded = value
            moe = base.ffn.moe
            ffn = base.ffn.model_copy(update={"moe": moe.model_copy(update={"n_routed_experts": moe.n_routed_experts - value})})
            probe = _build(base, {**engram, "table_size_per_head": [2] * orders}, ffn)
            counts = param_counts(probe)
            target = total - (counts.total - counts.engram_tables)  # iso-total
            size = max(2, int(target // (len(layers) * orders * h * width)))
        elif kind == "engram_params":
            size = max(2, math.ceil(value / (len(layers) * orders * h * width)))
        else:
            size = value
        model = _build(base, {**engram, "table_size_per_head": [size] * orders}, ffn)
        out.append(ModelChoice(model, SizeAxes(kind, value, size, tuple(layers), h, width, dtype, traded)))
    return out


def _build(base: ModelSpec, engram: dict, ffn) -> ModelSpec:
    spec = EngramSpec.model_validate(engram)
    label = f"{base.name.split(' + Engram')[0]} + Engram"
    return base.model_copy(update={"engram": spec, "ffn": ffn, "name": label})


def tier_choices(study: Study, layers: list[int]) -> list[dict[int, str]]:
    s, p = study.search, study.scenario.placement
    if s.tier is None:
        return [{l: p.tier_of(l) for l in layers}]
    if s.per_table_tiers:
        return [dict(zip(layers, combo)) for combo in itertools.product(s.tier, repeat=len(layers))]
    return [{l: t for l in layers} for t in s.tier]


def groups(study: Study) -> list[Group]:
    """All candidate groups of a study, in a deterministic order."""
    s, base = study.search, study.scenario
    w, p = base.workload, base.placement
    out = []
    for choice in model_choices(study):
        for tiers in tier_choices(study, choice.model.engram_layer_ids):
            offloaded = any(t != "device" for t in tiers.values())
            disk = "disk" in tiers.values()
            cache = (s.cache_fraction or [p.cache_fraction]) if offloaded else [0.0]
            prefetch = (s.prefetch or [p.prefetch]) if offloaded else [p.prefetch]
            page = (s.host_cache_fraction or [p.host_cache_fraction]) if disk else [p.host_cache_fraction]
            grid = list(itertools.product(cache, prefetch, s.max_num_seqs or [w.max_num_seqs],
                                          s.max_batched_tokens or [w.max_batched_tokens]))
            cols = [np.array(c) for c in zip(*grid)]
            for f_host in page:
                placement = p.model_copy(update={"tier": "device", "layer_tiers": dict(tiers),
                                                 "host_cache_fraction": float(f_host),
                                                 "cache_fraction": float(cols[0][0]),
                                                 "prefetch": bool(cols[1][0])})
                scenario = base.model_copy(update={"model": choice.model, "placement": placement})
                out.append(Group(choice, dict(tiers), float(f_host), scenario, cols[0].astype(float),
                                 cols[1].astype(bool), cols[2].astype(float), cols[3].astype(float)))
    return out


def candidate_scenario(group: Group, i: int, name: str) -> Scenario:
    """The full, validated scenario of the ``i``-th candidate of ``group``."""
    s = group.scenario
    placement = s.placement.model_copy(update={"cache_fraction": float(group.cache_fraction[i]),
                                               "prefetch": bool(group.prefetch[i])})
    workload = s.workload.model_copy(update={"max_num_seqs": int(group.max_num_seqs[i]),
                                             "max_batched_tokens": int(group.max_batched_tokens[i])})
    data = s.model_copy(update={"name": name, "placement": placement, "workload": workload})
    return Scenario.model_validate(data.model_dump())
