"""The CLI: real output on bundled files, JSON on request, exit 2 and no traceback on bad input."""

import json
import subprocess
import sys

import pytest
import yaml

from planner.cli import main
from planner.loading import MODELS_DIR


def test_params_reports_paper_table_sizes(capsys):
    assert main(["params", "engram-27b"]) == 0
    out = capsys.readouterr().out
    assert "5,792,338,560" in out and "5.79B" in out
    assert main(["params", "engram-40b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert round(data["params"]["engram_tables"] / 1e9, 2) == 18.53


def test_params_placement_moves_bytes(capsys):
    main(["params", "engram-27b", "--json"])
    device = json.loads(capsys.readouterr().out)["footprint"]
    main(["params", "engram-27b", "--tier", "host", "--json"])
    host = json.loads(capsys.readouterr().out)["footprint"]
    assert host["host"] > 0 and host["device"] < device["device"]


def test_profiles_lists_presets(capsys):
    assert main(["profiles"]) == 0
    out = capsys.readouterr().out
    assert "h800" in out and "gh200" in out and "cpu-workstation" in out
    assert main(["profiles", "h800", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["device"]["count"] == 8


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda d: d["engram"].__setitem__("n_head", 8), "engram.n_head"),
        (lambda d: d["engram"].__setitem__("layer_ids", [1, 40]), "engram.layer_ids[1] = 40"),
        (lambda d: d["engram"].__setitem__("embed_dim_per_ngram", 100), "does not split"),
    ],
)
def test_bad_model_file_exits_2_with_field(tmp_path, capsys, mutate, fragment):
    data = yaml.safe_load((MODELS_DIR / "engram-27b.yaml").read_text())
    mutate(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["params", str(path)]) == 2
    err = capsys.readouterr().err
    assert fragment in err and "Traceback" not in err and str(path) in err


def test_broken_yaml_and_missing_file(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    assert main(["params", str(path)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["params", "no-such-model"]) == 2
    assert "bundled" in capsys.readouterr().err


def test_usage_errors_exit_2():
    with pytest.raises(SystemExit) as info:
        main(["params"])
    assert info.value.code == 2


def test_module_entry_point_runs():
    done = subprocess.run([sys.executable, "-m", "planner", "params", "tiny"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "Tiny" in done.stdout
