"""Validation (planner/validation, `engram-planner validate`): the grid is disjoint from the
calibration shapes, each scenario reproduces its measured step sequence, the comparison and
report arithmetic, the result format the dashboard reads, a foreign profile said to be one, and
the real gate: this machine calibrated, then the quick grid measured against that profile."""

from __future__ import annotations

import json
import os

import pytest

from planner.loading import load_hardware
from planner.sim.run import simulate
from planner.trace import Span
from planner.validation import compare, grid, report

# A calibrated profile to simulate with where a test only needs one (any machine's: no test
# compares this machine's speed with it).
PROFILE = "hw_profiles/calibrated-ci-cpu.yaml"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_grid_is_disjoint_from_calibration_shapes():
    calibrated = grid.calibration_shapes("cpu") | grid.calibration_shapes("cuda")
    assert calibrated, "calibration plan lists no model shapes: the check would be vacuous"
    for cfg in grid.full_grid():
        overlap = grid.run_shapes(cfg) & calibrated
        assert not overlap, f"{cfg.name} times shapes calibration fitted: {sorted(overlap)[:3]}"


def test_grid_names_unique_and_quick_is_a_subset():
    names = [c.name for c in grid.full_grid()]
    assert len(names) == len(set(names))
    assert {c.name for c in grid.quick_grid()} <= set(names)
    assert 4 <= len(grid.quick_grid()) <= 6


@pytest.mark.parametrize("cfg", grid.quick_grid(), ids=lambda c: c.name)
def test_scenario_reproduces_the_measured_step_sequence(cfg):
    """One prefill step of batch x prompt tokens, then output_len - 1 decode steps of batch
    tokens: the loop `measure` times."""
    hw = load_hardware(os.path.join(ROOT, PROFILE))
    sim = simulate(grid.scenario(cfg, hw, None), baseline=False, trace=True)
    steps = [s for s in sim.spans if s.name == "step"]
    assert [s.args["tokens"] for s in steps] == [cfg.batch * cfg.prompt_len] + [cfg.batch] * (cfg.output_len - 1)
    assert sim.output_tokens == cfg.batch * cfg.output_len


def test_model_spec_resizes_and_validates():
    cfg = grid.RunConfig("x", d_model=384, ffn_width=1024, n_layers=5, engram_layers=(1, 3))
    spec = grid.model_spec(cfg)
    assert (spec.d_model, spec.n_layers, spec.engram.layer_ids, spec.ffn.dense_width) == (384, 5, [1, 3], 1024)
    assert spec.engram.d_head * 4 == 160  # 40 fp32 values: 160 B rows
    mla = grid.model_spec(grid.RunConfig("y", base="tiny", d_model=128, engram_layers=(1, 2)))
    assert mla.attention.kind == "mla" and mla.attention.kv_lora_rank == 64


def _result(name, meas, pred, band=None, **regime):
    m = {"step_time_s": meas, "throughput_tokens_per_s": 1 / meas, "exposed_lookup_s": 0.0, "bytes_to_device": 100.0}
    p = {"step_time_s": pred, "throughput_tokens_per_s": 1 / pred, "exposed_lookup_s": 0.0, "bytes_to_device": 110.0}
    b = {k: [v * 0.9, v * 1.1] for k, v in p.items()} if band is None else band
    return compare.RunResult(name, {}, {"tier": "host", **regime}, m, p, b)


def test_summary_errors_coverage_and_weakest_regime():
    results = [_result("a", 1.0, 1.05, prefetch="on"), _result("b", 1.0, 0.8, prefetch="off"),
               _result("c", 2.0, 2.0, prefetch="off"), _result("d", 1.0, 1.3, prefetch="on")]
    s = compare.summarise(results)
    assert s["step_time_s"]["median_abs_error"] == pytest.approx(0.125)  # errors 0.05, 0.2, 0, 0.3
    assert s["step_time_s"]["coverage"] == pytest.approx(0.5)  # a and c inside +-10%
    assert s["bytes_to_device"]["median_abs_error"] == pytest.approx(0.1)
    assert s["exposed_lookup_s"]["median_abs_error"] is None  # measured 0 everywhere: undefined
    regimes = compare.by_regime(results)
    assert regimes["prefetch"]["on"]["median_abs_error"] == pytest.approx(0.175)
    weakest = compare.weakest_regime(regimes)
    assert (weakest["dimension"], weakest["label"], weakest["runs"]) == ("prefetch", "on", 2)
    lone = compare.weakest_regime(compare.by_regime(results + [_result("e", 1.0, 3.0, prefetch="off", batch="B=64")]))
    assert (lone["label"], lone["runs"]) == ("B=64", 1)  # a regime sampled once still counts


