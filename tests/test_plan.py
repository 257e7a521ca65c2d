"""The planner: bundled plans through the library and the CLI, constraints re-checked by
re-simulating every recommendation, infeasible plans explained, resume, bad input."""

import json

import numpy as np
import pytest
import yaml

from planner.analytic import estimate_run
from planner.cli import main
from planner.loading import ROOT, SpecError, load_scenario
from planner.plan import expand_plan, load_plan, plan_from_dict, plan_to_yaml, run_plan
from planner.plan.constraints import limits
from planner.plan.screen import run_arrays
from planner.sim.run import simulate

PLANS = ROOT / "examples" / "plans"


@pytest.fixture(scope="module")
def offload(tmp_path_factory):
    out = tmp_path_factory.mktemp("plan")
    plan = load_plan(PLANS / "offload.yaml")
    return plan, run_plan(plan, out_dir=out), out


def test_bundled_plan_recommends_and_resimulation_meets_every_constraint(offload):
    plan, results, _ = offload
    studies = expand_plan(plan)
    assert [r.study for r in results] == [s.name for s in studies] and len(results) == 3
    for study, result in zip(studies, results):
        assert result.recommendations and result.infeasible is None
        assert result.meta["candidates"] == len(result.candidates) > 100
        assert result.pareto and all(p.metrics["source"].startswith("simulator") for p in result.pareto)
        lims = limits(study)
        for rec in result.recommendations:
            m = simulate(rec.scenario)
            assert m.throughput_output_tokens_per_s == pytest.approx(rec.metrics["throughput_output_tokens_per_s"])
            assert m.throughput_drop == pytest.approx(rec.metrics["throughput_drop"])
            metrics = {**rec.metrics, "throughput_output_tokens_per_s": m.throughput_output_tokens_per_s,
                       "throughput_drop": m.throughput_drop,
                       **{f"tpot_{q}_s": v for q, v in m.tpot_s.items()},
                       **{f"ttft_{q}_s": v for q, v in m.ttft_s.items()}}
            for lim in lims:
                assert lim.ok(metrics[lim.metric]), (lim.name, metrics[lim.metric], lim.bound)
            assert rec.binding_constraint in rec.margins and rec.bottleneck
            assert "Binding constraint" in rec.explanation and "Bottleneck" in rec.explanation


def test_bigger_tables_are_explained(offload):
    _, results, _ = offload
    best = results[0].recommendations[0]
    # 1000B (2 TB) does not fit the H800 node's 2 TiB with 10% headroom: the explanation says so.
    assert best.candidate["engram_params"] == pytest.approx(800e9, rel=1e-3)
    assert "larger table (1000.0B)" in best.explanation and "host memory" in best.explanation


def test_cli_resumes_without_recomputing_and_writes_the_report(offload, capsys):
    _, results, out = offload
    assert main(["plan", str(PLANS / "offload.yaml"), "--out", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert all(r["meta"]["from_cache"] for r in again)  # nothing recomputed
    assert [r["recommendations"] for r in again] == [[x.as_dict() for x in r.recommendations] for r in results]
    html = (out / "report.html").read_text()
    assert "Plotly.newPlot" in html and 'src="http' not in html  # plotly.js embedded, no CDN
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["code_version"] and manifest["inputs_hash"] and len(manifest["studies"]) == 3
    assert all(s["from_cache"] for s in manifest["studies"])
    assert (out / "candidates.csv").read_text().count("\n") == 1 + sum(len(r.candidates) for r in results)


def test_infeasible_plan_explains_exit_0(tmp_path, capsys):
    assert main(["plan", str(PLANS / "infeasible.yaml"), "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "no recommendation" in text and "host memory" in text
    [r] = run_plan(load_plan(PLANS / "infeasible.yaml"))
    assert r.recommendations == [] and r.infeasible is not None
    reasons, hints = " ".join(r.infeasible.reasons), " ".join(r.infeasible.suggestions)
    assert "needs 400 GB" in reasons and "57.6 GB" in reasons
    assert "disk tier" in hints and "shrink the tables to <= 28.8B" in hints and "NVMe" in hints


def test_bad_plan_exits_2_naming_field_and_value(tmp_path, capsys):
    data = yaml.safe_load((PLANS / "infeasible.yaml").read_text())
    data["studies"][0]["search"]["cache_fraction"] = [0.0, 1.5]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert main(["plan", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "studies[0].search.cache_fraction[1]" in err and "1.5" in err and "Traceback" not in err
    data["studies"][0]["search"]["cache_fraction"] = [0.0]
    data["studies"][0]["set"]["workload.num_sequences"] = -4
    bad.write_text(yaml.safe_dump(data))
    assert main(["plan", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "workload.num_sequences" in capsys.readouterr().err
    with pytest.raises(SpecError, match="layer_ids"):
        plan_from_dict({"studies": [{"name": "x", "scenario": "cpu-tiny", "search": {"layer_ids": [[99]]}}]})


def test_plan_to_yaml_round_trips(tmp_path):
    plan = load_plan(PLANS / "offload.yaml")
    path = tmp_path / "elsewhere.yaml"
    path.write_text(plan_to_yaml(plan))
    assert load_plan(path) == plan


def test_vectorised_run_equals_estimate_run():
    s = load_scenario("h100-engram27b-host")
    seqs, tokens = np.array([8.0, 16.0, 32.0, 128.0]), np.array([8192.0, 2048.0, 4096.0, 8192.0])
    got = run_arrays(s, seqs, tokens)["throughput_output_tokens_per_s"]
    for k in range(len(seqs)):
        w = s.workload.model_copy(update={"max_num_seqs": int(seqs[k]), "max_batched_tokens": int(tokens[k])})
        want = estimate_run(s.model_copy(update={"workload": w})).throughput_output_tokens_per_s
        assert got[k] == pytest.approx(want, rel=1e-12)


def test_sparsity_allocation_uses_the_u_curve():
    plan = plan_from_dict({"studies": [{
        "name": "trade", "scenario": "h100-engram27b-device",
        "set": {"workload.num_sequences": 16, "workload.output_len": 4},
        "search": {"routed_experts_traded": [0, 8, 17, 30]},
        "objectives": ["min_relative_loss"], "verify": {"top_n": 1, "pareto": False, "max_simulations": 1}}]})
    [r] = run_plan(plan)
    losses = {c["routed_experts_traded"]: c["relative_loss"] for c in r.candidates}
    assert all(np.isfinite(v) for v in losses.values())  # iso-total: quantified by the U-curve
    assert "U-curve" in r.quality_provenance
    assert r.recommendations[0].candidate["routed_experts_traded"] == min(losses, key=losses.get)
