"""Sweeps, Hardware, Planner and Validation pages under AppTest, plus the `app` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
MAIN = str(ROOT / "app" / "main.py")
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "app"


def _app(page: str) -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120).run()
    at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def chart(at: AppTest, key: str) -> dict:
    return json.loads(next(e for e in at.get("plotly_chart") if e.key == key).proto.spec)


def _y(trace: dict) -> np.ndarray:
    y = trace["y"]
    if isinstance(y, dict):  # plotly 6+ may encode arrays as {"dtype", "bdata"}
        import base64
        return np.frombuffer(base64.b64decode(y["bdata"]), dtype=y["dtype"])
    return np.asarray(y, float)


# ----------------------------------------------------------------------------- sweeps


def test_sweeps_one_line_per_profile_and_link_sweep_falls():
    at = _app("pages/sweeps.py")
    at.multiselect(key="sw.profiles").set_value(["h100-sxm", "h100-pcie"]).run()
    at.radio(key="sw.variable").set_value("link").run()
    at.radio(key="sw.h100-engram27b-host.pl.tier").set_value("host").run()
    at.checkbox(key="sw.h100-engram27b-host.pl.prefetch").uncheck().run()
    assert not at.exception and not at.error
    data = chart(at, "sw.fig")["data"]
    assert len(data) == 2
    drop = _y(data[0])
    assert drop[0] > drop[-1] > 0  # slower link -> larger drop
    # each profile's own link speed is marked on the axis, in its line's colour
    layout = chart(at, "sw.fig")["layout"]
    marks = sorted(s["x0"] for s in layout["shapes"] if s.get("type") == "line")
    assert marks == pytest.approx([63.0, 63.0])  # both PCIe Gen5 x16 presets: 63 GB/s
    assert sum("63 GB/s" in a["text"] for a in layout["annotations"]) == 2
    at.radio(key="sw.variable").set_value("table").run()
    table = _y(chart(at, "sw.fig")["data"][0])
    assert not np.allclose(table, drop[: len(table)])
    # where host DRAM is full of tables, per profile
    assert any("host full at" in a["text"] for a in chart(at, "sw.fig")["layout"]["annotations"])


def test_sweeps_identical_profiles_stay_visible():
    """H800 and H100 SXM have the same figures for this sweep: both lines are drawn apart by
    dash and marker, and the second says it equals the first."""
    at = _app("pages/sweeps.py")
    at.multiselect(key="sw.profiles").set_value(["h100-sxm", "h800"]).run()
    data = chart(at, "sw.fig")["data"]
    assert len(data) == 2 and data[0]["line"]["dash"] != data[1]["line"]["dash"]
    assert "(= " in data[1]["name"]


def test_sweeps_layer_id_with_two_engram_layers_moves_one():
    at = _app("pages/sweeps.py")
    at.radio(key="sw.variable").set_value("layer").run()
    assert not at.exception and not at.error
    assert any("single Engram layer" in c.value for c in at.caption)
    assert len(_y(chart(at, "sw.fig")["data"][0])) == 30  # every block of Engram-27B


# ----------------------------------------------------------------------------- hardware


def test_hardware_table_bars_and_no_calibration():
    at = _app("pages/hardware.py")
    at.multiselect(key="hwp.profiles").set_value(["h100-sxm", "gh200"]).run()
    assert [r for r in at.dataframe[0].value["profile"]] == ["h100-sxm", "gh200"]
    bars = chart(at, "hwp.fig.0")["data"][0]
    assert list(bars["x"]) == ["h100-sxm", "gh200"]
    assert any("No calibration in this profile" in i.value for i in at.info)


def test_hardware_shows_calibrated_curves(monkeypatch):
    calibration = pytest.importorskip("planner.calibration")
    from planner.calibration import CurveView
    from planner.calibration.fit import Fit

    view = CurveView("h2d copy", "pinned copies", "bytes", "GB/s", np.array([1e4, 1e6, 1e8]),
                     np.array([2.0, 30.0, 52.0]), 0.04, Fit("saturating", {"y_max": 53.0, "x_half": 2e5, "p": 1.0}),
                     np.array([0.01, -0.04, 0.02]))
    monkeypatch.setattr(calibration, "profile_curves", lambda hw: {"h2d": view})
    at = _app("pages/hardware.py")
    curve = chart(at, "hwp.curve.0")["data"]
    assert [t["name"] for t in curve] == ["measured", "fitted"]


def test_hardware_bundled_calibrated_profile_plots_its_curves():
    from planner.loading import bundled_profiles, load_hardware

    calibrated = [n for n in bundled_profiles() if load_hardware(n).source == "calibrated"]
    if not calibrated:
        pytest.skip("no calibrated profile in hw_profiles/")
    at = _app("pages/hardware.py")
    assert at.selectbox(key="hwp.calib").value in calibrated
    assert len(at.dataframe[1].value) >= 1  # one row per fitted curve
    assert chart(at, "hwp.curve.0")["data"][0]["name"] == "measured"


# ----------------------------------------------------------------------------- planner


def test_planner_recommends_and_exports_runnable_yaml(tmp_path):
    from planner.plan import load_plan, plan_from_dict

    at = _app("pages/planner.py")
    at.text_input(key="pl.params").input("25B, 400B").run()
    at.text_input(key="pl.layers").input("1").run()
    at.multiselect(key="pl.prefetch").set_value([True]).run()
    plan_yaml = at.get("download_button")[0]
    assert not at.error
    at.button(key="pl.run").click().run()
    assert not at.exception and not at.error
    recs = at.dataframe[0].value
    assert len(recs) >= 1 and list(recs["rank"])[0] == 1
    assert any(m.value.startswith("#1: ") for m in at.markdown)
    assert chart(at, "pl.fig.0")["data"]
    # The YAML shown is the one `engram-planner plan` loads: same plan back.
    text = next(c.value for c in at.code if "studies:" in c.value)
    (tmp_path / "plan.yaml").write_text(text)
    import yaml
    assert load_plan(tmp_path / "plan.yaml") == plan_from_dict(yaml.safe_load(text))
    assert plan_yaml is not None


def test_planner_bad_input_names_field():
    at = _app("pages/planner.py")
    at.text_input(key="pl.params").input("25 parsecs").run()
    assert not at.exception
    assert "engram_params" in at.error[0].value


# ----------------------------------------------------------------------------- validation


def test_validation_explains_how_to_produce_results(monkeypatch, tmp_path):
    monkeypatch.setenv("ENGRAM_VALIDATION_DIR", str(tmp_path))
    at = _app("pages/validation.py")
    assert any("engram-planner validate" in i.value for i in at.info)


def test_validation_scatter_band_and_error_table(monkeypatch):
    monkeypatch.setenv("ENGRAM_VALIDATION_DIR", str(FIXTURES))
    at = _app("pages/validation.py")
    assert not at.error
    summary = at.dataframe[0].value
    assert list(summary["metric"]) == ["output throughput (tok/s)", "TPOT p50 (s)"]  # words, not keys
    assert all(v.endswith("%") or v == "—" for v in summary["median |error|"])
    data = chart(at, "va.fig")["data"]
    names = [t["name"] for t in data]
    assert "predicted = measured" in names and "outside band" in names
    runs = at.dataframe[1].value
    assert list(runs["in band"]).count("no") == 2
    at.selectbox(key="va.metric").set_value("tpot_p50_s").run()
    layout = chart(at, "va.fig")["layout"]
    assert layout["title"]["text"].startswith("TPOT p50") and layout["xaxis"]["title"]["text"].endswith("(ms)")


def test_validation_opens_on_the_newest_measurement(monkeypatch, tmp_path):
    """Folders sort by name, measurements by date: the page's default file is the one measured
    last, then older ones, then files it cannot date (a broken file among them)."""
    base = json.loads((FIXTURES / "validation_synthetic.json").read_text())
    for folder, date in (("a-box", "2026-11-01T10:00:00+0000"), ("b-box", "2026-12-02T06:50:17+0000"),
                         ("c-box", "2026-11-20T08:00:00+0000")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "validation.json").write_text(json.dumps({**base, "fingerprint": {"date": date}}))
    (tmp_path / "0-broken").mkdir()
    (tmp_path / "0-broken" / "validation.json").write_text("{not json")
    monkeypatch.setenv("ENGRAM_VALIDATION_DIR", str(tmp_path))
    at = _app("pages/validation.py")
    box = at.selectbox(key="va.file")
    order = [o.split("/")[1] for o in box.options]
    assert order == ["b-box", "c-box", "a-box", "0-broken"]
    assert box.value.split("/")[1] == "b-box" and not at.error


def test_validation_says_how_far_the_machine_drifted(monkeypatch, tmp_path):
    """The drift line under the error table, and the runs table's step-time error with the
    drift taken out, where validate recorded them; neither for a result without a drift."""
    def run(name, meas, pred):
        return {"name": name, "config": {}, "measured": {"step_time_s": meas}, "predicted": {"step_time_s": pred},
                "band": {"step_time_s": [0.9 * pred, 1.1 * pred]}}

    base = {"profile": "p.yaml", "runs": [run("host-a", 0.010, 0.0087), run("host-b", 0.020, 0.0150)],
            "summary": {"step_time_s": {"median_abs_error": 0.19, "p90_abs_error": 0.24, "coverage": 0.5}}}
    drift = {"ratio": 1.15, "runs": {}, "controlled": {"median_abs_error": 0.033, "p90_abs_error": 0.04, "runs": 2,
                                                       "per_run": {"host-a": 0.0005}}}
    (tmp_path / "validation.json").write_text(json.dumps({**base, "drift": drift}))
    monkeypatch.setenv("ENGRAM_VALIDATION_DIR", str(tmp_path))
    at = _app("pages/validation.py")
    assert not at.error
    text = " ".join(m.value for m in at.markdown)
    assert "Machine drift since calibration: 1.15x" in text and "3.3% median, 4% p90" in text
    rows = at.dataframe[1].value
    assert list(rows["error"]) == ["-13%", "-25%"] and list(rows["error, drift out"]) == ["+0.05%", "—"]
    del drift["controlled"]["per_run"]  # a file written before validate kept it: the file's own numbers
    (tmp_path / "validation.json").write_text(json.dumps({**base, "drift": drift}))
    at = _app("pages/validation.py")
    assert list(at.dataframe[1].value["error, drift out"]) == ["+0.05%", "-13.8%"]  # 15 ms x 1.15 = 17.25 ms
    (tmp_path / "validation.json").write_text(json.dumps(base))  # no drift recorded: neither
    at = _app("pages/validation.py")
    assert not any("Machine drift" in m.value for m in at.markdown)
    assert "error, drift out" not in at.dataframe[1].value.columns


# ----------------------------------------------------------------------------- command


def test_app_command_is_registered_and_headless():
    from planner.cli import COMMANDS, build_parser
    from planner.cli.app import command

    assert "app" in COMMANDS
    args = build_parser().parse_args(["app", "--port", "8600"])
    assert args.port == 8600
    cmd = command(8600)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[4].endswith("app/main.py")
    assert "--server.headless" in cmd and cmd[cmd.index("--server.port") + 1] == "8600"


def test_bench_app_is_registered():
    from planner.bench import BENCHES

    assert "app" in BENCHES
