"""Read path: whole-object GETs for small files, streamed read-ahead for large ones.

Registry reads are of two kinds: small metadata files (links of 71 bytes, hashstates,
manifests), which cost one GET and nothing more, and blob data served to clients in large
sequential reads that may start at any offset (HTTP Range) with several readers at once.
For the second kind each open file keeps a window of segments ahead of the reader: it
starts at `INITIAL_WINDOW`, doubles with every sequential read up to the configured
`read_ahead`, and a read outside the window (a seek) drops it and starts small again, so
random reads stay cheap.

From S3 the segments of a sequential pass are filled from one open-ended ranged GET (a
`_Feed`), read piece by piece as the window advances: a blob pulled from start to end costs
one request, as with the registry's own S3 driver, and a single stream is as fast as
parallel ranges on the servers measured (doc/DEVELOPMENT.md). A feed gives its connection
back when the reader pauses, and a new one resumes where it stopped. When all feed slots
are taken, and for blobs read through CloudFront, each segment is its own ranged GET,
fetched in parallel.

Read-ahead memory comes from the mount-wide budget only when it is free; the bytes a reader
is waiting for are always fetched. Every response is checked (status, length, range) by the
store; GETs carry If-Match once the ETag is known, so that a file replaced in the middle of
a read gives ESTALE, never a mix of two versions.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import trio

from s3fs_registry import metrics
from s3fs_registry.budget import Pool
from s3fs_registry.cloudfront import CloudFrontError, CloudFrontFetcher
from s3fs_registry.errors import IntegrityError, StoreError, TransientError
from s3fs_registry.store import GetResult, Store, Stream

log = logging.getLogger(__name__)

#: what reads hand to pyfuse3, which takes any contiguous buffer: a slice of a fetched
#: segment is passed on without a copy
Buffer = bytes | memoryview

INITIAL_WINDOW = (
    1024 * 1024 + 128 * 1024
)  # the kernel's own 128 KiB read-ahead fits in the first GET
SEGMENT = 8 * 1024 * 1024
BACKTRACK = 1024 * 1024  # keep this much behind the reader for slightly out-of-order reads
MIN_DEMAND = 1024 * 1024  # smallest fetch for a read when memory is short
FEED_IDLE_S = 2.0  # a feed with nothing to fill for this long gives its connection back


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
class LinkCache:
    """Contents of the registry's digest-named link files, kept after their first read.

    A link under `_layers/<alg>/<hex>/`, `_manifests/revisions/<alg>/<hex>/` or a tag's
    `index/<alg>/<hex>/` holds the digest its own path names, nothing else, ever: while the
    file exists (which lookups keep asking S3, within the metadata TTL) its bytes cannot
    change. The registry reads each of them several times per pull (blob access checks,
    then the blob's descriptor); the native driver's count of GETs is reached only by not
    asking again. Entries are also keyed by ETag, so bytes someone wrote there by hand are
    never served in place of the new ones once the mount has seen the new ETag.

    A link never read before needs no GET either when its ETag (from the listing that
    found it) is the MD5 of the digest its path names: S3 gives an object stored in one
    PutObject, unencrypted or SSE-S3, the MD5 of its bytes as ETag, so those bytes are
    known. Any other ETag (multipart, SSE-KMS, other bytes) costs the GET.
    """

    PATH = re.compile(
        r"docker/registry/v2/repositories/.+/"
        r"(?:_layers|_manifests/revisions|_manifests/tags/[^/]+/index)/([^/]+)/([^/]+)/link"
    )
    MAX_SIZE = 1024  # a link is "<alg>:<hex>": 71 bytes for sha256

    def __init__(self, prefix: str, entries: int = 8192) -> None:
        self._prefix = prefix
        self._entries = entries
        self._data: OrderedDict[str, tuple[str, bytes]] = OrderedDict()

    def holds(self, key: str) -> bool:
        """Whether `key` is a link file whose bytes this cache may keep."""
        return self.PATH.fullmatch(key[len(self._prefix) :]) is not None

    def get(self, key: str, etag: str, size: int) -> bytes | None:
        kept = self._data.get(key)
        if kept is None or not etag or kept[0] != etag or len(kept[1]) != size:
            named = self._named(key, etag, size)  # (a GET follows unless it knows)
            if named is None:
                if self.holds(key):
                    metrics.LINKS_MISS.inc()
                return None
            self.put(key, etag, named)
            kept = (etag, named)
        metrics.LINKS_HIT.inc()
        self._data.move_to_end(key)
        return kept[1]

    def _named(self, key: str, etag: str, size: int) -> bytes | None:
        """The digest the link's path names, if its ETag proves that is what it holds."""
        match = self.PATH.fullmatch(key[len(self._prefix) :])
        if match is None or not etag:
            return None
        digest = f"{match[1]}:{match[2]}".encode()
        if len(digest) != size or hashlib.md5(digest).hexdigest() != etag.strip('"'):
            return None
        return digest

    def put(self, key: str, etag: str, data: bytes) -> None:
        if not etag or len(data) > self.MAX_SIZE or not self.holds(key):
            return
        self._data[key] = (etag, data)
        self._data.move_to_end(key)
        while len(self._data) > self._entries:
            self._data.popitem(last=False)


@dataclass
class ReadContext:
    """What every reader shares."""

    store: Store
    pool: Pool
    nursery: trio.Nursery
    small_file_size: int
    read_ahead: int
    blobs: BlobSource | None = None
    links: LinkCache | None = None
    #: how many feeds (open streaming GETs) may run at once; each holds one connection
    feeds: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(16))


