"""N-gram row statistics of real text: how Engram lookups repeat, for caches and the simulator.

The bundled corpus (:mod:`reference_model.data.corpus`) runs through the bundled tokenizer,
the vocabulary compressor and the n-gram hasher of a model spec; what comes out is the stream
of global row ids each Engram layer would read, one ``[K]`` vector per token. From it:

* ``rows_per_token``: K = (N - 1) x heads;
* ``unique_rows_curve``: distinct rows / (batch tokens x K) for a batch of that many tokens.
  A batch is made of sequences of ``max_seq_len`` consecutive tokens (fewer for a smaller
  batch) taken at random offsets, as in training and prefill; de-duplication saves
  ``1 - unique_fraction`` of the transfer;
* ``zipf_exponent``: slope ``s`` of ``count ~ rank**-s`` within each (order, head) table (the
  unit of ``planner.ngram_model.ZipfTraffic``), fitted on log-log axes over the ranks of rows
  seen at least ``min_count`` times (the singleton tail of a finite sample is
  flattened by sampling, not by the distribution), with ranks thinned to even spacing in
  log(rank) so every decade weighs the same;
* ``cache_hit_curve``: share of reads a static cache of the ``cache_fraction x table_rows``
  most frequent rows would serve. Frequencies are counted on the first ``train_share`` of the
  token stream and hit rates measured on the rest (held out), so the curve does not reward
  memorising the test text. It flattens at ``source.held_out_reuse_ceiling``, the share of
  held-out reads whose row occurs in the counted text at all: with 129k tokens and a table of
  millions of rows, every cache above a few percent holds all of them, so the flat end measures
  the corpus, not the cache.

All values are averaged over the Engram layers (and the exponent over heads) (their hashes differ, their statistics do
not). Simplification: one small English corpus (about 129k tokens of Python documentation)
and a 2048-id tokenizer; a 128k-id tokenizer on web text has a longer tail, so treat the
numbers as a measured example, not a universal constant.

Legend: T = tokens in the stream, K = rows per token per layer.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from planner.specs.model import ModelSpec

DEFAULT_BATCH_TOKENS = (1, 4, 16, 64, 256, 1024, 4096, 16384)
DEFAULT_CACHE_FRACTIONS = (0.0001, 0.0003, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass(frozen=True)
class RowStream:
    """The global row ids every Engram layer reads for a token stream: ``{layer: int64[T, K]}``,
    with the table size of each layer and where the tokens came from."""

    rows: dict[int, np.ndarray]
    table_rows: dict[int, int]
    source: dict

    @property
    def tokens(self) -> int:
        return next(iter(self.rows.values())).shape[0]

    @property
    def rows_per_token(self) -> int:
        return next(iter(self.rows.values())).shape[1]


@lru_cache(maxsize=2)
def _tokenized_corpus(tokenizer_path: str | None) -> tuple[np.ndarray, dict]:
    from reference_model.data.corpus import corpus_text
    from reference_model.tokenizer import TOKENIZER_PATH, load_tokenizer

    tokenizer = load_tokenizer(tokenizer_path)
    text = corpus_text()
    ids = np.asarray(tokenizer.encode(text).ids, dtype=np.int64)
    return ids, {
        "tokenizer": str(tokenizer_path or TOKENIZER_PATH.name),
        "tokenizer_vocab": tokenizer.get_vocab_size(),
        "corpus": "pydoc_data.topics (CPython documentation topics, sorted by name)",
        "corpus_chars": len(text),
        "corpus_tokens": int(ids.shape[0]),
    }


def corpus_row_stream(spec: ModelSpec, *, tokenizer_path: str | None = None,
                      max_tokens: int | None = None) -> RowStream:
    """Hash the bundled corpus, as one sequence, with ``spec``'s Engram config."""
    from reference_model.compression import Compressor
    from reference_model.hashing import NgramHasher
    from reference_model.tokenizer import load_tokenizer

    if spec.engram is None:
        raise ValueError(f"model {spec.name!r} has no Engram layers: there are no rows to count")
    raw, source = _tokenized_corpus(tokenizer_path)
    if max_tokens is not None:
        if max_tokens < 16:
            raise ValueError(f"max_tokens must be >= 16, got {max_tokens}")
        raw = raw[:max_tokens]
    compressor = Compressor(load_tokenizer(tokenizer_path))
    pad = int(compressor(np.array([spec.engram.pad_id]))[0])
    hasher = NgramHasher(spec.engram, len(compressor), pad)
    rows = {layer: r[0] for layer, r in hasher.row_ids(compressor(raw)[None]).items()}
    source = {**source, "model": spec.name, "tokens_used": int(raw.shape[0]),
              "compressed_vocab": len(compressor)}
    return RowStream(rows, dict(hasher.table_rows), source)


