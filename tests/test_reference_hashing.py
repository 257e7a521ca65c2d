"""N-gram hashing (ENGRAM.md 2.2-2.5) against a slow, independent scalar reference: Python
ints, the demo-style prime walk of tests/test_primes.py, and an explicit check that no int64 product wraps."""

import numpy as np
import pytest

from planner.specs.model import EngramSpec
from reference_model.hashing import _CHUNK, NgramHasher
# Independent of planner.primes: trial division and the demo's walk (tests/test_primes.py).
from scripts.demo_golden_vectors import table_sizes as demo_table_sizes
from tests.test_primes import _slow_is_prime as _is_prime

INT64_MAX = 2**63 - 1


def reference_hash(e: EngramSpec, vocab, pad, ids_BT, past=None):
    half_bound = max(1, INT64_MAX // vocab // 2)
    primes = demo_table_sizes(list(e.table_size_per_head), e.max_ngram, e.n_heads, list(e.layer_ids))
    out = {}
    for layer in e.layer_ids:
        r = np.random.default_rng(e.seed + 10007 * layer).integers(0, half_bound, size=e.max_ngram, dtype=np.int64)
        mult = [2 * int(v) + 1 for v in r]
        rows = []
        for b, seq in enumerate(ids_BT):
            before = [] if past is None else [int(v) for v in past[b]]
            before = [pad] * max(0, e.max_ngram - 1 - len(before)) + before[len(before) - min(len(before), e.max_ngram - 1):]
            ctx = before + [int(v) for v in seq]
            row = []
            for t in range(len(seq)):
                pos = len(before) + t
                per_token = []
                for oi, n in enumerate(range(2, e.max_ngram + 1)):
                    mix = 0
                    for k in range(n):
                        prod = ctx[pos - k] * mult[k]
                        assert 0 <= prod <= INT64_MAX  # the half_bound construction: no wrap
                        mix ^= prod
                    per_token += [mix % p for p in primes[layer][oi]]
                row.append(per_token)
            rows.append(row)
        out[layer] = np.array(rows, dtype=np.int64)
    return out, primes


CONFIGS = [
    # (EngramSpec kwargs, compressed vocab, compressed pad)
    (dict(layer_ids=[1, 2], max_ngram=3, n_heads=4, table_size_per_head=[3001, 3001], embed_dim_per_ngram=32), 1621, 2),
    (dict(layer_ids=[0], max_ngram=2, n_heads=2, table_size_per_head=[11], embed_dim_per_ngram=4, seed=7), 50, 0),
    (dict(layer_ids=[1, 14], max_ngram=3, n_heads=8, table_size_per_head=[2262400, 2262400],
          embed_dim_per_ngram=640), 129280, 2),
    (dict(layer_ids=[5, 2, 9], max_ngram=4, n_heads=3, table_size_per_head=[97, 7_239_680, 1000],
          embed_dim_per_ngram=6, seed=123), 99991, 17),
    (dict(layer_ids=[3], max_ngram=3, n_heads=1, table_size_per_head=[78_125_000, 2**40],
          embed_dim_per_ngram=2), 2, 1),  # tiny vocab (huge multipliers) and a prime above the float path's
]


# 23 positions: one partial chunk of the kernel; 2 chunks + 37: full chunks, then a partial one.
@pytest.mark.parametrize("positions", [23, 2 * _CHUNK + 37])
@pytest.mark.parametrize("kwargs,vocab,pad", CONFIGS)
def test_hash_matches_scalar_reference(kwargs, vocab, pad, positions):
    e = EngramSpec(**kwargs)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(2, positions))
    ids[0, :3] = pad  # explicit pads at the start look the same as implicit ones
    hasher = NgramHasher(e, vocab, pad)
    expected, primes = reference_hash(e, vocab, pad, ids)
    assert hasher.table_sizes == primes
    got = hasher.hash(ids)
    rows = hasher.row_ids(ids)
    for layer in e.layer_ids:
        assert got[layer].shape == (2, positions, (e.max_ngram - 1) * e.n_heads)
        np.testing.assert_array_equal(got[layer], expected[layer])
        offsets = np.cumsum([0] + [p for order in primes[layer] for p in order])[:-1]
        np.testing.assert_array_equal(hasher.offsets[layer], offsets)
        np.testing.assert_array_equal(rows[layer], expected[layer] + offsets)
        assert rows[layer].max() < hasher.table_rows[layer] == sum(map(sum, primes[layer]))