class _Feed:
    """One open-ended GET filling consecutive segments of one reader (module docstring)."""

    def __init__(self, start: int) -> None:
        self.next = start  # where the next queued segment must start
        self.queue: deque[Segment] = deque()
        self.wake = trio.Event()
        self.cancelled = False


@dataclass
class Segment:
    """Bytes [start, end) of the object, being fetched or fetched."""

    start: int
    end: int
    held: int = 0
    data: bytes = b""
    error: BaseException | None = None
    done: trio.Event = field(default_factory=trio.Event)
    waiters: int = 0  # reads waiting for these bytes


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
        self._last_offset = -1
        self._closed = False
        self._feed: _Feed | None = None

    async def read(self, offset: int, size: int) -> Buffer:
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
        self._stop_feed()
        for segment in self._segments:
            self._drop(segment)
        self._segments = []
        self._whole = None
        self._ctx.pool.give(self._whole_held)
        self._whole_held = 0

    # -- small files ---------------------------------------------------------------------

    async def _read_small(self, offset: int, size: int) -> Buffer:
        links = self._ctx.links
        if self._whole is None and links is not None:
            known = links.get(self.key, self.etag, self.size)
            if known is not None:
                return memoryview(known)[offset : offset + size]
        if self._whole is None:
            if self._blobs is not None:
                got = await self._blobs.get(self.key, 0, self.size - 1, self.etag)
            else:
                got = await self._ctx.store.get(self.key)
            if links is not None:
                links.put(self.key, got.etag, got.data)
            if self._closed:
                return got.data[offset : offset + size]
            self._whole = got.data
            self.etag = got.etag
            self._whole_held = len(got.data)
            self._ctx.pool.force(self._whole_held)  # counted until the file is closed
        return memoryview(self._whole)[offset : offset + size]

    # -- read-ahead ----------------------------------------------------------------------

    def _track(self, offset: int, end: int) -> None:
        """Grow the window on forward reads; restart it when the reader left it.

        The kernel sends its read-ahead as several reads at once, which can arrive out of
        order and a little ahead of what was fetched so far: a read up to one window past
        the fetched bytes still continues the same pass (the same streaming GET).
        """
        inside = (
            bool(self._segments)
            and self._segments[0].start <= offset <= self._next_fetch + self._window
        )
        if not inside:
            self._stop_feed()
            for segment in self._segments:
                self._drop(segment)
            self._segments = []
            self._next_fetch = offset
            self._window = INITIAL_WINDOW
        elif offset >= self._last_offset:
            self._window = min(max(self._ctx.read_ahead, INITIAL_WINDOW), self._window * 2)
        self._last_offset = offset
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
            if not self._feed_segment(segment):
                self._ctx.nursery.start_soon(self._fetch, segment)

    # -- feeds: one streaming GET for a sequential pass ------------------------------------

    def _feed_segment(self, segment: Segment) -> bool:
        """Queue `segment` on this reader's feed, starting one if a slot is free."""
        if self._blobs is not None:
            return False
        feed = self._feed
        if feed is None or feed.cancelled or feed.next != segment.start:
            self._stop_feed()
            feed = _Feed(segment.start)
            try:
                self._ctx.feeds.acquire_on_behalf_of_nowait(feed)
            except trio.WouldBlock:
                return False
            self._feed = feed
            self._ctx.nursery.start_soon(self._run_feed, feed)
        feed.queue.append(segment)
        feed.next = segment.end
        feed.wake.set()
        return True

    def _stop_feed(self) -> None:
        if self._feed is not None:
            self._feed.cancelled = True
            self._feed.wake.set()
            self._feed = None

    async def _run_feed(self, feed: _Feed) -> None:
        stream: Stream | None = None
        try:
            while not feed.cancelled:
                if not feed.queue:
                    feed.wake = trio.Event()
                    with trio.move_on_after(FEED_IDLE_S):
                        await feed.wake.wait()
                    if not feed.queue:
                        break  # the reader paused: give the connection back
                    continue
                stream = await self._fill(feed, feed.queue[0], stream)
                feed.queue.popleft()
        finally:
            if stream is not None:
                stream.close()
            feed.cancelled = True
            if self._feed is feed:
                self._feed = None
            for segment in feed.queue:  # not filled: fetch what someone still wants
                if segment.waiters or segment in self._segments:
                    self._ctx.nursery.start_soon(self._fetch, segment)
                # else nobody can ever wait for it: it left the window and no read holds it
            self._ctx.feeds.release_on_behalf_of(feed)

    async def _fill(self, feed: _Feed, segment: Segment, stream: Stream | None) -> Stream | None:
        """Read `segment` from the stream; a stream that breaks mid-body is reopened there.

        Opening has its own bounded retries in the store; reopening after a broken body is
        bounded by the same `retry_attempts` and `retry_time`.
        """
        store = self._ctx.store
        deadline = trio.current_time() + store.retry_time
        reopens = 0
        while True:
            try:
                if stream is None or stream.position != segment.start:
                    if stream is not None:
                        stream.close()
                    stream = await store.open_stream(self.key, segment.start, self.etag)
                    if stream is not None and not self.etag:
                        self.etag = stream.etag
                    if stream is None:
                        self._finish(segment, data=b"")  # at or past the end of the object
                        return None
                data = await store.read_stream(stream, segment.end - segment.start)
            except (TransientError, IntegrityError) as exc:
                broken_body = stream is not None
                if stream is not None:
                    stream.close()
                stream = None
                reopens += broken_body
                if (
                    broken_body
                    and not feed.cancelled
                    and reopens < store.retry_attempts
                    and trio.current_time() < deadline
                ):
                    log.info("%s: stream broke at %d (%s); reopening", self.key, segment.start, exc)
                    continue
                self._finish(segment, error=exc)
                return None
            except StoreError as exc:
                self._finish(segment, error=exc)
                return stream
            self._finish(segment, data=data)
            return stream

    def _finish(
        self, segment: Segment, data: bytes = b"", error: BaseException | None = None
    ) -> None:
        segment.data, segment.error = data, error
        segment.done.set()
        if self._closed:
            self._drop(segment)

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

    async def _collect(self, offset: int, end: int) -> Buffer:
        wanted = [s for s in self._segments if s.start < end and s.end > offset]
        for segment in wanted:  # claim them all first: a concurrent seek must not drop one
            segment.waiters += 1
        try:
            return await self._gather(wanted, offset, end)
        finally:
            for segment in wanted:
                segment.waiters -= 1

    async def _gather(self, wanted: list[Segment], offset: int, end: int) -> Buffer:
        pieces: list[memoryview] = []
        for segment in wanted:
            await segment.done.wait()
            if segment.error is not None:
                self._forget(segment)
                raise segment.error
            lo, hi = (
                max(offset, segment.start) - segment.start,
                min(end, segment.end) - segment.start,
            )
            pieces.append(memoryview(segment.data)[lo:hi])
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
