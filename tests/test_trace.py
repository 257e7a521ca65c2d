"""Chrome traces a user can read: processes per device, span args, flows, load counters, size."""

import json
import math
from functools import cache

from planner.cli import main
from planner.sim import simulate
from planner.trace import Counter, Span, chrome_trace, spans_from_chrome_trace
from tests.sim_helpers import scenario


@cache
def _run(prefetch: bool = True):
    """A 2-device node whose devices share one PCIe link (the metrics object, traced)."""
    return simulate(scenario(devices=2, per_link=2, seqs=6, output=4,
                             placement={"tier": "host", "prefetch": prefetch}), trace=True, baseline=False)


def _trace(prefetch: bool = True) -> dict:
    m = _run(prefetch)
    return chrome_trace(m.spans, "sim", {"test": True}, counters=m.counters)


def _processes(trace: dict) -> dict[int, str]:
    return {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
            if e["ph"] == "M" and e["name"] == "process_name"}


def _slices(trace: dict) -> dict[tuple[int, int], list[dict]]:
    out: dict[tuple[int, int], list[dict]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "X":
            out.setdefault((e["pid"], e["tid"]), []).append(e)
    return out


def _enclosing(slices: dict, event: dict) -> list[dict]:
    return [x for x in slices.get((event["pid"], event["tid"]), []) if x["ts"] < event["ts"] < x["ts"] + x["dur"]]


def test_a_process_per_device_and_one_for_the_host():
    trace = _trace()
    procs = _processes(trace)
    assert sorted(procs.values()) == ["device 0", "device 1", "host"]
    by_name = {name: pid for pid, name in procs.items()}
    sort = {e["pid"] for e in trace["traceEvents"] if e["ph"] == "M" and e["name"] == "process_sort_index"}
    assert sort == set(procs)
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in trace["traceEvents"]
               if e["ph"] == "M" and e["name"] == "thread_name"}
    assert len({tid for _, tid in threads}) == len(threads)  # tids unique across processes
    for device in (0, 1):
        names = {name for (pid, _), name in threads.items() if pid == by_name[f"device {device}"]}
        assert {"engine", "host_cpu", "host_gather", "h2d", "compute"} <= names
    for span, event in zip(sorted(_run().spans, key=lambda s: (s.start_s, s.track)),
                           (e for e in trace["traceEvents"] if e["ph"] == "X")):
        device, thread = span.track.split(" ", 1)
        assert procs[event["pid"]] == f"device {device[3:]}" and threads[event["pid"], event["tid"]] == thread
    counters = {(procs[e["pid"]], e["name"]) for e in trace["traceEvents"] if e["ph"] == "C"}
    assert {("device 0", "kv"), ("device 1", "kv"), ("host", "dram")} <= counters


def test_a_trace_without_device_tracks_keeps_one_process():
    spans = [Span("step", "engine", 0.0, 1.0, {"step": 0}), Span("gather_L1", "host_gather", 0.1, 0.2)]
    trace = chrome_trace(spans, "measured (reference model)")
    assert list(_processes(trace).values()) == ["measured (reference model)"]
    assert {e["cat"] for e in trace["traceEvents"] if e["ph"] == "X"} == {"engine", "host_gather"}


def test_every_simulated_span_carries_its_details():
    for prefetch in (True, False):
        spans = _run(prefetch).spans
        assert spans and all(s.args for s in spans)
        for s in spans:
            assert isinstance(s.args["step"], int), s
            if s.name.startswith(("engram_L", "attn_L", "ffn_L", "gather_L", "h2d_L", "wait_L")):
                assert s.args["layer"] == int(s.name.split("_L")[1]), s
            if s.name.startswith(("gather_L", "h2d_L")):
                assert s.args["bytes"] > 0 and s.args["rows"] > 0, s
            if s.name.startswith("gather_L"):
                assert s.args["tier"] == "host"
            if s.track.endswith("compute") and not s.name.startswith("wait_L"):
                assert s.args["tokens"] > 0 and s.args["seqs"] > 0 and s.args["bound"], s
            if s.name == "step":
                assert {"tokens", "seqs", "decode_tokens"} <= set(s.args)


def test_flows_run_from_each_fetch_to_the_op_that_uses_its_rows():
    for prefetch in (True, False):
        trace = _trace(prefetch)
        slices = _slices(trace)
        starts = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "s"}
        finishes = {e["id"]: e for e in trace["traceEvents"] if e["ph"] == "f"}
        assert starts and starts.keys() == finishes.keys()
        consumers = []
        for flow, s in starts.items():
            f = finishes[flow]
            assert f["bp"] == "e" and f["ts"] >= s["ts"] and (f["name"], f["cat"]) == (s["name"], s["cat"])
            (producer,) = _enclosing(slices, s)
            (consumer,) = _enclosing(slices, f)
            assert producer["args"]["flow_out"] == consumer["args"]["flow_in"] == flow
            assert producer["args"]["step"] == consumer["args"]["step"] and producer["pid"] == consumer["pid"]
            if consumer["cat"] == "compute":
                consumers.append(consumer)
                assert producer["name"] == "h2d_L1" and consumer["name"] in ("engram_L1", "wait_L1")
        copies = [s for s in _run(prefetch).spans if s.name == "h2d_L1"]
        assert len(consumers) == len(copies)  # every copy feeds its step's Engram op
        waits = [s for s in _run(prefetch).spans if s.name == "wait_L1"]
        if not prefetch:  # on demand every lookup stalls the stream: the wait is what the rows end
            assert waits and {c["name"] for c in consumers} == {"wait_L1"}