def test_band_turns_curve_residuals_into_time_quantiles():
    # A rate fitted 25% high predicts 1/1.25 = 0.8 of the time: the measurement is 1.25x the prediction.
    lo, hi = compare._time_error_quantiles([0.25, 0.25], 0.1)
    assert lo == pytest.approx(0.25) and hi == pytest.approx(0.25)
    # A time fitted 25% high: the measurement is 1/1.25 = 0.8 of the prediction.
    lo, hi = compare._time_error_quantiles([0.25, 0.25], 0.1, seconds=True)
    assert lo == pytest.approx(-0.2) and hi == pytest.approx(-0.2)


def test_bands_contain_the_prediction_for_the_committed_profile():
    hw = load_hardware(os.path.join(ROOT, PROFILE))
    cfg = grid.quick_grid()[0]
    scen = grid.scenario(cfg, hw, None)
    sim = simulate(scen, baseline=False, trace=True)
    pred = compare.predicted_metrics(sim, scen)
    band = compare.bands(pred, sim, scen, compare.curve_quantiles(hw))
    for metric in ("step_time_s", "throughput_tokens_per_s"):
        lo, hi = band[metric]
        assert lo <= pred[metric] <= hi and hi > lo
    shares = compare.step_shares(sim, scen, compare.curve_quantiles(hw))
    assert sum(shares.values()) == pytest.approx(pred["step_time_s"], rel=0.05)  # nearly all of a step is attributed


def test_report_format_plot_and_traces(tmp_path):
    results = [_result("a", 1.0, 1.05), _result("b", 1.0, 0.8)]
    s = compare.summarise(results)
    regimes = compare.by_regime(results)
    data = report.result_dict(fingerprint={"cpu": "x"}, profile="p.yaml", results=results, summary=s,
                              regimes=regimes, weakest=compare.weakest_regime(regimes), threshold=0.1,
                              wall_s=1.0, notes=[])
    path = report.write_json(tmp_path / "validation.json", data)
    loaded = json.loads(path.read_text())
    assert {"fingerprint", "profile", "runs", "summary"} <= set(loaded)
    run = loaded["runs"][0]
    assert {"name", "config", "measured", "predicted", "band"} <= set(run)
    for metric in compare.METRICS:
        assert set(loaded["summary"][metric]) >= {"median_abs_error", "p90_abs_error", "coverage"}
        assert len(run["band"][metric]) == 2
    assert loaded["passed"] is False  # median |error| 12.5% > 10%
    assert "FAIL" in report.format_text(loaded) and "drift out" not in report.format_text(loaded)
    drifted = {**loaded, "drift": {"ratio": 1.25, "runs": {}, "controlled": compare.controlled(results, 1.25)}}
    rows = {line.split()[0]: line for line in report.format_text(drifted).splitlines() if line[:2] in ("a ", "b ")}
    assert "drift out" in report.format_text(drifted)
    assert "+31.2%" in rows["a"] and "0.0%" in rows["b"]  # 1.05 x 1.25 = 1.3125; 0.8 x 1.25 = 1.0
    html = report.write_plot(tmp_path / "validation.html", loaded).read_text()
    assert len(html) > 1_000_000 and 'src="https://cdn' not in html  # plotly.js embedded: opens offline
    measured = [Span("step", "engine", 5.0, 1.0), Span("attn_L0", "compute", 5.1, 0.5)]
    simulated = [Span("step", "dev0 engine", 0.0, 1.0), Span("attn_L0", "dev0 compute", 0.1, 0.4)]
    a, b = report.write_traces(tmp_path, "a", measured, simulated, {})
    ta, tb = json.loads(a.read_text()), json.loads(b.read_text())
    names = lambda t: {(e["name"], e["cat"]) for e in t["traceEvents"] if e["ph"] == "X"}
    assert names(ta) == names(tb) == {("step", "engine"), ("attn_L0", "compute")}
    assert min(e["ts"] for e in ta["traceEvents"] if e["ph"] == "X") == 0


