"""CloudFront canned-policy URL signing, byte-identical to the registry's CloudFront middleware.

The registry (distribution 2.8 / v3) signs blob URLs with aws-sdk-go v1 `service/cloudfront/sign`
(`URLSigner.Sign`). We reproduce that exactly, so a CloudFront distribution, key group and cache
configured for the registry serve our reads too, with the same cache keys. See
registry-semantics.md §4.3/§4.4 and §8 item 11: only immutable `blobs/**/data` keys may be read
this way; existence and size always come from S3.

`CloudFrontFetcher` is the daemon's own client for those URLs: ranged GETs over urllib3 (not
botocore: these are plain signed HTTPS requests), every response checked before a byte is
returned, and every failure turned into a `CloudFrontError` whose `cause` tells the caller why
it must read from S3 instead. It never retries: S3 is the fallback, and a retry would only delay
the read.

Nothing in this module logs or reprs a signature or key material; use `redact_url()` before a
signed URL goes anywhere near a log line.
"""

from __future__ import annotations

import base64
import builtins
import collections
import functools
import http.client
import json
import logging
import re
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import trio
import urllib3
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from urllib3.exceptions import HTTPError, NewConnectionError, ProtocolError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from s3fs_registry import __version__, metrics
from s3fs_registry.config import CloudFrontConfig
from s3fs_registry.errors import S3fsError
from s3fs_registry.log import RedactingFilter

log = logging.getLogger(__name__)

#: query parameters a URL must not already carry (aws-sdk-go `illegalQueryParms`)
SIGNING_PARAMS = ("Expires", "Policy", "Signature", "Key-Pair-Id")

#: query parameters whose values are secrets or bearer material, hidden by `redact_url`
_SECRET_PARAMS = frozenset({"Signature", "X-Amz-Signature", "X-Amz-Security-Token"})

_B64_TO_AWS = str.maketrans("+=/", "-_~")
_SIGNED_SCHEMES = frozenset({"http", "https"})
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_KEY_PAIR_ID = re.compile(r"[A-Za-z0-9_.~-]+")


def aws_b64(data: bytes) -> str:
    """Standard base64 with CloudFront's URL-safe substitutions (`+`->`-`, `=`->`_`, `/`->`~`).

    This is not RFC 4648 base64url: CloudFront uses its own alphabet, and padding is kept.
    """
    return base64.b64encode(data).decode("ascii").translate(_B64_TO_AWS)


def canned_policy(url: str, expires_epoch: int) -> bytes:
    """The canned policy JSON, exactly as aws-sdk-go's json.Encoder emits it.

    The bytes are what gets signed, so one extra space or a reordered field breaks every
    signature. The resource must be ASCII (aws-sdk-go `validateURL`); control characters are
    refused too, since Go's url.Parse rejects them before the JSON encoder ever sees them.
    """
    _check_epoch(expires_epoch)
    if not url:
        raise ValueError("CloudFront policy resource is empty")
    if not url.isascii():
        raise ValueError("URL contains non-ascii characters, and should be encoded")
    if _CONTROL_CHARS.search(url):
        raise ValueError("URL contains a control character")
    # For printable ASCII, json.dumps escapes exactly what Go escapes with SetEscapeHTML(false):
    # only '"' and '\'.
    resource = json.dumps(url)
    text = (
        '{"Statement":[{"Resource":' + resource + ',"Condition":'
        '{"DateLessThan":{"AWS:EpochTime":' + str(expires_epoch) + "}}}]}"
    )
    return text.encode("ascii")


def _check_epoch(expires_epoch: int) -> None:
    """Refuse floats (and bools): `str(1.0)` would put "1.0" into the signed policy."""
    if isinstance(expires_epoch, bool) or not isinstance(expires_epoch, int):
        raise TypeError(f"expires_epoch must be an int, not {type(expires_epoch).__name__}")


