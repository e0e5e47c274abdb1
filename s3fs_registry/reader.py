"""Read path: whole-object GETs for small files, ranged GETs with read-ahead for large ones.

Registry reads are of two kinds: small metadata files (links of 71 bytes, hashstates,
manifests), which cost one GET and nothing more, and blob data served to clients in large
sequential reads that may start at any offset (HTTP Range) with several readers at once.
For the second kind each open file keeps a window of segments ahead of the reader: it
starts at `INITIAL_WINDOW`, doubles with every sequential read up to the configured
`read_ahead`, and is fetched as parallel ranged GETs of at most `SEGMENT` bytes. A read
outside the window (a seek) drops it and starts small again, so random reads stay cheap.

Read-ahead memory comes from the mount-wide budget only when it is free; the bytes a reader
is waiting for are always fetched. Every response is checked (status, length, range) by the
store; after the first response, ranged GETs carry If-Match so that a file replaced in the
middle of a read gives ESTALE, never a mix of two versions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from s3fs_registry.budget import Pool
from s3fs_registry.cloudfront import CloudFrontError, CloudFrontFetcher
from s3fs_registry.store import GetResult, Store

log = logging.getLogger(__name__)

INITIAL_WINDOW = (
    1024 * 1024 + 128 * 1024
)  # the kernel's own 128 KiB read-ahead fits in the first GET
SEGMENT = 8 * 1024 * 1024
BACKTRACK = 1024 * 1024  # keep this much behind the reader for slightly out-of-order reads
MIN_DEMAND = 1024 * 1024  # smallest fetch for a read when memory is short


class BlobSource:
    """Immutable blob bytes through CloudFront, and from S3 whenever CloudFront fails.

    Only `blobs/**/data` keys come this way (content-addressed: no cached copy can be
    stale); link files, tags and uploads always read from S3, and so does every question
    of existence and size. A failure of any cause (expired or refused signature, 5xx,
    timeout, connection, a response that fails its checks) costs one S3 GET instead: the
    reader never sees it. The fetcher logs the first failure of each cause and counts all.
    """

    def __init__(self, fetcher: CloudFrontFetcher, store: Store) -> None:
        self.fetcher = fetcher
        self.store = store

    def serves(self, key: str) -> bool:
        return self.fetcher.serves(key)

    async def get(self, key: str, first: int, last: int, etag: str) -> GetResult:
        try:
            data, total = await self.fetcher.fetch(key, first, last)
        except CloudFrontError:
            return await self.store.get(key, first, last, if_match=etag)
        return GetResult(data, total, etag)


@dataclass
class ReadContext:
    """What every reader shares."""

    store: Store
    pool: Pool
    nursery: trio.Nursery
    small_file_size: int
    read_ahead: int
    blobs: BlobSource | None = None


@dataclass
class Segment:
    """Bytes [start, end) of the object, being fetched or fetched."""

    start: int
    end: int
    held: int = 0
    data: bytes = b""
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)


class ObjectReader:
    """Reads of one open file (see module docstring)."""

    def __init__(self, ctx: ReadContext, key: str, size: int, etag: str) -> None:
        self._ctx = ctx
        self.key = key
        self.size = size
        self.etag = etag
        blobs = ctx.blobs
        self._blobs = blobs if blobs is not None and blobs.serves(key) else None
        self._whole: bytes | None = None
        self._whole_held = 0
        self._segments: list[Segment] = []
        self._next_fetch = 0
        self._window = INITIAL_WINDOW
        self._last_end = -1
        self._closed = False

    async def read(self, offset: int, size: int) -> bytes:
        if offset >= self.size or size <= 0:
            return b""
        if self.size <= self._ctx.small_file_size:
            return await self._read_small(offset, size)
        end = min(self.size, offset + size)
        self._track(offset, end)
        self._schedule(offset, end)
        return await self._collect(offset, end)

    def close(self) -> None:
        """Give back read-ahead memory; fetches still running give theirs when they finish."""
        self._closed = True
        for segment in self._segments:
            self._drop(segment)
        self._segments = []
        self._whole = None
        self._ctx.pool.give(self._whole_held)
        self._whole_held = 0

    # -- small files ---------------------------------------------------------------------

    async def _read_small(self, offset: int, size: int) -> bytes:
        if self._whole is None:
            if self._blobs is not None:
                got = await self._blobs.get(self.key, 0, self.size - 1, self.etag)
            else:
                got = await self._ctx.store.get(self.key)
            if self._closed:
                return got.data[offset : offset + size]
            self._whole = got.data
            self.etag = got.etag
            self._whole_held = len(got.data)
            self._ctx.pool.force(self._whole_held)  # counted until the file is closed
        return self._whole[offset : offset + size]

    # -- read-ahead ----------------------------------------------------------------------

    def _track(self, offset: int, end: int) -> None:
        """Grow the window on sequential reads; restart it when the reader left it."""
        inside = bool(self._segments) and self._segments[0].start <= offset <= self._next_fetch
        if not inside:
            for segment in self._segments:
                self._drop(segment)
            self._segments = []
            self._next_fetch = offset
            self._window = INITIAL_WINDOW
        elif offset == self._last_end:
            self._window = min(max(self._ctx.read_ahead, INITIAL_WINDOW), self._window * 2)
        self._last_end = end
        keep = [s for s in self._segments if s.end > offset - BACKTRACK]
        for segment in self._segments[: len(self._segments) - len(keep)]:
            self._drop(segment)
        self._segments = keep

    def _schedule(self, offset: int, end: int) -> None:
        """Fetch what the read needs (always) and the window after it (if memory is free)."""
        horizon = min(self.size, max(end, offset + self._window))
        pool = self._ctx.pool
        while self._next_fetch < horizon:
            start = self._next_fetch
            length = min(SEGMENT, self._window, self.size - start)
            if not pool.try_take(length):
                if start >= end:
                    return  # no memory for read-ahead: fetch only what is asked for
                # needed now: take memory anyway, but no more than the read itself wants
                length = min(length, max(end - start, MIN_DEMAND), self.size - start)
                pool.force(length)
            segment = Segment(start, start + length, held=length)
            self._segments.append(segment)
            self._next_fetch = segment.end
            self._ctx.nursery.start_soon(self._fetch, segment)

    async def _fetch(self, segment: Segment) -> None:
        try:
            got = await self._get(segment.start, segment.end - 1)
            if not self.etag:
                self.etag = got.etag
            segment.data = got.data
            if len(got.data) != segment.end - segment.start:
                log.info(
                    "%s: object is shorter than expected (%d bytes at %d)",
                    self.key,
                    len(got.data),
                    segment.start,
                )
        except Exception as exc:
            segment.error = exc
        finally:
            segment.done.set()
            if self._closed:
                self._drop(segment)

    async def _get(self, first: int, last: int) -> GetResult:
        if self._blobs is not None:
            return await self._blobs.get(self.key, first, last, self.etag)
        return await self._ctx.store.get(self.key, first, last, if_match=self.etag)

    async def _collect(self, offset: int, end: int) -> bytes:
        pieces: list[bytes] = []
        for segment in [s for s in self._segments if s.start < end and s.end > offset]:
            await segment.done.wait()
            if segment.error is not None:
                self._forget(segment)
                raise segment.error
            lo, hi = (
                max(offset, segment.start) - segment.start,
                min(end, segment.end) - segment.start,
            )
            pieces.append(segment.data[lo:hi])
            if len(segment.data) < hi:
                break  # the object ended early: a short read, never invented bytes
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _forget(self, segment: Segment) -> None:
        """Drop a failed segment so that the next read fetches it again."""
        if segment in self._segments:
            index = self._segments.index(segment)
            for later in self._segments[index:]:
                self._drop(later)
            self._segments = self._segments[:index]
            self._next_fetch = segment.start

    def _drop(self, segment: Segment) -> None:
        if segment.held and (segment.done.is_set() or not self._closed):
            self._ctx.pool.give(segment.held)
            segment.held = 0
