import math

import pytest
from hypothesis import given, strategies as st

from planner.units import (
    format_bytes,
    parse_bandwidth,
    parse_bytes,
    parse_count,
    parse_flops,
    parse_seconds,
)
from planner.specs import LinkSpec


@pytest.mark.parametrize(
    "text, expected",
    [
        ("80 GiB", 80 * 2**30),
        ("80 GB", 80e9),
        ("80GB", 80e9),
        ("1.5 TiB", 1.5 * 2**40),
        ("512 B", 512.0),
        ("4 KiB", 4096.0),
        (1234, 1234.0),
        ("1e3 MB", 1e9),
    ],
)
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


def test_parse_rates_and_times():
    assert parse_bandwidth("64 GB/s") == 64e9
    assert parse_bandwidth("3.35 TB/s") == pytest.approx(3.35e12)
    assert parse_bandwidth("25 GiB/s") == 25 * 2**30
    assert parse_flops("989 TFLOP/s") == pytest.approx(989e12)
    assert parse_flops("4.6 TFLOPs/s") == pytest.approx(4.6e12)
    assert parse_seconds("2 us") == pytest.approx(2e-6)
    assert parse_seconds("1.5 ms") == pytest.approx(1.5e-3)
    assert parse_seconds("10 ns") == pytest.approx(1e-8)
    assert parse_seconds(0.25) == 0.25
    assert parse_count("18.5B") == pytest.approx(18.5e9)


@pytest.mark.parametrize(
    "parser, text, fragment",
    [
        (parse_bandwidth, "-5 GB/s", "cannot be negative"),
        (parse_bandwidth, "64 GB", "unknown unit"),
        (parse_bytes, "80 GB/s", "unknown unit"),
        (parse_seconds, "3 parsecs", "unknown unit"),
        (parse_flops, "fast", "cannot read"),
        (parse_bytes, True, "boolean"),
        (parse_bytes, float("inf"), "finite"),
    ],
)
def test_bad_quantities_name_the_text(parser, text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parser(text)


@given(st.floats(min_value=1e-3, max_value=1e15, allow_nan=False, allow_infinity=False))
def test_json_serialisation_round_trips_exactly(value):
    link = LinkSpec(kind="pcie5", h2d_bandwidth=value, d2h_bandwidth=value, latency=value * 1e-12)
    again = LinkSpec.model_validate(link.to_yaml_dict())
    assert again == link


def test_round_values_serialise_with_units():
    link = LinkSpec(kind="pcie5", h2d_bandwidth="63 GB/s", d2h_bandwidth=63e9, latency="10 us")
    dumped = link.to_yaml_dict()
    assert dumped["h2d_bandwidth"] == "63 GB/s"
    assert dumped["latency"] == "10 us"


def test_format_bytes_has_one_convention():
    # "needs 2 TB, limit <= 1.8 TiB" compared two conventions in one sentence: display is decimal.
    assert format_bytes(2 * 2**40) == "2.2 TB" and format_bytes(80 * 2**30) == "85.9 GB"
    assert format_bytes(80e9) == "80 GB"
    assert format_bytes(5.792e9) == "5.79 GB"
    assert not math.isnan(parse_bytes(format_bytes(123456789).replace(" ", "")))


def test_long_durations_and_sub_byte_counts_read_as_people_read_them():
    from planner.units import format_bytes, format_seconds

    assert format_seconds(0.0125) == "12.5 ms" and format_seconds(4.2) == "4.2 s"
    assert format_seconds(150) == "2.5 min" and format_seconds(40_680) == "11.3 h"
    assert format_seconds(4.06e7) == "1.29 years" and format_seconds(3 * 86400) == "3 days"
    assert format_seconds(0.0) == "0 s" and format_seconds(4e-4) == "400 µs" and format_seconds(8.5e-7) == "850 ns"
    assert format_bytes(3.46e-4) == "< 1 B" and format_bytes(0.0) == "0 B" and format_bytes(1e21) == "1e+06 PB"

    from planner.units import format_rate

    assert format_rate(31_419.4) == "31,419" and format_rate(0.3271) == "0.327" and format_rate(0.0) == "0"


def test_every_formatter_refuses_nan_and_reads_edge_values():
    from planner.units import format_params, format_percent, format_quantity, format_rate, format_seconds

    for formatter in (format_bytes, format_seconds, format_rate, format_params, format_percent):
        with pytest.raises(ValueError, match="NaN"):
            formatter(float("nan"))
    assert format_params(400e9) == "400B params" and format_params(27.1e9) == "27.1B params"
    assert format_params(1.2e6) == "1.2M params" and format_params(0) == "0 params"
    assert format_params(2.5e12) == "2.5T params"
    assert format_percent(0.02773) == "2.77%" and format_percent(0.0) == "0%" and format_percent(1.0) == "100%"
    assert format_percent(3e-9) == "3e-07%" and format_percent(0.051, signed=True) == "+5.1%"
    assert format_quantity(None, "s") == "—" and format_quantity(0.02773, "%") == "2.77%"
    assert format_quantity(31_419.4, "tok/s") == "31,419 tok/s" and format_quantity(6e9, "B/s") == "6 GB/s"
    assert format_quantity(float("inf"), "s") == "inf s"


def test_metric_keys_read_as_words_with_units():
    from planner.units import describe_metric, metric_label

    assert metric_label("exposed_lookup_s") == "exposed lookup time per step (s)"
    assert describe_metric("bytes_to_device") == ("bytes copied to the device", "B")
    assert describe_metric("host_gather_s") == ("host gather", "s")
    assert describe_metric("rows_per_s") == ("rows", "/s") and describe_metric("odd") == ("odd", "")


def test_axis_scale_picks_the_prefix_of_the_largest_value():
    from planner.units import axis_scale

    assert axis_scale([1e9, 6e9], "B/s") == (1e9, "GB/s")
    assert axis_scale([1.3e-5, 4e-4], "s") == (1e-6, "µs")
    assert axis_scale([0.0, float("nan"), 8e-3], "s") == (1e-3, "ms")
    assert axis_scale([90, 7200], "s") == (3600.0, "h")
    assert axis_scale([], "B") == (1.0, "B") and axis_scale([0.2], "%") == (0.01, "%")
