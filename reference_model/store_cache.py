"""Hot-row caches: a few of an offloaded table's rows kept in device memory.

N-gram frequencies are Zipfian (ENGRAM.md section 5), so a small set of rows serves most
lookups. Two policies, both with the index (which row is where) on the host, because the host
decides what to gather before any device work is issued, and the rows on the device:

* :class:`StaticRowCache`: the ``C`` most frequent rows of a corpus run through the hasher
  (``reference_model.ngram_stats.row_counts``), fixed for the run;
* :class:`LRURowCache`: a W-way set-associative cache with least-recently-used replacement per
  set, the structure of hardware caches. W = C is a fully associative LRU; a small W keeps the
  lookup a vectorised ``[U, W]`` compare instead of a hash map.

Legend: C = cache slots, D = row width, U = distinct ids looked up in one step, M = misses,
S = sets, W = ways per set.
"""

from __future__ import annotations

import torch

from reference_model.store_sources import RowSource


class RowCache:
    """Interface: ``lookup(ids_U) -> (hit_U, slot_U)`` on the host, ``rows_CD`` on the device,
    ``plan_insert(miss_ids_M) -> (slots_I, miss_index_I)`` for rows to copy in after a fetch."""

    rows_CD: torch.Tensor

    @property
    def capacity(self) -> int:
        return self.rows_CD.shape[0]

    def lookup(self, ids_U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def plan_insert(self, miss_ids_M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        empty = torch.empty(0, dtype=torch.int64)
        return empty, empty


def _gather_to(source: RowSource, ids_N: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = torch.empty(ids_N.shape[0], source.d_head, dtype=source.dtype, device=source.gather_device)
    source.gather(ids_N.to(source.gather_device), out)
    return out.to(device)


def top_rows(row_ids: torch.Tensor, counts: torch.Tensor, capacity: int) -> torch.Tensor:
    """The ``capacity`` ids with the highest counts (ties: smaller id first), sorted by id.
    Counts of an id listed more than once are summed."""
    if row_ids.shape != counts.shape:
        raise ValueError(f"row_ids {tuple(row_ids.shape)} and counts {tuple(counts.shape)} differ")
    ids, inverse = torch.unique(row_ids, return_inverse=True)  # sorted by id
    total = torch.zeros(ids.shape[0], dtype=torch.float64).index_add_(0, inverse, counts.to(torch.float64))
    order = torch.argsort(total, descending=True, stable=True)
    return torch.sort(ids[order[:capacity]]).values


class StaticRowCache(RowCache):
    """The most frequent rows, chosen once. Lookup is a binary search (``searchsorted``) in
    the sorted cached ids: O(log C) per id and no memory per table row, which matters for a
    1.25e9-row table where a dense row-to-slot map would itself take 5 GB."""

    def __init__(self, ids_C: torch.Tensor, rows_CD: torch.Tensor):
        ids_C = ids_C.to("cpu", torch.int64)
        if ids_C.numel() and not bool((ids_C[1:] > ids_C[:-1]).all()):
            raise ValueError("cached ids must be sorted and distinct")
        if rows_CD.shape[0] != ids_C.shape[0]:
            raise ValueError(f"{ids_C.shape[0]} ids but {rows_CD.shape[0]} rows")
        self.ids_C, self.rows_CD = ids_C, rows_CD

    @classmethod
    def from_counts(cls, source: RowSource, row_ids: torch.Tensor, counts: torch.Tensor,
                    capacity: int, device: torch.device | str) -> "StaticRowCache":
        """Cache the ``capacity`` most counted rows (fewer if fewer were ever seen)."""
        if capacity < 0:
            raise ValueError(f"cache capacity must be >= 0, got {capacity}")
        if row_ids.numel() and (int(row_ids.min()) < 0 or int(row_ids.max()) >= source.num_rows):
            raise ValueError(f"counted row ids fall outside the table's {source.num_rows} rows")
        ids = top_rows(row_ids.cpu().to(torch.int64), counts.cpu(), capacity)
        return cls(ids, _gather_to(source, ids, torch.device(device)))

    def lookup(self, ids_U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.capacity == 0:
            return torch.zeros(ids_U.shape, dtype=torch.bool), torch.zeros_like(ids_U)
        slot = torch.searchsorted(self.ids_C, ids_U).clamp_(max=self.capacity - 1)
        return self.ids_C[slot] == ids_U, slot


class LRURowCache(RowCache):
    """W-way set-associative LRU over ``capacity`` slots (rounded up to whole sets).

    Row ``r`` may live only in set ``r mod S``; within a set the least recently used way is
    replaced. A slot used in the current step is never evicted in that step, so rows looked up
    as hits stay valid until the step's output is assembled. Simplification: a miss is inserted
    unconditionally (no admission filter), and if more rows of a set miss in one step than it
    has evictable ways, the extra ones are fetched but not cached."""

    def __init__(self, capacity: int, d_head: int, dtype: torch.dtype, device: torch.device | str,
                 ways: int = 8):
        if capacity <= 0 or ways <= 0:
            raise ValueError(f"an LRU cache needs capacity and ways > 0, got {capacity}, {ways}")
        self.ways = min(ways, capacity)
        self.num_sets = -(-capacity // self.ways)
        slots = self.num_sets * self.ways
        self.tags_SW = torch.full((self.num_sets, self.ways), -1, dtype=torch.int64)
        self.stamp_SW = torch.full((self.num_sets, self.ways), -1, dtype=torch.int64)
        self.rows_CD = torch.zeros(slots, d_head, dtype=dtype, device=device)
        self.clock = 0

    def lookup(self, ids_U: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.clock += 1
        sets = ids_U % self.num_sets
        match_UW = self.tags_SW[sets] == ids_U[:, None]
        hit = match_UW.any(1)
        way = match_UW.to(torch.int8).argmax(1)
        self.stamp_SW[sets[hit], way[hit]] = self.clock
        return hit, sets * self.ways + way

    def plan_insert(self, miss_ids_M: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Choose slots for this step's misses (distinct ids, the last lookup's clock)."""
        miss_index = torch.arange(miss_ids_M.shape[0])
        if miss_ids_M.numel() == 0:
            return miss_index, miss_index
        sets = miss_ids_M % self.num_sets
        # Rank of each miss among the misses of its set (0, 1, ...), by a stable sort on set.
        order = torch.argsort(sets, stable=True)
        sorted_sets = sets[order]
        first = torch.searchsorted(sorted_sets, sorted_sets, side="left")
        rank = torch.empty_like(order)
        rank[order] = torch.arange(order.shape[0]) - first
        # Ways of each miss's set from least to most recently used; skip ways used this step.
        stamps_MW = self.stamp_SW[sets]
        way_order = torch.argsort(stamps_MW, dim=1, stable=True)
        evictable = (stamps_MW < self.clock).sum(1)
        ok = rank < evictable
        way = way_order[ok].gather(1, rank[ok][:, None]).squeeze(1)
        sets_ok = sets[ok]
        self.tags_SW[sets_ok, way] = miss_ids_M[ok]
        self.stamp_SW[sets_ok, way] = self.clock
        return sets_ok * self.ways + way, miss_index[ok]
