"""What the mount is doing, as Prometheus metrics and as the figures `status` reports.

Every metric lives on one private `CollectorRegistry` (no default collectors but the
process's own CPU, memory and file descriptors, read from /proc only when scraped). The
modules that do the work count into the objects below with one call each; labelled series
that the hot paths use (a FUSE read, a cache lookup) are resolved once, so counting costs
a lock and an addition. Gauges of things that already have a count (memory pools, spool,
uploads in flight) are read when scraped instead of being kept up to date.

`serve()` starts prometheus_client's own HTTP server in a daemon thread on the configured
address. Besides the metrics, the module keeps what `status` shows and Prometheus has no
use for: the uploads in flight with their progress, the last S3 error, and per-minute
counts of requests, errors and retries (`RECENT`). Those are only changed and walked on
the trio thread (`store._call`, the writer, the status server), so they need no lock; a
scrape only takes `len(UPLOADS)`.

Names and units follow the Prometheus conventions: `s3fs_registry_` prefix, `_total` for
counters, `_seconds` and `_bytes` for units.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client import start_http_server as _start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from s3fs_registry import __version__
from s3fs_registry.errors import (
    AccessDeniedError,
    IntegrityError,
    NoSpaceError,
    NotFoundError,
    PreconditionError,
    TransientError,
)

log = logging.getLogger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # `_created` series double a scrape
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)

#: request latencies on loopback are a millisecond, on AWS tens, a throttled one seconds
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# -- S3 ------------------------------------------------------------------------------------

S3_REQUESTS = Counter(
    "s3fs_registry_s3_requests",
    "S3 requests sent (every attempt), by operation and outcome",
    ["operation", "outcome"],
    registry=REGISTRY,
)
S3_RETRIES = Counter(
    "s3fs_registry_s3_retries",
    "S3 requests sent again after a transient error, by operation",
    ["operation"],
    registry=REGISTRY,
)
S3_FAILURES = Counter(
    "s3fs_registry_s3_failures",
    "S3 requests that failed for good (after any retries; not-found excluded), by operation "
    "and outcome",
    ["operation", "outcome"],
    registry=REGISTRY,
)
S3_SECONDS = Histogram(
    "s3fs_registry_s3_request_duration_seconds",
    "Latency of one S3 request (one attempt, the body of a whole GET included), by operation",
    ["operation"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
READ_BYTES = Counter(
    "s3fs_registry_read_bytes",
    "Object bytes received, by source (s3, cloudfront)",
    ["source"],
    registry=REGISTRY,
)
WRITTEN_BYTES = Counter(
    "s3fs_registry_written_bytes",
    "Object bytes sent to S3 (PutObject and UploadPart bodies that S3 accepted)",
    registry=REGISTRY,
)
S3_READ_BYTES = READ_BYTES.labels("s3")
CLOUDFRONT_READ_BYTES = READ_BYTES.labels("cloudfront")

# -- the read path -------------------------------------------------------------------------

READ_STREAMS = Gauge(
    "s3fs_registry_read_streams",
    "Ranged GETs of file data in flight (read-ahead and reads waiting for their bytes)",
    registry=REGISTRY,
)
READ_STREAM_LIMIT = Gauge(
    "s3fs_registry_read_stream_limit",
    "How many read-ahead GETs the mount runs at once, as learnt from what they deliver",
    registry=REGISTRY,
)
READ_RANGES = Counter(
    "s3fs_registry_read_ranges",
    "Byte ranges of files fetched: kind=ahead (read-ahead) or needed (a read was waiting)",
    ["kind"],
    registry=REGISTRY,
)
READ_RANGES_AHEAD = READ_RANGES.labels("ahead")
READ_RANGES_NEEDED = READ_RANGES.labels("needed")
READ_AHEAD_UNUSED = Counter(
    "s3fs_registry_read_ahead_unused_bytes",
    "Bytes fetched ahead that no read used (the reader seeked away or closed the file)",
    registry=REGISTRY,
)

# -- CloudFront ----------------------------------------------------------------------------

CLOUDFRONT_REQUESTS = Counter(
    "s3fs_registry_cloudfront_requests",
    "Ranged GETs of blob data sent to CloudFront",
    registry=REGISTRY,
)
CLOUDFRONT_FALLBACKS = Counter(
    "s3fs_registry_cloudfront_fallbacks",
    "CloudFront fetches that failed and were read from S3 instead, by cause",
    ["cause"],
    registry=REGISTRY,
)

# -- FUSE ----------------------------------------------------------------------------------

FUSE_OPERATIONS = Counter(
    "s3fs_registry_fuse_operations",
    "FUSE requests handled, by operation",
    ["operation"],
    registry=REGISTRY,
)
FUSE_ERRORS = Counter(
    "s3fs_registry_fuse_errors",
    "FUSE requests answered with an error, by operation and errno",
    ["operation", "errno"],
    registry=REGISTRY,
)
_fuse_children: dict[str, Any] = {}


def fuse_operation(operation: str) -> None:
    """Count one FUSE request (a dict lookup and an addition on the hot path)."""
    child = _fuse_children.get(operation)
    if child is None:
        child = _fuse_children[operation] = FUSE_OPERATIONS.labels(operation)
    child.inc()


def fuse_error(operation: str, code: int) -> None:
    FUSE_ERRORS.labels(operation, errno.errorcode.get(code, str(code))).inc()


# -- writes --------------------------------------------------------------------------------

PARTS_IN_FLIGHT = Gauge(
    "s3fs_registry_upload_parts_in_flight",
    "Multipart parts (UploadPart, UploadPartCopy) being uploaded in the background",
    registry=REGISTRY,
)

# -- caches and the janitor ----------------------------------------------------------------

CACHE_LOOKUPS = Counter(
    "s3fs_registry_cache_lookups",
    "Lookups in the mount's caches (attributes, negative, links), by cache and result",
    ["cache", "result"],
    registry=REGISTRY,
)
ATTRIBUTES_HIT = CACHE_LOOKUPS.labels("attributes", "hit")
ATTRIBUTES_MISS = CACHE_LOOKUPS.labels("attributes", "miss")
NEGATIVE_HIT = CACHE_LOOKUPS.labels("negative", "hit")
NEGATIVE_MISS = CACHE_LOOKUPS.labels("negative", "miss")
LINKS_HIT = CACHE_LOOKUPS.labels("links", "hit")
LINKS_MISS = CACHE_LOOKUPS.labels("links", "miss")

BLOB_CACHE_HITS = Counter(
    "s3fs_registry_blob_cache_hits",
    "Blob files read whose bytes the local disk cache held whole (one per open file)",
    registry=REGISTRY,
)
BLOB_CACHE_MISSES = Counter(
    "s3fs_registry_blob_cache_misses",
    "Blob files read that the local disk cache did not hold whole (one per open file)",
    registry=REGISTRY,
)
BLOB_CACHE_EVICTIONS = Counter(
    "s3fs_registry_blob_cache_evictions",
    "Blobs dropped from the local disk cache to make room (least recently used first)",
    registry=REGISTRY,
)
BLOB_CACHE_VERIFY_FAILURES = Counter(
    "s3fs_registry_blob_cache_verification_failures",
    "Cached blobs found damaged (a chunk's CRC32, a size) or fills whose digest did not "
    "match their path; each was dropped and read from S3",
    registry=REGISTRY,
)
BLOB_CACHE_WRITE_ERRORS = Counter(
    "s3fs_registry_blob_cache_write_errors",
    "Fills of the local disk cache abandoned on a write error (ENOSPC, EIO, ...)",
    registry=REGISTRY,
)
BLOB_CACHE_SERVED_BYTES = Counter(
    "s3fs_registry_blob_cache_served_bytes",
    "Bytes of blob data served from the local disk cache",
    registry=REGISTRY,
)

JANITOR_ABORTS = Counter(
    "s3fs_registry_janitor_aborts",
    "Stale multipart uploads the janitor aborted (result=aborted) or failed to abort",
    ["result"],
    registry=REGISTRY,
)
JANITOR_ABORTED = JANITOR_ABORTS.labels("aborted")
JANITOR_FAILED = JANITOR_ABORTS.labels("failed")

# -- the mount itself ----------------------------------------------------------------------

MOUNT_INFO = Info(
    "s3fs_registry_mount", "The mount: version, bucket, prefix, mount point", registry=REGISTRY
)
START_TIME = Gauge(
    "s3fs_registry_start_time_seconds",
    "When the daemon started, in seconds since the epoch",
    registry=REGISTRY,
)


# -- outcomes ------------------------------------------------------------------------------

_OUTCOMES: tuple[tuple[type[BaseException], str], ...] = (
    (NotFoundError, "not_found"),
    (AccessDeniedError, "denied"),
    (PreconditionError, "precondition"),
    (TransientError, "transient"),
    (IntegrityError, "integrity"),
    (NoSpaceError, "no_space"),
)


def outcome_of(exc: BaseException | None) -> str:
    """A short, bounded label for how a request ended: `ok`, `not_found`, `transient`, ..."""
    if exc is None:
        return "ok"
    for cls, name in _OUTCOMES:
        if isinstance(exc, cls):
            return name
    return "error"


# -- what `status` shows -------------------------------------------------------------------


@dataclass(frozen=True)
class LastError:
    """The most recent S3 error (not-found excepted), retried or not."""

    when: float
    operation: str
    key: str
    message: str
    attempt: int
    final: bool


class Recent:
    """Counts per minute over the last `minutes` minutes: requests, errors, retries, failures.

    An error is an attempt that did not succeed (not-found excepted), a failure a request
    that gave up; `last_error` is the latest error. Updated and read on the trio thread
    only.
    """

    KINDS = ("requests", "errors", "retries", "failures")

    def __init__(self, minutes: int = 15, clock: Callable[[], float] = time.time) -> None:
        self.minutes = minutes
        self._clock = clock
        self._buckets: dict[int, list[int]] = {}
        self._total = [0] * len(self.KINDS)
        self.last_error: LastError | None = None

    def add(self, kind: str, n: int = 1) -> None:
        self._total[self.KINDS.index(kind)] += n
        minute = int(self._clock() // 60)
        bucket = self._buckets.get(minute)
        if bucket is None:
            bucket = self._buckets[minute] = [0] * len(self.KINDS)
            for old in [m for m in self._buckets if m <= minute - self.minutes]:
                del self._buckets[old]
        bucket[self.KINDS.index(kind)] += n

    def totals(self, minutes: int) -> dict[str, int]:
        """Counts of the current minute and the `minutes - 1` before it."""
        now = int(self._clock() // 60)
        sums = [0] * len(self.KINDS)
        for minute, counts in self._buckets.items():
            if now - minute < minutes:
                sums = [a + b for a, b in zip(sums, counts, strict=True)]
        return dict(zip(self.KINDS, sums, strict=True))

    def since_start(self) -> dict[str, int]:
        return dict(zip(self.KINDS, self._total, strict=True))


RECENT = Recent()


_s3_children: dict[tuple[str, str], tuple[Any, Any]] = {}


def s3_attempt(
    operation: str, key: str, attempt: int, seconds: float, exc: BaseException | None, final: bool
) -> str:
    """Account one attempt of an S3 request; returns its outcome. `final`: no retry follows."""
    outcome = outcome_of(exc)
    children = _s3_children.get((operation, outcome))
    if children is None:
        children = (S3_REQUESTS.labels(operation, outcome), S3_SECONDS.labels(operation))
        _s3_children[operation, outcome] = children
    children[0].inc()
    children[1].observe(seconds)
    RECENT.add("requests")
    if outcome in ("ok", "not_found"):
        return outcome
    RECENT.add("errors")
    RECENT.last_error = LastError(time.time(), operation, key, str(exc), attempt, final)
    if final:
        S3_FAILURES.labels(operation, outcome).inc()
        RECENT.add("failures")
    else:
        S3_RETRIES.labels(operation).inc()
        RECENT.add("retries")
    return outcome


@dataclass(frozen=True)
class UploadProgress:
    """How far one file being written has got: bytes written, bytes and parts in S3."""

    key: str
    written: int
    stored: int
    parts: int
    parts_in_flight: int


class Upload(Protocol):
    def progress(self) -> UploadProgress: ...


class Uploads:
    """Files being written whose content is not all in S3 yet (between the first write and
    the commit or discard of their write session)."""

    def __init__(self) -> None:
        self._live: dict[int, tuple[Upload, float]] = {}

    def start(self, upload: Upload) -> None:
        if id(upload) not in self._live:  # (every write calls this: no time() call then)
            self._live[id(upload)] = (upload, time.time())

    def end(self, upload: Upload) -> None:
        self._live.pop(id(upload), None)

    def __len__(self) -> int:
        return len(self._live)

    def snapshot(self) -> list[tuple[UploadProgress, float]]:
        """(progress, started) of each, oldest first."""
        live = sorted(self._live.values(), key=lambda item: item[1])
        return [(upload.progress(), started) for upload, started in live]


UPLOADS = Uploads()


# -- gauges read at scrape time ------------------------------------------------------------


class PoolLike(Protocol):
    name: str
    limit: int
    used: int

    @property
    def waiting(self) -> int: ...


class SpoolLike(Protocol):
    limit: int
    used: int


class BlobCacheLike(Protocol):
    used: int
    limit: int
    fills: int

    def __len__(self) -> int: ...


class _MountCollector(Collector):
    """Memory pools, spool and uploads in flight, read from the live objects when scraped."""

    def __init__(
        self, pools: Sequence[PoolLike], spool: SpoolLike, cache: BlobCacheLike | None
    ) -> None:
        self._pools = pools
        self._spool = spool
        self._cache = cache

    def collect(self) -> Iterator[GaugeMetricFamily]:
        used = GaugeMetricFamily(
            "s3fs_registry_memory_used_bytes",
            "Memory budget in use (write buffers, read-ahead), by pool",
            labels=["pool"],
        )
        limit = GaugeMetricFamily(
            "s3fs_registry_memory_limit_bytes", "Size of each memory pool", labels=["pool"]
        )
        waiting = GaugeMetricFamily(
            "s3fs_registry_memory_waiting_writers",
            "Writers waiting for memory, by pool",
            labels=["pool"],
        )
        for pool in self._pools:
            used.add_metric([pool.name], pool.used)
            limit.add_metric([pool.name], pool.limit)
            waiting.add_metric([pool.name], pool.waiting)
        yield from (used, limit, waiting)
        yield GaugeMetricFamily(
            "s3fs_registry_spool_used_bytes", "Bytes in local spool files", value=self._spool.used
        )
        yield GaugeMetricFamily(
            "s3fs_registry_spool_limit_bytes", "mount.spool_limit", value=self._spool.limit
        )
        yield GaugeMetricFamily(
            "s3fs_registry_uploads_in_flight",
            "Files being written whose content is not all in S3 yet",
            value=len(UPLOADS),
        )
        cache = self._cache
        if cache is not None:
            yield GaugeMetricFamily(
                "s3fs_registry_blob_cache_size_bytes",
                "Disk space the local blob cache uses (entries and fills in progress)",
                value=cache.used,
            )
            yield GaugeMetricFamily(
                "s3fs_registry_blob_cache_limit_bytes",
                "mount.cache_size, or less after the cache directory ran out of space",
                value=cache.limit,
            )
            yield GaugeMetricFamily(
                "s3fs_registry_blob_cache_entries",
                "Blobs in the local cache (fills in progress included)",
                value=len(cache),
            )
            yield GaugeMetricFamily(
                "s3fs_registry_blob_cache_fills",
                "Blobs being fetched into the local cache",
                value=cache.fills,
            )


_watched: list[_MountCollector] = []


def watch(
    pools: Sequence[PoolLike],
    spool: SpoolLike,
    info: dict[str, str],
    cache: BlobCacheLike | None = None,
) -> None:
    """Expose the mount's pools, spool and blob cache, and what the mount is (once per mount)."""
    while _watched:
        REGISTRY.unregister(_watched.pop())
    _watched.append(_MountCollector(pools, spool, cache))
    REGISTRY.register(_watched[-1])
    MOUNT_INFO.info({"version": __version__, **info})
    START_TIME.set(time.time())


# -- the endpoint --------------------------------------------------------------------------


class Endpoint:
    """prometheus_client's HTTP server in a daemon thread; `close()` stops it."""

    def __init__(self, host: str, port: int) -> None:
        self._server, self._thread = _start_http_server(port, host, registry=REGISTRY)
        self.host, self.port = host, port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` (as `mount.metrics_addr` normalises it) -> (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def serve(address: str) -> Endpoint:
    """Serve the metrics on `address` (normalised `host:port`); OSError if it cannot bind."""
    host, port = split_address(address)
    endpoint = Endpoint(host, port)
    log.info("serving Prometheus metrics on http://%s/metrics", address)
    return endpoint
