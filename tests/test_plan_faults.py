"""Faults in `plan` (issue 18): a run killed with SIGKILL at random points resumes to the same
results as an uninterrupted run and never leaves a corrupt cache entry; a damaged entry is
reported with its path and recomputed."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from planner.cli import main
from planner.plan.runner import CorruptCacheWarning, load_cached

PLAN = """\
name: faults
studies:
  - name: tiny
    scenario: cpu-tiny
    set: {workload.num_sequences: 16, workload.output_len: 8, workload.prompt_len: 16}
    grid: {workload.seed: [0, 1, 2, 3, 4, 5]}
    search: {tier: [device, host], cache_fraction: [0.0, 0.1], prefetch: [true, false]}
    verify: {top_n: 1, max_simulations: 2, pareto_max: 1}
"""
OUTPUTS = ("results.json", "candidates.csv", "recommendations.csv", "plan.yaml")


def _start(plan: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "planner", "plan", str(plan), "--out", str(out), "--json"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=plan.parent)


def _normalised(out: Path) -> dict[str, object]:
    """The outputs a user reads, without the flag that says which studies came from the cache."""
    got: dict[str, object] = {name: (out / name).read_text() for name in OUTPUTS}
    results = json.loads(got["results.json"])
    for r in results:
        r["meta"].pop("from_cache")
    got["results.json"] = results
    return got


def _assert_cache_whole(cache: Path) -> int:
    if not cache.is_dir():
        return 0
    entries = sorted(cache.glob("*.json"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCacheWarning)
        for path in entries:
            assert load_cached(path) is not None, path
    return len(entries)


def _entries(cache) -> int:
    return len(list(cache.glob("*.json"))) if cache.is_dir() else 0


@pytest.mark.slow
def test_sigkill_at_20_random_points_resumes_to_identical_results(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    reference = tmp_path / "reference"
    start = time.perf_counter()
    done = _start(plan, reference)
    # When the studies run (first and last cache entry), apart from the interpreter's start-up.
    first_s = last_s = None
    seen = 0
    while done.poll() is None:
        entries = _entries(reference / "cache")
        if entries > seen:  # a study's entry appeared
            seen, last_s = entries, time.perf_counter() - start
            first_s = first_s if first_s is not None else last_s
        time.sleep(0.01)
    assert done.wait(120) == 0, done.stderr.read().decode()
    full_s = time.perf_counter() - start
    expected = _normalised(reference)
    studies = _assert_cache_whole(reference / "cache")
    first_s, last_s = first_s or 0.0, last_s or full_s

    rng = random.Random(18)
    partial = 0
    for k in range(20):
        out = tmp_path / f"run{k}"
        proc = _start(plan, out)
        # Every other kill anywhere in the run (start-up, writing results), the rest while the
        # studies run: a start-up that outlasts the studies must not leave resume untested.
        window = (0.0, 1.1 * full_s) if k % 2 else (0.8 * first_s, last_s + 0.05)
        if k % 4 == 0:
            # and every fourth right after the first study's entry lands, so that a kill between
            # two studies is tested whatever the machine's load does to the timings above
            while proc.poll() is None and not _entries(out / "cache"):
                time.sleep(0.005)
        else:
            time.sleep(rng.uniform(*window))
        killed = proc.poll() is None
        if killed:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(60)
        entries = _assert_cache_whole(out / "cache")  # whole entries or none, never a part
        partial += killed and 0 < entries < studies
        resumed = _start(plan, out)
        assert resumed.wait(120) == 0, resumed.stderr.read().decode()
        assert b"corrupt" not in resumed.stderr.read()
        assert _normalised(out) == expected, f"kill point {k}"
        assert _assert_cache_whole(out / "cache") == studies
    assert partial >= 1, "no kill landed between two studies: the test did not test resume"


@pytest.mark.parametrize("damage", [
    b'{"study": "tiny [workload.seed=0]", "index": 0, "recomm',  # truncated (disk full, killed copy)
    b"{}",  # valid JSON without its keys
    b"[1, 2, 3]",
    b'{"study": NaN}',
    b"\xff\xfe\x00garbage",
])
def test_corrupt_cache_entry_is_named_and_recomputed(tmp_path, capsys, damage):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.replace("[0, 1, 2, 3, 4, 5]", "[0, 1]"))
    out = tmp_path / "out"
    assert main(["plan", str(plan), "--out", str(out), "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    victim = sorted((out / "cache").glob("*.json"))[0]
    victim.write_bytes(damage)
    run = subprocess.run([sys.executable, "-m", "planner", "plan", str(plan), "--out", str(out), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"engram-planner: CorruptCacheWarning: {victim}: corrupt plan cache entry (" in run.stderr
    assert "recomputing it" in run.stderr and "Traceback" not in run.stderr
    again = json.loads(run.stdout)
    assert [r["meta"]["from_cache"] for r in again].count(False) == 1  # only the damaged one recomputed
    for r in first + again:
        r["meta"].pop("from_cache")
    assert again == first
    assert load_cached(victim) is not None  # rewritten whole
    with warnings.catch_warnings():
        warnings.simplefilter("error", CorruptCacheWarning)  # fixed for good, not failing every re-run
        assert main(["plan", str(plan), "--out", str(out)]) == 0


def test_outputs_are_written_atomically(tmp_path, monkeypatch):
    """A failure while writing the report leaves the previous files whole, and no temporaries."""
    from planner import files

    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN.replace("[0, 1, 2, 3, 4, 5]", "[0]"))
    out = tmp_path / "out"
    assert main(["plan", str(plan), "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def failing_replace(self, target):
        raise OSError(28, "No space left on device", str(target))

    monkeypatch.setattr(files.Path, "replace", failing_replace)
    assert main(["plan", str(plan), "--out", str(out)]) == 1
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert after == before
