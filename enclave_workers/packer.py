"""The model packer: several loaded variants per worker under a memory budget, LRU.

A worker serves many variants (of many owners) but has a fixed memory budget.
The packer keeps the variants it has loaded in least-recently-used order and
evicts the coldest ones, never one that a request is using, to make room for
the next. Loads of the same variant that arrive together share one load, and a
load runs in a thread so the event loop keeps serving the variants already in.

`VariantHost` is what a worker holds: the packer in front of one batcher per
variant on bounded inference threads (or inline on the event loop for variants
faster than a thread hand-off), and the live load per variant that the
per-request selection reads. A batcher mixes tenants only for a variant whose
loaded graph is proven row-independent, and every run's outputs must keep the
task's contract (one row of `classes` FP32 logits per input row) before any row
goes back.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np

from enclave_workers.batcher import DynamicBatcher
from infaas.errors import InfaasError, OutputContractViolated, Overloaded, PayloadTooLarge
from infaas.logs import get_logger
from scheduler.policy import Candidate, CandidateSet, VariantLoad
from variants.row_independence import RowIndependence
from variants.runtime import LoadedVariant

log = get_logger(__name__)

T = TypeVar("T")
R = TypeVar("R")


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


# --- the variants one worker hosts: packed, batched, run --------------------------------


class _BatchOutput(np.ndarray):
    """Outputs of one batch, remembering its size and start; slices keep both."""

    batch_size: int
    started: float

    def __array_finalize__(self, obj: Any) -> None:
        self.batch_size = getattr(obj, "batch_size", 0)
        self.started = getattr(obj, "started", 0.0)


LOGITS = np.dtype(np.float32)
"""The dtype of every task's output."""


def check_outputs(variant_id: str, out: np.ndarray, rows: int, classes: int) -> None:
    """Refuse outputs other than ``(rows, classes)`` logits: rows are handed back by position."""
    if out.shape == (rows, classes) and out.dtype == LOGITS:
        return
    # which part broke only: a graph can make its output's shape (and dtype's values) encode
    # a tenant's input, so neither the dimensions nor the values are ever written out
    broke = [
        part
        for part, ok in (
            ("rows", out.ndim >= 1 and out.shape[0] == rows),
            ("width", out.ndim == 2 and out.shape[1] == classes),
            ("dtype", out.dtype == LOGITS),
        )
        if not ok
    ]
    log.warning("variant %s broke the output contract: %s", variant_id, ", ".join(broke))
    # the error reaches every tenant of the batch: it names the broken parts, not the shape
    raise OutputContractViolated(
        f"variant {variant_id} did not answer {rows} input rows with {rows} rows of "
        f"{classes} FP32 logits ({', '.join(broke)})"
    )


@dataclass
class VariantState:
    """This worker's live state of one variant."""

    batcher: DynamicBatcher
    loop: asyncio.AbstractEventLoop
    classes: int
    """The task's output width: the contract each run's outputs are checked against."""
    threaded: bool = True
    """Runs on the shared inference threads (not inline on the event loop)."""
    live: LoadedVariant | None = None
    outstanding: int = 0
    served: int = 0
    served_ms: float = 0.0
    """Summed latency (queue + batch) of the requests served: the measured latency the
    autoscaler's monitors read, taken inside the worker."""


