"""Domain exceptions and the one table that turns them into errnos.

Every layer below `fs` raises these (never `FUSEError`, never botocore exceptions); `fs`
calls `to_errno()` at its single error boundary. Keeping the mapping in one table makes the
errno contract the registry depends on (ENOENT means "not found" and nothing else; EIO for a
failed upload) reviewable in one place.
"""

from __future__ import annotations

import errno
import logging


class S3fsError(Exception):
    """Base class of every error this package raises on purpose."""

    #: log level the FUSE boundary uses when it turns this error into an errno
    level = logging.WARNING


class ConfigError(S3fsError):
    """A configuration value is missing or invalid; the message names setting and value."""


class StartupError(S3fsError):
    """The daemon cannot start (bucket, credentials, endpoint); carries an exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class FsError(S3fsError):
    """A POSIX-level refusal with a known errno (ENOTEMPTY, EISDIR, ...)."""

    level = logging.DEBUG

    def __init__(self, errno_: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(errno_, str(errno_)))
        self.errno = errno_


class StoreError(S3fsError):
    """An S3 request failed; `code` is the S3 error code or a transport error name."""

    def __init__(self, message: str, code: str = "", operation: str = "", key: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.operation = operation
        self.key = key


class NotFoundError(StoreError):
    """NoSuchKey / 404: the only condition that becomes ENOENT."""

    level = logging.DEBUG


class NoSuchBucketError(StoreError):
    """The bucket does not exist."""


class AccessDeniedError(StoreError):
    """S3 refused the request (AccessDenied, bad signature, unknown access key)."""


class CredentialsError(AccessDeniedError):
    """The credentials themselves were rejected, or none could be found."""


class PreconditionError(StoreError):
    """The object changed under a reader (If-Match failed)."""


class TooLargeError(StoreError):
    """EntityTooLarge, or an object that would need more than 10,000 parts."""


class NoSpaceError(S3fsError):
    """The local spool or a server quota is full."""


class NameTooLongError(S3fsError):
    """The key would exceed S3's 1024-byte limit."""

    level = logging.DEBUG


class TransientError(StoreError):
    """Throttling, 5xx, timeouts, connection errors: retried, then reported as EIO."""


class IntegrityError(StoreError):
    """A response failed a length, range or checksum check."""


# Most specific class first: to_errno walks this list with isinstance().
_ERRNO_TABLE: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, errno.ENOENT),
    (NoSuchBucketError, errno.EIO),
    (AccessDeniedError, errno.EACCES),
    (PreconditionError, errno.ESTALE),
    (TooLargeError, errno.EFBIG),
    (NoSpaceError, errno.ENOSPC),
    (NameTooLongError, errno.ENAMETOOLONG),
    (TransientError, errno.EIO),
    (IntegrityError, errno.EIO),
    (StoreError, errno.EIO),
)


def to_errno(exc: BaseException) -> int:
    """The errno a FUSE reply carries for `exc`; EIO for anything unexpected."""
    if isinstance(exc, FsError):
        return exc.errno
    for cls, value in _ERRNO_TABLE:
        if isinstance(exc, cls):
            return value
    return errno.EIO
