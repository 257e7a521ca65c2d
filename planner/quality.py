"""Predicted model quality (validation loss) of an Engram allocation.

Two published regularities (arXiv 2601.07372, Section 3; ENGRAM.md section 5):

1. **Sparsity allocation (U-curve).** At fixed total and active parameters, let ``rho`` be the
   share of the sparse (inactive) parameters held by routed experts; the rest is Engram.
   Loss is U-shaped in ``rho``: lowest near ``rho = 0.75-0.80``, equal to pure MoE
   (``rho = 1``) again at ``rho = 0.4``. At 10B total the loss drops from 1.7248 (``rho = 1``)
   to 1.7109 (``rho ~ 0.8``).
2. **Memory scaling.** With a fixed backbone, loss falls as a power law in the number of memory
   slots (linear in log-log) over 2.58e5 to 1e7 slots. No coefficients are published.

:class:`SparsityAllocationCurve` is anchored on exactly the published points of (1): an
asymmetric parabola with its minimum at ``rho_star``, relative depth ``(1.7248 - 1.7109) /
1.7248 = 0.81%``, through ``L(0.4) = L(1)``. It simplifies: the depth is assumed to be the
same relative fraction at every scale (published only at 10B), and the two branches are
quadratic (only their end points and minimum are published).

:class:`MemoryPowerLaw` is ``loss = a * slots ** (-alpha)``. Because the paper publishes no
coefficients, it has none by default: it is fitted from the user's own measured
``(slots, loss)`` points (``MemoryPowerLaw.fit``), and without them the planner can say only
that more slots never hurt. Every prediction carries its provenance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from planner.accounting import param_counts
from planner.specs import ModelSpec

PAPER = "Cheng et al., Conditional Memory via Scalable Lookup, arXiv 2601.07372, Section 3"
LOSS_PURE_MOE_10B = 1.7248
LOSS_BEST_10B = 1.7109


@dataclass(frozen=True)
class QualityEstimate:
    """Loss relative to a reference (``relative_loss = loss / reference_loss``; < 1 is better)."""

    relative_loss: float
    provenance: str
    valid: bool = True
    note: str = ""

    @property
    def loss_change_percent(self) -> float:
        return (self.relative_loss - 1.0) * 100.0


@dataclass(frozen=True)
class SparsityAllocationCurve:
    """Relative loss vs MoE share ``rho`` at fixed total and active parameters (pure MoE = 1)."""

    rho_star: float = 0.8
    depth: float = (LOSS_PURE_MOE_10B - LOSS_BEST_10B) / LOSS_PURE_MOE_10B
    rho_equal_left: float = 0.4
    provenance: str = (
        f"{PAPER}: U-curve anchored at rho=1 (pure MoE), minimum at rho~0.8 "
        f"(loss {LOSS_PURE_MOE_10B} -> {LOSS_BEST_10B} at 10B total), equal to pure MoE at rho=0.4"
    )

    def __post_init__(self) -> None:
        if not (self.rho_equal_left < self.rho_star < 1.0):
            raise ValueError(
                f"need rho_equal_left < rho_star < 1, got {self.rho_equal_left} and {self.rho_star}"
            )

    def relative_loss(self, rho: float) -> float:
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho (MoE share of sparse parameters) must be in [0, 1], got {rho}")
        width = self.rho_star - self.rho_equal_left if rho < self.rho_star else 1.0 - self.rho_star
        x = (rho - self.rho_star) / width
        return 1.0 - self.depth * (1.0 - x * x)

    def estimate(self, rho: float) -> QualityEstimate:
        inside = rho >= self.rho_equal_left
        note = "" if inside else (
            f"rho = {rho:.2f} is below the paper's measured range (>= {self.rho_equal_left}): extrapolated"
        )
        return QualityEstimate(self.relative_loss(rho), self.provenance, valid=inside, note=note)


@dataclass(frozen=True)
class MemoryPowerLaw:
    """``loss = a * slots ** (-alpha)`` at a fixed backbone, fitted to measured points."""

    a: float
    alpha: float
    slots_range: tuple[float, float]
    provenance: str = "fitted to user-measured points"
    points: tuple[tuple[float, float], ...] = field(default=())

    @classmethod
    def fit(cls, points: list[tuple[float, float]], source: str = "user-measured points") -> "MemoryPowerLaw":
        """Least squares in log-log space over ``(slots, loss)`` points (at least two slot counts)."""
        clean = [(float(s), float(l)) for s, l in points]
        for s, l in clean:
            if s <= 0 or l <= 0:
                raise ValueError(f"memory points need positive slots and loss, got ({s}, {l})")
        if len({s for s, _ in clean}) < 2:
            raise ValueError("fitting a power law needs points at two or more slot counts")
        xs = [math.log(s) for s, _ in clean]
        ys = [math.log(l) for _, l in clean]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
        a = math.exp(my - slope * mx)
        slots = [s for s, _ in clean]
        return cls(a=a, alpha=-slope, slots_range=(min(slots), max(slots)),
                   provenance=f"power law fitted to {len(clean)} {source}", points=tuple(clean))

    def loss(self, slots: float) -> float:
        if slots <= 0:
            raise ValueError(f"slots must be positive, got {slots}")
        return self.a * slots ** (-self.alpha)

    def estimate(self, slots: float, reference_slots: float) -> QualityEstimate:
        low, high = self.slots_range
        inside = low <= slots <= high
        note = "" if inside else f"{slots:.3g} slots is outside the fitted range [{low:.3g}, {high:.3g}]: extrapolated"
        return QualityEstimate(self.loss(slots) / self.loss(reference_slots), self.provenance, inside, note)

    def residuals(self) -> list[float]:
        """Relative residual of each fitted point (model / measured - 1)."""
        return [self.loss(s) / l - 1.0 for s, l in self.points]


def moe_share(model: ModelSpec) -> float:
    """``rho``: routed-expert share of the sparse parameters (sparse = total - active).

    Engram tables and the routed experts a token does not use are the sparse parameters; a
    model with neither has no allocation to make and counts as pure MoE (1.0).
    """
    counts = param_counts(model)
    # total - active holds the unused routed experts, the Engram tables and the (untied)
    # input embedding; the embedding is not part of the allocation.
    sparse = counts.total - counts.active - (0 if model.tie_embeddings else counts.embedding)
    if sparse <= 0:
        return 1.0
    return 1.0 - counts.engram_tables / sparse


def memory_slots(model: ModelSpec) -> int:
    """Memory slots as the paper counts them: table rows over all Engram layers and heads."""
    from planner.accounting import engram_table_rows

    return sum(engram_table_rows(model).values())


@dataclass(frozen=True)
class QualityModel:
    """What the planner asks: relative loss of a candidate against a reference model.

    * Same total parameters as the reference (an iso-parameter trade of experts for Engram):
      the sparsity-allocation curve.
    * Same backbone, more or fewer slots: the memory power law, if one was fitted; otherwise
      the answer is only the ordering (``valid=False``, relative loss 1).
    """

    allocation: SparsityAllocationCurve = SparsityAllocationCurve()
    memory: MemoryPowerLaw | None = None
    iso_total_tolerance: float = 0.01

    def estimate(self, candidate: ModelSpec, reference: ModelSpec) -> QualityEstimate:
        cand, ref = param_counts(candidate), param_counts(reference)
        if abs(cand.total - ref.total) <= self.iso_total_tolerance * ref.total:
            rho_c, rho_r = moe_share(candidate), moe_share(reference)
            est_c, est_r = self.allocation.estimate(rho_c), self.allocation.estimate(rho_r)
            note = "; ".join(n for n in (est_c.note, est_r.note) if n)
            return QualityEstimate(
                est_c.relative_loss / est_r.relative_loss,
                f"{self.allocation.provenance}; rho {rho_c:.3f} vs reference {rho_r:.3f}",
                est_c.valid and est_r.valid,
                note,
            )
        slots_c, slots_r = memory_slots(candidate), memory_slots(reference)
        if self.memory is not None and slots_c > 0 and slots_r > 0:
            return self.memory.estimate(slots_c, slots_r)
        return QualityEstimate(
            1.0,
            f"{PAPER}: loss falls as a power law in memory slots, but no coefficients are "
            "published; fit your own points (quality.memory_points in a plan) to quantify",
            valid=False,
            note="not quantified: candidate and reference differ in total parameters",
        )
