"""A bounded local disk cache of registry blob data, every byte of it verified.

Why: a registry serves the same layers again and again; the page cache keeps them only
while memory lasts and a restart empties it. Blob data (`blobs/<alg>/<xx>/<hex>/data`) is
named by its digest, so a copy can never be stale in content, only in existence, and every
byte of it can be checked.

Layout: `mount.cache_dir/<id>/`, where `<id>` is a hash of (endpoint, bucket, prefix) and
the file `IDENTITY` inside says which; a cache of another bucket or prefix is never read,
and a directory whose `IDENTITY` does not match is emptied. A `lock` file (flock) keeps
two daemons out of one directory. Each blob is `<alg>-<hex>` (its bytes) plus
`<alg>-<hex>.crc` (JSON: size, ETag, and a CRC32 of every `CHUNK`). The sidecar is
written, by rename, only after the whole blob was written and its digest matched the
path's: a data file without one is a fill that never finished and is removed at start.
The index is rebuilt at start from the sidecars (sizes checked against the data files),
in least-recently-used order by the sidecars' mtimes, which each use touches.

Verification: a fill hashes the blob as it is written and keeps it only if the digest
matches; a failed or interrupted fill is dropped whole. Every chunk read from the cache is
checked against its CRC before a byte of it is served; a damaged file (flipped bytes,
truncation) is dropped and the read goes to S3. Bytes served while a fill is still running
are the bytes S3 just returned (their CRC is checked as well).

Existence stays S3's: the cache is asked only once a file is open, and that follows S3
within `immutable_ttl` as ever. When the mount learns that a blob is gone (a lookup S3
answers with nothing, or its own delete) the entry is dropped (`gone`), and readers still
holding it go to S3, which answers as it does for a removed file. A cached copy is used
only when its size, and its ETag when both are known, are what S3 lists.

Sharing: one fill per blob, started by a reader that reads from offset 0; other readers of
that blob read what it has written so far and wait for the rest (when they are at most
`WAIT_AHEAD` beyond it; further ahead, they read S3 themselves). The fill reads through an
ordinary reader of the object, so it gets the read path's read-ahead and its checks. Disk
I/O runs in worker threads under the cache's own limiter, so a cold blob and a warm one do
not wait for each other. Memory comes from the mount's budget only for what is in flight:
the fill's read-ahead and each open reader's current chunks.

Bounds: a blob costs its size rounded up to 4 KiB plus a block for its sidecar; a fill
reserves that first, evicting least-recently-used entries nobody is reading. A blob larger
than the cache, or one that does not fit next to entries being read, is not cached. A
write error (ENOSPC, EDQUOT, EIO) drops the fill and lowers the cache's limit to what is
stored, so that later reads evict instead of failing; reads are never failed by the cache.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import zlib
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import trio

from s3fs_registry import metrics
from s3fs_registry.budget import Pool

log = logging.getLogger(__name__)

Buffer = bytes | memoryview
T = TypeVar("T")

BLOB_DATA = re.compile(
    r"docker/registry/v2/blobs/(sha256|sha384|sha512)/[0-9a-f]{2}/([0-9a-f]{64,128})/data"
)
#: the path of a blob's directory or of a directory above it (what `gone` may be told)
BLOBS_TREE = re.compile(r"docker/registry/v2/blobs(/.*)?")
BLOBS_ANCESTORS = ("", "docker", "docker/registry", "docker/registry/v2")
CHUNK = 1024 * 1024  # unit of the CRC checks and of cache reads
BLOCK = 4096
WAIT_AHEAD = 64 * 1024 * 1024  # a reader this far past the fill waits for it
KEPT_CHUNKS = 2  # verified chunks an open reader keeps (reads arrive slightly out of order)
RECENT_CHUNKS = 8  # chunks a fill keeps in memory for the readers that follow it
FILL_STEP = 4 * CHUNK  # what a fill asks the read path for at a time
DISK_THREADS = 8
IDENTITY = "IDENTITY"
SIDECAR = ".crc"


class Reader(Protocol):
    """What the cache needs of the read path's reader of one object."""

    key: str
    size: int
    etag: str

    async def read(self, offset: int, size: int) -> Buffer: ...

    def close(self) -> None: ...


