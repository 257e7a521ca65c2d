"""Physical quantities as they are written in YAML and shown in the UI.

One convention, used by every file the tool reads:

* A quantity with a dimension is written as a string with its unit: ``"64 GB/s"``,
  ``"80 GiB"``, ``"2 us"``, ``"989 TFLOP/s"``. Decimal prefixes (k, M, G, T, P) are powers
  of 1000 and binary prefixes (Ki, Mi, Gi, Ti, Pi) are powers of 1024, as on datasheets.
* A bare number is taken to be in SI base units (bytes, seconds, bytes/s, FLOP/s). This is
  what the library itself writes when a value cannot be shown exactly with a prefix.

Inside the library everything is SI (``float`` seconds, bytes, FLOP). Conversion happens
here and nowhere else. Every parser raises ``ValueError`` with the offending text, which
pydantic turns into an error that names the field path.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_DECIMAL = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
_BINARY = {"Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9, "min": 60.0, "h": 3600.0}

_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)"
_QUANTITY_RE = re.compile(rf"^\s*{_NUMBER}\s*([A-Za-zµ/]*)\s*$")


def _prefix_scale(prefix: str) -> float | None:
    if prefix in _BINARY:
        return _BINARY[prefix]
    return _DECIMAL.get(prefix)


def _shown(value: Any, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error never echoes a huge input back."""
    if isinstance(value, int) and value.bit_length() > 200:
        return f"an integer of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    text = repr(value) if not isinstance(value, str) or len(value) <= 2 * limit else repr(value[: 2 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _split(text: str) -> tuple[float, str]:
    match = _QUANTITY_RE.match(text) if len(text) <= 200 else None
    if not match:
        raise ValueError(f"cannot read {_shown(text)} as a number with a unit")
    return float(match.group(1)), match.group(2)


def _parse_with(text: Any, what: str, unit_scale) -> float:
    """Parse ``text`` (str or number) into SI using ``unit_scale(unit) -> float | None``."""
    if isinstance(text, bool):
        raise ValueError(f"expected {what}, got a boolean {text!r}")
    if isinstance(text, (int, float)):
        try:
            value = float(text)
        except OverflowError:
            value = math.inf
    elif isinstance(text, str):
        number, unit = _split(text)
        scale = unit_scale(unit)
        if scale is None:
            raise ValueError(f"{_shown(text)}: unknown unit {unit!r} for {what}")
        value = number * scale
    else:
        raise ValueError(f"expected {what} as a string with a unit or a number, got {_shown(text)}")
    if not math.isfinite(value):
        raise ValueError(f"not a finite number: expected {what}")
    if value < 0:
        raise ValueError(f"{_shown(text)}: {what} cannot be negative")
    return value


def _bytes_unit(unit: str) -> float | None:
    # "GB", "GiB", "B", "bytes"
    if unit in ("", "B", "byte", "bytes"):
        return 1.0
    if unit.endswith("B"):
        return _prefix_scale(unit[:-1])
    return None


def _rate_unit(base_unit) -> Any:
    def scale(unit: str) -> float | None:
        if unit == "":
            return 1.0
        if "/" not in unit:
            return None
        num, _, den = unit.partition("/")
        if den != "s":
            return None
        return base_unit(num)

    return scale


def _flop_unit(unit: str) -> float | None:
    if unit in ("FLOP", "FLOPs", "flop"):
        return 1.0
    for suffix in ("FLOP", "FLOPs"):
        if unit.endswith(suffix):
            return _prefix_scale(unit[: -len(suffix)])
    return None


def _time_unit(unit: str) -> float | None:
    if unit == "":
        return 1.0
    return _TIME.get(unit)


def parse_bytes(text: Any) -> float:
    """``"80 GiB"`` -> 85899345920.0; ``"80 GB"`` -> 8e10; a bare number is bytes."""
    return _parse_with(text, "a size in bytes", _bytes_unit)


def parse_bandwidth(text: Any) -> float:
    """``"64 GB/s"`` -> 6.4e10 bytes/s; a bare number is bytes/s."""
    return _parse_with(text, "a bandwidth in bytes/s", _rate_unit(_bytes_unit))


def parse_flops(text: Any) -> float:
    """``"989 TFLOP/s"`` -> 9.89e14 FLOP/s; a bare number is FLOP/s."""
    return _parse_with(text, "a compute rate in FLOP/s", _rate_unit(_flop_unit))


def parse_seconds(text: Any) -> float:
    """``"2 us"`` -> 2e-6 s; a bare number is seconds."""
    return _parse_with(text, "a duration in seconds", _time_unit)


def parse_count(text: Any) -> float:
    """Large counts: ``"100e9"``, ``"5.7 G"``, ``"18.5B"`` (B = billion) -> float."""
    if isinstance(text, str):
        number, unit = _split(text)
        scale = {"": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}.get(unit)
        if scale is None:
            raise ValueError(f"{_shown(text)}: unknown suffix {unit!r} for a count")
        text = number * scale
    return _parse_with(text, "a count", lambda unit: 1.0)


