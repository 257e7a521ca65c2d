"""Results of planning: small value types the CLI and the dashboard render.

Everything is plain data (numbers, strings, a :class:`~planner.specs.Scenario`), round-trips
through ``as_dict`` / ``from_dict`` (how results travel from workers and the resume cache),
and holds no timing, so the same plan gives equal results on one machine or a Ray cluster.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Literal

from planner.specs import Scenario


def _clean(value):
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class Recommendation:
    """One verified candidate that meets every constraint.

    ``metrics``: simulated throughput, drop, TTFT/TPOT percentiles, plus exact memory per tier,
    parameters, predicted quality and cost (``source`` says which numbers are simulated).
    ``margins``: per constraint, the relative slack (0.25 = 25% below a maximum).
    ``binding_constraint``: the constraint with the least slack. ``bottleneck``: the resource
    the simulator's per-layer bound names (``link``, ``host_gather``, ``cpu``, ``disk``; or
    ``hbm``/``compute`` when the Engram fetch is hidden). ``larger_table``: what stops the next
    larger table of the same configuration (the last sentence of ``explanation``; None when
    nothing does), kept apart so a report's headline can say what is infeasible and why.
    """

    rank: int
    scenario: Scenario
    candidate: dict
    metrics: dict
    margins: dict
    binding_constraint: str | None
    bottleneck: str
    explanation: str
    quality_provenance: str = ""
    larger_table: str | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["scenario"] = self.scenario.model_dump(mode="json")
        return _clean(out)

    @classmethod
    def from_dict(cls, data: dict) -> "Recommendation":
        data = dict(data)
        data["scenario"] = Scenario.model_validate(data["scenario"])
        return cls(**data)


@dataclass(frozen=True)
class Infeasibility:
    """Why a study has no recommendation, and what would make it feasible."""

    reasons: list[str]
    suggestions: list[str]
    closest: dict | None = None

    def as_dict(self) -> dict:
        return _clean(asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> "Infeasibility":
        return cls(**data)


@dataclass(frozen=True)
class PlanResult:
    """The answer to one study: ranked recommendations, the verified Pareto front (quality vs
    throughput vs cost), or an infeasibility explanation; and the screened candidate table."""

    study: str
    index: int
    hardware: str
    model: str
    recommendations: list[Recommendation]
    pareto: list[Recommendation]
    infeasible: Infeasibility | None
    candidates: list[dict]
    limits: list[str]
    objectives: list[str]
    quality_provenance: str
    meta: dict = field(default_factory=dict)

    @property
    def best(self) -> Recommendation | None:
        return self.recommendations[0] if self.recommendations else None

    def as_dict(self) -> dict:
        return _clean({
            "study": self.study, "index": self.index, "hardware": self.hardware, "model": self.model,
            "recommendations": [r.as_dict() for r in self.recommendations],
            "pareto": [r.as_dict() for r in self.pareto],
            "infeasible": self.infeasible.as_dict() if self.infeasible else None,
            "candidates": self.candidates, "limits": self.limits, "objectives": self.objectives,
            "quality_provenance": self.quality_provenance, "meta": self.meta,
        })

    @classmethod
    def from_dict(cls, data: dict) -> "PlanResult":
        """The inverse of :meth:`as_dict`; ``ValueError`` naming what is missing or malformed
        (a damaged cache entry must not pass for a result)."""
        missing = sorted(set(_FIELDS) - set(data))
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        wrong = [k for k, kind in _FIELDS.items() if not isinstance(data[k], kind)]
        if wrong:
            raise ValueError(f"malformed {', '.join(wrong)}")
        data = dict(data)
        data["recommendations"] = [Recommendation.from_dict(r) for r in data["recommendations"]]
        data["pareto"] = [Recommendation.from_dict(r) for r in data["pareto"]]
        data["infeasible"] = Infeasibility.from_dict(data["infeasible"]) if data["infeasible"] else None
        return cls(**data)


@dataclass(frozen=True)
class PlanProgress:
    """Where a plan run stands; ``run_plan(progress=...)`` receives one as work advances.

    Counts are over the whole plan. ``candidates`` is exact from the first event (the grid is
    counted before it is screened). ``to_verify`` is an upper bound that only tightens: each
    study's ``verify.max_simulations``, then the number that passed its screen, then, when it
    finishes, the number it simulated. Done counts never decrease, and at the last event
    ``screened == candidates``, ``verified == to_verify`` and ``studies_done == studies``.
    ``stage`` says what advanced: ``screen`` (a group of candidates screened), ``verify`` (one
    simulated), ``done`` (``study`` finished; ``result`` is its answer). In this process every
    step is reported; with worker processes or Ray a study's counts arrive when it finishes.
    """

    stage: Literal["screen", "verify", "done"]
    study: str
    screened: int
    candidates: int
    verified: int
    to_verify: int
    studies_done: int
    studies: int
    result: PlanResult | None = None

    @property
    def fraction(self) -> float:
        """Share of the work done, 0..1: screening counts little next to one simulation."""
        work = 0.01 * self.candidates + self.to_verify
        return 1.0 if work == 0 else min(1.0, (0.01 * self.screened + self.verified) / work)

    def text(self) -> str:
        return (f"screened {self.screened:,}/{self.candidates:,} candidates, verified {self.verified}/"
                f"{self.to_verify}" + (f"; {self.studies_done}/{self.studies} studies done" if self.studies > 1 else ""))


_FIELDS = {"study": str, "index": int, "hardware": str, "model": str, "recommendations": list, "pareto": list,
           "infeasible": (dict, type(None)), "candidates": list, "limits": list, "objectives": list,
           "quality_provenance": str, "meta": dict}
