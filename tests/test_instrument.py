"""reference_model.instrument.frozen_heap: the timed runs' collector and allocator scope."""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import weakref
from pathlib import Path

import pytest

pytest.importorskip("torch")

from reference_model.instrument import frozen_heap, keep_freed_memory  # noqa: E402


class _Node:
    pass


def _cycle():
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    return a


def test_frozen_heap_freezes_once_and_keeps_new_garbage_collectable():
    before = _cycle()
    assert gc.get_freeze_count() == 0
    with frozen_heap():
        frozen = gc.get_freeze_count()
        assert frozen > 0  # the live heap (the cycle above included) left the collector's walks
        with frozen_heap():  # nested: no second freeze, and leaving it unfreezes nothing
            assert gc.get_freeze_count() == frozen
        assert gc.get_freeze_count() == frozen
        inside = weakref.ref(_cycle())  # garbage made inside the block is still collected
        gc.collect()
        assert inside() is None
    assert gc.get_freeze_count() == 0
    gone = weakref.ref(before)
    del before  # a cycle frozen in the block is collectable again after it
    gc.collect()
    assert gone() is None


def test_frozen_heap_unfreezes_on_error():
    with pytest.raises(RuntimeError), frozen_heap():
        raise RuntimeError("boom")
    assert gc.get_freeze_count() == 0


_FAULTS = """
import contextlib, resource, sys
import numpy as np
from reference_model.instrument import frozen_heap
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def step():  # a small model's step: 60 activations of 64-256 KiB alive at once, then freed
    xs = [np.ones((64 << 10 >> 3) << (k % 3)) for k in range(60)]
    del xs
with frozen_heap() if sys.argv[1] == "steady" else contextlib.nullcontext():
    for _ in range(3):
        step()
    before = faults()
    for _ in range(20):
        step()
print((faults() - before) / 20)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_timed_runs_keep_freed_memory_instead_of_faulting_it_in_each_step():
    """In a fresh process glibc hands a loop's freed activations back to the kernel and faults
    them in again, zeroed, every iteration; inside a timed block it keeps them."""
    def per_step(mode: str) -> float:
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parents[1], check=True)
        return float(out.stdout.strip())

    default, steady = per_step("default"), per_step("steady")
    assert default > 500  # the regime the fix is for (about 2,200 faults a step on the CI VM)
    assert steady < 0.02 * default
    assert keep_freed_memory() is True
