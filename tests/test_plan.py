"""The planner: bundled plans through the library and the CLI, constraints re-checked by
re-simulating every recommendation, infeasible plans explained, resume, bad input, dominated
duplicates left out of the recommendations, progress events."""

import itertools
import json

import numpy as np
import pytest
import yaml

from planner.analytic import estimate_run
from planner.cli import main
from planner.loading import ROOT, SpecError, load_scenario
from planner.plan import expand_plan, load_plan, plan_from_dict, plan_to_yaml, run_plan
from planner.plan.candidates import candidate_scenario, groups
from planner.plan.constraints import limits
from planner.plan.pareto import OUTCOME_RTOL, dominated_duplicates, memory_difference, same_outcome
from planner.plan.screen import run_arrays
from planner.sim.run import simulate
from planner.units import format_bytes

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
    # 1T params (2 TB) do not fit the H800 node's 2.2 TB (2 TiB) with 10% headroom: the explanation says so.
    assert best.candidate["engram_params"] == pytest.approx(800e9, rel=1e-3)
    assert "larger table (1T params)" in best.explanation and "host memory" in best.explanation


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


# ----------------------------------------------------------------------------- duplicates, progress


def test_same_outcome_for_more_memory_is_not_recommended(offload):
    """The bundled plan's hot-row caches behind a hidden fetch change nothing but GPU memory:
    those candidates are dominated, each row says by which recommendation and how much less."""
    plan, results, out = offload
    for study, r in zip(expand_plan(plan), results):
        recs = {rec.candidate["id"]: rec for rec in r.recommendations}
        dups = [c for c in r.candidates if c["dominated_by"] is not None]
        assert dups and r.meta["dominated"] == len(dups)
        for c in dups:
            assert c["verified"] == "ok" and c["recommended"] is None
            by = recs[c["dominated_by"]]
            assert same_outcome(by.metrics, {**c, **_simulated(study, c["id"])})
            assert c["device_bytes"] > by.metrics["device_bytes"]
            assert c["dominated_reason"] == (f"same outcome as #{by.rank} (candidate {by.candidate['id']}) with "
                                             f"{format_bytes(c['device_bytes'] - by.metrics['device_bytes'])} less "
                                             "GPU memory per device")
        for a, b in itertools.combinations(r.recommendations, 2):  # no two recommendations are duplicates
            assert not (same_outcome(a.metrics, b.metrics) and memory_difference(a.metrics, b.metrics))
        assert len(r.recommendations) == 3  # top_n counts distinct plans
    from planner.plan.report import write_report

    csv_text = write_report(plan, results, out / "report-dups")["candidates"].read_text()  # this worker's own
    assert "dominated_by" in csv_text.splitlines()[0] and "less GPU memory per device" in csv_text


def _simulated(study, cid: int) -> dict:
    """Candidate ``cid`` of ``study`` simulated again: its outcome metrics."""
    offset = 0
    for group in groups(study):
        if cid < offset + len(group):
            m = simulate(candidate_scenario(group, cid - offset, f"#{cid}"))
            return {"throughput_output_tokens_per_s": m.throughput_output_tokens_per_s,
                    "throughput_drop": m.throughput_drop, **{f"tpot_{q}_s": v for q, v in m.tpot_s.items()},
                    **{f"ttft_{q}_s": v for q, v in m.ttft_s.items()}}
        offset += len(group)
    raise IndexError(cid)


def test_dominated_duplicates_rule_and_tolerance():
    base = {"throughput_output_tokens_per_s": 1000.0, "throughput_drop": 0.01, "ttft_p99_s": 1.0, "tpot_p99_s": 0.02,
            "relative_loss": float("nan"), "engram_params": 8e11, "memory_slots": 1e10,
            "device_bytes": 18e9, "host_bytes": 1.6e12, "disk_bytes": 0.0, "usd_per_million_tokens": None}
    more_gpu = {**base, "device_bytes": 50e9, "throughput_output_tokens_per_s": 1000.0 * (1 + 1e-9)}
    other_layer = dict(base)  # same outcome, same footprint: an alternative, kept
    more_host = {**base, "host_bytes": 1.7e12}
    faster = {**base, "device_bytes": 60e9, "throughput_output_tokens_per_s": 1000.0 * (1 + 1e-5)}
    bigger = {**base, "device_bytes": 70e9, "engram_params": 8.1e11}
    got = dominated_duplicates({0: more_gpu, 1: base, 2: other_layer, 3: more_host, 4: faster, 5: bigger})
    assert got == {0: 1, 3: 1}
    assert OUTCOME_RTOL == 1e-6
    assert memory_difference(base, more_gpu) == ("device_bytes", 32e9)
    assert memory_difference(base, more_host) == ("host_bytes", pytest.approx(1e11))
    assert memory_difference(base, other_layer) is None


