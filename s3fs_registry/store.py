"""The only module that talks to S3: async methods over boto3, run in worker threads.

boto3 is blocking, so every request runs in `trio.to_thread.run_sync` under a
`CapacityLimiter` whose size matches the client's connection pool (more threads than pooled
connections only churns connections). Reads and writes get separate limiters because a
writer waiting for a part upload must never starve the reads that other handlers wait on.

Retries live here, not in botocore: the trio side sleeps between attempts (cancellable, no
thread held), attempts and total time are bounded by the mount settings, and operations
whose first attempt may already have taken effect are recognised instead of being reported
as failures: a CompleteMultipartUpload whose upload is gone checks the object's ETag (the
MD5 of the part ETags), an AbortMultipartUpload of a gone upload is done, and DeleteObject
is idempotent.

Every object write carries the registry driver's headers (Content-Type
application/octet-stream, x-amz-acl, x-amz-storage-class unless NONE, SSE) and checksums of
its body that S3 verifies: Content-MD5 on PutObject, UploadPart and DeleteObjects, as the
registry's driver (aws-sdk-go v1) sends it, plus with SigV4 the signed SHA-256 payload hash;
never botocore's newer x-amz-checksum-* headers, which that driver does not send and some
S3-compatible stores refuse. Every GET is checked for status, length and range before its
bytes are handed on.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit, urlunsplit

import boto3
import botocore.exceptions
import botocore.parsers
import botocore.session
import trio
from botocore.config import Config as BotoConfig

from s3fs_registry import metrics
from s3fs_registry.config import MountConfig, S3Config
from s3fs_registry.errors import (
    AccessDeniedError,
    CredentialsError,
    IntegrityError,
    NameTooLongError,
    NoSpaceError,
    NoSuchBucketError,
    NotFoundError,
    PreconditionError,
    StoreError,
    TooLargeError,
    TransientError,
)

#: at DEBUG: one line per S3 request attempt and, with `storage.s3.loglevel`, what went over
#: the wire; log.py shows these whatever the mount's level when `loglevel` is set
log = logging.getLogger(__name__)

T = TypeVar("T")

MAX_KEY_BYTES = 1024
MIN_PART = 5 * 1024 * 1024
MAX_PART = 5 * 1024 * 1024 * 1024
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024 * 1024 * 1024 * 1024  # S3's largest object: 5 TiB
DELETE_BATCH = 1000

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
_CREDENTIALS = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AuthorizationHeaderMalformed",
}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"}
_TRANSIENT = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "OperationAborted",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
}
_INTEGRITY = {"BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "IncompleteBody"}
_TRANSPORT_ERRORS = (
    botocore.exceptions.EndpointConnectionError,
    botocore.exceptions.ConnectionClosedError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectTimeoutError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ProxyConnectionError,
    botocore.exceptions.HTTPClientError,
    OSError,
)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class ObjectInfo:
    """What a listing or HEAD tells about one object."""

    key: str
    size: int
    mtime: float
    etag: str = ""


@dataclass(frozen=True)
class ListPage:
    """One ListObjectsV2 page: objects, common prefixes, and the token for the next page."""

    objects: list[ObjectInfo]
    prefixes: list[str]
    next_token: str | None


@dataclass(frozen=True)
class PendingUpload:
    """A multipart upload that was started and neither completed nor aborted."""

    key: str
    upload_id: str
    initiated: float


@dataclass(frozen=True)
class GetResult:
    """Bytes of a GET, with the object's total size and ETag from the response."""

    data: bytes
    total_size: int
    etag: str


def _bad_get(key: str, message: str, code: str) -> IntegrityError:
    """A GET answer that must not reach a reader (the retry policy may try again)."""
    return IntegrityError(message, code=code, operation="GetObject", key=key)


def quoted(etag: str) -> str:
    """An ETag in the quoted form S3 mostly uses (RGW leaves copy results bare), so that
    ETags from different calls compare equal."""
    bare = etag.strip('"')
    return f'"{bare}"' if bare else ""


