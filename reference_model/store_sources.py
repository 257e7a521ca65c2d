"""Row sources: the memory one Engram table lives in, and how rows are read out of it.

A row source holds one Engram layer's fused table (``sum(primes)`` rows of ``d_head``,
ENGRAM.md section 2.5) somewhere, and copies the rows named by global row ids into a buffer:

* :class:`DenseRows`: a tensor in accelerator memory (the ``device`` tier) or in host RAM
  (the ``host`` tier; page-locked on CUDA so copies from it are true DMA transfers);
* :class:`reference_model.store_disk.DiskRows`: a file on the ``disk`` tier (tables larger than
  RAM), read with ``pread`` (pre-staged) or through a mapping (faults in the forward);
* :class:`LazyRows`: no storage at all; each row is generated from ``(seed, layer, row id)``
  by a counter-based hash every time it is read, so the geometry of a table far larger than
  this machine (100B parameters, 200 GB in bf16) can be exercised.

Legend: R = rows of the table, D = row width (``d_head``), N = row ids of one request.
Row ids are global: head index plus the head's offset into the fused table.
"""

from __future__ import annotations

import math

import torch

# ----------------------------------------------------------------------------- splitmix64

# SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
# OOPSLA 2014; constants of Vigna's public-domain splitmix64.c). Written as signed int64 because
# torch has no uint64 arithmetic: multiplication wraps modulo 2**64 either way, and the right
# shifts below are made logical by masking off the sign-extended bits.
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_MIX1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_MIX2 = 0x94D049BB133111EB - (1 << 64)


