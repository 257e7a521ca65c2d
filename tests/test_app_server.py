"""``engram-planner app`` stops with its server: a plain ``kill`` of the wrapper (SIGTERM) must
not leave Streamlit running on the port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.server_helpers import free_port, wait_until_healthy


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_killing_the_wrapper_stops_the_server(sig):
    pytest.importorskip("streamlit")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "planner", "app", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_healthy(proc, port)
        os.kill(proc.pid, sig)
        proc.wait(30)
        deadline = time.monotonic() + 15
        while _port_open(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _port_open(port), f"a server still listens on port {port} after the wrapper got {sig.name}"
    finally:
        if proc.poll() is None:
            proc.kill()
