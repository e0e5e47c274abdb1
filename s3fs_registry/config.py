"""Configuration: the registry's own YAML (`storage.s3`, the cloudfront middleware) plus `mount:`.

Why it is built this way:

* An operator moves an existing registry configuration over unchanged. So `storage.s3` keeps
  the S3 driver's parameter names, defaults, ranges, accepted spellings and error texts (2.8
  flavour, with the v3.1 storage classes; reference/registry-semantics.md §3.2), the cloudfront
  options keep §4.1's, and `REGISTRY_STORAGE_S3_<PARAM>` variables override the file as they do
  in the registry.
* Fail early and say why (DESIGN.md tenet 6): every problem is one `ConfigError` line naming
  the setting (or the environment variable), the offending value and what is allowed. Secrets
  (`secretkey`, private key contents) never appear in a message, a warning or a repr.
* Each setting is declared once, in a table (name, parser, allowed values, help text), as
  gunicorn does; defaults live on the frozen dataclasses. `render_reference()` turns both into
  the tables of doc/CONFIGURATION.md, and a test keeps that file current.

Nothing here talks to S3: the caller passes the list of known regions (only `store` imports
boto3).
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import re
import stat
import tempfile
import urllib.parse
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from s3fs_registry.errors import ConfigError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

INT64_MAX = (1 << 63) - 1
MIN_CHUNK_SIZE = 5 * MiB  # the S3 driver's minChunkSize
MAX_CHUNK_SIZE = 5 * GiB  # its maxChunkSize on 64-bit platforms

#: v3.1's list; 2.8 knew only the first three. NONE means "send no storage-class header".
STORAGE_CLASSES = (
    "NONE", "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA",
    "INTELLIGENT_TIERING", "OUTPOSTS", "GLACIER_IR", "EXPRESS_ONEZONE",
)  # fmt: skip
#: S3's canned ACLs, exactly as the driver's validObjectACLs (case-sensitive)
OBJECT_ACLS = (
    "private", "public-read", "public-read-write", "authenticated-read",
    "aws-exec-read", "bucket-owner-read", "bucket-owner-full-control",
)  # fmt: skip
LOG_LEVELS = ("debug", "info", "warning", "error")
IP_FILTERS = ("none", "aws", "awsregion")
DEFAULT_IP_RANGES_URL = "https://ip-ranges.amazonaws.com/ip-ranges.json"

S3_ENV_PREFIXES = ("REGISTRY_STORAGE_S3_", "REGISTRY_STORAGE_S3AWS_")
MOUNT_ENV_PREFIX = "REGISTRY_MOUNT_"
ENV_SOURCE = "<environment>"

_GO_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_GO_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
_GO_BOOLS = "true, false, 1, 0, t, f, T, F, TRUE, FALSE, True, False"
_KEY_PAIR_ID = re.compile(r"[A-Za-z0-9_.~-]+")  # pasted verbatim into signed URLs
_MAX_SHOWN = 120


class _Invalid(Exception):
    """A value is wrong; the caller prefixes where it came from and raises ConfigError."""


class _Unset:
    """Parser result meaning "keep the default" (the registry ignores some wrong types)."""


_UNSET = _Unset()

#: raw value, warnings sink -> typed value (or _UNSET); raises _Invalid
Parser = Callable[[Any, list[str]], Any]


# --------------------------------------------------------------------------------------------
# The configuration objects


@dataclass(frozen=True)
class S3Config:
    """`storage.s3`: the registry S3 driver's parameters, validated, with derived values."""

    bucket: str
    accesskey: str = ""
    secretkey: str = field(default="", repr=False)
    region: str = ""
    regionendpoint: str = ""
    encrypt: bool = False
    keyid: str = ""
    secure: bool = True
    skipverify: bool = False
    v4auth: bool = True
    chunksize: int = 10 * MiB
    multipartcopychunksize: int = 32 * MiB
    multipartcopymaxconcurrency: int = 100
    multipartcopythresholdsize: int = 32 * MiB
    rootdirectory: str = ""
    storageclass: str = "STANDARD"
    objectacl: str = "private"
    useragent: str = ""
    forcepathstyle: bool = False

    def endpoint_url(self) -> str | None:
        """The endpoint for boto3; `secure` picks the scheme unless one is given (SDK AddScheme)."""
        if not self.regionendpoint:
            return None
        if "://" in self.regionendpoint:
            return self.regionendpoint
        return ("https://" if self.secure else "http://") + self.regionendpoint

    def path_style(self) -> bool:
        """2.8: any regionendpoint implies path-style addressing; v3's forcepathstyle too."""
        return bool(self.regionendpoint) or self.forcepathstyle

    def key_prefix(self) -> str:
        """The driver's `s3Path("/")`: "" or a prefix ending in "/" (interior "//" kept)."""
        return (self.rootdirectory.rstrip("/") + "/").lstrip("/")

    def key_for(self, rel: str) -> str:
        """The S3 key of `rel`, a path below the root without a leading slash."""
        return self.key_prefix() + rel


@dataclass(frozen=True)
class CloudFrontConfig:
    """The cloudfront storage middleware's options, used here to fetch immutable blobs."""

    baseurl: str
    privatekey: str
    keypairid: str
    duration: float = 1200.0
    ipfilteredby: str = "none"
    awsregion: tuple[str, ...] = ()
    updatefrequency: float = 43200.0
    iprangesurl: str = DEFAULT_IP_RANGES_URL
    rootrelative: bool = False
    cabundle: str = ""

    def warnings(self) -> list[str]:
        """Start-up warnings: options a mount cannot honour, a private key others can read."""
        notes = []
        what = "; the daemon itself fetches blobs, so there is no client IP to filter: ignored"
        if self.ipfilteredby != "none":
            notes.append(
                f"cloudfront: ipfilteredby {self.ipfilteredby} cannot apply to a mount" + what
            )
        if self.awsregion:
            regions = ",".join(self.awsregion)
            notes.append(f"cloudfront: awsregion {regions} only feeds ipfilteredby{what}")
        defaults = CloudFrontConfig("", "", "")
        for name in ("updatefrequency", "iprangesurl"):
            if getattr(self, name) != getattr(defaults, name):
                notes.append(f"cloudfront: {name} only feeds ipfilteredby{what}")
        notes.extend(_key_mode_warnings(self.privatekey))
        return notes


