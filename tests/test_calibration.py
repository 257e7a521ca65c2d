"""Calibration without measuring: curve fits recover known parameters, profiles built from
synthetic samples load and drive the cost model, the fingerprint rule, and torch staying optional."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import yaml

from planner.calibration import (
    CalibratedEfficiency,
    CalibrationMismatchWarning,
    fingerprint_mismatches,
    fit_latency_bandwidth,
    fit_linear,
    fit_saturating,
    profile_curves,
    warn_if_mismatched,
)
from planner.calibration.build import build_profile
from planner.calibration.fit import fit_link, fit_two_regime, latency_of, median_abs_rel_error, saturating
from planner.cli.calibrate import write_profile
from planner.costmodel import BatchShape, CostModel
from planner.loading import ROOT, load_hardware, load_model, load_scenario

RNG = np.random.default_rng(0)


# ----------------------------------------------------------------------------- fits


@pytest.mark.parametrize("y_max,x_half,p", [(0.8, 1e6, 1.0), (2e10, 3e4, 1.6), (5e6, 200.0, 0.7)])
def test_saturating_fit_recovers_known_parameters(y_max, x_half, p):
    x = np.logspace(np.log10(x_half) - 3, np.log10(x_half) + 3, 15)
    y = saturating(x, y_max, x_half, p) * np.exp(RNG.normal(0, 0.03, x.size))
    fit = fit_saturating(x, y)
    assert fit.params["y_max"] == pytest.approx(y_max, rel=0.1)
    assert fit.params["x_half"] == pytest.approx(x_half, rel=0.3)
    assert fit.params["p"] == pytest.approx(p, abs=0.15)
    assert median_abs_rel_error(fit, x, y) < 0.05


def test_falling_curve_and_latency_bandwidth_and_linear():
    x = np.logspace(3, 9, 12)
    falling = saturating(x, 3e9, 1e6, -1.0)
    assert median_abs_rel_error(fit_saturating(x, falling), x, falling) < 0.01
    t = 12e-6 + x / 8e9
    fit = fit_latency_bandwidth(x, t)
    assert fit.params["y_max"] == pytest.approx(8e9, rel=1e-3) and latency_of(fit) == pytest.approx(12e-6, rel=1e-3)
    line = fit_linear([1, 2, 4, 8], [2e-3 + 5e-4 * n for n in (1, 2, 4, 8)])
    assert line.params == pytest.approx({"intercept": 2e-3, "slope": 5e-4})


def test_two_regime_link_is_chosen_only_when_one_line_does_not_fit():
    x = np.array([4096 * 4.0**i for i in range(8)])
    t = 3e-6 + x / np.where(x < 8e6, 2e9, 5.7e9)
    fit = fit_link(x, t, 0.10)
    assert fit.form == "two_regime" and median_abs_rel_error(fit, x, x / t) < 1e-3
    assert fit.params["bw_small"] == pytest.approx(2e9, rel=1e-3)
    assert fit.params["bw_large"] == pytest.approx(5.7e9, rel=1e-3)
    assert 4 << 20 < fit.params["x_break"] < 16 << 20 and latency_of(fit) == pytest.approx(3e-6, rel=1e-2)
    line = 3e-6 + x / 5e9
    assert fit_link(x, line, 0.10).form == "saturating"
    assert fit_two_regime(x, t)(x) == pytest.approx(x / t, rel=1e-3)


def test_cost_model_evaluates_a_two_regime_link():
    res = synthetic_results()
    sizes = [4096 * 4**i for i in range(8)]
    res["link"] = {"memcpy": [{"bytes": float(s), "seconds": 3e-6 + s / (2e9 if s < 8e6 else 5.7e9)} for s in sizes]}
    hw = build_profile(res, load_hardware("cpu-workstation"), FINGERPRINT, device="cpu", quick=True, wall_s=1.0)
    assert hw.link.h2d_bandwidth == pytest.approx(5.7e9, rel=1e-3)
    cost = CostModel(load_model("tiny-gqa"), hw)
    for size in (1e5, 1e6, 64e6):
        assert float(cost.transfer(size)) == pytest.approx(3e-6 + size / (2e9 if size < 8e6 else 5.7e9), rel=1e-2)


def test_gather_threads_leave_the_engine_its_cores(monkeypatch):
    import planner.calibration.tasks as tasks

    monkeypatch.setattr(tasks.os, "cpu_count", lambda: 2)
    assert tasks.gather_thread_counts(True, engine_cores=1) == []
    assert "gather_threads" not in {t.name for t in tasks.plan("cpu", True, engine_cores=1)}
    monkeypatch.setattr(tasks.os, "cpu_count", lambda: 16)
    assert tasks.gather_thread_counts(True, engine_cores=1) == [2, 15]
    assert tasks.gather_thread_counts(False, engine_cores=2) == [2, 4, 14]


def test_emulated_dtype_is_priced_from_fp32_curves_by_the_gemm_ratio(monkeypatch):
    import planner.calibration.tasks as tasks

    assert tasks.native_dtypes("cuda") >= {"fp32", "bf16"}
    monkeypatch.setattr(tasks, "native_dtypes", lambda device: {"fp32"})
    assert all(t.kwargs["spec"]["dtype"] == "fp32" for t in tasks.plan("cpu", True) if t.name.startswith("ops:"))
    res = synthetic_results()
    res["gemm:bf16"] = [{"n": n, "flops": 2.0 * n**3, "seconds": 5e-6 + 2.0 * n**3 / 1e9} for n in (32, 64, 128, 256)]
    hw = build_profile(res, load_hardware("cpu-workstation"), FINGERPRINT, device="cpu", quick=True, wall_s=1.0,
                       native={"fp32"})
    assert hw.calibration.emulated_dtypes == ["bf16"] and any("GEMM ratio" in s for s in hw.sources)
    fp32, bf16 = load_model("tiny-gqa"), load_model("tiny-gqa").model_copy(update={"dtype": "bf16"})
    ratio = hw.device.flops["fp32"] / hw.device.flops["bf16"]
    shape = BatchShape.prefill(32)
    a, b = CostModel(fp32, hw), CostModel(bf16, hw)
    assert float(b.seconds(b.ffn(0, shape))) == pytest.approx(ratio * float(a.seconds(a.ffn(0, shape))), rel=1e-6)


def test_hyper_connection_sublayers_are_their_own_op_kinds():
    hw = load_hardware("cpu-workstation")
    tiny, gqa = CostModel(load_model("tiny"), hw), CostModel(load_model("tiny-gqa"), hw)
    shape = BatchShape.decode(4, 64)
    assert tiny.attention(shape).kind == "attention:mla+hc" and tiny.ffn(0, shape).kind == "ffn:dense+hc"
    assert tiny.embed(shape).kind == "embed+hc" and gqa.ffn(0, shape).kind == "ffn:dense"


# ----------------------------------------------------------------------------- synthetic run


def _op_samples(spec, rate_flops, fixed_s):
    """What measure_model_ops returns, for a machine where every op costs fixed + flops/rate."""
    cost = CostModel(spec, load_hardware("cpu-workstation"))
    out = []
    shapes = [("prefill", 1, t, 0) for t in (8, 32, 128, 256)] + [("decode", b, 1, c) for b, c in ((1, 16), (4, 64), (16, 128))]
    for phase, b, t, c in shapes:
        shape = BatchShape.prefill(t) if phase == "prefill" else BatchShape.decode(b, c)
        works = [cost.attention(shape), cost.ffn(0, shape), cost.embed(shape)]
        works += [cost.engram(shape)] if spec.engram else []
        works += [cost.head(shape)] if phase == "decode" else []
        for w in works:
            secs = fixed_s + (w.flops if not w.kind.startswith("embed") else w.bytes) / rate_flops
            out.append({"model": spec.name, "dtype": spec.dtype, "kind": w.kind, "phase": phase, "batch": b,
                        "tokens": t, "context": c, "flops": float(w.flops), "bytes": float(w.bytes), "seconds": secs})
    return out


def synthetic_results():
    """Raw results shaped like the tasks', from known laws (latency + size / rate)."""
    def rate_samples(sizes, latency, bw, key="bytes"):
        return [{key: float(s), "seconds": latency + s / bw} for s in sizes]

    gemm = [{"n": n, "flops": 2.0 * n**3, "seconds": 5e-6 + 2.0 * n**3 / 20e9} for n in (32, 64, 128, 256, 512, 1024)]
    gather = [{"source": src, "row_bytes": w, "rows": r, "threads": 1, "seconds": 4e-6 + r * w / 1.5e9}
              for src in ("ram", "mmap") for w in (64, 160, 1024) for r in (64, 512, 4096, 32768)]
    return {
        "launch": 3e-6,
        "gemm:fp32": gemm,
        "dram": rate_samples([16 << 20, 64 << 20, 128 << 20], 1e-4, 2.5e9),
        "link": {"memcpy": rate_samples([4096 * 4**i for i in range(8)], 2e-6, 2e9)},
        "gather": gather,
        "hash": [{"tokens": t, "seconds": 50e-6 + t / 5e6, "indices_per_token": 32} for t in (64, 512, 4096, 32768)],
        "ops:Tiny-GQA": _op_samples(load_model("tiny-gqa"), 10e9, 300e-6),
        "step": [{"layers": n, "seconds": 1.5e-3 + n * 1e-3} for n in (1, 2, 4, 8)],
    }


