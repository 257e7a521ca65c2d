"""Spans and Chrome trace export: the one timeline format of real runs and simulations.

A measured run (``reference_model``) and a simulated run (``planner.sim``) both produce a list
of :class:`Span` and export it with :func:`chrome_trace`, so the two open side by side in
Perfetto (ui.perfetto.dev) or chrome://tracing, and validation can match them by name.

Span names are shared vocabulary (``SPAN_NAMES``): a real run and its simulation must use the
same name for the same work. ``track`` is the physical actor the span ran on (``compute``,
``h2d``, ``host_gather``, ...), which becomes a thread row in the viewer. A simulated node
prefixes each device's actors with the device (``dev0 compute``): such tracks become threads of
a process ``device 0``, the rest (host-wide counters such as DRAM) of a process ``host``; a trace
with no device prefix at all (a measured run) keeps one process, named by the caller.

Two span args have a meaning here: ``flow_out`` (an id) on a span whose output the span with the
same ``flow_in`` consumes (a layer's gather feeds its copy, which feeds the Engram op); the
export draws an arrow between them when both are in the trace. ``step`` (an int) says which
engine step of its device a span belongs to: a trace over the byte budget keeps whole steps.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any, Iterable

# Span names used by both measured and simulated runs. ``{i}`` is a block (layer) id.
SPAN_NAMES = {
    "step": "one engine step (a forward pass over the scheduled batch), on track 'engine'",
    "overhead": "the engine's own host work of a step outside every op and lookup (simulated only)",
    "hash": "n-gram hashing of the step's token ids, all Engram layers at once (track 'engine' without "
            "prefetch, the worker's 'host_cpu' with it)",
    "gather_L{i}": "collecting layer i's rows from their tier (host RAM, disk, cache) into staging; on track "
                   "'host_generate' when the table is a generated stand-in (rows computed from the seed, no "
                   "memory read: reference_model.store_sources.LazyRows)",
    "h2d_L{i}": "host-to-device copy of layer i's gathered rows",
    "wait_L{i}": "compute stalled waiting for layer i's rows (the exposed lookup time)",
    "engram_L{i}": "Engram module compute of block i (gate, value, conv)",
    "attn_L{i}": "attention of block i",
    "ffn_L{i}": "dense FFN or MoE of block i",
    "embed": "input embedding",
    "head": "final norm and LM head",
    "d2h_grad_L{i}": "training: device-to-host copy of layer i's row gradients",
    "optim_L{i}": "training: host-side sparse optimiser update of layer i's rows",
}

FLOW_IN, FLOW_OUT = "flow_in", "flow_out"

# A trace larger than this is sampled (:func:`chrome_trace`): Perfetto loads 8 MB of JSON in a
# few seconds, while the 40 MB of a whole bundled scenario took long to open and to share.
MAX_TRACE_BYTES = 8_000_000

# Process ids: the host (or the one process of an unprefixed trace) is 1, device n is n + 2.
# spans_from_chrome_trace relies on it to restore the ``devN`` prefix of a track.
HOST_PID = 1
_DEVICE_PID0 = 2
_DEVICE_TRACK = re.compile(r"dev(0|[1-9][0-9]*) (.+)", re.DOTALL)
# Threads of a process top to bottom in the order a lookup crosses them (others after, as met).
_THREAD_ORDER = ("engine", "host_cpu", "nvme", "host_gather", "host_generate", "h2d", "compute", "d2h")


@dataclass(frozen=True)
class Span:
    """One interval of work on one actor. Times in seconds from the start of the run."""

    name: str
    track: str
    start_s: float
    dur_s: float
    args: dict[str, Any] = field(default_factory=dict)

    @property
    def end_s(self) -> float:
        return self.start_s + self.dur_s


@dataclass(frozen=True)
class Counter:
    """Values of a counter track from ``time_s`` on (KV blocks in use, running sequences):
    a ``"C"`` event, drawn by Perfetto as a step chart."""

    track: str
    time_s: float
    values: dict[str, float]


def _place(track: str) -> tuple[int, str]:
    """(process id, thread name) of a track: ``dev3 h2d`` -> (device 3's pid, ``h2d``)."""
    m = _DEVICE_TRACK.fullmatch(track)
    return (_DEVICE_PID0 + int(m[1]), m[2]) if m else (HOST_PID, track)


def _track(pid: int, thread: str) -> str:
    """Inverse of :func:`_place`."""
    return f"dev{pid - _DEVICE_PID0} {thread}" if pid >= _DEVICE_PID0 else thread


class _Layout:
    """Processes and threads of a trace: one per device and the host, tids unique across the
    trace (a viewer may take a tid met in two processes for one thread that moved)."""

    def __init__(self, spans: list[Span], counters: list[Counter], process: str):
        self.process = process
        self.place = {t: _place(t) for t in dict.fromkeys([s.track for s in spans] + [c.track for c in counters])}
        threads = sorted(dict.fromkeys(self.place[s.track] for s in spans),
                         key=lambda pt: (pt[0], _THREAD_ORDER.index(pt[1]) if pt[1] in _THREAD_ORDER
                                         else len(_THREAD_ORDER)))
        self.tid = {pt: i + 1 for i, pt in enumerate(threads)}
        self.pids = sorted({pid for pid, _ in self.place.values()})
        self.split = any(pid != HOST_PID for pid in self.pids)

    def metadata(self) -> list[dict]:
        events = []
        for order, pid in enumerate(self.pids):
            name = self.process if not self.split else "host" if pid == HOST_PID else f"device {pid - _DEVICE_PID0}"
            events.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_name", "args": {"name": name}})
            events.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index",
                           "args": {"sort_index": order}})
            if self.split:
                events.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_labels",
                               "args": {"labels": self.process}})
        for (pid, thread), tid in self.tid.items():
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_name", "args": {"name": thread}})
            events.append({"ph": "M", "pid": pid, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
        return events

    def span(self, s: Span) -> dict:
        pid, thread = self.place[s.track]
        return {"ph": "X", "pid": pid, "tid": self.tid[pid, thread], "name": s.name, "cat": thread,
                "ts": s.start_s * 1e6, "dur": s.dur_s * 1e6, "args": s.args}

    def counter(self, c: Counter) -> dict:
        pid, name = self.place[c.track]
        return {"ph": "C", "pid": pid, "name": name, "ts": c.time_s * 1e6, "args": dict(c.values)}

    def flows(self, spans: list[Span]) -> list[dict]:
        """An ``s``/``f`` pair per ``flow_out`` id whose ``flow_in`` span is in ``spans`` too.
        Each end sits strictly inside its span (Perfetto binds ``s`` to the slice open at its
        time and, with ``"bp": "e"``, ``f`` to the enclosing one), the finish no earlier than the
        start; a pair whose consumer ended before its producer's midpoint is not drawn."""
        out = {s.args[FLOW_OUT]: s for s in spans if FLOW_OUT in s.args}
        events = []
        for c in spans:
            p = out.get(c.args.get(FLOW_IN))
            if p is None:
                continue
            start = (p.start_s + p.end_s) / 2
            if c.end_s <= start:
                continue
            finish = (max(c.start_s, start) + c.end_s) / 2
            flow = c.args[FLOW_IN]
            for ph, s, ts in (("s", p, start), ("f", c, finish)):
                pid, thread = self.place[s.track]
                event = {"ph": ph, "id": flow, "pid": pid, "tid": self.tid[pid, thread], "name": "flow",
                         "cat": "flow", "ts": ts * 1e6}
                if ph == "f":
                    event["bp"] = "e"
                events.append(event)
        return events


def _step_of(s: Span) -> int | None:
    step = s.args.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


@dataclass
class _Sample:
    """What a sampled trace keeps, and the ``metadata["sampled"]`` that says so."""

    spans: list[Span]
    counters: list[Counter]
    note: dict


def _windows(spans: list[Span]) -> list[tuple[float, float]]:
    """The merged time intervals the spans cover."""
    out: list[tuple[float, float]] = []
    for s in sorted(spans, key=lambda s: s.start_s):
        if out and s.start_s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], s.end_s))
        else:
            out.append((s.start_s, s.end_s))
    return out


