"""Starting the dashboard's server in tests: a free port and waiting until it answers."""

from __future__ import annotations

import subprocess

import pytest

from planner.cli.app import free_port, wait_until_healthy as _wait

__all__ = ["free_port", "wait_until_healthy"]


def wait_until_healthy(proc: subprocess.Popen, port: int, timeout_s: float = 60.0) -> str:
    """The server's URL once it answers; fails the test with the server's output if it exits
    or does not answer within ``timeout_s``."""
    try:
        _wait(port, proc, timeout_s)
    except RuntimeError as exc:
        proc.kill()
        out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
        pytest.fail(f"{exc}:\n{out[-2000:]}")
    return f"http://localhost:{port}"
