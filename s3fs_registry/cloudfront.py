"""CloudFront canned-policy URL signing, byte-identical to the registry's CloudFront middleware.

The registry (distribution 2.8 / v3) signs blob URLs with aws-sdk-go v1 `service/cloudfront/sign`
(`URLSigner.Sign`). We reproduce that exactly, so a CloudFront distribution, key group and cache
configured for the registry serve our reads too, with the same cache keys. See
registry-semantics.md §4.3/§4.4 and §8 item 11: only immutable `blobs/**/data` keys may be read
this way; existence and size always come from S3.

Nothing in this module logs or reprs a signature or key material; use `redact_url()` before a
signed URL goes anywhere near a log line.
"""

from __future__ import annotations

import base64
import collections
import json
import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

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
