"""The reference model's ops, hashing and lookups timed inside the serving engine's own loop
(torch).

Calibration's micro-benchmarks (GEMMs, copies, gathers) give the device's ceilings; what a step
costs is measured here, in :class:`reference_model.engine.Engine` runs: the loop every
validation run, ``bench offload`` and ``generate`` use, with the same threads, tracer,
allocator and cache state (the LLC evicted before each step, as a deployment's weights evict
it). Timed in a tight loop of their own, the same ops ran 1.3-1.6x faster on the CI VM than
inside the engine (the loop keeps their weights, code and Python objects in the caches), and
the hash call 4x faster (64 us vs 240 us): curves fitted to such loops described their loop,
not the engine.

A calibration run is a fixed-length batched generation: ``batch`` sequences of random ids,
one prefill step of ``prompt_len`` positions, then ``output_len - 1`` decode steps, the Engram
tables in host RAM (real tensors of the spec's shapes), lookups on demand (prefetch off, so the
engine thread runs them inside the ``wait_L`` spans: hash, plan, gather, assembly all on the
critical path and all timed), token ids compressed by the bundled tokenizer's compressor as a
deployment's are (ENGRAM.md 2.1); one run keeps its tables in device memory (the baseline's
in-layer gather, its ``gather_L`` span on the compute track). Repetitions of all runs are
interleaved (as validation does); each step keeps the repetitions ranked around its lower
quartile and every span's mean over those same repetitions
(:func:`planner.calibration.measure.quiet_repeats`), so the spans add up to the step.

Returns the runs' model specs and, per (run, step), the step's shape and the seconds of every
span name in it, plus the lookup counts per layer. :mod:`planner.calibration.build` pairs them with the cost model's work
for the same shape.

Legend: B = sequences, P = prompt positions, N = generated positions.
"""

from __future__ import annotations

import gc
from collections import defaultdict

import numpy as np
import torch

from planner.calibration.measure import measure_gemm, quiet_repeats
from planner.specs import EngramPlacement, ModelSpec