def test_a_flow_is_drawn_only_between_spans_that_both_exist():
    spans = [Span("gather_L1", "dev0 host_gather", 0.0, 1.0, {"step": 0, "flow_out": 1}),
             Span("h2d_L1", "dev0 h2d", 1.0, 1.0, {"step": 0, "flow_in": 1, "flow_out": 2}),
             Span("engram_L1", "dev0 compute", 3.0, 1.0, {"step": 0, "flow_in": 9})]
    events = chrome_trace(spans, "t")["traceEvents"]
    assert sorted((e["ph"], e["id"]) for e in events if e["ph"] in "sf") == [("f", 1), ("s", 1)]


def test_link_and_dram_load_counters_are_fractions():
    trace = _trace()
    procs = _processes(trace)
    loads: dict[tuple[str, str], list[float]] = {}
    for e in trace["traceEvents"]:
        if e["ph"] == "C" and "utilisation" in e["args"]:
            loads.setdefault((procs[e["pid"]], e["name"]), []).append(e["args"]["utilisation"])
    assert {("device 0", "h2d link"), ("device 1", "h2d link"), ("host", "dram")} <= set(loads)
    for values in loads.values():
        assert all(0.0 <= v <= 1.0 for v in values) and max(values) > 0 and values[-1] == 0.0


def test_spans_round_trip_through_a_trace():
    m = _run()
    spans = m.spans + [Span("x", "dev01 odd", 0.5, 0.1, {"k": 1}), Span("y", "host_cpu", 0.2, 0.1)]
    back = spans_from_chrome_trace(chrome_trace(spans, "sim", counters=m.counters))
    ordered = sorted(spans, key=lambda s: (s.start_s, s.track))
    assert [(s.name, s.track, s.args) for s in back] == [(s.name, s.track, s.args) for s in ordered]
    # Times go through microseconds and back: equal to the last bit or two.
    assert all(math.isclose(a.start_s, b.start_s, rel_tol=1e-14, abs_tol=1e-18)
               and math.isclose(a.dur_s, b.dur_s, rel_tol=1e-14) for a, b in zip(back, ordered))


def _long_run(devices: int, steps: int) -> tuple[list[Span], list[Counter]]:
    spans, counters = [], []
    for d in range(devices):
        t = 0.0
        for k in range(steps):
            spans.append(Span("step", f"dev{d} engine", t, 1e-3, {"step": k, "tokens": 8}))
            spans.append(Span("h2d_L1", f"dev{d} h2d", t, 2e-4, {"step": k, "layer": 1, "flow_out": d * steps + k}))
            for i in range(8):
                spans.append(Span(f"attn_L{i}", f"dev{d} compute", t + 2e-4 + i * 1e-4, 1e-4,
                                  {"step": k, "layer": i, **({"flow_in": d * steps + k} if i == 0 else {})}))
            counters.append(Counter(f"dev{d} kv", t, {"blocks_used": k}))
            t += 1e-3
    return spans, counters


def test_a_long_run_is_sampled_by_whole_steps_under_the_byte_budget():
    spans, counters = _long_run(2, 1500)  # about 5 MB of trace
    trace = chrome_trace(spans, "t", {"scenario": "long"}, counters=counters, max_bytes=300_000)
    assert len(json.dumps(trace)) <= 300_000
    sampled = trace["metadata"]["sampled"]
    assert trace["metadata"]["scenario"] == "long"
    assert 0 < sampled["kept_steps"] < sampled["of"] == 3000 and sampled["max_bytes"] == 300_000
    assert sampled["kept_events"] < sampled["of_events"] == 3000 * 13
    assert sampled["first_steps"] >= 1 and sampled["every"] >= 2 and "every" in sampled["rule"]
    kept: dict[tuple[str, int], int] = {}
    for s in spans_from_chrome_trace(trace):
        key = (s.track.split(" ")[0], s.args["step"])
        kept[key] = kept.get(key, 0) + 1
    assert set(kept.values()) == {10}  # whole steps
    assert ("dev0", 0) in kept and ("dev1", 0) in kept
    assert len(kept) == sampled["kept_steps"]
    assert len([e for e in trace["traceEvents"] if e["ph"] == "s"]) == len(kept)  # each kept step's flow
    for e in trace["traceEvents"]:  # counter samples within a kept step (or at its end: the next one's start)
        if e["ph"] == "C":
            device, k = f"dev{e['pid'] - 2}", e["args"]["blocks_used"]
            assert (device, k) in kept or (device, k - 1) in kept


def test_spans_without_steps_keep_the_runs_beginning():
    spans = [Span(f"op{i}", "compute", i * 1e-3, 1e-3, {"i": i}) for i in range(20000)]
    trace = chrome_trace(spans, "t", max_bytes=100_000)
    assert len(json.dumps(trace)) <= 100_000 and "until_s" in trace["metadata"]["sampled"]
    back = spans_from_chrome_trace(trace)
    assert 0 < len(back) < len(spans) and [s.name for s in back] == [s.name for s in spans[:len(back)]]


def test_a_small_trace_is_not_sampled():
    assert "sampled" not in _trace()["metadata"]


def test_the_default_bundled_scenario_trace_is_under_10_mb(tmp_path, capsys):
    path = tmp_path / "trace.json"
    assert main(["simulate", "h800-dense8b-engram100b", "--no-baseline", "--trace", str(path)]) == 0
    assert path.stat().st_size < 10_000_000
    trace = json.loads(path.read_text())
    assert trace["metadata"]["sampled"]["kept_steps"] < trace["metadata"]["sampled"]["of"]
    assert "the trace keeps" in capsys.readouterr().err
    assert len(_processes(trace)) == 9  # 8 devices and the host