def _clean_url_scheme(url: str) -> tuple[str, str]:
    """aws-sdk-go `cleanURLScheme`: drop one `*` from the scheme; return (lower scheme, url).

    The `*` form (`http*://`) is CloudFront's "either scheme" wildcard: the policy keeps it,
    the URL handed out does not.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError("invalid URL, missing scheme and domain/path")
    scheme = scheme.replace("*", "", 1)
    return scheme.lower(), f"{scheme}://{rest}"


def _validate_url(url: str) -> None:
    """aws-sdk-go `validateURL`: parseable, ASCII, and no signing parameters already present.

    A URL that already carried `Signature` etc. would get two of them, and which one CloudFront
    honours is unspecified, so it is refused outright. Parsing approximates Go's url.Parse
    (control characters, bad percent-escapes, brackets and ports).
    """
    if not url.isascii():
        raise ValueError("URL contains non-ascii characters, and should be encoded")
    if _CONTROL_CHARS.search(url):
        raise ValueError("unable to parse URL: it contains a control character")
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"unable to parse URL, err: {exc}") from exc
    if not parts.scheme:
        raise ValueError("URL missing valid scheme")
    if _BAD_PERCENT.search(parts.netloc + parts.path):
        raise ValueError("unable to parse URL: invalid percent-escape")
    names = {name for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
    for name in SIGNING_PARAMS:
        if name in names:
            raise ValueError(f"{name} cannot be a query parameter for a signed URL")


def _load_rsa_key(private_key_pem: bytes) -> rsa.RSAPrivateKey:
    """Load an unencrypted PKCS#1 or PKCS#8 RSA key; anything else is a ValueError.

    The registry itself accepts PKCS#1 only; we are more lenient because the key format does
    not change a single signed byte. Error messages never include the PEM.
    """
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except TypeError as exc:  # encrypted key and no password
        raise ValueError("CloudFront private key is encrypted; provide it unencrypted") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("CloudFront private key is not a PEM RSA private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(
            f"CloudFront private key must be RSA (PKCS#1 or PKCS#8), not {type(key).__name__}"
        )
    return key


class UrlSigner:
    """Signs URLs with a CloudFront canned policy, like aws-sdk-go v1 `sign.URLSigner.Sign`.

    Holds only the parsed key object, never the PEM, and keeps it out of `repr`. Safe to
    share between threads (signing is stateless).
    """

    __slots__ = ("_key", "_key_pair_id")

    def __init__(self, key_pair_id: str, private_key_pem: bytes) -> None:
        if not _KEY_PAIR_ID.fullmatch(key_pair_id):
            # It is pasted verbatim into the query string, so '&', '#' or spaces would corrupt it.
            raise ValueError(f"invalid CloudFront key pair id {key_pair_id!r}")
        self._key_pair_id = key_pair_id
        self._key = _load_rsa_key(private_key_pem)
        log.debug("CloudFront signer for key pair %s (%d-bit RSA)", key_pair_id, self._key.key_size)

    @classmethod
    def from_file(cls, key_pair_id: str, path: str) -> UrlSigner:
        """Read the PEM once, as the registry does at startup; OSError if it is unreadable."""
        with open(path, "rb") as f:
            pem = f.read()
        return cls(key_pair_id, pem)

    @property
    def key_pair_id(self) -> str:
        """The public key id CloudFront looks the key up by (not a secret)."""
        return self._key_pair_id

    def sign(self, url: str, expires_epoch: int) -> str:
        """Return `url` with `Expires`, `Signature` and `Key-Pair-Id` appended.

        The policy resource is the URL exactly as given, query string included, so CloudFront
        must be asked for exactly this URL. ValueError for a scheme other than http(s), a
        non-ASCII or unparsable URL, or one that already carries a signing parameter.
        """
        _check_epoch(expires_epoch)
        scheme, cleaned = _clean_url_scheme(url)
        if scheme not in _SIGNED_SCHEMES:
            raise ValueError(f"invalid URL scheme {scheme!r}: only http and https are signed")
        _validate_url(cleaned)
        policy = canned_policy(url, expires_epoch)
        signature = self._key.sign(policy, padding.PKCS1v15(), hashes.SHA1())
        sep = "&" if "?" in cleaned else "?"
        return (
            f"{cleaned}{sep}Expires={expires_epoch}"
            f"&Signature={aws_b64(signature)}&Key-Pair-Id={self._key_pair_id}"
        )

    def __repr__(self) -> str:
        return f"UrlSigner(key_pair_id={self._key_pair_id!r}, rsa_bits={self._key.key_size})"


@dataclass(frozen=True, slots=True)
class _Entry:
    url: str
    expires: float
    renew_at: float


class SignedUrlCache:
    """Reuses a signed URL per resource and renews it well before it expires.

    Rule: a URL signed at time t (expiring at about t + duration) is reused while
    now < t + renew_fraction * duration; with the default 0.5 it is renewed once less than half
    its lifetime remains. That leaves a reader that got the URL just before renewal at least
    half the duration to finish, and saves an RSA signature per read. Two threads missing at
    once may both sign; either URL is valid. Size is bounded (LRU) and lookups are thread-safe.
    """

    def __init__(
        self,
        signer: UrlSigner,
        duration: float,
        clock: Callable[[], float] = time.time,
        renew_fraction: float = 0.5,
        max_entries: int = 4096,
    ) -> None:
        if duration < 1:
            # Expires is truncated to whole seconds; less than 1 s could be already expired.
            raise ValueError(f"signed URL duration must be at least 1 second, not {duration}")
        if not 0 < renew_fraction < 1:
            raise ValueError(f"renew_fraction must be between 0 and 1, not {renew_fraction}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be positive, not {max_entries}")
        self._signer = signer
        self._duration = duration
        self._clock = clock
        self._renew_after = renew_fraction * duration
        self._max_entries = max_entries
        self._entries: collections.OrderedDict[str, _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()

    def url_for(self, resource_url: str) -> tuple[str, float]:
        """Return (signed url, expiry epoch seconds) for `resource_url`, signing if needed."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get(resource_url)
            if entry is not None and now < entry.renew_at:
                self._entries.move_to_end(resource_url)
                return entry.url, entry.expires
        entry = self._sign(resource_url, now)
        with self._lock:
            self._entries[resource_url] = entry
            self._entries.move_to_end(resource_url)
            while len(self._entries) > self._max_entries:
                self._entries.popitem(last=False)
        return entry.url, entry.expires

    def _sign(self, resource_url: str, now: float) -> _Entry:
        """Sign outside the lock: RSA takes about a millisecond and lookups must not queue."""
        expires = int(now + self._duration)  # Go: expires.UTC().Unix() truncates
        url = self._signer.sign(resource_url, expires)
        log.debug("signed CloudFront URL for %s, expires %d", resource_url, expires)
        return _Entry(url=url, expires=float(expires), renew_at=now + self._renew_after)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