def _inside(t: float, windows: list[tuple[float, float]], starts: list[float]) -> bool:
    i = bisect_right(starts, t) - 1
    return i >= 0 and t <= windows[i][1]


def _weight(s: Span) -> int:
    """Events a span costs: itself, and the two of the flow it ends."""
    return 3 if FLOW_IN in s.args else 1


def _sample_steps(spans: list[Span], counters: list[Counter], layout: _Layout, capacity: float) -> _Sample | None:
    """Keep every span without a step, and whole steps: each device's first ``K`` and every
    ``N``-th after, the most that fits ``capacity`` events (``K`` within a quarter of it);
    counter samples only inside the kept steps' time. None: not even that fits."""
    keys = [None if (step := _step_of(s)) is None else (layout.place[s.track][0], step) for s in spans]
    groups: dict[tuple[int, int], int] = {}
    fixed = 0
    for s, key in zip(spans, keys):
        if key is None:
            fixed += _weight(s)
        else:
            groups[key] = groups.get(key, 0) + _weight(s)
    if not groups:
        return None
    # Counter samples follow the spans they sit among: charge them to the steps pro rata.
    scale = 1 + len(counters) / max(1, sum(groups.values()))
    room = capacity - fixed - len(layout.tid) * 2 - len(layout.pids) * 3
    ranks: dict[int, list[int]] = {}
    for pid, step in sorted(groups):
        ranks.setdefault(pid, []).append(step)
    costs = [[groups[pid, step] * scale for step in steps] for pid, steps in ranks.items()]
    prefix = [list(accumulate(c, initial=0.0)) for c in costs]
    longest = max(map(len, costs))

    def head(k: int) -> float:
        return sum(p[min(k, len(p) - 1)] for p in prefix)

    def tail(k: int, n: int) -> float:
        return sum(sum(c[k::n]) for c in costs)

    first = 0
    while first < longest and head(first + 1) <= room / 4:
        first += 1
    while first >= 0 and head(first) + tail(first, longest + 1) > room:
        first -= 1
    if first < 0:
        return None
    rest = room - head(first)
    every = max(2, math.ceil(tail(first, 1) / rest)) if rest > 0 else longest + 1
    while every <= longest and head(first) + tail(first, every) > room:
        every += 1
    kept_steps = {(pid, step) for pid, steps in ranks.items() for rank, step in enumerate(steps)
                  if rank < first or (rank - first) % every == 0}
    kept, by_pid = [], {}
    for s, key in zip(spans, keys):
        if key is None:
            kept.append(s)
        elif key in kept_steps:
            kept.append(s)
            by_pid.setdefault(key[0], []).append(s)
    windows = {pid: _windows(group) for pid, group in by_pid.items()}
    windows[HOST_PID] = _windows([s for group in by_pid.values() for s in group])  # host counters: any device
    starts = {pid: [w[0] for w in ws] for pid, ws in windows.items()}
    kept_counters = []
    for c in counters:
        pid = layout.place[c.track][0]
        if pid in windows and _inside(c.time_s, windows[pid], starts[pid]):
            kept_counters.append(c)
    return _Sample(kept, kept_counters, {
        "rule": f"whole engine steps (span arg 'step'): each device's first {first}, then one in every "
                f"{every}; the other steps' spans and flows, and counter samples outside the kept steps' "
                "time, are left out (a counter holds its last kept value across a gap)",
        "first_steps": first, "every": every, "kept_steps": len(kept_steps), "of": len(groups)})


