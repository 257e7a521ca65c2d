"""The serving engine's step loop: the one place that drives an :class:`EngramModel` with a
row provider, step after step, the way an engine does.

    step (track engine):  hash ids -> provider.fetch -> forward (embed, blocks, head)
                          hash on the engine thread (prefetch off: on the critical path)
                          or on the provider's worker (prefetch on: overlapped with the
                          blocks before the first Engram layer)

Every measured run of the project goes through :class:`Engine`: ``engram-planner validate``
(:mod:`planner.validation.measure`), the op, hash and lookup spans ``calibrate`` fits
(:mod:`planner.calibration.measure_engine`), ``bench offload`` and
:meth:`EngramModel.generate` with a row provider. So the spans a calibration fits are timed
under the very conditions the runs it predicts have: the same threads, the same prefetch
worker, the same tracer, the same allocator state and the same cache state.

Cache state. A deployment's weights are far larger than the CPU's last-level cache, so every
step reads them from DRAM (on a GPU, from HBM). The small models the project measures on a CPU
(a few MB to a few tens of MB) would otherwise partly run out of the LLC, a regime no
deployment is in, and whose speed depends on what ran just before: measured on the 2-core CI
VM (32 MiB L3), the same validation run took 7.3 ms per step alone and 9.4 ms interleaved with
five others. ``evict_bytes`` streams through a buffer of that size before each step (outside
the step's span), so every step starts with the LLC holding none of the model: the regime the
cost model prices (weights read once per step from memory). Engines on a GPU leave it 0.

Legend: B = sequences, T = new positions per step, N = positions of a teacher-forced run.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

TRACK = "engine"


def _no_trace(name: str, track: str, **args):
    return nullcontext()


def llc_bytes() -> int | None:
    """Size of this CPU's largest cache (``/sys``), None where it cannot be read."""
    best = None
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            size = int(digits) * scale
            best = max(best or 0, size)
    return best


def default_evict_bytes(device: torch.device | str) -> int:
    """Bytes to stream through before each step: twice the LLC on a CPU device (0 on CUDA,
    where the model lives in device memory and the host LLC holds none of it)."""
    if torch.device(device).type != "cpu":
        return 0
    return 2 * (llc_bytes() or 32 << 20)


class Engine:
    """Drives ``model`` one engine step at a time (see the module docstring).

    ``provider``: a :class:`reference_model.prefetch.RowProvider` (None: the model gathers from
    its own tables and hashes for itself). ``tracer``: a ``tracer(name, track, **args)`` factory
    (:class:`reference_model.instrument.SpanRecorder`); the engine records ``step`` (track
    ``engine``) and passes the tracer to the model and the provider. ``evict_bytes``: see the
    module docstring.
    """

    def __init__(self, model, provider=None, *, tracer=None, evict_bytes: int = 0):
        self.model, self.provider = model, provider
        self.tracer = tracer or _no_trace
        self.cuda = model.device.type == "cuda"
        self._evict = np.ones(max(evict_bytes, 0) // 8) if evict_bytes > 0 else None
        self.steps = 0

    def set_tracer(self, tracer) -> None:
        self.tracer = tracer or _no_trace
        if self.provider is not None:
            self.provider.tracer = tracer

    def evict(self) -> None:
        """Stream through the eviction buffer (no-op without one)."""
        if self._evict is not None:
            self._evict.sum()

    def step(self, ids_BT: torch.Tensor, cache) -> torch.Tensor:
        """One engine step of new ids ``[B, T]`` continuing ``cache``; returns the logits of each
        sequence's last position, ``[B, 1, V]``."""
        model, trace = self.model, self.tracer
        self.evict()
        with trace("step", TRACK, step=self.steps, tokens=int(ids_BT.numel())):
            handles = self._fetch(ids_BT, cache) if self.provider is not None else None
            # Host ids in: the model moves them to its device and keeps the host copy for hashing.
            logits = model(ids_BT, engram_rows=handles, kv_cache=cache, tracer=trace, last_logits=True)
            if self.cuda:
                torch.cuda.synchronize()
        self.steps += 1
        return logits

    def _fetch(self, ids_BT: torch.Tensor, cache) -> dict:
        """The step's row handles. A :class:`RowProvider` places the hash itself (its worker with
        prefetch, this thread without); a provider with only ``fetch(row_ids)`` (the minimal
        contract) gets ids hashed here, on the engine thread."""
        if hasattr(self.provider, "fetch_tokens"):
            return self.provider.fetch_tokens(ids_BT, cache.recent_ids, self.model.host_row_ids)
        with self.tracer("hash", TRACK):
            row_ids = self.model.host_row_ids(ids_BT, cache.recent_ids)
        return self.provider.fetch(row_ids)

    def teacher_forced(self, ids_BN: torch.Tensor, prompt_len: int, cache=None) -> torch.Tensor:
        """A fixed-length batched generation fed from ``ids_BN``: one prefill step of the first
        ``prompt_len`` positions, then one decode step per remaining position (the next input is
        the corpus' next id, not the model's sample: the n-gram traffic is real text's). Returns
        the last step's logits."""
        B, N = ids_BN.shape
        if not 0 < prompt_len < N:
            raise ValueError(f"prompt_len must lie in [1, {N - 1}], got {prompt_len}")
        cache = cache if cache is not None else self.model.new_cache(B, N)
        logits = self.step(ids_BN[:, :prompt_len], cache)
        for pos in range(prompt_len, N - 1):
            logits = self.step(ids_BN[:, pos:pos + 1], cache)
        return logits