def redact_url(url: str) -> str:
    """The URL with secret query values (Signature, X-Amz-Signature/-Security-Token) hidden.

    Expires and Key-Pair-Id stay: they are what one needs to debug a 403, and neither lets
    anyone fetch anything.
    """
    base, qmark, rest = url.partition("?")
    if not qmark:
        return url
    query, hash_, fragment = rest.partition("#")
    parts = [_redact_param(part) for part in query.split("&")]
    return f"{base}?{'&'.join(parts)}{hash_}{fragment}"


def _redact_param(part: str) -> str:
    """One `name=value` query item, with its value replaced if the name is a secret."""
    raw_name = part.split("=", 1)[0]
    if urllib.parse.unquote_plus(raw_name) in _SECRET_PARAMS:
        return f"{raw_name}=REDACTED"
    return part


# --------------------------------------------------------------------------------------------
# Fetching blob bytes from CloudFront

#: why a fetch failed; the caller reads from S3 in every case
CAUSES = ("forbidden", "not-found", "server-error", "timeout", "connection", "bad-response")
for _cause in CAUSES:  # exported from the start, at 0, so that alerts can use rate()
    metrics.CLOUDFRONT_FALLBACKS.labels(_cause)

#: the only keys CloudFront may serve (§8 item 11): content-addressed, so a cached copy is
#: never stale. Links, hashstates and uploads would be, so they are refused outright.
_BLOB_DATA = re.compile(r"docker/registry/v2/blobs/[^/]+/[^/]+/[^/]+/data")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_ERROR_MESSAGE = re.compile(r"<Message>([\w .,:;'()-]{1,200})</Message>")
_PATH_SAFE = "/-_.~"
_SIGNATURE_VALUE = re.compile(r"((?:Signature|X-Amz-Signature|X-Amz-Security-Token)=)[^&\s'\"]+")
#: urllib3 loggers that may put a request URL (and so a signature) into a record
_URL_LOGGERS = (
    "urllib3.connectionpool",
    "urllib3.connection",
    "urllib3.poolmanager",
    "urllib3.util.retry",
)
_url_filter = RedactingFilter(())
_USER_AGENT = f"s3fs-registry/{__version__}"


