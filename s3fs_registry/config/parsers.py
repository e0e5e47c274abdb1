"""Parsers of single values: factories returning `Parser` closures.

Each takes the raw YAML (or environment) value and a list for warnings, and returns the
typed value, `UNSET` (keep the default, as the registry does for some wrong types), or
raises `Invalid` with the registry's own error text where it has one.
"""

from __future__ import annotations

import datetime
import grp
import ipaddress
import math
import pwd
import re
import urllib.parse
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from s3fs_registry.config.values import (
    _GO_BOOLS,
    _GO_FALSE,
    _GO_TRUE,
    _KEY_PAIR_ID,
    _UNSET,
    IP_FILTERS,
    OBJECT_ACLS,
    S3_LOG_LEVELS,
    STORAGE_CLASSES,
    Parser,
    _duration_ns,
    _go_parse_int,
    _human_size,
    _Invalid,
    _raw,
    _show,
    _size_bytes,
    _Unset,
)


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


def _s3_log_level(value: Any, warnings: list[str]) -> str:
    """v3.1 getS3LogLevelFromParam: a string, case-insensitive; YAML false ("off" unquoted),
    another type or an unknown string means off. The registry says nothing; this warns."""
    if value is False:
        return "off"
    if isinstance(value, str) and value.lower() in S3_LOG_LEVELS:
        return value.lower()
    warnings.append(
        f"{_show(value)} is not one of {', '.join(S3_LOG_LEVELS)}: the registry treats it as "
        "off, and so does this daemon"
    )
    return "off"


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


def _owner(kind: str) -> Parser:
    """A uid (`kind` "user") or gid ("group"): an integer -1 .. 2^32-2, or a name of this
    host, resolved once at start (Debian's registry runs as the user `docker-registry`)."""
    numbers = _int_range(-1, 2**32 - 2)

    def parse(value: Any, warnings: list[str]) -> int:
        if not isinstance(value, str) or re.fullmatch(r"-?[0-9]+", value):
            return int(numbers(value, warnings))
        try:
            if kind == "user":
                return pwd.getpwnam(value).pw_uid
            return grp.getgrnam(value).gr_gid
        except KeyError:
            raise _Invalid(
                f"no {kind} named {_show(value)} on this host (getent "
                f"{'passwd' if kind == 'user' else 'group'}); give a name or a number -1 .. "
                f"{2**32 - 2}"
            ) from None

    return parse


def _auto_bool(label: str) -> Parser:
    """A 2.8 boolean, or `auto` (None): decided at start from other settings."""
    boolean = _go_bool(label)

    def parse(value: Any, warnings: list[str]) -> bool | None:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return None
        try:
            return bool(boolean(value, warnings))
        except _Invalid as exc:
            raise _Invalid(f"{exc}, or auto") from None

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


_LISTEN_USAGE = (
    "PORT, :PORT (both 127.0.0.1), IPv4:PORT or [IPv6]:PORT, PORT 1..65535; "
    "0.0.0.0:PORT or [::]:PORT for every interface"
)


def _listen_address(value: Any, _warnings: list[str]) -> str:
    """A TCP address to listen on, normalised to `host:port`; "" is off. Without a host it
    is the loopback address: all interfaces only when the operator writes them."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise _Invalid(f"must be {_LISTEN_USAGE}; got {_show(value)}")
    text = value.strip()
    if not text:
        return ""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = "127.0.0.1" if host in ("", "localhost") else host
    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
    except ValueError:
        address = None
    bracketed = host.startswith("[") and host.endswith("]")
    if (
        address is None
        or bracketed != (address.version == 6)
        or not re.fullmatch(r"[0-9]{1,5}", port)
        or not 1 <= int(port) <= 65535
    ):
        raise _Invalid(f"must be {_LISTEN_USAGE}; got {_show(value)}")
    return f"[{address}]:{int(port)}" if address.version == 6 else f"{address}:{int(port)}"
