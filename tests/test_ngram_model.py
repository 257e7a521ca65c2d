"""The n-gram traffic model: Zipf closed forms and measured curves."""

import json

import numpy as np
import pytest

from planner.ngram_model import NgramStats, ZipfTraffic, traffic_model, zipf_harmonic


def brute(p_rows: int, s: float):
    p = np.arange(1, p_rows + 1, dtype=float) ** -s
    return p / p.sum()


@pytest.mark.parametrize("s", [0.8, 1.0, 1.2])
def test_zipf_unique_rows_and_hits_match_brute_force(s):
    z = ZipfTraffic(rows_per_head=20_000, rows_per_token=2, exponent=s)
    p = brute(20_000, s)
    for t in (1, 100, 10_000):
        expected = (1 - (1 - p) ** t).sum()
        assert z.unique_fraction(t) * t == pytest.approx(expected, rel=2e-3)
        skip = 200
        assert z.rows_fetched(t, skip / 20_000) == pytest.approx(2 * (1 - (1 - p[skip:]) ** t).sum(), rel=2e-3)
    assert z.hit_rate(0.01) == pytest.approx(p[:200].sum(), rel=1e-4)


def test_harmonic_numbers():
    assert zipf_harmonic(10, 1.0) == pytest.approx(sum(1 / k for k in range(1, 11)))
    assert zipf_harmonic(1e7, 1.0) == pytest.approx(np.log(1e7) + 0.5772156649, rel=1e-5)


def test_hit_rate_and_fetched_rows_are_monotone():
    z = ZipfTraffic(rows_per_head=1e6, rows_per_token=16)
    f = np.array([0.0, 1e-4, 1e-3, 1e-2, 0.1, 1.0])
    h = z.hit_rate(f)
    assert h[0] == 0 and h[-1] == pytest.approx(1.0) and np.all(np.diff(h) > 0)
    rows = z.rows_fetched(512, f)
    assert np.all(np.diff(rows) <= 0) and rows[-1] == pytest.approx(0.0, abs=1e-6)
    assert z.rows_fetched(512, 0.0, dedup=False) == 512 * 16
    assert z.rows_touched(512) < 512 * 16


def test_stats_json_round_trip_and_interpolation(tmp_path):
    z = ZipfTraffic(rows_per_head=1e6, rows_per_token=16)
    stats = z.to_stats()
    path = tmp_path / "stats.json"
    stats.to_json(path)
    back = NgramStats.from_json(path)
    assert back == stats
    assert json.loads(path.read_text())["unique_rows_curve"]["batch_tokens"][0] == 1
    # Interpolated curves stay close to the model between the measured points.
    for t in (3, 700, 50_000):
        assert back.unique_fraction(t) == pytest.approx(z.unique_fraction(t), rel=0.02)
    for f in (3e-5, 0.02, 0.5):
        assert back.hit_rate(f) == pytest.approx(z.hit_rate(f), abs=0.01)
    assert back.hit_rate(0.0) == 0.0 and back.hit_rate(1.0) == 1.0


def test_bad_stats_files_name_the_field(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"zipf_exponent": 1.0, "rows_per_token": 16, "table_rows": 10,
                                "unique_rows_curve": {"batch_tokens": [1, 2], "unique_fraction": [1.0]},
                                "cache_hit_curve": {"cache_fraction": [0.1], "hit_rate": [0.5]}}))
    with pytest.raises(ValueError, match="unique_rows_curve"):
        NgramStats.from_json(path)
    path.write_text("{}")
    with pytest.raises(ValueError, match="missing field"):
        NgramStats.from_json(path)
    with pytest.raises(ValueError, match="no such file"):
        traffic_model(16, 1e6, tmp_path / "nope.json")


def test_measured_curves_selected_by_path(tmp_path):
    stats = ZipfTraffic(rows_per_head=1e5, rows_per_token=4, exponent=1.1).to_stats()
    (tmp_path / "s.json").write_text(stats.to_json())
    model = traffic_model(4, 4e5, "s.json", base_dir=tmp_path)
    assert isinstance(model, NgramStats) and model.zipf_exponent == 1.1
    with pytest.raises(ValueError, match="rows_per_token"):
        traffic_model(16, 4e5, "s.json", base_dir=tmp_path)
    assert isinstance(traffic_model(4, 4e5), ZipfTraffic)