class VariantHost:
    """The variants one worker holds and runs: the packer (LRU under the memory budget)
    in front of one batcher per variant, on bounded inference threads.

    `load(variant_id)` turns a sealed variant into a session and its memory (the
    runtime's: it holds the keys), and hands its row proof to `prove`;
    `candidates()` is the current candidate set, whose profiles say which
    variants run inline and how long queued work takes.
    """

    def __init__(
        self,
        load: Callable[[str], tuple[LoadedVariant, int]],
        candidates: Callable[[], CandidateSet],
        *,
        memory_budget_bytes: int,
        threads: int,
        batch_wait_ms: float,
        inline_batch_ms: float,
    ) -> None:
        self._load_sync = load
        self._candidates = candidates
        self.threads = threads
        self.packer: ModelPacker[LoadedVariant] = ModelPacker(memory_budget_bytes, self._load)
        self.states: dict[str, VariantState] = {}
        self._executor = ThreadPoolExecutor(threads, thread_name_prefix="infaas-infer")
        self._prover = ThreadPoolExecutor(1, thread_name_prefix="infaas-rows")
        self.proofs: dict[str, Future[RowIndependence]] = {}
        """The row-independence proof of each variant loaded, done or under way."""
        self._inline_batch_ms = inline_batch_ms
        self._batch_wait_ms = batch_wait_ms

    def prove(
        self, variant_id: str, loaded: LoadedVariant, proof: Callable[[], RowIndependence]
    ) -> None:
        """Prove a just-loaded variant row-independent, off its cold start.

        Until the verdict lands, and when it is negative, its batches hold one
        tenant's rows each.
        """

        def run() -> RowIndependence:
            try:
                verdict = proof()
            except Exception as e:  # unproven, however the analysis broke
                verdict = RowIndependence(False, f"the analysis failed ({type(e).__name__})")
            loaded.rows = verdict
            # not the reason: it names the owner's nodes and tensors
            log.info(
                "variant %s %s tenants in a batch",
                variant_id,
                "mixes" if verdict.proven else "does not mix",
            )
            return verdict

        self.proofs[variant_id] = self._prover.submit(run)

    async def _load(self, variant_id: str) -> tuple[LoadedVariant, int]:
        return await asyncio.to_thread(self._load_sync, variant_id)

    def preload(self, variant_ids: Iterable[str]) -> list[str]:
        """Load these variants now, blocking (a new replica, before it takes requests).

        A replica the autoscaler starts mid-burst would otherwise take its first
        requests cold, each waiting for a load. Unknown or failing variants are
        skipped with a warning; returns the ones loaded.
        """
        done = []
        for vid in variant_ids:
            if self.packer.is_loaded(vid) or self._candidates().get(vid) is None:
                continue
            try:
                loaded, memory = self._load_sync(vid)
            except Exception as e:  # best effort: the first request will load it, or say why
                log.warning("pre-loading %s failed: %s", vid, getattr(e, "code", type(e).__name__))
                continue
            if self.packer.put(vid, loaded, memory):
                done.append(vid)
        return done

    async def warm(self, variant_id: str) -> None:
        """Load a variant ahead of its traffic (the autoscaler's placement)."""
        async with self.packer.use(variant_id):
            pass

    def _state(self, cand: Candidate, classes: int) -> VariantState:
        loop = asyncio.get_running_loop()
        st = self.states.get(cand.variant_id)
        if st is None or st.loop is not loop:
            holder: list[VariantState] = []

            def run(xs: np.ndarray) -> np.ndarray:
                state = holder[0]
                live = state.live
                if live is None:  # cannot happen: every queued request pins the variant
                    raise InfaasError("variant is not loaded")
                started = time.perf_counter()
                raw = np.asarray(live.run(xs))
                check_outputs(cand.variant_id, raw, int(xs.shape[0]), state.classes)
                out = raw.view(_BatchOutput)
                out.batch_size = int(xs.shape[0])
                out.started = started
                return out

            def mixes_tenants() -> bool:
                live = holder[0].live
                return live is not None and live.rows.proven

            # p50 line, not the tail: profiles taken on a busy host have fat tails
            inline = cand.full_batch_ms <= self._inline_batch_ms
            batcher = DynamicBatcher(
                run=run,
                executor=self._executor,
                inline=inline,
                max_batch=cand.max_batch,
                max_wait_ms=self._batch_wait_ms,
                mixes_tenants=mixes_tenants,
            )
            old = st
            st = VariantState(batcher=batcher, loop=loop, classes=classes, threaded=not inline)
            if old is not None:
                st.served = old.served
                st.served_ms = old.served_ms
            holder.append(st)
            self.states[cand.variant_id] = st
        return st

    async def execute(
        self, cand: Candidate, x: np.ndarray, limit: int, *, tenant: str, classes: int
    ) -> tuple[Any, int, float]:
        """Run `tenant`'s samples in a batch: (outputs ``(n, classes)``, batch size, queue ms).

        Rows of other tenants share the batch only if the loaded variant is proven
        row-independent.
        """
        st = self._state(cand, classes)
        st.classes = classes
        st.outstanding += 1
        entered = time.perf_counter()
        try:
            async with self.packer.use(cand.variant_id) as loaded:
                st.live = loaded
                submitted = time.perf_counter()
                out = await st.batcher.submit(x, limit, tenant)
        finally:
            st.outstanding -= 1
        st.served += 1
        st.served_ms += (time.perf_counter() - entered) * 1e3
        batch = int(getattr(out, "batch_size", 0)) or int(x.shape[0])
        started = float(getattr(out, "started", submitted))
        return np.asarray(out), batch, max(0.0, (started - submitted) * 1e3)

    def loads(self) -> Mapping[str, VariantLoad]:
        """This worker's load per variant, for one decision (computed when asked)."""
        return _LiveLoads(self, self._candidates())

    async def close(self) -> None:
        for st in list(self.states.values()):
            if st.loop is asyncio.get_running_loop():
                await st.batcher.close()
        self.states.clear()
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._prover.shutdown(wait=False, cancel_futures=True)


class _LiveLoads(Mapping[str, VariantLoad]):
    """A host's load per variant, computed when the scheduler asks (no copying).

    One per request: the work queued on the shared inference threads is summed
    once, and each variant is told the part of it that is not its own.
    """

    def __init__(self, host: VariantHost, candidates: CandidateSet) -> None:
        self._host = host
        self._candidates = candidates
        self._threaded: float | None = None

    def _own_threaded_ms(self, variant_id: str, st: VariantState | None) -> float:
        if st is None or not st.threaded or not st.outstanding:
            return 0.0
        c = self._candidates.get(variant_id)
        return c.drain_ms(st.outstanding) if c is not None else 0.0

    def __getitem__(self, variant_id: str) -> VariantLoad:
        host = self._host
        if self._threaded is None:  # FIFO threads: every queued request runs first
            self._threaded = sum(
                self._own_threaded_ms(v, st) for v, st in list(host.states.items())
            )
        st = host.states.get(variant_id)
        ahead = max(0.0, self._threaded - self._own_threaded_ms(variant_id, st))
        return VariantLoad(
            replicas=1,
            loaded_replicas=1 if host.packer.is_loaded(variant_id) else 0,
            outstanding=st.outstanding if st else 0,
            ahead_ms=ahead / host.threads,
        )

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._host.states))

    def __len__(self) -> int:
        return len(self._host.states)
