"""Logging set-up: one format, journald-friendly, and secrets that never reach a record.

botocore logs request headers (the Authorization signature among them) at DEBUG, so its
loggers stay at WARNING whatever the mount's level. As a second line of defence a filter
replaces every configured secret (secret key, session token, CloudFront signatures) in the
final message of every record with `***`.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable, Iterator

log = logging.getLogger(__name__)

#: the per-request lines of store.py, shown whatever the level when storage.s3.loglevel is set
S3_REQUESTS_LOGGER = "s3fs_registry.store"
QUIET_LIBRARIES = ("botocore", "boto3", "urllib3", "s3transfer", "pyfuse3", "trio")
_SIGNATURE = re.compile(r"((?:Signature|X-Amz-Signature|X-Amz-Security-Token)=)[^&\s]+")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
JOURNAL_FORMAT = "%(levelname)s %(name)s: %(message)s"
SYSLOG_SOCKET = "/dev/log"


class RedactingFilter(logging.Filter):
    """Replaces secrets and URL signatures in a record's final message."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = _SIGNATURE.sub(r"\1REDACTED", message)
        for secret in self._secrets:
            clean = clean.replace(secret, "***")
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            for secret in self._secrets:
                text = text.replace(secret, "***")
            record.exc_text, record.exc_info = text, None
        return True


def syslog_available() -> bool:
    return os.path.exists(SYSLOG_SOCKET)


def default_log_file(mountpoint: str) -> str:
    """Where a background daemon logs when it has neither `mount.log_file` nor a syslog
    socket (a container): a file named after the mount point, so no line is ever lost."""
    name = mountpoint.strip("/").replace("/", "-") or "root"
    if os.geteuid() == 0:
        base = "/var/log/s3fs-registry"
    else:
        state = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
        base = os.path.join(state, "s3fs-registry")
    return os.path.join(base, f"{name}.log")


def setup_logging(
    level: str,
    log_file: str = "",
    *,
    syslog: bool = False,
    secrets: Iterable[str] = (),
    s3_requests: bool = False,
) -> None:
    """Configure the root logger once: stderr, a file, or syslog (background mode).

    `s3_requests` (registry v3's `storage.s3.loglevel` other than off) logs every S3 request
    whatever `level` is, as the registry's SDK logger prints whatever the registry's level.
    """
    handler: logging.Handler
    if log_file:
        handler = logging.FileHandler(log_file)
        handler.setFormatter(logging.Formatter(FORMAT))
    elif syslog and syslog_available():
        handler = logging.handlers.SysLogHandler(address=SYSLOG_SOCKET)
        handler.setFormatter(logging.Formatter("s3fs-registry[%(process)d]: " + JOURNAL_FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        under_journal = "JOURNAL_STREAM" in os.environ  # journald adds its own timestamps
        handler.setFormatter(logging.Formatter(JOURNAL_FORMAT if under_journal else FORMAT))
    handler.addFilter(RedactingFilter([*secrets, *_environment_secrets()]))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger(S3_REQUESTS_LOGGER).setLevel(logging.DEBUG if s3_requests else logging.NOTSET)


def reopen_log_file() -> str:
    """Reopen the log file under its name (SIGHUP: logrotate has moved the old one away).

    Returns the file's path, or "" when the daemon does not log to a file.
    """
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            with _locked(handler):
                if handler.stream is not None:
                    handler.stream.close()
                handler.stream = handler._open()
            return handler.baseFilename
    return ""


@contextlib.contextmanager
def _locked(handler: logging.Handler) -> Iterator[None]:
    handler.acquire()
    try:
        yield
    finally:
        handler.release()


def _environment_secrets() -> list[str]:
    names = (
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "REGISTRY_STORAGE_S3_SECRETKEY",
    )
    return [os.environ[n] for n in names if os.environ.get(n)]
