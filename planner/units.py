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


def _displayable(value: float, what: str) -> float:
    """``value`` as a float, or ValueError for NaN: a NaN shown as "nan GB" hides the bug that
    made it, so every formatter refuses it (a missing value is the caller's ``None`` -> "—")."""
    value = float(value)
    if math.isnan(value):
        raise ValueError(f"cannot display NaN as {what}: the value was never computed")
    return value


def format_si(value: float, unit: str, digits: int = 3) -> str:
    """Human-readable SI value for display (not round-trip exact): ``3.35 TB/s``."""
    value = _displayable(value, unit or "a number")
    if value == 0 or not math.isfinite(value):
        return f"{value:g} {unit}".rstrip()
    for scale, prefix in _FORMAT_SCALES_DECIMAL:
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}".rstrip()
    for scale, prefix in ((1e-3, "m"), (1e-6, "µ"), (1e-9, "n")):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}".rstrip()


def format_rate(value: float) -> str:
    """A throughput for display: ``31,419`` (no false decimals), but ``0.327`` rather than ``0``
    for a machine that manages less than one a second."""
    value = _displayable(value, "a rate")
    if not math.isfinite(value):
        return f"{value:g}"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def format_bytes(value: float, digits: int = 3) -> str:
    """Display bytes, always with decimal prefixes (``80 GB``, ``2.2 TB``): one convention in
    every output, the datasheets' and the bandwidths' (GB/s), so a sentence never compares
    "2 TB" with "1.8 TiB". (YAML still reads binary units: ``80 GiB`` is parsed exactly and shown
    as ``85.9 GB``.) An expected count below one byte (a hot-row cache absorbing nearly every
    lookup) is ``< 1 B``, not micro-bytes."""
    value = _displayable(value, "bytes")
    if 0 < value < 1:
        return "< 1 B"
    return format_si(value, "B", digits)


# Durations past a minute in the units people read them in (``40.6 Ms`` is no one's unit).
_LONG_DURATIONS = ((365.25 * 86400.0, "years"), (86400.0, "days"), (3600.0, "h"), (60.0, "min"))


def format_seconds(value: float, digits: int = 3) -> str:
    """Display a duration: ``850 ns``, ``12.5 ms``, ``4.2 s``, ``2.5 min``, ``11.3 h``, ``470 days``."""
    value = _displayable(value, "a duration")
    if math.isfinite(value):
        for scale, unit in _LONG_DURATIONS:
            if abs(value) >= scale:
                return f"{value / scale:.{digits}g} {unit}"
    return format_si(value, "s", digits)


def format_params(value: float, digits: int = 3) -> str:
    """A parameter count: ``400B params``, ``27.1B params``, ``1.2M params`` (``400.0 B`` reads
    as bytes)."""
    value = _displayable(value, "a parameter count")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"cannot display {value!r} as a parameter count")
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.{digits}g}{suffix} params"
    return f"{value:.{digits}g} params"


def format_percent(fraction: float, digits: int = 3, signed: bool = False) -> str:
    """A fraction as a percentage: ``0.02773`` -> ``2.77%``; ``+5.1%`` when ``signed``; a value
    that rounds to zero but is not (``3e-9``) keeps its digits (``3e-07%``), never ``0%``."""
    fraction = _displayable(fraction, "a percentage")
    if not math.isfinite(fraction):
        return f"{100 * fraction:+g}%" if signed else f"{100 * fraction:g}%"
    text = f"{100 * fraction:{'+' if signed else ''}.{digits}g}%"
    return text


# One unit word per quantity kind, for tables and axis titles.
QUANTITY_UNITS = {"B": format_bytes, "s": format_seconds, "%": format_percent, "params": format_params}


def format_quantity(value: float | None, unit: str, digits: int = 3) -> str:
    """Any displayed quantity: bytes (``B``), seconds (``s``), fractions as ``%``, parameter
    counts (``params``), throughputs (``tok/s``) or any SI unit (``B/s``, ``FLOP/s``). ``None``
    (a value that does not apply) is ``—``."""
    if value is None:
        return "—"
    if unit in QUANTITY_UNITS:
        return QUANTITY_UNITS[unit](value, digits)
    if unit == "tok/s":
        return f"{format_rate(value)} tok/s"
    return format_si(value, unit, digits)


# Metric keys the tool writes (validation, simulation) -> (what a person calls it, its unit).
METRICS = {
    "step_time_s": ("step time", "s"),
    "throughput_tokens_per_s": ("throughput", "tok/s"),
    "throughput_output_tokens_per_s": ("output throughput", "tok/s"),
    "exposed_lookup_s": ("exposed lookup time per step", "s"),
    "exposed_decode_s": ("exposed decode stall per step", "s"),
    "bytes_to_device": ("bytes copied to the device", "B"),
    "throughput_drop": ("throughput drop", "%"),
    "stall_fraction": ("stall fraction", "%"),
}


def metric_label(key: str) -> str:
    """A metric key as words with its unit: ``exposed_lookup_s`` -> ``exposed lookup time per
    step (s)``; an unknown key is read from its suffix (``_s`` seconds, ``_bytes`` bytes)."""
    label, unit = describe_metric(key)
    return f"{label} ({unit})" if unit else label


def describe_metric(key: str) -> tuple[str, str]:
    if key in METRICS:
        return METRICS[key]
    for suffix, unit in (("_per_s", "/s"), ("_s", "s"), ("_bytes", "B"), ("_fraction", "%"), ("", "")):
        if key.endswith(suffix):
            words = (key[: -len(suffix)] if suffix else key).split("_")
            return " ".join(w.upper() if w in ("ttft", "tpot", "kv") else w for w in words), unit
    raise AssertionError("unreachable: the empty suffix matches every key")


def axis_scale(values, unit: str) -> tuple[float, str]:
    """The factor and unit to plot ``values`` (SI, e.g. bytes/s) in, so ticks read ``6`` under
    an axis titled ``GB/s`` (never plotly's ``6B`` or a bare ``400µ``): the decimal prefix of the
    largest finite magnitude. Returns ``(divide_by, "GB/s")``."""
    finite = [abs(float(v)) for v in values if v is not None and math.isfinite(float(v)) and v != 0]
    top = max(finite, default=1.0)
    if unit == "%":
        return 0.01, "%"
    if unit == "s" and top >= 60:
        for scale, name in _LONG_DURATIONS:
            if top >= scale:
                return scale, name
    for scale, prefix in _FORMAT_SCALES_DECIMAL + [(1e-3, "m"), (1e-6, "µ"), (1e-9, "n")]:
        if top >= scale:
            return scale, f"{prefix}{unit}"
    return 1e-9, f"n{unit}"


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
