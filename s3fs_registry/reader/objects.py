"""Reads of one open file: whole small files, and a read-ahead window of ranged GETs.

Small files (links, hashstates, manifests, up to `small_file_size`) cost one GET of the
whole object. Larger files keep a window ahead of the reader: it starts at
`INITIAL_WINDOW` (the kernel's own 128 KiB read-ahead fits in the first GET), doubles with
every forward read up to `read_ahead` (and to no more than the streams in use can fill),
and a read outside it (a seek) drops it and starts small again, so random reads cost one
small GET each.

The window is fetched as ranges (`Segment`s) that grow with it from 1.125 MiB to a whole
`full_segment`, 8-16 MiB aligned with the object's parts (`storage.s3.chunksize`), as AWS
advises for parallel ranged GETs. Each range is its own GET; as many run at once as the
mount-wide `Streams` allows (streams.py: measured, shared fairly between readers), so a
sequential read from a real network keeps several connections busy and one on loopback
does not waste CPU on many. A range the reader is waiting for is always fetched at once.

Every range is obtained through `ReadContext.source_for(key).get` (sources.py) in
`ObjectReader._get`, the one place where bytes enter the read path. Responses are checked
there as well as by the source: exactly the asked length, the object's size unchanged, the
ETag the file was opened with (sent as `If-Match`): a file replaced during a read gives
ESTALE, never a mix of two versions. A failed range has been retried on its own by the
source; the read that needs it gets the error (EIO) and the next read fetches it again.
Bytes reach a reader only from completed, checked ranges and in place, so nothing out of
order or short is ever returned but at the end of the file.

Memory: read-ahead takes part-pool memory only while it is free and only up to half of the
pool (writers must not wait for read-ahead), and a range a reader is waiting for is taken
regardless (`force`), at most what the read needs when memory is short.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import trio

from s3fs_registry import metrics
from s3fs_registry.budget import Pool
from s3fs_registry.errors import IntegrityError, PreconditionError
from s3fs_registry.reader.links import LinkCache
from s3fs_registry.reader.sources import BlobSource, S3Source, Source
from s3fs_registry.reader.streams import Streams, Ticket
from s3fs_registry.store import GetResult, Store, quoted

log = logging.getLogger(__name__)

#: what reads hand to pyfuse3, which takes any contiguous buffer: a slice of a fetched
#: segment is passed on without a copy
Buffer = bytes | memoryview

MiB = 1024 * 1024
INITIAL_WINDOW = MiB + 128 * 1024  # the kernel's own 128 KiB read-ahead fits in the first GET
BACKTRACK = MiB  # keep this much behind the reader for slightly out-of-order reads
MIN_DEMAND = MiB  # smallest fetch for a read when memory is short
AHEAD_SHARE = 2  # read-ahead may hold at most 1/AHEAD_SHARE of the part pool


def full_segment(part_size: int) -> int:
    """The largest range: 8-16 MiB, a whole number of parts or a whole part split evenly."""
    if part_size >= 8 * MiB:
        return -(-part_size // -(-part_size // (16 * MiB)))
    return part_size * -(-8 * MiB // max(1, part_size))


class ReadMemory:
    """Read-ahead's share of the part pool (module docstring)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.limit = max(1, pool.limit // AHEAD_SHARE)
        self.used = 0

    def try_take(self, nbytes: int) -> bool:
        if self.used + nbytes > self.limit or not self.pool.try_take(nbytes):
            return False
        self.used += nbytes
        return True

    def force(self, nbytes: int) -> None:
        self.pool.force(nbytes)
        self.used += nbytes

    def give(self, nbytes: int) -> None:
        self.pool.give(nbytes)
        self.used = max(0, self.used - nbytes)


@dataclass
class ReadContext:
    """What every reader of the mount shares."""

    store: Store
    pool: Pool
    nursery: trio.Nursery
    small_file_size: int
    read_ahead: int
    blobs: BlobSource | None = None
    links: LinkCache | None = None
    #: storage.s3.chunksize: the part size of objects the registry and the mount write
    part_size: int = 10 * MiB
    streams: Streams = field(default_factory=lambda: Streams(12))
    s3: Source = field(init=False)
    memory: ReadMemory = field(init=False)
    segment: int = field(init=False)  # the largest range (`full_segment`)

    def __post_init__(self) -> None:
        self.s3 = S3Source(self.store)
        self.memory = ReadMemory(self.pool)
        self.segment = full_segment(self.part_size)

    def source_for(self, key: str) -> Source:
        """Where the bytes of `key` come from (sources.py: where other sources plug in)."""
        if self.blobs is not None and self.blobs.serves(key):
            return self.blobs
        return self.s3


