"""``engram-planner bench hashing``: n-gram hashing throughput of the reference hasher against a
straightforward per-layer numpy implementation of the same recipe (the public demo's loop), and
the Engram module's forward time with and without the hash cost.

Both hashers run on the same token ids in one process, with torch and numpy held to one thread
(numpy's elementwise kernels are single-threaded; ``torch.set_num_threads(1)`` for torch), and
their outputs are checked equal. Throughput counts tokens hashed for every Engram layer, order
and head of the chosen model (engram-27b: 2 layers x 2 orders x 8 heads = 32 indices a token).
"""

from __future__ import annotations

import time

from planner.bench import machine_fingerprint

DESCRIPTION = "n-gram hashing tokens/s (all layers) vs a per-layer numpy baseline; Engram forward with/without hashing"
TARGET_RATIO = 3.0
TARGET_TOKENS_PER_S = 1e7


def add_arguments(parser) -> None:
    from planner.cli.common import number

    parser.add_argument("--model", default="engram-27b", help="model whose EngramSpec is hashed")
    parser.add_argument("--tokens", type=number(int, 1, 1 << 26), default=1 << 19,
                        help="tokens hashed per repeat (at most 2^26)")
    parser.add_argument("--step-shape", type=number(int, 1, 1 << 20), nargs=2, default=(8, 2048), metavar=("B", "T"),
                        help="ids per hash call: one engine step of B sequences x T positions")
    parser.add_argument("--repeats", type=number(int, 1, 1000), default=3, help="timed repeats (best is reported)")
    parser.add_argument("--module-model", default="tiny", help="model whose Engram module is timed")


