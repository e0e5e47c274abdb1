"""Loading: YAML file and environment -> `Config`, with the registry's order of checks.

Every problem is one `ConfigError` line naming where the value came from (file and key, or
the environment variable), the value and what is allowed.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from s3fs_registry.config.model import CloudFrontConfig, Config, MountConfig, S3Config
from s3fs_registry.config.settings import (
    _REGION_TEXT,
    _S3_IGNORED,
    CLOUDFRONT_SETTINGS,
    MOUNT_SETTINGS,
    S3_SETTINGS,
    Setting,
)
from s3fs_registry.config.values import (
    _UNSET,
    ENV_SOURCE,
    MOUNT_ENV_PREFIX,
    S3_ENV_PREFIXES,
    _Invalid,
    _one_line,
    _show,
)
from s3fs_registry.errors import ConfigError


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
    _check_endpoint_options(s3, where, warnings)
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


_ACCELERATE_BUCKET = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _check_endpoint_options(s3: S3Config, where: Callable[[str], str], warnings: list[str]) -> None:
    """v3's accelerate, usedualstack and usefipsendpoint: refuse what no request could honour
    (botocore would fail every request), warn where they have no effect (as in the registry,
    whose SDK ignores them for a regionendpoint)."""
    if s3.accelerate and s3.regionendpoint:
        raise _fail(
            where("accelerate"),
            "a custom endpoint cannot be combined with S3 Accelerate (regionendpoint is set); "
            "remove accelerate or regionendpoint",
        )
    if s3.accelerate and s3.usefipsendpoint:
        raise _fail(
            where("accelerate"),
            "S3 Accelerate cannot be used with FIPS endpoints; remove accelerate or "
            "usefipsendpoint",
        )
    if s3.accelerate and not _ACCELERATE_BUCKET.fullmatch(s3.bucket):
        raise _fail(
            where("accelerate"),
            f"bucket name {s3.bucket} is not compatible with S3 Accelerate (it must be a DNS "
            "name without dots)",
        )
    if s3.accelerate and s3.forcepathstyle:
        warnings.append(
            f"{where('forcepathstyle')}: S3 Accelerate needs virtual-hosted addressing; "
            "forcepathstyle is ignored, as in the registry"
        )
    for name in ("usedualstack", "usefipsendpoint"):
        if getattr(s3, name) and s3.regionendpoint:
            warnings.append(
                f"{where(name)}: no effect with regionendpoint {s3.regionendpoint}, as in the "
                "registry (it only selects AWS endpoints)"
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
    if mount.cache_dir and mount.cache_size > 0:
        if not os.path.isdir(mount.cache_dir):
            raise _fail(where("cache_dir"), f"{mount.cache_dir} is not a directory")
        if not os.access(mount.cache_dir, os.W_OK | os.X_OK):
            raise _fail(where("cache_dir"), f"{mount.cache_dir} is not writable")


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
