"""Lifecycle of a mount: check the bucket, mount, serve, and on the way out commit everything.

Order matters for the operator: the bucket, credentials and endpoint are checked before
anything is mounted, so a bad setting leaves no dead mount point behind; READY=1 goes to
systemd only once the kernel mount exists; SIGTERM, SIGINT, `fusermount3 -u` and `umount`
all end the FUSE loop, after which every file still holding unsaved data is committed (or
its key and error are logged) before the mount is torn down and the process exits.

Signals (`Signals`): SIGTERM, SIGINT and SIGQUIT stop the daemon cleanly at whatever stage
they arrive, SIGHUP reopens the log file, and every other signal whose default would kill
the process (and leave a dead mount behind) is logged and ignored.
"""

from __future__ import annotations

import dataclasses
import grp
import logging
import os
import pwd
import signal
import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

import pyfuse3
import trio

from s3fs_registry import metrics
from s3fs_registry.blobcache import BlobCache
from s3fs_registry.budget import MemoryBudget, SpoolBudget
from s3fs_registry.check import probe
from s3fs_registry.cloudfront import CloudFrontFetcher
from s3fs_registry.config import Config, MountConfig
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
from s3fs_registry.log import reopen_log_file
from s3fs_registry.reader import BlobSource, LinkCache, ReadContext, Streams
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

#: end the daemon cleanly: unmount, commit what is pending, exit 0 (8 if an upload failed)
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT)
#: signals whose default action would kill the daemon and leave a dead mount: ignored
IGNORED_SIGNALS = (
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
    signal.SIGIO,
    signal.SIGPWR,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGXCPU,
    signal.SIGSTKFLT,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)
HANDLED_SIGNALS = (*STOP_SIGNALS, signal.SIGHUP, *IGNORED_SIGNALS)

MiB = 1024 * 1024
RUNTIME_OVERHEAD = 160 * MiB
KERNEL_READAHEAD_KIB = 1024


