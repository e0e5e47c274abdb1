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

The modules, each importing only the ones above it:

* `values`: Go's integer and duration parsing, sizes, the formatting of values in messages;
* `model`: the frozen dataclasses (`Config`, `S3Config`, `MountConfig`, `CloudFrontConfig`);
* `parsers`: one parser per kind of value, with the registry's error texts;
* `settings`: the tables declaring every setting, and `render_reference()`;
* `load`: YAML and environment -> `Config`, with the cross-setting checks.
"""

from s3fs_registry.config.load import load_config, parse_config, spool_directory
from s3fs_registry.config.model import CloudFrontConfig, Config, MountConfig, S3Config
from s3fs_registry.config.settings import (
    CLOUDFRONT_SETTINGS,
    MOUNT_SETTINGS,
    S3_SETTINGS,
    Setting,
    render_reference,
)
from s3fs_registry.config.values import (
    MOUNT_ENV_PREFIX,
    OBJECT_ACLS,
    STORAGE_CLASSES,
    GiB,
    KiB,
    MiB,
    TiB,
    parse_duration,
    parse_size,
)

__all__ = [
    "CLOUDFRONT_SETTINGS",
    "MOUNT_ENV_PREFIX",
    "MOUNT_SETTINGS",
    "OBJECT_ACLS",
    "S3_SETTINGS",
    "STORAGE_CLASSES",
    "CloudFrontConfig",
    "Config",
    "GiB",
    "KiB",
    "MiB",
    "MountConfig",
    "S3Config",
    "Setting",
    "TiB",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
    "render_reference",
    "spool_directory",
]
