"""`s3fs-registry status MOUNTPOINT`: what a running mount is doing, asked of its daemon.

The daemon listens on a Unix socket named after its mount point, in /run/s3fs-registry when
it runs as root (else $XDG_RUNTIME_DIR/s3fs-registry, or /tmp/s3fs-registry-UID). Only root
and the user the daemon runs as may ask: the socket is bound under a temporary name, made
mode 0600 and only then renamed into place, so it is never reachable with wider
permissions; and the daemon checks each client's uid (SO_PEERCRED) as well, in case someone
loosens the mode. A client connects; the daemon writes one JSON document and closes.

The command finds the mount in /proc/self/mountinfo without touching the mount point itself
(a stat of a mount whose daemon hangs would hang too): a path that is not a mount of this
daemon is exit 9, a daemon that does not answer (or refuses) exit 10.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import trio

from s3fs_registry import __version__, metrics
from s3fs_registry.blobcache import BlobCache
from s3fs_registry.budget import Pool, SpoolBudget
from s3fs_registry.config import Config

log = logging.getLogger(__name__)

EXIT_NOT_OURS = 9
EXIT_NO_ANSWER = 10
FSTYPE = "fuse.s3fs-registry"
ANSWER_TIMEOUT_S = 5.0
MAX_SOCKET_PATH = 107  # sun_path is 108 bytes with its NUL
WINDOWS = (1, 5, 15)  # minutes shown by `status`


class StatusError(Exception):
    """`status` cannot report; carries the exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# -- where the socket is -------------------------------------------------------------------


def control_dir() -> str:
    """Where this process, as a daemon, puts its socket."""
    uid = os.geteuid()
    if uid == 0:
        return "/run/s3fs-registry"
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    return os.path.join(runtime, "s3fs-registry") if runtime else f"/tmp/s3fs-registry-{uid}"


def control_dirs(uid: int) -> list[str]:
    """Where a daemon running as `uid` may have put its socket."""
    if uid == 0:
        return ["/run/s3fs-registry"]
    dirs = [control_dir()] if uid == os.geteuid() else []
    return [*dirs, f"/run/user/{uid}/s3fs-registry", f"/tmp/s3fs-registry-{uid}"]


def socket_name(mountpoint: str) -> str:
    """`var-lib-docker-registry.sock` for /var/lib/docker-registry; long paths hashed."""
    escaped = "".join(
        c if c.isascii() and (c.isalnum() or c in "._-") else "-" if c == "/" else f"%{ord(c):02x}"
        for c in mountpoint.strip("/")
    )
    if len(escaped) > 60:
        digest = hashlib.sha256(mountpoint.encode("utf-8", "surrogateescape")).hexdigest()
        escaped = f"{escaped[:40]}-{digest[:16]}"
    return (escaped or "-") + ".sock"


def _private_dir(path: str) -> None:
    """Make `path` (0700 unless it is root's /run directory) and check nobody else owns it."""
    mode = 0o755 if path.startswith("/run/s3fs-registry") else 0o700
    with contextlib.suppress(FileExistsError):
        os.makedirs(path, mode=mode)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"{path} is not a directory of uid {os.geteuid()}")
    if info.st_mode & 0o022:
        raise OSError(errno.EPERM, f"{path} is writable by others")


def _remove_stale(directory: str) -> None:
    """Remove the sockets of daemons that died without removing theirs (kill -9): nothing
    listens on them any more, so connecting is refused."""
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not name.endswith(".sock"):
            continue
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except ConnectionRefusedError:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    log.debug("removed the stale control socket %s", path)
            except OSError:
                pass


def bind_control_socket(mountpoint: str) -> tuple[socket.socket, str]:
    """A listening socket at its final path, mode 0600 from the moment it has that path."""
    directory = control_dir()
    _private_dir(directory)
    _remove_stale(directory)
    path = os.path.join(directory, socket_name(mountpoint))
    if len(path.encode()) > MAX_SOCKET_PATH:
        raise OSError(errno.ENAMETOOLONG, f"socket path {path} is too long")
    temporary = os.path.join(directory, f".{os.getpid()}.tmp")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        sock.bind(temporary)
        os.chmod(temporary, 0o600)
        os.rename(temporary, path)  # replaces the socket of a daemon that died
        sock.listen(16)
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return sock, path