ReaderFactory = Callable[[], Reader]


def cost(size: int) -> int:
    """Disk space one blob takes: its blocks and its sidecar's (at most 11 bytes a CRC)."""
    sidecar = 512 + 12 * chunks(size)
    return _blocks(size) + _blocks(sidecar)


def _blocks(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def chunks(size: int) -> int:
    return -(-size // CHUNK)


@dataclass(eq=False)
class Blob:
    """One cached (or being cached) blob; readers hold it while they use it."""

    name: str  # "<alg>-<hex>", the file name
    rel: str  # the key relative to the mount's prefix
    size: int
    etag: str
    crcs: list[int] = field(default_factory=list)
    complete: bool = False
    filling: bool = False
    dropped: bool = False
    users: int = 0
    available: int = 0  # bytes readers can have: written, or in `recent` while a fill runs
    progress: trio.Event = field(default_factory=trio.Event)
    #: the chunks a fill wrote last, kept in memory for the readers that follow it
    recent: OrderedDict[int, memoryview] = field(default_factory=OrderedDict)

    @property
    def filled(self) -> int:
        return min(self.size, len(self.crcs) * CHUNK)

    def notify(self) -> None:
        self.progress.set()
        self.progress = trio.Event()


@dataclass
class Stats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    verification_failures: int = 0
    write_errors: int = 0
    served_bytes: int = 0


class BlobCache:
    """The cache of one mount (see the module docstring): `load` at start, then `serve`."""

    pool: Pool  # memory for what is in flight (set by `serve`)
    nursery: trio.Nursery  # where fills run (set by `serve`)

    def __init__(self, directory: str, limit: int, identity: dict[str, str], prefix: str) -> None:
        self.limit = limit
        self.configured_limit = limit
        self.identity = identity
        self.prefix = prefix
        tag = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
        self.root = os.path.join(directory, tag)
        self.used = 0  # cost of the entries, reservations of fills included
        self.fills = 0  # fills running
        self.stats = Stats()
        self._blobs: OrderedDict[str, Blob] = OrderedDict()  # least recently used first
        self._limiter = trio.CapacityLimiter(DISK_THREADS)
        self._lock_fd = -1

    # -- start ---------------------------------------------------------------------------

    def load(self) -> None:
        """Open the directory and rebuild the index (blocking: run before serving)."""
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        lock_fd = os.open(os.path.join(self.root, "lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise OSError(errno.EBUSY, f"{self.root} is in use by another daemon") from None
        self._lock_fd = lock_fd
        self._check_identity()
        found: list[tuple[float, Blob]] = []
        for name in os.listdir(self.root):
            if name in (IDENTITY, "lock"):
                continue
            path = os.path.join(self.root, name)
            if not name.endswith(SIDECAR):
                if not os.path.exists(path + SIDECAR):
                    _remove(path)  # a fill that never finished (or a stray file)
                continue
            entry = self._read_sidecar(path)
            if entry is None:
                _remove(path)
                _remove(path[: -len(SIDECAR)])
                continue
            found.append(entry)
        for _, blob in sorted(found, key=lambda item: item[0]):
            self._blobs[blob.name] = blob
            self.used += cost(blob.size)
        self._evict(0)
        log.info(
            "blob cache %s: %d blobs, %s of %s",
            self.root,
            len(self._blobs),
            _mib(self.used),
            _mib(self.limit),
        )

    def serve(self, pool: Pool, nursery: trio.Nursery) -> None:
        """Start serving: fills run in `nursery`, in-flight bytes come from `pool`."""
        self.pool = pool
        self.nursery = nursery

    def _check_identity(self) -> None:
        path = os.path.join(self.root, IDENTITY)
        wanted = json.dumps(self.identity, sort_keys=True)
        try:
            with open(path, encoding="utf-8") as f:
                if f.read() == wanted:
                    return
            log.warning("blob cache %s belongs to another bucket or prefix: emptied", self.root)
        except FileNotFoundError:
            pass
        for name in os.listdir(self.root):
            if name != "lock":
                target = os.path.join(self.root, name)
                if os.path.isdir(target):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    _remove(target)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(wanted)
        os.replace(path + ".tmp", path)

    def _read_sidecar(self, path: str) -> tuple[float, Blob] | None:
        """The entry a sidecar describes, if its data file is whole in size; else None."""
        name = os.path.basename(path)[: -len(SIDECAR)]
        try:
            with open(path, encoding="utf-8") as f:
                meta = json.load(f)
            size, etag, crcs, rel = meta["size"], meta["etag"], meta["crcs"], meta["rel"]
            valid = (
                meta.get("chunk") == CHUNK
                and isinstance(size, int)
                and isinstance(crcs, list)
                and len(crcs) == chunks(size)
                and self._name(rel) == name
                and os.stat(path[: -len(SIDECAR)]).st_size == size
            )
            if not valid:
                raise ValueError("does not describe its data file")
            used = os.stat(path).st_mtime
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("blob cache: %s dropped at start (%s)", name, exc)
            self._count_failure()
            return None
        return used, Blob(name, rel, size, str(etag), [int(c) for c in crcs], complete=True)

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- lookups -------------------------------------------------------------------------

    def _name(self, rel: str) -> str | None:
        match = BLOB_DATA.fullmatch(rel)
        return f"{match.group(1)}-{match.group(2)}" if match else None

    def holds(self, key: str) -> bool:
        """Whether `key` is blob data this cache may keep."""
        return key.startswith(self.prefix) and self._name(key[len(self.prefix) :]) is not None

    def __len__(self) -> int:
        return len(self._blobs)

    def attach(
        self, key: str, size: int, etag: str, make_reader: ReaderFactory, fill: bool
    ) -> Blob | None:
        """The entry of `key` for one reader (held until `release`), starting a fill when
        `fill` and there is none; None when the cache cannot serve this reader."""
        rel = key[len(self.prefix) :]
        name = self._name(rel)
        if name is None or size <= 0:
            return None
        blob = self._blobs.get(name)
        if blob is not None and (blob.size != size or (etag and blob.etag and blob.etag != etag)):
            if blob.users or blob.filling:
                return None  # S3 has other bytes than those being read: leave them be
            log.info("blob cache: %s differs from S3's object (size or ETag); dropped", rel)
            self._drop(blob)
            blob = None
        if blob is not None:
            self._blobs.move_to_end(name)
            blob.users += 1
            if blob.complete:
                self.nursery.start_soon(self._touch, blob)
            return blob
        if not fill or not self._reserve(cost(size)):
            return None
        blob = Blob(name, rel, size, etag, filling=True, users=1)
        self._blobs[name] = blob
        self.fills += 1
        self.nursery.start_soon(self._fill, blob, make_reader)
        return blob

    def release(self, blob: Blob) -> None:
        blob.users -= 1

    def gone(self, rel: str) -> None:
        """S3 (or this mount's own delete) says `rel` does not exist: drop what lies there."""
        if rel in BLOBS_ANCESTORS:
            rel = BLOBS_ANCESTORS[-1]  # nothing at all there: no blob either
        elif not BLOBS_TREE.fullmatch(rel):
            return
        name = self._name(rel) or self._name(rel + "/data")
        if name is not None:
            blob = self._blobs.get(name)
            if blob is not None:
                log.info("blob cache: %s is gone from S3; dropped", blob.rel)
                self._drop(blob)
            return
        below = rel + "/"
        for blob in [b for b in self._blobs.values() if b.rel.startswith(below)]:
            self._drop(blob)

    # -- space ---------------------------------------------------------------------------

    def _reserve(self, needed: int) -> bool:
        if needed > self.limit:
            return False
        self._evict(needed)
        if self.used + needed > self.limit:
            return False
        self.used += needed
        return True

    def _evict(self, needed: int) -> None:
        """Drop least-recently-used entries nobody holds until `needed` more bytes fit."""
        for blob in list(self._blobs.values()):
            if self.used + needed <= self.limit:
                return
            if blob.users or blob.filling:
                continue
            log.debug("blob cache: evicting %s", blob.name)
            self.stats.evictions += 1
            metrics.BLOB_CACHE_EVICTIONS.inc()
            self._drop(blob)

    def _drop(self, blob: Blob) -> None:
        """Forget `blob` and remove its files; its readers see `dropped` and go to S3."""
        if blob.dropped:
            return
        blob.dropped = True
        blob.notify()
        if self._blobs.get(blob.name) is blob:
            del self._blobs[blob.name]
        self.used -= cost(blob.size)
        path = os.path.join(self.root, blob.name)
        _remove(path + SIDECAR)
        _remove(path)

    def _count_failure(self) -> None:
        self.stats.verification_failures += 1
        metrics.BLOB_CACHE_VERIFY_FAILURES.inc()

    def damaged(self, blob: Blob, why: str) -> None:
        """A read found the cached bytes of `blob` damaged: count, say so, drop."""
        if blob.dropped:
            return
        log.warning("blob cache: %s is damaged on disk (%s); reading S3 instead", blob.rel, why)
        self._count_failure()
        self._drop(blob)

    # -- filling -------------------------------------------------------------------------

    async def _fill(self, blob: Blob, make_reader: ReaderFactory) -> None:
        """Fetch the blob through the read path, step by step; each step is offered to the
        readers from memory at once, and written (hashed, CRCs taken) while the next one
        is fetched, so that readers never wait for the disk."""
        path = os.path.join(self.root, blob.name)
        hasher = hashlib.new(blob.name.split("-", 1)[0])
        reader = make_reader()
        fd = -1
        writing: trio.Event | None = None  # the previous step's write
        failures: list[Exception] = []
        try:
            fd = await self._disk(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            while blob.available < blob.size and not blob.dropped:
                start = blob.available
                want = min(FILL_STEP, blob.size - start)
                data = bytes(await reader.read(start, want))  # kept until written
                if len(data) != want:
                    raise EOFError(f"S3 returned {len(data)} bytes at {start}, not {want}")
                if blob.dropped:
                    return
                view = memoryview(data)  # chunks share the step's bytes: no copy
                for n in range(0, want, CHUNK):
                    self._keep_recent(blob, (start + n) // CHUNK, view[n : n + CHUNK])
                blob.available = start + want
                blob.notify()
                if writing is not None:
                    await writing.wait()
                if failures:
                    raise failures[0]
                writing = trio.Event()
                self.nursery.start_soon(
                    self._write_step, blob, fd, start, data, hasher, writing, failures
                )
            if writing is not None:
                await writing.wait()
            if failures:
                raise failures[0]
            if blob.dropped:
                return
            if hasher.hexdigest() != blob.name.split("-", 1)[1]:
                log.warning("blob cache: %s does not match its digest; not kept", blob.rel)
                self._count_failure()
                return
            blob.etag = blob.etag or reader.etag
            await self._disk(self._write_sidecar, blob)
            blob.complete = True
        except OSError as exc:
            self._write_error(blob, exc)
        except trio.Cancelled:
            raise
        except Exception as exc:  # S3 failed (the readers see it themselves): not cached
            log.info("blob cache: %s not filled: %s", blob.rel, exc)
        finally:
            if writing is not None:
                with trio.CancelScope(shield=True):
                    await writing.wait()  # the thread may still use fd
            blob.filling = False
            self.fills -= 1
            self._forget_recent(blob)
            reader.close()
            if fd >= 0:
                os.close(fd)
            if not blob.complete:
                self._drop(blob)
            blob.notify()

    async def _write_step(
        self,
        blob: Blob,
        fd: int,
        start: int,
        data: bytes,
        hasher: Any,
        done: trio.Event,
        failures: list[Exception],
    ) -> None:
        try:
            crcs = await self._disk(_write_chunks, fd, start, data, hasher)
            blob.crcs.extend(crcs)
            self._trim_recent(blob)
        except Exception as exc:
            failures.append(exc)
        finally:
            done.set()

    def _keep_recent(self, blob: Blob, index: int, data: memoryview) -> None:
        """Readers that follow the fill take its newest chunks from memory, not from disk;
        chunks not yet written are always there."""
        self.pool.force(len(data))
        blob.recent[index] = data

    def _trim_recent(self, blob: Blob) -> None:
        written = len(blob.crcs)
        while len(blob.recent) > RECENT_CHUNKS:
            index = next(iter(blob.recent))
            if index >= written:
                return
            self.pool.give(len(blob.recent.pop(index)))

    def _forget_recent(self, blob: Blob) -> None:
        self.pool.give(sum(len(data) for data in blob.recent.values()))
        blob.recent.clear()

    def _write_sidecar(self, blob: Blob) -> None:
        path = os.path.join(self.root, blob.name + SIDECAR)
        meta = {"rel": blob.rel, "size": blob.size, "etag": blob.etag, "chunk": CHUNK}
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            json.dump({**meta, "crcs": blob.crcs}, f, separators=(",", ":"))
        os.replace(path + ".tmp", path)

    def _write_error(self, blob: Blob, exc: OSError) -> None:
        self.stats.write_errors += 1
        metrics.BLOB_CACHE_WRITE_ERRORS.inc()
        stored = self.used - cost(blob.size)
        partial = 0
        with contextlib.suppress(OSError):
            partial = os.stat(os.path.join(self.root, blob.name)).st_size
        fitted = stored + _blocks(partial) // 2  # what the directory did take, with a margin
        if exc.errno in (errno.ENOSPC, errno.EDQUOT) and fitted < self.limit:
            log.warning(
                "blob cache %s: %s; the cache now keeps at most %s (what fitted)",
                self.root,
                exc.strerror,
                _mib(fitted),
            )
            self.limit = fitted
        else:
            log.warning("blob cache: cannot write %s: %s", blob.name, exc)

    async def _touch(self, blob: Blob) -> None:
        """Mark `blob` used, on disk too, so that the order survives a restart."""
        path = os.path.join(self.root, blob.name + SIDECAR)
        with contextlib.suppress(OSError):
            await self._disk(os.utime, path)

    # -- reading -------------------------------------------------------------------------

    async def open_file(self, blob: Blob) -> int:
        return await self._disk(os.open, os.path.join(self.root, blob.name), os.O_RDONLY)

    async def read_chunk(self, blob: Blob, fd: int, index: int) -> bytes | None:
        """Chunk `index` of `blob`, checked against its CRC; None if damaged (dropped)."""
        length = min(CHUNK, blob.size - index * CHUNK)
        try:
            data, crc = await self._disk(_read_chunk, fd, index * CHUNK, length)
        except OSError as exc:
            self.damaged(blob, f"read error: {exc}")
            return None
        if len(data) != length:
            self.damaged(blob, f"chunk {index} is {len(data)} bytes, not {length}")
            return None
        if crc != blob.crcs[index]:
            self.damaged(blob, f"chunk {index} fails its CRC32")
            return None
        return data

    async def _disk(self, fn: Callable[..., T], *args: Any) -> T:
        return await trio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def report(self) -> dict[str, int]:
        """What `status` shows of the cache."""
        return {
            "used": self.used,
            "limit": self.limit,
            "configured_limit": self.configured_limit,
            "entries": len(self._blobs),
            "fills": self.fills,
            "hits": self.stats.hits,
            "misses": self.stats.misses,
            "evictions": self.stats.evictions,
            "verification_failures": self.stats.verification_failures,
            "write_errors": self.stats.write_errors,
            "served_bytes": self.stats.served_bytes,
        }


class CachedReader:
    """Reads of one open blob file: from the cache when it has the bytes, else from S3.

    `make_reader` builds the read path's own reader of the object, used for what the
    cache cannot serve (and by a fill). The first read decides: a complete entry is a hit;
    otherwise a miss, and a read from offset 0 starts a fill that this reader follows.
    """

    def __init__(
        self, cache: BlobCache, key: str, size: int, etag: str, make_reader: ReaderFactory
    ) -> None:
        self.cache = cache
        self.key = key
        self.size = size
        self.etag = etag
        self._make_reader = make_reader
        self._inner: Reader | None = None
        self._blob: Blob | None = None
        self._counted = False
        self._fd = -1
        self._kept: OrderedDict[int, bytes] = OrderedDict()
        self._loading: dict[int, trio.Event] = {}
        self._closed = False
        self._gave_up = False  # the cache dropped the blob under this reader: S3 from now on

    async def read(self, offset: int, size: int) -> Buffer:
        if offset >= self.size or size <= 0:
            return b""
        end = min(self.size, offset + size)
        blob = self._blob
        if blob is None and not self._gave_up:
            blob = self._attach(offset)
        if blob is not None:
            got = await self._from_cache(blob, offset, end)
            if got is not None:
                self.cache.stats.served_bytes += len(got)
                metrics.BLOB_CACHE_SERVED_BYTES.inc(len(got))
                return got
        if self._inner is None:
            self._inner = self._make_reader()
        return await self._inner.read(offset, size)

    def close(self) -> None:
        self._closed = True
        self._detach()
        if self._inner is not None:
            self._inner.close()

    def _attach(self, offset: int) -> Blob | None:
        blob = self.cache.attach(self.key, self.size, self.etag, self._make_reader, offset == 0)
        if not self._counted:
            self._counted = True
            hit = blob is not None and blob.complete
            if hit:
                self.cache.stats.hits += 1
            else:
                self.cache.stats.misses += 1
            (metrics.BLOB_CACHE_HITS if hit else metrics.BLOB_CACHE_MISSES).inc()
        self._blob = blob
        return blob

    def _detach(self) -> None:
        self._gave_up = True
        if self._blob is not None:
            self.cache.release(self._blob)
            self._blob = None
        for data in self._kept.values():
            self.cache.pool.give(len(data))
        self._kept.clear()
        self._close_fd()

    def _close_fd(self) -> None:
        """Close the cache file once no load is using it (a closed fd's number may be
        reused at once by another open: a pread in flight must never read that file)."""
        if self._fd >= 0 and not self._loading:
            os.close(self._fd)
            self._fd = -1

    async def _from_cache(self, blob: Blob, offset: int, end: int) -> Buffer | None:
        """The bytes [offset, end) from the cache, or None (then S3 serves them)."""
        while not blob.complete and blob.available < end and not blob.dropped:
            if not blob.filling or end - blob.available > WAIT_AHEAD:
                return None
            await blob.progress.wait()
        if blob.dropped or self._closed:
            if self._blob is blob:
                self._detach()
            return None
        pieces: list[memoryview] = []
        for index in range(offset // CHUNK, (end - 1) // CHUNK + 1):
            data = await self._chunk(blob, index)
            if data is None:
                if self._blob is blob:
                    self._detach()
                return None
            base = index * CHUNK
            lo, hi = max(offset, base) - base, min(end, base + CHUNK) - base
            pieces.append(memoryview(data)[lo:hi])
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _chunk(self, blob: Blob, index: int) -> Buffer | None:
        recent = blob.recent.get(index)
        if recent is not None:
            return recent  # what the fill just received from S3
        if blob.dropped or index >= len(blob.crcs):
            return None  # the fill failed before writing this chunk: S3 serves it
        while True:
            kept = self._kept.get(index)
            if kept is not None:
                self._kept.move_to_end(index)
                return kept
            loading = self._loading.get(index)
            if loading is None:
                break
            await loading.wait()  # another read of this handle is loading it
            if blob.dropped or self._blob is not blob:
                return None
        event = self._loading[index] = trio.Event()
        try:
            if self._fd < 0:
                fd = await self.cache.open_file(blob)
                if self._fd >= 0 or self._blob is not blob:
                    os.close(fd)
                else:
                    self._fd = fd
            if self._blob is not blob:
                return None
            data = await self.cache.read_chunk(blob, self._fd, index)
            if data is None or self._blob is not blob:
                return None
            self.cache.pool.force(len(data))
            self._kept[index] = data
            while len(self._kept) > KEPT_CHUNKS:
                _, old = self._kept.popitem(last=False)
                self.cache.pool.give(len(old))
            return data
        except OSError as exc:
            self.cache.damaged(blob, f"cannot open: {exc}")
            return None
        finally:
            del self._loading[index]
            event.set()
            if self._blob is None:
                self._close_fd()  # detached while this load ran


def _write_chunks(fd: int, offset: int, data: Buffer, hasher: Any) -> list[int]:
    """Write `data` at `offset` (a whole number of chunks, or the blob's last bytes), hash
    it, and return the CRC32 of each chunk."""
    view = memoryview(data)
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)
    hasher.update(view)
    return [zlib.crc32(view[i : i + CHUNK]) for i in range(0, len(view), CHUNK)]


def _read_chunk(fd: int, offset: int, length: int) -> tuple[bytes, int]:
    data = os.pread(fd, length, offset)
    return data, zlib.crc32(data)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB"
