"""The model packer: several loaded variants per worker under a memory budget, LRU.

A worker serves many variants (of many owners) but has a fixed memory budget.
The packer keeps the variants it has loaded in least-recently-used order and
evicts the coldest ones, never one that a request is using, to make room for
the next. Loads of the same variant that arrive together share one load, and a
load runs in a thread so the event loop keeps serving the variants already in.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from infaas.errors import Overloaded, PayloadTooLarge

log = logging.getLogger("infaas.enclave_workers.packer")

T = TypeVar("T")


@dataclass
class _Entry(Generic[T]):
    value: T
    memory_bytes: int
    in_use: int = 0


@dataclass(frozen=True)
class PackerStats:
    loaded: tuple[str, ...]
    used_bytes: int
    budget_bytes: int
    loads: int
    evictions: int


@dataclass
class ModelPacker(Generic[T]):
    """LRU cache of loaded variants whose summed memory stays within `budget_bytes`.

    `load(variant_id)` returns the loaded thing and the memory it takes; it is
    awaited outside the packer's lock, so slow loads do not block hits.
    """

    budget_bytes: int
    load: Callable[[str], Awaitable[tuple[T, int]]]
    _entries: OrderedDict[str, _Entry[T]] = field(default_factory=OrderedDict)
    _loading: dict[str, asyncio.Future[_Entry[T]]] = field(default_factory=dict)
    _loads: int = 0
    _evictions: int = 0

    @property
    def used_bytes(self) -> int:
        return sum(e.memory_bytes for e in self._entries.values())

    def stats(self) -> PackerStats:
        return PackerStats(
            loaded=tuple(self._entries),
            used_bytes=self.used_bytes,
            budget_bytes=self.budget_bytes,
            loads=self._loads,
            evictions=self._evictions,
        )

    def is_loaded(self, variant_id: str) -> bool:
        return variant_id in self._entries

    def _make_room(self, needed: int) -> None:
        if needed > self.budget_bytes:
            raise PayloadTooLarge(
                f"a variant of {needed} bytes cannot fit a worker budget of "
                f"{self.budget_bytes} bytes",
                memory_bytes=needed,
            )
        for vid in list(self._entries):
            if self.used_bytes + needed <= self.budget_bytes:
                return
            entry = self._entries[vid]
            if entry.in_use == 0:
                del self._entries[vid]
                self._evictions += 1
                log.info("evicted variant %s (%d bytes)", vid, entry.memory_bytes)
        if self.used_bytes + needed > self.budget_bytes:
            raise Overloaded(
                "every loaded variant is busy and no room is left for another",
                retry_after_s=0.5,
            )

    async def _entry(self, variant_id: str) -> _Entry[T]:
        entry = self._entries.get(variant_id)
        if entry is not None:
            self._entries.move_to_end(variant_id)
            return entry
        pending = self._loading.get(variant_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[_Entry[T]] = asyncio.get_running_loop().create_future()
        self._loading[variant_id] = future
        try:
            value, memory = await self.load(variant_id)
            self._make_room(memory)
            entry = _Entry(value, memory)
            self._entries[variant_id] = entry
            self._loads += 1
            future.set_result(entry)
            return entry
        except BaseException as e:
            future.set_exception(e)
            # Nobody else may be waiting; mark the exception as retrieved.
            future.exception()
            raise
        finally:
            del self._loading[variant_id]

    def put(self, variant_id: str, value: T, memory_bytes: int) -> bool:
        """Add an already loaded variant (a replica pre-loading before it serves).

        False, and nothing added, when it is loaded already or no room can be made.
        """
        if variant_id in self._entries or variant_id in self._loading:
            return False
        try:
            self._make_room(memory_bytes)
        except (Overloaded, PayloadTooLarge):
            return False
        self._entries[variant_id] = _Entry(value, memory_bytes)
        self._loads += 1
        return True

    @asynccontextmanager
    async def use(self, variant_id: str) -> AsyncIterator[T]:
        """The loaded variant, pinned against eviction until the block ends."""
        entry = await self._entry(variant_id)
        entry.in_use += 1
        try:
            yield entry.value
        finally:
            entry.in_use -= 1