class CloudFrontError(S3fsError):
    """A CloudFront fetch failed; `cause` is one of CAUSES. The caller falls back to S3.

    The message names the redacted URL and what went wrong; `status` is the HTTP status, or
    0 when there was no (usable) answer.
    """

    cause: str

    def __init__(self, cause: str, message: str, status: int = 0) -> None:
        if cause not in CAUSES:
            raise ValueError(f"unknown CloudFront failure cause {cause!r}")
        super().__init__(message)
        self.cause = cause
        self.status = status


def normalize_baseurl(url: str) -> str:
    """The middleware's rule: `https://` when there is no scheme, and a trailing slash.

    config.py applies it already; doing it again keeps a hand-built CloudFrontConfig right.
    """
    url = url if "://" in url else "https://" + url
    return url if url.endswith("/") else url + "/"


def tls_context(cabundle: str = "") -> ssl.SSLContext:
    """Verify certificates and host names against the system store, or only `cabundle`.

    A bundle replaces the system store rather than adding to it: an operator who names one
    means "trust these", as with a private CA in front of a test distribution.
    """
    return ssl.create_default_context(cafile=cabundle or None)


def check_response(
    status: int, headers: Mapping[str, str], body: bytes, first: int, last: int
) -> tuple[bytes, int]:
    """(bytes first..last, object size) from a response to `Range: bytes=first-last`.

    Raises CloudFrontError unless the answer is exactly what was asked for: a wrong byte
    handed to the registry would corrupt a pull, while a refusal costs only a read from S3.
    """
    if status == 206:
        return _check_partial(headers, body, first, last)
    if status == 200:
        return _check_whole(headers, body, first, last)
    if status == 416:
        return _check_unsatisfiable(headers, first)
    raise CloudFrontError(_status_cause(status), f"HTTP {status}{_error_detail(body)}")


def _status_cause(status: int) -> str:
    if status == 403:
        return "forbidden"
    if status == 404:
        return "not-found"
    if 500 <= status <= 599:
        return "server-error"
    return "bad-response"


def _error_detail(body: bytes) -> str:
    """CloudFront's <Message>, if it is plain text (it never echoes the URL or signature)."""
    match = _ERROR_MESSAGE.search(body[:4096].decode("utf-8", "replace"))
    return f" ({match[1]})" if match else ""


def _content_length(headers: Mapping[str, str], body: bytes) -> int:
    """Content-Length, which must be present and match the body read."""
    raw = headers.get("Content-Length", "").strip()
    if not raw.isdigit():
        raise CloudFrontError("bad-response", f"Content-Length {raw!r} is missing or not a number")
    if int(raw) != len(body):
        raise CloudFrontError("bad-response", f"body of {len(body)} bytes, Content-Length {raw}")
    encoding = headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise CloudFrontError("bad-response", f"Content-Encoding {encoding} (asked for identity)")
    return len(body)


