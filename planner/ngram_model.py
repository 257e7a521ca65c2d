"""N-gram traffic: how many table rows a step touches, and how many a hot-row cache absorbs.

Two models behind one interface (:class:`NgramTraffic`):

* :class:`ZipfTraffic` (default): within each (order, head) table, row popularity follows a Zipf
  law ``p_i ~ i^-s`` over the table's rows. Default ``s = 1.0``: word and n-gram frequencies in
  natural text follow Zipf's law with exponents close to 1 (Zipf 1949; Ha et al. 2002, "Zipf's
  law for n-grams"; higher orders are slightly flatter), and hashing maps each frequent n-gram
  to its own row, so the head of the distribution survives hashing. A measured exponent from
  ``engram-planner ngram-stats`` replaces it.
* :class:`NgramStats`: measured curves from the ``ngram-stats`` JSON (format below),
  interpolated in log space.

Legend: T = tokens in a step, r = rows per token per layer (orders x heads), P = rows of one
head table, f = cache fraction (share of a table's rows kept hot on the device).

JSON format (agreed with ``engram-planner ngram-stats``)::

    {"zipf_exponent": float, "rows_per_token": int, "table_rows": int,
     "unique_rows_curve": {"batch_tokens": [ints], "unique_fraction": [floats]},
     "cache_hit_curve": {"cache_fraction": [floats], "hit_rate": [floats]},
     "source": {...free-form provenance...}}

``unique_fraction`` is unique rows / (batch_tokens x rows_per_token).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Union

import numpy as np

Number = Union[float, np.ndarray]

DEFAULT_ZIPF_EXPONENT = 1.0

# Ranks summed exactly before switching to a log-spaced integral (the head of a Zipf law is
# where the sum is least smooth; the tail is a smooth function of log-rank).
_EXACT_RANKS = 128
_GRID_POINTS = 96


class NgramTraffic:
    """Rows per step and hot-cache hits, per Engram layer. Subclasses give ``unique_fraction``
    and ``hit_rate``; ``rows_fetched`` combines them (subclasses may do it more exactly)."""

    rows_per_token: int

    def unique_fraction(self, batch_tokens: Number) -> Number:
        raise NotImplementedError

    def hit_rate(self, cache_fraction: Number) -> Number:
        raise NotImplementedError

    def rows_touched(self, batch_tokens: Number, dedup: bool = True) -> Number:
        """Rows a step of ``batch_tokens`` tokens reads from one layer's table."""
        lookups = np.asarray(batch_tokens, dtype=float) * self.rows_per_token
        return lookups * self.unique_fraction(batch_tokens) if dedup else lookups

    def rows_fetched(self, batch_tokens: Number, cache_fraction: Number, dedup: bool = True) -> Number:
        """Rows that must come from the table's tier (not the device cache).

        Approximation for curves: missed lookups fall on cold rows, which rarely repeat within a
        step, so distinct misses are ``min(unique rows, missed lookups)``.
        """
        lookups = np.asarray(batch_tokens, dtype=float) * self.rows_per_token
        missed = lookups * (1.0 - self.hit_rate(cache_fraction))
        return np.minimum(self.rows_touched(batch_tokens, dedup), missed) if dedup else missed


# ----------------------------------------------------------------------------- Zipf


