"""Real runs of the validation grid: the reference model with real offloaded lookups (torch).

Each :class:`planner.validation.grid.RunConfig` is run as its scenario describes
(:mod:`planner.validation.grid`): ``batch`` sequences of held-out corpus text (the last 20% of
the bundled corpus; the static cache's row counts come from the first 80%), one prefill step,
then teacher-forced decode steps, each step timed as

    step (track engine) = hash + provider.fetch + forward (compute, wait_L, gather_L, h2d_L)

by :class:`reference_model.engine.Engine`, the loop calibration times its spans in (and
``engram-planner bench offload`` runs), with its caches evicted before each step. Tables are
real tensors (random values, the spec's shapes): in device memory (``tier: device``, the
baseline in-layer gather), in host RAM (pinned on CUDA) or in a file mapped from disk with a
warm page cache. Prefetch on/off is the :class:`reference_model.prefetch.RowProvider`'s: a
worker thread on the CPU, worker thread plus copy stream (and UVA when asked and available) on
CUDA.

Metrics (docs/metrics.md definitions, per engine step):

* ``step_time_s`` (``mean_step_time_s``): mean over the run's steps of each step's duration,
  where each step's duration is the mean of the repetitions ranked around its lower quartile
  over ``repeats`` timed repetitions of the whole run (after one untimed warm-up run; with 9
  repeats the 2nd-4th fastest): on a shared machine a preemption only ever adds time, so, as
  calibration scores its engine steps (:func:`planner.calibration.measure.quiet_repeats`),
  the quiet repetitions estimate the run's own cost and the median would measure the
  neighbours' load;
* ``throughput_tokens_per_s`` (``throughput_output_tokens_per_s``): ``batch x output_len`` /
  the sum of those step durations (every request arrives at t = 0, so that sum is the makespan);
* ``exposed_lookup_s`` (``exposed_engram_s`` summed over offloaded layers / steps): the
  ``wait_L{i}`` spans of offloaded layers, per step, over the same quiet repetitions as the
  step's duration;
* ``bytes_to_device`` (``bytes_requested.to_device`` / steps): rows after de-duplication and
  the device cache, times the row size (the store's counts; identical in every repetition).

Torch and the reference model are imported here only; import this module lazily.
"""

from __future__ import annotations

import gc
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from planner.trace import Span
from planner.validation.grid import RunConfig, engram_key, model_spec, placement

TRAIN_SHARE = 0.8  # static-cache counts on the first 80% of the corpus, runs on the rest


@dataclass
class Measured:
    """One measured run: the metrics, each repetition's per-step numbers, and the spans of the
    last repetition (for the side-by-side trace)."""

    config: RunConfig
    metrics: dict[str, float]
    step_s: list[list[float]]
    exposed_s: list[list[float]]
    spans: list[Span] = field(repr=False, default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0


@dataclass
class _Bundle:
    """What runs sharing an Engram config share: tables, hot rows, n-gram curves."""

    tables: dict[int, torch.Tensor]
    hot_rows: dict
    stats_path: Path


@dataclass
class _Run:
    """A run set up for measuring: its model, provider (open), token ids and results so far."""

    cfg: RunConfig
    model: object
    provider: object
    engine: object
    ids: torch.Tensor
    offloaded: list[int]
    notes: list[str]
    step_s: list[list[float]] = field(default_factory=list)
    exposed_s: list[list[float]] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)
    bytes_per_step: float = 0.0
    wall_s: float = 0.0