def _check_partial(
    headers: Mapping[str, str], body: bytes, first: int, last: int
) -> tuple[bytes, int]:
    """A 206 must cover first..last, or first..end-of-object when last is past the end."""
    length = _content_length(headers, body)
    content_range = headers.get("Content-Range", "").strip()
    match = _CONTENT_RANGE.fullmatch(content_range)
    if match is None:
        raise CloudFrontError("bad-response", f"HTTP 206 with Content-Range {content_range!r}")
    start, end, total = int(match[1]), int(match[2]), int(match[3])
    ends_right = end == last or (end == total - 1 and end < last)
    if start != first or not start <= end < total or not ends_right:
        raise CloudFrontError("bad-response", f"asked bytes {first}-{last}, got {content_range}")
    if length != end - start + 1:
        raise CloudFrontError("bad-response", f"{length} bytes for Content-Range {content_range}")
    return body, total


def _check_whole(
    headers: Mapping[str, str], body: bytes, first: int, last: int
) -> tuple[bytes, int]:
    """A 200 (range ignored) is the whole object: usable only when the range starts at 0."""
    length = _content_length(headers, body)
    if first != 0:
        raise CloudFrontError("bad-response", f"HTTP 200 (whole object) for bytes {first}-{last}")
    return body[: last + 1], length


def _check_unsatisfiable(headers: Mapping[str, str], first: int) -> tuple[bytes, int]:
    """A 416 is a correct answer (no bytes) when `first` is at or past the object's end."""
    content_range = headers.get("Content-Range", "").strip()
    match = _UNSATISFIED_RANGE.fullmatch(content_range)
    if match is None or first < int(match[1]):
        raise CloudFrontError("bad-response", f"HTTP 416 with Content-Range {content_range!r}")
    return b"", int(match[1])


def classify_error(exc: BaseException) -> str:
    """The cause for an exception from urllib3 (retries off, so never MaxRetryError).

    NewConnectionError (refused, unreachable, DNS) subclasses ConnectTimeoutError in urllib3 2,
    so it is tested first. A certificate failure is "connection": nothing was exchanged. A body
    cut short under `enforce_content_length` arrives as ProtocolError(IncompleteRead) and is a
    short body, "bad-response".
    """
    if isinstance(exc, NewConnectionError):
        return "connection"
    if isinstance(exc, Urllib3Timeout | builtins.TimeoutError):
        return "timeout"
    if isinstance(exc, ProtocolError):
        inner = next((a for a in exc.args if isinstance(a, BaseException)), exc.__cause__)
        if isinstance(inner, http.client.IncompleteRead):
            return "bad-response"
        if isinstance(inner, builtins.TimeoutError):
            return "timeout"
    return "connection"


def _describe(exc: BaseException) -> str:
    """Exception text for a message, with anything looking like a signature hidden."""
    return _SIGNATURE_VALUE.sub(r"\1REDACTED", f"{type(exc).__name__}: {exc}")