def multipart_etag(part_etags: Sequence[str]) -> str:
    """The ETag S3 gives a completed multipart object: md5 of the part md5s, then -N."""
    digest = hashlib.md5(usedforsecurity=False)
    for etag in part_etags:
        digest.update(bytes.fromhex(etag.strip('"')))
    return f'"{digest.hexdigest()}-{len(part_etags)}"'


def content_md5(body: bytes | bytearray | memoryview) -> str:
    """Base64 MD5 for the Content-MD5 header: S3 rejects the upload if the bytes differ."""
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()


def check_key(key: str) -> None:
    """S3 keys are at most 1024 bytes of UTF-8; longer names are ENAMETOOLONG, not EIO."""
    if len(key.encode("utf-8", "surrogateescape")) > MAX_KEY_BYTES:
        raise NameTooLongError(f"key of {len(key.encode())} bytes exceeds S3's 1024")


def translate_client_error(
    exc: botocore.exceptions.ClientError, operation: str, key: str
) -> Exception:
    """Map a botocore ClientError onto the domain exceptions of errors.py."""
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    message = f"{operation} {key or '(bucket)'}: {code or status}: {error.get('Message', '')}"
    cls: type[StoreError] = StoreError
    if code in _NOT_FOUND:
        cls = NotFoundError
    elif code == "NoSuchBucket":
        cls = NoSuchBucketError
    elif code in _CREDENTIALS:
        cls = CredentialsError
    elif code in _DENIED:
        cls = AccessDeniedError
    elif code in {"PreconditionFailed", "412"}:
        cls = PreconditionError
    elif code == "EntityTooLarge":
        cls = TooLargeError
    elif code == "KeyTooLongError":
        return NameTooLongError(message)
    elif code in {"QuotaExceeded", "InsufficientCapacity"}:
        return NoSpaceError(message)
    elif code in _TRANSIENT or status >= 500:
        cls = TransientError
    elif code in _INTEGRITY:
        cls = IntegrityError
    return cls(message, code=code or str(status), operation=operation, key=key)


def translate_error(exc: BaseException, operation: str, key: str) -> BaseException:
    """Any exception from a boto3 call becomes a domain error (or stays as it is)."""
    if isinstance(exc, botocore.exceptions.ClientError):
        return translate_client_error(exc, operation, key)
    if isinstance(
        exc, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
    ):
        return CredentialsError(
            f"{operation}: no usable AWS credentials: {exc}", code="NoCredentials"
        )
    if isinstance(exc, _TRANSPORT_ERRORS):
        return TransientError(
            f"{operation} {key}: {type(exc).__name__}: {exc}",
            code=type(exc).__name__,
            operation=operation,
            key=key,
        )
    return exc


def _is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, TransientError | IntegrityError)


def make_client(s3: S3Config, mount: MountConfig) -> Any:
    """Build the one boto3 client; done before trio.run because sessions are not thread-safe."""
    config = BotoConfig(
        region_name=s3.region or "us-east-1",
        signature_version="s3v4" if s3.v4auth else "s3",
        s3={
            # Transfer Acceleration needs virtual hosts: path style is ignored, as by the SDK
            "addressing_style": "path" if s3.path_style() and not s3.accelerate else "auto",
            "use_accelerate_endpoint": s3.accelerate,
            # SigV4 signs every body's SHA-256 (x-amz-content-sha256), which S3 and Ceph RGW
            # verify (XAmzContentSHA256Mismatch), also over https, as aws-sdk-go v1 does;
            # Content-MD5 comes on top (Store._checksum), as that SDK sends it too
            "payload_signing_enabled": s3.v4auth,
        },
        # as the registry: only `true` is applied, else the SDK's own settings decide
        # (AWS_USE_DUALSTACK_ENDPOINT, AWS_USE_FIPS_ENDPOINT, the profile)
        use_dualstack_endpoint=True if s3.usedualstack else None,
        use_fips_endpoint=True if s3.usefipsendpoint else None,
        max_pool_connections=mount.max_connections,
        connect_timeout=mount.connect_timeout,
        read_timeout=mount.read_timeout,
        retries={"total_max_attempts": 1},
        user_agent_extra=s3.useragent or None,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        tcp_keepalive=True,
    )
    static = bool(s3.accesskey and s3.secretkey)  # else the default credential chain
    core = botocore.session.get_session()
    parsers = botocore.parsers.ResponseParserFactory()
    parsers.set_parser_defaults(timestamp_parser=fast_timestamp)
    core.register_component("response_parser_factory", parsers)
    session = boto3.session.Session(
        aws_access_key_id=s3.accesskey if static else None,
        aws_secret_access_key=s3.secretkey if static else None,
        botocore_session=core,
    )
    verify: bool | None = False if s3.skipverify else None
    client = session.client(
        "s3", endpoint_url=s3.endpoint_url(), config=config, verify=verify, use_ssl=s3.secure
    )
    client.meta.events.register("before-send.s3", _drop_expect_header)
    client.meta.events.register_last("before-call.s3", _md5_not_flexible_checksums)
    if s3.loglevel in ("debugwithsigning", "debugwithhttpbody"):
        client.meta.events.register("before-send.s3", functools.partial(_log_sent, s3.loglevel))
    if s3.loglevel == "debugwithhttpbody":
        client.meta.events.register("before-parse.s3", _log_received)
    if not s3.v4auth and s3.path_style():
        endpoint_path = urlsplit(client.meta.endpoint_url).path.rstrip("/")
        fix = functools.partial(_bucket_path_as_signed, f"{endpoint_path}/{s3.bucket}")
        client.meta.events.register("before-send.s3", fix)
    return client


