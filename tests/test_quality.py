"""Quality model: the U-curve hits the paper's published points; power-law fits recover truth."""

import math

import pytest

from planner.loading import load_model
from planner.quality import (
    LOSS_BEST_10B,
    LOSS_PURE_MOE_10B,
    MemoryPowerLaw,
    QualityModel,
    SparsityAllocationCurve,
    memory_slots,
    moe_share,
)


def test_u_curve_passes_through_published_points():
    curve = SparsityAllocationCurve()
    assert curve.relative_loss(1.0) == pytest.approx(1.0)
    assert curve.relative_loss(0.4) == pytest.approx(1.0)
    assert curve.relative_loss(0.8) * LOSS_PURE_MOE_10B == pytest.approx(LOSS_BEST_10B)
    # Minimum at rho_star, U-shaped on both sides.
    grid = [i / 100 for i in range(40, 101)]
    best = min(grid, key=curve.relative_loss)
    assert best == pytest.approx(0.8)
    assert curve.relative_loss(0.6) < 1.0 and curve.relative_loss(0.3) > 1.0
    assert not curve.estimate(0.3).valid and curve.estimate(0.9).valid
    with pytest.raises(ValueError, match="rho"):
        curve.relative_loss(1.2)


def test_paper_engram_27b_allocation_is_near_the_optimum():
    # Engram-27B moves 17 of 72 routed experts into tables: rho about 0.74-0.80 (ENGRAM.md 5).
    rho = moe_share(load_model("engram-27b"))
    assert 0.72 < rho < 0.8
    assert moe_share(load_model("moe-27b")) == pytest.approx(1.0)
    est = QualityModel().estimate(load_model("engram-27b"), load_model("moe-27b"))
    assert est.valid and est.relative_loss < 0.995
    assert "2601.07372" in est.provenance


def test_power_law_fit_recovers_coefficients():
    a, alpha = 2.1, 0.035
    points = [(s, a * s ** -alpha) for s in (2.58e5, 1e6, 3e6, 1e7)]
    law = MemoryPowerLaw.fit(points)
    assert law.alpha == pytest.approx(alpha, rel=1e-9)
    assert law.a == pytest.approx(a, rel=1e-9)
    assert max(abs(r) for r in law.residuals()) < 1e-12
    est = law.estimate(4e6, 1e6)
    assert est.relative_loss == pytest.approx(4 ** -alpha)
    assert not law.estimate(1e8, 1e6).valid


def test_power_law_refuses_degenerate_points():
    with pytest.raises(ValueError, match="two or more"):
        MemoryPowerLaw.fit([(1e6, 1.7), (1e6, 1.71)])
    with pytest.raises(ValueError, match="positive"):
        MemoryPowerLaw.fit([(0, 1.7), (1e6, 1.71)])


def test_unquantified_scaling_says_so():
    e27, e40 = load_model("engram-27b"), load_model("engram-40b")
    est = QualityModel().estimate(e40, e27)
    assert not est.valid and est.relative_loss == 1.0 and "no coefficients" in est.provenance
    law = MemoryPowerLaw.fit([(memory_slots(e27), 1.70), (memory_slots(e40), 1.68)])
    est = QualityModel(memory=law).estimate(e40, e27)
    assert est.valid and est.relative_loss == pytest.approx(1.68 / 1.70)
    assert math.isfinite(est.loss_change_percent)
