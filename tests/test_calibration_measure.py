"""Real measurements on this machine, kept small: what the micro-benchmarks and the engine-loop
measurement return (their shape and consistency, never their speed: no test here compares this
machine's speed with anything), and ``calibrate`` end to end on a reduced plan (writes a loadable
profile, reports every curve's error, re-uses its cache)."""

import json

import pytest

pytest.importorskip("torch")

from planner.calibration import tasks as tasks_module  # noqa: E402
from planner.calibration.measure import (host_table, measure_gemm, measure_table_gathers, quiet_repeats,  # noqa: E402
                                         torch_threads)
from planner.calibration.measure_engine import measure_engine  # noqa: E402
from planner.calibration.tasks import Task, engine_spec  # noqa: E402
from planner.cli import main  # noqa: E402
from planner.loading import load_hardware  # noqa: E402


def test_gemm_and_table_gather_samples_are_complete():
    with torch_threads(1):
        gemm = measure_gemm([32, 64], "fp32", "cpu", repeats=3)
    assert [g["n"] for g in gemm] == [32, 64] and all(g["seconds"] > 0 for g in gemm)
    mb = 1 << 20
    samples = measure_table_gathers([4 * mb, 16 * mb], [64, 256], 512, 3, [False, True], threads=[1, 2])
    keys = {(s["table_bytes"] // mb, s["row_bytes"], s["huge_pages"], s["threads"]) for s in samples}
    assert {(4, 64, False, 1), (16, 256, True, 1)} <= keys
    assert {k for k in keys if k[3] == 2} == {(16, 256, False, 2)}  # threads: largest table, second width only
    assert all(s["seconds"] > 0 and s["rows"] == 512 for s in samples)


def test_quiet_repeats_rank_around_the_lower_quartile_and_keep_spans_additive():
    import numpy as np

    assert sorted(quiet_repeats([9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0, 5.0])) == [3, 5, 7]  # 2nd-4th fastest of 9
    assert list(quiet_repeats([5.0])) == [0]
    assert sorted(quiet_repeats([3.0, 1.0, 2.0])) == [1, 2]
    # Two spans whose quiet repetitions differ: per-span lower quartiles sum below every
    # repetition's step, the kept repetitions' means add up to the kept steps' mean.
    rng = np.random.default_rng(0)
    a, b = 1.0 + rng.exponential(0.3, 9), 1.0 + rng.exponential(0.3, 9)
    step = a + b + 0.1
    keep = quiet_repeats(step)
    assert np.isclose(a[keep].mean() + b[keep].mean() + 0.1, step[keep].mean())
    assert np.sort(a)[2] + np.sort(b)[2] + 0.1 < np.sort(step)[2]


def test_host_table_is_aligned_and_filled():
    keep, table = host_table(4 << 20, huge_pages=True)
    assert table.numel() * 4 == 4 << 20 and table.data_ptr() % (2 << 20) == 0
    assert float(table.min()) >= 0.0 and float(table.max()) <= 1.0 and keep.numel() >= table.numel()


def test_engine_measurement_times_every_span_of_every_step():
    spec = engine_spec("tiny-gqa", 1, 2, (1,), "fp32")
    runs = [{"name": "r", "spec": spec.model_dump(mode="json"), "batch": 2, "prompt_len": 8, "output_len": 3}]
    result = measure_engine(runs, repeats=2, peak_sizes=(64,))
    assert set(result["specs"]) == {spec.name}
    assert len(result["peak_probes"]["fp32"]) == 3 and min(result["peak_probes"]["fp32"]) > 0  # after every repetition
    samples = result["steps"]
    assert [(s["phase"], s["context"]) for s in samples] == [("prefill", 0), ("decode", 8), ("decode", 9)]
    for s in samples:
        spans = s["spans"]
        assert {"step", "hash", "embed", "attn_L0", "ffn_L1", "engram_L1", "wait_L1", "gather_L1", "head"} <= set(spans)
        inside = sum(v for k, v in spans.items() if k in ("hash", "embed", "head") or k[:5] in ("attn_", "ffn_L", "wait_")
                     or k.startswith("engram_"))
        # every span averaged over the step's own quiet repetitions: they add up to at most the step
        assert 0 < inside <= spans["step"] * (1 + 1e-9)
        requested = s["batch"] * s["tokens"] * spec.engram.rows_per_token
        assert s["lookups"]["1"]["requested"] == requested and 0 < s["lookups"]["1"]["fetched"] <= requested


def small_plan(device, quick, engine_cores=1, disk_dir=None, disk=True):
    mb = 1 << 20
    spec = engine_spec("tiny-gqa", 2, 2, (1,), "fp32")
    return [
        Task("launch", "measure_launch", {"device": device, "repeats": 3}),
        Task("gemm:fp32", "measure_gemm", {"sizes": [32, 64, 128], "dtype": "fp32", "device": device, "repeats": 3}),
        Task("gemm_rows:fp32", "measure_gemm_rows", {"rows_list": [1, 4, 16, 64], "n": 256, "dtype": "fp32",
                                                     "device": device, "repeats": 3}),
        Task("dram", "measure_copy", {"sizes": [8 * mb, 16 * mb], "repeats": 3, "pool_bytes": 64 * mb}),
        Task("link", "measure_link", {"sizes": [4096, 65536, mb], "repeats": 3, "device": device}),
        Task("gather_tables", "measure_table_gathers", {"table_sizes": [4 * mb, 32 * mb], "widths": [64, 256],
                                                        "rows": 1024, "repeats": 3, "huge_pages": [False]}),
        Task("hash", "measure_hash", {"model": "engram-27b", "tokens_list": [64, 4096], "repeats": 3}),
        Task("engine", "measure_engine", {"runs": [
            {"name": "a", "spec": spec.model_dump(mode="json"), "batch": 2, "prompt_len": 16, "output_len": 3},
            {"name": "b", "spec": spec.model_dump(mode="json"), "batch": 4, "prompt_len": 8, "output_len": 3}],
            "repeats": 2, "device": device}, module="measure_engine"),
        Task("disk", "measure_disk", {"dir": disk_dir, "file_bytes": 4 * mb, "reads": 64, "depths": [2, 4],
                                      "seq_bytes": mb, "repeats": 1}, module="measure_disk"),
    ]


def test_calibrate_command_writes_a_profile_that_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tasks_module, "plan", small_plan)
    out, cache = tmp_path / "p.yaml", tmp_path / "cache"
    args = ["calibrate", "--quick", "--device", "cpu", "--threads", "1", "--out", str(out), "--cache-dir", str(cache)]
    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    hw = load_hardware(out)
    assert hw.source == "calibrated" and hw.device.kind == "cpu" and hw.link.kind == "memcpy"
    assert hw.calibration.fingerprint.threads == 1 and hw.calibration.quick
    names = {c["name"] for c in report["curves"]}
    assert {"gemm:fp32", "link:memcpy", "op:attention:gqa:fp32", "step:overhead", "gather:ram:latency"} <= names
    assert all(0 <= c["median_abs_rel_error"] for c in report["curves"])
    assert report["cached_tasks"] == 0 and report["tasks"] == 9 and len(list(cache.glob("*.json"))) == 9
    # The drive under the temp dir, read both ways (or said why not, on a memory filesystem).
    disk_lines = [line for line in hw.sources if line.startswith("nvme")]
    if "not measured" in disk_lines[0]:
        assert hw.nvme is None or hw.nvme == load_hardware("cpu-workstation").nvme
    else:
        assert hw.nvme.read_latency > 0 and hw.nvme.fault_latency > 0 and hw.nvme.read_iops > 0
        assert hw.nvme.page_size == 4096 and not any("NVMe" in line for line in hw.sources if "unmeasured" in line)
    # Second run: every measurement comes from the cache; the text report shows the residuals.
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "9 from cache" in text and "median err" in text and "peak GEMM" in text


def test_disk_measurement_reads_both_ways_and_fits_nvme(tmp_path):
    from planner.calibration.measure_disk import fit_disk, measure_disk
    from planner.specs import NVMeSpec

    raw = measure_disk(str(tmp_path), 2 << 20, 64, [2, 4], 1 << 20, repeats=1)
    if "skipped" in raw:  # tmp_path on a memory filesystem: nothing to measure, and said so
        nvme, sources = fit_disk(raw)
        assert nvme is None and "not measured" in sources[0]
        return
    assert raw["io"] in ("direct", "buffered") and set(raw["pread_reads_per_s"]) == {"2", "4"}
    nvme, sources = fit_disk(raw)
    spec = NVMeSpec.model_validate(nvme)
    assert spec.read_latency == raw["pread_qd1_s_per_read"] and spec.fault_latency == raw["mmap_s_per_fault"]
    assert spec.read_iops == max(raw["pread_reads_per_s"].values())
    assert any("O_DIRECT" in line or "buffered" in line for line in sources)
    assert list(tmp_path.iterdir()) == []  # the scratch file is gone


def test_disk_measurement_skips_a_memory_filesystem(tmp_path, monkeypatch):
    import planner.calibration.measure_disk as md

    monkeypatch.setattr(md, "filesystem_of", lambda path: "tmpfs")
    raw = md.measure_disk(str(tmp_path), 1 << 20, 16, [2], 1 << 20, repeats=1)
    assert "tmpfs, a memory filesystem" in raw["skipped"] and "--disk-dir" in raw["skipped"]
    assert md.fit_disk(raw)[0] is None
    with pytest.raises(ValueError, match="does not exist"):
        md.measure_disk(str(tmp_path / "nope"), 1 << 20, 16, [2], 1 << 20)


def test_calibrate_refuses_cuda_without_a_gpu(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["calibrate", "--device", "cuda", "--out", str(tmp_path / "x.yaml")]) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_a_damaged_cache_entry_is_named_and_measured_again(tmp_path):
    from planner.calibration.tasks import CorruptCacheWarning, run_task

    task = Task("launch", "measure_launch", {"device": "cpu", "repeats": 2})
    fp = {"cpu": "x", "threads": 1}
    path = tmp_path / f"{task.key(fp)}.json"
    path.write_text('{"result": ')  # truncated
    with pytest.warns(CorruptCacheWarning, match=str(path)):
        value, cached = run_task(task, fp, tmp_path, tmp_path)
    assert not cached and value > 0
    assert run_task(task, fp, tmp_path, tmp_path) == (value, True)  # rewritten whole
