"""`mount -t fuse.s3fs-registry CONFIG MOUNTPOINT -o OPTIONS`: the mount(8) side of the daemon.

mount(8) finds no `/sbin/mount.fuse.s3fs-registry` and falls back to Debian's `mount.fuse3`,
which runs `s3fs-registry CONFIG MOUNTPOINT -o OPTIONS` through /bin/sh (mount(8) clears
PATH, so the shell's default path finds /usr/local/bin/s3fs-registry); the `fuse` type
with the source `s3fs-registry#CONFIG` reaches the same command. This module reads that
command line: the source is the configuration file, and each `-o` option is one of

* an option for mount(8) or systemd, not for the daemon (`_netdev`, `nofail`, `noauto`,
  `x-systemd.*`, ...): ignored, as every FUSE file system ignores them;
* a kernel mount flag FUSE supports (`ro`, `nosuid`, `nodev`, `noexec`, ...): passed on
  to the FUSE mount;
* a `mount:` setting (`allow_other`, `uid=N`, `gid=N`, `memory_budget=1GiB`, ...): it
  overrides the file and the environment, by way of its `REGISTRY_MOUNT_*` variable, so
  it is validated exactly as the file's value would be.

Anything else stops the mount with one line naming the option, as a bad setting does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from s3fs_registry.config import MOUNT_SETTINGS
from s3fs_registry.config.values import MOUNT_ENV_PREFIX
from s3fs_registry.errors import ConfigError

# mount(8)'s and systemd's own options; mount.fuse3 drops some of them, not all
IGNORED = frozenset(
    {"_netdev", "nofail", "auto", "noauto", "user", "nouser", "users", "owner", "group",
     "defaults", "relatime"}
)  # fmt: skip
IGNORED_PREFIXES = ("x-", "X-", "comment=", "_")
# the kernel's flags that libfuse takes for a FUSE mount (the others it refuses)
KERNEL_FLAGS = frozenset(
    {"ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec", "sync", "async",
     "dirsync", "atime", "noatime"}
)  # fmt: skip
SETTINGS = frozenset(s.name for s in MOUNT_SETTINGS)


@dataclass
class MountOptions:
    """The `-o` options sorted by who takes them."""

    settings: dict[str, str] = field(default_factory=dict)
    fuse: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)

    def environment(self) -> dict[str, str]:
        """The settings as the `REGISTRY_MOUNT_*` variables that carry them to the daemon."""
        return {env_name(name): value for name, value in self.settings.items()}


def env_name(setting: str) -> str:
    return MOUNT_ENV_PREFIX + setting.upper()


def parse_options(groups: Iterable[str]) -> MountOptions:
    """Sort the comma-separated `-o` groups; ConfigError for an option nobody takes."""
    parsed = MountOptions()
    for group in groups:
        for option in filter(None, group.split(",")):
            _sort(option, parsed)
    return parsed


def _sort(option: str, parsed: MountOptions) -> None:
    name, has_value, value = option.partition("=")
    if option in IGNORED or option.startswith(IGNORED_PREFIXES):
        parsed.ignored.append(option)
    elif option in KERNEL_FLAGS:
        parsed.fuse.append(option)
    elif name in SETTINGS:
        parsed.settings[name] = value if has_value else "true"
    else:
        raise ConfigError(
            f"mount option {option!r} is not known: it is no setting of the mount: section "
            f"(doc/CONFIGURATION.md), no FUSE mount flag ({', '.join(sorted(KERNEL_FLAGS))}) "
            f"and no option of mount(8)"
        )


def explain(error: ConfigError, options: MountOptions) -> ConfigError:
    """The configuration's error about a setting given with -o, naming the -o option."""
    message = str(error)
    for name in options.settings:
        message = message.replace(f"environment variable {env_name(name)}", f"mount option {name}")
    return ConfigError(message)


def with_settings(environ: Mapping[str, str], options: MountOptions) -> dict[str, str]:
    """The environment the configuration is read from: -o settings win over everything."""
    return {**environ, **options.environment()}
