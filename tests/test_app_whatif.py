"""What-if page under AppTest: numbers that must move when inputs move, errors that name fields."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

S = "wi.h100-engram27b-host"  # widget scope: page, starting scenario
HW = S + ".hw.h100-sxm"
MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")


def _app(page: str = "pages/whatif.py") -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120).run()
    if page != "pages/whatif.py":
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label.startswith(label))


def chart(at: AppTest, key: str) -> dict:
    return json.loads(next(e for e in at.get("plotly_chart") if e.key == key).proto.spec)


def test_defaults_show_estimate_memory_and_layers():
    at = _app()
    assert not at.error
    assert float(metric(at, "Output tok/s").replace(",", "")) > 0
    assert metric(at, "Drop vs no Engram").endswith("%")
    mem = chart(at, "wi.fig.mem")
    names = [t.get("name") for t in mem["data"]]
    assert any(n and n.startswith("Engram table") for n in names)
    # shares of each tier's capacity on a linear axis, the capacity at 100%
    assert mem["layout"].get("yaxis", {}).get("type") != "log"
    assert any(s.get("y0") == 100 for s in mem["layout"]["shapes"])
    layers = chart(at, "wi.fig.layers")  # fetch vs window: a 13 µs fetch beside an 8 ms window
    assert layers["layout"]["yaxis"]["type"] == "log"
    assert at.dataframe and len(at.dataframe[0].value) == 2  # Engram-27B: layers 1 and 14


def test_host_tier_with_slow_link_changes_drop():
    at = _app()
    at.number_input(key=HW + ".f.link.h2d_bandwidth").set_value(0.05).run()
    at.checkbox(key=S + ".pl.prefetch").uncheck().run()
    at.radio(key=S + ".pl.tier").set_value("device").run()
    on_device = metric(at, "Drop vs no Engram")
    at.radio(key=S + ".pl.tier").set_value("host").run()
    on_host = metric(at, "Drop vs no Engram")
    assert not at.error
    assert float(on_host.rstrip("%")) > float(on_device.rstrip("%")) + 1.0
    assert metric(at, "Exposed / step") != "0 s"
    # A faster link shrinks the drop again.
    at.number_input(key=HW + ".f.link.h2d_bandwidth").set_value(64.0).run()
    assert float(metric(at, "Drop vs no Engram").rstrip("%")) < float(on_host.rstrip("%"))


def test_cache_fraction_changes_exposed_time():
    at = _app()
    at.number_input(key=HW + ".f.link.h2d_bandwidth").set_value(0.2).run()
    at.checkbox(key=S + ".pl.prefetch").uncheck().run()
    before = metric(at, "Exposed / step")
    at.slider(key=S + ".pl.cache_fraction").set_value(0.2).run()
    assert metric(at, "Exposed / step") != before


def test_invalid_field_names_its_path():
    at = _app()
    at.number_input(key=HW + ".f.link.h2d_bandwidth").set_value(0.0).run()
    assert not at.exception
    assert "hardware.link.h2d_bandwidth" in at.error[0].value
    assert not at.metric  # no stale numbers under an error


def test_yaml_override_error_and_bad_layer_ids():
    at = _app()
    at.text_area(key=HW + ".yaml").input("host: {cores: -3}").run()
    assert "hardware.host.cores" in at.error[0].value
    at.text_area(key=HW + ".yaml").input("host: [unclosed").run()
    assert "not valid YAML" in at.error[0].value
    at.text_area(key=HW + ".yaml").input("").run()
    at.text_input(key=S + ".model.engram-27b.f.layer_ids").input("1, 99").run()
    assert "`model`: engram.layer_ids[1] = 99" in at.error[0].value


def test_start_scenario_resets_inputs():
    at = _app()
    at.radio(key=S + ".pl.tier").set_value("device").run()
    at.selectbox(key="wi.start").set_value("cpu-tiny").run()
    assert at.radio(key="wi.cpu-tiny.pl.tier").value == "host"
    assert at.selectbox(key="wi.cpu-tiny.hw").value == "cpu-workstation"
    assert "Tiny" in at.caption[0].value


def test_simulator_on_demand_with_timeline():
    at = _app()
    at.selectbox(key="wi.start").set_value("cpu-tiny").run()
    assert not any(m.label == "Simulated tok/s" for m in at.metric)
    at.button(key="wi.simulate").click().run()
    assert not at.exception and not at.error
    assert float(metric(at, "Simulated tok/s").replace(",", "")) > 0
    # The page says how far the analytic headline is from the simulation, and why.
    assert any(c.value.startswith("Simulated ") and "vs analytic" in c.value and "queueing" in c.value
               for c in at.caption)
    gantt = chart(at, "wi.fig.gantt")
    names = {t["name"] for t in gantt["data"]}
    # CPU device computing on every core: the prefetch worker's gathers hold the compute cores
    # before the forward (planner.stages), so they show and nothing waits exposed.
    assert "gather (host)" in names and "wait: exposed fetch" not in names
    at.checkbox(key="wi.cpu-tiny.pl.prefetch").uncheck().run()
    at.button(key="wi.simulate").click().run()
    gantt = chart(at, "wi.fig.gantt")
    # On demand the lookups run inside each Engram layer's wait: exposed (red).
    red = next(t for t in gantt["data"] if t["name"] == "wait: exposed fetch")
    assert red["marker"]["color"] == "#d62728"
    assert chart(at, "wi.fig.simlayers")["data"]
    # A change keeps the analytic path live and asks for a new simulation.
    at.slider(key="wi.cpu-tiny.pl.cache_fraction").set_value(0.2).run()
    assert any("run the simulator again" in i.value for i in at.info)


def test_every_example_scenario_renders_and_exports_its_yaml():
    import yaml

    from planner.loading import SCENARIOS_DIR, scenario_from_dict

    at = _app()
    for path in sorted(SCENARIOS_DIR.glob("*.yaml")):
        at.selectbox(key="wi.start").set_value(path.stem).run()
        assert not at.exception and not at.error, (path.stem, [e.value for e in at.exception])
        assert float(metric(at, "Output tok/s" if "train" not in path.stem else "Throughput").replace(",", "")) > 0
        if "train" in path.stem:  # a training step's cards: its time and tokens, no TTFT
            assert metric(at, "Step time").endswith("ms") and float(metric(at, "Tokens / step").replace(",", "")) > 0
            assert not any(m.label.startswith(("TTFT", "TPOT")) for m in at.metric)
        # The YAML on the page is a scenario `engram-planner simulate` loads as is.
        text = next(c.value for c in at.code if c.language == "yaml")
        assert scenario_from_dict(yaml.safe_load(text)).name == path.stem


def test_span_table_round_trips_to_a_chrome_trace():
    from app.runs import SpanTable
    from planner.trace import Span, chrome_trace, spans_from_chrome_trace

    spans = [Span("step", "dev0 engine", 0.0, 1e-3), Span("wait_L1", "dev0 compute", 2e-4, 1e-4, {"rows": 3}),
             Span("h2d_L1", "dev0 h2d", 1e-4, 2e-4)]
    table = SpanTable.from_spans(spans)
    assert len(table) == 3 and table.spans() == spans
    assert spans_from_chrome_trace(chrome_trace(table.spans(), "t")) == sorted(spans, key=lambda s: s.start_s)


def test_a_simulated_training_run_shows_its_steps():
    at = _app()
    at.selectbox(key="wi.start").set_value("train-h100-engram27b").run()
    at.button(key="wi.simulate").click().run()
    assert not at.exception and not at.error
    assert metric(at, "Mean step").endswith("ms") and int(metric(at, "Steps").replace(",", "")) > 0
    assert not any(m.label.startswith(("TTFT", "TPOT")) for m in at.metric)


def test_the_disk_tier_on_a_profile_without_drives_says_how_to_add_one():
    """The page names the missing section and gives an override that works as written."""
    S = "wi.h100-engram27b-host"
    at = _app()
    box = at.selectbox(key=S + ".hw")
    box.set_value(next(o for o in box.options if o.startswith("h100-pcie"))).run()
    at.radio(key=S + ".pl.tier").set_value("disk").run()
    assert not at.exception
    message = " ".join(e.value for e in at.error)
    assert "no nvme section" in message and "YAML overrides" in message
    suggested = message[message.index("`nvme:") + 1:message.index("}`") + 1]
    at.text_area(key=S + ".hw.h100-pcie.yaml").set_value(suggested).run()
    assert not at.exception and not at.error
    assert float(metric(at, "Output tok/s").replace(",", "")) > 0


def test_a_value_below_a_fields_minimum_is_refused_with_the_value_typed():
    """Streamlit's own min_value keeps the old value in use behind a red box; the page says what
    was typed instead and computes nothing from a value that is not there."""
    at = _app()
    at.number_input(key=HW + ".f.link.h2d_bandwidth").set_value(-5.0).run()
    assert not at.exception
    text = at.error[0].value
    assert "hardware.link.h2d_bandwidth" in text and "got -5 GB/s" in text
    assert not at.metric
    at = _app()
    at.number_input(key=S + ".wl.num_sequences").set_value(0).run()
    assert "workload.num_sequences" in at.error[0].value and "got 0" in at.error[0].value
