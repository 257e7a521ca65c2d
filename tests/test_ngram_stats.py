"""N-gram row statistics: closed-form checks of the estimators, the agreed JSON format (read
back by the simulator's parser) and the CLI."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from planner.cli import main
from planner.ngram_model import NgramStats
from reference_model.ngram_stats import (
    RowStream, cache_hit_rate, corpus_row_stream, ngram_stats, row_counts, unique_fraction, zipf_exponent,
)


@pytest.mark.parametrize("s", [0.7, 1.0, 1.3])
def test_zipf_exponent_recovers_synthetic_law(s):
    ranks = np.arange(1, 20_001)
    counts = np.round(1e7 * ranks ** -s)
    assert zipf_exponent(counts) == pytest.approx(s, abs=0.02)


def test_zipf_exponent_needs_data():
    with pytest.raises(ValueError, match="too little text"):
        zipf_exponent(np.array([1, 1, 2]))


def test_unique_fraction_closed_forms():
    rng = np.random.default_rng(0)
    constant = np.zeros((100, 4), dtype=np.int64)
    assert unique_fraction(constant, 10, 8, rng) == pytest.approx(1 / 40)
    distinct = np.arange(400).reshape(100, 4)
    assert unique_fraction(distinct, 10, 8, rng) == pytest.approx(1.0, abs=0.1)


def test_cache_hit_rate_closed_form():
    train_ids, train_counts = np.array([1, 2, 3, 4]), np.array([10, 5, 1, 1])
    test = np.array([1, 1, 2, 3, 9])
    assert cache_hit_rate(train_ids, train_counts, test, 1) == pytest.approx(2 / 5)
    assert cache_hit_rate(train_ids, train_counts, test, 2) == pytest.approx(3 / 5)
    assert cache_hit_rate(train_ids, train_counts, test, 0) == 0.0


@pytest.fixture(scope="module")
def small_stream(tiny_spec):
    return corpus_row_stream(tiny_spec, max_tokens=12_000)


def test_result_format_is_what_the_simulator_reads(tiny_spec, small_stream):
    result = ngram_stats(tiny_spec, stream=small_stream, batch_tokens=(1, 16, 256, 4096),
                         cache_fractions=(0.001, 0.01, 0.1, 1.0), samples=2)
    assert set(result) == {"zipf_exponent", "rows_per_token", "table_rows", "unique_rows_curve",
                           "cache_hit_curve", "source"}
    assert result["rows_per_token"] == tiny_spec.engram.rows_per_token
    uniq = result["unique_rows_curve"]["unique_fraction"]
    hits = result["cache_hit_curve"]["hit_rate"]
    assert uniq[0] == 1.0 and all(a >= b for a, b in zip(uniq, uniq[1:]))
    assert all(a <= b for a, b in zip(hits, hits[1:])) and hits[-1] > 0.8
    assert result["source"]["tokens_used"] == 12_000
    parsed = NgramStats.from_dict(json.loads(json.dumps(result)))
    assert parsed.rows_per_token == result["rows_per_token"]


def test_row_counts_feed_the_static_cache(small_stream):
    counts = row_counts(small_stream, stop=1000)
    ids, n = counts[1]
    assert n.sum() == 1000 * small_stream.rows_per_token and (np.diff(ids) > 0).all()


def test_bad_arguments(tiny_spec, small_stream):
    with pytest.raises(ValueError, match="train_share"):
        ngram_stats(tiny_spec, stream=small_stream, train_share=1.0)
    with pytest.raises(ValueError, match="cache fractions"):
        ngram_stats(tiny_spec, stream=small_stream, cache_fractions=(2.0,))
    with pytest.raises(ValueError, match="no Engram"):
        corpus_row_stream(tiny_spec.without_engram())
    stream = RowStream({1: np.zeros((4, 8), dtype=np.int64)}, {1: 10}, {})
    assert stream.tokens == 4 and stream.rows_per_token == 8


def test_cli_writes_json_and_offline_html(tmp_path, capsys):
    assert main(["ngram-stats", "--max-tokens", "5000", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "Zipf exponent" in printed and "hit rate" in printed
    data = json.loads((tmp_path / "ngram_stats.json").read_text())
    NgramStats.from_dict(data)
    html = (tmp_path / "ngram_stats.html").read_text()
    assert not re.search(r"<script[^>]*\bsrc=", html) and len(html) > 1_000_000  # plotly.js embedded
    assert main(["ngram-stats", "--model", "dense-8b"]) == 2