# ----------------------------------------------------------------------------- formatting

_FORMAT_SCALES_DECIMAL = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")]


def _exact_prefix(value: float, scales, unit: str) -> str | None:
    """Shortest ``"<n> <prefix><unit>"`` that parses back to exactly ``value``."""
    for scale, prefix in scales:
        if value >= scale or scale == 1.0:
            number = value / scale
            text = f"{number:.12g} {prefix}{unit}"
            if _split(text)[0] * scale == value:
                return text
    return None


def format_si(value: float, unit: str, digits: int = 3) -> str:
    """Human-readable SI value for display (not round-trip exact): ``3.35 TB/s``."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}"
    for scale, prefix in _FORMAT_SCALES_DECIMAL:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    for scale, prefix in ((1e-3, "m"), (1e-6, "u"), (1e-9, "n")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}"


def format_rate(value: float) -> str:
    """A throughput for display: ``31,419`` (no false decimals), but ``0.327`` rather than ``0``
    for a machine that manages less than one a second."""
    if not math.isfinite(value):
        return f"{value:g}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_bytes(value: float, digits: int = 3) -> str:
    """Display bytes; values round in binary units but not in decimal ones (``2 TiB``) keep
    binary prefixes, everything else is shown with decimal prefixes (``80 GB``). An expected
    count below one byte (a hot-row cache absorbing nearly every lookup) is ``< 1 B``, not
    micro-bytes."""
    if 0 < value < 1:
        return "< 1 B"
    for scale, _ in _FORMAT_SCALES_DECIMAL:
        if value >= scale:
            if (value / scale * 100).is_integer():
                return format_si(value, "B", digits)
            break
    for power, prefix in ((5, "Pi"), (4, "Ti"), (3, "Gi"), (2, "Mi"), (1, "Ki")):
        scale = 1024.0**power
        if value >= scale:
            if (value / scale * 100).is_integer():
                return f"{value / scale:.{digits}g} {prefix}B"
            break
    return format_si(value, "B", digits)


# Durations past a minute in the units people read them in (``40.6 Ms`` is no one's unit).
_LONG_DURATIONS = ((365.25 * 86400.0, "years"), (86400.0, "days"), (3600.0, "h"), (60.0, "min"))


def format_seconds(value: float, digits: int = 3) -> str:
    """Display a duration: ``12.5 ms``, ``4.2 s``, ``2.5 min``, ``11.3 h``, ``470 days``."""
    if math.isfinite(value):
        for scale, unit in _LONG_DURATIONS:
            if abs(value) >= scale:
                return f"{value / scale:.{digits}g} {unit}"
    return format_si(value, "s", digits)


def _serializer(unit: str):
    def serialize(value: float) -> float | str:
        if value == 0:
            return 0.0
        text = _exact_prefix(value, _FORMAT_SCALES_DECIMAL, unit)
        return text if text is not None else value

    return serialize


def _time_serializer(value: float) -> float | str:
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")):
        if value >= scale or unit == "ns":
            text = f"{value / scale:.12g} {unit}"
            if value != 0 and float(text.split()[0]) * scale == value:
                return text
    return value


def _schema(description: str, example: str) -> dict:
    return {
        "anyOf": [
            {"type": "number", "minimum": 0},
            {"type": "string", "pattern": r"^\s*[-+]?[0-9.]+([eE][-+]?[0-9]+)?\s*[A-Za-zµ/]*\s*$"},
        ],
        "description": f"{description}: a string with a unit such as {example!r}, or a bare "
        "number in SI base units",
    }


Bytes = Annotated[
    float,
    BeforeValidator(parse_bytes),
    PlainSerializer(_serializer("B"), when_used="json"),
    WithJsonSchema(_schema("size in bytes", "80 GiB")),
]
BytesPerSecond = Annotated[
    float,
    BeforeValidator(parse_bandwidth),
    PlainSerializer(_serializer("B/s"), when_used="json"),
    WithJsonSchema(_schema("bandwidth in bytes/s", "64 GB/s")),
]
FlopPerSecond = Annotated[
    float,
    BeforeValidator(parse_flops),
    PlainSerializer(_serializer("FLOP/s"), when_used="json"),
    WithJsonSchema(_schema("compute rate in FLOP/s", "989 TFLOP/s")),
]
Seconds = Annotated[
    float,
    BeforeValidator(parse_seconds),
    PlainSerializer(_time_serializer, when_used="json"),
    WithJsonSchema(_schema("duration in seconds", "2 us")),
]
Count = Annotated[
    float,
    BeforeValidator(parse_count),
    WithJsonSchema(
        {
            "anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}],
            "description": "a count, as a number or with a suffix such as '100B' or '5.7G'",
        }
    ),
]