def _lsr(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's ``>>`` is arithmetic)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def splitmix64_mix(z: torch.Tensor) -> torch.Tensor:
    """The SplitMix64 output function on int64 tensors (bit pattern = the uint64 result)."""
    z = (z ^ _lsr(z, 30)) * _MIX1
    z = (z ^ _lsr(z, 27)) * _MIX2
    return z ^ _lsr(z, 31)


def _to_signed(x: int) -> int:
    x &= (1 << 64) - 1
    return x - (1 << 64) if x >= 1 << 63 else x


def lazy_stream_key(seed: int, layer_id: int) -> int:
    """Per-(seed, layer) key of :class:`LazyRows`: one scalar SplitMix64 step over both."""
    z = torch.tensor([_to_signed(seed * 0x100000001B3 + layer_id * 0x9E3779B1 + 1)])
    return int(splitmix64_mix(z)[0])


# ----------------------------------------------------------------------------- sources


class RowSource:
    """One layer's table in one tier: ``gather(ids_N, out_ND)`` copies rows ``ids_N``.

    ``ids_N`` lives where :attr:`gather_device` says (the CPU for host, disk and CPU-side lazy
    sources) and ``out_ND`` too. Subclasses state what they simplify.
    """

    tier: str = "host"
    # What a read of this source is, for people (store summaries, bench output) and the trace
    # track its host-side gathers go on.
    label: str = "host DRAM"
    gather_track: str = "host_gather"

    def __init__(self, num_rows: int, d_head: int, dtype: torch.dtype):
        if num_rows <= 0 or d_head <= 0:
            raise ValueError(f"a table needs rows and width > 0, got {num_rows} x {d_head}")
        self.num_rows, self.d_head, self.dtype = int(num_rows), int(d_head), dtype

    @property
    def gather_device(self) -> torch.device:
        return torch.device("cpu")

    @property
    def row_bytes(self) -> int:
        return self.d_head * torch.empty((), dtype=self.dtype).element_size()

    @property
    def resident_bytes(self) -> int:
        """Bytes this source holds in memory (0 for mapped files and generated rows)."""
        return 0

    def gather(self, ids_N: torch.Tensor, out_ND: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class DenseRows(RowSource):
    """A table held whole in one memory: device memory (tier ``device``) or host RAM (tier
    ``host``). ``pin=True`` page-locks a host table on CUDA: copies from pageable memory are
    staged by the driver through a bounce buffer and return only when done (CUDA runtime docs,
    "API synchronization behavior"), which would serialise every transfer with the host thread.
    Simplification: one NUMA node; the table is not interleaved across sockets."""

    def __init__(self, weight_RD: torch.Tensor, tier: str = "host", *, pin: bool = True):
        if weight_RD.dim() != 2:
            raise ValueError(f"a table is [rows, d_head], got shape {tuple(weight_RD.shape)}")
        super().__init__(weight_RD.shape[0], weight_RD.shape[1], weight_RD.dtype)
        if tier not in ("device", "host"):
            raise ValueError(f"DenseRows holds the device or host tier, got {tier!r}")
        self.tier = tier
        self.label = "device memory" if tier == "device" else "host DRAM"
        weight_RD = weight_RD.detach()
        if tier == "host" and weight_RD.is_cuda:
            weight_RD = weight_RD.cpu()
        if tier == "host" and pin and torch.cuda.is_available() and not weight_RD.is_pinned():
            pinned = torch.empty(weight_RD.shape, dtype=weight_RD.dtype, pin_memory=True)
            pinned.copy_(weight_RD)
            weight_RD = pinned
        self.weight_RD = weight_RD.contiguous()

    @property
    def gather_device(self) -> torch.device:
        return self.weight_RD.device

    @property
    def resident_bytes(self) -> int:
        return self.weight_RD.numel() * self.weight_RD.element_size()

    def gather(self, ids_N: torch.Tensor, out_ND: torch.Tensor) -> torch.Tensor:
        # index_select with out= writes straight into the (pinned) staging buffer: one pass
        # over the rows, no temporary.
        return torch.index_select(self.weight_RD, 0, ids_N, out=out_ND)


class LazyRows(RowSource):
    """A table that stores nothing: element ``(r, c)`` is a uniform draw in ``[-a, a]``,
    ``a = init_std * sqrt(3)`` (so its standard deviation is ``init_std``), computed from
    ``splitmix64(key(seed, layer) + (r * D + c + 1) * golden)``, the counter-based form of
    SplitMix64. Rows are generated on every touch, identically each time, on
    ``device`` (CPU: a host-tier stand-in; CUDA device: a device-tier stand-in).

    Simplifications: rows are read-only (a trained table would need its touched rows kept, e.g.
    in a sparse store); the values are a plausible initialisation, not trained weights. The cost
    of generating a row (about a dozen integer operations per element) stands in for the cost
    of reading it, which is close to DRAM speed on a CPU and not a model of an SSD.
    """

    def __init__(self, num_rows: int, d_head: int, dtype: torch.dtype, *, seed: int, layer_id: int,
                 init_std: float = 1.0, device: str | torch.device = "cpu", tier: str = "host"):
        super().__init__(num_rows, d_head, dtype)
        if not (init_std > 0 and math.isfinite(init_std)):
            raise ValueError(f"init_std must be a positive number, got {init_std}")
        if num_rows * d_head >= 1 << 62:
            raise ValueError(f"{num_rows} x {d_head} elements overflow the 64-bit counter")
        self.seed, self.layer_id, self.init_std = int(seed), int(layer_id), float(init_std)
        self.tier = tier  # the tier it stands in for (routing: offloaded or not); nothing is stored there
        self.label = f"generated ({tier}-tier stand-in: rows computed from the seed, not read from memory)"
        self.device = torch.device(device)
        self.gather_track = "host_generate" if self.device.type == "cpu" else "compute"
        self.key = lazy_stream_key(self.seed, self.layer_id)
        self._bound = init_std * math.sqrt(3.0)
        self._cols = torch.arange(1, d_head + 1, dtype=torch.int64, device=self.device)

    @property
    def gather_device(self) -> torch.device:
        return self.device

    def rows(self, ids_N: torch.Tensor) -> torch.Tensor:
        """Generate rows ``ids_N`` as a fresh ``[N, D]`` tensor."""
        counter = ids_N.to(torch.int64)[:, None] * self.d_head + self._cols  # [N, D]
        z = splitmix64_mix(counter * _GOLDEN + self.key)
        # Top 24 bits -> a float32 in [0, 1) exactly, then centre: (2u - 1 + 2**-24) is
        # symmetric about 0 and exact in float32.
        u = _lsr(z, 40).to(torch.float32) * (2.0**-24)
        return ((u * 2.0 - (1.0 - 2.0**-24)) * self._bound).to(self.dtype)

    def gather(self, ids_N: torch.Tensor, out_ND: torch.Tensor, chunk_rows: int = 1 << 14) -> torch.Tensor:
        # Chunks bound the int64 temporaries (8 x D bytes each per row).
        for start in range(0, ids_N.shape[0], chunk_rows):
            out_ND[start : start + chunk_rows] = self.rows(ids_N[start : start + chunk_rows])
        return out_ND

    def materialize(self, chunk_rows: int = 1 << 16) -> torch.Tensor:
        """The whole table as one tensor (small geometries only: tests, device baselines)."""
        out = torch.empty(self.num_rows, self.d_head, dtype=self.dtype, device=self.device)
        ids = torch.arange(self.num_rows, device=self.device)
        return self.gather(ids, out, chunk_rows)