def _rank_sum(g, lo: Number, hi: Number) -> np.ndarray:
    """``sum_{i=lo+1}^{hi} g(i)`` for positive decreasing smooth ``g`` (vectorised over the
    broadcast shape of ``lo``/``hi`` and whatever ``g`` closes over): exact for the first
    ranks, then the midpoint rule as an integral over log-rank with a trapezoid grid."""
    lo, hi = np.broadcast_arrays(np.asarray(lo, float), np.asarray(hi, float))
    ranks = np.arange(1, _EXACT_RANKS + 1, dtype=float)
    k = ranks.reshape((1,) * lo.ndim + (-1,))
    mask = (k > lo[..., None]) & (k <= hi[..., None])
    exact = np.where(mask, g(k), 0.0).sum(axis=-1)
    a = np.maximum(lo, _EXACT_RANKS) + 0.5
    b = np.maximum(hi + 0.5, a)
    u = np.linspace(0.0, 1.0, _GRID_POINTS).reshape((1,) * lo.ndim + (-1,))
    x = np.exp(np.log(a)[..., None] + u * (np.log(b) - np.log(a))[..., None])
    y = g(x) * x  # dx = x du'
    du = (np.log(b) - np.log(a))[..., None] / (_GRID_POINTS - 1)
    tail = (((y[..., 1:] + y[..., :-1]) / 2) * du).sum(axis=-1)
    return exact + tail


def zipf_harmonic(n: Number, s: float) -> np.ndarray:
    """Generalised harmonic number ``H(n, s) = sum_{i=1}^{n} i^-s``."""
    return _rank_sum(lambda i: i ** -s, 0.0, n)


def zipf_hit_rate(cache_fraction: Number, rows_per_head: Number, s: float) -> np.ndarray:
    """Share of lookups that hit a static cache of the ``f * P`` most popular rows."""
    p = np.asarray(rows_per_head, float)
    cached = np.floor(np.clip(cache_fraction, 0.0, 1.0) * p)
    return zipf_harmonic(cached, s) / zipf_harmonic(p, s)


def zipf_unique_rows(draws: Number, rows_per_head: Number, s: float, skip_top: Number = 0.0) -> np.ndarray:
    """Expected distinct rows among ``draws`` independent Zipf draws over ``P`` rows, counting
    only ranks past ``skip_top`` (the cached ones): ``sum_i 1 - (1 - p_i)^draws``."""
    t = np.asarray(draws, float)
    p = np.asarray(rows_per_head, float)
    t, p, skip = np.broadcast_arrays(t, p, np.asarray(skip_top, float))
    norm = zipf_harmonic(p, s)
    draws_, norm_ = t[..., None], norm[..., None]
    return _rank_sum(lambda i: -np.expm1(draws_ * np.log1p(-(i ** -s) / norm_)), skip, p)


@dataclass(frozen=True)
class ZipfTraffic(NgramTraffic):
    """Zipf-distributed row popularity in each of ``rows_per_token`` head tables of
    ``rows_per_head`` rows. Models in-step de-duplication and a static top-rows cache exactly
    under independent draws. Simplifies: tokens are independent draws (no burstiness within a
    document), one exponent for all orders, hash collisions ignored, ``lru`` caches treated
    as the static top-rows set (LRU hit rates are somewhat lower under the same law)."""

    rows_per_head: float
    rows_per_token: int
    exponent: float = DEFAULT_ZIPF_EXPONENT

    def unique_fraction(self, batch_tokens: Number) -> Number:
        t = np.maximum(np.asarray(batch_tokens, float), 1.0)
        return zipf_unique_rows(t, self.rows_per_head, self.exponent) / t

    def hit_rate(self, cache_fraction: Number) -> Number:
        return zipf_hit_rate(cache_fraction, self.rows_per_head, self.exponent)

    def rows_fetched(self, batch_tokens: Number, cache_fraction: Number, dedup: bool = True) -> Number:
        """Exact under the model: distinct rows outside the cached top ranks."""
        if not dedup:
            return super().rows_fetched(batch_tokens, cache_fraction, dedup)
        t = np.asarray(batch_tokens, float)
        skip = np.floor(np.clip(cache_fraction, 0.0, 1.0) * self.rows_per_head)
        return self.rows_per_token * zipf_unique_rows(t, self.rows_per_head, self.exponent, skip)

    def to_stats(self, batch_tokens: list[int] | None = None, cache_fractions: list[float] | None = None) -> "NgramStats":
        """The model's curves in the measured format (for plots and round-trip tests)."""
        batch_tokens = batch_tokens or [int(x) for x in np.unique(np.geomspace(1, 1 << 20, 21).astype(int))]
        cache_fractions = cache_fractions or [float(x) for x in np.geomspace(1e-6, 1.0, 25)]
        return NgramStats(
            zipf_exponent=self.exponent,
            rows_per_token=self.rows_per_token,
            table_rows=int(self.rows_per_head * self.rows_per_token),
            batch_tokens=batch_tokens,
            unique_fraction_values=[float(v) for v in self.unique_fraction(np.array(batch_tokens))],
            cache_fraction=cache_fractions,
            hit_rate_values=[float(v) for v in self.hit_rate(np.array(cache_fractions))],
            source={"model": "zipf", "exponent": self.exponent, "rows_per_head": self.rows_per_head},
        )