def test_measure_one_tiny_run_matches_metric_definitions(tmp_path):
    """A real (small) run: metrics are consistent with the spans and the store's counts."""
    pytest.importorskip("torch")
    from planner.validation.measure import Runner

    cfg = grid.RunConfig("t", d_model=128, ffn_width=352, n_layers=2, engram_layers=(1,), table_size_per_head=5000,
                         batch=2, prompt_len=16, output_len=4, tier="host", cache_fraction=0.01)
    runner = Runner(tmp_path, threads=1, repeats=2)
    try:
        m = runner.measure(cfg)
    finally:
        runner.close()
    assert len(m.step_s) == 2 and all(len(r) == cfg.output_len for r in m.step_s)
    steps = [s for s in m.spans if s.name == "step"]
    assert len(steps) == cfg.output_len
    assert m.metrics["throughput_tokens_per_s"] == pytest.approx(
        cfg.batch * cfg.output_len / (m.metrics["step_time_s"] * cfg.output_len))
    assert 0 < m.metrics["bytes_to_device"] < cfg.batch * cfg.prompt_len * 8 * 160
    assert {s.name for s in m.spans} >= {"step", "hash", "embed", "wait_L1", "gather_L1", "engram_L1", "head"}


def test_a_profile_from_another_machine_is_reported_as_such():
    from planner.validation.run import profile_origin

    hw = load_hardware(os.path.join(ROOT, PROFILE))
    here = profile_origin(hw, True, {"speed_before": 0.6, "speed_after": 0.7})
    assert not here["foreign"]  # calibrated here: a slow probe is load, not another machine
    other = profile_origin(hw, False, {"speed_before": 1.0, "speed_after": 1.0})
    assert other["foreign"] and "another machine" in other["why"] and hw.calibration.fingerprint.date in other["why"]
    unknown = profile_origin(hw, None, {"speed_before": 2.4, "speed_after": 2.5})
    assert unknown["foreign"] and "250%" in unknown["why"]
    data = {"profile": "p", "runs": [], "summary": {"step_time_s": {"median_abs_error": 0.05, "p90_abs_error": 0.1,
                                                                   "coverage": 1.0, "runs": 0}},
            "regimes": {}, "threshold": 0.1, "passed": True, "wall_s": 1.0, "profile_origin": other,
            "notes": [other["why"]]}
    text = report.format_text(data)
    assert "PASS (foreign profile: not a test of the model)" in text and "FOREIGN PROFILE" in text


@pytest.mark.slow
@pytest.mark.serial
def test_quick_validation_gate(tmp_path):
    """The gate, as a user runs it on a machine we have never seen: `calibrate --quick` with an
    empty cache, then `validate --quick` against that profile, measured once (each run's steps
    are repeated and their lower quartile scored; a gate retried until it passes proves
    nothing).

    * the model: with predictions scaled by the machine's drift since calibration (four of
      calibration's own runs timed again, interleaved with the grid), the median |step-time
      error| is within GATE_BOUND: the cost model transfers from calibration's shapes to the
      grid's;
    * the user's figure: the plain median |step-time error| is within that bound plus the
      drift the anchors measured (a shared VM's speed moves by 10-40% over minutes: docs/
      validation.md, "Reliability"), and bytes moved are within 10%."""
    pytest.importorskip("torch")
    from planner.cli import main
    from planner.validation.run import validate

    profile = tmp_path / "profile.yaml"
    assert main(["calibrate", "--quick", "--no-cache", "--out", str(profile)]) == 0
    hw = load_hardware(profile)
    v = validate(hw, str(profile), tmp_path / "validation", quick=True)
    summary, drift, table = v.data["summary"], v.data["drift"], report.format_text(v.data)
    print(table)
    assert not v.data["profile_origin"]["foreign"], table
    assert summary["bytes_to_device"]["median_abs_error"] <= 0.10, table
    assert drift["ratio"] is not None and 0.67 <= drift["ratio"] <= 1.5, f"the machine's speed changed past use\n{table}"
    assert drift["controlled"]["median_abs_error"] <= GATE_BOUND, table
    assert summary["step_time_s"]["median_abs_error"] <= GATE_BOUND + abs(drift["ratio"] - 1.0), table