def _best(fn, repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def numpy_baseline(hasher, ids):
    """The demo's ``NgramHashMapping._get_ngram_hashes``, one layer at a time."""
    import numpy as np

    x = np.asarray(ids, dtype=np.int64)
    B, T = x.shape
    out = {}
    for layer in hasher.layer_ids:
        mult = hasher.multipliers[layer]
        shifts = [x if k == 0 else np.pad(x, ((0, 0), (k, 0)), constant_values=hasher.pad_id)[:, :T]
                  for k in range(hasher.max_ngram)]
        heads = []
        for n in range(2, hasher.max_ngram + 1):
            mix = shifts[0] * mult[0]
            for k in range(1, n):
                mix = np.bitwise_xor(mix, shifts[k] * mult[k])
            heads += [mix % p for p in hasher.table_sizes[layer][n - 2]]
        out[layer] = np.stack(heads, axis=2)
    return out


def run(args) -> dict:
    import numpy as np
    import torch

    from planner.loading import load_model
    from reference_model.hashing import NgramHasher
    from reference_model.model import EngramModel

    tokens = (1 << 16) if args.quick else args.tokens
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        spec = load_model(args.model)
        if spec.engram is None:
            raise ValueError(f"model {args.model!r} has no Engram layers to hash")
        e = spec.engram
        # Identity compression: the compressed vocabulary is the model's (the hash cost does not
        # depend on the id values, only on the multipliers' bound).
        hasher = NgramHasher(e, spec.vocab_size, e.pad_id)
        hasher.hash(np.zeros((1, 4), dtype=np.int64))  # compile (or load) the kernel before timing
        # Hashing runs once per engine step, so the ids come in step-sized calls; one giant call
        # would mostly time first-touch page faults of its fresh output arrays.
        B, T = args.step_shape
        if B < 1 or T < 1:
            raise ValueError(f"--step-shape must be positive, got {B} {T}")
        rng = np.random.default_rng(0)
        steps = [rng.integers(0, spec.vocab_size, size=(B, T)) for _ in range(max(1, tokens // (B * T)))]
        n_tok = sum(s.size for s in steps)
        # As in an engine, each step's ids are hashed, used and dropped: keeping every step's
        # output alive while timing would mostly time first-touch page faults of fresh memory.
        t_ours, _ = _best(lambda: [hasher.hash(s) and None for s in steps], args.repeats)
        t_base, _ = _best(lambda: [numpy_baseline(hasher, s) and None for s in steps], args.repeats)
        equal = all(np.array_equal(hasher.hash(s)[layer], numpy_baseline(hasher, s)[layer])
                    for s in steps for layer in hasher.layer_ids)
        if not equal:
            raise AssertionError("reference hasher and numpy baseline disagree")

        module = _engram_forward(load_model(args.module_model), args, torch, EngramModel)
    finally:
        torch.set_num_threads(threads)
    ours_tps, base_tps = n_tok / t_ours, n_tok / t_base
    return {
        "model": spec.name,
        "tokens": n_tok,
        "step_shape": [B, T],
        "indices_per_token": len(hasher.layer_ids) * hasher.rows_per_token,
        "threads": 1,
        "hasher_tokens_per_s": ours_tps,
        "numpy_baseline_tokens_per_s": base_tps,
        "speedup": ours_tps / base_tps,
        "outputs_equal": equal,
        "engram_module": module,
        "targets": {
            "speedup_min": TARGET_RATIO, "speedup_met": ours_tps / base_tps >= TARGET_RATIO,
            "tokens_per_s_min": TARGET_TOKENS_PER_S, "tokens_per_s_met": ours_tps >= TARGET_TOKENS_PER_S,
        },
        "machine": machine_fingerprint(),
    }


def _engram_forward(spec, args, torch, EngramModel) -> dict:
    """Time one Engram module: forward on gathered rows, vs hash + gather + forward."""
    spec = spec.model_copy(update={"dtype": "fp32"})
    if spec.engram is None:
        raise ValueError(f"module model {spec.name!r} has no Engram layer")
    torch.manual_seed(0)
    model = EngramModel(spec).eval()
    layer = spec.engram_layer_ids[0]
    engram = model.engram_blocks()[layer]
    B, T = (2, 64) if args.quick else (4, 256)
    ids = torch.randint(0, spec.vocab_size, (B, T))
    h = torch.randn(B, T, spec.hc_mult, spec.d_model)
    reps = max(3, args.repeats)
    with torch.no_grad():
        row_ids = model.engram_row_ids(ids)[layer]
        rows = engram.gather(row_ids)
        t_forward, _ = _best(lambda: engram(h, rows), reps)
        t_gather, _ = _best(lambda: engram(h, engram.gather(row_ids)), reps)
        t_hash, _ = _best(lambda: model.engram_row_ids(ids), reps)
        t_all, _ = _best(lambda: engram(h, engram.gather(model.engram_row_ids(ids)[layer])), reps)
    return {
        "model": spec.name, "layer": layer, "batch": B, "positions": T,
        "forward_s": t_forward,
        "gather_and_forward_s": t_gather,
        "hash_all_layers_s": t_hash,
        "hash_gather_and_forward_s": t_all,
        "hash_share": t_hash / t_all,
    }


def format_text(result: dict) -> str:
    t, m = result["targets"], result["engram_module"]
    mark = lambda ok: "met" if ok else "NOT met"
    return "\n".join([
        f"n-gram hashing, {result['model']}: {result['indices_per_token']} indices/token, "
        f"{result['tokens']:,} tokens in calls of {result['step_shape'][0]}x{result['step_shape'][1]}, 1 thread",
        f"  reference hasher     {result['hasher_tokens_per_s'] / 1e6:8.2f} M tokens/s "
        f"(target {t['tokens_per_s_min'] / 1e6:.0f}M: {mark(t['tokens_per_s_met'])})",
        f"  numpy per-layer loop {result['numpy_baseline_tokens_per_s'] / 1e6:8.2f} M tokens/s",
        f"  speedup              {result['speedup']:8.2f} x (target {t['speedup_min']:.0f}x: "
        f"{mark(t['speedup_met'])}); outputs equal: {result['outputs_equal']}",
        f"Engram module, {m['model']} layer {m['layer']}, B={m['batch']} T={m['positions']}:",
        f"  forward on gathered rows  {m['forward_s'] * 1e3:8.3f} ms",
        f"  gather + forward          {m['gather_and_forward_s'] * 1e3:8.3f} ms",
        f"  hash + gather + forward   {m['hash_gather_and_forward_s'] * 1e3:8.3f} ms "
        f"(hashing all layers {m['hash_all_layers_s'] * 1e3:.3f} ms, {m['hash_share']:.0%})",
    ])
