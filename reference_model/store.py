"""The Engram table store: one interface from a step's global row ids to rows on the device,
whichever tier each layer's table lives in (``EngramPlacement.tier_of(layer)``).

A lookup for one layer and one step runs four stages; :mod:`reference_model.prefetch` decides
on which thread and stream each runs, this module what each does:

1. ``plan`` (host): flatten the ``[B, T, K]`` ids, de-duplicate them (``torch.unique`` with
   the inverse map), ask the hot-row cache which are resident, list the misses to fetch;
2. ``stage`` (host): gather the missed rows from the tier into a staging buffer, pinned on
   CUDA (``index_select(..., out=staging)``);
3. ``transfer`` (copy engine): one ``non_blocking`` host-to-device copy of the staged rows and
   of the packed index arrays; in ``uva`` mode the GPU instead gathers straight from the
   mapped pinned table and stage 2 is skipped;
4. ``assemble`` (device): place the fetched rows and the cache hits, insert misses into an
   LRU cache, expand the de-duplicated rows back to ``[B, T, K, D]``.

Every stage only copies values, so the rows are bit-identical to a device-resident table's.
On a machine without CUDA the "device" is host memory: stage 3 is skipped and the host and
device tiers differ only by the extra work of stages 1 and 4; the disk and lazy sources are
where a CPU run sees a real difference.

Legend: B = batch, T = positions, K = rows per token, D = row width, N = B*T*K ids,
U = distinct ids (N when de-duplication is off), H = cache hits, M = rows fetched from the
tier, I = rows inserted into the cache.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from planner.accounting import engram_table_rows
from planner.specs.model import ModelSpec
from planner.specs.placement import EngramPlacement
from reference_model.layers import INIT_STD, torch_dtype
from reference_model.store_cache import LRURowCache, RowCache, StaticRowCache
from reference_model.store_disk import MAX_QUEUE_DEPTH, DiskRows
from reference_model.store_sources import DenseRows, LazyRows, RowSource


def _null_tracer(name: str, track: str):
    return contextlib.nullcontext()


@dataclass
class LookupStats:
    """Counts of one layer's lookups, summed over steps. ``hits`` are counted per requested row
    (a token's read), so ``hit_rate`` is the share of reads served from the device cache;
    ``bytes_moved`` are the bytes read from the offloaded tier (over PCIe on a GPU)."""

    steps: int = 0
    requested_rows: int = 0
    unique_rows: int = 0
    cache_hits: int = 0
    fetched_rows: int = 0
    bytes_moved: int = 0

    def add(self, other: "LookupStats") -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def hit_rate(self) -> float:
        return self.cache_hits / self.requested_rows if self.requested_rows else 0.0

    def as_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in self.__dataclass_fields__}, "hit_rate": self.hit_rate}


@dataclass
class LookupPlan:
    """Host-side decisions for one lookup (stage 1). ``index`` packs every index array the
    device needs into one int64 tensor so it crosses the link in one copy."""

    shape: tuple[int, ...]
    fetch_ids_M: torch.Tensor
    index: torch.Tensor
    sizes: dict[str, int]
    stats: LookupStats = field(default_factory=LookupStats)

    def split(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        return dict(zip(self.sizes, torch.split(index, list(self.sizes.values()))))


class LayerStore:
    """One Engram layer's table in its tier, with its optional device cache.

    ``source`` holds the table; ``cache`` (offloaded tiers only) keeps hot rows on ``device``;
    ``dedup`` fetches each distinct row of a step once; ``uva`` makes the GPU read rows from
    the mapped pinned table. Device-tier layers are a plain ``index_select`` on the table: the
    baseline, with no cache and no de-duplication.
    """

    def __init__(self, layer_id: int, source: RowSource, *, device: torch.device | str = "cpu",
                 cache: RowCache | None = None, dedup: bool = True, uva: bool = False):
        self.layer_id, self.source = layer_id, source
        self.device = torch.device(device)
        self.tier = source.tier
        self.cache = cache if self.tier != "device" else None
        self.dedup = dedup and self.tier != "device"
        self.cuda = self.device.type == "cuda"
        self.uva_RD = None
        self.host_mode, self.host_mode_note = "staged", ""
        if uva and self.tier == "host":
            self._try_uva()
        self.stats = LookupStats()
        self._slots = [_PinnedSlot(), _PinnedSlot()]  # double-buffered staging (CUDA only)
        self._next_slot = 0
        self._rings: dict[str, list] = {}

    def _try_uva(self) -> None:
        """Switch to UVA reads if this machine and source allow it; else say why not."""
        if not self.cuda:
            self.host_mode_note = "uva needs a CUDA device: staged copies used"
            return
        if not isinstance(self.source, DenseRows):
            self.host_mode_note = f"uva needs a pinned dense table, not {type(self.source).__name__}: staged"
            return
        from reference_model.store_uva import uva_view

        try:
            self.uva_RD = uva_view(self.source.weight_RD, self.device.index)
            self.host_mode = "uva"
        except RuntimeError as exc:
            self.host_mode_note = f"uva unavailable ({exc}): staged copies used"

    def _out(self, name: str, n_rows: int, device: torch.device) -> torch.Tensor:
        """An ``[n_rows, D]`` output buffer. On CUDA a fresh tensor (the caching allocator
        reuses blocks, and ``record_stream`` guards cross-stream use). On the CPU, the next of
        two reused buffers per name: fresh large CPU allocations are returned to the OS when
        freed and fault their pages back in on the next use (measured here: about 8 ms per
        1.3 MB on a virtual machine, more than the gather itself). So CPU rows returned by a
        lookup stay valid until the second-next lookup of this layer; clone them to keep."""
        if device.type != "cpu":
            return torch.empty(n_rows, self.d_head, dtype=self.source.dtype, device=device)
        ring = self._rings.setdefault(name, [None, None, 0])
        ring[2] ^= 1
        buf = ring[ring[2]]
        if buf is None or buf.numel() < n_rows * self.d_head:
            buf = ring[ring[2]] = torch.empty(_pow2(n_rows * self.d_head), dtype=self.source.dtype)
        return buf[: n_rows * self.d_head].view(n_rows, self.d_head)

    @property
    def d_head(self) -> int:
        return self.source.d_head

    @property
    def needs_fetch(self) -> bool:
        """Whether lookups go through the plan/stage/transfer pipeline (offloaded tiers)."""
        return self.tier != "device"

    # ----------------------------------------------------------------- the whole lookup

    def lookup(self, ids_BTK: torch.Tensor, tracer=None, stream=None, after=None) -> torch.Tensor:
        """Rows ``[B, T, K, D]`` on the device for global row ids ``ids_BTK``, the four stages in
        order on the calling thread: plan and stage (host work, span ``gather_L{i}``), then
        transfer and assemble (device work, span ``h2d_L{i}``; on a CPU-only machine the copy
        into the output) on ``stream`` (default the current one), which first waits for the
        CUDA event ``after`` when given (the prefetch worker's "compute has enqueued this
        step"). The one lookup path: on demand, prefetched and baseline alike."""
        tracer = tracer or _null_tracer
        i = self.layer_id
        if not self.needs_fetch:
            with tracer(f"gather_L{i}", "compute"):
                return self._device_gather(ids_BTK)
        with tracer(f"gather_L{i}", self.source.gather_track):
            plan = self.plan(ids_BTK)
            staged = self.stage(plan)
        with contextlib.ExitStack() as ctx:
            if stream is not None:
                ctx.enter_context(torch.cuda.stream(stream))
                if after is not None:
                    stream.wait_event(after)
            with tracer(f"h2d_L{i}", "h2d"):
                fetched, index = self.transfer(plan, staged)
                return self.assemble(plan, fetched, index)

    def _device_gather(self, ids_BTK: torch.Tensor) -> torch.Tensor:
        ids_N = ids_BTK.reshape(-1).to(self.source.gather_device, torch.int64)
        out = self._out("device", ids_N.shape[0], self.source.gather_device)
        self.source.gather(ids_N, out)
        self.stats.add(LookupStats(1, ids_N.shape[0], ids_N.shape[0], 0, 0, 0))
        return out.view(*ids_BTK.shape, self.d_head)

    # ----------------------------------------------------------------- stages

    def plan(self, ids_BTK: torch.Tensor) -> LookupPlan:
        """Stage 1 (host): de-duplicate, consult the cache, list what to fetch."""
        if ids_BTK.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"row ids must be integers, got {ids_BTK.dtype}")
        ids_N = ids_BTK.reshape(-1).to("cpu", torch.int64)
        if ids_N.numel() and (int(ids_N.min()) < 0 or int(ids_N.max()) >= self.source.num_rows):
            raise ValueError(
                f"layer {self.layer_id}: row ids span [{int(ids_N.min())}, {int(ids_N.max())}] "
                f"but the table has {self.source.num_rows} rows"
            )
        n = ids_N.shape[0]
        parts: dict[str, torch.Tensor] = {}
        if self.dedup:
            uniq_U, parts["inverse"] = torch.unique(ids_N, return_inverse=True)
        else:
            uniq_U = ids_N
        hits = 0
        if self.cache is not None and self.cache.capacity:
            hit_U, slot_U = self.cache.lookup(uniq_U)
            hit_pos = hit_U.nonzero().squeeze(1)
            miss_pos = (~hit_U).nonzero().squeeze(1)
            fetch_ids = uniq_U[miss_pos]
            parts.update(hit_pos=hit_pos, hit_slot=slot_U[hit_pos], miss_pos=miss_pos)
            hits = int(hit_U[parts["inverse"]].sum()) if self.dedup else int(hit_U.sum())
            if isinstance(self.cache, LRURowCache):
                # Insert each distinct missed row once (misses repeat when dedup is off).
                distinct, first = _first_occurrence(fetch_ids)
                slots, which = self.cache.plan_insert(distinct)
                parts.update(insert_slot=slots, insert_from=first[which])
        else:
            fetch_ids = uniq_U
        if self.uva_RD is not None:
            parts["fetch_ids"] = fetch_ids
        m = fetch_ids.shape[0]
        stats = LookupStats(1, n, uniq_U.shape[0], hits, m, m * self.source.row_bytes)
        self.stats.add(stats)
        index = torch.cat(list(parts.values())) if parts else torch.empty(0, dtype=torch.int64)
        return LookupPlan(tuple(ids_BTK.shape), fetch_ids, index, {k: v.numel() for k, v in parts.items()}, stats)

    def stage(self, plan: LookupPlan) -> "Staged":
        """Stage 2 (host): gather the rows to fetch into staging (pinned on CUDA). Returns the
        :class:`Staged` handle that :meth:`transfer` consumes: the staged ``[M, D]`` rows (None
        in UVA mode, where the GPU gathers them itself) and, on CUDA, the pinned index and the
        staging slot they live in."""
        m, d = plan.fetch_ids_M.shape[0], self.d_head
        if not self.cuda:
            # CPU: no copy engine; the staging buffer feeds assembly (or is the output).
            out = self._out("staged", m, self.source.gather_device)
            return Staged(self.source.gather(plan.fetch_ids_M.to(self.source.gather_device), out), plan.index)
        slot = self._slots[self._next_slot]
        self._next_slot ^= 1
        rows_buf, idx_buf = slot.take(0 if self.uva_RD is not None else m * d, plan.index.numel(), self.source.dtype)
        index = idx_buf[: plan.index.numel()]
        index.copy_(plan.index)
        if self.uva_RD is not None:
            return Staged(None, index, slot)
        rows = rows_buf[: m * d].view(m, d)
        self.source.gather(plan.fetch_ids_M, rows)
        return Staged(rows, index, slot)

    def transfer(self, plan: LookupPlan, staged: "Staged") -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 3 (copy engine), on the current stream: move staged rows and the index arrays
        to the device with ``non_blocking`` copies from pinned memory, asynchronous with respect
        to the host (from pageable memory the driver would stage the copy through a bounce
        buffer and return only when it is done). UVA: the GPU gathers over the link instead.
        The slot the rows were staged in records the copy's event: it is reused only after."""
        if not self.cuda:
            return staged.rows, staged.index
        index = staged.index.to(self.device, non_blocking=True)
        if staged.rows is None:
            fetched = torch.index_select(self.uva_RD, 0, plan.split(index)["fetch_ids"])
        else:
            fetched = staged.rows.to(self.device, non_blocking=True)
        staged.slot.copied()
        return fetched, index

    def assemble(self, plan: LookupPlan, fetched_MD: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Stage 4 (device): rows ``[B, T, K, D]`` from fetched rows and cache hits."""
        idx = plan.split(index)
        if "miss_pos" in idx:
            out_UD = self._out("unique", plan.stats.unique_rows, fetched_MD.device)
            out_UD[idx["miss_pos"]] = fetched_MD
            out_UD[idx["hit_pos"]] = self.cache.rows_CD[idx["hit_slot"]]
            if "insert_slot" in idx:
                self.cache.rows_CD[idx["insert_slot"]] = fetched_MD[idx["insert_from"]]
        else:
            out_UD = fetched_MD
        if "inverse" in idx:
            rows_ND = self._out("rows", idx["inverse"].shape[0], out_UD.device)
            torch.index_select(out_UD, 0, idx["inverse"], out=rows_ND)
        else:
            rows_ND = out_UD
        return rows_ND.view(*plan.shape, self.d_head)


@dataclass
class Staged:
    """What :meth:`LayerStore.stage` hands :meth:`LayerStore.transfer`: the staged rows
    ``[M, D]`` (None in UVA mode), the plan's index arrays (pinned on CUDA) and, on CUDA, the
    staging slot both live in (None on a CPU)."""

    rows: torch.Tensor | None
    index: torch.Tensor
    slot: "_PinnedSlot | None" = None


class _PinnedSlot:
    """One of a layer's two pinned (rows, index) staging buffers (double buffering): the host
    fills one while the copy engine may still read the other. :meth:`take` waits for the copy
    that last read this slot (normally finished a whole step ago; the wait is on the host thread
    doing the gather, never on the compute stream); :meth:`copied` records that copy."""

    def __init__(self):
        self.rows: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.event = None

    def take(self, n_rows_elems: int, n_index: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        if self.event is not None:
            self.event.synchronize()
            self.event = None
        if self.rows is None or self.rows.numel() < n_rows_elems:
            self.rows = torch.empty(_pow2(n_rows_elems), dtype=dtype, pin_memory=True)
        if self.index is None or self.index.numel() < n_index:
            self.index = torch.empty(_pow2(n_index), dtype=torch.int64, pin_memory=True)
        return self.rows, self.index

    def copied(self) -> None:
        """The copies out of this slot are enqueued on the current stream: mark their end."""
        self.event = torch.cuda.Event()
        self.event.record()


def _pow2(n: int) -> int:
    """Staging sizes grow in powers of two so a growing batch reallocates rarely."""
    return 1 << max(n - 1, 1).bit_length()


def _first_occurrence(ids_M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct values of ``ids_M`` and the position of each one's first occurrence."""
    distinct, inverse = torch.unique(ids_M, return_inverse=True)
    first = torch.full((distinct.shape[0],), ids_M.shape[0], dtype=torch.int64)
    first.scatter_reduce_(0, inverse, torch.arange(ids_M.shape[0]), reduce="amin")
    return distinct, first


class EngramTableStore:
    """Every Engram layer's :class:`LayerStore`, built from a model spec and a placement.

    ``tables`` gives each layer's ``[rows, d_head]`` values (e.g. a trained model's
    ``table.weight``); without it the tables are :class:`LazyRows` generated from the spec's
    seed. ``hot_rows[layer] = (row_ids, counts)`` feeds the static cache (see
    :func:`reference_model.ngram_stats.row_counts`). Disk-tier tables are written under
    ``disk_dir`` and read as ``placement.disk_read`` says (:mod:`reference_model.store_disk`).
    """

    def __init__(self, layers: dict[int, LayerStore]):
        self.layers = layers

    @classmethod
    def build(cls, spec: ModelSpec, placement: EngramPlacement, *, device: str | torch.device = "cpu",
              tables: dict[int, torch.Tensor] | None = None, hot_rows: dict | None = None,
              disk_dir: str | Path | None = None, lazy_init_std: float = INIT_STD,
              lru_ways: int = 8) -> "EngramTableStore":
        if spec.engram is None:
            raise ValueError(f"model {spec.name!r} has no Engram layers: nothing to store")
        e, device = spec.engram, torch.device(device)
        dtype = torch_dtype(e.dtype, "engram.dtype")
        rows = engram_table_rows(spec)
        layers = {}
        for layer in e.layer_ids:
            tier = placement.tier_of(layer)
            if tables is not None:
                if layer not in tables:
                    raise ValueError(f"tables has no entry for Engram layer {layer}")
                weight = tables[layer]
                if tuple(weight.shape) != (rows[layer], e.d_head):
                    raise ValueError(
                        f"layer {layer}: table shape {tuple(weight.shape)} but the spec needs "
                        f"({rows[layer]}, {e.d_head})"
                    )
                source = _dense_source(layer, weight, tier, device, placement, disk_dir)
            else:
                if tier == "disk":
                    raise ValueError(
                        f"layer {layer}: a lazy table generates its rows and has no file; "
                        "use tier host (CPU generation) or device, or pass tables"
                    )
                gen_device = device if tier == "device" else torch.device("cpu")
                source = LazyRows(rows[layer], e.d_head, dtype, seed=e.seed, layer_id=layer,
                                  init_std=lazy_init_std, device=gen_device, tier=tier)
            cache = _make_cache(layer, source, placement, hot_rows, device, lru_ways)
            layers[layer] = LayerStore(layer, source, device=device, cache=cache, dedup=placement.dedup,
                                       uva=placement.host_mode == "uva")
        return cls(layers)

    def describe(self) -> list[str]:
        """Where each layer's rows come from, in words: a generated stand-in says so (its tier
        is only where it stands in; nothing is read from that memory)."""
        out = []
        for layer, store in sorted(self.layers.items()):
            cache = f", {store.cache.capacity:,}-row device cache" if store.cache is not None else ""
            out.append(f"layer {layer}: {store.tier} tier, {store.source.label}{cache}")
        return out

    def lookup(self, layer_id: int, ids_BTK: torch.Tensor, tracer=None) -> torch.Tensor:
        """Rows for one layer, synchronously (the one-call interface)."""
        if layer_id not in self.layers:
            raise ValueError(f"no Engram table for layer {layer_id}; layers are {sorted(self.layers)}")
        return self.layers[layer_id].lookup(ids_BTK, tracer)

    def stats(self) -> dict[int, LookupStats]:
        return {layer: store.stats for layer, store in self.layers.items()}

    def reset_stats(self) -> None:
        for store in self.layers.values():
            store.stats = LookupStats()


def _dense_source(layer, weight, tier, device, placement, disk_dir) -> RowSource:
    if tier == "device":
        return DenseRows(weight.to(device), "device")
    if tier == "host":
        return DenseRows(weight, "host", pin=placement.pinned)
    if disk_dir is None:
        raise ValueError(f"layer {layer} is on the disk tier: pass disk_dir for its table file")
    if placement.disk_read == "pread" and placement.disk_queue_depth > MAX_QUEUE_DEPTH:
        raise ValueError(f"placement.disk_queue_depth = {placement.disk_queue_depth}: the reference model reads with "
                         f"one thread per read in flight, at most {MAX_QUEUE_DEPTH} (the simulator takes any depth)")
    return DiskRows.write(Path(disk_dir) / f"engram_table_L{layer}.bin", weight, read=placement.disk_read,
                          queue_depth=placement.disk_queue_depth)


def _make_cache(layer, source, placement, hot_rows, device, lru_ways) -> RowCache | None:
    capacity = int(round(placement.cache_fraction * source.num_rows))
    if source.tier == "device" or capacity == 0:
        return None
    if placement.cache_policy == "lru":
        return LRURowCache(capacity, source.d_head, source.dtype, device, ways=lru_ways)
    if hot_rows is None or layer not in hot_rows:
        raise ValueError(
            f"layer {layer}: a static cache needs row frequencies (hot_rows[{layer}] = "
            "(row_ids, counts), see reference_model.ngram_stats.row_counts), or use cache_policy lru"
        )
    ids, counts = hot_rows[layer]
    return StaticRowCache.from_counts(source, torch.as_tensor(ids), torch.as_tensor(counts), capacity, device)
