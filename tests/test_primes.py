from planner.primes import engram_table_primes, is_prime, next_prime_at_least
from scripts.demo_golden_vectors import table_sizes as demo_table_sizes


def _slow_is_prime(n):
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


def test_is_prime_matches_trial_division():
    assert [n for n in range(2000) if is_prime(n)] == [n for n in range(2000) if _slow_is_prime(n)]
    assert is_prime(2**61 - 1)  # Mersenne prime
    assert not is_prime(3215031751)  # strong pseudoprime to bases 2, 3, 5, 7


def test_engram_md_example():
    # ENGRAM.md section 2.4: size 646,400 gives 646403, 646411, 646421, ...
    primes = engram_table_primes([0], [646400], 3)[0][0]
    assert primes == [646403, 646411, 646421]


def test_distinct_primes_across_layers_and_orders():
    # Equal sizes for both orders and two layers force every later table to skip taken primes.
    layer_ids, sizes, heads = [3, 1], [1000, 1000], 4
    got = engram_table_primes(layer_ids, sizes, heads)
    # The demo's loop, written without this project's code (the golden-vector script's).
    assert got == demo_table_sizes(sizes, len(sizes) + 1, heads, layer_ids)
    flat = [p for orders in got.values() for heads_ in orders for p in heads_]
    assert len(flat) == len(set(flat)) == 16
    assert list(got) == [3, 1]  # config order, not sorted


def test_next_prime_at_least():
    assert next_prime_at_least(0) == 2
    assert next_prime_at_least(14) == 17
    assert next_prime_at_least(17) == 17