FINGERPRINT = {"cpu": "Test CPU 9000", "cpu_count": 2, "threads": 1, "torch": "2.13.0", "python": "3.12",
               "platform": "Linux", "package_version": "0.1.0", "date": "2026-01-01T00:00:00"}


@pytest.fixture(scope="module")
def synthetic_profile(tmp_path_factory):
    hw = build_profile(synthetic_results(), load_hardware("cpu-workstation"), FINGERPRINT,
                       device="cpu", quick=True, wall_s=1.0)
    path = write_profile(hw, tmp_path_factory.mktemp("cal") / "synthetic.yaml")
    return load_hardware(path)


def test_synthetic_profile_loads_and_every_curve_fits(synthetic_profile):
    hw = synthetic_profile
    assert hw.source == "calibrated" and hw.calibration.fingerprint.cpu == "Test CPU 9000"
    names = {c.name for c in hw.calibration.curves}
    assert {"gemm:fp32", "dram:copy", "link:memcpy", "hash:tokens", "step:layers",
            "op:attention:gqa:fp32", "op:engram:fp32", "gather:ram:160B:1t"} <= names
    for c in hw.calibration.curves:
        assert c.median_abs_rel_error <= 0.10, c.name
        assert len(c.residuals) == len(c.samples_x) == len(c.samples_y)
    k = hw.calibration.constants
    assert hw.link.latency == pytest.approx(2e-6, rel=0.02) and hw.link.h2d_bandwidth == pytest.approx(2e9, rel=0.02)
    assert k["per_step_overhead_s"] == pytest.approx(1.5e-3, rel=0.01)
    assert k["per_layer_overhead_s"] == pytest.approx(1e-3, rel=0.01)
    assert hw.device.flops["fp32"] == pytest.approx(2.0 * 1024**3 / (5e-6 + 2.0 * 1024**3 / 20e9), rel=1e-4)
    assert hw.host.hash_tokens_per_s_per_core == pytest.approx(4096 / (50e-6 + 4096 / 5e6), rel=0.05)


