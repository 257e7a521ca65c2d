"""Row providers: hand the model each Engram layer's rows, fetched ahead or on demand.

The engine (:mod:`reference_model.engine`) calls ``provider.fetch_tokens(ids, past, hash_fn)``
once per step with the step's token ids (known before any block runs), and the model, just
before block ``i``'s Engram module, ``handles[i].wait()`` for ``[B, T, K, D]`` rows on its
device. Between the two the blocks before layer ``i`` run: that is the window prefetch hides the
lookup in. ``fetch(row_ids)`` is the same with row ids already hashed.

Where the host work runs is the placement choice the simulator models the same way
(:mod:`planner.sim.fetch`):

* **prefetch on**: the worker thread hashes the step's ids (every Engram layer's, device-tier
  ones included: their in-layer gather needs them) and then runs each offloaded layer's lookup,
  all overlapped with the engine thread's blocks;
* **prefetch off**: the engine thread hashes before the forward (on the critical path) and each
  lookup runs inside its layer's ``wait()``.

* **Prefetch on, CUDA.** A worker thread plans each layer's lookup and gathers its missed rows
  on the CPU into a pinned staging buffer (double-buffered per layer), then enqueues the
  ``non_blocking`` host-to-device copy and the assembly on a dedicated copy stream and records
  an event. ``wait()`` joins the worker (the host work) and makes the *compute stream* wait on
  the event: no host-device synchronisation, the GPU runs ahead. The returned tensor was
  allocated on the copy stream, so it is marked with ``record_stream`` for the compute stream
  before the caching allocator may reuse it.
* **Prefetch on, CPU.** The same worker thread does the whole lookup; torch's gather kernels
  release the GIL, so it overlaps the main thread's blocks. Its intra-op threads are its own
  (:func:`worker_threads`): the cores the compute threads leave free, or one thread where
  they leave none. Never a second team as large as the compute one: GNU OpenMP (torch's
  runtime on Linux) counts every team's threads, and once they outnumber the cores it cuts
  every idle thread's spin before sleeping from 300,000 to 100 iterations (the libgomp manual,
  ``GOMP_SPINCOUNT``), so each of the main thread's small ops then waits for a futex wake.
  Measured on the 2-core CI VM: a worker with torch's default team, idle between steps, made
  other runs' steps 1.2-1.5x slower for as long as it lived (``scripts/drift_probe.py``;
  docs/validation.md).
* **Prefetch off.** ``wait()`` runs the whole lookup on the calling thread and stream.

Layers are fetched in ascending layer order, so the first Engram layer's rows come first.
Device-tier layers are never prefetched: their lookup is the in-layer gather of the baseline.

Simplification: one worker thread for every layer; the CPU gather of a large batch is split
only by torch's own kernels, over the worker's intra-op threads.
"""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from reference_model.layers import INIT_STD
from reference_model.store import EngramTableStore, LayerStore, LookupStats, _null_tracer


class RowHandle:
    """One layer's rows for one step. ``wait()`` returns ``[B, T, K, D]`` on the model device,
    ready for use on the caller's current stream. ``in_layer``: the rows are produced inside
    the layer's own compute (its table's gather), not waited for before it."""

    in_layer = False

    def wait(self) -> torch.Tensor:
        raise NotImplementedError


class _OnDemand(RowHandle):
    """Prefetch off (and the device tier): the lookup runs inside ``wait()``, once. ``ids`` is
    the ``[B, T, K]`` row ids, or a future of ``{layer: ids}`` still being hashed by the
    worker."""

    def __init__(self, store: LayerStore, ids: torch.Tensor | Future, tracer):
        self._store, self._ids, self._tracer = store, ids, tracer
        self._rows: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        if self._rows is None:
            ids = self._ids
            if isinstance(ids, Future):
                ids = ids.result()[self._store.layer_id]
            self._rows = self._store.lookup(ids, self._tracer)
            self._ids = None
        return self._rows


class _Prefetched(RowHandle):
    """Prefetch on: the worker's future yields ``(rows, event)``; event is None on CPU."""

    def __init__(self, future: Future):
        self._future = future
        self._rows: torch.Tensor | None = None

    def wait(self) -> torch.Tensor:
        if self._rows is None:
            rows, event = self._future.result()
            if event is not None:
                stream = torch.cuda.current_stream(rows.device)
                stream.wait_event(event)  # device-side wait: the host does not block here
                rows.record_stream(stream)
            self._rows = rows
        return self._rows


