"""Write path: the new content of one file between its first change and its commit.

`WriteSession` streams: sequential writes fill a part buffer; each full part is uploaded
in the background as a multipart part while the application keeps writing, bounded by the
mount-wide memory budget (budget.py). A session that appends to an existing object keeps
that object's bytes: copied server-side (UploadPartCopy) when it is at least 5 MiB, else
fetched and prepended, because every part but the last must be at least 5 MiB. `commit`
turns the session into one complete object: a single PutObject when it never outgrew one
part, otherwise the last part plus CompleteMultipartUpload. Nothing becomes visible in S3
before `commit` returns, and a failure leaves the previous object untouched.

`SpoolSession` handles what streaming cannot: writes behind the uploaded parts, holes,
truncation to a middle size. It keeps the whole content in a local file (bounded by the
spool budget, ENOSPC beyond it) and uploads that file at commit.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from s3fs_registry import metrics
from s3fs_registry.budget import MemoryBudget, Pool, SpoolBudget
from s3fs_registry.errors import NoSpaceError, PreconditionError, S3fsError, TooLargeError
from s3fs_registry.namespace import Pending
from s3fs_registry.store import MAX_PART, MAX_PARTS, MIN_PART, Store

log = logging.getLogger(__name__)

PART_TIER = 1000  # parts per part-size tier; the size doubles every tier so objects reach TiBs
SAME_CHECK_LIMIT = 1024 * 1024
_PLAIN_ETAG = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class Committed:
    """What a commit left in S3: an object, or a multipart upload kept open (`pending`)."""

    size: int
    etag: str
    pending: Pending | None = None


@dataclass(frozen=True)
class Base:
    """The existing object whose bytes a session keeps in front of the new ones."""

    key: str
    size: int
    etag: str = ""


class SessionAbortedError(S3fsError):
    """The session was discarded (file unlinked or replaced) while writes were under way."""


class WriteContext:
    """What every session shares: the store, the budgets, the background nursery, sizes."""

    def __init__(
        self,
        store: Store,
        budget: MemoryBudget,
        spool: SpoolBudget,
        nursery: trio.Nursery,
        chunksize: int,
        spool_dir: str,
        copy_chunksize: int,
        copy_concurrency: int,
    ) -> None:
        self.store = store
        self.budget = budget
        self.spool = spool
        self.nursery = nursery
        self.chunksize = chunksize
        self.spool_dir = spool_dir or tempfile.gettempdir()
        self.copy_chunksize = max(copy_chunksize, 2 * MIN_PART)
        self.copy_limiter = trio.CapacityLimiter(copy_concurrency)
        # a part must fit in the part pool, or its writer would wait forever
        self.max_part = min(MAX_PART, max(MIN_PART, budget.parts.limit // 4))
        self._tasks = 0
        self._drained = trio.Event()
        self._drained.set()

    def spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        """Run an upload or abort in the background, counted so shutdown can wait for it."""
        self._tasks += 1
        self._drained = trio.Event() if self._drained.is_set() else self._drained
        self.nursery.start_soon(self._counted, fn, *args)

    async def _counted(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        try:
            await fn(*args)
        finally:
            self._tasks -= 1
            if self._tasks == 0:
                self._drained.set()

    async def drain(self) -> None:
        """Wait until every background upload and abort has finished."""
        await self._drained.wait()

    def part_size(self, number: int) -> int:
        """Size of part `number`: chunksize for the first 1000, doubling each 1000 after."""
        tier = (number - 1) // PART_TIER
        return max(self.chunksize, min(self.max_part, self.chunksize << tier))


class WriteSession:
    """Streaming multipart upload of a file's new content (see module docstring)."""

    def __init__(
        self,
        ctx: WriteContext,
        key: str,
        base: Base | None,
        unchanged_etag: str = "",
        pending: Pending | None = None,
    ) -> None:
        self._ctx = ctx
        self.key = key
        self._base = base if base is not None and base.size > 0 else None
        # the ETag of the object as this mount last stored it: a rewrite with the same bytes
        # (the registry writes each hash state twice) then needs no request at all
        self._unchanged_etag = unchanged_etag
        self.size = self._base.size if self._base else 0
        self._buf = bytearray()
        self._held = 0
        self._pool: Pool | None = None
        self._upload_id: str | None = None
        self._owns_upload = True  # False while appending to an upload kept open earlier
        self._etags: dict[int, str] = {}
        self._sizes: dict[int, int] = {}
        self._next_part = 1
        if pending is not None:  # append to an upload kept open: its parts stay as they are
            self._upload_id, self._owns_upload = pending.upload_id, False
            self._etags = dict(enumerate(pending.etags, start=1))
            self._sizes = dict(enumerate(pending.sizes, start=1))
            self._next_part = len(pending.etags) + 1
            self.size = pending.size
        self._buf_start = self.size  # logical offset of _buf[0]
        self._inflight = 0
        self._idle = trio.Event()
        self._idle.set()
        self.error: BaseException | None = None

    @property
    def has_upload(self) -> bool:
        """True once bytes left for S3 in a multipart upload (the key can no longer change)."""
        return self._upload_id is not None

    def accepts(self, offset: int) -> bool:
        """Can a write at `offset` be streamed (append, or overwrite inside the open part)?"""
        return self._buf_start <= offset <= self.size

    async def write(self, offset: int, data: bytes) -> None:
        if self.error is not None:
            raise self.error
        metrics.UPLOADS.start(self)  # until the commit or discard releases the buffer
        await self._take_base()
        view = memoryview(data)
        pos = offset - self._buf_start
        if pos < len(self._buf):
            n = min(len(view), len(self._buf) - pos)
            self._buf[pos : pos + n] = view[:n]
            view = view[n:]
        while view:
            n = min(len(view), await self._room())
            self._buf += view[:n]
            view = view[n:]
            if len(self._buf) >= self._ctx.part_size(self._next_part):
                await self._cut()
        self.size = max(self.size, offset + len(data))

    async def extend(self, size: int) -> None:
        """Grow to `size` with zeros (a hole, or ftruncate beyond the end)."""
        zeros = bytes(min(1 << 20, max(0, size - self.size)))
        while self.size < size:
            await self.write(self.size, zeros[: size - self.size])

    async def content(self) -> bytearray | None:
        """The whole content when it is still all in memory (no multipart upload), else None."""
        await self._take_base()
        return self._buf if self._upload_id is None else None

    def retarget(self, key: str, unchanged_etag: str = "") -> bool:
        """Commit to `key` instead (rename of a file still being written); False once too late.
        `unchanged_etag`: the ETag this mount last stored under `key` (see __init__)."""
        if self._upload_id is not None:
            return False
        self.key = key
        self._unchanged_etag = unchanged_etag
        return True

    async def commit(self, keep_open: bool = False) -> Committed:
        """Make the content one complete object at `self.key`; raise (and abort) on failure.

        With `keep_open` the content is made durable as the parts of a multipart upload that
        stays open (`Committed.pending`), as the registry's S3 driver keeps uploads in flight.
        """
        try:
            if self.error is not None:
                raise self.error  # a background part failed: abort below, then report it
            await self._take_base()
            if keep_open:
                return Committed(self.size, "", await self._persist())
            if self._upload_id is None and self._same_as_stored():
                etag = self._unchanged_etag
            elif self._upload_id is None:
                etag = await self._ctx.store.put(self.key, self._buf)
            else:
                etag = await self._complete()
        except BaseException as exc:
            self._fail(exc)
            raise
        finally:
            self._release_buffer()
        return Committed(self.size, etag)

    def _same_as_stored(self) -> bool:
        """Is the content byte for byte what this mount last stored under the key?

        A plain PutObject's ETag is the MD5 of its bytes; only small contents are compared,
        because the hash runs on the trio thread.
        """
        etag = self._unchanged_etag.strip('"')
        if not _PLAIN_ETAG.fullmatch(etag) or len(self._buf) > SAME_CHECK_LIMIT:
            return False
        return hashlib.md5(self._buf, usedforsecurity=False).hexdigest() == etag

    def progress(self) -> metrics.UploadProgress:
        """For `status`: bytes written so far, and the bytes and parts already in S3."""
        stored = sum(self._sizes.values())
        return metrics.UploadProgress(self.key, self.size, stored, len(self._sizes), self._inflight)

    def abort(self) -> None:
        """Discard everything; a started multipart upload is aborted in the background."""
        self._fail(SessionAbortedError("write session discarded"))
        self._release_buffer()

    # -- internals -----------------------------------------------------------------------

    async def _room(self) -> int:
        """Bytes the open part can take now, reserving budget first (may wait)."""
        budget = self._ctx.budget
        limit = self._ctx.part_size(self._next_part)
        if self._pool is None:
            first = self._upload_id is None and self._next_part == 1
            pool, amount = (budget.first, budget.first_unit) if first else (budget.parts, limit)
            await pool.take(amount)
            self._pool, self._held = pool, amount
        elif self._pool is budget.first and len(self._buf) >= self._held:
            await budget.parts.take(limit)  # upgrade: wait holding only first-pool memory
            budget.first.give(self._held)
            self._pool, self._held = budget.parts, limit
        return min(limit, self._held) - len(self._buf)

    async def _take_base(self) -> None:
        """Bring the kept object in: prepend it when small, else copy it server-side."""
        base, self._base = self._base, None
        if base is None:
            return
        if base.size < MIN_PART:
            await self._prepend(base)
        else:
            await self._copy_base(base)

    async def _prepend(self, base: Base) -> None:
        got = await self._ctx.store.get(base.key, if_match=base.etag)
        if len(got.data) != base.size:
            raise PreconditionError(
                f"{base.key} changed while being appended to "
                f"({len(got.data)} bytes, expected {base.size})"
            )
        self._buf_start = 0
        while len(self._buf) < base.size:
            n = min(base.size - len(self._buf), await self._room())
            self._buf += memoryview(got.data)[len(self._buf) : len(self._buf) + n]

    async def _copy_base(self, base: Base) -> None:
        await self._start_upload()
        pieces = -(-base.size // self._ctx.copy_chunksize)
        piece = -(-base.size // pieces)
        for first in range(0, base.size, piece):
            last = min(base.size, first + piece) - 1
            number = self._claim_part()
            self._spawn(self._copy_part, number, base, first, last)

    async def _cut(self) -> None:
        """Hand the full open part to a background upload."""
        await self._start_upload()
        body, pool, held = self._buf, self._pool, self._held
        number = self._claim_part()
        self._buf_start += len(body)
        self._buf, self._pool, self._held = bytearray(), None, 0
        assert pool is not None
        self._spawn(self._upload_part, number, body, pool, held)

    async def _start_upload(self) -> None:
        if self._upload_id is None:
            self._upload_id = await self._ctx.store.create_multipart(self.key)
            self._owns_upload = True

    def _claim_part(self) -> int:
        number = self._next_part
        if number > MAX_PARTS:
            raise TooLargeError(f"{self.key}: more than {MAX_PARTS} parts; raise chunksize")
        self._next_part += 1
        return number

    def _spawn(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        self._inflight += 1
        metrics.PARTS_IN_FLIGHT.inc()
        self._idle = trio.Event()
        self._ctx.spawn(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[None]], *args: object) -> None:
        try:
            await fn(*args)
        except Exception as exc:
            log.warning("upload of %s failed: %s", self.key, exc)
            if self.error is None:
                self.error = exc
        finally:
            self._inflight -= 1
            metrics.PARTS_IN_FLIGHT.dec()
            if self._inflight == 0:
                self._idle.set()

    async def _upload_part(self, number: int, body: bytearray, pool: Pool, held: int) -> None:
        try:
            assert self._upload_id is not None
            if self.error is None:
                self._etags[number] = await self._ctx.store.upload_part(
                    self.key, self._upload_id, number, body
                )
                self._sizes[number] = len(body)
        finally:
            pool.give(held)

    async def _copy_part(self, number: int, base: Base, first: int, last: int) -> None:
        assert self._upload_id is not None
        async with self._ctx.copy_limiter:
            if self.error is None:
                self._etags[number] = await self._ctx.store.upload_part_copy(
                    self.key, self._upload_id, number, base.key, first, last, if_match=base.etag
                )
                self._sizes[number] = last - first + 1

    async def _complete(self) -> str:
        assert self._upload_id is not None
        etags = await self._upload_tail(always=True)
        return await self._ctx.store.complete_multipart(self.key, self._upload_id, etags)

    async def _persist(self) -> Pending:
        """Upload what is buffered as a part and keep the multipart upload open."""
        await self._start_upload()
        assert self._upload_id is not None
        etags = await self._upload_tail(always=False)
        sizes = [self._sizes[n] for n in range(1, self._next_part)]
        return Pending(self._upload_id, etags, sizes)

    async def _upload_tail(self, always: bool) -> list[str]:
        """Send the buffered bytes as the next part and wait for every part in flight."""
        assert self._upload_id is not None
        if self._buf or (always and self._next_part == 1):
            number = self._claim_part()
            self._etags[number] = await self._ctx.store.upload_part(
                self.key, self._upload_id, number, self._buf
            )
            self._sizes[number] = len(self._buf)
        await self._idle.wait()
        if self.error is not None:
            raise self.error
        return [self._etags[n] for n in range(1, self._next_part)]

    def _fail(self, exc: BaseException) -> None:
        """Record the failure; abort the upload if this session started it. An upload kept
        open earlier holds durable content of its own and stays as it was."""
        if self.error is None:
            self.error = exc
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is not None and self._owns_upload:
            self._ctx.spawn(self._abort_when_idle, upload_id)

    async def _abort_when_idle(self, upload_id: str) -> None:
        await self._idle.wait()
        try:
            await self._ctx.store.abort_multipart(self.key, upload_id)
        except Exception as exc:  # the janitor catches what is left
            log.warning("could not abort multipart upload of %s: %s", self.key, exc)

    def _release_buffer(self) -> None:
        metrics.UPLOADS.end(self)
        if self._pool is not None:
            self._pool.give(self._held)
        self._buf, self._pool, self._held = bytearray(), None, 0


class SpoolSession:
    """The whole content of a file in a local spool file, for non-sequential writes."""

    def __init__(self, ctx: WriteContext, key: str, fd: int, size: int) -> None:
        self._ctx = ctx
        self.key = key
        self._fd = fd
        self.size = size
        self._charged = size
        self.dirty = False
        self._limiter = trio.CapacityLimiter(4)

    @classmethod
    async def create(
        cls, ctx: WriteContext, key: str, content: bytes | bytearray | None, base: Base | None
    ) -> SpoolSession:
        """A spool holding `content`, or else a download of `base` (or nothing)."""
        size = len(content) if content is not None else (base.size if base else 0)
        ctx.spool.grow(size)
        try:
            fd, path = tempfile.mkstemp(prefix="s3fs-registry-spool-", dir=ctx.spool_dir)
            os.unlink(path)  # nothing to clean up after a crash
        except OSError as exc:
            ctx.spool.shrink(size)
            raise NoSpaceError(f"cannot create a spool file in {ctx.spool_dir}: {exc}") from exc
        session = cls(ctx, key, fd, 0)
        session._charged = size
        try:
            if content is not None:
                await session._pwrite(0, bytes(content))
            elif base is not None:
                await session._download(base)
        except BaseException:
            session.close()
            raise
        session.size = size
        return session

    async def _download(self, base: Base) -> None:
        step = self._ctx.chunksize
        for first in range(0, base.size, step):
            got = await self._ctx.store.get(
                base.key, first, min(base.size, first + step) - 1, if_match=base.etag
            )
            await self._pwrite(first, got.data)

    def accepts(self, offset: int) -> bool:
        return True

    async def write(self, offset: int, data: bytes) -> None:
        metrics.UPLOADS.start(self)  # until committed or closed
        self._charge(offset + len(data))
        await self._pwrite(offset, data)
        self.size = max(self.size, offset + len(data))
        self.dirty = True

    async def truncate(self, size: int) -> None:
        metrics.UPLOADS.start(self)
        self._charge(size)
        await trio.to_thread.run_sync(os.ftruncate, self._fd, size, limiter=self._limiter)
        self.size = size
        self.dirty = True

    async def read(self, offset: int, size: int) -> bytes:
        size = max(0, min(size, self.size - offset))
        return await trio.to_thread.run_sync(
            os.pread, self._fd, size, offset, limiter=self._limiter
        )

    async def commit(self) -> Committed:
        """Upload the spool file as one object (PutObject, or multipart from file ranges)."""
        store = self._ctx.store
        if self.size <= self._ctx.chunksize:
            etag = await store.put(self.key, await self.read(0, self.size))
        else:
            etag = await self._upload_multipart()
        self.dirty = False
        metrics.UPLOADS.end(self)
        return Committed(self.size, etag)

    def progress(self) -> metrics.UploadProgress:
        """For `status`: a spool file reaches S3 only at its commit."""
        return metrics.UploadProgress(self.key, self.size, 0, 0, 0)

    async def _upload_multipart(self) -> str:
        store = self._ctx.store
        upload_id = await store.create_multipart(self.key)
        etags: dict[int, str] = {}
        try:
            async with trio.open_nursery() as nursery:
                offset, number = 0, 1
                while offset < self.size:
                    length = min(self._ctx.part_size(number), self.size - offset)
                    await self._ctx.budget.parts.take(length)
                    nursery.start_soon(self._upload_range, upload_id, number, offset, length, etags)
                    offset, number = offset + length, number + 1
            return await store.complete_multipart(
                self.key, upload_id, [etags[n] for n in sorted(etags)]
            )
        except BaseException:
            with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                await store.abort_multipart(self.key, upload_id)
            raise

    async def _upload_range(
        self, upload_id: str, number: int, offset: int, length: int, etags: dict[int, str]
    ) -> None:
        try:
            body = await self.read(offset, length)
            etags[number] = await self._ctx.store.upload_part(self.key, upload_id, number, body)
        finally:
            self._ctx.budget.parts.give(length)

    def close(self) -> None:
        metrics.UPLOADS.end(self)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._ctx.spool.shrink(self._charged)
        self._charged = 0

    def _charge(self, size: int) -> None:
        """Account spool growth before writing, so a full spool is ENOSPC at write()."""
        if size > self._charged:
            self._ctx.spool.grow(size - self._charged)
            self._charged = size

    async def _pwrite(self, offset: int, data: bytes) -> None:
        try:
            await trio.to_thread.run_sync(
                _pwrite_all, self._fd, data, offset, limiter=self._limiter
            )
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise NoSpaceError(f"spool write failed: {exc}") from exc
            raise


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