def test_profile_curves_api(synthetic_profile):
    assert profile_curves(load_hardware("h100-sxm")) == {}
    curves = profile_curves(synthetic_profile)
    view = curves["gemm:fp32"]
    assert view.x_label and view.y_label and len(view.samples_x) == len(view.samples_y) == 6
    np.testing.assert_allclose(view.fitted(view.samples_x), view.samples_y, rtol=0.1)
    assert 0 <= view.median_abs_rel_error <= 0.1


def test_cost_model_uses_fitted_op_curves(synthetic_profile):
    spec = load_model("tiny-gqa")
    cost = CostModel(spec, synthetic_profile)
    assert isinstance(cost.eff, CalibratedEfficiency)
    for phase, shape in (("prefill", BatchShape.prefill(32)), ("decode", BatchShape.decode(4, 64))):
        for work in (cost.attention(shape), cost.engram(shape), cost.ffn(0, shape)):
            truth = 300e-6 + work.flops / 10e9
            assert float(cost.seconds(work)) == pytest.approx(truth, rel=0.1), (phase, work.kind)
    # Kinds the calibration did not measure fall back to the GEMM curve and launch constants.
    moe = CostModel(load_model("tiny"), synthetic_profile)
    w = moe.ffn(2, BatchShape.decode(4, 64))
    assert float(moe.seconds(w)) > 0 and moe.eff.launch(w.kernels, moe.launch_s, w.kind) > 0


