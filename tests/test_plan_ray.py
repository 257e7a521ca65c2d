"""The same plan locally (in process and a process pool) and on a local Ray cluster gives
identical results."""

import pytest

from planner.plan import plan_from_dict, run_plan

ray = pytest.importorskip("ray")

PLAN = {"name": "tiny", "studies": [{
    "name": "tiny-cpu", "scenario": "cpu-tiny",
    "set": {"workload.num_sequences": 8},
    "grid": {"workload.max_batched_tokens": [512, 1024]},
    "search": {"table_size_per_head": [1000, 5000, 20000], "tier": ["device", "host"],
               "cache_fraction": [0.0, 0.1]},
    "constraints": {"max_throughput_drop": 0.5},
    "verify": {"top_n": 2, "max_simulations": 4}}]}


@pytest.mark.slow
def test_local_pool_and_ray_give_identical_results():
    plan = plan_from_dict(PLAN)
    local = [r.as_dict() for r in run_plan(plan)]
    assert len(local) == 2 and all(r["recommendations"] for r in local)
    pool = [r.as_dict() for r in run_plan(plan, workers=2)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        on_ray = [r.as_dict() for r in run_plan(plan, cluster="auto")]
    finally:
        ray.shutdown()
    assert pool == local
    assert on_ray == local