# ----------------------------------------------------------------------------- measured curves


@dataclass(frozen=True)
class NgramStats(NgramTraffic):
    """Measured curves from ``engram-planner ngram-stats``. ``unique_fraction`` is interpolated
    linearly in (log T, log fraction) and held constant past the measured ends (conservative for
    larger batches: real de-duplication keeps improving); ``hit_rate`` linearly in
    (log f, hit) between measured points, linearly from (0, 0) to the first point and to (1, 1)
    after the last."""

    zipf_exponent: float
    rows_per_token: int
    table_rows: int
    batch_tokens: list[int]
    unique_fraction_values: list[float]
    cache_fraction: list[float]
    hit_rate_values: list[float]
    source: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_curve("unique_rows_curve.batch_tokens", self.batch_tokens, "unique_rows_curve.unique_fraction",
                     self.unique_fraction_values, positive=True)
        _check_curve("cache_hit_curve.cache_fraction", self.cache_fraction, "cache_hit_curve.hit_rate",
                     self.hit_rate_values, positive=False)
        for v in self.unique_fraction_values:
            if not 0 < v <= 1:
                raise ValueError(f"unique_rows_curve.unique_fraction must lie in (0, 1], got {v}")
        for f in self.cache_fraction:
            if not 0 < f <= 1:
                raise ValueError(f"cache_hit_curve.cache_fraction must lie in (0, 1], got {f}")
        if self.rows_per_token <= 0:
            raise ValueError(f"rows_per_token must be positive, got {self.rows_per_token}")

    @staticmethod
    def from_dict(data: dict, where: str = "ngram-stats") -> "NgramStats":
        try:
            unique, hits = data["unique_rows_curve"], data["cache_hit_curve"]
            return NgramStats(
                zipf_exponent=float(data["zipf_exponent"]),
                rows_per_token=int(data["rows_per_token"]),
                table_rows=int(data["table_rows"]),
                batch_tokens=[int(x) for x in unique["batch_tokens"]],
                unique_fraction_values=[float(x) for x in unique["unique_fraction"]],
                cache_fraction=[float(x) for x in hits["cache_fraction"]],
                hit_rate_values=[float(x) for x in hits["hit_rate"]],
                source=dict(data.get("source", {})),
            )
        except KeyError as exc:
            raise ValueError(f"{where}: missing field {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where}: {exc}") from None

    @staticmethod
    def from_json(path: str | Path) -> "NgramStats":
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"ngram_stats: no such file {str(path)!r}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"ngram_stats {path}: not valid JSON: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"ngram_stats {path}: not a UTF-8 text file (byte {exc.object[exc.start]:#04x} at "
                             f"offset {exc.start})") from None
        except OSError as exc:
            raise ValueError(f"ngram_stats {path}: cannot be read ({exc.strerror})") from None
        if not isinstance(data, dict):
            raise ValueError(f"ngram_stats {path}: expected a JSON object, got {type(data).__name__}")
        return NgramStats.from_dict(data, where=f"ngram_stats {path}")

    def to_dict(self) -> dict:
        return {
            "zipf_exponent": self.zipf_exponent,
            "rows_per_token": self.rows_per_token,
            "table_rows": self.table_rows,
            "unique_rows_curve": {"batch_tokens": list(self.batch_tokens),
                                  "unique_fraction": list(self.unique_fraction_values)},
            "cache_hit_curve": {"cache_fraction": list(self.cache_fraction), "hit_rate": list(self.hit_rate_values)},
            "source": self.source,
        }

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2) + "\n"
        if path is not None:
            Path(path).write_text(text)
        return text

    def unique_fraction(self, batch_tokens: Number) -> Number:
        t = np.log(np.maximum(np.asarray(batch_tokens, float), 1.0))
        xs, ys = np.log(self.batch_tokens), np.log(self.unique_fraction_values)
        return np.exp(np.interp(t, xs, ys))

    def hit_rate(self, cache_fraction: Number) -> Number:
        f = np.clip(np.asarray(cache_fraction, float), 0.0, 1.0)
        fs, hs = list(self.cache_fraction), list(self.hit_rate_values)
        if fs[-1] < 1.0:
            fs, hs = fs + [1.0], hs + [1.0]
        inner = np.interp(np.log(np.maximum(f, 1e-300)), np.log(fs), hs)
        below = f / fs[0] * hs[0]
        return np.where(f < fs[0], below, inner)


