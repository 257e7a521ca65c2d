"""Golden hash vectors by the public Engram demo's algorithm, written independently of
``reference_model/hashing.py``.

The demo (deepseek-ai/Engram, ``engram_demo_v1.py``, ``NgramHashMapping``) hashes compressed
token ids like this, and so does this script, step by step in plain numpy, with nothing
imported from this project:

* multipliers per layer: ``numpy.random.default_rng(seed + 10007 * layer).integers(0,
  half_bound, N, dtype=int64) * 2 + 1`` with ``half_bound = max(1, (2**63 - 1) // V' // 2)``;
* table sizes: for each layer in order, each order 2..N, each head: the smallest prime above
  the search start not taken before, the start being ``size - 1`` for the first head of an
  order and the previous head's prime after it (sympy's ``isprime``, as the demo uses);
* positions before the sequence read the compressed pad id (``numpy.pad`` of the ids);
* ``mix = ids * m[0] ^ shift_1(ids) * m[1] ^ ...`` in int64, then ``mix % p`` per head, stacked
  order-major then head.

The demo's ``hash`` first compresses raw ids with a Hugging Face tokenizer; the vectors here
start from compressed ids (the tokenizer is not needed offline), one case with negative
padding markers, which the demo's compression passes through unchanged.

    .venv/bin/python scripts/demo_golden_vectors.py      # rewrites tests/fixtures/demo_hash_vectors.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sympy import isprime

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "demo_hash_vectors.json"

# (name, compressed vocab V', compressed pad, per-order sizes, max n-gram, heads, layer ids, seed)
CASES = [
    # The demo's EngramConfig: sizes 129280 * 5 per order, 3-grams, 8 heads, layers [1, 15], seed 0,
    # at the bundled tokenizer's compressed vocabulary (1621) and at 129,280 (no compression).
    ("demo-config-v1621", 1621, 2, [646400, 646400], 3, 8, [1, 15], 0),
    ("demo-config-v129280", 129280, 2, [646400, 646400], 3, 8, [1, 15], 0),
    ("four-grams-three-layers", 99991, 17, [97, 7_239_680, 1000], 4, 3, [5, 2, 9], 123),
    ("tiny-vocab-huge-multipliers", 2, 1, [78_125_000, 2**31], 3, 2, [3], 7),
]
SHAPE = (3, 14)  # sequences x positions


def table_sizes(sizes: list[int], max_ngram: int, heads: int, layers: list[int]) -> dict[int, list[list[int]]]:
    seen: set[int] = set()
    out = {}
    for layer in layers:
        orders = []
        for n in range(2, max_ngram + 1):
            start, primes = sizes[n - 2] - 1, []
            for _ in range(heads):
                candidate = start + 1
                while not (isprime(candidate) and candidate not in seen):
                    candidate += 1
                seen.add(candidate)
                primes.append(candidate)
                start = candidate
            orders.append(primes)
        out[layer] = orders
    return out


def multipliers(vocab: int, max_ngram: int, layers: list[int], seed: int) -> dict[int, np.ndarray]:
    half_bound = max(1, int(np.iinfo(np.int64).max // vocab) // 2)
    return {layer: np.random.default_rng(int(seed + 10007 * layer)).integers(
        low=0, high=half_bound, size=(max_ngram,), dtype=np.int64) * 2 + 1 for layer in layers}


def demo_hash(ids: np.ndarray, pad: int, max_ngram: int, heads: int, mult: np.ndarray,
              primes: list[list[int]]) -> np.ndarray:
    x = np.asarray(ids, dtype=np.int64)
    T = x.shape[1]
    shifts = [x] + [np.pad(x, ((0, 0), (k, 0)), mode="constant", constant_values=pad)[:, :T]
                    for k in range(1, max_ngram)]
    columns = []
    for n in range(2, max_ngram + 1):
        mix = shifts[0] * mult[0]
        for k in range(1, n):
            mix = np.bitwise_xor(mix, shifts[k] * mult[k])
        columns += [mix % int(p) for p in primes[n - 2][:heads]]
    return np.stack(columns, axis=2)


def main() -> int:
    rng = np.random.default_rng(2026)
    cases = []
    for name, vocab, pad, sizes, max_ngram, heads, layers, seed in CASES:
        ids = rng.integers(0, vocab, size=SHAPE)
        ids[0, :3] = pad  # explicit pads at the start
        if name == "four-grams-three-layers":
            ids[1, :4], ids[2, 6] = -1, -100  # left padding markers, an ignore index
        primes = table_sizes(sizes, max_ngram, heads, layers)
        mult = multipliers(vocab, max_ngram, layers, seed)
        cases.append({
            "name": name, "compressed_vocab_size": vocab, "compressed_pad_id": pad,
            "table_size_per_head": sizes, "max_ngram": max_ngram, "n_heads": heads, "layer_ids": layers,
            "seed": seed, "ids": ids.tolist(),
            "multipliers": {str(layer): mult[layer].tolist() for layer in layers},
            "table_sizes": {str(layer): primes[layer] for layer in layers},
            "hashes": {str(layer): demo_hash(ids, pad, max_ngram, heads, mult[layer], primes[layer]).tolist()
                       for layer in layers},
        })
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"source": "scripts/demo_golden_vectors.py: the algorithm of deepseek-ai/Engram "
                                         "engram_demo_v1.py NgramHashMapping, from compressed ids",
                               "cases": cases}, separators=(",", ":")) + "\n")
    print(f"wrote {OUT} ({len(cases)} cases)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
