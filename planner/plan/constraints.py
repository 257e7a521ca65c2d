"""Check: the limits of a study and each candidate's margin to them.

A :class:`Limit` compares one metric with one bound. Its margin is the distance to the bound
relative to the bound (``0.2`` = 20% of slack; negative = violated by that much), except for
fractions that may be zero (throughput drop) where it is absolute. Memory limits are exact
(accounting); the others are checked on analytic estimates with ``screen_slack`` during the
screen, and on simulated metrics for every recommendation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.plan.spec import Study
from planner.units import format_bytes, format_seconds


@dataclass(frozen=True)
class Limit:
    name: str
    metric: str
    bound: float
    upper: bool  # True: metric <= bound
    unit: str  # bytes | fraction | s | tok/s | USD/h | USD/Mtok | ratio
    exact: bool = False  # computed exactly (memory): no screen slack
    what: str = ""

    def margin(self, value):
        value = np.asarray(value, float)
        gap = (self.bound - value) if self.upper else (value - self.bound)
        if self.unit == "fraction" or self.bound == 0:
            out = gap
        else:
            out = gap / abs(self.bound)
        return np.where(np.isnan(value), -np.inf, out)

    def ok(self, value, slack: float = 0.0):
        s = 0.0 if self.exact else slack
        return self.margin(value) >= -s

    def show(self, value: float) -> str:
        return fmt(value, self.unit)

    def describe(self) -> str:
        sense = "<=" if self.upper else ">="
        return f"{self.what or self.metric} {sense} {fmt(self.bound, self.unit)}"


def fmt(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "n/a"
    if unit == "bytes":
        return format_bytes(float(value))
    if unit == "s":
        return format_seconds(float(value))
    if unit == "fraction":
        return f"{100 * value:.2f}%"
    if unit == "tok/s":
        return f"{value:,.0f} tokens/s"
    if unit == "USD/h":
        return f"${value:,.2f}/h"
    if unit == "USD/Mtok":
        return f"${value:,.3f}/M tokens"
    return f"{value:.4g}"


def limits(study: Study) -> list[Limit]:
    """Memory limits first (always), then the study's constraints in a fixed order."""
    hw, rules, c = study.scenario.hardware, study.settings.memory, study.settings.constraints
    out = [
        Limit("device_memory", "device_bytes", hw.device.memory * (1 - rules.device_headroom), True, "bytes", True,
              f"device memory per device ({format_bytes(hw.device.memory)} less {rules.device_headroom:.0%} headroom)"),
        Limit("host_memory", "host_bytes", hw.host.memory * (1 - rules.host_headroom), True, "bytes", True,
              f"host memory per node ({format_bytes(hw.host.memory)} less {rules.host_headroom:.0%} headroom)"),
        Limit("disk_capacity", "disk_bytes", hw.nvme.capacity if hw.nvme else 0.0, True, "bytes", True,
              "NVMe capacity per node" if hw.nvme else "NVMe capacity (this hardware has no NVMe)"),
    ]
    if c.max_throughput_drop is not None:
        out.append(Limit("throughput_drop", "throughput_drop", c.max_throughput_drop, True, "fraction",
                         what="throughput drop vs no Engram"))
    if c.min_throughput is not None:
        out.append(Limit("min_throughput", "throughput_output_tokens_per_s", c.min_throughput, False, "tok/s",
                         what="output throughput"))
    for kind in ("ttft", "tpot"):
        slo = getattr(c, kind)
        for q in ("p50", "p90", "p99"):
            bound = getattr(slo, q) if slo is not None else None
            if bound is not None:
                out.append(Limit(f"{kind}_{q}", f"{kind}_{q}_s", bound, True, "s", what=f"{kind.upper()} {q}"))
    if c.max_relative_loss is not None:
        out.append(Limit("relative_loss", "relative_loss", c.max_relative_loss, True, "ratio",
                         what="predicted loss / reference loss"))
    if c.max_cost_per_hour is not None:
        out.append(Limit("cost_per_hour", "cost_per_hour_usd", c.max_cost_per_hour, True, "USD/h", what="cost"))
    if c.max_cost_per_million_tokens is not None:
        out.append(Limit("cost_per_million_tokens", "usd_per_million_tokens", c.max_cost_per_million_tokens,
                         True, "USD/Mtok", what="cost per million output tokens"))
    return out


def margins(metrics: dict, lims: list[Limit]) -> dict[str, float]:
    return {l.name: float(l.margin(metrics[l.metric])) for l in lims}


def failures(metrics: dict, lims: list[Limit], slack: float = 0.0) -> list[Limit]:
    return [l for l in lims if not bool(l.ok(metrics[l.metric], slack))]


def violation_text(limit: Limit, value: float) -> str:
    """'host memory per node ...: needs 400 GB, limit 57.6 GB (by 342 GB)'."""
    if np.isnan(value):
        return f"{limit.what or limit.metric}: not quantified (limit {limit.show(limit.bound)})"
    need = "needs" if limit.unit == "bytes" else "is"
    return (f"{limit.what or limit.metric}: {need} {limit.show(value)}, limit "
            f"{'<=' if limit.upper else '>='} {limit.show(limit.bound)} "
            f"(off by {limit.show(abs(value - limit.bound))})")
