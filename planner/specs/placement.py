"""Where Engram tables live and how their rows reach the device."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from planner.specs.base import Spec

Tier = Literal["device", "host", "disk"]


class EngramPlacement(Spec):
    """Placement of the Engram tables.

    * ``tier``: ``device`` (accelerator memory: the baseline), ``host`` (host DRAM, pinned on
      CUDA), ``disk`` (memory-mapped file on NVMe). ``layer_tiers`` overrides it per layer id.
    * ``cache_fraction``: share of each offloaded table's rows kept hot on the device (the most
      frequent n-grams, so the hit rate is far above this fraction under Zipfian traffic).
    * ``prefetch``: start fetching a step's rows as soon as its token ids are known, so the
      transfer overlaps the blocks before the Engram layer; off = fetch when the layer runs.
    * ``dedup``: fetch each distinct row of a step once.
    * ``host_mode``: ``staged`` = CPU gathers rows into a pinned buffer, one DMA copy;
      ``uva`` = GPU kernels read rows straight from mapped pinned host memory.
    * ``host_cache_fraction``: for the disk tier, share of rows served from DRAM (page cache).
    * ``huge_pages``: host-tier tables on 2 MiB pages (transparent huge pages, ``madvise``), so
      a random row of a table far beyond the TLB's reach costs no page walk; off = 4 KiB pages.
    * ``host_copies``: ``shared`` = one copy of the host-tier tables per node, mapped by every
      replica (vLLM's ``dp_shared_memory``, SGLang's ``replication: per_node``); ``per_replica`` =
      each data-parallel replica (device, or tensor-parallel group) keeps its own, and host memory
      counts them all.
    """

    tier: Tier = "device"
    layer_tiers: dict[int, Tier] = Field(default_factory=dict)
    cache_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    cache_policy: Literal["static", "lru"] = "static"
    prefetch: bool = True
    dedup: bool = True
    host_mode: Literal["staged", "uva"] = "staged"
    pinned: bool = True
    host_cache_fraction: Annotated[float, Field(ge=0, le=1)] = 0.0
    huge_pages: bool = False
    host_copies: Literal["shared", "per_replica"] = "shared"

    def tier_of(self, layer_id: int) -> Tier:
        return self.layer_tiers.get(layer_id, self.tier)

    def any_offloaded(self, layer_ids: list[int]) -> bool:
        return any(self.tier_of(layer) != "device" for layer in layer_ids)
