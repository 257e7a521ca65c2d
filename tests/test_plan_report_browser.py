"""The planner's report.html in real Chromium (Playwright): the answer comes first, a table per
study, no JavaScript errors, every chart drawn (offline: plotly.js is embedded), coinciding
hardware lines named in the legend; a screenshot goes to out/screenshots/plan-report.png.
Skips only when /usr/bin/chromium is absent (CI installs it in .ci/run); Playwright never
downloads a browser here.
"""

from __future__ import annotations

import pytest
import yaml

from planner.loading import ROOT
from planner.plan import plan_from_dict, run_plan
from planner.plan.report import write_report
from tests.server_helpers import chromium

SCREENSHOTS = ROOT / "out" / "screenshots"
PLANS = ROOT / "examples" / "plans"


def _plan():
    """Two nodes whose answers coincide (H800 and H100 differ only in NVLink), a hot-row cache
    that changes nothing but GPU memory (a dominated duplicate), and the bundled infeasible
    study: every part of the report, in about two seconds."""
    infeasible = yaml.safe_load((PLANS / "infeasible.yaml").read_text())["studies"][0]
    return plan_from_dict({
        "name": "report-check", "description": "Dense-8B Engram tables on two 8-GPU nodes, and a host too small",
        "defaults": {"constraints": {"max_throughput_drop": 0.02, "tpot": {"p99": "60 ms"}},
                     "verify": {"top_n": 3, "max_simulations": 6, "pareto_max": 2}},
        "studies": [{"name": "dense8b", "scenario": "h800-dense8b-engram100b",
                     "set": {"workload.num_sequences": 64, "workload.output_len": {"kind": "fixed", "value": 8},
                             "workload.prompt_len": {"kind": "uniform", "low": 128, "high": 512}},
                     "grid": {"hardware": ["h800", "h100-sxm"]},
                     "search": {"engram_params": ["25B", "400B", "800B", "1000B"], "layer_ids": [[1], [6]],
                                "tier": ["device", "host"], "cache_fraction": [0.0, 0.02],
                                "prefetch": [True, False]}},
                    infeasible]}, base_dir=PLANS)


@pytest.mark.browser
def test_plan_report_in_chromium(tmp_path):
    plan = _plan()
    results = run_plan(plan)
    assert [bool(r.recommendations) for r in results] == [True, True, False]
    report = write_report(plan, results, tmp_path)["html"]
    assert 'src="http' not in report.read_text()  # offline: no CDN

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri(), wait_until="load")
        page.locator(".js-plotly-plot svg.main-svg").first.wait_for(timeout=30_000)

        # The answer is the first content after the title (and the plan's one-line description).
        first = page.evaluate("""() => [...document.querySelector('main').children]
            .filter(e => !(e.tagName === 'H1' || e.classList.contains('lede'))).map(e => e.id)[0]""")
        assert first == "answer"
        answer = page.locator("#answer").inner_text()
        assert answer.count("output tokens/s") == 2 and "no candidate meets every constraint" in answer
        assert "A larger table (1T params) fails" in answer  # what is out of reach, and why

        # A table per feasible study, plus the duplicates left out; numbers right-aligned.
        heads = page.locator("table thead").all_inner_texts()
        assert sum("output tok/s" in h for h in heads) == 2 and sum("why not" in h for h in heads) == 2
        assert "less GPU memory per device" in page.locator("table").nth(1).inner_text()
        cell = page.locator("td.num").first
        assert cell.evaluate("e => getComputedStyle(e).textAlign") == "right"
        assert page.locator("main").bounding_box()["width"] <= 1260

        # Every chart drawn with data; coinciding hardware lines said so in the legend.
        assert page.locator(".js-plotly-plot").count() == 3
        assert page.locator(".js-plotly-plot svg.main-svg").count() >= 3
        assert page.locator(".js-plotly-plot .scatterlayer .trace, .js-plotly-plot .barlayer .trace").count() > 5
        legends = " ".join(page.eval_on_selector_all(".js-plotly-plot g.legend text",
                                                     "els => els.map(e => e.textContent)"))
        assert "(same as dense8b [hardware=h800])" in legends
        assert "infeasible (fails a limit)" in legends and "verified Pareto front" in legends
        page.wait_for_timeout(800)  # let plotly finish drawing before the picture
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / "plan-report.png"), full_page=True)
        assert errors == []
    assert (SCREENSHOTS / "plan-report.png").stat().st_size > 10_000
