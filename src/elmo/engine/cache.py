"""A bounded, exact cache of token representations (char CNN + highway + projection).

A token's representation depends on its characters only, and natural text repeats
tokens a lot, so each distinct token needs to go through the character CNN once. The
cache maps a token's character ids (as bytes) to a row of one preallocated tensor
(a slab) on the model's device; the least recently used token is evicted when the slab
is full. Values are stored exactly as computed, so a hit returns the same numbers a
recomputation would in float32 and bfloat16 (the encoder pads its products so that a
token's result does not depend on the other tokens it is computed with). In int8 the
activations are quantized with a scale per product, so a token's encoding depends, within
int8 rounding, on the batch that first computed it; the cache keeps that first result.

Threads: one cache may serve calls from many threads. Every method holds the cache's
reentrant :attr:`TokenCache.lock` while it reads or changes the map, the slab or the
counters, so each method is atomic. A sequence of calls is not: between :meth:`lookup`
and :meth:`gather` another thread's :meth:`store` may evict an entry and reuse its slot.
Callers that share a cache use :meth:`fetch` (both under one hold of the lock) or hold
:attr:`~TokenCache.lock` around the sequence; :meth:`store` skips keys that another thread
inserted meanwhile.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor

__all__ = ["TokenCache"]


class TokenCache:
    """LRU map from token keys (bytes) to rows of a ``[capacity, width]`` tensor.

    The slab grows by doubling up to ``capacity`` rows, so a small vocabulary costs little
    memory. ``capacity=0`` disables caching. Safe to share between threads: every method
    holds :attr:`lock` (see the module docstring); copies and pickles are empty caches of
    the same capacity.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ValueError(f"token cache size: expected an integer >= 0, found {capacity}")
        self.capacity = int(capacity)
        # Guards _slots, _slab, hits and misses; reentrant, so that a caller can hold it
        # around several calls.
        self.lock = threading.RLock()
        self._slots: OrderedDict[bytes, int] = OrderedDict()
        self._slab: Tensor | None = None
        self.hits = 0
        self.misses = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"capacity": self.capacity}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["capacity"])  # type: ignore[misc]

    def __len__(self) -> int:
        return len(self._slots)

    def clear(self) -> None:
        """Forget every entry and free the slab (the weights or the device changed)."""
        with self.lock:
            self._slots.clear()
            self._slab = None

    def fetch(self, keys: list[bytes]) -> tuple[list[int], Tensor | None, list[int]]:
        """:meth:`lookup` and :meth:`gather` under one hold of the lock.

        Returns ``(hit_positions, hit_rows, miss_positions)``: ``hit_rows`` [hits, width]
        is a copy (None without hits), so later stores from other threads cannot change it.
        """
        with self.lock:
            hit_pos, hit_slots, miss_pos = self.lookup(keys)
            return hit_pos, self.gather(hit_slots) if hit_slots else None, miss_pos

    def lookup(self, keys: list[bytes]) -> tuple[list[int], list[int], list[int]]:
        """Split ``keys`` into hits and misses.

        Returns ``(hit_positions, hit_slots, miss_positions)``: positions index ``keys``.
        Hits become the most recently used entries.
        """
        hit_pos, hit_slots, miss_pos = [], [], []
        with self.lock:
            slots = self._slots
            for i, key in enumerate(keys):
                slot = slots.get(key)
                if slot is None:
                    miss_pos.append(i)
                else:
                    slots.move_to_end(key)
                    hit_pos.append(i)
                    hit_slots.append(slot)
            self.hits += len(hit_pos)
            self.misses += len(miss_pos)
        return hit_pos, hit_slots, miss_pos

    def gather(self, slots: list[int]) -> Tensor:
        """The stored rows for ``slots`` (from :meth:`lookup`, with no store in between:
        see the module docstring), as a new tensor."""
        with self.lock:
            assert self._slab is not None
            index = torch.tensor(slots, dtype=torch.long, device=self._slab.device)
            return self._slab.index_select(0, index)

    def store(self, keys: list[bytes], values: Tensor) -> None:
        """Insert rows ``values[i]`` under ``keys[i]``, evicting LRU ones.

        Keys already present (another thread stored them since this one's lookup) and
        repeated keys are skipped: the slot map then stays one slot per key. Call after
        the hits of the same batch were gathered: eviction may reuse their slots.
        """
        if self.capacity == 0 or not keys:
            return
        with self.lock:
            self._store(keys, values)

    def _store(self, keys: list[bytes], values: Tensor) -> None:
        present = self._slots
        new: dict[bytes, int] = {}  # key -> its first row in values
        for i, key in enumerate(keys):
            if key not in present and key not in new:
                new[key] = i
        if not new:
            return
        if len(new) < len(keys):
            keys = list(new)
            values = values[torch.tensor(list(new.values()), dtype=torch.long, device=values.device)]
        if len(keys) > self.capacity:
            keys, values = keys[-self.capacity :], values[-self.capacity :]
        self._reserve(len(self._slots) + len(keys), values)
        assert self._slab is not None
        free = self._slab.shape[0] - len(self._slots)
        slots = list(range(len(self._slots), len(self._slots) + min(free, len(keys))))
        while len(slots) < len(keys):
            _, slot = self._slots.popitem(last=False)
            slots.append(slot)
        for key, slot in zip(keys, slots):
            self._slots[key] = slot
        index = torch.tensor(slots, dtype=torch.long, device=self._slab.device)
        self._slab.index_copy_(0, index, values.to(self._slab.dtype))

    def _reserve(self, rows: int, like: Tensor) -> None:
        rows = min(rows, self.capacity)
        slab = self._slab
        if slab is not None and (slab.device != like.device or slab.dtype != like.dtype):
            self.clear()
            slab = None
        have = 0 if slab is None else slab.shape[0]
        if rows <= have:
            return
        size = max(rows, min(self.capacity, max(1024, 2 * have)))
        grown = like.new_empty(size, like.shape[1])
        if slab is not None:
            grown[:have] = slab
        self._slab = grown