def _bucket_path_as_signed(bucket_path: str, request: Any, **_: Any) -> None:
    """SigV2 with path-style addressing: send the bucket's own path as botocore signed it.

    botocore signs bucket-level requests (ListObjects, DeleteObjects, ...) over `/bucket/`
    but sends `/bucket`; servers that check SigV2 signatures (Ceph RGW) then answer
    SignatureDoesNotMatch. Sending `/bucket/` makes both agree.
    """
    parts = urlsplit(request.url)
    if parts.path == bucket_path:
        request.url = urlunsplit(parts._replace(path=bucket_path + "/"))


def fast_timestamp(value: str) -> datetime.datetime:
    """Parse S3's timestamps without dateutil, which botocore uses for every one.

    Listings carry ISO 8601 (`2026-11-26T21:00:05.000Z`), which `fromisoformat` reads in
    0.14 us against dateutil's 33 us: 33 ms less for every page of 1,000 keys.
    Anything else (HTTP dates of HeadObject) goes to botocore's own parser.
    """
    try:
        return datetime.datetime.fromisoformat(value)
    except (TypeError, ValueError):
        parsed: datetime.datetime = botocore.parsers.DEFAULT_TIMESTAMP_PARSER(value)
        return parsed


#: operations botocore gives a checksum of its own (httpChecksumRequired) that this daemon uses
_CHECKSUM_REQUIRED = {"DeleteObjects"}


def _md5_not_flexible_checksums(model: Any, params: dict[str, Any], **_: Any) -> None:
    """Checksums as the registry's driver sends them: Content-MD5, no x-amz-checksum-*.

    botocore >= 1.36 gives operations that require a checksum (DeleteObjects) a CRC32 in
    `x-amz-checksum-crc32` plus `x-amz-sdk-checksum-algorithm`, even with
    request_checksum_calculation "when_required"; stores that predate those headers refuse
    them, and stores that insist on Content-MD5 refuse the request without it. Runs last
    before the call, on the final body.
    """
    checksum = params.get("context", {}).get("checksum", {})
    checksum.pop("request_algorithm", None)
    checksum.pop("request_algorithm_header", None)
    if model.name in _CHECKSUM_REQUIRED and "Content-MD5" not in params["headers"]:
        params["headers"]["Content-MD5"] = content_md5(params["body"])


def _drop_expect_header(request: Any, **_: Any) -> None:
    """Send bodies without `Expect: 100-continue` (the header is not signed).

    When a server refuses such a request before reading its body and keeps the connection
    alive (Ceph RGW does), botocore leaves the pooled connection half-read and the next
    request on it stalls for the whole read timeout (boto/botocore#3010).
    """
    request.headers.pop("Expect", None)


_SIGNATURE_PART = re.compile(r"(Signature=|^AWS [^:]+:)[^,\s]+")
_SECRET_HEADERS = {"x-amz-security-token"}
_SIGNING_HEADERS = ("authorization", "x-amz-date", "x-amz-content-sha256", "content-md5")
_BODY_LIMIT = 4096