def _truncate(spans: list[Span], counters: list[Counter], capacity: float) -> _Sample:
    """Keep the run's beginning: spans and counter samples up to the time where ``capacity``
    events are used (for traces whose spans carry no step)."""
    used, end = 0, -math.inf
    events = sorted([(s.start_s, _weight(s)) for s in spans] + [(c.time_s, 1) for c in counters])
    for t, w in events:
        if used + w > capacity:
            break
        used, end = used + w, t
    kept = [s for s in spans if s.start_s <= end]
    last = max((s.end_s for s in spans), default=0.0)
    return _Sample(kept, [c for c in counters if c.time_s <= end], {
        "rule": f"events starting up to t = {max(end, 0.0):.6g} s of a {last:.6g} s run; the rest is left out",
        "until_s": max(end, 0.0)})


def _assemble(layout: _Layout, spans: list[Span], counters: list[Counter], metadata: dict) -> dict:
    events = layout.metadata()
    events += [layout.span(s) for s in spans]
    events += layout.flows(spans)
    events += [layout.counter(c) for c in counters]
    return {"traceEvents": events, "displayTimeUnit": "ms", "metadata": metadata}


def _event_bytes(layout: _Layout, spans: list[Span], counters: list[Counter]) -> float:
    """Mean JSON size of one event (span, flow end or counter sample), from a few hundred."""
    stride = max(1, (len(spans) + len(counters)) // 500)
    sizes = [len(json.dumps(layout.span(s))) + 2 for s in spans[::stride]]
    sizes += [len(json.dumps(layout.counter(c))) + 2 for c in counters[::stride]]
    return sum(sizes) / len(sizes) if sizes else 0.0


def chrome_trace(spans: Iterable[Span], process: str, metadata: dict | None = None,
                 counters: Iterable[Counter] = (), max_bytes: int | None = MAX_TRACE_BYTES) -> dict:
    """Chrome trace event JSON: processes and threads (see the module docstring), ``"X"`` span
    events, ``"s"``/``"f"`` flow events between the spans one feeds the other, ``"C"`` counter
    events; times in microseconds.

    ``max_bytes``: the most ``json.dumps`` of the result may take (None: no limit). A larger
    trace is sampled, whole steps at a time (spans without a step arg: the run's beginning), and
    ``metadata["sampled"]`` says what was kept."""
    spans = sorted(spans, key=lambda s: (s.start_s, s.track))
    counters = sorted(counters, key=lambda c: (c.time_s, c.track))
    layout = _Layout(spans, counters, process)
    metadata = dict(metadata or {})
    if max_bytes is None:
        return _assemble(layout, spans, counters, metadata)
    unit = _event_bytes(layout, spans, counters)
    events = sum(map(_weight, spans)) + len(counters)
    # Until it fits: an estimate in events first, then the exact size corrects the estimate.
    capacity = max_bytes / unit if unit else math.inf
    trace = None
    while trace is None:
        if events <= capacity:
            trace = _assemble(layout, spans, counters, metadata)
        else:
            sample = (_sample_steps(spans, counters, layout, capacity)
                      or _truncate(spans, counters, capacity))
            note = {**sample.note, "kept_events": sum(map(_weight, sample.spans)) + len(sample.counters),
                    "of_events": events, "max_bytes": max_bytes}
            trace = _assemble(layout, sample.spans, sample.counters, {**metadata, "sampled": note})
        size = len(json.dumps(trace))
        if size > max_bytes:
            if capacity < 1:
                raise ValueError(f"max_bytes = {max_bytes} leaves no room for any event of the trace")
            capacity = min(capacity, events) * 0.97 * max_bytes / size
            trace = None
    return trace


def write_chrome_trace(path: str | Path, spans: Iterable[Span], process: str, metadata: dict | None = None,
                       counters: Iterable[Counter] = (), max_bytes: int | None = MAX_TRACE_BYTES) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace(spans, process, metadata, counters, max_bytes)))
    return path


def spans_from_chrome_trace(trace: dict) -> list[Span]:
    """Inverse of :func:`chrome_trace` (track names restored from the metadata events)."""
    names = {
        (e.get("pid", HOST_PID), e["tid"]): _track(e.get("pid", HOST_PID), e["args"]["name"])
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    return [
        Span(e["name"], names.get((e.get("pid", HOST_PID), e["tid"]), str(e["tid"])), e["ts"] / 1e6, e["dur"] / 1e6,
             e.get("args", {}))
        for e in trace["traceEvents"]
        if e.get("ph") == "X"
    ]
