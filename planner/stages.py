"""One engine step's stages, priced once: what the simulator schedules and the analytic
estimator adds up (ARCHITECTURE.md, "One step-time model").

A step of a serving engine with offloaded Engram tables (the reference engine,
:mod:`reference_model.engine`, runs exactly these stages)::

    engine thread   [overhead] [hash]? [embed][block 0]...[wait_L][engram_L]...[head]
    worker cores    [hash]? [lookup L_a: overhead, (disk), gather] [lookup L_b ...]      (prefetch)
    copy engine                                     [h2d L_a]          [h2d L_b ...]

* **overhead**: the engine's own seconds per step outside every op and lookup
  (``step:overhead`` of a calibrated profile; 0 for a preset);
* **hash**: every Engram layer's ids (device-tier layers too: their in-layer gather needs
  them). Prefetch on: on the worker cores at the step start; off: on the engine thread
  before the forward, on the critical path;
* **lookup** of an offloaded layer: host overhead (plan, de-duplication, assembly), an NVMe read
  for the disk tier's cold rows, the gather of the rows into staging at the table's rate
  (:meth:`planner.costmodel.CostModel.gather_rate`), the copy over the link (none on a CPU
  device; ``uva``: the device reads the rows over the link instead of a gather and a copy;
  pageable: the copy is synchronous, on the compute stream). Prefetch on: all layers' lookups
  in layer order from the step start, FIFO per stage; off: each at its layer, on the engine
  thread;
* **compute**: the ops of :mod:`planner.sim.device`, priced by the cost model.

Where host work runs (:func:`host_placement`) is the placement choice: worker cores of its
own (GPU hosts: ``engram_cores_per_device``; a CPU device calibrated with fewer threads than
cores: the spare ones), or, for a CPU device with no spare core, the compute cores themselves:
the worker's work then holds them (the prefetch overlaps nothing, but nothing is exposed
either: the reference engine measured so on the 2-core CI VM, 0.007 ms of wait per step).

Every function accepts numpy arrays for tokens and the cache fraction, so the analytic
estimator evaluates the same stages over thousands of configurations at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from planner.costmodel import CostModel, Number
from planner.ngram_model import NgramTraffic
from planner.specs import EngramPlacement


@dataclass(frozen=True)
class HostPlacement:
    """Where one device's Engram host work runs. ``prefetch``: lookups (and the hash) start at
    the step start on worker cores; else on the engine thread when each layer is reached (the
    hash before the forward). ``shared``: those worker cores are the compute cores (a CPU device
    with none spare), so the worker's work delays compute instead of overlapping it.
    ``cores``: cores a lookup's gather uses; ``hash_cores``: cores the hash uses."""

    prefetch: bool
    shared: bool
    cores: int
    hash_cores: int


def compute_cores(cost: CostModel) -> int:
    """Cores a CPU device's compute occupies: the intra-op threads it was calibrated with
    (``calibration.fingerprint.threads``), else every core."""
    host, cal = cost.hardware.host, cost.hardware.calibration
    threads = cal.fingerprint.threads if cal is not None else host.cores
    return max(1, min(host.cores, threads))


