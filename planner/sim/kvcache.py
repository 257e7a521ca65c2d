"""The paged KV cache of one device at run time: a pool of fixed-size blocks.

A sequence holds ``ceil(tokens / block_tokens)`` blocks for the tokens whose KV is cached or
is being computed this step; a scheduler grows a sequence's share before it schedules new
tokens (vLLM's ``allocate_slots``, nano-vLLM's ``allocate``/``may_append``) and a finished or
preempted sequence returns all of them. No prefix caching: prompts of the workloads simulated
here share no blocks (nano-vLLM's benchmark uses random token ids).
"""

from __future__ import annotations


class BlockPool:
    """Free and held blocks; ``held`` maps a request id to its block count."""

    def __init__(self, blocks: int, block_tokens: int):
        if blocks < 1 or block_tokens < 1:
            raise ValueError(f"a KV cache needs at least one block of one token (got {blocks} x {block_tokens})")
        self.total, self.block_tokens = blocks, block_tokens
        self.free = blocks
        self.held: dict[int, int] = {}

    @property
    def used(self) -> int:
        return self.total - self.free

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def need(self, rid: int, tokens: int) -> int:
        """Blocks request ``rid`` must still get to hold ``tokens`` tokens."""
        return max(0, self.blocks_for(tokens) - self.held.get(rid, 0))

    def can_hold(self, rid: int, tokens: int) -> bool:
        return self.need(rid, tokens) <= self.free

    def grow(self, rid: int, tokens: int) -> None:
        """Give ``rid`` blocks for ``tokens`` tokens (callers check :meth:`can_hold` first)."""
        extra = self.need(rid, tokens)
        assert extra <= self.free, "KV blocks over-allocated (the scheduler must check can_hold)"
        if extra:
            self.free -= extra
            self.held[rid] = self.held.get(rid, 0) + extra

    def grow_decodes(self, reqs) -> list:
        """Blocks for one more token of each decoding request, in order, while blocks last
        (a request holding ``ceil(computed / block)`` blocks needs one more exactly when its
        cached tokens fill its last block). Returns the requests served; the first one refused
        is the next in ``reqs`` after them."""
        held, bt, served = self.held, self.block_tokens, []
        for req in reqs:
            if req.computed % bt == 0:
                if self.free == 0:
                    break
                self.free -= 1
                held[req.rid] = held.get(req.rid, 0) + 1
            served.append(req)
        return served

    def settle(self, reqs) -> None:
        """After requests' ``computed`` grew by whole steps of decoding: hold exactly
        ``ceil(computed / block)`` blocks each (callers made sure they were free)."""
        held, bt, extra = self.held, self.block_tokens, 0
        for req in reqs:
            want = -(-req.computed // bt)
            extra += want - held.get(req.rid, 0)
            held[req.rid] = want
        assert extra <= self.free, "KV blocks over-allocated by a coalesced stretch"
        self.free -= extra

    def release(self, rid: int) -> None:
        self.free += self.held.pop(rid, 0)
