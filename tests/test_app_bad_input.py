"""The bad inputs of tests/bad_input_cases.py, typed into the dashboard (AppTest): each shows a
message in the page that names the field and the value, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from tests.bad_input_cases import BOMB  # noqa: E402

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
S = "wi.h100-engram27b-host"
MODEL = S + ".model.engram-27b"
HW = S + ".hw.h100-sxm"

# (id, widget kind, widget key, value, fragments the page's error names)
WHATIF = [
    ("model-alias-bomb", "text_area", MODEL + ".yaml", BOMB, ["model overrides", "aliases"]),
    ("model-hc-mult-yes", "text_area", MODEL + ".yaml", "hc_mult: yes", ["hc_mult", "boolean"]),
    ("model-rope-theta-inf", "text_area", MODEL + ".yaml", "rope_theta: .inf", ["rope_theta", "finite"]),
    ("model-rows-past-int64", "text_area", MODEL + ".yaml", "engram:\n  table_size_per_head: " + "1" + "0" * 30,
     ["table_size_per_head", "64-bit row ids"]),
    ("model-misspelt-key", "text_area", MODEL + ".yaml", "engram:\n  n_head: 8", ["engram.n_head", "did you mean 'n_heads'"]),
    ("model-a-billion-layers", "text_area", MODEL + ".yaml", "n_layers: 1000000000", ["n_layers", "ENGRAM_PLANNER_MAX_LAYERS"]),
    ("model-layer-ids-text", "text_input", MODEL + ".f.layer_ids", "1, x", ["engram.layer_ids", "'1, x'"]),
    ("model-layer-ids-twice", "text_input", MODEL + ".f.layer_ids", "1,1", ["engram.layer_ids", "'1,1'", "[1]"]),
    ("hw-hash-rate-inf", "text_area", HW + ".yaml", "host:\n  hash_tokens_per_s_per_core: .inf",
     ["host.hash_tokens_per_s_per_core", "finite"]),
    ("hw-memory-nan", "text_area", HW + ".yaml", "device:\n  memory: .nan", ["device.memory", "not a finite number"]),
    ("hw-count-yes", "text_area", HW + ".yaml", "device:\n  count: yes", ["device.count", "boolean"]),
    ("hw-deep-nesting", "text_area", HW + ".yaml", "a: " + "[" * 1000 + "]" * 1000, ["levels of nesting"]),
    ("hw-not-a-mapping", "text_area", HW + ".yaml", "- 1\n- 2", ["hardware overrides", "expected a mapping"]),
    ("prompt-low-above-high", "text_input", S + ".wl.prompt_len", "{kind: uniform, low: 50, high: 10}",
     ["low = 50 is above high = 10"]),
    ("prompt-recursive-alias", "text_input", S + ".wl.prompt_len", "&a [*a]", ["workload.prompt_len", "recursive"]),
    ("prompt-not-yaml", "text_input", S + ".wl.prompt_len", "{kind: [", ["workload.prompt_len", "not valid YAML"]),
]


def _app(page: str = "pages/whatif.py") -> AppTest:
    at = AppTest.from_file(MAIN, default_timeout=120).run()
    if page != "pages/whatif.py":
        at.switch_page(page).run()
    assert not at.exception and not at.error, [e.value for e in at.exception]
    return at


def _errors(at: AppTest) -> str:
    assert not at.exception, [e.value for e in at.exception]  # a traceback in the page
    return "\n".join(e.value for e in at.error)


def _shows_the_error(page: str, case) -> None:
    """Set one widget to a bad value: the page shows a message naming it, never a traceback."""
    _, kind, key, value, fragments = case
    at = _app(page)
    getattr(at, kind)(key=key).set_value(value).run()
    text = _errors(at)
    assert text, "no message shown"
    for fragment in fragments:
        assert fragment in text, text
    assert "Traceback" not in text and "errors.pydantic.dev" not in text and len(text) < 3000


@pytest.mark.parametrize("case", WHATIF, ids=[c[0] for c in WHATIF])
def test_whatif_shows_the_error(case):
    _shows_the_error("pages/whatif.py", case)


def test_whatif_work_above_the_limits_is_refused_before_it_starts():
    at = _app()
    at.number_input(key=S + ".wl.num_sequences").set_value(10**9).run()
    text = _errors(at)  # the whole-run estimate would loop over 976,563 batches per device
    assert "976,563 batches" in text and "ENGRAM_PLANNER_MAX_ANALYTIC_WAVES" in text
    at.number_input(key=S + ".wl.num_sequences").set_value(2_000_000).run()
    at.number_input(key=S + ".wl.max_num_seqs").set_value(256).run()
    assert not _errors(at)  # the estimate shows; simulating 2M sequences is refused on the click
    at.button(key="wi.simulate").click().run()
    text = _errors(at)
    assert "workload.num_sequences" in text and "2,000,000" in text and "ENGRAM_PLANNER_MAX_SEQUENCES" in text


def test_whatif_flags_tables_beyond_device_memory():
    at = _app()
    at.radio(key=S + ".pl.tier").set_value("device").run()
    at.number_input(key=MODEL + ".f.rows").set_value(2_000_000_000).run()
    assert not _errors(at)
    warnings = "\n".join(w.value for w in at.warning)
    assert "Physically impossible as placed" in warnings and "hardware.device.memory" in warnings


PLANNER = [
    ("planner-a-billion-requests", "number_input", "pl.nseq", 10**9, ["num_sequences", "1,000,000,000"]),
    ("planner-params-past-int64", "text_input", "pl.params", "1e30", ["engram_params[0]", "64-bit row ids"]),
    ("planner-params-not-a-count", "text_input", "pl.params", "lots", ["engram_params", "lots"]),
    ("planner-layer-past-last", "text_input", "pl.layers", "1; 99", ["layer_ids[1]", "past the last block"]),
    ("planner-layers-not-numbers", "text_input", "pl.layers", "1; a", ["layer_ids", "'1; a'"]),
    ("planner-cache-nan", "text_input", "pl.cache", "0, nan", ["cache_fraction[1]", "finite"]),
    ("planner-prompt-boolean", "text_input", "pl.prompt", "{kind: fixed, value: yes}", ["prompt_len", "boolean"]),
    ("planner-prompt-alias-bomb", "text_input", "pl.prompt", BOMB.replace("\n", ", ").join("{}"),
     ["workload.prompt_len"]),
]


@pytest.mark.parametrize("case", PLANNER, ids=[c[0] for c in PLANNER])
def test_planner_shows_the_error(case):
    _shows_the_error("pages/planner.py", case)