def engram_cores_per_device(cost: CostModel) -> int:
    """Host cores one GPU's Engram workers get: the node's cores minus the serving engine's own
    (``engine_cores`` per device), split evenly across devices (at least 1)."""
    host, count = cost.hardware.host, cost.hardware.device.count
    return max(1, (host.cores - host.engine_cores * count) // count)


def host_placement(cost: CostModel, placement: EngramPlacement, pool_cores: int | None = None) -> HostPlacement:
    """The :class:`HostPlacement` of ``placement`` on ``cost``'s hardware. ``pool_cores``: a GPU
    device's worker cores (default :func:`engram_cores_per_device`)."""
    if cost.hardware.device.kind != "cpu":
        cores = pool_cores if pool_cores is not None else engram_cores_per_device(cost)
        return HostPlacement(placement.prefetch, False, cores, cores if placement.prefetch else 1)
    compute = compute_cores(cost)
    spare = cost.hardware.host.cores - compute  # the prefetch worker's, beside the compute threads
    if placement.prefetch and spare >= 1:
        return HostPlacement(True, False, spare, 1)
    if placement.prefetch:
        # No spare core: the worker runs one thread among the compute threads (never a second
        # team, reference_model.prefetch.worker_threads), its work delaying theirs.
        return HostPlacement(True, True, 1, 1)
    # On demand: the lookup runs on the engine thread with the compute threads' parallelism
    # (torch's gather kernels); the hash call is single-threaded.
    return HostPlacement(False, False, compute, 1)


@dataclass(frozen=True)
class LayerFetch:
    """One offloaded layer's lookup for one step (floats or arrays). ``rows``: rows that leave
    the tier (after de-duplication and the device cache), ``bytes`` theirs, ``disk_rows`` the
    ones read from NVMe, ``lookups`` rows requested (before de-duplication). Stage seconds,
    each alone on its resource: ``overhead_s`` (host), ``disk_s``, ``gather_s`` (host cores,
    at ``gather_rate``), ``copy_s`` (link, ``copy_mode``)."""

    layer: int
    tier: str
    rows: Number
    bytes: Number
    disk_rows: Number
    lookups: Number
    table_bytes: float
    overhead_s: Number
    disk_s: Number
    gather_s: Number
    gather_rate: Number
    copy_s: Number
    copy_mode: str  # pinned | pageable | uva | none (a CPU device)
    regime: str

    def scalars(self) -> "LayerFetch":
        """The same lookup with plain floats (the simulator's one configuration)."""
        return LayerFetch(**{k: (float(v) if isinstance(v, (np.ndarray, np.floating)) else v)
                             for k, v in self.__dict__.items()})

    @property
    def host_s(self) -> Number:
        """Seconds the lookup holds its host cores (overhead + gather)."""
        return self.overhead_s + self.gather_s

    @property
    def alone_s(self) -> Number:
        """The whole lookup, stage after stage, alone on the node (the on-demand wait)."""
        return self.overhead_s + self.disk_s + self.gather_s + self.copy_s


def copy_mode(cost: CostModel, placement: EngramPlacement) -> str:
    """How gathered rows reach the device: ``none`` where they land in device-usable memory (a
    CPU device; one memory pool, ``link.kind: unified``, where even ``host_mode: uva`` has no
    link to read over), ``uva``, ``pinned`` or ``pageable`` copies."""
    if cost.hardware.device.kind == "cpu" or cost.hardware.unified:
        return "none"
    if placement.host_mode == "uva":
        return "uva"
    return "pinned" if placement.pinned else "pageable"


def layer_fetch(cost: CostModel, placement: EngramPlacement, traffic: NgramTraffic, layer: int, tokens: Number,
                host: HostPlacement, cache_fraction: Number | None = None, devices_sharing_dram: int = 1,
                table_bytes: Number | None = None) -> LayerFetch:
    """Layer ``layer``'s lookup for a step of ``tokens`` tokens. ``devices_sharing_dram``: the
    analytic estimator's static split of DRAM and NVMe over devices fetching in lockstep (the
    simulator shares them dynamically and passes 1). ``table_bytes`` overrides the table's size
    (the analytic estimator's table sweeps)."""
    p = placement
    f = p.cache_fraction if cache_fraction is None else cache_fraction
    tier = p.tier_of(layer)
    rows = traffic.rows_fetched(tokens, f, p.dedup)
    lookups = np.asarray(tokens, float) * traffic.rows_per_token
    nbytes = rows * cost.row_bytes
    disk_rows, disk_s = 0.0 * rows, 0.0 * rows
    if tier == "disk":
        # The DRAM page cache holds the next-hottest rows after the device cache.
        hit_dev = traffic.hit_rate(f)
        hit_both = traffic.hit_rate(np.minimum(1.0, np.asarray(f) + p.host_cache_fraction))
        in_dram = np.where(hit_dev < 1, (hit_both - hit_dev) / np.maximum(1 - hit_dev, 1e-300), 1.0)
        # Device cache and DRAM together holding every row serve every read, whatever the hit-rate
        # curve says at fraction 1 (a measured curve stops at its held-out reuse ceiling: reads of
        # rows its static cache never counted, which a page cache of the whole file still holds).
        in_dram = np.where(np.asarray(f) + p.host_cache_fraction >= 1.0, 1.0, in_dram)
        disk_rows = rows * (1.0 - in_dram)
        disk_s = cost.nvme_read(disk_rows, cost.row_bytes, p.disk_read, p.disk_queue_depth,
                                share=1.0 / devices_sharing_dram)
    table = cost.table_bytes(layer) if table_bytes is None else table_bytes
    mode = copy_mode(cost, p)
    rate = np.minimum(cost.gather_rate(host.cores, table, p.huge_pages),
                      cost.host_dram_rate() / devices_sharing_dram)
    gather_s = 0.0 * rows if mode == "uva" else nbytes / rate
    copy_s = 0.0 * rows if mode == "none" else cost.transfer(nbytes, "h2d", "uva" if mode == "uva" else mode)
    cached = (np.asarray(f) > 0) & (tier != "device")  # the store builds a cache for offloaded tiers only
    overhead = cost.lookup_overhead(lookups, cached) if mode != "uva" else 0.0 * rows
    return LayerFetch(layer, tier, rows, nbytes, disk_rows, lookups, float(np.max(table)), overhead, disk_s,
                      gather_s, rate, copy_s, mode, cost.gather_regime(float(np.max(table)), p.huge_pages))


def hash_s(cost: CostModel, tokens: Number, host: HostPlacement) -> Number:
    """Seconds to hash a step's ids (every Engram layer's) where ``host`` says."""
    return cost.hash(tokens, host.hash_cores)
