"""reference_model.instrument.frozen_heap: the timed runs' collector scope."""

from __future__ import annotations

import gc
import weakref

import pytest

pytest.importorskip("torch")

from reference_model.instrument import frozen_heap  # noqa: E402


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
