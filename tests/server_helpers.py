"""Starting the dashboard's server in tests: a free port and waiting until it answers."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(proc: subprocess.Popen, port: int, timeout_s: float = 60.0) -> str:
    """The server's URL once ``/_stcore/health`` answers; fails the test with the server's
    output if it exits or does not answer within ``timeout_s``."""
    url = f"http://localhost:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return url
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                pytest.fail(f"streamlit did not start on port {port}:\n{out[-2000:]}")
            time.sleep(0.1)
