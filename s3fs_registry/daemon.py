"""Lifecycle of a mount: check the bucket, mount, serve, and on the way out commit everything.

Order matters for the operator: the bucket, credentials and endpoint are checked before
anything is mounted, so a bad setting leaves no dead mount point behind; READY=1 goes to
systemd only once the kernel mount exists; SIGTERM, SIGINT, `fusermount3 -u` and `umount`
all end the FUSE loop, after which every file still holding unsaved data is committed (or
its key and error are logged) before the mount is torn down and the process exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable

import pyfuse3
import trio

from s3fs_registry import metrics
from s3fs_registry.blobcache import BlobCache
from s3fs_registry.budget import MemoryBudget, SpoolBudget
from s3fs_registry.cloudfront import CloudFrontFetcher
from s3fs_registry.config import Config
from s3fs_registry.errors import (
    AccessDeniedError,
    CredentialsError,
    NoSuchBucketError,
    StartupError,
    StoreError,
    TransientError,
)
from s3fs_registry.fs import S3Operations
from s3fs_registry.janitor import Janitor
from s3fs_registry.reader import BlobSource, LinkCache, ReadContext
from s3fs_registry.status import Report, serve_status
from s3fs_registry.store import Store
from s3fs_registry.vfs import Filesystem
from s3fs_registry.writer import WriteContext

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CONFIG = 2
EXIT_UNREACHABLE = 3
EXIT_CREDENTIALS = 4
EXIT_NO_BUCKET = 5
EXIT_PERMISSION = 6
EXIT_MOUNT = 7
EXIT_LOST_UPLOADS = 8

MiB = 1024 * 1024
RUNTIME_OVERHEAD = 160 * MiB
KERNEL_READAHEAD_KIB = 1024


def buffer_budget(memory_budget: int) -> int:
    """The part of `mount.memory_budget` for write buffers and read-ahead.

    The budget bounds the whole daemon: the interpreter, boto3 and the HTTP pool take about
    80 MiB (77 MiB measured idle), and FUSE request buffers and bodies in flight about as
    much again under load (8 writers of 1 GiB peaked 124 MiB above the buffers), so that
    much is kept aside.
    """
    return max(memory_budget // 2, memory_budget - RUNTIME_OVERHEAD)


async def _raise_kernel_readahead_after_init(mountpoint: str) -> None:
    """The kernel sets the read-ahead when it processes FUSE's INIT reply, after the mount
    was made: set ours once the session runs (checked again in case INIT came late)."""
    for delay in (0.2, 1.0, 3.0):
        await trio.sleep(delay)
        raise_kernel_readahead(mountpoint)


def raise_kernel_readahead(mountpoint: str, kib: int = KERNEL_READAHEAD_KIB) -> None:
    """Let the kernel read ahead 1 MiB instead of FUSE's 128 KiB: fewer, larger READs.

    Best effort (root only): the mount's backing device is found in /proc/self/mountinfo,
    because a stat() of the mount point would wait for this very daemon to answer it.
    """
    try:
        with open("/proc/self/mountinfo") as mounts:
            fields = [line.split() for line in mounts]
        escaped = "".join(f"\\{ord(c):03o}" if c in " \t\n\\" else c for c in mountpoint)
        device = next(f[2] for f in reversed(fields) if len(f) > 4 and f[4] == escaped)
        path = f"/sys/class/bdi/{device}/read_ahead_kb"
        with open(path) as current:
            if int(current.read()) >= kib:
                return
        with open(path, "w") as setting:
            setting.write(str(kib))
    except (OSError, StopIteration, ValueError) as exc:
        log.debug("kernel read-ahead of %s left as it is: %s", mountpoint, exc)


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about our state; a no-op outside systemd, never raises."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify systemd: %s", exc)


async def verify_bucket(store: Store, config: Config) -> None:
    """One listing under the prefix: tells a missing bucket, bad credentials, a refused
    permission and an unreachable endpoint apart, each with its own line and exit code."""
    s3 = config.s3
    where = f"s3://{s3.bucket}/{s3.key_prefix()}"
    endpoint = s3.endpoint_url() or f"AWS S3 ({s3.region})"
    try:
        await store.list_page(s3.key_prefix(), max_keys=1)
    except NoSuchBucketError:
        raise StartupError(
            f"bucket {s3.bucket!r} does not exist at {endpoint}", EXIT_NO_BUCKET
        ) from None
    except CredentialsError as exc:
        raise StartupError(
            f"S3 rejected the credentials ({exc.code}); check storage.s3.accesskey "
            f"and storage.s3.secretkey or the AWS credential chain",
            EXIT_CREDENTIALS,
        ) from None
    except AccessDeniedError as exc:
        raise StartupError(
            f"permission s3:ListBucket refused on {where} ({exc.code}); see "
            f"`s3fs-registry check` for every permission the registry needs",
            EXIT_PERMISSION,
        ) from None
    except TransientError as exc:
        raise StartupError(f"cannot reach S3 at {endpoint}: {exc}", EXIT_UNREACHABLE) from None
    except StoreError as exc:
        raise StartupError(f"cannot list {where}: {exc}", EXIT_UNEXPECTED) from None


def fuse_options(config: Config, fsname: str) -> set[str]:
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {f"fsname={fsname}", "subtype=s3fs-registry"}
    if config.mount.allow_other:
        options.add("allow_other")
    return options


def _blob_source(config: Config, store: Store) -> BlobSource | None:
    """CloudFront for immutable blob reads when the cloudfront middleware is configured."""
    if config.cloudfront is None:
        return None
    fetcher = CloudFrontFetcher(
        config.cloudfront,
        config.s3.key_prefix(),
        max_connections=max(4, config.mount.max_connections // 2),
        connect_timeout=config.mount.connect_timeout,
        read_timeout=config.mount.read_timeout,
    )
    log.info("reading blob data through CloudFront %s", config.cloudfront.baseurl)
    return BlobSource(fetcher, store)


def run(config: Config, mountpoint: str, on_ready: Callable[[], None] = lambda: None) -> int:
    """Mount and serve until unmounted or signalled; returns the exit code."""
    store = Store(config.s3, config.mount)  # the boto3 client is built outside trio.run
    endpoint = _metrics_endpoint(config)
    try:
        return trio.run(_serve, config, store, mountpoint, on_ready)
    finally:
        if endpoint is not None:
            endpoint.close()


def _metrics_endpoint(config: Config) -> metrics.Endpoint | None:
    """The Prometheus endpoint, bound before anything is mounted (a busy port stops us)."""
    address = config.mount.metrics_addr
    if not address:
        return None
    try:
        return metrics.serve(address)
    except OSError as exc:
        raise StartupError(
            f"mount.metrics_addr {address}: cannot listen there: {exc}", EXIT_CONFIG
        ) from None


async def _serve(
    config: Config, store: Store, mountpoint: str, on_ready: Callable[[], None]
) -> int:
    await verify_bucket(store, config)
    mount = config.mount
    cache = await _blob_cache(config)  # a cache directory in use stops us before mounting
    async with trio.open_nursery() as background:
        budget = MemoryBudget(buffer_budget(mount.memory_budget), max(mount.small_file_size, MiB))
        writes = WriteContext(
            store,
            budget,
            SpoolBudget(mount.spool_limit),
            background,
            config.s3.chunksize,
            mount.spool_dir,
            config.s3.multipartcopychunksize,
            config.s3.multipartcopymaxconcurrency,
        )
        blobs = _blob_source(config, store)
        reads = ReadContext(
            store,
            budget.parts,
            background,
            mount.small_file_size,
            mount.read_ahead,
            blobs,
            LinkCache(config.s3.key_prefix()),
            feeds=trio.CapacityLimiter(store.read_slots),
        )
        if cache is not None:
            cache.serve(budget.parts, background)
        fs = Filesystem(config, store, writes, reads, cache)
        await _watch(config, mountpoint, budget, writes.spool, background, cache)
        if mount.janitor:
            janitor = Janitor(
                store, config.s3.key_prefix(), mount.janitor_age, mount.janitor_interval
            )
            background.start_soon(janitor.run)
        fsname = f"s3fs-registry:{config.s3.bucket}/{config.s3.key_prefix()}"
        try:
            pyfuse3.init(S3Operations(fs, mount), mountpoint, fuse_options(config, fsname))
        except RuntimeError as exc:
            raise StartupError(f"cannot mount on {mountpoint}: {exc}", EXIT_MOUNT) from None
        background.start_soon(_raise_kernel_readahead_after_init, mountpoint)
        code = await _serve_mounted(fs, background, mountpoint, on_ready)
        with trio.move_on_after(config.mount.retry_time + config.mount.read_timeout):
            await writes.drain()  # aborts of failed uploads, so nothing is left behind
        background.cancel_scope.cancel()
    if cache is not None:
        log.info("blob cache: %s", cache.report())
        cache.close()
    if blobs is not None:
        log.info("CloudFront: %s", blobs.fetcher.stats)
        blobs.fetcher.close()
    log.info(
        "S3 requests: %d (%d retries, %d failed after retries): %s",
        store.stats.total(),
        store.stats.retries,
        store.stats.failures,
        store.stats.requests,
    )
    return code


async def _blob_cache(config: Config) -> BlobCache | None:
    """The local blob cache when `mount.cache_dir` is set, its index rebuilt from disk."""
    mount, s3 = config.mount, config.s3
    if not mount.cache_dir or mount.cache_size <= 0:
        return None
    identity = {
        "endpoint": s3.endpoint_url() or f"aws:{s3.region}",
        "bucket": s3.bucket,
        "prefix": s3.key_prefix(),
    }
    cache = BlobCache(mount.cache_dir, mount.cache_size, identity, s3.key_prefix())
    try:
        await trio.to_thread.run_sync(cache.load)
    except OSError as exc:
        raise StartupError(f"mount.cache_dir {mount.cache_dir}: {exc}", EXIT_CONFIG) from None
    return cache


async def _watch(
    config: Config,
    mountpoint: str,
    budget: MemoryBudget,
    spool: SpoolBudget,
    background: trio.Nursery,
    cache: BlobCache | None,
) -> None:
    """Metrics of the budgets and the cache, and the control socket `s3fs-registry status` asks."""
    pools = [budget.first, budget.parts]
    info = {"bucket": config.s3.bucket, "prefix": config.s3.key_prefix(), "mountpoint": mountpoint}
    metrics.watch(pools, spool, info, cache)
    report = Report(config, mountpoint, pools, spool, cache)
    await background.start(serve_status, report, mountpoint)


async def _serve_mounted(
    fs: Filesystem, background: trio.Nursery, mountpoint: str, on_ready: Callable[[], None]
) -> int:
    try:
        background.start_soon(_terminate_on_signal)
        log.info("mounted %s", mountpoint)
        sd_notify("READY=1")
        on_ready()
        await pyfuse3.main()
        sd_notify("STOPPING=1")
        log.info("FUSE loop ended; committing pending uploads")
        failures = await fs.files.commit_all()
    finally:
        # a lazy unmount, also after an error: never leave a dead mount point behind
        pyfuse3.close(unmount=True)
    if failures:
        log.error("%d file(s) could not be uploaded at shutdown (see above)", failures)
        return EXIT_LOST_UPLOADS
    log.info("unmounted %s cleanly", mountpoint)
    return EXIT_OK


async def _terminate_on_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("%s received: finishing uploads and unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
