"""The validated configuration: frozen dataclasses whose defaults are the settings' defaults."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field

from s3fs_registry.config.values import DEFAULT_IP_RANGES_URL, GiB, MiB


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
    usedualstack: bool = False
    accelerate: bool = False
    usefipsendpoint: bool = False
    loglevel: str = "off"

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
    read_ahead: int = 128 * MiB
    small_file_size: int = 1 * MiB
    spool_dir: str = ""
    spool_limit: int = 1 * GiB
    cache_dir: str = ""
    cache_size: int = 10 * GiB
    uid: int = -1
    gid: int = -1
    file_mode: int = 0o644
    dir_mode: int = 0o755
    allow_other: bool | None = None  # None: auto, on when uid or gid is not the daemon's
    log_level: str = "info"
    log_file: str = ""
    janitor: bool = True
    janitor_age: float = 168 * 3600.0
    janitor_interval: float = 3600.0
    retry_attempts: int = 5
    retry_time: float = 60.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    metrics_addr: str = ""
    check_permissions: bool = True


@dataclass(frozen=True)
class Config:
    """The whole validated configuration; `warnings` are to be logged once at start."""

    s3: S3Config
    mount: MountConfig
    cloudfront: CloudFrontConfig | None
    warnings: tuple[str, ...] = ()