# The gate's bound on the drift-controlled median |step-time error|: above the model's own
# error on this machine kind (drift-controlled quick medians 2.0-3.2% in three fresh-clone runs,
# but one more quick run at a 1.006x drift scored 9.4%: one calibration differs from the next;
# docs/validation.md) and far below a broken model (the calibration this replaced was 44-58%
# off, every run 2-3x too fast). A slowdown of every run alike (anchors included) reads as
# drift here: the prefetch worker's full OpenMP team did that (1.2x); tests/test_prefetch.py
# checks the worker's team directly.
GATE_BOUND = 0.15


def test_drift_is_the_anchors_now_over_then():
    from planner.validation.run import drift

    hw = load_hardware(os.path.join(ROOT, PROFILE))
    names = list(hw.calibration.anchors)[:2]
    then = hw.calibration.anchors
    now = [{names[0]: 1.2 * then[names[0]], names[1]: 1.1 * then[names[1]]}, {names[0]: 1.3 * then[names[0]]}]
    d = drift(hw, now)
    assert d["ratio"] == pytest.approx(1.2) and d["runs"][names[0]] == pytest.approx([1.2, 1.3])
    assert drift(hw, [{"unknown run": 1.0}]) is None
    results = [_result("a", 1.0, 0.8), _result("b", 2.0, 1.6)]  # 20% low: the machine ran 1.25x slower
    assert compare.controlled(results, 1.25)["median_abs_error"] == pytest.approx(0.0)
    assert compare.controlled(results, None) is None
    # Per run, signed: which runs the model itself gets wrong once the drift is out.
    per_run = compare.controlled(results + [_result("c", 1.0, 0.88)], 1.25)["per_run"]
    assert per_run == pytest.approx({"a": 0.0, "b": 0.0, "c": 0.1})


def test_anchors_replay_calibration_runs_exactly():
    """The drift anchors are calibration's own runs: as validation runs they build the very
    backbone and Engram geometry calibration timed, at its batch, prompt and output."""
    from planner.calibration.tasks import anchor_runs
    from planner.specs import ModelSpec

    for run in anchor_runs("cpu"):
        cfg = grid.anchor_config(run)
        ours, theirs = grid.model_spec(cfg).model_dump(), ModelSpec.model_validate(run["spec"]).model_dump()
        for key in ("name", "max_seq_len"):  # the engine sizes each run's KV cache by the run itself
            ours.pop(key), theirs.pop(key)
        assert ours == theirs, run["name"]
        assert (cfg.batch, cfg.prompt_len, cfg.output_len, cfg.tier) == (run["batch"], run["prompt_len"],
                                                                          run["output_len"], run["tier"])


def test_a_point_prediction_reports_no_coverage():
    """Bytes moved are predicted as a point (a band of zero width): coverage does not apply, it
    is not a band that missed every run."""
    r = compare.RunResult("a", {}, {}, {"step_time_s": 1.0, "throughput_tokens_per_s": 1.0, "exposed_lookup_s": 0.0,
                                        "bytes_to_device": 100.0},
                          {"step_time_s": 1.0, "throughput_tokens_per_s": 1.0, "exposed_lookup_s": 0.0,
                           "bytes_to_device": 104.0},
                          {"step_time_s": [0.9, 1.1], "throughput_tokens_per_s": [0.9, 1.1], "exposed_lookup_s": [0, 0],
                           "bytes_to_device": [104.0, 104.0]})
    s = compare.summarise([r])
    assert s["bytes_to_device"]["coverage"] is None and s["bytes_to_device"]["median_abs_error"] == pytest.approx(0.04)
    assert s["step_time_s"]["coverage"] == 1.0


def test_a_step_and_its_exposed_lookup_come_from_the_same_quiet_repetitions():
    pytest.importorskip("torch")
    import numpy as np

    from planner.validation.measure import quiet_mean

    # 5 repetitions x 2 steps; the quiet repetitions (the 1st-3rd fastest of 5, around the
    # lower quartile) are rows 3, 1, 4 for step 0 and rows 0, 4, 2 for step 1.
    step = np.array([[5.0, 1.0], [2.0, 9.0], [4.0, 3.0], [1.0, 8.0], [3.0, 2.0]])
    exposed = np.array([[50.0, 10.0], [20.0, 90.0], [40.0, 30.0], [10.0, 80.0], [30.0, 20.0]])
    s, e = quiet_mean(step, exposed)
    assert s.tolist() == [2.0, 2.0] and e.tolist() == [20.0, 20.0]
