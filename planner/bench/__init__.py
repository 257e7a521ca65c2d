"""Benchmarks behind ``engram-planner bench NAME``: speed and memory targets live here, not in
timed unit tests.

Each module ``planner/bench/<name>.py`` defines:

* ``DESCRIPTION``: one line for ``--help``;
* ``add_arguments(parser)``: its own options (``--quick`` is added for every benchmark);
* ``run(args) -> dict``: measures and returns plain values (SI units), including a
  ``"machine"`` entry from :func:`machine_fingerprint` and the targets it checks;
* ``format_text(result) -> str``: the human-readable report.

The CLI prints the text or JSON and writes ``--out FILE.json``.
"""

from __future__ import annotations

import os
import platform
import time

# Benchmark modules, in the order --help lists them.
BENCHES: list[str] = ["simulator", "offload", "hashing", "app", "planner"]


def machine_fingerprint() -> dict:
    info = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["cuda"] = torch.version.cuda
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