def _check_curve(xname: str, xs: list, yname: str, ys: list, positive: bool) -> None:
    if len(xs) != len(ys) or not xs:
        raise ValueError(f"{xname} and {yname} must be non-empty and of equal length "
                         f"(got {len(xs)} and {len(ys)})")
    if any(b <= a for a, b in zip(xs, xs[1:])):
        raise ValueError(f"{xname} must be strictly increasing, got {xs}")
    if positive and xs[0] <= 0:
        raise ValueError(f"{xname} must be positive, got {xs[0]}")
    if not positive and any(b < a for a, b in zip(ys, ys[1:])):
        raise ValueError(f"{yname} must not decrease, got {ys}")


# ----------------------------------------------------------------------------- selection


class CachedTraffic(NgramTraffic):
    """Memoises a traffic model's per-step answers for integer batch sizes (the simulator asks
    the same few sizes thousands of times)."""

    def __init__(self, inner: NgramTraffic):
        self.inner = inner
        self.rows_per_token = inner.rows_per_token
        self._fetched = lru_cache(maxsize=None)(self._fetched_uncached)
        self._touched = lru_cache(maxsize=None)(self._touched_uncached)

    def _fetched_uncached(self, tokens: int, cache_fraction: float, dedup: bool) -> float:
        return float(self.inner.rows_fetched(float(tokens), cache_fraction, dedup))

    def _touched_uncached(self, tokens: int, dedup: bool) -> float:
        return float(self.inner.rows_touched(float(tokens), dedup))

    def unique_fraction(self, batch_tokens):
        return self.inner.unique_fraction(batch_tokens)

    def hit_rate(self, cache_fraction):
        return self.inner.hit_rate(cache_fraction)

    def rows_fetched(self, batch_tokens, cache_fraction, dedup=True):
        return self._fetched(int(batch_tokens), float(cache_fraction), bool(dedup))

    def rows_touched(self, batch_tokens, dedup=True):
        return self._touched(int(batch_tokens), bool(dedup))


def traffic_model(rows_per_token: int, table_rows: float, stats_path: str | Path | None = None,
                  base_dir: str | Path | None = None) -> NgramTraffic:
    """Measured curves when ``stats_path`` is given (relative paths resolve against
    ``base_dir``, then the working directory), else the Zipf model with the default exponent."""
    if stats_path is None:
        return ZipfTraffic(rows_per_head=table_rows / rows_per_token, rows_per_token=rows_per_token)
    path = Path(stats_path)
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).is_file():
        path = Path(base_dir) / path
    stats = NgramStats.from_json(path)
    if stats.rows_per_token != rows_per_token:
        raise ValueError(
            f"ngram_stats {path}: rows_per_token = {stats.rows_per_token} but the model reads "
            f"{rows_per_token} rows per token per layer"
        )
    return stats