def row_counts(stream: RowStream, stop: int | None = None) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """``{layer: (row_ids, counts)}`` over the first ``stop`` tokens: the static cache's input
    (``EngramTableStore.build(hot_rows=...)``)."""
    return {layer: np.unique(r[:stop].reshape(-1), return_counts=True) for layer, r in stream.rows.items()}


def zipf_exponent(counts: np.ndarray, min_count: int = 3, points: int = 64) -> float:
    """Least-squares slope of log(count) against log(rank), negated (see module doc)."""
    freq = np.sort(np.asarray(counts))[::-1]
    freq = freq[freq >= min_count]
    if freq.shape[0] < 3:
        raise ValueError(f"fewer than 3 rows were seen {min_count}+ times: too little text for a fit")
    ranks = np.unique(np.geomspace(1, freq.shape[0], points).astype(np.int64))
    slope = np.polyfit(np.log(ranks), np.log(freq[ranks - 1]), 1)[0]
    return float(-slope)


def unique_fraction(rows_TK: np.ndarray, batch_tokens: int, seq_len: int, rng: np.random.Generator,
                    samples: int = 8) -> float:
    """Mean distinct-row share of batches of ``batch_tokens`` tokens (see module doc)."""
    T = rows_TK.shape[0]
    seq = min(seq_len, batch_tokens, T)
    n_seq = -(-batch_tokens // seq)
    fractions = []
    for _ in range(samples):
        starts = rng.integers(0, T - seq + 1, size=n_seq)
        batch = np.concatenate([rows_TK[s:s + seq] for s in starts])[:batch_tokens]
        fractions.append(np.unique(batch).shape[0] / batch.size)
    return float(np.mean(fractions))


def cache_hit_rate(train_ids: np.ndarray, train_counts: np.ndarray, test_rows: np.ndarray,
                   capacity: int) -> float:
    """Share of ``test_rows`` reads found among the ``capacity`` most counted training rows."""
    if capacity <= 0 or test_rows.size == 0:
        return 0.0
    order = np.lexsort((train_ids, -train_counts))  # most counted first, ties by smaller id
    hot = np.sort(train_ids[order[:capacity]])
    pos = np.searchsorted(hot, test_rows.reshape(-1)).clip(max=hot.shape[0] - 1)
    return float(np.mean(hot[pos] == test_rows.reshape(-1)))


def ngram_stats(spec: ModelSpec, *, stream: RowStream | None = None,
                batch_tokens=DEFAULT_BATCH_TOKENS, cache_fractions=DEFAULT_CACHE_FRACTIONS,
                train_share: float = 0.8, seed: int = 0, samples: int = 8) -> dict:
    """The agreed ``ngram-stats`` result (keys read by the simulator; docs/offload.md)."""
    if not 0 < train_share < 1:
        raise ValueError(f"train_share must be in (0, 1), got {train_share}")
    if any(b < 1 for b in batch_tokens):
        raise ValueError(f"batch_tokens must be >= 1, got {list(batch_tokens)}")
    if any(not 0 <= f <= 1 for f in cache_fractions):
        raise ValueError(f"cache fractions must be in [0, 1], got {list(cache_fractions)}")
    stream = stream or corpus_row_stream(spec)
    rng = np.random.default_rng(seed)
    layers = sorted(stream.rows)
    split = int(stream.tokens * train_share)
    batches = [b for b in batch_tokens if b <= stream.tokens]
    uniq = {b: [] for b in batches}
    hits = {f: [] for f in cache_fractions}
    zipf, ceiling = [], []
    for layer in layers:
        rows = stream.rows[layer]
        # One fit per (order, head) table, the unit the simulator's Zipf model describes.
        zipf.extend(zipf_exponent(np.unique(rows[:, k], return_counts=True)[1]) for k in range(rows.shape[1]))
        for b in batches:
            uniq[b].append(unique_fraction(rows, b, spec.max_seq_len, rng, samples))
        train_ids, train_counts = np.unique(rows[:split], return_counts=True)
        ceiling.append(cache_hit_rate(train_ids, train_counts, rows[split:], train_ids.shape[0]))
        for f in cache_fractions:
            capacity = int(round(f * stream.table_rows[layer]))
            hits[f].append(cache_hit_rate(train_ids, train_counts, rows[split:], capacity))
    return {
        "zipf_exponent": float(np.mean(zipf)),
        "rows_per_token": int(stream.rows_per_token),
        "table_rows": int(round(np.mean([stream.table_rows[l] for l in layers]))),
        "unique_rows_curve": {
            "batch_tokens": [int(b) for b in batches],
            "unique_fraction": [float(np.mean(uniq[b])) for b in batches],
        },
        "cache_hit_curve": {
            "cache_fraction": [float(f) for f in cache_fractions],
            "hit_rate": [float(np.mean(hits[f])) for f in cache_fractions],
        },
        "source": {
            **stream.source,
            "engram_layers": layers,
            "train_share": train_share,
            # Held-out reads whose row never occurs in the counted text miss any static cache:
            # the hit curve cannot pass this, however large the cache (a corpus-size limit).
            "held_out_reuse_ceiling": float(np.mean(ceiling)),
            "batch_sampling": f"sequences of up to {spec.max_seq_len} consecutive tokens at random offsets, "
                              f"{samples} batches per size, seed {seed}",
            "zipf_fit": "per (order, head) table: log-log least squares over ranks of rows seen >= 3 times, "
                        "log-spaced ranks; mean over heads and layers",
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def stats_figure(result: dict):
    """Two plotly panels: unique-row share vs batch tokens, hit rate vs cache fraction."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "distinct rows / rows read, per batch", "static hot-row cache hit rate (held-out text)"))
    u, c = result["unique_rows_curve"], result["cache_hit_curve"]
    fig.add_scatter(x=u["batch_tokens"], y=u["unique_fraction"], mode="lines+markers", name="unique fraction",
                    row=1, col=1)
    xs = [f for f in c["cache_fraction"] if f > 0]
    ys = [h for f, h in zip(c["cache_fraction"], c["hit_rate"]) if f > 0]
    fig.add_scatter(x=xs, y=ys, mode="lines+markers", name="hit rate", row=1, col=2)
    fig.update_xaxes(type="log", title_text="tokens per batch", row=1, col=1)
    fig.update_xaxes(type="log", title_text="cached share of table rows", row=1, col=2)
    fig.update_yaxes(range=[0, 1.02], row=1, col=1)
    fig.update_yaxes(range=[0, 1.02], row=1, col=2)
    src = result["source"]
    fig.update_layout(title=f"Engram row statistics: {src.get('model')}, {src.get('tokens_used'):,} tokens, "
                            f"Zipf exponent {result['zipf_exponent']:.2f}, {result['rows_per_token']} rows/token",
                      showlegend=False, height=450)
    return fig


def is_finite_result(result: dict) -> bool:
    """Every number in the result is finite (a guard for writers of the JSON)."""
    values = [result["zipf_exponent"], *result["unique_rows_curve"]["unique_fraction"],
              *result["cache_hit_curve"]["hit_rate"]]
    return all(math.isfinite(v) for v in values)
