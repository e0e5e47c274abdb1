"""Command line: argv -> configuration -> a subcommand; exit codes; no FUSE or S3 logic.

`mount` without `--foreground` starts the daemon as a detached child process (forking a
process that already has threads and an HTTP pool is unsafe) and waits on a pipe until the
child says the mount is usable, or reports its one-line error and exit code.

`status` asks a running daemon over its control socket (status.py); it reads no
configuration.

`s3fs-registry CONFIG MOUNTPOINT [-o OPTIONS]`, the form `mount.fuse3` runs for
`mount -t fuse.s3fs-registry`, fstab and systemd `.mount` units, is the background `mount`
with the options of mounthelper.py.

Exit codes: 0 ok; 1 unexpected error; 2 bad command line or configuration; 3 S3 endpoint
unreachable; 4 credentials rejected; 5 bucket missing; 6 permission missing; 7 cannot mount
(mount point); 8 uploads pending at shutdown failed; 9 (status) not an s3fs-registry mount;
10 (status) the daemon does not answer, or refuses to.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import stat
import subprocess
import sys
from collections.abc import Sequence

import trio

from s3fs_registry import __version__, daemon, mounthelper
from s3fs_registry import check as permissions
from s3fs_registry.config import MOUNT_ENV_PREFIX, Config, load_config
from s3fs_registry.errors import ConfigError, StartupError, StoreError
from s3fs_registry.log import (
    SYSLOG_SOCKET,
    default_log_file,
    setup_logging,
    syslog_available,
)
from s3fs_registry.status import ANSWER_TIMEOUT_S, StatusError, format_report, query
from s3fs_registry.store import Store, known_regions

log = logging.getLogger(__name__)

DEFAULT_CONFIG = "/etc/s3fs-registry/config.yml"
READY_TIMEOUT_S = 300.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3fs-registry",
        description="Mount an S3 bucket prefix for an unmodified container registry.",
        epilog="s3fs-registry CONFIG MOUNTPOINT [-o OPTIONS] mounts as "
        "`mount -t fuse.s3fs-registry CONFIG MOUNTPOINT` does (fstab, systemd .mount units).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    mount = sub.add_parser("mount", help="mount the bucket prefix on MOUNTPOINT")
    _add_config(mount)
    mount.add_argument(
        "--foreground",
        "-f",
        action="store_true",
        help="stay attached (systemd, tests); logs go to stderr",
    )
    mount.add_argument("--notify-fd", type=int, default=-1, help=argparse.SUPPRESS)
    mount.add_argument("--fuse-flags", default="", help=argparse.SUPPRESS)
    mount.add_argument("mountpoint")
    check = sub.add_parser("check", help="validate the configuration and probe the S3 permissions")
    _add_config(check)
    status = sub.add_parser("status", help="what the daemon of a running mount is doing")
    status.add_argument("--json", action="store_true", help="print the daemon's report as JSON")
    status.add_argument(
        "--timeout", type=float, default=ANSWER_TIMEOUT_S, help="seconds to wait for an answer"
    )
    status.add_argument("mountpoint")
    return parser


def _add_config(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get("S3FS_REGISTRY_CONFIG") or (
        DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None
    )
    parser.add_argument(
        "--config",
        "-c",
        default=default,
        help="YAML file in the registry's shape (default: $S3FS_REGISTRY_CONFIG or "
        f"{DEFAULT_CONFIG}; environment variables REGISTRY_STORAGE_S3_* and "
        "REGISTRY_MOUNT_* override it)",
    )


COMMANDS = ("mount", "check", "status")


def build_helper_parser() -> argparse.ArgumentParser:
    """The command line `mount.fuse3` gives a FUSE file system: SOURCE MOUNTPOINT -o OPTS."""
    parser = argparse.ArgumentParser(
        prog="s3fs-registry",
        usage="s3fs-registry CONFIG MOUNTPOINT [-o OPTION[,OPTION...]]",
        description="Mount as mount(8) does (mount -t fuse.s3fs-registry CONFIG MOUNTPOINT).",
    )
    parser.add_argument("config", help="the configuration file")
    parser.add_argument("mountpoint")
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        help="mount: settings (allow_other, uid=N, ...), FUSE flags (nosuid, ro, ...) and "
        "mount(8)'s options (_netdev, nofail, x-systemd.*: ignored)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    helper_form = bool(argv) and argv[0] not in COMMANDS and not argv[0].startswith("-")
    args = (build_helper_parser() if helper_form else build_parser()).parse_args(argv)
    if not helper_form and args.command == "status":
        return _status(args)
    try:
        if helper_form:
            return _mount_helper(args)
        config = _load(args.config)
        if args.command == "check":
            return _check(config)
        return _mount(args, config)
    except ConfigError as exc:
        return _fail(f"configuration error: {exc}", 2)
    except StartupError as exc:
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return 130


def _load(path: str | None) -> Config:
    return load_config(path, os.environ, known_regions())


def _fail(message: str, code: int) -> int:
    print(f"s3fs-registry: {message}", file=sys.stderr)
    return code


def _mount(args: argparse.Namespace, config: Config) -> int:
    mountpoint = _mount_point(args.mountpoint)
    if not args.foreground:
        return _spawn_daemon(args.config, mountpoint, config)
    flags = [flag for flag in args.fuse_flags.split(",") if flag]
    return _run_foreground(config, mountpoint, args.notify_fd, flags)


def _mount_helper(args: argparse.Namespace) -> int:
    """The mount(8) form: -o settings override the file (and the environment)."""
    options = mounthelper.parse_options(args.options)
    environ = mounthelper.with_settings(os.environ, options)
    try:
        config = load_config(args.config, environ, known_regions())
    except ConfigError as exc:
        raise mounthelper.explain(exc, options) from None
    mountpoint = _mount_point(args.mountpoint)
    return _spawn_daemon(args.config, mountpoint, config, environ, options.fuse)


def _mount_point(path: str) -> str:
    mountpoint = os.path.abspath(path)
    _check_mountpoint(mountpoint)
    return mountpoint


def _check_mountpoint(mountpoint: str) -> None:
    """One line for each way a mount point can be unusable, each with what to do.

    A FUSE mount whose daemon died answers ENOTCONN, but the kernel may still answer a
    stat() from its attribute cache: statvfs() always asks the file system, so a mount is
    asked that way before it is called alive.
    """
    try:
        info = os.stat(mountpoint)
        if os.path.ismount(mountpoint):
            os.statvfs(mountpoint)
    except FileNotFoundError:
        raise StartupError(
            f"mount point {mountpoint} does not exist (create it: mkdir -p {mountpoint})", 7
        ) from None
    except OSError as exc:
        if exc.errno == errno.ENOTCONN:
            raise StartupError(
                f"{mountpoint} is a dead FUSE mount (its daemon was killed): clear it with "
                f"fusermount3 -u {mountpoint}, then mount again",
                7,
            ) from None
        raise StartupError(f"mount point {mountpoint}: {exc.strerror or exc}", 7) from None
    if not stat.S_ISDIR(info.st_mode):
        raise StartupError(f"mount point {mountpoint} is not a directory", 7)
    if os.path.ismount(mountpoint):
        raise StartupError(f"{mountpoint} is already a mount point", 7)


def startup_warnings(config: Config) -> list[str]:
    """What the operator is warned about at every start (ignored settings, no TLS check)."""
    warnings = list(config.warnings)
    if config.s3.skipverify:
        endpoint = config.s3.endpoint_url() or "S3"
        warnings.append(
            f"storage.s3.skipverify is true: TLS certificates of {endpoint} are NOT verified"
        )
    return warnings


def _run_foreground(
    config: Config, mountpoint: str, notify_fd: int, flags: Sequence[str] = ()
) -> int:
    signals = daemon.Signals()
    signals.install()  # first: no stage of the daemon is left to a signal's default action
    try:
        return _serve_foreground(config, mountpoint, notify_fd, signals, flags)
    finally:
        signals.ignore_all()


def _serve_foreground(
    config: Config,
    mountpoint: str,
    notify_fd: int,
    signals: daemon.Signals,
    flags: Sequence[str],
) -> int:
    mount = config.mount
    try:
        setup_logging(
            mount.log_level,
            mount.log_file,
            syslog=notify_fd >= 0,
            secrets=[config.s3.secretkey],
            s3_requests=config.s3.loglevel != "off",
        )
    except OSError as exc:
        message = f"mount.log_file {mount.log_file}: cannot open it: {exc.strerror or exc}"
        _tell_parent(notify_fd, message)
        return _fail(message, 2)
    for warning in startup_warnings(config):
        log.warning("%s", warning)

    def ready() -> None:
        _tell_parent(notify_fd, "READY")

    try:
        return daemon.run(config, mountpoint, ready, signals, flags)
    except StartupError as exc:
        log.error("%s", exc)
        _tell_parent(notify_fd, str(exc))
        return exc.exit_code
    except Exception as exc:
        log.exception("daemon failed")
        _tell_parent(notify_fd, f"daemon failed: {exc}")
        return 1


def _tell_parent(fd: int, line: str) -> None:
    if fd < 0:
        return
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
        if line == "READY":
            os.close(fd)
    except OSError:
        pass


def _spawn_daemon(
    config_path: str | None,
    mountpoint: str,
    config: Config,
    environ: dict[str, str] | None = None,
    flags: Sequence[str] = (),
) -> int:
    """Start `mount --foreground` detached and wait until it reports READY or an error.

    The daemon's standard streams are /dev/null, so what the operator must see is said
    here: the start-up warnings, and, without `mount.log_file` or a syslog socket, the
    default log file the daemon is given instead (else every line would be lost).
    """
    for warning in startup_warnings(config):
        print(f"s3fs-registry: warning: {warning}", file=sys.stderr)
    env = dict(os.environ if environ is None else environ)
    log_file = config.mount.log_file
    if not log_file and not syslog_available():
        log_file = default_log_file(mountpoint)
        os.makedirs(os.path.dirname(log_file), exist_ok=True)
        env[f"{MOUNT_ENV_PREFIX}LOG_FILE"] = log_file
    read_fd, write_fd = os.pipe()
    command = [
        sys.executable,
        "-m",
        "s3fs_registry",
        "mount",
        "--foreground",
        "--notify-fd",
        str(write_fd),
        mountpoint,
    ]
    if config_path:
        command[4:4] = ["--config", os.path.abspath(config_path)]
    if flags:
        command[4:4] = ["--fuse-flags", ",".join(flags)]
    with open(os.devnull, "r+b") as devnull:
        child = subprocess.Popen(
            command,
            stdin=devnull,
            stdout=devnull,
            stderr=devnull,
            pass_fds=(write_fd,),
            start_new_session=True,
            env=env,
        )
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line == "READY":
        if log_file != config.mount.log_file:
            print(
                f"s3fs-registry: no mount.log_file and no syslog socket ({SYSLOG_SOCKET}): "
                f"the daemon logs to {log_file}",
                file=sys.stderr,
            )
        return 0
    try:
        code = child.wait(timeout=READY_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        code = 1
    return _fail(line or f"daemon exited with code {code}; see its log", code or 1)


def _status(args: argparse.Namespace) -> int:
    try:
        report = query(args.mountpoint, args.timeout)
    except StatusError as exc:
        return _fail(str(exc), exc.exit_code)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _check(config: Config) -> int:
    setup_logging("warning", secrets=[config.s3.secretkey], s3_requests=config.s3.loglevel != "off")
    store = Store(config.s3, config.mount)

    async def probe() -> int:
        try:
            await daemon.verify_bucket(store, config)
        except StartupError as exc:
            if exc.exit_code != daemon.EXIT_PERMISSION:  # a refused ListBucket shows in the table
                raise
        outcomes = await permissions.probe(store, config)
        print(
            f"bucket s3://{config.s3.bucket}/{config.s3.key_prefix()} "
            f"at {config.s3.endpoint_url() or 'AWS S3 ' + config.s3.region}"
        )
        print(permissions.format_table(outcomes))
        missing = [o.permission for o in outcomes if not o.granted]
        if missing:
            print(f"missing: {', '.join('s3:' + m for m in missing)}")
            return 6
        print("all 8 permissions the registry needs are granted")
        return 0

    try:
        return trio.run(probe)
    except StoreError as exc:
        return _fail(f"check failed: {exc}", 1)