class RowProvider:
    """Serves Engram rows from an :class:`EngramTableStore` to the model (see module doc).

    ``prefetch``: start every offloaded layer's lookup at ``fetch`` time (on a worker thread,
    and a copy stream on CUDA); off, each lookup runs when its layer waits. ``tracer``: a
    ``tracer(name, track)`` context-manager factory (``instrument.SpanRecorder``) that receives
    ``gather_L{i}`` (track ``host_gather``) and ``h2d_L{i}`` (track ``h2d``) spans.
    """

    def __init__(self, store: EngramTableStore, *, prefetch: bool = True, tracer=None):
        self.store = store
        self.prefetch = prefetch
        self.tracer = tracer or _null_tracer
        devices = {s.device for s in store.layers.values()}
        if len(devices) != 1:
            raise ValueError(f"all Engram layers must serve one device, got {sorted(map(str, devices))}")
        self.device = devices.pop()
        self.cuda = self.device.type == "cuda"
        self._executor: ThreadPoolExecutor | None = None
        self._copy_stream = None
        if prefetch:
            self._executor = _worker(worker_threads(self.device))
            if self.cuda:
                # A dedicated stream so copies and assembly overlap the compute stream's kernels.
                self._copy_stream = torch.cuda.Stream(self.device)

    # ----------------------------------------------------------------- the model-facing call

    def fetch_tokens(self, ids_BT: torch.Tensor, past_BP: torch.Tensor | None, hash_fn) -> dict[int, RowHandle]:
        """Hash the step's token ids with ``hash_fn(ids_BT, past_BP) -> {layer: [B, T, K]}`` and
        fetch every layer's rows: on the worker thread with prefetch on, on the calling thread
        first with it off (a ``hash`` span on track ``host_cpu`` or ``engine``)."""
        if not self.prefetch:
            with self.tracer("hash", "engine"):
                row_ids = hash_fn(ids_BT, past_BP)
            return self.fetch(row_ids)
        hashed = self._executor.submit(self._hash, hash_fn, ids_BT, past_BP)
        ready = self._ready_event()
        handles: dict[int, RowHandle] = {}
        for layer in sorted(self.store.layers):
            store = self.store.layers[layer]
            if store.needs_fetch:
                handles[layer] = _Prefetched(self._executor.submit(self._fetch_one, store, hashed, ready))
            else:
                handles[layer] = _OnDemand(store, hashed, self.tracer)
        return handles

    def fetch(self, row_ids: dict[int, torch.Tensor]) -> dict[int, RowHandle]:
        """Handles for every layer in ``row_ids`` (``{layer: LongTensor[B, T, K]}``)."""
        unknown = sorted(set(row_ids) - set(self.store.layers))
        if unknown:
            raise ValueError(f"row ids for layers {unknown}, but the store holds {sorted(self.store.layers)}")
        handles: dict[int, RowHandle] = {}
        ready = self._ready_event()
        for layer in sorted(row_ids):
            store, ids = self.store.layers[layer], row_ids[layer]
            if self.prefetch and store.needs_fetch:
                handles[layer] = _Prefetched(self._executor.submit(self._fetch_one, store, ids, ready))
            else:
                handles[layer] = _OnDemand(store, ids, self.tracer)
        return handles

    def _ready_event(self):
        """CUDA prefetch: copy-stream work must not start before the compute work already
        enqueued when the ids were handed over (they, and the previous step's reads, may still
        be in flight). None otherwise."""
        if self.prefetch and self.cuda:
            return torch.cuda.current_stream(self.device).record_event()
        return None

    def _hash(self, hash_fn, ids_BT, past_BP) -> dict[int, torch.Tensor]:
        """Worker thread: the step's row ids, every Engram layer's."""
        with self.tracer("hash", "host_cpu"):
            return hash_fn(ids_BT, past_BP)

    def _fetch_one(self, store: LayerStore, ids: torch.Tensor | Future, ready):
        """Worker thread: one layer's whole lookup; returns ``(rows, event or None)``. ``ids``
        may be the future of this step's hashing (submitted earlier to this same one-thread
        worker, so it is done by now)."""
        if isinstance(ids, Future):
            ids = ids.result()[store.layer_id]
        if not self.cuda:
            return store.lookup(ids, self.tracer), None
        with torch.cuda.device(self.device):
            # host work on this thread, copies and assembly on the copy stream once the compute
            # stream has reached `ready`; `done` marks the end of the rows' device work.
            rows = store.lookup(ids, self.tracer, stream=self._copy_stream, after=ready)
            done = torch.cuda.Event()
            done.record(self._copy_stream)
            return rows, done

    # ----------------------------------------------------------------- bookkeeping

    def stats(self) -> dict[int, LookupStats]:
        return self.store.stats()

    def close(self) -> None:
        """Stop the worker thread (waits for lookups in flight)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> "RowProvider":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def worker_threads(device: torch.device) -> int | None:
    """Intra-op threads of the prefetch worker on ``device``: on a CPU device, the cores the
    compute threads (``torch.get_num_threads()``) leave free, at least 1; None on CUDA (torch's
    own count: the worker's gathers are the host's main CPU work there)."""
    if device.type != "cpu":
        return None
    # os.cpu_count(), as calibration records host.cores: the cost model's spare cores are the same
    return max(1, (os.cpu_count() or 1) - torch.get_num_threads())


def _worker(threads: int | None) -> ThreadPoolExecutor:
    """The one-thread prefetch executor, its thread started now with ``threads`` intra-op
    threads of its own (None: torch's). ``torch.set_num_threads`` sets the calling thread's
    OpenMP team size and a process-wide default for threads not yet initialised; the caller's
    count is put back at once, so only the worker keeps ``threads``."""
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engram-prefetch")
    if threads is not None:
        before = torch.get_num_threads()
        executor.submit(_set_threads, threads).result()
        torch.set_num_threads(before)
    return executor


def _set_threads(threads: int) -> None:
    # torch initialises a thread's team size lazily, at its first parallel op, from the
    # process-wide default: initialise first, or that would overwrite this count later.
    torch.get_num_threads()
    torch.set_num_threads(threads)


def build_provider(spec, placement, *, device="cpu", tables=None, hot_rows=None, disk_dir=None,
                   tracer=None, lazy_init_std: float = INIT_STD) -> RowProvider:
    """A :class:`RowProvider` over a freshly built store (arguments as ``EngramTableStore.build``;
    ``placement.prefetch`` turns prefetch on or off)."""
    store = EngramTableStore.build(spec, placement, device=device, tables=tables, hot_rows=hot_rows,
                                   disk_dir=disk_dir, lazy_init_std=lazy_init_std)
    return RowProvider(store, prefetch=placement.prefetch, tracer=tracer)