@dataclass(eq=False)
class Segment:
    """Bytes [start, end) of the object, being fetched or fetched."""

    start: int
    end: int
    held: int = 0
    data: bytes = b""
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)
    dropped: bool = False  # left the window: its memory goes back once it is done
    used: bool = False  # a read took bytes from it


class ObjectReader:
    """Reads of one open file (module docstring)."""

    def __init__(self, ctx: ReadContext, key: str, size: int, etag: str) -> None:
        self._ctx = ctx
        self.key = key
        self.size = size
        self.etag = etag
        self._source = ctx.source_for(key)
        self._whole: bytes | None = None
        self._whole_held = 0
        self._segments: list[Segment] = []
        self._next_fetch = 0
        self._window = INITIAL_WINDOW
        self._last_offset = -1
        self._position = 0  # end of the furthest read of this pass: the window starts here
        self._closed = False

    async def read(self, offset: int, size: int) -> Buffer:
        if offset >= self.size or size <= 0:
            return b""
        if self.size <= self._ctx.small_file_size:
            return await self._read_small(offset, size)
        end = min(self.size, offset + size)
        self._track(offset, end)
        self._demand(end)
        self._pump()
        return await self._collect(offset, end)

    def close(self) -> None:
        """Give back read-ahead memory; fetches still running give theirs when they finish."""
        self._closed = True
        self._ctx.streams.forget(self)
        for segment in self._segments:
            self._drop(segment)
        self._segments = []
        self._whole = None
        self._ctx.pool.give(self._whole_held)
        self._whole_held = 0

    # -- the one place bytes come from -----------------------------------------------------

    async def _get(self, first: int, last: int | None, etag: str) -> GetResult:
        return await self._source.get(self.key, first, last, etag)

    # -- small files -----------------------------------------------------------------------

    async def _read_small(self, offset: int, size: int) -> Buffer:
        links = self._ctx.links
        if self._whole is None and links is not None:
            known = links.get(self.key, self.etag, self.size)
            if known is not None:
                return memoryview(known)[offset : offset + size]
        if self._whole is None:
            # the whole object, whatever its size now: one GET is atomic without If-Match
            got = await self._get(0, None, "")
            if links is not None:
                links.put(self.key, got.etag, got.data)
            if self._closed:
                return got.data[offset : offset + size]
            self._whole = got.data
            self.etag = got.etag
            self._whole_held = len(got.data)
            self._ctx.pool.force(self._whole_held)  # counted until the file is closed
        return memoryview(self._whole)[offset : offset + size]

    # -- the window ------------------------------------------------------------------------

    def _track(self, offset: int, end: int) -> None:
        """Grow the window on forward reads; restart it when the reader left it.

        The kernel sends its read-ahead as several reads at once, which can arrive out of
        order and a little ahead of what was fetched so far: a read up to one window past
        the fetched bytes still continues the same pass.
        """
        inside = (
            bool(self._segments)
            and self._segments[0].start <= offset <= self._next_fetch + self._window
        )
        if not inside:
            for segment in self._segments:
                self._drop(segment)
            self._segments = []
            self._next_fetch = offset
            self._window = INITIAL_WINDOW
            self._position = end
        else:
            if offset >= self._last_offset:
                self._window = min(self._largest_window(), self._window * 2)
            self._position = max(self._position, end)
        self._last_offset = offset
        keep = [s for s in self._segments if s.end > offset - BACKTRACK]
        for segment in self._segments[: len(self._segments) - len(keep)]:
            self._drop(segment)
        self._segments = keep

    def _largest_window(self) -> int:
        """`read_ahead`, but no more than the streams allowed now can keep busy."""
        ctx = self._ctx
        fill = (ctx.streams.limit + 1) * ctx.segment
        return max(INITIAL_WINDOW, min(ctx.read_ahead, fill))

    def _plan(self, start: int) -> int:
        """The end of the next range from `start`: as large as the window, at most a full
        segment, ending on a segment boundary when it crosses one (so later ones align)."""
        full = self._ctx.segment
        end = min(self.size, start + min(full, self._window))
        boundary = end // full * full
        return boundary if boundary > start else end

    def _demand(self, end: int) -> None:
        """Fetch at once whatever the read needs that no range covers yet."""
        memory = self._ctx.memory
        while self._next_fetch < end:
            start = self._next_fetch
            stop = self._plan(start)
            if not memory.try_take(stop - start):
                # needed now: take memory anyway, but no more than the read itself wants
                stop = min(stop, start + max(end - start, MIN_DEMAND))
                memory.force(stop - start)
            ticket = self._ctx.streams.start(self, self._pump, needed=True)
            assert ticket is not None
            metrics.READ_RANGES_NEEDED.inc()
            self._launch(start, stop, ticket)

    def _pump(self) -> None:
        """Start read-ahead ranges up to the window while streams and memory allow; called
        after every read and by `Streams` when a stream frees up."""
        if self._closed or not self._segments:
            return
        horizon = min(self.size, self._position + self._window)
        memory, streams = self._ctx.memory, self._ctx.streams
        while self._next_fetch < horizon:
            if not self.etag and streams.held(self):
                return  # one GET first: it tells the ETag every other range must match
            start = self._next_fetch
            stop = self._plan(start)
            if not memory.try_take(stop - start):
                return  # no memory for read-ahead: the next read tries again
            ticket = streams.start(self, self._pump)
            if ticket is None:
                memory.give(stop - start)
                return
            metrics.READ_RANGES_AHEAD.inc()
            self._launch(start, stop, ticket)

    def _launch(self, start: int, stop: int, ticket: Ticket) -> None:
        segment = Segment(start, stop, held=stop - start)
        self._segments.append(segment)
        self._next_fetch = stop
        self._ctx.nursery.start_soon(self._fetch, segment, ticket)

    async def _fetch(self, segment: Segment, ticket: Ticket) -> None:
        delivered = 0
        try:
            got = await self._get(segment.start, segment.end - 1, self.etag)
            self._check(segment, got)
            segment.data = got.data
            if len(got.data) * 2 >= self._ctx.segment:  # only large ranges measure the link
                delivered = len(got.data)
        except Exception as exc:
            segment.error = exc
        finally:
            segment.done.set()
            if segment.dropped or self._closed:
                self._release(segment)
            self._ctx.streams.done(ticket, delivered)

    def _check(self, segment: Segment, got: GetResult) -> None:
        """The range is of the object this file was opened as, and all of it."""
        if got.total_size != self.size or (
            self.etag and got.etag and quoted(got.etag) != quoted(self.etag)
        ):
            raise PreconditionError(
                f"{self.key} changed while open: {got.total_size} bytes, ETag {got.etag} "
                f"(opened with {self.size}, {self.etag or 'no ETag'})",
                code="Changed",
                operation="GetObject",
                key=self.key,
            )
        if len(got.data) != segment.end - segment.start:
            raise IntegrityError(
                f"{self.key}: {len(got.data)} bytes at {segment.start}, asked "
                f"{segment.end - segment.start}",
                code="ShortBody",
                operation="GetObject",
                key=self.key,
            )
        if not self.etag:
            self.etag = got.etag

    # -- handing bytes to the reader -------------------------------------------------------

    async def _collect(self, offset: int, end: int) -> Buffer:
        wanted = [s for s in self._segments if s.start < end and s.end > offset]
        pieces: list[memoryview] = []
        for segment in wanted:
            await segment.done.wait()
            if segment.error is not None:
                self._forget(segment)
                raise segment.error
            segment.used = True
            lo = max(offset, segment.start) - segment.start
            hi = min(end, segment.end) - segment.start
            pieces.append(memoryview(segment.data)[lo:hi])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _forget(self, segment: Segment) -> None:
        """Drop a failed segment and what follows, so that the next read fetches it again."""
        if segment in self._segments:
            index = self._segments.index(segment)
            for later in self._segments[index:]:
                self._drop(later)
            self._segments = self._segments[:index]
            self._next_fetch = segment.start

    def _drop(self, segment: Segment) -> None:
        segment.dropped = True
        if segment.done.is_set():
            self._release(segment)

    def _release(self, segment: Segment) -> None:
        if segment.held:
            if not segment.used and segment.error is None:
                metrics.READ_AHEAD_UNUSED.inc(len(segment.data))
            self._ctx.memory.give(segment.held)
            segment.held = 0
