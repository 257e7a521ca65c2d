"""Prime table sizes for Engram's multi-head hashing (ENGRAM.md section 2.4).

Every (layer, order, head) table gets a distinct prime number of rows. Walk the Engram layers
in config order, then the orders 2..N, then the heads: each head takes the smallest prime that
is >= the order's configured size, larger than the previous head's prime of that order, and not
used by any earlier table. This is the rule of the public demo (``find_next_prime`` with a
``seen_primes`` set), and the one place in the code base that implements it: accounting, the
simulator and the torch hasher all call :func:`engram_table_primes`.
"""

from __future__ import annotations

from functools import lru_cache

# Deterministic Miller-Rabin: these bases are exact for every n < 3.3e24
# (Sorenson and Webster, 2015), far beyond any table size a machine can hold.
_MR_BASES = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37, 41)


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    for p in _MR_BASES:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    for a in _MR_BASES:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


def next_prime_at_least(n: int) -> int:
    """Smallest prime >= n."""
    candidate = max(n, 2)
    while not is_prime(candidate):
        candidate += 1
    return candidate


@lru_cache(maxsize=256)
def _primes(layer_ids: tuple[int, ...], sizes_per_order: tuple[int, ...], n_heads: int):
    seen: set[int] = set()
    out: dict[int, list[list[int]]] = {}
    for layer_id in layer_ids:
        per_order: list[list[int]] = []
        for size in sizes_per_order:
            heads: list[int] = []
            candidate = size - 1
            for _ in range(n_heads):
                candidate = next_prime_at_least(candidate + 1)
                while candidate in seen:
                    candidate = next_prime_at_least(candidate + 1)
                seen.add(candidate)
                heads.append(candidate)
            per_order.append(heads)
        out[layer_id] = per_order
    return out


def engram_table_primes(
    layer_ids: list[int] | tuple[int, ...], sizes_per_order: list[int] | tuple[int, ...], n_heads: int
) -> dict[int, list[list[int]]]:
    """``{layer_id: [[prime per head] per order]}``, orders in 2..N order.

    ``sizes_per_order[i]`` is the configured size of order ``i + 2``.
    """
    cached = _primes(tuple(layer_ids), tuple(int(s) for s in sizes_per_order), int(n_heads))
    return {layer: [list(heads) for heads in orders] for layer, orders in cached.items()}
