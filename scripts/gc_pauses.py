"""A pytest plugin that reports the cycle collector's pauses: how many collections of each
generation ran during the session and how long they took (``gc.callbacks``), printed in the
terminal summary. It is how the gate's collector cost was found (docs/validation.md, "The
collector's walks"):

    PYTHONPATH=scripts .venv/bin/python -m pytest -m serial -p gc_pauses

Before ``reference_model.instrument.frozen_heap`` the gate's full (generation 2) collections
took 0.2-0.3 s each, about half its wall time; with it, a few seconds in all.
"""

from __future__ import annotations

import gc
import time

_seconds = [0.0, 0.0, 0.0]
_count = [0, 0, 0]
_started: list[tuple[int, float]] = []


def _callback(phase: str, info: dict) -> None:
    if phase == "start":
        _started.append((info["generation"], time.perf_counter()))
    elif _started:
        generation, t0 = _started.pop()
        _seconds[generation] += time.perf_counter() - t0
        _count[generation] += 1


def pytest_configure(config) -> None:
    gc.callbacks.append(_callback)


def pytest_terminal_summary(terminalreporter) -> None:
    terminalreporter.section("cycle collector pauses (gc_pauses)")
    for generation in range(3):
        n, s = _count[generation], _seconds[generation]
        terminalreporter.write_line(f"generation {generation}: {n} collections, {s:.2f} s in all"
                                    + (f", {1e3 * s / n:.1f} ms each" if n else ""))
    terminalreporter.write_line(f"live objects now: {len(gc.get_objects()):,}")
