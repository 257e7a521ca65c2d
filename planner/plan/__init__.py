"""The planner: how big Engram tables may be, at which layers, in which memory tier.

Library API (stable names; the CLI ``engram-planner plan`` and the dashboard call these)::

    from planner.plan import load_plan, plan_from_dict, plan_to_yaml, run_plan

    plan = load_plan("examples/plans/h800-offload.yaml")      # PlanSpec (strict pydantic)
    plan = plan_from_dict(data, base_dir=None)                # same, from a mapping
    results = run_plan(plan, workers=1, cluster=None, out_dir=None, progress=None)
    for r in results:                                         # list[PlanResult], study order
        r.recommendations      # list[Recommendation], best first (verified by the simulator),
                               # dominated duplicates left out (candidate rows: dominated_by/_reason)
        r.pareto               # list[Recommendation]: quality vs throughput vs cost front
        r.infeasible           # Infeasibility | None: .reasons, .suggestions (list[str])
        r.candidates           # list[dict]: every screened candidate (one table row each)
        r.as_dict()            # JSON-able
    rec = results[0].recommendations[0]
    rec.scenario           # planner.specs.Scenario: simulate it to reproduce rec.metrics
    rec.metrics            # dict: throughput_output_tokens_per_s, throughput_drop, ttft_p99_s, ...
    rec.explanation        # str: what, how fast, binding constraint, bottleneck, bigger table
    rec.binding_constraint, rec.bottleneck, rec.margins       # str, str, dict[str, float]
    plan_to_yaml(plan)     # YAML text the CLI runs unchanged

``run_plan``: ``workers`` local processes, or ``cluster="ray://HOST:PORT"`` / ``"auto"`` (Ray
tasks on an existing cluster; ``"local"`` starts one); ``out_dir`` makes runs resumable;
``progress(event)`` receives a :class:`PlanProgress` (candidates screened / total, simulations
run / still possible, studies done; ``event.text()``, ``event.fraction``) as work advances. The
library never prints.
Reports (CSV, JSON, HTML, manifest): :func:`planner.plan.report.write_report`.
Method, memory-tier rules and the plan file reference: docs/planner.md.
"""

from planner.plan.results import Infeasibility, PlanProgress, PlanResult, Recommendation
from planner.plan.runner import code_version, run_plan
from planner.plan.spec import PlanSpec, Study, expand_plan, load_plan, plan_from_dict, plan_to_yaml

__all__ = [
    "Infeasibility",
    "PlanProgress",
    "PlanResult",
    "PlanSpec",
    "Recommendation",
    "Study",
    "code_version",
    "expand_plan",
    "load_plan",
    "plan_from_dict",
    "plan_to_yaml",
    "run_plan",
]
