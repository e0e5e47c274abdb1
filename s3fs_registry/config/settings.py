"""The settings tables: every setting declared once (name, parser, allowed values, help).

`render_reference()` turns the tables and the dataclass defaults into the tables of
doc/CONFIGURATION.md; a test keeps that file current.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from s3fs_registry.config.model import CloudFrontConfig, MountConfig, S3Config
from s3fs_registry.config.parsers import (
    _auto_bool,
    _aws_regions,
    _baseurl,
    _ca_bundle,
    _cf_duration,
    _choice,
    _endpoint,
    _go_bool,
    _go_int,
    _int_range,
    _ip_filter,
    _key_pair_id,
    _listen_address,
    _mode,
    _object_acl,
    _owner,
    _private_key,
    _s3_log_level,
    _seconds,
    _size,
    _storage_class,
    _string,
)
from s3fs_registry.config.values import (
    INT64_MAX,
    LOG_LEVELS,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    OBJECT_ACLS,
    S3_LOG_LEVELS,
    STORAGE_CLASSES,
    KiB,
    MiB,
    Parser,
    _human_size,
)


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
    #: storage.s3: the registry release that introduced it ("2.x": the 2.x line, in 2.8)
    since: str = ""


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


def _doc_auto(value: bool | None) -> str:
    return "`auto`" if value is None else _doc_plain(value)


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
            show=_doc_plain, since="3.0"),
    Setting("usedualstack", _go_bool("usedualstack"), "boolean",
            "AWS dual-stack (IPv4 and IPv6) endpoints (`s3.dualstack.<region>.amazonaws.com`). "
            "No effect with `regionendpoint`, as in the registry.", show=_doc_plain,
            since="3.0"),
    Setting("accelerate", _go_bool("accelerate"), "boolean",
            "S3 Transfer Acceleration (`<bucket>.s3-accelerate.amazonaws.com`). Refused with "
            "`regionendpoint`, with `usefipsendpoint` and for a bucket name with dots, which "
            "acceleration cannot serve; `forcepathstyle` is ignored, as in the registry.",
            show=_doc_plain, since="3.0"),
    Setting("usefipsendpoint", _go_bool("usefipsendpoint"), "boolean",
            "AWS FIPS endpoints (`s3-fips.<region>.amazonaws.com`). No effect with "
            "`regionendpoint`, as in the registry.", show=_doc_plain, since="3.1"),
    Setting("loglevel", _s3_log_level, "`" + "`, `".join(S3_LOG_LEVELS) + "` "
            "(case-insensitive; anything else is `off`)",
            "Logging of S3 requests, whatever `mount.log_level`: `debug` and the other values "
            "log one line per request attempt (operation, key, size, status, latency, "
            "outcome); `debugwithsigning` adds what was signed (signed headers, payload hash; "
            "never the signature or a token); `debugwithhttpbody` adds the request and "
            "response headers and the XML bodies (object data only as a byte count).",
            env="string", show=_doc_plain, since="3.0"),
)  # fmt: skip

#: storage.s3 keys the registry knows but a mount does not use: key -> why it is ignored
_S3_IGNORED = {
    "sessiontoken": "not a parameter of the registry's S3 driver (v3 has the field but never "
    "reads it): session credentials come from the default AWS credential chain "
    "(AWS_SESSION_TOKEN, a profile, an instance or task role)",
    "credentialsconfigpath": "not a parameter of the registry's S3 driver "
    "(use AWS_SHARED_CREDENTIALS_FILE)",
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
            "Attribute cache time of blobs (`blobs/**`: named by their content, removed "
            "only by garbage collection).", show=_doc_seconds),
    Setting("negative_ttl", _TTL, "duration >= 0", "How long \"does not exist\" is remembered.",
            show=_doc_seconds),
    Setting("memory_budget", _size(0), "size >= 4 x `storage.s3.chunksize`",
            "Memory for write buffers and read-ahead, mount-wide. A writer that reaches it waits.",
            show=_doc_size),
    Setting("max_connections", _int_range(1, 1024), "integer 1 .. 1024",
            "S3 connection pool size, and the number of worker threads issuing requests.",
            show=_doc_plain),
    Setting("read_ahead", _size(MiB), "size >= 1 MiB",
            "Largest read-ahead window of one sequentially read file: the bytes fetched ahead "
            "of it, as parallel ranged GETs (as many as pay, at most 3/4 of "
            "`max_connections`/2), within half the memory budget.", show=_doc_size),
    Setting("small_file_size", _size(0, 64 * MiB), "size 0 .. 64 MiB",
            "Files up to this size are fetched whole with one GET.", show=_doc_size),
    Setting("spool_dir", _string("spool_dir"), "existing writable directory",
            "Local spool for non-sequential writes; empty means the system temporary directory.",
            env="string", show=_doc_plain),
    Setting("spool_limit", _size(0), "size >= 0",
            "Bytes of local spool, mount-wide; 0 disables spooling.",
            show=_doc_size),
    Setting("cache_dir", _string("cache_dir"), "existing writable directory; empty is off",
            "Local disk cache of blob data (`blobs/**/data`), kept across restarts and "
            "verified by digest and per-MiB CRC32; each bucket and prefix gets its own "
            "subdirectory. Empty: no cache.", env="string", show=_doc_plain),
    Setting("cache_size", _size(0), "size >= 0",
            "Most disk space the blob cache uses (per mount); least recently used blobs are "
            "evicted. 0: no cache.",
            show=_doc_size),
    Setting("uid", _owner("user"), "user name, or integer -1 .. 4294967294",
            "Owner of every file and directory. -1: the owner of the mount point directory "
            "before mounting, so the user who owns `/var/lib/docker-registry` (Debian's "
            "`docker-registry`, who runs the registry) owns the mount.",
            env="string", show=_doc_plain),
    Setting("gid", _owner("group"), "group name, or integer -1 .. 4294967294",
            "Group of every file and directory. -1: the group of the mount point directory "
            "before mounting.", env="string", show=_doc_plain),
    Setting("file_mode", _mode, "octal mode 0000 .. 07777", "Permission bits of files.",
            env="string", show=_doc_mode),
    Setting("dir_mode", _mode, "octal mode 0000 .. 07777", "Permission bits of directories.",
            env="string", show=_doc_mode),
    Setting("allow_other", _auto_bool("allow_other"), "boolean, or `auto`",
            "Let other users than the daemon's access the mount (FUSE `allow_other`; needs "
            "`user_allow_other` in /etc/fuse.conf unless root); the kernel still checks "
            "`uid`, `gid` and the modes. `auto`: on when the files' owner or group (`uid`, "
            "`gid`) is not the daemon's, who could not reach them otherwise.",
            env="string", show=_doc_auto),
    Setting("log_level", _choice("log_level", LOG_LEVELS), "`" + "`, `".join(LOG_LEVELS) + "`",
            "Log level (case-insensitive).", env="string", show=_doc_plain),
    Setting("log_file", _string("log_file"), "path",
            "Log file, reopened on SIGHUP (logrotate). Empty: stderr in the foreground; in the "
            "background syslog, or without a syslog socket (`/dev/log`, as in containers) "
            "`/var/log/s3fs-registry/<mount point, / as ->.log` (`~/.local/state/s3fs-registry/` "
            "when not root), which `mount` names when it returns.",
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
    Setting("metrics_addr", _listen_address,
            "`PORT`, `:PORT`, `IPv4:PORT`, `[IPv6]:PORT`; empty is off",
            "Serve Prometheus metrics at `http://ADDR/metrics`. Without an address the port is "
            "bound on 127.0.0.1 only; every interface only when written out (`0.0.0.0:PORT`, "
            "`[::]:PORT`). A port that cannot be bound stops the daemon at start.",
            env="string", show=_doc_plain),
    Setting("check_permissions", _go_bool("check_permissions"), "boolean",
            "At start, probe each S3 permission the registry needs as `s3fs-registry check` "
            "does (on a scratch key under `rootdirectory`, removed afterwards; 9 requests) and "
            "stop with exit code 6 naming the refused actions. `false` mounts without the "
            "probe (a read-only replica).", show=_doc_plain),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# Documentation


def _defaults(cls: type[Any]) -> dict[str, Any]:
    return {f.name: f.default for f in dataclasses.fields(cls)}


def _reference_table(
    table: Iterable[Setting], defaults: Mapping[str, Any], since: bool = False
) -> list[str]:
    """One settings table; `since` adds the registry release that introduced each setting."""
    columns = ["Setting", "Registry", "Default", "Allowed", "Meaning"]
    if not since:
        columns.remove("Registry")
    lines = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    for setting in table:
        default = defaults[setting.name]
        required = default is dataclasses.MISSING or setting.required
        shown = "required" if required else setting.show(default)
        version = f" {setting.since or '2.x'} |" if since else ""
        lines.append(
            f"| `{setting.name}` |{version} {shown} | {setting.allowed} | {setting.help} |"
        )
    return lines


def render_reference() -> str:
    """The settings tables of doc/CONFIGURATION.md, generated from the tables above."""
    parts = [
        "### `storage.s3` (environment: `REGISTRY_STORAGE_S3_<PARAM>`)", "",
        *_reference_table(S3_SETTINGS, _defaults(S3Config), since=True), "",
        "### `middleware.storage[].options` of `name: cloudfront`", "",
        *_reference_table(CLOUDFRONT_SETTINGS, _defaults(CloudFrontConfig)), "",
        "### `mount` (environment: `REGISTRY_MOUNT_<SETTING>`)", "",
        *_reference_table(MOUNT_SETTINGS, _defaults(MountConfig)),
    ]  # fmt: skip
    return "\n".join(parts) + "\n"
