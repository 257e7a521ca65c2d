"""Calibration without measuring: curve fits recover known parameters, profiles built from
synthetic samples load and drive the cost model, the fingerprint rule, and torch staying optional."""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import yaml

from planner.calibration import (
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
from planner.efficiency import CalibratedEfficiency
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
    gathers = next(t for t in tasks.plan("cpu", True, engine_cores=1) if t.name == "gather_tables")
    assert gathers.kwargs["threads"] == [1]
    monkeypatch.setattr(tasks.os, "cpu_count", lambda: 16)
    assert tasks.gather_thread_counts(True, engine_cores=1) == [2, 15]
    assert tasks.gather_thread_counts(False, engine_cores=2) == [2, 4, 14]


def test_calibration_runs_span_the_widths_the_planner_asks_about():
    import planner.calibration.tasks as tasks

    assert tasks.native_dtypes("cuda") >= {"fp32", "bf16"}
    engine = next(t for t in tasks.plan("cpu", True) if t.name == "engine")
    widths = sorted({r["spec"]["d_model"] for r in engine.kwargs["runs"]})
    assert widths[0] <= 64 and widths[-1] >= 512 and all(r["spec"]["dtype"] == "fp32" for r in engine.kwargs["runs"])
    assert {r["spec"]["attention"]["kind"] for r in engine.kwargs["runs"]} == {"gqa", "mla"}


def test_hyper_connection_sublayers_are_their_own_op_kinds():
    hw = load_hardware("cpu-workstation")
    tiny, gqa = CostModel(load_model("tiny"), hw), CostModel(load_model("tiny-gqa"), hw)
    shape = BatchShape.decode(4, 64)
    assert tiny.attention(shape).kind == "attention:mla+hc" and tiny.ffn(0, shape).kind == "ffn:dense+hc"
    assert tiny.embed(shape).kind == "embed+hc" and gqa.ffn(0, shape).kind == "ffn:dense"


# ----------------------------------------------------------------------------- synthetic run

# A machine with known laws: GEMMs at 20 GFLOP/s after 5 us, and of M rows at 1 / (1 + 16 / M)
# of that; memory at 2.5 GB/s copies (5 GB/s read + write); every op kind costs 200 us + 0.5 us a
# row + 3 us a sequence + max(FLOPs / (40% of peak x rows / (rows + 16)), bytes / (50% of the
# memory bandwidth));
# the engine's hash call 250 us + 3 ns an index; a lookup 300 us + 100 ns a requested row + its
# rows' gather; every step 500 us beyond its spans.
PEAK = 2.0 * 1024**3 / (5e-6 + 2.0 * 1024**3 / 20e9)
OP = {"fixed_s": 200e-6, "flop_fraction": 0.4, "byte_fraction": 0.5, "row_s": 0.5e-6, "t_half": 16.0, "seq_s": 3e-6}
HASH = (250e-6, 3e-9)
LOOKUP = (300e-6, 100e-9)
CACHE = (400e-6, 40e-9)  # what the cached run's hot-row cache adds to each lookup
STEP_OVERHEAD = 500e-6


def gather_row_s(table_bytes, row_bytes):
    """Per-row seconds of the synthetic machine: cache hits up to 16 MiB, DRAM and TLB misses above."""
    small = table_bytes <= 16 << 20
    return (30e-9 if small else 110e-9) + row_bytes / (8e9 if small else 2e9)


def few_rows(tokens):
    """The synthetic machine's few-row GEMM ceiling: half the rate at 16 rows."""
    return 1.0 / (1.0 + 16.0 / np.asarray(tokens, float))


def _engine_samples():
    """What measure_engine returns for the quick plan on the synthetic machine."""
    from planner.accounting import engram_row_bytes, engram_table_bytes
    from planner.calibration.engine_fit import _BLOCK, _work, sample_shape
    from planner.calibration.fit import roofline_seconds
    from planner.calibration.tasks import engine_runs
    from planner.specs import ModelSpec

    counting = load_hardware("cpu-workstation")
    out, specs = [], {}
    for run in engine_runs("cpu", True):
        spec = ModelSpec.model_validate(run["spec"])
        specs[spec.name] = run["spec"]
        cost = CostModel(spec, counting)
        P, N, B = run["prompt_len"], run["output_len"], run["batch"]
        for k in range(N):
            phase, tokens, context = ("prefill", P, 0) if k == 0 else ("decode", 1, P + k - 1)
            device = run["tier"] == "device"
            s = {"run": run["name"], "model": spec.name, "dtype": spec.dtype, "phase": phase, "batch": B,
                 "tokens": tokens, "context": context, "n_layers": spec.n_layers, "tier": run["tier"],
                 "engram_layers": list(spec.engram_layer_ids), "spans": {}, "lookups": {},
                 "cache_fraction": run.get("cache_fraction", 0.0)}
            shape = sample_shape(s)
            names = ["embed", "head"] + [f"{op}_L{i}" for i in range(spec.n_layers) for op in ("attn", "ffn")]
            names += [f"engram_L{i}" for i in spec.engram_layer_ids]
            names += [f"gather_L{i}" for i in spec.engram_layer_ids] if device else []
            for name in names:
                m = _BLOCK.match(name)
                w = _work(cost, m.group(1), int(m.group(2)), shape) if m else _work(cost, name, None, shape)
                s["spans"][name] = float(roofline_seconds(OP, w.flops, w.bytes, w.tokens, PEAK, 5e9, w.seqs))
            requested = B * tokens * spec.engram.rows_per_token
            row = engram_row_bytes(spec)
            cached = bool(s["cache_fraction"])
            fetched = 0 if device else (requested // 2 if cached else requested)  # half the reads hit the cache
            for layer in spec.engram_layer_ids:
                table = engram_table_bytes(spec)[layer]
                s["spans"][f"wait_L{layer}"] = (s["spans"][f"gather_L{layer}"] if device else
                                                LOOKUP[0] + LOOKUP[1] * requested + fetched * gather_row_s(table, row)
                                                + (CACHE[0] + CACHE[1] * requested if cached else 0.0))
                s["lookups"][str(layer)] = {"requested": requested, "fetched": fetched}
            indices = B * tokens * spec.engram.rows_per_token * len(spec.engram_layer_ids)
            s["spans"]["hash"] = HASH[0] + HASH[1] * indices
            inside = {k: v for k, v in s["spans"].items() if not (device and k.startswith("gather_L"))}
            s["spans"]["step"] = sum(inside.values()) + STEP_OVERHEAD
            out.append(s)
    return {"specs": specs, "steps": out}


def synthetic_results():
    """Raw results shaped like the tasks', from known laws."""
    def rate_samples(sizes, latency, bw, key="bytes"):
        return [{key: float(s), "seconds": latency + s / bw} for s in sizes]

    gemm = [{"n": n, "flops": 2.0 * n**3, "seconds": 5e-6 + 2.0 * n**3 / 20e9} for n in (32, 64, 128, 256, 512, 1024)]
    rows = [{"rows": m, "n": 1024, "flops": 2.0 * m * 1024**2, "seconds": 2.0 * m * 1024**2 / (PEAK * few_rows(m))}
            for m in (1, 2, 4, 8, 16, 32, 64, 128, 256)]
    gathers = [{"table_bytes": float(size), "row_bytes": w, "rows": 4096, "huge_pages": False, "threads": 1,
                "seconds": 4096 * gather_row_s(size, w)}
               for size in (8 << 20, 32 << 20, 128 << 20, 512 << 20) for w in (64, 256, 1024)]
    return {
        "launch": 3e-6,
        "gemm:fp32": gemm,
        "gemm_rows:fp32": rows,
        "dram": rate_samples([16 << 20, 64 << 20, 128 << 20], 1e-4, 2.5e9),
        "link": {"memcpy": rate_samples([4096 * 4**i for i in range(8)], 2e-6, 2e9)},
        "gather_tables": gathers,
        "hash": [{"tokens": t, "seconds": 50e-6 + t / 5e6, "indices_per_token": 32} for t in (64, 512, 4096, 32768)],
        "engine": _engine_samples(),
    }


FINGERPRINT = {"cpu": "Test CPU 9000", "cpu_count": 2, "threads": 1, "torch": "2.13.0", "python": "3.12",
               "platform": "Linux", "package_version": "0.1.0", "date": "2026-01-01T00:00:00",
               "llc_bytes": 32 << 20}


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
    assert {"gemm:fp32", "dram:copy", "link:memcpy", "hash:tokens", "hash:call", "lookup:overhead", "lookup:cache",
            "step:overhead",
            "op:attention:gqa:fp32", "op:attention:mla+hc:fp32", "op:engram:fp32", "op:head:fp32",
            "gather:ram:latency", "gather:ram:bandwidth"} <= names
    for c in hw.calibration.curves:
        if c.name != "step:overhead":  # a constant: its "error" is relative to near-equal residuals
            assert c.median_abs_rel_error <= 0.10, c.name
        assert len(c.residuals) == len(c.samples_x) == len(c.samples_y)
    k = hw.calibration.constants
    assert hw.link.latency == pytest.approx(2e-6, rel=0.02) and hw.link.h2d_bandwidth == pytest.approx(2e9, rel=0.02)
    assert k["hash_call_s"] == pytest.approx(HASH[0], rel=0.01)
    assert k["per_step_overhead_s"] == pytest.approx(STEP_OVERHEAD, rel=0.05)
    assert hw.device.flops["fp32"] == pytest.approx(PEAK, rel=1e-4)
    assert hw.host.hash_tokens_per_s_per_core == pytest.approx(4096 / (50e-6 + 4096 / 5e6), rel=0.05)


@pytest.mark.parametrize("probe, peak", [(1.3, 1.3), (0.7, 1.0)])
def test_the_flop_ceiling_is_the_best_gemm_of_the_calibration(probe, peak):
    """GEMMs timed between the engine's repetitions raise the peak when the machine ran them
    faster than the GEMM task (measured at a slow moment); a slower probe changes nothing."""
    results = synthetic_results()
    results["engine"]["peak_probes"] = {"fp32": [0.5 * PEAK, probe * PEAK]}
    hw = build_profile(results, load_hardware("cpu-workstation"), FINGERPRINT, device="cpu", quick=True, wall_s=1.0)
    assert hw.device.flops["fp32"] == pytest.approx(peak * PEAK, rel=1e-6)


def test_fits_recover_the_machine_laws(synthetic_profile):
    curves = {c.name: c for c in synthetic_profile.calibration.curves}
    for kind in ("attention:gqa", "ffn:dense", "engram", "head"):
        params = curves[f"op:{kind}:fp32"].params
        assert params["fixed_s"] == pytest.approx(OP["fixed_s"], rel=0.05), kind
        assert params["row_s"] == pytest.approx(OP["row_s"], rel=0.1), kind
        if kind != "head":  # the head's rows are its sequences: one per-row cost
            assert params["seq_s"] == pytest.approx(OP["seq_s"], rel=0.1), kind
    lookup = curves["lookup:overhead"].params
    assert lookup["intercept"] == pytest.approx(LOOKUP[0], rel=0.02) and lookup["slope"] == pytest.approx(LOOKUP[1], rel=0.05)
    cache = curves["lookup:cache"].params  # the cached run's waits less their gather and lookup:overhead
    assert cache["intercept"] == pytest.approx(CACHE[0], rel=0.02) and cache["slope"] == pytest.approx(CACHE[1], rel=0.05)
    hash_call = curves["hash:call"].params
    assert hash_call["slope"] == pytest.approx(HASH[1], rel=0.01)


def test_a_hot_row_cache_adds_its_calibrated_lookup_work(synthetic_profile):
    """An offloaded layer with a cache pays ``lookup:cache`` on top of ``lookup:overhead``
    (scalar and vectorised cache fractions alike); a device-tier layer, which has no cache,
    and a profile without the curve pay nothing for it."""
    from planner.ngram_model import ZipfTraffic
    from planner.specs import EngramPlacement
    from planner.stages import host_placement, layer_fetch

    spec = load_model("tiny")
    k, layer = spec.engram.rows_per_token, spec.engram.layer_ids[0]
    traffic = ZipfTraffic(rows_per_head=1e5, rows_per_token=k)
    tokens = 64.0
    lookups = tokens * k

    def overhead(hw, tier, f):
        cost, p = CostModel(spec, hw), EngramPlacement(tier=tier, cache_fraction=0.0)
        return layer_fetch(cost, p, traffic, layer, tokens, host_placement(cost, p), cache_fraction=f).overhead_s

    plain = LOOKUP[0] + LOOKUP[1] * lookups
    assert float(overhead(synthetic_profile, "host", 0.0)) == pytest.approx(plain, rel=0.02)
    assert float(overhead(synthetic_profile, "host", 0.05)) == pytest.approx(plain + CACHE[0] + CACHE[1] * lookups, rel=0.02)
    np.testing.assert_allclose(overhead(synthetic_profile, "host", np.array([0.0, 0.05])),
                               [plain, plain + CACHE[0] + CACHE[1] * lookups], rtol=0.02)
    assert float(overhead(synthetic_profile, "device", 0.05)) == float(overhead(synthetic_profile, "device", 0.0))
    datasheet = load_hardware("cpu-workstation")
    assert float(overhead(datasheet, "host", 0.05)) == float(overhead(datasheet, "host", 0.0)) == 0.0


def test_profile_curves_api(synthetic_profile):
    assert profile_curves(load_hardware("h100-sxm")) == {}
    curves = profile_curves(synthetic_profile)
    view = curves["gemm:fp32"]
    assert view.x_label and view.y_label and len(view.samples_x) == len(view.samples_y) == 6
    np.testing.assert_allclose(view.fitted(view.samples_x), view.samples_y, rtol=0.1)
    assert 0 <= view.median_abs_rel_error <= 0.1
    op = curves["op:ffn:dense:fp32"]
    assert not op.is_function and op.predicted == pytest.approx(op.samples_y, rel=0.02)


def test_cost_model_reproduces_the_engine_spans(synthetic_profile):
    from planner.calibration.engine_fit import _BLOCK, _work, sample_shape
    from planner.specs import ModelSpec
    from planner.calibration.tasks import engine_runs

    specs = {r["spec"]["name"]: ModelSpec.model_validate(r["spec"]) for r in engine_runs("cpu", True)}
    counting = load_hardware("cpu-workstation")
    for s in synthetic_results()["engine"]["steps"][::5]:
        spec = specs[s["model"]]
        cost, truth = CostModel(spec, synthetic_profile), CostModel(spec, counting)
        assert isinstance(cost.eff, CalibratedEfficiency)
        shape = sample_shape(s)
        for name, seconds in s["spans"].items():
            m = _BLOCK.match(name)
            if (m and (m.group(1) != "gather" or s["tier"] == "device")) or name in ("embed", "head"):
                w = _work(truth, m.group(1), int(m.group(2)), shape) if m else _work(truth, name, None, shape)
                assert float(cost.seconds(w)) == pytest.approx(seconds, rel=0.05), (s["run"], name)
        indices = s["batch"] * s["tokens"] * spec.engram.rows_per_token * len(spec.engram_layer_ids)
        assert float(cost.hash(s["batch"] * s["tokens"], 1)) == pytest.approx(HASH[0] + HASH[1] * indices, rel=0.05)


def test_no_op_curve_prices_above_the_device_peak(synthetic_profile):
    """Anywhere in the planner's range, from one token of a tiny model to 65k tokens of a
    paper-sized one, every op costs at least its FLOPs at the peak and its bytes at the
    memory bandwidth."""
    hws = [synthetic_profile, load_hardware("calibrated-ci-cpu"), load_hardware("h100-sxm")]
    for hw in hws:
        for model in ("tiny", "tiny-gqa", "dense-8b", "engram-27b"):
            spec = load_model(model)
            cost = CostModel(spec, hw)
            for shape in (BatchShape.decode(np.logspace(0, 9, 10, base=2), 4096.0), BatchShape.prefill(np.logspace(0, 16, 9, base=2))):
                works = [cost.attention(shape), cost.ffn(spec.n_layers - 1, shape), cost.head(shape), cost.embed(shape)]
                works += [cost.engram(shape)] if spec.engram else []
                for w in works:
                    floor = np.maximum(w.flops / cost.peak_flops, w.bytes / cost.hbm_bandwidth)
                    assert np.all(np.asarray(cost.seconds(w)) >= floor * (1 - 1e-9)), (hw.name, model, w.kind)


def test_a_table_beyond_the_caches_is_priced_slower_per_row(synthetic_profile):
    """A random row of a table far larger than the LLC costs a DRAM miss (and a page walk); one
    of a table inside it does not: per-row rate falls with the table's size, flat beyond the
    largest table measured."""
    for hw in (synthetic_profile, load_hardware("calibrated-ci-cpu")):
        cost = CostModel(load_model("engram-27b"), hw)
        small, large, huge = (float(cost.gather_rate(1, b)) for b in (8 << 20, 512 << 20, 200e9))
        assert small > 1.3 * large and huge == pytest.approx(large, rel=0.01)
        assert cost.gather_regime(8 << 20).startswith("llc") and cost.gather_regime(200e9).startswith("dram")
    synthetic = CostModel(load_model("engram-27b"), synthetic_profile)
    row = synthetic.row_bytes
    assert float(synthetic.gather_rate(1, 512 << 20)) == pytest.approx(row / gather_row_s(512 << 20, row), rel=0.01)


def test_emulated_dtype_is_priced_from_fp32_curves_by_the_gemm_ratio():
    res = synthetic_results()
    res["gemm:bf16"] = [{"n": n, "flops": 2.0 * n**3, "seconds": 5e-6 + 2.0 * n**3 / 1e9} for n in (32, 64, 128, 256)]
    hw = build_profile(res, load_hardware("cpu-workstation"), FINGERPRINT, device="cpu", quick=True, wall_s=1.0,
                       native={"fp32"})
    assert hw.calibration.emulated_dtypes == ["bf16"] and any("GEMM ratio" in s for s in hw.sources)
    fp32, bf16 = load_model("tiny-gqa"), load_model("tiny-gqa").model_copy(update={"dtype": "bf16"})
    ratio = hw.device.flops["fp32"] / hw.device.flops["bf16"]
    shape = BatchShape.prefill(4096)  # compute-bound: the FLOP term dominates both
    a, b = CostModel(fp32, hw), CostModel(bf16, hw)
    wa, wb = a.ffn(0, shape), b.ffn(0, shape)
    ta = a.eff.op_terms(wa, a.peak_flops, a.hbm_bandwidth, a.launch_s)
    tb = b.eff.op_terms(wb, b.peak_flops, b.hbm_bandwidth, b.launch_s)
    assert float(tb.compute_s) == pytest.approx(ratio * float(ta.compute_s), rel=1e-6)


def test_committed_profile_loads_and_reproduces_its_samples():
    hw = load_hardware(ROOT / "hw_profiles" / "calibrated-ci-cpu.yaml")
    assert hw.source == "calibrated" and hw.calibration is not None and hw.calibration.device == "cpu"
    assert "AMD EPYC" in hw.description
    curves = profile_curves(hw)
    assert curves and all(np.all(np.isfinite(v.predicted)) for v in curves.values())
    for name, view in curves.items():
        if view.is_function:
            ratio = view.fitted(view.samples_x) / view.samples_y
            assert np.median(np.abs(ratio - 1)) == pytest.approx(view.median_abs_rel_error, abs=1e-3), name


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
    from planner.calibration import fingerprint as profile_module
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


def test_calibrate_says_when_other_work_shared_the_machine():
    from planner.cli.calibrate import load_warning

    quiet = {"probe_before": 100e9, "probe_after": 96e9, "loadavg_before": 0.2, "loadavg_after": 2.1}
    assert load_warning(quiet, threads=2, cores=2, all_cached=False) is None  # our own two threads
    busy = dict(quiet, loadavg_after=3.4)
    assert "other work shared this machine" in load_warning(busy, threads=2, cores=2, all_cached=False)
    drift = dict(quiet, probe_after=60e9)
    assert "100 then 60 GFLOP/s" in load_warning(drift, threads=2, cores=2, all_cached=False)
    assert load_warning(drift, threads=2, cores=2, all_cached=True) is None  # nothing was measured


@pytest.mark.parametrize("edit, says", [
    (lambda p: p.update(t_half=0.0), "t_half is > 0"),
    (lambda p: p.pop("row_s"), "a roofline curve has params"),
    (lambda p: p.update(row_s=-1e-6), "row_s >= 0"),
    (lambda p: p.update(seq_s=-1e-6), "seq_s is >= 0"),
])
def test_a_damaged_op_curve_is_refused_by_name(synthetic_profile, tmp_path, edit, says):
    """A profile whose op curve lost or broke its per-row or per-sequence cost or its knee is
    refused, naming the curve (never priced with a silent default)."""
    from planner.loading import SpecError

    data = yaml.safe_load(open(write_profile(synthetic_profile, tmp_path / "p.yaml")))
    curve = next(c for c in data["calibration"]["curves"] if c["name"] == "op:ffn:dense:fp32")
    edit(curve["params"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_hardware(bad)
    assert "op:ffn:dense:fp32" in str(err.value) and says in str(err.value)