def _redacted_headers(headers: Any, names: Iterable[str] | None = None) -> str:
    """Headers for a log line: the signature and any session token replaced by REDACTED."""
    shown = []
    for name, value in headers.items():
        lower = str(name).lower()
        if names is not None and lower not in names:
            continue
        text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if lower in _SECRET_HEADERS:
            text = "REDACTED"
        elif lower == "authorization":
            text = _SIGNATURE_PART.sub(r"\1REDACTED", text)
        shown.append(f"{name}: {text}")
    return "; ".join(shown)


def _body_text(body: Any, xml: bool) -> str:
    """An XML body (listings, DeleteObjects, errors) up to 4 KiB; object data as a count."""
    if body is None or body == b"":
        return "no body"
    if not isinstance(body, bytes | bytearray):
        return "streamed body"
    if not xml:
        return f"{len(body)} bytes"
    text = bytes(body[:_BODY_LIMIT]).decode("utf-8", "replace")
    return text + (f"... ({len(body)} bytes)" if len(body) > _BODY_LIMIT else "")


def _log_sent(level: str, request: Any, **_: Any) -> None:
    """loglevel debugwithsigning / debugwithhttpbody: what a request carries (no secrets)."""
    if level == "debugwithsigning":
        log.debug(
            "S3 signed %s %s: %s",
            request.method,
            request.url,
            _redacted_headers(request.headers, _SIGNING_HEADERS),
        )
        return
    body = request.body
    xml = request.method == "POST" or str(request.headers.get("Content-Type", "")).endswith("xml")
    log.debug(
        "S3 request %s %s: %s; body: %s",
        request.method,
        request.url,
        _redacted_headers(request.headers),
        _body_text(body, xml),
    )


def _log_received(operation_model: Any, response_dict: dict[str, Any], **_: Any) -> None:
    """loglevel debugwithhttpbody: status, headers and XML body of a response."""
    headers = response_dict.get("headers", {})
    streaming = operation_model.has_streaming_output and response_dict.get("status_code", 0) < 300
    xml = not streaming and bool(response_dict.get("body"))
    log.debug(
        "S3 response %s %s: %s; body: %s",
        operation_model.name,
        response_dict.get("status_code"),
        _redacted_headers(headers),
        "object data" if streaming else _body_text(response_dict.get("body"), xml),
    )


def known_regions() -> list[str]:
    """Every region botocore knows for S3, for the config's region check."""
    session = boto3.session.Session()
    regions: set[str] = set()
    for partition in session.get_available_partitions():
        regions.update(session.get_available_regions("s3", partition_name=partition))
    return sorted(regions)


_response = threading.local()  # what the last response in this worker thread said


def _note_response(http_response: Any, **_: Any) -> None:
    """botocore's after-call hook (worker thread): the HTTP status and body length."""
    _response.status = http_response.status_code
    length = str(http_response.headers.get("content-length", ""))
    _response.length = int(length) if length.isdigit() else 0


class _Attempt(Generic[T]):
    """One attempt of a request in its worker thread: latency, HTTP status, response length."""

    __slots__ = ("fn", "length", "seconds", "status")

    def __init__(self, fn: Callable[[], T]) -> None:
        self.fn = fn
        self.seconds = 0.0
        self.status = 0
        self.length = 0

    def __call__(self) -> T:
        _response.status = _response.length = 0
        start = time.perf_counter()
        try:
            return self.fn()
        finally:
            self.seconds = time.perf_counter() - start
            self.status, self.length = _response.status, _response.length


def _account(
    operation: str,
    key: str,
    attempt: int,
    timed: _Attempt[Any],
    sent: int,
    exc: BaseException | None,
    result: object = None,
    final: bool = True,
) -> None:
    """Count one attempt (metrics.py) and log it at DEBUG. Secrets cannot appear: the line
    holds the operation, key, sizes, status, latency and the translated error only."""
    outcome = metrics.s3_attempt(operation, key, attempt, timed.seconds, exc, final)
    if exc is None:
        if sent:
            metrics.WRITTEN_BYTES.inc(sent)
        elif isinstance(result, GetResult):
            metrics.S3_READ_BYTES.inc(len(result.data))
    log.debug(
        "S3 %s %s size=%d status=%s latency=%.3fs attempt=%d outcome=%s%s",
        operation,
        key or "(bucket)",
        sent or timed.length,
        timed.status or "-",
        timed.seconds,
        attempt,
        outcome,
        "" if exc is None else f": {exc}",
    )