def _events(plan, **kwargs) -> list:
    events = []
    results = run_plan(plan, progress=events.append, **kwargs)
    return events, results


def _assert_progress(events, results) -> None:
    assert events, "no progress reported"
    for a, b in itertools.pairwise(events):
        assert a.candidates == b.candidates and a.studies == b.studies  # totals known from the start
        assert b.screened >= a.screened and b.verified >= a.verified and b.studies_done >= a.studies_done
        assert b.to_verify <= a.to_verify and b.fraction >= a.fraction  # the upper bound only tightens
    for e in events:
        assert 0 <= e.screened <= e.candidates and 0 <= e.verified <= e.to_verify
        assert (e.result is not None) == (e.stage == "done")
    last = events[-1]
    assert last.stage == "done" and last.studies_done == last.studies == len(results)
    assert last.screened == last.candidates == sum(r.meta["candidates"] for r in results)
    assert last.verified == last.to_verify == sum(r.meta["simulations"] for r in results)
    assert last.fraction == 1.0 and last.text().startswith(f"screened {last.candidates}/{last.candidates} candidates")
    assert [e.result.study for e in events if e.stage == "done"] == [r.study for r in results]


def test_progress_events_are_monotone_and_end_at_the_totals(tmp_path):
    plan = plan_from_dict({"name": "tiny", "studies": [{
        "name": "tiny-cpu", "scenario": "cpu-tiny", "set": {"workload.num_sequences": 8},
        "grid": {"workload.max_batched_tokens": [512, 1024]},
        "search": {"table_size_per_head": [1000, 5000, 20000], "tier": ["device", "host"],
                   "cache_fraction": [0.0, 0.1]},
        "constraints": {"max_throughput_drop": 0.5}, "verify": {"top_n": 2, "max_simulations": 4}}]})
    events, results = _events(plan, out_dir=tmp_path)
    _assert_progress(events, results)
    stages = [e.stage for e in events]
    assert stages.count("verify") >= 2 and stages.count("screen") >= 2  # in process: every step
    assert events[0].screened == 0 and events[0].to_verify == 8  # 2 studies x max_simulations
    cached, again = _events(plan, out_dir=tmp_path)  # from the resume cache: one event per study
    _assert_progress(cached, again)
    assert [e.stage for e in cached] == ["done", "done"] and all(e.result.meta["from_cache"] for e in cached)
    pooled, by_pool = _events(plan, workers=2)  # worker processes: totals first, then each study as it ends
    _assert_progress(pooled, by_pool)
    assert [e.stage for e in pooled] == ["screen", "done", "done"] and pooled[0].screened == 0
    assert [r.as_dict() for r in by_pool] == [r.as_dict() for r in results]


def test_cli_prints_one_progress_line_per_study_stage(tmp_path, capsys):
    assert main(["plan", str(PLANS / "infeasible.yaml"), "--out", str(tmp_path)]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err == ["dense8b-200b-small-host: screen done (screened 5/5 candidates, verified 0/0)",
                   "dense8b-200b-small-host: done (screened 5/5 candidates, verified 0/0)"]
    assert main(["plan", str(PLANS / "infeasible.yaml"), "--out", str(tmp_path)]) == 0
    assert capsys.readouterr().err.splitlines() == [
        "dense8b-200b-small-host: from cache (screened 5/5 candidates, verified 0/0)"]


def test_engine_settings_name_only_public_flags():
    """V4.1-Flash's tables in HBM, host DRAM or on NVMe map to the engines' documented Engram
    flags (or say no engine exposes the placement); other models' tables have none."""
    from planner.loading import load_scenario
    from planner.plan.engines import engine_settings

    host = load_scenario("v41flash-h200-host")
    s = engine_settings(host)
    assert "--tensor-parallel-size 8" in s["vLLM"] and "--tp-size 8" in s["SGLang"]
    assert "cpu_offload" not in s["vLLM"]  # vLLM's default already keeps them in host memory
    assert '"placement": "cpu"' in s["SGLang"] and "not exposed" not in s["SGLang"]
    device = host.model_copy(update={"placement": host.placement.model_copy(update={"tier": "device"})})
    assert '"cpu_offload": false' in engine_settings(device)["vLLM"]
    disk = load_scenario("v41flash-rtxpro-tp4-disk")
    assert "no upstream engine reads the tables from NVMe" in engine_settings(disk)["vLLM"]
    other = engine_settings(load_scenario("h800-dense8b-engram100b"))
    assert "no public engine serves" in other["vLLM"] and "--engram-config" not in other["vLLM"]