def test_multipliers_follow_the_recipe():
    e = EngramSpec(**CONFIGS[2][0])
    hasher = NgramHasher(e, 129280, 2)
    half_bound = INT64_MAX // 129280 // 2
    for layer in e.layer_ids:
        r = np.random.default_rng(0 + 10007 * layer).integers(0, half_bound, size=3, dtype=np.int64)
        np.testing.assert_array_equal(hasher.multipliers[layer], 2 * r + 1)
        assert (hasher.multipliers[layer] % 2 == 1).all()


def test_demo_prime_example():
    e = EngramSpec(layer_ids=[1, 15], n_heads=8, table_size_per_head=[646400, 646400], embed_dim_per_ngram=8)
    sizes = NgramHasher(e, 1000, 2).table_sizes
    assert sizes[1][0][:3] == [646403, 646411, 646421]
    flat = [p for layer in sizes.values() for order in layer for p in order]
    assert len(set(flat)) == len(flat) == 32 and all(_is_prime(p) for p in flat)
    assert sizes == demo_table_sizes([646400, 646400], 3, 8, [1, 15])


@pytest.mark.parametrize("kwargs,vocab,pad", CONFIGS[:4])
def test_incremental_hash_with_past_ids(kwargs, vocab, pad):
    e = EngramSpec(**kwargs)
    hasher = NgramHasher(e, vocab, pad)
    ids = np.random.default_rng(1).integers(0, vocab, size=(3, 12))
    full = hasher.hash(ids)
    for split in (1, 2, 5, 11):
        tail = hasher.hash(ids[:, split:], past_ids_BP=ids[:, :split])
        for layer in e.layer_ids:
            np.testing.assert_array_equal(tail[layer], full[layer][:, split:])
    expected, _ = reference_hash(e, vocab, pad, ids[:, 7:], past=ids[:, 5:7])
    got = hasher.hash(ids[:, 7:], past_ids_BP=ids[:, 5:7])
    for layer in e.layer_ids:
        np.testing.assert_array_equal(got[layer], expected[layer])


def test_bad_input_raises():
    e = EngramSpec(**CONFIGS[0][0])
    with pytest.raises(ValueError, match="pad_id"):
        NgramHasher(e, 100, 100)
    hasher = NgramHasher(e, 100, 2)
    with pytest.raises(ValueError, match="at or above the compressed vocabulary"):
        hasher.hash(np.array([[0, 100]]))
    assert hasher.hash(np.array([[0, -1]]))[1].min() >= 0  # a padding marker is hashed
    with pytest.raises(ValueError, match="2-D"):
        hasher.hash(np.array([1, 2]))


def _largest_prime_at_most(n: int) -> int:
    from planner.primes import is_prime

    while not is_prime(n):
        n -= 1
    return n