class RequestStats:
    """Counts of S3 requests by operation, retries and failures; for logs and benchmarks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.retries = 0
        self.failures = 0

    def count(self, operation: str) -> None:
        with self._lock:
            self.requests[operation] = self.requests.get(operation, 0) + 1

    def total(self) -> int:
        return sum(self.requests.values())


class Store:
    """Async S3 operations on one bucket, with the registry driver's write headers."""

    def __init__(self, s3: S3Config, mount: MountConfig, client: Any = None) -> None:
        self._s3 = s3
        # typed Any on purpose: this module is the boundary, and the stubs' TypedDicts add
        # nothing that the response checks below do not already do at run time
        self._client: Any = client if client is not None else make_client(s3, mount)
        self._client.meta.events.register(
            "after-call.s3", _note_response, unique_id="s3fs-registry-response"
        )
        self._bucket = s3.bucket
        self.retry_attempts = mount.retry_attempts
        self.retry_time = mount.retry_time
        # Reads and writes wait on different things; separate pools keep one from starving the
        # other. Together they never exceed the connection pool.
        read_slots = max(1, mount.max_connections // 2)
        self._read_limiter = trio.CapacityLimiter(read_slots)
        self._write_limiter = trio.CapacityLimiter(max(1, mount.max_connections - read_slots))
        self.write_slots = int(self._write_limiter.total_tokens)
        self.read_slots = read_slots
        self.stats = RequestStats()
        self._write_args = self._object_write_args()
        #: multipart uploads this process started and has not completed or aborted yet
        self.live_uploads: set[str] = set()

    @property
    def bucket(self) -> str:
        return self._bucket

    def _checksum(self, body: bytes | bytearray) -> dict[str, str]:
        """Content-MD5, as the registry's driver sends it (SigV4 and SigV2): S3 refuses the
        body if it differs, and some S3-compatible stores refuse a write without it."""
        return {"ContentMD5": content_md5(body)}

    def _object_write_args(self) -> dict[str, str]:
        """Headers of every object write, exactly as the registry's S3 driver sends them."""
        args = {"ContentType": "application/octet-stream", "ACL": self._s3.objectacl}
        if self._s3.storageclass != "NONE":
            args["StorageClass"] = self._s3.storageclass
        if self._s3.encrypt:
            args["ServerSideEncryption"] = "aws:kms" if self._s3.keyid else "AES256"
        if self._s3.keyid:
            args["SSEKMSKeyId"] = self._s3.keyid
        return args

    async def _call(
        self,
        operation: str,
        key: str,
        fn: Callable[[], T],
        *,
        write: bool = False,
        size: int = 0,
    ) -> T:
        """Run `fn` in a worker thread with bounded, jittered retries of transient errors.

        Every attempt is counted (metrics.py) and logged at DEBUG; a request that fails for
        good (not-found aside) is logged at INFO. `size`: the bytes of the request's body.
        """
        limiter = self._write_limiter if write else self._read_limiter
        started = time.monotonic()
        deadline = started + self.retry_time
        attempt = 0
        while True:
            attempt += 1
            self.stats.count(operation)
            timed = _Attempt(fn)
            try:
                result = await trio.to_thread.run_sync(timed, limiter=limiter)
            except BaseException as raw:
                if isinstance(raw, trio.Cancelled | KeyboardInterrupt):
                    raise
                exc = translate_error(raw, operation, key)
            else:
                _account(operation, key, attempt, timed, size, None, result)
                return result
            delay = min(8.0, 0.1 * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0)
            final = (
                not _is_retryable(exc)
                or attempt >= self.retry_attempts
                or time.monotonic() + delay > deadline
            )
            _account(operation, key, attempt, timed, size, exc, final=final)
            if final:
                if _is_retryable(exc):
                    self.stats.failures += 1
                if not isinstance(exc, NotFoundError):
                    log.info(
                        "S3 request failed after %d attempt(s) in %.2fs: %s",
                        attempt,
                        time.monotonic() - started,
                        exc,
                    )
                raise exc
            self.stats.retries += 1
            log.warning("%s; retry %d of %d in %.2fs", exc, attempt, self.retry_attempts - 1, delay)
            await trio.sleep(delay)

    # -- reading -------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        def work() -> ObjectInfo:
            resp = self._client.head_object(Bucket=self._bucket, Key=key)
            return ObjectInfo(
                key, resp["ContentLength"], resp["LastModified"].timestamp(), resp.get("ETag", "")
            )

        return await self._call("HeadObject", key, work)

    async def list_page(
        self,
        prefix: str,
        *,
        delimiter: str = "/",
        token: str | None = None,
        max_keys: int = 1000,
        start_after: str = "",
    ) -> ListPage:
        """One page of ListObjectsV2; keys come back decoded (botocore asks for url encoding)."""

        def work() -> ListPage:
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix, "MaxKeys": max_keys}
            if delimiter:
                kwargs["Delimiter"] = delimiter
            if token:
                kwargs["ContinuationToken"] = token
            if start_after:
                kwargs["StartAfter"] = start_after
            resp = self._client.list_objects_v2(**kwargs)
            objects = [
                ObjectInfo(o["Key"], o["Size"], o["LastModified"].timestamp(), o.get("ETag", ""))
                for o in resp.get("Contents", [])
            ]
            prefixes = [p["Prefix"] for p in resp.get("CommonPrefixes", [])]
            more = resp.get("IsTruncated", False)
            return ListPage(objects, prefixes, resp.get("NextContinuationToken") if more else None)

        return await self._call("ListObjectsV2", prefix, work)

    async def list_all(
        self, prefix: str, *, delimiter: str = "/"
    ) -> tuple[list[ObjectInfo], list[str]]:
        """Every page of a listing, concatenated."""
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        token: str | None = None
        while True:
            page = await self.list_page(prefix, delimiter=delimiter, token=token)
            objects.extend(page.objects)
            prefixes.extend(page.prefixes)
            if page.next_token is None:
                return objects, prefixes
            token = page.next_token

    async def get(
        self, key: str, start: int | None = None, end: int | None = None, if_match: str = ""
    ) -> GetResult:
        """GET the whole object, or bytes [start, end] inclusive, checked before returning.

        A range that starts at or past the end of the object returns no bytes (S3 answers
        416 InvalidRange); a short, overlong or misplaced body is an IntegrityError, retried.
        """

        def work() -> GetResult:
            wanted = None if start is None else f"bytes={start}-{'' if end is None else end}"
            resp = self._get_object(key, wanted, if_match)
            if resp is None:
                return GetResult(b"", -1, "")
            data = resp["Body"].read()
            return _checked_get(key, resp, data, start, end)

        return await self._call("GetObject", key, work)

    def _get_object(self, key: str, wanted: str | None, if_match: str) -> dict[str, Any] | None:
        """GetObject (in a worker thread); None when the range starts past the end, which
        S3 answers with 416 InvalidRange."""
        kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": key}
        if wanted is not None:
            kwargs["Range"] = wanted
        if if_match:
            kwargs["IfMatch"] = if_match
        try:
            resp: dict[str, Any] = self._client.get_object(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "InvalidRange":
                return None
            raise
        return resp

    # -- writing -------------------------------------------------------------------------

    async def put(self, key: str, body: bytes | bytearray) -> str:
        """PutObject with the registry headers and a body checksum; returns the ETag."""
        check_key(key)

        def work() -> str:
            resp = self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=body,
                **self._checksum(body),
                **self._write_args,
            )
            return str(resp.get("ETag", ""))

        return await self._call("PutObject", key, work, write=True, size=len(body))

    async def create_multipart(self, key: str) -> str:
        check_key(key)

        def work() -> str:
            resp = self._client.create_multipart_upload(
                Bucket=self._bucket, Key=key, **self._write_args
            )
            return str(resp["UploadId"])

        upload_id = await self._call("CreateMultipartUpload", key, work, write=True)
        self.live_uploads.add(upload_id)
        return upload_id

    async def upload_part(
        self, key: str, upload_id: str, number: int, body: bytes | bytearray
    ) -> str:
        def work() -> str:
            resp = self._client.upload_part(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                **self._checksum(body),
            )
            return str(resp["ETag"])

        return await self._call("UploadPart", key, work, write=True, size=len(body))

    async def upload_part_copy(
        self,
        key: str,
        upload_id: str,
        number: int,
        source_key: str,
        first: int,
        last: int,
        if_match: str = "",
    ) -> str:
        """Copy bytes [first, last] of `source_key` server-side into part `number`."""

        def work() -> str:
            kwargs: dict[str, Any] = {}
            if if_match:
                kwargs["CopySourceIfMatch"] = if_match
            resp = self._client.upload_part_copy(
                Bucket=self._bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource={"Bucket": self._bucket, "Key": source_key},
                CopySourceRange=f"bytes={first}-{last}",
                **kwargs,
            )
            return quoted(str(resp["CopyPartResult"]["ETag"]))

        return await self._call("UploadPartCopy", key, work, write=True)

    async def complete_multipart(self, key: str, upload_id: str, etags: Sequence[str]) -> str:
        """Complete with parts 1..N; a retry that finds the upload gone checks the object."""
        expected = multipart_etag(etags)
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]

        def work() -> str:
            resp = self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            return str(resp.get("ETag") or expected)

        try:
            etag = await self._call("CompleteMultipartUpload", key, work, write=True)
        except StoreError as exc:
            if exc.code != "NoSuchUpload" or not await self._completed_as(key, expected):
                raise
            # an earlier attempt completed it and its answer was lost: the object's ETag is
            # the one of exactly these parts, so the content is ours
            log.info("CompleteMultipartUpload %s: an earlier attempt had taken effect", key)
            etag = expected
        self.live_uploads.discard(upload_id)
        return etag

    async def _completed_as(self, key: str, etag: str) -> bool:
        try:
            return (await self.head(key)).etag == etag
        except NotFoundError:
            return False

    async def abort_multipart(self, key: str, upload_id: str) -> None:
        def work() -> None:
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=key, UploadId=upload_id)

        try:
            await self._call("AbortMultipartUpload", key, work, write=True)
        except StoreError as exc:
            if exc.code != "NoSuchUpload":
                raise
        self.live_uploads.discard(upload_id)

    async def copy(self, source_key: str, key: str) -> str:
        """CopyObject with the registry headers (metadata directive COPY, as the driver);
        returns the new object's ETag."""
        check_key(key)

        def work() -> str:
            resp = self._client.copy_object(
                Bucket=self._bucket,
                Key=key,
                CopySource={"Bucket": self._bucket, "Key": source_key},
                **self._write_args,
            )
            return quoted(str(resp.get("CopyObjectResult", {}).get("ETag", "")))

        return await self._call("CopyObject", key, work, write=True)

    async def delete(self, key: str) -> None:
        """DeleteObject; S3 answers 204 whether or not the key existed, so retries are safe."""

        def work() -> None:
            self._client.delete_object(Bucket=self._bucket, Key=key)

        await self._call("DeleteObject", key, work, write=True)

    async def delete_many(self, keys: Iterable[str]) -> None:
        """DeleteObjects in batches of 1000; any per-key error fails the call."""
        batch = list(keys)
        for start in range(0, len(batch), DELETE_BATCH):
            chunk = batch[start : start + DELETE_BATCH]
            await self._delete_batch(chunk)

    async def _delete_batch(self, keys: list[str]) -> None:
        def work() -> list[dict[str, Any]]:
            resp = self._client.delete_objects(
                Bucket=self._bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )
            return list(resp.get("Errors", []))

        errors = await self._call("DeleteObjects", keys[0], work, write=True)
        failed = [e for e in errors if e.get("Code") != "NoSuchKey"]
        if failed:
            first = failed[0]
            error: Any = {"Error": first}
            raise translate_client_error(
                botocore.exceptions.ClientError(error, "DeleteObjects"),
                "DeleteObjects",
                str(first.get("Key", "")),
            )

    # -- multipart bookkeeping (janitor, check) ------------------------------------------

    async def list_uploads(self, prefix: str) -> list[PendingUpload]:
        """Every pending multipart upload under `prefix`, following pagination."""
        uploads: list[PendingUpload] = []
        key_marker = upload_marker = ""
        while True:
            page, key_marker, upload_marker = await self._list_uploads_page(
                prefix, key_marker, upload_marker
            )
            uploads.extend(page)
            if not key_marker and not upload_marker:
                return uploads

    async def _list_uploads_page(
        self, prefix: str, key_marker: str, upload_marker: str
    ) -> tuple[list[PendingUpload], str, str]:
        def work() -> tuple[list[PendingUpload], str, str]:
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Prefix": prefix}
            if key_marker:
                kwargs["KeyMarker"] = key_marker
            if upload_marker:
                kwargs["UploadIdMarker"] = upload_marker
            resp = self._client.list_multipart_uploads(**kwargs)
            page = [
                PendingUpload(u["Key"], u["UploadId"], u["Initiated"].timestamp())
                for u in resp.get("Uploads", [])
            ]
            if not resp.get("IsTruncated"):
                return page, "", ""
            return page, resp.get("NextKeyMarker", ""), resp.get("NextUploadIdMarker", "")

        return await self._call("ListMultipartUploads", prefix, work)

    async def list_parts(self, key: str, upload_id: str) -> list[tuple[int, int, str]]:
        """(number, size, ETag) of every part uploaded so far, following pagination."""
        parts: list[tuple[int, int, str]] = []
        marker = 0
        while True:
            page, marker = await self._list_parts_page(key, upload_id, marker)
            parts.extend(page)
            if not marker:
                return parts

    async def _list_parts_page(
        self, key: str, upload_id: str, marker: int
    ) -> tuple[list[tuple[int, int, str]], int]:
        def work() -> tuple[list[tuple[int, int, str]], int]:
            kwargs: dict[str, Any] = {"Bucket": self._bucket, "Key": key, "UploadId": upload_id}
            if marker:
                kwargs["PartNumberMarker"] = marker
            resp = self._client.list_parts(**kwargs)
            page = [
                (int(p["PartNumber"]), int(p["Size"]), str(p["ETag"]))
                for p in resp.get("Parts", [])
            ]
            more = resp.get("IsTruncated", False)
            return page, int(resp.get("NextPartNumberMarker", 0)) if more else 0

        return await self._call("ListParts", key, work)

    async def bucket_location(self) -> str:
        def work() -> str:
            resp = self._client.get_bucket_location(Bucket=self._bucket)
            return str(resp.get("LocationConstraint") or "us-east-1")

        return await self._call("GetBucketLocation", "", work)


