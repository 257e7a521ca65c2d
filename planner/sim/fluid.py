"""A bandwidth shared by concurrent flows: processor sharing with per-flow rate caps.

Models a link, DRAM or an SSD as a fluid pipe of ``capacity`` units/s (bytes/s, or pages/s for
NVMe). Every active flow gets an equal share; a flow that cannot use its share (its own cap,
e.g. the cores gathering it, or the device's own link) leaves the rest to the others
(max-min fairness by water-filling). Whenever a flow joins or leaves, the remaining amounts are
advanced at the old rates and the next completion is rescheduled at the new ones, so two equal
flows started together on one pipe each finish after twice the time one would take alone.

Simplifies: no per-flow latency here (callers add it before joining), no priorities, rates
change instantaneously (no congestion-control ramp).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import simpy


@dataclass
class _Flow:
    remaining: float
    cap: float
    done: simpy.Event
    rate: float = 0.0


class FluidResource:
    """Fair-shared capacity. ``transfer(amount, cap)`` returns an event that fires when
    ``amount`` units have moved. Counters: ``moved`` (units delivered) and ``busy_s`` (time with
    at least one flow), for utilisation."""

    def __init__(self, env: simpy.Environment, capacity: float, name: str):
        assert capacity > 0, f"{name}: capacity must be positive"
        self.env, self.capacity, self.name = env, float(capacity), name
        self.flows: list[_Flow] = []
        self.moved = 0.0
        self.busy_s = 0.0
        self._last = env.now
        self._generation = 0

    def transfer(self, amount: float, cap: float = math.inf) -> simpy.Event:
        done = self.env.event()
        if amount <= 0:
            done.succeed()
            return done
        self._advance()
        self.flows.append(_Flow(float(amount), float(cap), done))
        self._reschedule()
        return done

    # ---- internals

    def _advance(self) -> None:
        """Move every flow forward at its current rate up to now."""
        dt = self.env.now - self._last
        if dt > 0 and self.flows:
            self.busy_s += dt
            for flow in self.flows:
                step = min(flow.remaining, flow.rate * dt)
                flow.remaining -= step
                self.moved += step
        self._last = self.env.now

    def _share(self) -> None:
        """Water-filling: equal shares, capped flows give their surplus to the rest."""
        left, n = self.capacity, len(self.flows)
        for flow in sorted(self.flows, key=lambda f: f.cap):
            flow.rate = min(flow.cap, left / n)
            left -= flow.rate
            n -= 1

    def _reschedule(self) -> None:
        self._generation += 1
        if not self.flows:
            return
        self._share()
        dt = min(f.remaining / f.rate for f in self.flows)
        generation = self._generation
        timer = self.env.timeout(dt)
        timer.callbacks.append(lambda _event: self._on_timer(generation))

    def _on_timer(self, generation: int) -> None:
        if generation != self._generation:
            return  # superseded by a join or leave since this timer was set
        self._advance()
        finished = [f for f in self.flows if f.remaining <= 1e-9 * max(1.0, f.rate)]
        if not finished:  # rounding left a sliver: finish the smallest flow
            finished = [min(self.flows, key=lambda f: f.remaining / f.rate)]
        for flow in finished:
            self.moved += flow.remaining
            flow.remaining = 0.0
            self.flows.remove(flow)
            flow.done.succeed()
        self._reschedule()

    def utilisation(self, duration_s: float) -> float:
        """Average delivered rate over ``duration_s`` as a fraction of capacity."""
        return self.moved / (self.capacity * duration_s) if duration_s > 0 else 0.0