class Runner:
    """Measures runs on one device; caches per-Engram-config artefacts under ``workdir``."""

    def __init__(self, workdir: str | Path, *, device: str = "cpu", threads: int | None = None,
                 repeats: int = 3, host_mode: str = "staged"):
        from reference_model.compression import Compressor
        from reference_model.ngram_stats import _tokenized_corpus
        from reference_model.tokenizer import load_tokenizer

        self.workdir = Path(workdir)
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but torch sees no CUDA device")
        self.threads, self.repeats, self.host_mode = threads, repeats, host_mode
        self.compressor = Compressor(load_tokenizer())
        self.corpus = _tokenized_corpus(None)[0]
        self._bundles: dict[str, _Bundle] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix="engram-validate-")

    def close(self) -> None:
        self._bundles.clear()
        self._tmp.cleanup()

    # ---- shared artefacts

    def bundle(self, cfg: RunConfig) -> _Bundle:
        """Tables, hot rows and the n-gram stats JSON for ``cfg``'s Engram config (cached)."""
        import json

        from planner.accounting import engram_table_rows
        from reference_model.ngram_stats import corpus_row_stream, ngram_stats, row_counts

        key = engram_key(cfg)
        if key in self._bundles:
            return self._bundles[key]
        spec = model_spec(cfg)
        stream = corpus_row_stream(spec)
        stats_path = self.workdir / "ngram_stats" / f"{key}.json"
        if not stats_path.is_file():
            stats_path.parent.mkdir(parents=True, exist_ok=True)
            stats_path.write_text(json.dumps(ngram_stats(spec, stream=stream, train_share=TRAIN_SHARE)))
        hot = row_counts(stream, stop=int(stream.tokens * TRAIN_SHARE))
        g = torch.Generator().manual_seed(spec.engram.seed)
        rows = engram_table_rows(spec)
        tables = {layer: torch.empty(rows[layer], spec.engram.d_head).uniform_(-0.03, 0.03, generator=g)
                  for layer in spec.engram_layer_ids}
        self._bundles[key] = _Bundle(tables, hot, stats_path)
        return self._bundles[key]

    def tokens(self, cfg: RunConfig) -> torch.Tensor:
        """``[batch, prompt_len + output_len]`` raw ids: held-out corpus text, sequences spaced
        evenly through the held-out part."""
        split = int(self.corpus.shape[0] * TRAIN_SHARE)
        n = cfg.prompt_len + cfg.output_len
        room = self.corpus.shape[0] - split - n
        starts = split + (np.arange(cfg.batch) * room) // max(cfg.batch, 1)
        return torch.from_numpy(np.stack([self.corpus[s:s + n] for s in starts]).astype(np.int64))

    # ---- one run

    def measure(self, cfg: RunConfig) -> Measured:
        return self.measure_all([cfg])[0]

    def measure_all(self, configs: list[RunConfig], progress=None) -> list[Measured]:
        """Measure ``configs`` with their repetitions **interleaved** (repetition r of every
        run, then r + 1): the load of a shared machine changes over seconds, so each run's
        repetitions sample different moments and the quiet ones can be found."""
        from contextlib import ExitStack

        from reference_model.instrument import SpanRecorder, frozen_heap

        threads_before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        try:
            with ExitStack() as stack, torch.no_grad():
                runs = [self._setup(cfg, stack) for cfg in configs]
                stack.enter_context(frozen_heap())
                for r in range(self.repeats + 1):
                    for run in runs:
                        t0 = time.perf_counter()
                        gc.collect()
                        rec = SpanRecorder()
                        run.engine.set_tracer(rec)
                        run.provider.store.reset_stats()
                        run.engine.teacher_forced(run.ids, run.cfg.prompt_len)
                        run.engine.set_tracer(None)
                        steps = [s for s in rec.spans() if s.name == "step"]
                        run.wall_s += time.perf_counter() - t0
                        if r == 0:
                            continue  # warm-up: allocations, page cache, thread start
                        run.spans = rec.spans()
                        run.step_s.append([s.dur_s for s in steps])
                        run.exposed_s.append(_exposed_per_step(run.spans, steps, run.offloaded))
                        stats = run.provider.stats()
                        run.bytes_per_step = sum(s.bytes_moved for l, s in stats.items()
                                                 if l in run.offloaded) / len(steps)
                    if progress:
                        progress(r)
        finally:
            torch.set_num_threads(threads_before)
        return [self._result(run) for run in runs]

    def _setup(self, cfg: RunConfig, stack) -> "_Run":
        from reference_model.engine import Engine, default_evict_bytes
        from reference_model.model import EngramModel
        from reference_model.prefetch import build_provider

        t0 = time.perf_counter()
        spec = model_spec(cfg)
        b = self.bundle(cfg)
        place = placement(cfg, self.host_mode)
        torch.manual_seed(0)
        model = EngramModel(spec, self.compressor, materialize_tables=False, device=self.device).eval()
        disk_dir = Path(self._tmp.name) / cfg.name
        provider = stack.enter_context(build_provider(spec, place, device=self.device, tables=b.tables,
                                                      hot_rows=b.hot_rows, disk_dir=disk_dir))
        notes = [f"layer {s.layer_id}: {s.host_mode_note}" for s in provider.store.layers.values() if s.host_mode_note]
        offloaded = [l for l in spec.engram_layer_ids if place.tier_of(l) != "device"]
        engine = Engine(model, provider, evict_bytes=default_evict_bytes(self.device))
        return _Run(cfg, model, provider, engine, self.tokens(cfg), offloaded, notes, wall_s=time.perf_counter() - t0)

    @staticmethod
    def _result(run: "_Run") -> Measured:
        cfg = run.cfg
        per_step, per_exposed = quiet_mean(np.asarray(run.step_s), np.asarray(run.exposed_s))
        metrics = {
            "step_time_s": float(per_step.mean()),
            "throughput_tokens_per_s": cfg.batch * cfg.output_len / float(per_step.sum()),
            "exposed_lookup_s": float(per_exposed.mean()),
            "bytes_to_device": float(run.bytes_per_step),
        }
        return Measured(cfg, metrics, run.step_s, run.exposed_s, run.spans, run.notes, run.wall_s)


