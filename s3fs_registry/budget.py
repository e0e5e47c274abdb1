"""Mount-wide bounds on memory (write buffers, read-ahead) and local spool disk.

Writers wait for memory instead of failing (a failed write is a failed registry push), so
the budget must never deadlock. A writer that holds part of a buffer and waits for more is
the classic hold-and-wait cycle: with enough concurrent writers every one of them holds a
half-filled part and none can finish one. The cure is two pools:

* a *first* pool hands each new file one small, fixed reservation at once (enough for link
  files, hashstates, manifests), so a writer either holds a whole first reservation or
  holds nothing while it waits;
* the *part* pool hands out whole part-sized reservations at once. A writer whose file
  outgrows its first reservation waits here while holding only first-pool memory, and
  part-pool holders never wait on the first pool, so no cycle can form.

Read-ahead takes part-pool memory only when it is free (`try_take`); the bytes a reader is
waiting for right now are taken unconditionally (`force`), because they are released as
soon as they are handed to the kernel.
"""

from __future__ import annotations

import logging

import trio

from s3fs_registry.errors import NoSpaceError

log = logging.getLogger(__name__)


class Pool:
    """A counter of bytes with waiters; `take` waits until the bytes fit under the limit."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._lot = trio.lowlevel.ParkingLot()

    async def take(self, nbytes: int) -> None:
        """Wait until `nbytes` fit; an empty pool admits any size so that nothing waits forever."""
        while self.used and self.used + nbytes > self.limit:
            await self._lot.park()
        self._add(nbytes)

    @property
    def waiting(self) -> int:
        """Writers waiting in `take` for memory to be given back."""
        return len(self._lot)

    def try_take(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit:
            return False
        self._add(nbytes)
        return True

    def force(self, nbytes: int) -> None:
        self._add(nbytes)

    def give(self, nbytes: int) -> None:
        self.used -= nbytes
        if self.used < 0:  # a bookkeeping bug must not wedge every writer
            log.error("%s pool went negative (%d); resetting", self.name, self.used)
            self.used = 0
        self._lot.unpark_all()

    def _add(self, nbytes: int) -> None:
        self.used += nbytes
        self.peak = max(self.peak, self.used)


class MemoryBudget:
    """The two pools of the module docstring, sized from the mount's memory budget."""

    def __init__(self, limit: int, first_unit: int) -> None:
        first_limit = max(first_unit, min(limit // 8, 64 * first_unit))
        self.first_unit = first_unit
        self.first = Pool("first-buffer", first_limit)
        self.parts = Pool("part", max(first_unit, limit - first_limit))

    @property
    def used(self) -> int:
        return self.first.used + self.parts.used


class SpoolBudget:
    """Bytes of local spool files, mount-wide; exceeding it is ENOSPC at write()."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def grow(self, nbytes: int) -> None:
        if nbytes > 0 and self.used + nbytes > self.limit:
            raise NoSpaceError(
                f"local spool limit of {self.limit} bytes reached "
                f"({self.used} in use, {nbytes} more needed)"
            )
        self.used += nbytes

    def shrink(self, nbytes: int) -> None:
        self.used = max(0, self.used - nbytes)
