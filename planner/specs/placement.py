"""Where Engram tables live and how their rows reach the device."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from planner.specs.base import Spec

Tier = Literal["device", "host", "disk"]


class EngramPlacement(Spec):
    """Placement of the Engram tables.

    * ``tier``: ``device`` (accelerator memory: the baseline), ``host`` (host DRAM, pinned on
      CUDA), ``disk`` (a file on NVMe, read as ``disk_read`` says). ``layer_tiers`` overrides it per layer id.
    * ``cache_fraction``: share of each offloaded table's rows kept hot on the device (the most
      frequent n-grams, so the hit rate is far above this fraction under Zipfian traffic).
    * ``prefetch``: start fetching a step's rows as soon as its token ids are known, so the
      transfer overlaps the blocks before the Engram layer; off = fetch when the layer runs.
    * ``dedup``: fetch each distinct row of a step once.
    * ``host_mode``: ``staged`` = CPU gathers rows into a pinned buffer, one DMA copy;
      ``uva`` = GPU kernels read rows straight from mapped pinned host memory.
    * ``host_cache_fraction``: for the disk tier, share of rows served from DRAM: the page cache
      in front of a mapped or buffered file, or an engine's own DRAM row cache in front of
      O_DIRECT reads (SGLang fork's ``SGLANG_DSV41_ENGRAM_RAM_GIB``).
    * ``huge_pages``: host-tier tables on 2 MiB pages (transparent huge pages, ``madvise``), so
      a random row of a table far beyond the TLB's reach costs no page walk; off = 4 KiB pages.
    * ``disk_read``: how disk-tier rows are read. ``pread`` = positional reads of the rows'
      pages into aligned buffers, ``disk_queue_depth`` of them in flight (O_DIRECT where the
      filesystem allows it, so the page cache is bypassed; the way an engine's io_uring or AIO
      reader pre-stages rows); ``mmap`` = the table file is mapped and the gather touches its
      pages, so each cold page is a synchronous page fault, one at a time per reading thread
      (vLLM's closed disk-offload PR #56757 maps one file per shard this way).
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
    disk_read: Literal["pread", "mmap"] = "pread"
    disk_queue_depth: Annotated[int, Field(ge=1, le=65536)] = 128

    def tier_of(self, layer_id: int) -> Tier:
        return self.layer_tiers.get(layer_id, self.tier)

    def any_offloaded(self, layer_ids: list[int]) -> bool:
        return any(self.tier_of(layer) != "device" for layer in layer_ids)
