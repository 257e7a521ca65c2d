"""The fair-shared fluid pipe: closed-form checks."""

import math

import pytest
import simpy

from planner.sim.fluid import FluidResource


def run_flows(capacity, flows):
    """flows: (start_s, amount, cap) -> finish times."""
    env = simpy.Environment()
    pipe = FluidResource(env, capacity, "pipe")
    done = {}

    def flow(i, start, amount, cap):
        yield env.timeout(start)
        yield pipe.transfer(amount, cap)
        done[i] = env.now

    for i, f in enumerate(flows):
        env.process(flow(i, *f))
    env.run()
    return done, pipe


def test_one_flow_takes_bytes_over_capacity():
    done, pipe = run_flows(10.0, [(0, 50.0, math.inf)])
    assert done[0] == pytest.approx(5.0)
    assert pipe.moved == pytest.approx(50.0) and pipe.utilisation(5.0) == pytest.approx(1.0)


def test_two_equal_flows_take_twice_as_long():
    done, _ = run_flows(10.0, [(0, 50.0, math.inf), (0, 50.0, math.inf)])
    assert done[0] == pytest.approx(10.0) and done[1] == pytest.approx(10.0)


def test_late_joiner_and_capped_flow_water_filling():
    done, pipe = run_flows(10.0, [(0, 10.0, math.inf), (0, 10.0, math.inf), (0.5, 10.0, 2.0)])
    # Alone for 0.5 s at 5 each; then a capped flow takes 2 and the others 4 each.
    assert done[0] == pytest.approx(0.5 + 7.5 / 4)
    assert done[2] == pytest.approx(2.375 + (10 - 2 * 1.875) / 2)
    assert pipe.moved == pytest.approx(30.0)


def test_cap_below_share_leaves_capacity_unused():
    done, pipe = run_flows(10.0, [(0, 4.0, 2.0)])
    assert done[0] == pytest.approx(2.0)
    assert pipe.utilisation(2.0) == pytest.approx(0.2)
