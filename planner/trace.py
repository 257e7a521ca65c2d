"""Spans and Chrome trace export: the one timeline format of real runs and simulations.

A measured run (``reference_model``) and a simulated run (``planner.sim``) both produce a list
of :class:`Span` and export it with :func:`chrome_trace`, so the two open side by side in
Perfetto (ui.perfetto.dev) or chrome://tracing, and validation can match them by name.

Span names are shared vocabulary (``SPAN_NAMES``): a real run and its simulation must use the
same name for the same work. ``track`` is the physical actor the span ran on (``compute``,
``h2d``, ``host_gather``, ...), which becomes a thread row in the viewer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
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


def chrome_trace(spans: Iterable[Span], process: str, metadata: dict | None = None,
                 counters: Iterable[Counter] = ()) -> dict:
    """Chrome trace event JSON (``traceEvents`` of complete ``"X"`` events and ``"C"`` counter
    events, microseconds)."""
    spans = list(spans)
    tracks: dict[str, int] = {}
    for span in spans:
        tracks.setdefault(span.track, len(tracks) + 1)
    events: list[dict] = [
        {"ph": "M", "pid": 1, "tid": 0, "name": "process_name", "args": {"name": process}}
    ]
    for track, tid in tracks.items():
        events.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_name", "args": {"name": track}})
        events.append({"ph": "M", "pid": 1, "tid": tid, "name": "thread_sort_index", "args": {"sort_index": tid}})
    for span in sorted(spans, key=lambda s: (s.start_s, s.track)):
        events.append(
            {
                "ph": "X",
                "pid": 1,
                "tid": tracks[span.track],
                "name": span.name,
                "cat": span.track,
                "ts": span.start_s * 1e6,
                "dur": span.dur_s * 1e6,
                "args": span.args,
            }
        )
    for c in sorted(counters, key=lambda c: (c.time_s, c.track)):
        events.append({"ph": "C", "pid": 1, "name": c.track, "ts": c.time_s * 1e6, "args": dict(c.values)})
    return {"traceEvents": events, "displayTimeUnit": "ms", "metadata": metadata or {}}


def write_chrome_trace(path: str | Path, spans: Iterable[Span], process: str, metadata: dict | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(chrome_trace(spans, process, metadata)))
    return path


def spans_from_chrome_trace(trace: dict) -> list[Span]:
    """Inverse of :func:`chrome_trace` (track names restored from the metadata events)."""
    names = {
        e["tid"]: e["args"]["name"]
        for e in trace["traceEvents"]
        if e.get("ph") == "M" and e.get("name") == "thread_name"
    }
    return [
        Span(e["name"], names.get(e["tid"], str(e["tid"])), e["ts"] / 1e6, e["dur"] / 1e6, e.get("args", {}))
        for e in trace["traceEvents"]
        if e.get("ph") == "X"
    ]