def peer_uid(sock: Any) -> int:
    """The uid of the process at the other end of a Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return int(uid)


# -- the daemon's side ---------------------------------------------------------------------


class Report:
    """What `status` shows, read from the mount's live objects (on the trio thread)."""

    def __init__(
        self,
        config: Config,
        mountpoint: str,
        pools: Sequence[Pool],
        spool: SpoolBudget,
        cache: BlobCache | None = None,
    ) -> None:
        self._cache = cache
        self._config = config
        self._mountpoint = mountpoint
        self._pools = pools
        self._spool = spool
        self._started = time.time()

    def __call__(self) -> dict[str, Any]:
        s3, mount = self._config.s3, self._config.mount
        cloudfront = self._config.cloudfront
        last = metrics.RECENT.last_error
        return {
            "version": __version__,
            "pid": os.getpid(),
            "mountpoint": self._mountpoint,
            "endpoint": s3.endpoint_url() or f"AWS S3 ({s3.region})",
            "bucket": s3.bucket,
            "prefix": s3.key_prefix(),
            "cloudfront": cloudfront.baseurl if cloudfront is not None else "",
            "metrics": mount.metrics_addr,
            "started": self._started,
            "now": time.time(),
            "uploads": [
                {**asdict(progress), "since": started}
                for progress, started in metrics.UPLOADS.snapshot()
            ],
            "memory": [
                {"pool": p.name, "used": p.used, "limit": p.limit, "waiting": p.waiting}
                for p in self._pools
            ],
            "spool": {"used": self._spool.used, "limit": self._spool.limit},
            "blob_cache": self._cache.report() if self._cache is not None else None,
            "requests": {
                **{str(m): metrics.RECENT.totals(m) for m in WINDOWS},
                "total": metrics.RECENT.since_start(),
            },
            "last_error": asdict(last) if last is not None else None,
        }


async def serve_status(
    report: Report, mountpoint: str, *, task_status: Any = trio.TASK_STATUS_IGNORED
) -> None:
    """Answer `status` clients until cancelled; the socket is removed on the way out.

    Started with `nursery.start`: the socket exists (or a warning said why not) once this
    returns. Without a socket the mount works as ever; only `status` cannot ask it.
    """
    try:
        sock, path = bind_control_socket(mountpoint)
    except OSError as exc:
        log.warning("no control socket for `s3fs-registry status`: %s", exc)
        task_status.started()
        return
    inode = os.stat(path).st_ino
    listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
    log.debug("answering `s3fs-registry status` on %s", path)
    try:
        task_status.started()
        await trio.serve_listeners(functools.partial(_answer, report), [listener])
    finally:
        with contextlib.suppress(OSError):
            if os.stat(path).st_ino == inode:  # not a socket a newer daemon put there
                os.unlink(path)
        sock.close()


async def _answer(report: Report, stream: trio.SocketStream) -> None:
    with trio.move_on_after(ANSWER_TIMEOUT_S):
        async with stream:
            uid = peer_uid(stream.socket)
            if uid not in (0, os.geteuid()):
                log.warning("status: refused a client with uid %d", uid)
                return
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(json.dumps(report()).encode() + b"\n")


# -- the command's side --------------------------------------------------------------------


@dataclass(frozen=True)
class MountEntry:
    """A line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    uid: int


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def find_mount(mountpoint: str, mountinfo: str = "/proc/self/mountinfo") -> MountEntry | None:
    """The last (topmost) mount on `mountpoint`, or None."""
    found = None
    with open(mountinfo) as lines:
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or "-" not in fields or _unescape(fields[4]) != mountpoint:
                continue
            tail = [*fields[fields.index("-") + 1 :], "", "", ""]
            options = dict(o.partition("=")[::2] for o in tail[2].split(","))
            uid = options.get("user_id", "-1")
            found = MountEntry(mountpoint, tail[0], int(uid) if uid.isdigit() else -1)
    return found


def resolve(path: str) -> str:
    """The absolute path of `path`, symlinks of its parents resolved, the last component
    left alone (resolving it would stat the mount root)."""
    absolute = os.path.abspath(path)
    parent, name = os.path.split(absolute)
    return os.path.join(os.path.realpath(parent), name) if name else absolute


def query(path: str, timeout: float = ANSWER_TIMEOUT_S) -> dict[str, Any]:
    """The daemon's report for the mount at `path`; StatusError with the exit code if not."""
    mountpoint = resolve(path)
    entry = find_mount(mountpoint)
    if entry is None or entry.fstype != FSTYPE:
        what = "not a mount point" if entry is None else f"a {entry.fstype} mount"
        raise StatusError(f"{mountpoint} is not an s3fs-registry mount ({what})", EXIT_NOT_OURS)
    candidates = [os.path.join(d, socket_name(mountpoint)) for d in control_dirs(entry.uid)]
    path_found = next((p for p in candidates if os.path.exists(p)), None)
    if path_found is None:
        raise StatusError(
            f"the daemon of {mountpoint} has no control socket ({' or '.join(candidates)})",
            EXIT_NO_ANSWER,
        )
    try:
        raw = _ask(path_found, timeout)
    except PermissionError:
        raise StatusError(
            f"permission denied on {path_found}: only root and the mount's owner may ask",
            EXIT_NO_ANSWER,
        ) from None
    except (OSError, TimeoutError) as exc:
        raise StatusError(
            f"the daemon of {mountpoint} does not answer on {path_found}: {exc}", EXIT_NO_ANSWER
        ) from None
    if not raw:
        raise StatusError(
            f"the daemon of {mountpoint} refused to answer (only root and the mount's owner "
            "may ask)",
            EXIT_NO_ANSWER,
        )
    report: dict[str, Any] = json.loads(raw)
    return report


