"""Engram's multiplicative-XOR n-gram hash (ENGRAM.md sections 2.2-2.5), bit-exact with the
public demo ``engram_demo_v1.py`` (``NgramHashMapping``) and vectorised over all layers.

Legend: B = batch, T = new positions, P = past positions, L = Engram layers, N = max n-gram
size, O = N - 1 orders (2..N), H = heads per order, K = O * H rows per token per layer.

The recipe, per Engram layer ``L``, order ``n`` and head ``k``::

    m = 2 * rng(seed + 10007 * L).integers(0, half_bound, N) + 1
    mix_n[t] = (x[t] * m[0]) ^ (x[t-1] * m[1]) ^ ... ^ (x[t-n+1] * m[n-1])    (int64)
    index[t, n, k] = mix_n[t] mod p(L, n, k)

``half_bound = (2**63 - 1) // V' // 2`` keeps every product below 2**63, so the int64
arithmetic never wraps and ``mix >= 0``.

Speed. The demo computes ``mix % p`` with int64 division (13-40 cycles per value on x86: there
is no SIMD integer divide) in one numpy pass per layer, order and head. Here one compiled loop
(numba) computes each order's mix once for all its heads, over chunks of positions, and takes
each head's modulus over a chunk in vectorised float64 arithmetic, exactly:

1. split ``mix = hi * 2**50 + lo`` with ``-2**13 <= hi < 2**13`` (an arithmetic shift: a
   padding marker's mix may be negative) and ``0 <= lo < 2**50`` (both exact in float64);
2. ``y = hi * (2**50 mod p) + lo`` is congruent to ``mix`` mod p and below ``2**13 * p + 2**50``
   in magnitude,
   which for every ``p <= 2**35`` is at most ``5 * 2**48``: float64 holds it, and every
   product and sum forming it, exactly;
3. ``q = floor(y / p + 0.5 / p)`` computed as ``floor(y * (1/p) + 0.5 * (1/p))``: the true value
   ``(y + 0.5) / p = y // p + (y mod p + 0.5) / p`` (floor division, ``y mod p`` in ``[0, p)``, for
   either sign) is at least ``0.5 / p`` away from any integer.
   Three roundings (of ``1/p``, the product and the sum; halving is exact) leave a relative
   error of at most ``(1 + 2**-53)**3 - 1 < 3.0001 * 2**-53``, so an absolute error below
   ``3.0001 * 2**-53 * 5 * 2**48 / p < 0.469 / p``: the floor is exactly ``y // p``;
4. ``r = y - q * p`` is exact (all terms are integers below 2**53 in magnitude), in ``[0, p)``.

The bound is tight to the proof, not to the hardware: at ``p = 2**37`` the same argument needs
``3 * 2**-53 * 2**51 = 0.75`` below ``0.5`` and fails (the float path holds for
``p < 2**37 / 3``, about ``2**35.4``; ``2**35`` is the round figure under it).

Primes above ``2**35`` (3.4e10 rows per head) take the int64 ``%`` path in the same loop. The
loop releases the GIL (``nogil``), so a prefetch thread hashes while the model computes.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from planner.primes import engram_table_primes
from planner.specs.model import EngramSpec

# The recipe's layer stride for seeding (the demo's PRIME_1).
SEED_LAYER_STRIDE = 10007
_SPLIT_BITS = 50
_FLOAT_PATH_MAX_PRIME = 1 << 35  # the proof of the module docstring, step 3


# float64 2**52 and its bit pattern: the exact int64 <-> float64 conversions of _hash_kernel.
_MAGIC = 0x4330000000000000
_TWO52 = 4503599627370496.0
_CHUNK = 256  # positions per vectorised pass (its scratch stays in L1)


@numba.njit(cache=True, nogil=True)
def _hash_kernel(ctx_BX, n_ctx, mult_LN, p_LOH, split_LOH, inv_p_LOH, off_LOH, float_path, out_LSK):
    """``out_LSK[l, b*T + t, o*H + h] = mix_{o+2}[b, t] mod p[l, o, h] + off[l, o, h]``.

    ``ctx_BX`` holds the N-1 context ids of each sequence, then its T ids (see ``_context``).
    Loop order: per sequence, chunk of ``C`` positions and layer, each order's mix is built for
    the chunk, split into ``hi`` and ``lo`` (step 1), and each head's modulus runs over the
    chunk's contiguous positions: loops LLVM vectorises (AVX2: 4 float64 lanes). AVX2 has no
    int64 <-> float64 conversion, so both run through the float64 bit pattern of ``2**52``
    (``_MAGIC``): for an integer ``0 <= v < 2**52``, the bits ``v | _MAGIC`` are the float
    ``2**52 + v`` exactly, and back. ``hi`` is shifted by ``2**13`` into that range first; ``lo``
    and ``r`` are in it already. The scratch arrays (4 x C x 8 bytes) are allocated per call, so
    concurrent calls (engine and prefetch threads) share nothing.
    """
    B, X = ctx_BX.shape
    T = X - n_ctx
    L, N = mult_LN.shape
    H = p_LOH.shape[2]
    lo_mask = (1 << 50) - 1
    C = max(1, min(_CHUNK, T))  # a decode step's T = 1 needs no 256-long scratch
    S, K = out_LSK.shape[1], out_LSK.shape[2]
    # Flat views indexed by uint64: numba checks signed indices for wraparound (a negative
    # index counts from the end), a branch per access that keeps the loops from vectorising.
    out_flat = out_LSK.reshape(-1)
    ctx_flat = ctx_BX.reshape(-1)
    mix_C = np.empty(C, np.int64)
    hi_C = np.empty(C, np.float64)
    lo_C = np.empty(C, np.float64)
    r_C = np.empty(C, np.float64)
    hi_bits = hi_C.view(np.int64)
    lo_bits = lo_C.view(np.int64)
    r_bits = r_C.view(np.int64)
    for b in range(B):
        for t0 in range(0, T, C):
            n = min(C, T - t0)
            s0 = b * T + t0
            cb = np.uint64(b * X + n_ctx + t0)  # flat index of position t0's own id
            for l in range(L):
                m0 = mult_LN[l, 0]
                for t in range(n):
                    mix_C[t] = ctx_flat[cb + np.uint64(t)] * m0
                for k in range(1, N):
                    o = k - 1
                    mk = mult_LN[l, k]
                    for t in range(n):
                        mix_C[t] ^= ctx_flat[cb - np.uint64(k) + np.uint64(t)] * mk
                    if float_path:
                        for t in range(n):
                            v = mix_C[t]
                            hi_bits[t] = ((v >> 50) + 8192) | _MAGIC
                            lo_bits[t] = (v & lo_mask) | _MAGIC
                        for t in range(n):
                            hi_C[t] = hi_C[t] - (_TWO52 + 8192.0)
                            lo_C[t] = lo_C[t] - _TWO52
                        for h in range(H):
                            col = o * H + h
                            off = off_LOH[l, o, h]
                            split = split_LOH[l, o, h]
                            inv = inv_p_LOH[l, o, h]
                            half_inv = 0.5 * inv
                            p = np.float64(p_LOH[l, o, h])
                            for t in range(n):
                                y = hi_C[t] * split + lo_C[t]
                                q = np.floor(y * inv + half_inv)
                                r_C[t] = (y - q * p) + _TWO52
                            idx = np.uint64((l * S + s0) * K + col)
                            for t in range(n):
                                out_flat[idx] = (r_bits[t] - _MAGIC) + off
                                idx += np.uint64(K)
                    else:
                        for h in range(H):
                            col = o * H + h
                            off = off_LOH[l, o, h]
                            pi = p_LOH[l, o, h]
                            idx = np.uint64((l * S + s0) * K + col)
                            for t in range(n):
                                out_flat[idx] = mix_C[t] % pi + off
                                idx += np.uint64(K)


def layer_multipliers(engram: EngramSpec, compressed_vocab_size: int) -> dict[int, np.ndarray]:
    """``{layer_id: int64[N]}``: odd multipliers of ENGRAM.md 2.3 (the demo's ``layer_multipliers``)."""
    max_long = np.iinfo(np.int64).max
    half_bound = max(1, max_long // compressed_vocab_size // 2)
    out = {}
    for layer in engram.layer_ids:
        rng = np.random.default_rng(engram.seed + SEED_LAYER_STRIDE * layer)
        r = rng.integers(0, half_bound, size=engram.max_ngram, dtype=np.int64)
        out[layer] = r * 2 + 1
    return out


class NgramHasher:
    """Maps compressed token ids to per-head table indices (and global row ids) for every
    Engram layer at once.

    Models ENGRAM.md 2.2-2.5 exactly. ``pad_id`` is the *compressed* pad id, read for positions
    before the start of a sequence when no past ids are given. Inputs are compressed ids below
    ``compressed_vocab_size``, or negative padding markers (a left-padded batch's ``-1``), which
    compression passes through and the recipe hashes like any id (ENGRAM.md 2.1): their mix may
    be negative, and ``mix mod p`` is taken as the demo's numpy ``%`` takes it, in ``[0, p)``.
    """

    def __init__(self, engram_config: EngramSpec, compressed_vocab_size: int, pad_id: int):
        if compressed_vocab_size < 1:
            raise ValueError(f"compressed_vocab_size must be >= 1, got {compressed_vocab_size}")
        if not 0 <= pad_id < compressed_vocab_size:
            raise ValueError(
                f"pad_id = {pad_id} (compressed) is outside [0, {compressed_vocab_size}): pass the "
                "compression of the raw pad id"
            )
        e = engram_config
        self.config = e
        self.compressed_vocab_size = int(compressed_vocab_size)
        self.pad_id = int(pad_id)
        self.layer_ids = list(e.layer_ids)
        self.max_ngram = e.max_ngram
        self.n_heads = e.n_heads
        self.multipliers = layer_multipliers(e, compressed_vocab_size)
        self.table_sizes = engram_table_primes(e.layer_ids, e.table_size_per_head, e.n_heads)
        self.offsets: dict[int, np.ndarray] = {}
        for layer in self.layer_ids:
            flat = np.array([p for order in self.table_sizes[layer] for p in order], dtype=np.int64)
            self.offsets[layer] = np.concatenate([[0], np.cumsum(flat)[:-1]]).astype(np.int64)
        self.table_rows = {
            layer: int(sum(sum(order) for order in self.table_sizes[layer])) for layer in self.layer_ids
        }

        # Stacked constants, [L, N] and [L, O, H], so one pass serves every layer.
        self._mult_LN = np.ascontiguousarray(np.stack([self.multipliers[l] for l in self.layer_ids]))
        self._primes_LOH = np.array([self.table_sizes[l] for l in self.layer_ids], dtype=np.int64)
        self._offsets_LOH = np.stack([self.offsets[l] for l in self.layer_ids]).reshape(self._primes_LOH.shape)
        self._zeros_LOH = np.zeros_like(self._offsets_LOH)
        self._float_path = bool(self._primes_LOH.max() <= _FLOAT_PATH_MAX_PRIME)
        self._split_LOH = np.array(
            [[[pow(2, _SPLIT_BITS, int(q)) for q in heads] for heads in orders] for orders in self._primes_LOH],
            dtype=np.float64,
        )
        self._inv_p_LOH = 1.0 / self._primes_LOH.astype(np.float64)

    @property
    def rows_per_token(self) -> int:
        """K = (N - 1) * heads indices per token per layer."""
        return (self.max_ngram - 1) * self.n_heads

    # ------------------------------------------------------------------ public entry points

    def hash(self, compressed_ids_BT, past_ids_BP=None) -> dict[int, np.ndarray]:
        """``{layer: int64[B, T, K]}``: per-head indices ``mix mod p`` (order-major, then head),
        equal to the demo's ``NgramHashMapping.hash`` after compression.

        The arrays are contiguous [B, T, K] (token-major: a token's K rows are adjacent).

        ``past_ids_BP`` (compressed) are the ids just before ``compressed_ids_BT``; only the
        last ``N - 1`` are read, and fewer than that means the sequence started there (pads
        before). This is how incremental decoding hashes only its newest position(s)."""
        return self._run(compressed_ids_BT, past_ids_BP, with_offsets=False)

    def row_ids(self, compressed_ids_BT, past_ids_BP=None) -> dict[int, np.ndarray]:
        """Like :meth:`hash` but each index plus its head's offset: global rows of the fused table."""
        return self._run(compressed_ids_BT, past_ids_BP, with_offsets=True)

    # ------------------------------------------------------------------ implementation

    def _context(self, ids_BT: np.ndarray, past_BP) -> np.ndarray:
        """[B, N-1+T]: the N-1 ids before each sequence (past ids, else pads), then the ids."""
        n_ctx = self.max_ngram - 1
        B = ids_BT.shape[0]
        ctx = np.full((B, n_ctx + ids_BT.shape[1]), self.pad_id, dtype=np.int64)
        ctx[:, n_ctx:] = ids_BT
        if past_BP is not None:
            past = self._check_ids(past_BP, "past_ids_BP")
            if past.shape[0] != B:
                raise ValueError(f"past_ids_BP has batch {past.shape[0]} but the ids have batch {B}")
            keep = min(n_ctx, past.shape[1])
            if keep:
                ctx[:, n_ctx - keep:n_ctx] = past[:, past.shape[1] - keep:]
        return ctx

    def _check_ids(self, ids, name: str) -> np.ndarray:
        if isinstance(ids, torch.Tensor):
            ids = ids.detach().cpu().numpy()
        ids = np.asarray(ids)
        if ids.ndim != 2:
            raise ValueError(f"{name} must be 2-D [batch, positions], got shape {ids.shape}")
        if ids.dtype.kind not in "iu":
            raise ValueError(f"{name} must hold integers, got dtype {ids.dtype}")
        if ids.size and ids.max() >= self.compressed_vocab_size:
            raise ValueError(
                f"{name} holds ids up to {ids.max()}, at or above the compressed vocabulary's "
                f"{self.compressed_vocab_size}: the hasher reads compressed ids (negative padding markers pass)"
            )
        return ids.astype(np.int64, copy=False)

    def _run(self, ids_BT, past_BP, with_offsets: bool) -> dict[int, np.ndarray]:
        ids = self._check_ids(ids_BT, "compressed_ids_BT")
        B, T = ids.shape
        ctx_BX = self._context(ids, past_BP)
        out_LSK = np.empty((len(self.layer_ids), B * T, self.rows_per_token), dtype=np.int64)
        _hash_kernel(
            ctx_BX, self.max_ngram - 1, self._mult_LN, self._primes_LOH, self._split_LOH,
            self._inv_p_LOH, self._offsets_LOH if with_offsets else self._zeros_LOH,
            self._float_path, out_LSK,
        )
        return {layer: out_LSK[i].reshape(B, T, -1) for i, layer in enumerate(self.layer_ids)}