def _key_mode_warnings(path: str) -> list[str]:
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return []
    if mode & 0o077 == 0:
        return []
    return [
        f"cloudfront: privatekey file {path} has mode {mode:04o}: group or others may read it "
        f"(chmod 600 {path})"
    ]


@dataclass(frozen=True)
class MountConfig:
    """`mount:`: this daemon's own settings (caches, budgets, ownership, logging, retries)."""

    metadata_ttl: float = 1.0
    immutable_ttl: float = 300.0
    negative_ttl: float = 1.0
    memory_budget: int = 512 * MiB
    max_connections: int = 32
    read_ahead: int = 64 * MiB
    small_file_size: int = 1 * MiB
    spool_dir: str = ""
    spool_limit: int = 1 * GiB
    uid: int = -1
    gid: int = -1
    file_mode: int = 0o644
    dir_mode: int = 0o755
    allow_other: bool = False
    log_level: str = "info"
    log_file: str = ""
    janitor: bool = True
    janitor_age: float = 168 * 3600.0
    janitor_interval: float = 3600.0
    retry_attempts: int = 5
    retry_time: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; `warnings` are to be logged once at start."""

    s3: S3Config
    mount: MountConfig
    cloudfront: CloudFrontConfig | None
    warnings: tuple[str, ...] = ()


# --------------------------------------------------------------------------------------------
# Value formatting (messages are one line, secrets are never passed in)


def _show(value: object) -> str:
    """A value for a message, Go-like for scalars, a type word for containers."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        text = value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "..."
        return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _raw(value: object) -> str:
    """A value as Go's %v would print it inside a registry error text."""
    if isinstance(value, str):
        return _show(value)[1:-1]
    return _show(value)


def _one_line(text: str) -> str:
    return " ".join(text.split("\n")).replace("\r", " ")


def _go_quote(text: str) -> str:
    """Go's time.quote: non-ASCII and control characters as \\xNN bytes."""
    out: list[str] = []
    for ch in text:
        if ord(ch) >= 0x80 or ch < " ":
            out.extend(f"\\x{b:02x}" for b in ch.encode("utf-8", "replace"))
        else:
            out.append("\\" + ch if ch in '"\\' else ch)
    return '"' + "".join(out) + '"'


# --------------------------------------------------------------------------------------------
# Go parsing: strconv.ParseInt(v, 0, 64) and time.ParseDuration


def _go_parse_int(text: str) -> int:
    """strconv.ParseInt(text, 0, 64): 0x/0o/0b prefixes, a leading 0 means octal, _ separators."""
    body = text[1:] if text[:1] in ("+", "-") else text
    if not body[:1].isdigit() or not text.isascii() or any(ch.isspace() for ch in text):
        raise ValueError(text)  # also "", "++1", "_1"; Python's int() would strip spaces
    if body[:2].lower() in ("0x", "0o", "0b"):
        number = int(body, 0)
    elif len(body) > 1 and body[0] == "0":
        number = int(body[1:].removeprefix("_"), 8)  # Go allows "0_17"
    else:
        number = int(body, 10)
    number = -number if text[0] == "-" else number
    if not -(1 << 63) <= number <= INT64_MAX:
        raise ValueError(text)
    return number


_DURATION_UNITS = {
    "ns": 1, "us": 1_000, "\u00b5s": 1_000, "\u03bcs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}  # fmt: skip
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def _duration_ns(orig: str) -> int:
    """time.ParseDuration, in integer nanoseconds, with Go's error texts (raises _Invalid)."""
    invalid = _Invalid(f"time: invalid duration {_go_quote(orig)}")
    text, negative = orig, orig.startswith("-")
    if text[:1] in ("-", "+"):
        text = text[1:]
    if text == "0":
        return 0
    if not text:
        raise invalid
    total = 0
    while text:
        match = _DURATION_PART.match(text)
        assert match is not None  # the pattern matches any string
        whole, frac, unit = match.group(1), match.group(2) or "", match.group(3)
        if not whole and not frac:
            raise invalid  # ".s", "-.s", or a part starting with a unit
        if not unit:
            raise _Invalid(f"time: missing unit in duration {_go_quote(orig)}")
        if unit not in _DURATION_UNITS:
            raise _Invalid(f"time: unknown unit {_go_quote(unit)} in duration {_go_quote(orig)}")
        total += _duration_part_ns(whole, frac, _DURATION_UNITS[unit], invalid)
        if total > 1 << 63:
            raise invalid
        text = text[match.end() :]
    if not negative and total > INT64_MAX:
        raise invalid
    return -total if negative else total


def _duration_part_ns(whole: str, frac: str, unit: int, invalid: _Invalid) -> int:
    value = int(whole or "0")
    if value > (1 << 63) // unit:
        raise invalid
    value *= unit
    digits, scale = 0, 1.0
    for ch in frac:  # Go's leadingFraction: stop accumulating before uint64 overflow
        if digits > INT64_MAX // 10:
            break
        digits, scale = digits * 10 + int(ch), scale * 10
    if digits > 0:
        value += int(float(digits) * (float(unit) / scale))
        if value > 1 << 63:
            raise invalid
    return value


def parse_duration(value: str) -> float:
    """Go `time.ParseDuration` in seconds ("300ms", "1.5h", "1h30m", "-2s", "0")."""
    if not isinstance(value, str):
        raise ConfigError(f"invalid duration: {_show(value)} is not a string")
    try:
        return _duration_ns(value) / 1e9
    except _Invalid as exc:
        raise ConfigError(str(exc)) from None


# --------------------------------------------------------------------------------------------
# Sizes


_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)")
_SIZE_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
    "kib": KiB, "mib": MiB, "gib": GiB, "tib": TiB,
}  # fmt: skip
_SIZE_HELP = (
    "a number of bytes or a size such as 512MiB, 10MB, 1.5GiB "
    "(units B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)"
)