def _checked_get(
    key: str, resp: dict[str, Any], data: bytes, start: int | None, end: int | None
) -> GetResult:
    """Refuse a GET response whose status, length or range is not what was asked for."""
    status = resp.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    length = int(resp.get("ContentLength", len(data)))
    etag = str(resp.get("ETag", ""))
    if len(data) != length:
        raise _bad_get(
            key, f"GetObject {key}: body of {len(data)} bytes, Content-Length {length}", "ShortBody"
        )
    if start is None:
        if status != 200:
            raise _bad_get(key, f"GetObject {key}: status {status}", "BadStatus")
        return GetResult(data, length, etag)
    match = _CONTENT_RANGE.fullmatch(str(resp.get("ContentRange", "")))
    if status == 200 and match is None and start == 0:
        return GetResult(data, length, etag)  # server ignored the range but sent it all
    if status != 206 or match is None:
        raise _bad_get(
            key,
            f"GetObject {key}: status {status}, Content-Range "
            f"{resp.get('ContentRange')!r} for a range request",
            "BadRange",
        )
    first, last, total = int(match[1]), int(match[2]), match[3]
    want_last = last if end is None else end
    size = int(total) if total != "*" else last + 1
    if first != start or (last != want_last and last != size - 1) or last - first + 1 != len(data):
        raise _bad_get(
            key, f"GetObject {key}: asked bytes {start}-{end}, got {first}-{last}", "BadRange"
        )
    return GetResult(data, size, etag)
