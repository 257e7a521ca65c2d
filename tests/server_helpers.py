"""Starting the dashboard's server in tests (a free port, waiting until it answers, stopping it)
and the Chromium the browser tests drive (Debian's; Playwright never downloads one)."""

from __future__ import annotations

import os
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from planner.cli.app import free_port
from planner.cli.app import wait_until_healthy as _wait

__all__ = ["ARGS", "CHROMIUM", "ROOT", "app_server", "chromium", "free_port", "wait_until_healthy"]

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@contextmanager
def app_server(log_path: Path | None = None):
    """``engram-planner app`` on a free port: yields its URL, stops it after. Its output goes to
    ``log_path`` (a file, not a pipe nobody reads: a full pipe stalls a long-lived server), else
    to a pipe read if it fails to start."""
    from planner.cli.app import command

    port = free_port()
    env = {**os.environ, "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1"}
    log = open(log_path, "wb") if log_path is not None else None
    try:
        proc = subprocess.Popen(command(port), cwd=ROOT, env=env, stdout=log or subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    finally:
        if log is not None:
            log.close()
    try:
        try:
            url = wait_until_healthy(proc, port)
        except BaseException:
            if log_path is not None:
                print(log_path.read_text(errors="replace")[-2000:])
            raise
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


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


@contextmanager
def chromium():
    """Headless Debian Chromium through Playwright; skips the test where either is absent
    (.ci/run installs both)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium); .ci/run installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (the Python package) is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()
