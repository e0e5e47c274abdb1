"""Values as the registry reads them: Go's integer and duration parsing, sizes, and the
one-line formatting of values in error messages (secrets are never passed in).

The registry is written in Go; an operator's file must mean the same here as there, so
`strconv.ParseInt(v, 0, 64)` and `time.ParseDuration` are reimplemented with their error
texts, not approximated with Python's own parsers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

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
#: registry v3's storage.s3 loglevel values (aws-sdk-go v1 LogLevelType), as getS3LogLevelFromParam
S3_LOG_LEVELS = (
    "off", "debug", "debugwithsigning", "debugwithhttpbody", "debugwithrequestretries",
    "debugwithrequesterrors", "debugwitheventstreambody",
)  # fmt: skip
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


def _human_size(n: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n} B" if n else "0"


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