def test_committed_profile_loads_and_predicts_tiny_ops():
    hw = load_hardware(ROOT / "hw_profiles" / "calibrated-ci-cpu.yaml")
    assert hw.source == "calibrated" and hw.calibration is not None and hw.calibration.device == "cpu"
    assert "AMD EPYC" in hw.description
    curves = profile_curves(hw)
    assert curves and all(np.all(np.isfinite(v.fitted(v.samples_x))) for v in curves.values())
    # Every op sample of the tiny models is reproduced by the cost model within its curve's error.
    for name, view in curves.items():
        if name.startswith("op:") and not name.startswith("op:embed"):
            ratio = view.fitted(view.samples_x) / view.samples_y
            assert np.median(np.abs(ratio - 1)) == pytest.approx(view.median_abs_rel_error, abs=1e-3)


# ----------------------------------------------------------------------------- fingerprint


def _env(hw, **changes):
    fp = hw.calibration.fingerprint
    return {"cpu": fp.cpu, "torch": fp.torch, "gpu": fp.gpu, **changes}


def test_fingerprint_mismatch_warns_and_match_does_not(synthetic_profile):
    hw = synthetic_profile
    assert fingerprint_mismatches(hw, _env(hw)) == []
    assert fingerprint_mismatches(hw, _env(hw, torch="2.13.1+cpu")) == []  # same major.minor
    assert fingerprint_mismatches(hw, _env(hw, torch=None, cpu=None)) == []  # undetectable: silent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_mismatched(hw, _env(hw))
    with pytest.warns(CalibrationMismatchWarning, match="torch 2.13 when calibrated, 2.5 here"):
        warn_if_mismatched(hw, _env(hw, torch="2.5.1"))
    with pytest.warns(CalibrationMismatchWarning, match="Other CPU"):
        warn_if_mismatched(hw, _env(hw, cpu="Other CPU"))
    assert fingerprint_mismatches(load_hardware("h100-sxm")) == []


def test_simulate_warns_on_mismatch_and_not_on_match(synthetic_profile, monkeypatch):
    from planner.calibration import profile as profile_module
    from planner.sim import simulate

    scenario = load_scenario("cpu-tiny").model_copy(update={"hardware": synthetic_profile})
    monkeypatch.setattr(profile_module, "current_environment", lambda: _env(synthetic_profile))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CalibrationMismatchWarning)
        simulate(scenario, baseline=False)
    monkeypatch.setattr(profile_module, "current_environment", lambda: _env(synthetic_profile, cpu="Other CPU"))
    with pytest.warns(CalibrationMismatchWarning):
        simulate(scenario, baseline=False)


def test_simulate_cli_prints_the_warning_on_stderr(synthetic_profile, tmp_path):
    # The synthetic profile was "calibrated" on "Test CPU 9000": this machine differs.
    data = synthetic_profile.to_yaml_dict()
    (tmp_path / "hw.yaml").write_text(yaml.safe_dump(data))
    scenario = yaml.safe_load((ROOT / "examples" / "scenarios" / "cpu-tiny.yaml").read_text())
    scenario.update(hardware="hw.yaml")
    scenario["workload"].update(num_sequences=4)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(scenario))
    run = subprocess.run([sys.executable, "-m", "planner", "simulate", str(tmp_path / "s.yaml"), "--no-baseline"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "CalibrationMismatchWarning" in run.stderr and "Test CPU 9000" in run.stderr


# ----------------------------------------------------------------------------- torch optional

NO_TORCH = """
import sys
sys.modules['torch'] = None
from planner.cli import main
from planner.calibration import profile_curves
from planner.loading import load_hardware
import planner.analytic, planner.sim, planner.calibration.build, planner.calibration.tasks
assert main(['params', 'tiny']) == 0
assert main(['simulate', 'cpu-tiny', '--no-baseline']) == 0
hw = load_hardware('calibrated-ci-cpu')
assert profile_curves(hw)
assert 'torch' not in sys.modules or sys.modules['torch'] is None
print('OK')
"""


def test_planner_runs_without_torch():
    run = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("OK")