def _size_bytes(value: object) -> int:
    if isinstance(value, bool):
        raise _Invalid(f"{_show(value)} is not a size; use {_SIZE_HELP}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        number = _size_from_text(value)
    else:
        raise _Invalid(f"{_show(value)} is not a size; use {_SIZE_HELP}")
    if number < 0:
        raise _Invalid(f"{_show(value)} is negative; use {_SIZE_HELP}")
    return number


def _size_from_text(text: str) -> int:
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _SIZE_UNITS:
        raise _Invalid(f"{_show(text)} is not a size; use {_SIZE_HELP}")
    try:
        exact = Decimal(match.group(1)) * _SIZE_UNITS[unit]
    except InvalidOperation:
        raise _Invalid(f"{_show(text)} is not a size; use {_SIZE_HELP}") from None
    if exact != exact.to_integral_value():
        raise _Invalid(f"{_show(text)} is not a whole number of bytes")
    return int(exact)


def parse_size(value: object, setting: str) -> int:
    """A byte count from an int or a string with a binary or decimal unit ("512MiB", "10MB")."""
    try:
        return _size_bytes(value)
    except _Invalid as exc:
        raise ConfigError(f"{setting}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Parsers: factories returning `Parser` closures. Registry texts are kept verbatim.


def _go_bool(label: str) -> Parser:
    """2.8 booleans: a YAML bool or a string strconv.ParseBool accepts; `label` as 2.8 spells it."""

    def parse(value: Any, _warnings: list[str]) -> bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value in _GO_TRUE | _GO_FALSE:
            return value in _GO_TRUE
        raise _Invalid(
            f"the {label} parameter should be a boolean; got {_show(value)} (allowed: {_GO_BOOLS})"
        )

    return parse


def _go_int64(label: str, value: Any) -> int:
    """2.8 getParameterAsInt64's conversion: an int, or a string ParseInt(v, 0, 64) accepts."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return _go_parse_int(value)
        except ValueError:
            raise _Invalid(
                f"{label} parameter must be an integer, {_raw(value)} invalid "
                "(decimal, or 0x/0o/0b prefixed; no units)"
            ) from None
    raise _Invalid(f"invalid value for {label}: {_show(value)} (must be an integer)")


def _go_int(label: str, low: int, high: int) -> Parser:
    def parse(value: Any, _warnings: list[str]) -> int:
        number = _go_int64(label, value)
        if not low <= number <= high:
            raise _Invalid(
                f"the {label} {number} parameter should be a number between {low} and {high} "
                "(inclusive)"
            )
        return number

    return parse


def _string(label: str, secret: bool = False, loose: bool = False) -> Parser:
    """A string. `loose`: a YAML integer too, as the registry's fmt.Sprint accepts it."""

    def parse(value: Any, _warnings: list[str]) -> str:
        if isinstance(value, str):
            return value
        if loose and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        raise _Invalid(
            "must be a string" if secret else f"{label} must be a string; got {_show(value)}"
        )

    return parse


def _storage_class(value: Any, _warnings: list[str]) -> str:
    if isinstance(value, str) and value.upper() in STORAGE_CLASSES:
        return value.upper()
    raise _Invalid(
        f"the storageclass parameter must be one of [{' '.join(STORAGE_CLASSES)}], "
        f"{_raw(value)} invalid"
    )


def _object_acl(value: Any, _warnings: list[str]) -> str:
    if isinstance(value, str) and value in OBJECT_ACLS:
        return value
    raise _Invalid(
        f"invalid value for objectacl parameter: {_raw(value)} (allowed, case-sensitive: "
        f"{', '.join(OBJECT_ACLS)})"
    )


def _endpoint(value: Any, warnings: list[str]) -> str:
    """A URL with an http(s) scheme and a host, or a bare host[:port]."""
    text: str = _string("regionendpoint", loose=True)(value, warnings)
    if not text:
        return text
    has_scheme = "://" in text
    problem = _endpoint_problem(text, has_scheme)
    if problem:
        raise _Invalid(
            f"invalid regionendpoint {_show(text)}: {problem} "
            "(allowed: http(s)://host[:port][/path] or host[:port])"
        )
    return text


def _endpoint_problem(text: str, has_scheme: bool) -> str:
    if any(ch.isspace() for ch in text) or not text.isascii():
        return "contains whitespace or non-ASCII characters"
    try:
        parts = urllib.parse.urlsplit(text if has_scheme else "//" + text)
        _ = parts.port
    except ValueError as exc:
        return str(exc)
    if has_scheme and parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "no host"
    if parts.query or parts.fragment or (not has_scheme and parts.path not in ("", "/")):
        return "unexpected path, query or fragment"
    return ""


def _choice(label: str, choices: tuple[str, ...]) -> Parser:
    def parse(value: Any, _warnings: list[str]) -> str:
        if isinstance(value, str) and value.strip().lower() in choices:
            return value.strip().lower()
        raise _Invalid(f"{label} must be one of {', '.join(choices)}; got {_show(value)}")

    return parse


def _int_range(low: int, high: int) -> Parser:
    def parse(value: Any, _warnings: list[str]) -> int:
        try:
            number = _go_int64("value", value)
        except _Invalid:
            number = low - 1
        if not low <= number <= high:
            raise _Invalid(f"must be an integer between {low} and {high}; got {_show(value)}")
        return number

    return parse


def _seconds(minimum: float, inclusive: bool = True) -> Parser:
    """A Go duration string ("1h30m") or a plain number of seconds; finite, >= / > minimum."""
    bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
    usage = f"a duration {bound} such as 500ms, 30s, 5m, 1h30m, or a number of seconds"

    def parse(value: Any, _warnings: list[str]) -> float:
        seconds = _to_seconds(value, usage)
        too_small = seconds < minimum or (seconds == minimum and not inclusive)
        if too_small or not math.isfinite(seconds):
            raise _Invalid(f"must be {usage}; got {_show(value)}")
        return seconds

    return parse


def _to_seconds(value: Any, usage: str) -> float:
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        if re.fullmatch(r"[0-9]+(\.[0-9]*)?", value):
            return float(value)
        try:
            return _duration_ns(value) / 1e9
        except _Invalid as exc:
            raise _Invalid(f"{exc}; must be {usage}") from None
    raise _Invalid(f"must be {usage}; got {_show(value)}")


def _size(minimum: int, maximum: int | None = None) -> Parser:
    def parse(value: Any, _warnings: list[str]) -> int:
        number = _size_bytes(value)
        if number < minimum or (maximum is not None and number > maximum):
            allowed = f">= {_human_size(minimum)}"
            if maximum is not None:
                allowed = f"between {_human_size(minimum)} and {_human_size(maximum)}"
            raise _Invalid(f"must be {allowed}; got {_show(value)}")
        return number

    return parse


def _mode(value: Any, warnings: list[str]) -> int:
    """A permission mode: YAML 0644 (already octal), or a string "0644", "644", "0o644"."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
        digits = str(value)
        if value > 0o777 and set(digits) <= set("01234567"):
            warnings.append(
                f'{value} is decimal (= {value:04o} octal); write 0{digits} or "{digits}" '
                "for the octal mode"
            )
    elif isinstance(value, str) and re.fullmatch(r"(0o|0O)?[0-7]{1,5}", value.strip()):
        number = int(value.strip().lower().removeprefix("0o"), 8)
    else:
        raise _Invalid(f'must be an octal mode such as 0644 or "0644"; got {_show(value)}')
    if not 0 <= number <= 0o7777:
        raise _Invalid(f"must be an octal mode between 0000 and 07777; got {_show(value)}")
    return number


def _cf_duration(label: str, error: str) -> Parser:
    """2.8 cloudfront durations: a string for ParseDuration; other types ignored (default)."""

    def parse(value: Any, warnings: list[str]) -> float | _Unset:
        if isinstance(value, datetime.timedelta):
            return value.total_seconds()
        if not isinstance(value, str):
            warnings.append(
                f"{_show(value)} is not a duration string: the registry ignores it and uses the "
                f'default, and so does this daemon (write e.g. "{label}")'
            )
            return _UNSET
        try:
            return _duration_ns(value) / 1e9
        except _Invalid as exc:
            raise _Invalid(f"{error}: {exc}") from None

    return parse


def _aws_regions(value: Any, _warnings: list[str]) -> tuple[str, ...]:
    if not isinstance(value, str):
        raise _Invalid("awsRegion must be a comma separated string of valid aws regions")
    return tuple(part.strip().lower() for part in value.split(",") if part.strip())


def _ip_filter(value: Any, _warnings: list[str]) -> str:
    choice = value.strip().lower() if isinstance(value, str) else None
    if choice not in ("", *IP_FILTERS):
        raise _Invalid(
            "ipfilteredby only allows a string the following value: none|aws|awsregion; "
            f"got {_show(value)}"
        )
    return choice or "none"


def _baseurl(value: Any, _warnings: list[str]) -> str:
    if not isinstance(value, str):
        raise _Invalid("baseurl must be a string")
    url = value if "://" in value else "https://" + value
    url = url if url.endswith("/") else url + "/"
    problem = _baseurl_problem(url)
    if problem:
        raise _Invalid(f"invalid baseurl: {_show(value)}: {problem}")
    return url


def _baseurl_problem(url: str) -> str:
    if not url.isascii() or any(ch.isspace() or ord(ch) < 0x20 for ch in url):
        return "contains whitespace, control or non-ASCII characters"
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port
    except ValueError as exc:
        return str(exc)
    if parts.scheme.lower() not in ("http", "https"):
        return f"scheme {parts.scheme!r} is not http or https"
    if not parts.hostname:
        return "no host"
    if parts.query or parts.fragment:
        return "a query or fragment cannot precede the key in a signed URL"
    return ""


def _private_key(value: Any, _warnings: list[str]) -> str:
    """The PEM path; the file must hold an unencrypted RSA key (PKCS#1 or PKCS#8)."""
    if not isinstance(value, str):
        raise _Invalid("privatekey must be a string")
    try:
        with open(value, "rb") as f:
            pem = f.read()
    except OSError as exc:
        raise _Invalid(f"failed to read privatekey file: {value}: {exc.strerror or exc}") from None
    reason = _rsa_key_problem(pem)
    if reason:
        raise _Invalid(f"failed to decode private key as an rsa private key: {value}: {reason}")
    return value


def _rsa_key_problem(pem: bytes) -> str:
    """Why `pem` is not a usable RSA key, or "". Never includes any of the key's bytes."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except TypeError:
        return "the key is encrypted; store it unencrypted (chmod 600)"
    except (ValueError, UnsupportedAlgorithm):
        return "not a PEM private key (need BEGIN RSA PRIVATE KEY or BEGIN PRIVATE KEY)"
    if not isinstance(key, rsa.RSAPrivateKey):
        return f"the key is not RSA ({type(key).__name__.lstrip('_')})"
    return ""


def _key_pair_id(value: Any, warnings: list[str]) -> str:
    text: str = _string("keypairid")(value, warnings)
    if text and not _KEY_PAIR_ID.fullmatch(text):
        raise _Invalid(f"invalid keypairid {_show(text)}: allowed characters: A-Z a-z 0-9 _ . ~ -")
    return text


def _ca_bundle(value: Any, _warnings: list[str]) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"cabundle must be a string (a file path); got {_show(value)}")
    if not value:
        return value
    try:
        with open(value, "rb") as f:
            x509.load_pem_x509_certificates(f.read())
    except OSError as exc:
        raise _Invalid(f"failed to read cabundle file: {value}: {exc.strerror or exc}") from None
    except ValueError:
        raise _Invalid(f"cabundle file {value} holds no PEM certificate") from None
    return value


# --------------------------------------------------------------------------------------------
# The settings tables


@dataclass(frozen=True)
class Setting:
    """One setting, declared once: parsing, the allowed values and the help for the docs."""

    name: str
    parse: Parser
    allowed: str
    help: str
    #: how an environment value is read: "yaml" (a YAML scalar, as the registry does),
    #: "string" (YAML, but text YAML would turn into a non-string stays text), "verbatim"
    env: str = "yaml"
    #: the error text when it is missing or empty; "" = optional
    required: str = ""
    #: how the docs show the default
    show: Callable[[Any], str] = repr


def _human_size(n: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B" if n else "0"


def _doc_size(n: int) -> str:
    return f"`{n}` ({_human_size(n)})" if n >= KiB else f"`{n}`"


def _doc_seconds(s: float) -> str:
    if s >= 3600 and s % 3600 == 0:
        return f"`{int(s // 3600)}h`"
    if s >= 60 and s % 60 == 0:
        return f"`{int(s // 60)}m`"
    return f"`{s:g}s`"


def _doc_plain(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, tuple):
        return '`""`' if not value else f"`{','.join(value)}`"
    return f"`{value}`" if value != "" else '`""`'


def _doc_mode(value: int) -> str:
    return f"`{value:04o}`"


_REGION_TEXT = "no region parameter provided"
S3_SETTINGS: tuple[Setting, ...] = (
    Setting("accesskey", _string("accesskey", loose=True), "string",
            "AWS access key id. With `secretkey`, static credentials; when either is empty the "
            "default AWS credential chain (environment, shared profile, instance role) is used.",
            env="verbatim", show=_doc_plain),
    Setting("secretkey", _string("secretkey", secret=True), "string",
            "AWS secret access key. Never logged or shown.", env="verbatim", show=_doc_plain),
    Setting("regionendpoint", _endpoint, "`http(s)://host[:port][/path]` or `host[:port]`",
            "Endpoint of an S3-compatible store. Without a scheme, `https://` (or `http://` when "
            "`secure` is false) is added. As in registry 2.8, setting it implies path-style "
            "addressing and skips the region check.", env="string", show=_doc_plain),
    Setting("region", _string("region", loose=True),
            "an AWS region; any string with `regionendpoint`",
            "AWS region of the bucket. Required unless `regionendpoint` is set; without "
            "`regionendpoint` it must be a region known to botocore.",
            env="string", show=_doc_plain),
    Setting("bucket", _string("bucket", loose=True), "string", "Bucket name.", env="string",
            required="no bucket parameter provided", show=_doc_plain),
    Setting("encrypt", _go_bool("encrypt"), "boolean",
            "Server-side encryption: `AES256`, or `aws:kms` when `keyid` is set.", show=_doc_plain),
    Setting("keyid", _string("keyid", loose=True), "string (requires `encrypt: true`)",
            "KMS key id for `aws:kms` encryption. Refused when `encrypt` is false (the registry "
            "would send the key id without encryption, which S3 rejects).",
            env="string", show=_doc_plain),
    Setting("secure", _go_bool("secure"), "boolean",
            "Use https: for a `regionendpoint` without a scheme (an explicit scheme wins) and, "
            "without `regionendpoint`, for AWS itself.", show=_doc_plain),
    Setting("skipverify", _go_bool("skipVerify"), "boolean",
            "Skip TLS certificate verification. Insecure; for test endpoints only.",
            show=_doc_plain),
    Setting("v4auth", _go_bool("v4auth"), "boolean",
            "Signature V4. `false` (V2 signing) is refused on AWS, i.e. when `regionendpoint` "
            "is empty or contains `s3.amazonaws.com`.", show=_doc_plain),
    Setting("chunksize", _go_int("chunksize", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
            "integer 5242880 .. 5368709120",
            "Multipart upload part size. Parts grow past it when an object would need more than "
            "10,000 parts.", show=_doc_size),
    Setting("multipartcopychunksize",
            _go_int("multipartcopychunksize", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
            "integer 5242880 .. 5368709120",
            "Part size of a server-side multipart copy (rename of a large object).",
            show=_doc_size),
    Setting("multipartcopymaxconcurrency",
            _go_int("multipartcopymaxconcurrency", 1, INT64_MAX), "integer 1 .. 2^63-1",
            "Parallel UploadPartCopy requests per copy (also bounded by `mount.max_connections`).",
            show=_doc_plain),
    Setting("multipartcopythresholdsize",
            _go_int("multipartcopythresholdsize", 0, MAX_CHUNK_SIZE), "integer 0 .. 5368709120",
            "Objects up to this size are copied with one CopyObject, larger ones part by part.",
            show=_doc_size),
    Setting("rootdirectory", _string("rootdirectory", loose=True), "string",
            "Key prefix the mount shows. Normalised like the driver's `s3Path`: leading and "
            "trailing slashes dropped, interior `//` kept.", env="string", show=_doc_plain),
    Setting("storageclass", _storage_class, "`" + "`, `".join(STORAGE_CLASSES) + "` "
            "(case-insensitive)",
            "Storage class of every object written. `NONE` sends no storage-class header "
            "(for S3-compatible stores).", env="string", show=_doc_plain),
    Setting("objectacl", _object_acl, "`" + "`, `".join(OBJECT_ACLS) + "` (case-sensitive)",
            "Canned ACL sent with every object written.", env="string", show=_doc_plain),
    Setting("useragent", _string("useragent", loose=True), "string",
            "Appended to the User-Agent of every S3 request.", env="string", show=_doc_plain),
    Setting("forcepathstyle", _go_bool("forcepathstyle"), "boolean",
            "Path-style addressing without `regionendpoint` (registry v3's parameter).",
            show=_doc_plain),
)  # fmt: skip

#: storage.s3 keys the registry knows but a mount does not use: key -> why it is ignored
_S3_IGNORED = {
    "sessiontoken": "not a parameter of the registry's S3 driver (use AWS_SESSION_TOKEN)",
    "credentialsconfigpath": "not a parameter of the registry's S3 driver "
    "(use AWS_SHARED_CREDENTIALS_FILE)",
    "accelerate": "a registry v3 parameter this daemon does not support",
    "usedualstack": "a registry v3 parameter this daemon does not support",
    "usefipsendpoint": "a registry v3 parameter this daemon does not support",
    "loglevel": "a registry v3 parameter; use mount.log_level",
    "redirectendpoint": "a registry v3 parameter about client redirects; a mount has none",
}

CLOUDFRONT_SETTINGS: tuple[Setting, ...] = (
    Setting("baseurl", _baseurl, "URL; `https://` added when there is no scheme",
            "CloudFront distribution URL. A trailing `/` is added. The blob URL is `baseurl` "
            "plus the full key (or the key relative to `rootdirectory`, see `rootrelative`).",
            required="no baseurl provided", show=_doc_plain),
    Setting("privatekey", _private_key, "path of an unencrypted PEM RSA key (PKCS#1 or PKCS#8)",
            "Key that signs the URLs. Read and checked at start; a key file readable by group or "
            "others gives a warning.", required="no privatekey provided", show=_doc_plain),
    Setting("keypairid", _key_pair_id, "string of `A-Z a-z 0-9 _ . ~ -`",
            "CloudFront public key id (or key pair id).", required="no keypairid provided",
            show=_doc_plain),
    Setting("duration", _cf_duration("20m", "invalid duration"), "Go duration >= 1s",
            "Lifetime of a signed URL. A YAML number is ignored with a warning (the registry "
            "ignores it too) and the default is used.", show=_doc_seconds),
    Setting("ipfilteredby", _ip_filter, "`none`, `aws`, `awsregion` (case-insensitive)",
            "The registry's client-IP filter. A mount has no client IP: accepted, warned about, "
            "ignored.", show=_doc_plain),
    Setting("awsregion", _aws_regions, "comma-separated regions",
            "Regions for `ipfilteredby: awsregion` (required then). Ignored by a mount.",
            show=_doc_plain),
    Setting("updatefrequency", _cf_duration("12h", "invalid updatefrequency string"),
            "Go duration",
            "Refresh period of the AWS IP ranges; also read from the 2.8 spelling "
            "`updatefrenquency`. Ignored by a mount.", show=_doc_seconds),
    Setting("iprangesurl", _string("iprangesurl"), "URL",
            "Where the AWS IP ranges come from. Ignored by a mount.", show=_doc_plain),
    Setting("rootrelative", _go_bool("rootrelative"), "boolean",
            "This daemon's option: the URL path is the key relative to `rootdirectory`, for a "
            "distribution whose Origin Path is the root directory. Default as the registry: "
            "`baseurl` + full key.", show=_doc_plain),
    Setting("cabundle", _ca_bundle, "path of a PEM CA bundle",
            "This daemon's option: CA certificates for HTTPS to CloudFront; empty means the "
            "system trust store.", show=_doc_plain),
)  # fmt: skip

_TTL = _seconds(0.0)
_POSITIVE = _seconds(0.0, inclusive=False)
MOUNT_SETTINGS: tuple[Setting, ...] = (
    Setting("metadata_ttl", _TTL, "duration >= 0",
            "How stale another writer's change may look (attributes, directory listings).",
            show=_doc_seconds),
    Setting("immutable_ttl", _TTL, "duration >= 0",
            "Attribute cache time of content-addressed paths (`blobs/**`, "
            "`_manifests/revisions/**`), which never change.", show=_doc_seconds),
    Setting("negative_ttl", _TTL, "duration >= 0", "How long \"does not exist\" is remembered.",
            show=_doc_seconds),
    Setting("memory_budget", _size(0), "size >= 4 x `storage.s3.chunksize`",
            "Memory for write buffers and read-ahead, mount-wide. A writer that reaches it waits.",
            show=_doc_size),
    Setting("max_connections", _int_range(1, 1024), "integer 1 .. 1024",
            "S3 connection pool size, and the number of worker threads issuing requests.",
            show=_doc_plain),
    Setting("read_ahead", _size(MiB), "size >= 1 MiB",
            "Largest read-ahead window of one sequentially read file.", show=_doc_size),
    Setting("small_file_size", _size(0, 64 * MiB), "size 0 .. 64 MiB",
            "Files up to this size are fetched whole with one GET.", show=_doc_size),
    Setting("spool_dir", _string("spool_dir"), "existing writable directory",
            "Local spool for non-sequential writes; empty means the system temporary directory.",
            env="string", show=_doc_plain),
    Setting("spool_limit", _size(0), "size >= 0",
            "Bytes of local spool, mount-wide; 0 disables spooling.",
            show=_doc_size),
    Setting("uid", _int_range(-1, 2**32 - 2), "integer -1 .. 4294967294",
            "Owner of every file; -1 means the daemon's effective uid.", show=_doc_plain),
    Setting("gid", _int_range(-1, 2**32 - 2), "integer -1 .. 4294967294",
            "Group of every file; -1 means the daemon's effective gid.", show=_doc_plain),
    Setting("file_mode", _mode, "octal mode 0000 .. 07777", "Permission bits of files.",
            env="string", show=_doc_mode),
    Setting("dir_mode", _mode, "octal mode 0000 .. 07777", "Permission bits of directories.",
            env="string", show=_doc_mode),
    Setting("allow_other", _go_bool("allow_other"), "boolean",
            "Let other users access the mount (FUSE `allow_other`; needs `user_allow_other` in "
            "/etc/fuse.conf unless root).", show=_doc_plain),
    Setting("log_level", _choice("log_level", LOG_LEVELS), "`" + "`, `".join(LOG_LEVELS) + "`",
            "Log level (case-insensitive).", env="string", show=_doc_plain),
    Setting("log_file", _string("log_file"), "path",
            "Log file; empty means stderr in the foreground, syslog in the background.",
            env="string", show=_doc_plain),
    Setting("janitor", _go_bool("janitor"), "boolean",
            "Abort stale multipart uploads under `rootdirectory`.", show=_doc_plain),
    Setting("janitor_age", _POSITIVE, "duration > 0",
            "Multipart uploads older than this are aborted (the registry's upload purging age).",
            show=_doc_seconds),
    Setting("janitor_interval", _POSITIVE, "duration > 0", "How often the janitor runs.",
            show=_doc_seconds),
    Setting("retry_attempts", _int_range(1, 100), "integer 1 .. 100",
            "Attempts per S3 request (throttling, 5xx, timeouts, connection errors).",
            show=_doc_plain),
    Setting("retry_time", _POSITIVE, "duration > 0",
            "Bound on the total time spent retrying one request.", show=_doc_seconds),
    Setting("connect_timeout", _POSITIVE, "duration > 0", "TCP/TLS connect timeout.",
            show=_doc_seconds),
    Setting("read_timeout", _POSITIVE, "duration > 0",
            "Timeout waiting for response bytes from S3.", show=_doc_seconds),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Loading


def _fail(where: str, message: str) -> ConfigError:
    return ConfigError(_one_line(f"{where}: {message}"))


@dataclass(frozen=True)
class _Raw:
    """A value as found, and where: `where` prefixes every message about it."""

    value: Any
    where: str
    env_text: str | None = None  # set when it came from an environment variable

    def for_setting(self, setting: Setting) -> Any:
        """The value to parse. Environment text is read as a YAML scalar, as the registry does;
        string settings keep the text when YAML would make it something else ("0644", "on")."""
        if self.env_text is None:
            return self.value
        if setting.env == "verbatim":
            return self.env_text
        try:
            value = yaml.safe_load(self.env_text)
        except yaml.YAMLError:
            value = _YAML_ERROR
        if setting.env == "string" and value is not None and not isinstance(value, str):
            return self.env_text
        if value is _YAML_ERROR:
            raise _Invalid(f"{_show(self.env_text)} is not a YAML scalar")
        return value


_YAML_ERROR = object()


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys, so a repeated setting cannot silently win."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _value in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark,
                )  # fmt: skip
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_config(
    path: str | None, environ: Mapping[str, str], known_regions: Collection[str] | None = None
) -> Config:
    """Read `path` (None: environment only) and validate it; ConfigError with one line."""
    if path is None:
        return parse_config(None, environ, known_regions, source=ENV_SOURCE)
    return parse_config(_read_yaml(path), environ, known_regions, source=path)


def _read_yaml(path: str) -> Any:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise _fail(path, f"cannot read configuration file: {exc.strerror or exc}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        # problem and context only: str(exc) would quote the offending line, maybe a secret
        mark = exc.problem_mark or exc.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else path
        what = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise _fail(where, f"invalid YAML: {what}") from None
    except yaml.YAMLError as exc:
        raise _fail(path, f"invalid YAML: {exc}") from None


def parse_config(
    data: Mapping[str, Any] | None,
    environ: Mapping[str, str],
    known_regions: Collection[str] | None = None,
    source: str = "<config>",
) -> Config:
    """Validate parsed YAML plus environment overrides into a Config.

    Raises ConfigError on the first problem; what is ignored becomes `Config.warnings`.
    """
    warnings: list[str] = []
    top = _mapping(data, source, "the top level")
    storage = _mapping(top.get("storage"), source, "storage")
    s3 = _parse_s3(storage, environ, known_regions, source, warnings)
    mount = _parse_mount(top.get("mount"), environ, s3, source, warnings)
    cloudfront = _parse_middleware(top.get("middleware"), source, warnings)
    return Config(s3=s3, mount=mount, cloudfront=cloudfront, warnings=tuple(warnings))


def _mapping(value: Any, source: str, what: str) -> Mapping[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _fail(f"{source}: {what}", f"must be a mapping; got {_show(value)}")
    return value


def _file_raws(section: Mapping[Any, Any], where: str) -> dict[str, _Raw]:
    return {str(key): _Raw(value, f"{where}.{key}") for key, value in section.items()}


def _env_raws(environ: Mapping[str, str], prefixes: Iterable[str]) -> dict[str, _Raw]:
    """`<PREFIX><NAME>` variables by lower-case name; two prefixes setting one name is an error."""
    raws: dict[str, _Raw] = {}
    for var in sorted(environ):
        prefix = next((p for p in prefixes if var.startswith(p) and len(var) > len(p)), None)
        if prefix is None:
            continue
        name = var[len(prefix) :].lower()
        if name in raws:
            raise _fail(raws[name].where, f"and {var} both set {name}; use one")
        raws[name] = _Raw(None, f"environment variable {var}", env_text=environ[var])
    return raws


def _parse_table(
    raws: Mapping[str, _Raw],
    table: Iterable[Setting],
    where: Callable[[str], str],
    warnings: list[str],
) -> dict[str, Any]:
    """Parse every declared setting, in table order (the registry's order of checks)."""
    values: dict[str, Any] = {}
    for setting in table:
        raw = raws.get(setting.name)
        if raw is None:
            if setting.required:
                raise _fail(where(setting.name), setting.required)
            continue
        notes: list[str] = []
        try:
            value = raw.for_setting(setting)
            if setting.required and value in (None, ""):
                raise _Invalid(setting.required)
            parsed = _UNSET if value is None else setting.parse(value, notes)
        except _Invalid as exc:
            raise _fail(raw.where, str(exc)) from None
        warnings.extend(_one_line(f"{raw.where}: {note}") for note in notes)
        if parsed is not _UNSET:
            values[setting.name] = parsed
    return values


def _where_in(raws: Mapping[str, _Raw], prefix: str) -> Callable[[str], str]:
    """Where a setting came from, or where it would go in the file when it was not given."""
    return lambda key: raws[key].where if key in raws else f"{prefix}.{key}"


# --- storage.s3


def _parse_s3(
    storage: Mapping[Any, Any],
    environ: Mapping[str, str],
    known_regions: Collection[str] | None,
    source: str,
    warnings: list[str],
) -> S3Config:
    if "s3" in storage and "s3aws" in storage:
        raise _fail(f"{source}: storage", "both s3 and s3aws are given; use one")
    name = "s3aws" if "s3aws" in storage else "s3"
    section = _mapping(storage.get(name), source, f"storage.{name}")
    prefix = f"{source}: storage.{name}"
    raws = _file_raws(section, prefix) | _env_raws(environ, S3_ENV_PREFIXES)
    _warn_unknown_s3(raws, warnings)
    where = _where_in(raws, prefix)
    s3 = S3Config(**_parse_table(raws, S3_SETTINGS, where, warnings))
    _check_s3(s3, where, known_regions)
    return s3


def _warn_unknown_s3(raws: Mapping[str, _Raw], warnings: list[str]) -> None:
    known = {setting.name for setting in S3_SETTINGS}
    for key, raw in raws.items():
        if key in known:
            continue
        why = _S3_IGNORED.get(key, "not a parameter of the registry's S3 driver")
        if key.lower() in known:
            why = f"parameter names are lower-case ({key.lower()}): the registry ignores {key}"
        warnings.append(_one_line(f"{raw.where}: {why}; ignored"))


def _check_s3(
    s3: S3Config,
    where: Callable[[str], str],
    known_regions: Collection[str] | None,
) -> None:
    """The driver's cross-parameter rules (FromParameters, then New), in its order."""
    if not s3.regionendpoint and not s3.region:
        raise _fail(where("region"), f"{_REGION_TEXT} (required unless regionendpoint is set)")
    if not s3.regionendpoint and known_regions is not None and s3.region not in known_regions:
        raise _fail(
            where("region"),
            f"invalid region provided: {s3.region} (set regionendpoint for a store outside AWS)",
        )
    if not s3.v4auth and (not s3.regionendpoint or "s3.amazonaws.com" in s3.regionendpoint):
        raise _fail(
            where("v4auth"),
            "on Amazon S3 this storage driver can only be used with v4 authentication "
            "(v4auth: false is allowed only with a non-AWS regionendpoint)",
        )
    if s3.keyid and not s3.encrypt:
        raise _fail(
            where("keyid"),
            f"keyid {_show(s3.keyid)} is set but encrypt is false; the registry would send the "
            "KMS key id without server-side encryption, which S3 rejects: set encrypt: true or "
            "remove keyid",
        )


# --- mount


def _parse_mount(
    value: Any, environ: Mapping[str, str], s3: S3Config, source: str, warnings: list[str]
) -> MountConfig:
    section = _mapping(value, source, "mount")
    raws = _file_raws(section, f"{source}: mount") | _env_raws(environ, [MOUNT_ENV_PREFIX])
    known = [setting.name for setting in MOUNT_SETTINGS]
    for key, raw in raws.items():
        if key not in known:
            raise _fail(raw.where, f"unknown mount setting {key!r}; known: {', '.join(known)}")
    where = _where_in(raws, f"{source}: mount")
    mount = MountConfig(**_parse_table(raws, MOUNT_SETTINGS, where, warnings))
    _check_mount(mount, s3, where)
    return mount


def _check_mount(mount: MountConfig, s3: S3Config, where: Callable[[str], str]) -> None:
    if mount.memory_budget < 4 * s3.chunksize:
        raise _fail(
            where("memory_budget"),
            f"{mount.memory_budget} is less than 4 x storage.s3.chunksize ({s3.chunksize}) = "
            f"{4 * s3.chunksize}; raise mount.memory_budget or lower storage.s3.chunksize",
        )
    if mount.spool_dir and mount.spool_limit > 0:
        if not os.path.isdir(mount.spool_dir):
            raise _fail(where("spool_dir"), f"{mount.spool_dir} is not a directory")
        if not os.access(mount.spool_dir, os.W_OK | os.X_OK):
            raise _fail(where("spool_dir"), f"{mount.spool_dir} is not writable")


def spool_directory(mount: MountConfig) -> str:
    """The spool directory to use: `spool_dir`, or the system temporary directory."""
    return mount.spool_dir or tempfile.gettempdir()


# --- middleware.storage: cloudfront


def _parse_middleware(value: Any, source: str, warnings: list[str]) -> CloudFrontConfig | None:
    entries = _mapping(value, source, "middleware").get("storage")
    if entries is None:
        return None
    if not isinstance(entries, list):
        raise _fail(
            f"{source}: middleware.storage",
            f"must be a list of {{name, options}} entries; got {_show(entries)}",
        )
    found: CloudFrontConfig | None = None
    for index, entry in enumerate(entries):
        path = f"middleware.storage[{index}]"
        name = _mapping(entry, source, path).get("name")
        if not isinstance(name, str):
            raise _fail(f"{source}: {path}.name", f"must be a string; got {_show(name)}")
        if name != "cloudfront":
            warnings.append(f"{source}: {path}: storage middleware {name!r} is ignored by a mount")
            continue
        if found is not None:
            raise _fail(f"{source}: {path}", "more than one cloudfront middleware; use one")
        found = _parse_cloudfront(entry.get("options"), source, f"{path}.options", warnings)
    return found


def _parse_cloudfront(
    options: Any, source: str, path: str, warnings: list[str]
) -> CloudFrontConfig:
    prefix = f"{source}: {path}"
    raws = _file_raws(_mapping(options, source, path), prefix)
    if "updatefrenquency" in raws:
        if "updatefrequency" in raws:
            raise _fail(prefix, "both updatefrequency and updatefrenquency are given; use one")
        raws["updatefrequency"] = raws.pop("updatefrenquency")
        warnings.append(
            f"{prefix}.updatefrenquency: read as updatefrequency (registry 2.8's spelling; 2.8 "
            "wrongly applied its value to duration, this daemon does not)"
        )
    known = {setting.name for setting in CLOUDFRONT_SETTINGS}
    warnings.extend(
        _one_line(f"{raw.where}: not an option of the cloudfront middleware; ignored")
        for key, raw in raws.items()
        if key not in known
    )
    where = _where_in(raws, prefix)
    cloudfront = CloudFrontConfig(**_parse_table(raws, CLOUDFRONT_SETTINGS, where, warnings))
    if cloudfront.duration < 1:
        raise _fail(
            where("duration"),
            f"invalid duration: {cloudfront.duration:g}s; a signed URL must live at least 1s",
        )
    if cloudfront.ipfilteredby == "awsregion" and not cloudfront.awsregion:
        raise _fail(where("awsregion"), "awsRegion is not defined (ipfilteredby is awsregion)")
    warnings.extend(cloudfront.warnings())
    return cloudfront


# --------------------------------------------------------------------------------------------
# Documentation


def _defaults(cls: type[Any]) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _reference_table(table: Iterable[Setting], defaults: Mapping[str, Any]) -> list[str]:
    lines = ["| Setting | Default | Allowed | Meaning |", "|---|---|---|---|"]
    for setting in table:
        default = defaults[setting.name]
        required = default is dataclasses.MISSING or setting.required
        shown = "required" if required else setting.show(default)
        lines.append(f"| `{setting.name}` | {shown} | {setting.allowed} | {setting.help} |")
    return lines


def render_reference() -> str:
    """The settings tables of doc/CONFIGURATION.md, generated from the tables above."""
    parts = [
        "### `storage.s3` (environment: `REGISTRY_STORAGE_S3_<PARAM>`)", "",
        *_reference_table(S3_SETTINGS, _defaults(S3Config)), "",
        "### `middleware.storage[].options` of `name: cloudfront`", "",
        *_reference_table(CLOUDFRONT_SETTINGS, _defaults(CloudFrontConfig)), "",
        "### `mount` (environment: `REGISTRY_MOUNT_<SETTING>`)", "",
        *_reference_table(MOUNT_SETTINGS, _defaults(MountConfig)),
    ]  # fmt: skip
    return "\n".join(parts) + "\n"