@pytest.mark.parametrize("prime", [_largest_prime_at_most(2**35), 2**31 - 1, 3])
def test_float_modulus_is_exact_at_its_proved_edge(prime):
    """The compiled float path (reference_model/hashing.py, steps 1-4 of its docstring) at the
    largest prime it accepts, on the mixes that push ``y`` to its bound: the largest ``hi``
    (mix near 2**63), the largest ``lo``, residues next to 0 and p, and random mixes."""
    from reference_model.hashing import _FLOAT_PATH_MAX_PRIME, _SPLIT_BITS, _hash_kernel

    assert prime <= _FLOAT_PATH_MAX_PRIME
    rng = np.random.default_rng(1)
    top = 2**63 - 1
    edges = [top, top - 1, top - prime, (top // prime) * prime, (top // prime) * prime - 1, 2**50 - 1, 2**50,
             (2**13 - 1) * 2**50, (2**13 - 1) * 2**50 + 2**50 - 1, prime, prime - 1, 0, 1]
    mixes = np.array(edges + list(rng.integers(0, top, 20_000, dtype=np.int64)), dtype=np.int64)
    # One sequence per mix, n-gram order 2 with multipliers 1: mix = id ^ (previous id = 0).
    ctx_BX = np.stack([np.zeros_like(mixes), mixes], axis=1)
    p_LOH = np.array([[[prime]]], dtype=np.int64)
    out = np.empty((1, len(mixes), 1), dtype=np.int64)
    _hash_kernel(ctx_BX, 1, np.ones((1, 2), dtype=np.int64), p_LOH,
                 np.array([[[pow(2, _SPLIT_BITS, prime)]]], dtype=np.float64), 1.0 / p_LOH.astype(np.float64),
                 np.zeros_like(p_LOH), True, out)
    np.testing.assert_array_equal(out[0, :, 0], mixes % prime)


def test_primes_past_the_proved_edge_take_the_integer_path():
    e = EngramSpec(layer_ids=[0], max_ngram=2, n_heads=1, table_size_per_head=[2**35 + 100], embed_dim_per_ngram=2)
    hasher = NgramHasher(e, 5, 0)
    assert hasher.table_sizes[0][0][0] > 2**35 and not hasher._float_path
    ids = np.random.default_rng(2).integers(0, 5, size=(3, 40))
    expected, _ = reference_hash(e, 5, 0, ids)
    np.testing.assert_array_equal(hasher.hash(ids)[0], expected[0])


def _numpy_demo_hash(e: EngramSpec, vocab: int, pad: int, ids: np.ndarray, primes) -> dict[int, np.ndarray]:
    """The demo's numpy recipe as written (int64 products and XOR, numpy's ``%``), which is
    also what it does with negative padding markers: their mix may be negative and ``%`` puts
    every index in [0, p)."""
    from reference_model.hashing import layer_multipliers

    mult = layer_multipliers(e, vocab)
    B, T = ids.shape
    ctx = np.concatenate([np.full((B, e.max_ngram - 1), pad, dtype=np.int64), ids.astype(np.int64)], axis=1)
    out = {}
    for layer in e.layer_ids:
        cols = []
        for n in range(2, e.max_ngram + 1):
            mix = np.zeros((B, T), dtype=np.int64)
            for k in range(n):
                mix ^= ctx[:, e.max_ngram - 1 - k:e.max_ngram - 1 - k + T] * mult[layer][k]
            cols += [mix % p for p in primes[layer][n - 2]]
        out[layer] = np.stack(cols, axis=-1)
    return out


@pytest.mark.parametrize("kwargs,vocab,pad", CONFIGS[:4])
def test_padding_markers_are_hashed_as_the_demo_hashes_them(kwargs, vocab, pad):
    """A left-padded batch: -1 markers before each prompt (and a -100 ignore index) pass
    compression unchanged (ENGRAM.md 2.1) and hash like the demo's numpy recipe, indices in [0, p)."""
    e = EngramSpec(**kwargs)
    rng = np.random.default_rng(3)
    ids = rng.integers(0, vocab, size=(3, 17))
    ids[0, :5], ids[1, :1], ids[2, 7] = -1, -1, -100
    hasher = NgramHasher(e, vocab, pad)
    expected = _numpy_demo_hash(e, vocab, pad, ids, hasher.table_sizes)
    got = hasher.hash(ids)
    for layer in e.layer_ids:
        np.testing.assert_array_equal(got[layer], expected[layer])
        assert got[layer].min() >= 0
    with pytest.raises(ValueError, match="at or above the compressed vocabulary"):
        hasher.hash(np.array([[0, vocab]]))


def test_golden_vectors_of_the_demo_algorithm_are_reproduced_bit_exactly():
    """tests/fixtures/demo_hash_vectors.json was made by scripts/demo_golden_vectors.py, which
    re-traces the public demo's NgramHashMapping step by step (numpy, sympy primes) without
    this project's code: multipliers, table primes and every index must match."""
    import json
    from pathlib import Path

    from reference_model.hashing import layer_multipliers

    data = json.loads((Path(__file__).parent / "fixtures" / "demo_hash_vectors.json").read_text())
    assert len(data["cases"]) >= 4
    for case in data["cases"]:
        e = EngramSpec(layer_ids=case["layer_ids"], max_ngram=case["max_ngram"], n_heads=case["n_heads"],
                       table_size_per_head=case["table_size_per_head"], embed_dim_per_ngram=2 * case["n_heads"],
                       seed=case["seed"])
        hasher = NgramHasher(e, case["compressed_vocab_size"], case["compressed_pad_id"])
        mult = layer_multipliers(e, case["compressed_vocab_size"])
        got = hasher.hash(np.array(case["ids"]))
        for layer in e.layer_ids:
            key = str(layer)
            assert mult[layer].tolist() == case["multipliers"][key], case["name"]
            assert hasher.table_sizes[layer] == case["table_sizes"][key], case["name"]
            np.testing.assert_array_equal(got[layer], np.array(case["hashes"][key]), err_msg=case["name"])
