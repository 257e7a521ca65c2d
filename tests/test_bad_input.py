"""Bad input end to end (issue 18): every case of tests/bad_input_cases.py runs the real command
line in its own empty folder and must exit 2 with a message naming the field, flag or file and
its value; no traceback, no raw pydantic dump, no huge echo; in under 10 s and 1 GB."""

from __future__ import annotations

import importlib.util
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.bad_input_cases import CASES, Case

MAX_SECONDS = 10.0
MAX_RSS_BYTES = 1 << 30
SAFETY_ADDRESS_SPACE = 8 << 30  # a runaway case fails here instead of taking the machine down


def _skip_reason(case: Case) -> str | None:
    if case.needs == "ray" and importlib.util.find_spec("ray") is None:
        return "needs Ray (the cluster extra)"
    if case.needs == "no-cuda" and Path("/dev/nvidia0").exists():
        return "a CUDA device is present: the CPU-vs-CUDA profile refusal does not apply"
    return None


def _limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (SAFETY_ADDRESS_SPACE, SAFETY_ADDRESS_SPACE))


def run_case(case: Case, folder: Path) -> tuple[int, str, float, int]:
    """Run ``case`` in ``folder``: (exit code, stderr, wall seconds, peak RSS in bytes)."""
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for name in case.mkdirs:
        (folder / name).mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENGRAM_PLANNER_", "RAY_"))}
    env.update(HOME=str(folder), XDG_CACHE_HOME=str(folder / ".cache"), **case.env)
    err_path = folder.parent / f"{folder.name}.stderr"
    with open(err_path, "wb") as err, open(os.devnull, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "planner", *case.argv], cwd=folder, env=env,
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL, preexec_fn=_limit_address_space)
        killer = threading.Timer(60, proc.kill)
        killer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, err_path.read_text(errors="replace"), wall, usage.ru_maxrss * 1024


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_cleanly(case: Case, tmp_path):
    reason = _skip_reason(case)
    if reason:
        pytest.skip(reason)
    folder = tmp_path / "run"
    folder.mkdir()
    code, err, wall, rss = run_case(case, folder)
    assert code == 2, f"exit {code}, expected 2:\n{err[-3000:]}"
    assert "Traceback" not in err, err[-3000:]
    assert "errors.pydantic.dev" not in err and "validation error for" not in err, err
    for fragment in case.expect:
        assert fragment in err, f"{fragment!r} not in:\n{err}"
    assert len(err) < 4000, f"a {len(err):,}-character message echoes too much:\n{err[:1500]}"
    assert wall < MAX_SECONDS, f"{wall:.1f} s"
    assert rss < MAX_RSS_BYTES, f"{rss / 2**20:.0f} MiB"


def test_corpus_covers_every_kind():
    kinds = {c.kind for c in CASES}
    assert kinds == {"traceback", "runaway", "nonsense", "vague", "message"}
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def test_every_limit_is_documented():
    from planner.loading import ROOT
    from planner.specs import limits

    text = (ROOT / "docs" / "limits.md").read_text()
    for limit in limits.ALL:
        assert f"| `{limit.env}` | {limit.default:,} | {limit.what} |" in text, limit.env


def test_limit_variables_raise_and_are_checked(monkeypatch):
    from planner.specs.limits import STUDIES, LimitError

    monkeypatch.setenv(STUDIES.env, "5_000")
    assert STUDIES.value() == 5000
    STUDIES.check(4000, "plan")
    monkeypatch.setenv(STUDIES.env, "lots")
    with pytest.raises(LimitError, match="ENGRAM_PLANNER_MAX_STUDIES='lots' must be a positive integer"):
        STUDIES.value()


def test_ignore_memory_simulates_with_a_warning(tmp_path, capsys):
    from planner.cli import main
    from tests.bad_input_cases import hardware, scenario

    (tmp_path / "h.yaml").write_text(hardware(device__memory="1 MB"))
    (tmp_path / "s.yaml").write_text(scenario(hardware="h.yaml", placement__tier="device"))
    assert main(["simulate", str(tmp_path / "s.yaml"), "--no-baseline"]) == 2
    assert "hardware.device.memory is 1 MB" in capsys.readouterr().err
    assert main(["simulate", str(tmp_path / "s.yaml"), "--no-baseline", "--ignore-memory"]) == 0
    captured = capsys.readouterr()
    assert "warning" in captured.err and "per device" in captured.err and "throughput" in captured.out