def _exposed_per_step(spans: list[Span], steps: list[Span], offloaded: list[int]) -> list[float]:
    """Per step: the ``wait_L{i}`` time of offloaded layers inside it (docs/metrics.md counts
    offloaded layers only; a device-tier layer's wait is its in-layer gather, part of compute)."""
    names = {f"wait_L{l}" for l in offloaded}
    out = []
    for st in steps:
        out.append(sum(s.dur_s for s in spans if s.name in names and st.start_s <= s.start_s < st.end_s))
    return out


def quiet_mean(step_RS: np.ndarray, *others_RS: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per step (column): the mean over the repetitions (rows) that
    :func:`planner.calibration.measure.quiet_repeats` keeps for the step's seconds, of the
    step's seconds and of each of ``others_RS`` (per-step numbers of the same repetitions)."""
    from planner.calibration.measure import quiet_repeats

    keep = [quiet_repeats(step_RS[:, k]) for k in range(step_RS.shape[1])]
    return tuple(np.array([x[idx, k].mean() for k, idx in enumerate(keep)]) for x in (step_RS, *others_RS))


def speed_probe(device: str, threads: int | None, dtype: str = "fp32", n: int = 512) -> float:
    """FLOP/s of a square ``n`` GEMM right now (calibration's own ``measure_gemm``): compared
    with the profile's peak it says whether the machine is as fast as when it was calibrated
    (a neighbour on a shared 2-vCPU machine halves it). Reported, never used to correct."""
    from planner.calibration.measure import measure_gemm

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        r = measure_gemm([n], dtype, device, repeats=9)[0]
    finally:
        torch.set_num_threads(before)
    return r["flops"] / r["seconds"]


def device_fingerprint(device: str, threads: int | None) -> dict:
    """The machine and software a validation measured on (as calibration records it)."""
    from planner.calibration.tasks import measure_fingerprint

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return measure_fingerprint(device)
    finally:
        torch.set_num_threads(before)