def measure_engine(runs: list[dict], repeats: int, device: str = "cpu", seed: int = 0,
                   keep_repeats: bool = False, peak_sizes: tuple[int, ...] = ()) -> dict:
    """Span seconds of every step of every run in ``runs`` (``{"name", "spec", "batch",
    "prompt_len", "output_len"}``, ``spec`` a :class:`ModelSpec` dump): ``{"specs": {model
    name: spec dump}, "steps": [one sample per step], "peak_probes": {dtype: [FLOP/s]}}``;
    ``keep_repeats``: each sample also holds ``"repeats"``, every timed repetition's spans (for
    studies of the statistic, ``scripts/span_statistics.py``). ``peak_sizes``: square GEMMs of
    the runs' dtypes timed after every repetition (``peak_probes``, the best of each): the
    device's FLOP ceiling as it stood while the ops were timed. A shared VM's speed moves by up
    to 1.7x over minutes, and a ceiling measured at a slow moment minutes earlier caps the op
    fits' FLOP fractions at 1 (``planner.calibration.build.fit_all`` keeps the higher)."""
    from contextlib import ExitStack

    from planner.accounting import engram_table_rows
    from reference_model.compression import Compressor
    from reference_model.engine import Engine, default_evict_bytes
    from reference_model.instrument import SpanRecorder, frozen_heap
    from reference_model.model import EngramModel
    from reference_model.prefetch import build_provider
    from reference_model.tokenizer import load_tokenizer

    compressor = Compressor(load_tokenizer())
    prepared = []
    with ExitStack() as stack, torch.no_grad():
        for i, run in enumerate(runs):
            spec = ModelSpec.model_validate(run["spec"])
            cache = run.get("cache_fraction", 0.0)
            placement = EngramPlacement(tier=run.get("tier", "host"), prefetch=False, dedup=True,
                                        cache_fraction=cache, cache_policy="static")
            torch.manual_seed(seed + i)
            model = EngramModel(spec, compressor, materialize_tables=False, device=device).eval()
            g = torch.Generator().manual_seed(seed + i)
            tables = {layer: torch.empty(n, spec.engram.d_head).uniform_(-0.03, 0.03, generator=g)
                      for layer, n in engram_table_rows(spec).items()}
            n = run["prompt_len"] + run["output_len"]
            ids = torch.randint(0, spec.vocab_size, (run["batch"], n), generator=g)
            # A static cache of the rows the first half of the sequences read (their ids hashed and
            # counted): random ids share few n-grams, so the other half misses (about half the
            # reads hit, as in the validation grid's cached runs).
            hot = ({layer: torch.unique(r.reshape(-1), return_counts=True)
                    for layer, r in model.host_row_ids(ids[: max(run["batch"] // 2, 1)]).items()} if cache else None)
            provider = stack.enter_context(build_provider(spec, placement, device=device, tables=tables,
                                                          hot_rows=hot))
            engine = Engine(model, provider, evict_bytes=default_evict_bytes(device))
            prepared.append((run, spec, engine, provider, ids, []))
        stack.enter_context(frozen_heap())  # the runs' steps as the validation grid times its own
        dtypes = sorted({spec.dtype for _, spec, *_ in prepared})
        probes: dict[str, list[float]] = {dt: [] for dt in dtypes} if peak_sizes else {}
        for r in range(repeats + 1):
            for run, spec, engine, provider, ids, reps in prepared:
                gc.collect()
                rec = SpanRecorder(cuda=device == "cuda" and torch.cuda.is_available())
                engine.set_tracer(rec)
                counts = _teacher_forced(engine, provider, ids, run["prompt_len"])
                engine.set_tracer(None)
                if r:  # repetition 0 warms up (allocations, page faults, thread start)
                    reps.append((_per_step(rec.spans()), counts))
            for dt in probes:
                probes[dt].append(max(g["flops"] / g["seconds"] for g in measure_gemm(list(peak_sizes), dt, device, 3)))
        steps = [sample for run, spec, engine, provider, ids, reps in prepared
                 for sample in _samples(run, spec, reps, keep_repeats)]
        return {"specs": {spec.name: spec.model_dump(mode="json") for _, spec, *_ in prepared}, "steps": steps,
                "peak_probes": probes}


def _teacher_forced(engine, provider, ids_BN: torch.Tensor, prompt_len: int) -> list[dict]:
    """:meth:`Engine.teacher_forced`, step by step, with each step's lookup counts per layer
    (requested and fetched rows)."""
    B, N = ids_BN.shape
    cache = engine.model.new_cache(B, N)
    counts = []
    for pos in [0] + list(range(prompt_len, N - 1)):
        provider.store.reset_stats()
        engine.step(ids_BN[:, :prompt_len] if pos == 0 else ids_BN[:, pos:pos + 1], cache)
        counts.append({str(layer): {"requested": s.requested_rows, "fetched": s.fetched_rows}
                       for layer, s in provider.stats().items()})
    return counts


def _per_step(spans) -> list[dict[str, float]]:
    """Seconds of each span name inside each ``step`` span (durations of a name summed)."""
    steps = sorted((s for s in spans if s.name == "step"), key=lambda s: s.start_s)
    out = [defaultdict(float) for _ in steps]
    starts = np.array([s.start_s for s in steps])
    for s in spans:
        if s.name == "step":
            continue
        k = int(np.searchsorted(starts, s.start_s, side="right")) - 1
        if 0 <= k < len(steps) and s.start_s < steps[k].end_s:
            out[k][s.name] += s.dur_s
    for k, st in enumerate(steps):
        out[k]["step"] = st.dur_s
    return out


def _samples(run: dict, spec: ModelSpec, reps: list, keep_repeats: bool = False) -> list[dict]:
    """One sample per step: its shape and each span's mean over the step's quiet repetitions
    (:func:`quiet_repeats` of the step's seconds)."""
    P, B = run["prompt_len"], run["batch"]
    counts = reps[-1][1]  # identical in every repetition (same ids)
    out = []
    for k in range(len(reps[0][0])):
        names = set().union(*(rep[0][k] for rep in reps))
        keep = quiet_repeats([rep[0][k]["step"] for rep in reps])
        spans = {name: float(np.mean([reps[i][0][k].get(name, 0.0) for i in keep])) for name in sorted(names)}
        phase, tokens, context = ("prefill", P, 0) if k == 0 else ("decode", 1, P + k - 1)
        out.append({"run": run["name"], "model": spec.name, "dtype": spec.dtype, "phase": phase, "batch": B,
                    "tokens": tokens, "context": context, "n_layers": spec.n_layers,
                    "engram_layers": list(spec.engram_layer_ids), "tier": run.get("tier", "host"),
                    "cache_fraction": run.get("cache_fraction", 0.0),
                    "spans": spans, "lookups": counts[k]})
        if keep_repeats:
            out[-1]["repeats"] = [dict(rep[0][k]) for rep in reps]
    return out
