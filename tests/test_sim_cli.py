"""``engram-planner simulate`` and ``bench simulator`` end to end (small scenarios)."""

import json

from planner.cli import main
from planner.loading import SCENARIOS_DIR, load_scenario
from planner.trace import spans_from_chrome_trace


def test_bundled_scenarios_load():
    names = {p.stem for p in SCENARIOS_DIR.glob("*.yaml")}
    assert "h800-dense8b-engram100b" in names
    for name in names:
        load_scenario(SCENARIOS_DIR / f"{name}.yaml")
    s = load_scenario(SCENARIOS_DIR / "h800-dense8b-engram100b.yaml")
    assert s.workload.num_sequences == 512 and s.placement.tier == "host"
    assert s.model.engram_layer_ids == [1] and s.hardware.device.count == 8


def test_simulate_text_json_and_trace(tmp_path, capsys):
    path = SCENARIOS_DIR / "cpu-tiny.yaml"
    assert main(["simulate", str(path)]) == 0
    text = capsys.readouterr().out
    assert "drop" in text and "TTFT" in text and "bound" in text
    trace = tmp_path / "t.json"
    assert main(["simulate", str(path), "--json", "--trace", str(trace), "--no-baseline"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baseline"] is None and data["throughput_output_tokens_per_s"] > 0
    assert {s.name for s in spans_from_chrome_trace(json.loads(trace.read_text()))} >= {"step", "engram_L1"}


def test_bad_scenario_exits_2_naming_the_field(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: tiny\nhardware: cpu-workstation\nworkload: {kind: inference, num_sequences: 0, "
                   "prompt_len: 8, output_len: 8}\n")
    assert main(["simulate", str(bad)]) == 2
    assert "num_sequences" in capsys.readouterr().err


def test_bench_simulator_quick(capsys):
    assert main(["bench", "simulator", "--quick", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["analytic_configs"] == 10_000 and r["quick"]
    offline, poisson = r["offline"], r["poisson"]
    assert offline["scenario"] == "paper-offload-dense8b" and offline["devices"] == 1 and offline["wall_s"] > 0
    assert poisson["devices"] == 8 and poisson["arrival_rate"] > 0 and poisson["num_sequences"] == 1_000
    assert poisson["simulated_steps"] > 0 and poisson["peak_running"] >= 1