class CloudFrontFetcher:
    """Reads byte ranges of immutable blobs through CloudFront signed URLs.

    One urllib3 pool of `max_connections`, and at most that many requests in flight (a trio
    CapacityLimiter), since more threads than pooled connections only churn connections. Each
    request runs in a worker thread, body included, so the trio loop never blocks on the
    network. Failures raise CloudFrontError; the first of each cause is logged at WARNING,
    later ones only at DEBUG and in `stats`, so an expired key or a dead edge cannot flood
    the log while every read quietly goes to S3.
    """

    def __init__(
        self,
        config: CloudFrontConfig,
        key_prefix: str,
        *,
        max_connections: int = 16,
        connect_timeout: float = 5.0,
        read_timeout: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be positive, not {max_connections}")
        self._baseurl = normalize_baseurl(config.baseurl)
        self._key_prefix = key_prefix
        self._root_relative = config.rootrelative
        signer = UrlSigner.from_file(config.keypairid, config.privatekey)
        self._urls = SignedUrlCache(signer, config.duration, clock=clock)
        self._limiter = trio.CapacityLimiter(max_connections)
        self._pool = urllib3.PoolManager(
            maxsize=max_connections,
            retries=urllib3.Retry(total=False),  # no retries: S3 is the fallback
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            ssl_context=tls_context(config.cabundle),
        )
        self.stats: dict[str, int] = dict.fromkeys(("requests", "bytes", *CAUSES), 0)
        self._logged: set[str] = set()
        _hide_urls_in_urllib3_logs()

    def serves(self, key: str) -> bool:
        """Whether `key` may be read through CloudFront: a `blobs/**/data` key below the root."""
        return key.startswith(self._key_prefix) and bool(
            _BLOB_DATA.fullmatch(key[len(self._key_prefix) :])
        )

    def resource_url(self, key: str) -> str:
        """baseurl + key (the registry's URL), or + the key below the root with rootrelative."""
        if self._root_relative:
            if not key.startswith(self._key_prefix):
                raise ValueError(f"key {key!r} is not below the root {self._key_prefix!r}")
            key = key[len(self._key_prefix) :]
        return self._baseurl + urllib.parse.quote(key, safe=_PATH_SAFE)

    def signed_url(self, key: str) -> str:
        """The signed URL for `key`, reused until half its lifetime is gone."""
        return self._urls.url_for(self.resource_url(key))[0]

    async def fetch(self, key: str, first: int, last: int) -> tuple[bytes, int]:
        """Bytes first..last (inclusive, fewer at the object's end) and the object's size.

        ValueError for a key CloudFront must not serve or an empty range (caller bugs);
        CloudFrontError for anything CloudFront did wrong.
        """
        if not self.serves(key):
            raise ValueError(f"{key!r} is not an immutable blob; read it from S3")
        if not 0 <= first <= last:
            raise ValueError(f"invalid byte range {first}-{last}")
        self.stats["requests"] += 1
        metrics.CLOUDFRONT_REQUESTS.inc()
        work = functools.partial(self._fetch_blocking, key, first, last)
        try:
            data, total = await trio.to_thread.run_sync(work, limiter=self._limiter)
        except CloudFrontError as exc:
            self._note_failure(exc)
            raise
        self.stats["bytes"] += len(data)
        metrics.CLOUDFRONT_READ_BYTES.inc(len(data))
        return data, total

    def _fetch_blocking(self, key: str, first: int, last: int) -> tuple[bytes, int]:
        """One GET in a worker thread (signing too: RSA is a millisecond of CPU)."""
        url = self.signed_url(key)
        where = f"CloudFront GET {redact_url(url)} bytes={first}-{last}"
        try:
            resp = self._pool.request(
                "GET",
                url,
                headers={"Range": f"bytes={first}-{last}", "User-Agent": _USER_AGENT},
                redirect=False,
                preload_content=True,
                decode_content=False,
                enforce_content_length=True,
            )
        except (HTTPError, OSError, http.client.HTTPException) as exc:
            raise CloudFrontError(classify_error(exc), f"{where}: {_describe(exc)}") from None
        try:
            return check_response(resp.status, resp.headers, resp.data, first, last)
        except CloudFrontError as exc:
            raise CloudFrontError(exc.cause, f"{where}: {exc}", resp.status) from None

    def _note_failure(self, exc: CloudFrontError) -> None:
        """Count every failure; log the first of each cause loudly, the rest quietly."""
        self.stats[exc.cause] += 1
        metrics.CLOUDFRONT_FALLBACKS.labels(exc.cause).inc()
        if exc.cause in self._logged:
            log.debug("%s; reading from S3", exc)
            return
        self._logged.add(exc.cause)
        log.warning(
            "%s; reading from S3 instead (further %r failures are counted, logged at debug)",
            exc,
            exc.cause,
        )

    def close(self) -> None:
        """Close the pooled connections."""
        self._pool.clear()


def _hide_urls_in_urllib3_logs() -> None:
    """urllib3 logs request URLs at DEBUG; make sure no signature survives in those records.

    log.py keeps urllib3 at WARNING and filters its handler, but a test, a library user or
    a future change of logging set-up must not be one step away from leaking a signature.
    """
    for name in _URL_LOGGERS:
        logger = logging.getLogger(name)
        if _url_filter not in logger.filters:
            logger.addFilter(_url_filter)