def _ask(path: str, timeout: float) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


# -- formatting ----------------------------------------------------------------------------


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def format_report(report: dict[str, Any]) -> str:
    """The short summary `status` prints."""
    now = report["now"]
    lines = [
        f"s3fs-registry {report['version']} on {report['mountpoint']} (pid {report['pid']}), "
        f"up {human_duration(now - report['started'])}",
        f"  s3://{report['bucket']}/{report['prefix']} at {report['endpoint']}",
    ]
    if report["cloudfront"]:
        lines.append(f"  blob reads through CloudFront {report['cloudfront']}")
    if report["metrics"]:
        lines.append(f"  metrics: http://{report['metrics']}/metrics")
    lines += _uploads_lines(report, now)
    lines += _memory_lines(report)
    lines += _request_lines(report["requests"])
    last = report["last_error"]
    if last is not None:
        retried = "retried" if not last["final"] else "gave up"
        lines.append(
            f"last S3 error {human_duration(now - last['when'])} ago (attempt "
            f"{last['attempt']}, {retried}): {last['message']}"
        )
    else:
        lines.append("last S3 error: none")
    return "\n".join(lines)


def _uploads_lines(report: dict[str, Any], now: float) -> list[str]:
    uploads = report["uploads"]
    lines = [f"uploads in flight: {len(uploads)}"]
    prefix = report["prefix"]
    for up in uploads:
        key = up["key"][len(prefix) :] if up["key"].startswith(prefix) else up["key"]
        uploading = f", {up['parts_in_flight']} uploading" if up["parts_in_flight"] else ""
        lines.append(
            f"  {key}: {human_size(up['written'])} written, {human_size(up['stored'])} in S3 "
            f"({up['parts']} parts{uploading}), for {human_duration(now - up['since'])}"
        )
    return lines


def _memory_lines(report: dict[str, Any]) -> list[str]:
    pools = report["memory"]
    used = sum(p["used"] for p in pools)
    limit = sum(p["limit"] for p in pools)
    waiting = sum(p["waiting"] for p in pools)
    detail = ", ".join(
        f"{p['pool']} {human_size(p['used'])}/{human_size(p['limit'])}" for p in pools
    )
    spool = report["spool"]
    lines = [
        f"memory: {human_size(used)} of {human_size(limit)} in use ({detail}); "
        f"{waiting} writer(s) waiting",
        f"spool: {human_size(spool['used'])} of {human_size(spool['limit'])}",
    ]
    cache = report.get("blob_cache")
    if cache is not None:
        shrunk = " (lowered: disk full)" if cache["limit"] < cache["configured_limit"] else ""
        lines.append(
            f"blob cache: {human_size(cache['used'])} of {human_size(cache['limit'])}{shrunk}, "
            f"{cache['entries']} blobs; {cache['hits']} hits, {cache['misses']} misses, "
            f"{human_size(cache['served_bytes'])} served, {cache['evictions']} evicted, "
            f"{cache['verification_failures']} failed verification, "
            f"{cache['write_errors']} write errors"
        )
    return lines


def _request_lines(requests: dict[str, Any]) -> list[str]:
    columns = [str(m) for m in WINDOWS] + ["total"]
    titles = [f"last {m}m" for m in WINDOWS] + ["since start"]
    lines = ["S3 requests " + "".join(f"{t:>13}" for t in titles)]
    for kind, label in (
        ("requests", "sent"),
        ("errors", "errors"),
        ("retries", "retried"),
        ("failures", "failed"),
    ):
        lines.append(f"  {label:<10}" + "".join(f"{requests[c][kind]:>13}" for c in columns))
    return lines
