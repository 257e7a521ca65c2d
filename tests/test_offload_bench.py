"""``engram-planner bench offload`` runs end to end at a toy size and reports its figures."""

from __future__ import annotations

import json

import torch

from planner.cli import main


def test_bench_offload_smoke(tmp_path, capsys):
    threads = torch.get_num_threads()
    out = tmp_path / "offload.json"
    trace = tmp_path / "trace.json"
    assert main(["bench", "offload", "--quick", "--rows-per-head", "500", "--steps", "1",
                 "--out", str(out), "--trace", str(trace)]) == 0
    assert torch.get_num_threads() == threads  # restored
    text = capsys.readouterr().out
    assert "host_prefetch" in text and "store gather" in text
    result = json.loads(out.read_text())
    for workload in ("prefill", "decode"):
        runs = result["results"][workload]
        assert set(runs) == {"device", "host", "host_prefetch", "disk", "disk_prefetch", "disk_pread", "disk_pread_prefetch"}
        assert runs["device"]["bytes_to_device"] == 0 and runs["host"]["bytes_to_device"] > 0
        assert all(0 <= r["hidden_fraction"] <= 1 for r in runs.values())
    g = result["gather"]
    assert g["index_select_GBps"] > 0 and g["store_gather_GBps"] > 0 and g["disk_mmap"]["cold_GBps"] > 0 and g["disk_pread"]["cold_GBps"] > 0
    events = json.loads(trace.read_text())["traceEvents"]
    assert any(e.get("name") == "gather_L2" for e in events)


def test_bench_offload_rejects_bad_sizes(capsys):
    assert main(["bench", "offload", "--rows-per-head", "10"]) == 2
    assert "rows-per-head" in capsys.readouterr().err