def read_streams(read_slots: int) -> int:
    """Most read-ahead GETs at once: three quarters of the store's read slots, so that
    lookups, listings and small files never wait behind whole ranges of blob data."""
    return max(1, read_slots - read_slots // 4)


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


def resolve_ownership(mount: MountConfig, mountpoint: str) -> MountConfig:
    """`mount` with the uid, gid and allow_other the mount uses.

    uid/gid -1 take the mount point's owner and group, read before mounting: Debian's
    `/var/lib/docker-registry` belongs to `docker-registry`, the user its registry unit runs
    as, so the registry can write to the mount unchanged. `allow_other: auto` turns FUSE's
    allow_other on exactly when those are not the daemon's own, since FUSE would otherwise
    refuse every other user, the files' owner included.
    """
    info = os.stat(mountpoint)
    uid = mount.uid if mount.uid >= 0 else info.st_uid
    gid = mount.gid if mount.gid >= 0 else info.st_gid
    allow_other = mount.allow_other
    if allow_other is None:
        allow_other = (uid, gid) != (os.geteuid(), os.getegid())
    if (uid, gid) != (os.geteuid(), os.getegid()) or allow_other:
        log.info(
            "files belong to %s:%s; other users %s",
            _user_name(uid),
            _group_name(gid),
            "may enter (allow_other)" if allow_other else "may not enter (allow_other off)",
        )
    return dataclasses.replace(mount, uid=uid, gid=gid, allow_other=allow_other)


def _user_name(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} ({uid})"
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return f"{grp.getgrgid(gid).gr_name} ({gid})"
    except KeyError:
        return str(gid)


async def require_permissions(store: Store, config: Config) -> None:
    """The probe of `s3fs-registry check`, at start: a mount without a permission the
    registry needs would fail later, on the registry's first push or cancel, so it stops
    now with check's exit code and the actions' names (unless mount.check_permissions is
    off)."""
    s3 = config.s3
    where = f"s3://{s3.bucket}/{s3.key_prefix()}"
    try:
        outcomes = await probe(store, config)
    except CredentialsError as exc:
        raise StartupError(f"S3 rejected the credentials ({exc.code})", EXIT_CREDENTIALS) from None
    except TransientError as exc:
        raise StartupError(f"permission probe on {where}: {exc}", EXIT_UNREACHABLE) from None
    except StoreError as exc:
        raise StartupError(f"permission probe on {where} failed: {exc}", EXIT_UNEXPECTED) from None
    missing = [f"s3:{o.permission}" for o in outcomes if not o.granted]
    if missing:
        raise StartupError(
            f"permission {', '.join(missing)} refused on {where}; `s3fs-registry check` shows "
            "each permission (set mount.check_permissions: false to mount without this probe)",
            EXIT_PERMISSION,
        )
    log.info("all %d permissions the registry needs are granted on %s", len(outcomes), where)


def fuse_options(mount: MountConfig, fsname: str, flags: Iterable[str] = ()) -> set[str]:
    """libfuse's options; `flags` are kernel mount flags given to mount(8) (`nosuid`, `ro`)."""
    options = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    options |= {f"fsname={fsname}", "subtype=s3fs-registry", *flags}
    if mount.allow_other:
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


def _signal_name(signum: int) -> str:
    if signal.SIGRTMIN <= signum <= signal.SIGRTMAX:
        return f"SIGRTMIN+{signum - signal.SIGRTMIN}"
    return signal.Signals(signum).name


class Signals:
    """What each signal does, at every stage of the daemon's life.

    A stop signal ends the daemon cleanly whenever it comes: before the mount exists it
    stops the start (nothing is mounted, exit 0); while the FUSE loop runs it ends the loop
    (`pyfuse3.terminate()`, once); later it is noted and the shutdown goes on. terminate()
    is only ever called while the FUSE session exists: after `pyfuse3.close()` it would use
    the freed session and crash the process (a SIGTERM just after `fusermount3 -u` did).

    `install()` puts process-wide handlers in place before anything else, so that no stage
    is left to a signal's default action: outside trio they only take note (and SIGHUP
    reopens the log); inside, `watch` receives them. `ignore_all()` at the very end keeps
    Python's finalisation, which restores default actions, from dying of a late signal.
    """

    def __init__(self) -> None:
        self.stop_signal = ""  # the name of the first stop signal received
        self._on_stop: Callable[[], None] | None = None

    def install(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, self._handler)

    def ignore_all(self) -> None:
        for signum in HANDLED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)

    def _handler(self, signum: int, _frame: FrameType | None) -> None:
        self.handle(signum)

    async def watch(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Receive signals on the trio thread, where stopping may touch trio and pyfuse3."""
        with trio.open_signal_receiver(*HANDLED_SIGNALS) as received:
            task_status.started()
            async for signum in received:
                self.handle(signum)

    def handle(self, signum: int) -> None:
        name = _signal_name(signum)
        if signum == signal.SIGHUP:
            path = reopen_log_file()
            log.info("SIGHUP received: %s", f"log file {path} reopened" if path else "no log file")
        elif signum in STOP_SIGNALS:
            if self.stop_signal:
                log.info("%s received: already stopping", name)
                return
            self.stop_signal = name
            log.info("%s received: finishing uploads and unmounting", name)
            if self._on_stop is not None:
                self._on_stop()
        else:
            log.warning(
                "%s received and ignored (SIGTERM or SIGINT stop the daemon, SIGHUP reopens "
                "the log file)",
                name,
            )

    @contextmanager
    def stopping_with(self, action: Callable[[], None]) -> Iterator[None]:
        """While in the block, a stop signal (also one already received) calls `action`."""
        self._on_stop = action
        try:
            if self.stop_signal:
                action()
            yield
        finally:
            self._on_stop = None


def run(
    config: Config,
    mountpoint: str,
    on_ready: Callable[[], None] = lambda: None,
    signals: Signals | None = None,
    flags: Sequence[str] = (),
) -> int:
    """Mount and serve until unmounted or signalled; returns the exit code."""
    store = Store(config.s3, config.mount)  # the boto3 client is built outside trio.run
    endpoint = _metrics_endpoint(config)
    try:
        return trio.run(_serve, config, store, mountpoint, on_ready, signals or Signals(), flags)
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
    config: Config,
    store: Store,
    mountpoint: str,
    on_ready: Callable[[], None],
    signals: Signals,
    flags: Sequence[str],
) -> int:
    """The daemon's life on the trio thread, signals received from the first moment on;
    a StartupError leaves as itself (one line, its exit code), not in an exception group."""
    failure: StartupError | None = None
    code = EXIT_OK
    async with trio.open_nursery() as background:
        await background.start(signals.watch)
        try:
            code = await _mount_and_serve(
                config, store, mountpoint, on_ready, signals, background, flags
            )
        except StartupError as exc:
            failure = exc
        background.cancel_scope.cancel()
    if failure is not None:
        raise failure
    log.info(
        "S3 requests: %d (%d retries, %d failed after retries): %s",
        store.stats.total(),
        store.stats.retries,
        store.stats.failures,
        store.stats.requests,
    )
    return code


def _stopped_before_mounting(signals: Signals) -> bool:
    if signals.stop_signal:
        log.info("%s before the mount was up: nothing mounted", signals.stop_signal)
    return bool(signals.stop_signal)


async def _mount_and_serve(
    config: Config,
    store: Store,
    mountpoint: str,
    on_ready: Callable[[], None],
    signals: Signals,
    background: trio.Nursery,
    flags: Sequence[str],
) -> int:
    with trio.CancelScope() as starting, signals.stopping_with(starting.cancel):
        await verify_bucket(store, config)
        if config.mount.check_permissions:
            await require_permissions(store, config)
    if _stopped_before_mounting(signals):
        return EXIT_OK
    mount = config.mount
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
        part_size=config.s3.chunksize,
        streams=Streams(read_streams(store.read_slots)),
    )
    cache = await _blob_cache(config)
    if cache is not None:
        cache.serve(budget.parts, background)
    fs = Filesystem(config, store, writes, reads, cache)
    try:
        await _watch(config, mountpoint, budget, writes.spool, background, cache)
        if mount.janitor:
            janitor = Janitor(
                store, config.s3.key_prefix(), mount.janitor_age, mount.janitor_interval
            )
            background.start_soon(janitor.run)
        if _stopped_before_mounting(signals):
            return EXIT_OK
        fsname = f"s3fs-registry:{config.s3.bucket}/{config.s3.key_prefix()}"
        mount = resolve_ownership(mount, mountpoint)
        try:
            options = fuse_options(mount, fsname, flags)
            pyfuse3.init(S3Operations(fs, mount), mountpoint, options)
        except RuntimeError as exc:
            raise StartupError(f"cannot mount on {mountpoint}: {exc}", EXIT_MOUNT) from None
        background.start_soon(_raise_kernel_readahead_after_init, mountpoint)
        code = await _serve_mounted(fs, mountpoint, on_ready, signals)
        with trio.move_on_after(config.mount.retry_time + config.mount.read_timeout):
            await writes.drain()  # aborts of failed uploads, so nothing is left behind
        return code
    finally:
        if cache is not None:
            log.info("blob cache: %s", cache.report())
            cache.close()
        if blobs is not None:
            log.info("CloudFront: %s", blobs.fetcher.stats)
            blobs.fetcher.close()


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
    fs: Filesystem, mountpoint: str, on_ready: Callable[[], None], signals: Signals
) -> int:
    try:
        log.info("mounted %s", mountpoint)
        sd_notify("READY=1")
        on_ready()
        with signals.stopping_with(pyfuse3.terminate):
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
