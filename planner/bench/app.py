"""``engram-planner bench app``: how fast the dashboard starts and answers a what-if change.

* **start**: a fresh Python process imports Streamlit's AppTest, the planner and plotly, and
  runs the What-if page once in full (analytic estimate, memory and layer figures): the time a
  user waits for the first page after the server is up. Target < 5 s.
* **update**: the same session changes the host-to-device bandwidth (a new value each time, so
  no cached answer) and reruns the page: the analytic path's round trip without the browser's
  drawing. Target < 1 s (median).
* **server**: ``streamlit run app/main.py`` until its health endpoint answers (``--no-server``
  skips it).
* **browser** (``--browser``, needs Playwright and /usr/bin/chromium): what a user sees: server
  launch to the first headline number in Chromium, to the page's charts drawn, and the time
  from a click (prefetch on/off) to the new number on screen.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

from planner.bench import machine_fingerprint

DESCRIPTION = "dashboard cold start (What-if page, first full run) and analytic what-if update time"
TARGET_START_S = 5.0
TARGET_UPDATE_S = 1.0

# Runs in a fresh interpreter so imports count, as they do for a user.
_SCRIPT = r"""
import json, statistics, sys, time
t0 = time.perf_counter()
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=120).run()
start_s = time.perf_counter() - t0
assert not at.exception, [e.value for e in at.exception]
def throughput():
    return next(m.value for m in at.metric if m.label.startswith("Output tok/s"))
at.radio(key="wi.h100-engram27b-host.pl.tier").set_value("host").run()
values, times = [throughput()], []
for i in range(int(sys.argv[2])):
    t = time.perf_counter()
    at.number_input(key="wi.h100-engram27b-host.hw.h100-sxm.f.link.h2d_bandwidth").set_value(0.05 * (i + 1)).run()
    times.append(time.perf_counter() - t)
    values.append(throughput())
print(json.dumps({"start_s": start_s, "update_s": times, "update_median_s": statistics.median(times),
                  "update_max_s": max(times), "distinct_results": len(set(values))}))
"""


def add_arguments(parser) -> None:
    from planner.cli.common import number

    parser.add_argument("--updates", type=number(int, 1, 1000), default=10, help="what-if changes to time (default 10)")
    parser.add_argument("--no-server", action="store_true", help="skip timing `streamlit run` start-up")
    parser.add_argument("--browser", action="store_true",
                        help="also time the page in Chromium (Playwright, /usr/bin/chromium)")


def server_ready_s(timeout_s: float = 60.0) -> float:
    """Seconds from launching ``engram-planner app``'s command to a healthy HTTP server."""
    from planner.cli.app import command, free_port, wait_until_healthy

    port = free_port()
    start = time.perf_counter()
    proc = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(port, proc, timeout_s)
        return time.perf_counter() - start
    finally:
        proc.terminate()
        proc.wait(timeout=10)


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def browser_timings(clicks: int = 5) -> dict:
    """Seconds from launching the server to the What-if numbers and charts in Chromium, and
    from a click to the changed number (median over ``clicks``)."""
    import statistics

    from playwright.sync_api import sync_playwright

    from planner.cli.app import command, free_port

    port = free_port()
    with sync_playwright() as p:
        # The browser is up first: its own launch is not the app's start-up.
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        start = time.perf_counter()
        proc = subprocess.Popen(command(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while True:
                try:
                    page.goto(f"http://localhost:{port}", wait_until="domcontentloaded")
                    break
                except Exception:  # connection refused until the server listens
                    if time.perf_counter() - start > 60:
                        raise
                    time.sleep(0.05)
            value = page.locator('[data-testid="stMetric"]').filter(has_text="Exposed / step").first \
                .locator('[data-testid="stMetricValue"]')
            value.wait_for(timeout=60_000)
            first_number = time.perf_counter() - start
            page.locator('[data-testid="stPlotlyChart"]').nth(1).wait_for(timeout=60_000)
            charts = time.perf_counter() - start
            times = []
            for _ in range(clicks):
                before = value.inner_text()
                t = time.perf_counter()
                page.get_by_text("Prefetch at step start").click()
                while value.inner_text() == before and time.perf_counter() - t < 30:
                    time.sleep(0.01)
                times.append(time.perf_counter() - t)
        finally:
            browser.close()
            proc.terminate()
            proc.wait(timeout=10)
    return {"browser_first_number_s": first_number, "browser_charts_s": charts,
            "browser_update_s": times, "browser_update_median_s": statistics.median(times)}


def run(args) -> dict:
    from planner.cli.app import MAIN

    updates = 3 if args.quick else args.updates
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(MAIN), str(updates)],
                         capture_output=True, text=True, timeout=600)
    if out.returncode:
        raise RuntimeError(f"app bench failed:\n{out.stderr[-2000:]}")
    timings = json.loads(out.stdout.strip().splitlines()[-1])
    result = {
        "machine": machine_fingerprint(),
        **timings,
        "start_target_s": TARGET_START_S,
        "start_ok": timings["start_s"] < TARGET_START_S,
        "update_target_s": TARGET_UPDATE_S,
        "update_ok": timings["update_median_s"] < TARGET_UPDATE_S,
    }
    if not args.no_server:
        result["server_ready_s"] = server_ready_s()
    if args.browser:
        result.update(browser_timings(3 if args.quick else 5))
    return result


def format_text(r: dict) -> str:
    ok = {True: "ok", False: "MISSED"}
    lines = [
        f"app start (fresh process, What-if page first full run): {r['start_s']:.2f} s, "
        f"target < {r['start_target_s']:.0f} s [{ok[r['start_ok']]}]",
        f"what-if update (analytic path, {len(r['update_s'])} changes): median {r['update_median_s'] * 1e3:.0f} ms, "
        f"max {r['update_max_s'] * 1e3:.0f} ms, target < {r['update_target_s'] * 1e3:.0f} ms "
        f"[{ok[r['update_ok']]}]; {r['distinct_results']} distinct throughputs",
    ]
    if "server_ready_s" in r:
        lines.append(f"streamlit server healthy after {r['server_ready_s']:.2f} s")
    if "browser_first_number_s" in r:
        lines.append(f"Chromium: first number {r['browser_first_number_s']:.2f} s and charts drawn "
                     f"{r['browser_charts_s']:.2f} s after launching the server; click to new number "
                     f"median {r['browser_update_median_s'] * 1e3:.0f} ms")
    lines.append(f"machine: {r['machine']['processor']}, {r['machine']['cpu_count']} CPUs, "
                 f"Python {r['machine']['python']}")
    return "\n".join(lines)
