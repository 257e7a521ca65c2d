"""End to end: `streamlit run app/main.py` on a free port, driven in real Chromium by Playwright.

Changes an input on the What-if page, checks the headline number changes, and saves a
screenshot to out/screenshots/whatif.png. Skips only when /usr/bin/chromium is absent (CI
installs it in .ci/run); Playwright never downloads a browser here.
"""

from __future__ import annotations

import time

import pytest

from tests.server_helpers import ROOT, app_server, chromium

SCREENSHOTS = ROOT / "out" / "screenshots"


@pytest.fixture
def server():
    with app_server() as url:
        yield url


def _metric(page, label: str) -> str:
    box = page.locator('[data-testid="stMetric"]').filter(has_text=label).first
    return box.locator('[data-testid="stMetricValue"]').inner_text().strip()


@pytest.mark.browser
def test_whatif_in_chromium(server):
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1440, "height": 1000})
        page.goto(server, wait_until="domcontentloaded")
        page.get_by_text("Drop vs no Engram").first.wait_for(timeout=60_000)
        page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=30_000)
        before = _metric(page, "Drop vs no Engram")
        exposed_before = _metric(page, "Exposed / step")
        assert before.endswith("%")

        # Turn prefetch off: the fetch now starts at the layer, so it is exposed.
        page.get_by_text("Prefetch at step start").click()
        deadline = time.monotonic() + 30
        while _metric(page, "Exposed / step") == exposed_before and time.monotonic() < deadline:
            time.sleep(0.1)
        after = _metric(page, "Drop vs no Engram")
        assert _metric(page, "Exposed / step") != exposed_before
        assert after != before, (before, after)
        page.wait_for_timeout(800)  # let plotly finish drawing before the picture
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "whatif.png"), full_page=True)
    assert (SCREENSHOTS / "whatif.png").stat().st_size > 10_000
