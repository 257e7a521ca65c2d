"""``engram-planner app``: the Streamlit dashboard (app/main.py), served headless on localhost."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from planner.cli.common import HELP_FORMATTER, number

MAIN = Path(__file__).resolve().parents[2] / "app" / "main.py"

EPILOG = """\
examples:
  engram-planner app                 serve on http://localhost:8501
  engram-planner app --port 8600     another port

Pages: What-if, Sweeps, Planner, Validation, Hardware (docs/app.md). Stop with Ctrl-C or
`kill PID`: the server stops with the wrapper.
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "app",
        help="interactive what-if dashboard in the browser (Streamlit)",
        description="Serve the dashboard: edit a scenario and see the analytic estimate update "
        "instantly, simulate on demand with a timeline, sweep, plan, compare hardware and "
        "validation results. Needs the 'app' extra (pip install 'engram-planner[app]').",
        epilog=EPILOG,
        formatter_class=HELP_FORMATTER,
    )
    p.add_argument("--port", type=number(int, 1, 65535), default=8501, help="TCP port (default 8501)")
    p.add_argument("--address", default="localhost",
                   help="address to listen on (default localhost; 0.0.0.0 to share on a network)")
    p.set_defaults(func=run)


def command(port: int, address: str = "localhost") -> list[str]:
    """The ``streamlit run`` command line the CLI executes (also used by tests and the bench)."""
    return [sys.executable, "-m", "streamlit", "run", str(MAIN),
            "--server.headless", "true", "--server.port", str(port), "--server.address", address,
            "--browser.gatherUsageStats", "false", "--client.toolbarMode", "minimal",
            "--server.fileWatcherType", "none"]


def run(args) -> int:
    try:
        import streamlit  # noqa: F401
    except ImportError:
        raise ValueError("the dashboard needs Streamlit: pip install 'engram-planner[app]'") from None
    if not 0 < args.port < 65536:
        raise ValueError(f"--port {args.port} is not a TCP port (1-65535)")
    print(f"engram-planner app: serving {MAIN} at http://{args.address}:{args.port} (Ctrl-C stops)",
          flush=True)
    return serve(command(args.port, args.address))


def free_port() -> int:
    """A TCP port nothing listens on now (for tests and benchmarks that start a server)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_healthy(port: int, proc: subprocess.Popen | None = None, timeout_s: float = 60.0) -> None:
    """Return once the server on ``port`` answers ``/_stcore/health``; ``RuntimeError`` if
    ``proc`` (the server) exits first or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before answering on port {port}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"streamlit did not answer on port {port} within {timeout_s:.0f} s")
        time.sleep(0.05)


STOP_GRACE_S = 10.0  # how long the server may take to stop before it is killed


def serve(argv: list[str]) -> int:
    """Run the server as a child and stop with it: SIGTERM, SIGHUP and SIGINT to this process
    are forwarded (a bare ``kill`` of the wrapper would otherwise leave Streamlit holding the
    port); a server still running
    ``STOP_GRACE_S`` after a stop was asked is killed, and whatever ends this process, the child
    is stopped. Returns its exit code (130 after Ctrl-C)."""
    proc = subprocess.Popen(argv)
    asked: list[float] = []  # when a stop was asked
    interrupts: list[int] = []

    def forward(signum, _frame):
        if signum == signal.SIGINT:
            interrupts.append(signum)
        if proc.returncode is None:
            try:
                proc.send_signal(signum)
            except OSError:  # it has just exited
                pass
        asked.append(time.monotonic())

    # SIGINT too is handled, not raised as KeyboardInterrupt: one raised inside Popen.wait can
    # leave its internal lock taken, after which no wait ever reaps the child (the wrapper then
    # hangs). A terminal's Ctrl-C reaches the server through the process group as well.
    names = ("SIGTERM", "SIGHUP", "SIGINT")
    forwarded = [getattr(signal, n) for n in names if getattr(signal, n, None) is not None]
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while True:
            try:
                code = proc.wait(0.5)
                break
            except subprocess.TimeoutExpired:
                if asked and time.monotonic() - asked[0] > STOP_GRACE_S:
                    proc.kill()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return 130 if interrupts else code
