"""The commands as an operator runs them: exit codes, one-line errors, clean shutdown."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from s3fs_registry import log as daemon_log
from tests.conftest import MountFactory
from tests.mounts import REPO, Mount, S3Server, free_port, s3_config, wait_until

SECRET = "sekrit-value-never-logged-0123456789"
# unit settings that give a service a mount namespace of its own (tried: systemd 252)
MOUNT_NAMESPACE_SETTINGS = """ProtectSystem ProtectHome PrivateTmp ReadWritePaths ReadOnlyPaths
    InaccessiblePaths BindPaths TemporaryFileSystem PrivateDevices PrivateIPC PrivateMounts
    ProtectProc ProcSubset ProtectKernelTunables ProtectKernelModules ProtectKernelLogs
    ProtectControlGroups"""


def run(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "s3fs_registry", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO,
        timeout=timeout,
        check=False,
    )


def write_config(path: Path, s3: dict[str, Any], **sections: Any) -> Path:
    path.write_text(yaml.safe_dump({"storage": {"s3": s3}, **sections}))
    return path


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_version_and_help() -> None:
    assert run("--version").stdout.startswith("s3fs-registry ")
    assert "mount" in run("--help").stdout


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"chunksize": 1024}, "chunksize"),
        ({"storageclass": "GOLD"}, "storageclass"),
        ({"objectacl": "everyone"}, "objectacl"),
        ({"v4auth": "maybe"}, "v4auth"),
        ({"bucket": None}, "no bucket parameter provided"),
        ({"keyid": "k", "encrypt": False}, "keyid"),
    ],
)
def test_bad_config_stops_before_mounting(
    moto: S3Server, tmp_path: Path, override: dict[str, Any], needle: str
) -> None:
    block = {**s3_config(moto, "b", secretkey=SECRET), **override}
    block = {k: v for k, v in block.items() if v is not None}
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run("mount", "--config", str(write_config(tmp_path / "c.yml", block)), str(mnt))
    assert result.returncode == 2
    line = one_line(result)
    assert needle in line and SECRET not in line
    assert not os.path.ismount(mnt)


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("storage:\n  s3: [unclosed\n")
    result = run("check", "--config", str(bad))
    assert result.returncode == 2 and "bad.yml" in one_line(result)
    result = run("check", "--config", str(tmp_path / "missing.yml"))
    assert result.returncode == 2 and "missing.yml" in one_line(result)


def test_missing_bucket(moto: S3Server, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    config = write_config(tmp_path / "c.yml", s3_config(moto, "no-such-bucket-here"))
    result = run("mount", "--config", str(config), "--foreground", str(mnt))
    assert result.returncode == 5
    assert "no-such-bucket-here" in result.stderr and "does not exist" in result.stderr
    assert not os.path.ismount(mnt)
    result = run("mount", "--config", str(config), str(mnt))
    assert result.returncode == 5 and "does not exist" in one_line(result)


def test_unreachable_endpoint(moto: S3Server, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    endpoint = f"http://127.0.0.1:{free_port()}"
    block = s3_config(moto, "b", regionendpoint=endpoint)
    result = run(
        "mount",
        "--config",
        str(write_config(tmp_path / "c.yml", block)),
        str(mnt),
        env={"REGISTRY_MOUNT_RETRY_TIME": "2"},
    )
    assert result.returncode == 3
    assert "cannot reach S3" in one_line(result) and endpoint in result.stderr
    assert not os.path.ismount(mnt)


def test_missing_mount_point_and_dead_mount_are_told_apart(moto: S3Server, tmp_path: Path) -> None:
    """A directory that does not exist, a file, and a FUSE mount whose daemon was killed
    (kill -9: "Transport endpoint is not connected") each get their own line and exit 7."""
    config = write_config(tmp_path / "c.yml", s3_config(moto, moto.new_bucket()))
    missing = tmp_path / "missing"
    result = run("mount", "--config", str(config), str(missing))
    assert result.returncode == 7 and "does not exist" in one_line(result)
    (tmp_path / "file").write_text("")
    result = run("mount", "--config", str(config), str(tmp_path / "file"))
    assert result.returncode == 7 and "is not a directory" in one_line(result)
    dead = Mount(tmp_path / "dead", moto, moto.new_bucket()).start()
    assert dead.proc is not None
    dead.proc.kill()
    dead.proc.wait()
    try:
        result = run("mount", "--config", str(config), str(dead.path))
        line = one_line(result)
        assert result.returncode == 7 and "dead FUSE mount" in line, line
        assert f"fusermount3 -u {dead.path}" in line
    finally:
        subprocess.run(["fusermount3", "-u", str(dead.path)], check=True)
        dead.proc = None


def test_background_mount_returns_once_usable(moto: S3Server, tmp_path: Path) -> None:
    bucket = moto.new_bucket()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    config = write_config(
        tmp_path / "c.yml",
        s3_config(moto, bucket),
        mount={"log_file": str(tmp_path / "daemon.log")},
    )
    result = run("mount", "--config", str(config), str(mnt))
    assert result.returncode == 0, result.stderr
    try:
        assert os.path.ismount(mnt)
        (mnt / "f").write_text("background")
        assert moto.get(bucket, "reg/f") == b"background"
        result = run("mount", "--config", str(config), str(mnt))
        assert result.returncode == 7 and "already" in one_line(result)
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    deadline = time.monotonic() + 20
    while "unmounted" not in (tmp_path / "daemon.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "unmounted" in (tmp_path / "daemon.log").read_text()


def test_background_without_log_file_or_syslog_loses_no_line(
    moto: S3Server, tmp_path: Path
) -> None:
    """No mount.log_file and no /dev/log (a container): the warning about a misspelt
    storage.s3 key reaches the operator from `mount` itself, and the daemon logs to the
    default file it names, from the warning to the clean unmount."""
    assert not os.path.exists("/dev/log"), "this test needs a machine without syslog"
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    block = {**s3_config(moto, moto.new_bucket()), "chunkSize": 5 * 1024 * 1024}
    config = write_config(tmp_path / "c.yml", block)
    result = run("mount", "--config", str(config), str(mnt))
    assert result.returncode == 0, result.stderr
    log_file = Path(daemon_log.default_log_file(str(mnt)))
    try:
        warning = "chunkSize: parameter names are lower-case"
        assert f"warning: {config}: storage.s3.{warning}" in result.stderr, result.stderr
        assert str(log_file) in result.stderr
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        assert wait_until(lambda: "unmounted" in log_file.read_text(), 20)
        assert warning in log_file.read_text() and "mounted" in log_file.read_text()
    finally:
        log_file.unlink(missing_ok=True)


def test_environment_overrides_the_file(moto: S3Server, mount_factory: MountFactory) -> None:
    bucket = moto.new_bucket()
    mount = mount_factory(
        moto,
        "ignored-bucket-name-x",
        env={
            "REGISTRY_STORAGE_S3_BUCKET": bucket,
            "REGISTRY_STORAGE_S3_ROOTDIRECTORY": "/from/env",
        },
    )
    (mount.path / "f").write_text("env")
    assert moto.get(bucket, "from/env/f") == b"env"


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "umount"])
def test_shutdown_completes_pending_uploads(
    moto: S3Server, mount_factory: MountFactory, how: str
) -> None:
    mount = mount_factory(moto, s3={"chunksize": 5 * 1024 * 1024})
    payload = os.urandom(7 * 1024 * 1024 + 3)
    if how == "umount":
        (mount.path / "f").write_bytes(payload)
        subprocess.run(["umount", str(mount.path)], check=True)
        code = mount.stop()
    else:
        fd = os.open(mount.path / "f", os.O_WRONLY | os.O_CREAT)
        os.write(fd, payload)  # still open: the daemon must finish this upload itself
        code = mount.signal(getattr(signal, how))
        with contextlib.suppress(OSError):  # the mount is gone: close cannot reach the daemon
            os.close(fd)
    assert code == 0, mount.log()[-3000:]
    assert moto.get(mount.bucket, "reg/f") == payload
    assert not os.path.ismount(mount.path)


def test_check_reports_every_permission(s3: S3Server, tmp_path: Path) -> None:
    bucket = s3.new_bucket()
    config = write_config(tmp_path / "c.yml", s3_config(s3, bucket))
    result = run("check", "--config", str(config))
    assert result.returncode == 0, result.stdout + result.stderr
    for permission in (
        "ListBucket",
        "GetBucketLocation",
        "ListBucketMultipartUploads",
        "PutObject",
        "GetObject",
        "DeleteObject",
        "ListMultipartUploadParts",
        "AbortMultipartUpload",
    ):
        assert f"s3:{permission}" in result.stdout and "MISSING" not in result.stdout
    assert s3.keys(bucket) == [] and s3.uploads(bucket) == []


def _restricted_user(rgw: S3Server, bucket: str, actions: list[str]) -> tuple[str, str]:
    gateway = rgw.extra["gateway"]
    uid = f"limited{os.getpid()}{time.monotonic_ns() % 100000}"
    gateway.create_user(uid, uid, uid + "-secret")
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": [f"arn:aws:iam:::user/{uid}"]},
                "Action": [f"s3:{a}" for a in actions],
                "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
            }
        ],
    }
    rgw.client().put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
    return uid, uid + "-secret"


def test_check_and_mount_with_refused_permissions(rgw: S3Server, tmp_path: Path) -> None:
    bucket = rgw.new_bucket()
    granted = ["ListBucket", "GetBucketLocation", "PutObject", "GetObject"]
    access, secret = _restricted_user(rgw, bucket, granted)
    config = write_config(
        tmp_path / "c.yml", s3_config(rgw, bucket, accesskey=access, secretkey=secret)
    )
    result = run("check", "--config", str(config))
    assert result.returncode == 6, result.stdout + result.stderr
    table = {
        line.split()[0]: line.split()[1]
        for line in result.stdout.splitlines()
        if line.startswith("s3:")
    }
    assert {f"s3:{a}" for a in granted} <= {k for k, v in table.items() if v == "granted"}
    # RGW lets the initiator of an upload list its parts whatever the policy says
    assert {k for k, v in table.items() if v == "MISSING"} == {
        "s3:ListBucketMultipartUploads",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
    }, result.stdout
    assert secret not in result.stdout + result.stderr
    denied_all = write_config(
        tmp_path / "d.yml",
        s3_config(rgw, bucket, accesskey=access, secretkey=secret, rootdirectory="/x"),
    )
    _restricted_user(rgw, bucket, ["GetObject"])  # now not even ListBucket
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    result = run("mount", "--config", str(denied_all), str(mnt))
    assert result.returncode in (4, 6)


def test_mount_stops_on_a_missing_permission_unless_the_probe_is_off(
    rgw: S3Server, tmp_path: Path
) -> None:
    """`check` exits 6 for this user; so does `mount`, naming the refused actions, and
    nothing is mounted; with REGISTRY_MOUNT_CHECK_PERMISSIONS=false it mounts."""
    bucket = rgw.new_bucket()
    access, secret = _restricted_user(
        rgw, bucket, ["ListBucket", "GetBucketLocation", "PutObject", "GetObject"]
    )
    config = write_config(
        tmp_path / "c.yml", s3_config(rgw, bucket, accesskey=access, secretkey=secret)
    )
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for foreground in ([], ["--foreground"]):
        result = run("mount", *foreground, "--config", str(config), str(mnt))
        assert result.returncode == 6, result.stderr
        line = result.stderr.strip().splitlines()[-1]
        for action in ("s3:ListBucketMultipartUploads", "s3:DeleteObject"):
            assert action in line, line
        assert "check_permissions" in line and not os.path.ismount(mnt)
    result = run(
        "mount",
        "--config",
        str(config),
        str(mnt),
        env={"REGISTRY_MOUNT_CHECK_PERMISSIONS": "false"},
    )
    assert result.returncode == 0, result.stderr
    assert os.path.ismount(mnt)
    subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    # what the probes could not remove without DeleteObject and AbortMultipartUpload
    leftovers = rgw.keys(bucket) + [u["Key"] for u in rgw.uploads(bucket)]
    assert all("/s3fs-registry-check-" in key for key in leftovers), leftovers


def test_wrong_credentials(rgw: S3Server, tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    config = write_config(tmp_path / "c.yml", s3_config(rgw, rgw.new_bucket(), secretkey=SECRET))
    result = run("mount", "--config", str(config), str(mnt))
    assert result.returncode == 4
    line = one_line(result)
    assert "credentials" in line and SECRET not in line
    assert not os.path.ismount(mnt)
    result = run("check", "--config", str(config))
    assert result.returncode == 4 and SECRET not in result.stdout + result.stderr


def test_secrets_never_logged(moto: S3Server, mount_factory: MountFactory) -> None:
    mount = mount_factory(moto, s3={"secretkey": SECRET, "chunksize": 5 * 1024 * 1024})
    (mount.path / "d").mkdir()
    (mount.path / "d" / "f").write_bytes(os.urandom(6 * 1024 * 1024))
    os.rename(mount.path / "d" / "f", mount.path / "d" / "g")
    assert (mount.path / "d" / "g").stat().st_size == 6 * 1024 * 1024
    assert mount.stop() == 0
    log = mount.log()
    assert "DEBUG" in log and SECRET not in log


def test_systemd_notify_ready_and_stopping(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(address)
        sock.settimeout(30)
        mount = mount_factory(moto, env={"NOTIFY_SOCKET": address})
        assert sock.recv(100) == b"READY=1"
        assert os.path.ismount(mount.path), "READY=1 only once the mount is up"
        assert mount.stop() == 0
        assert sock.recv(100) == b"STOPPING=1"


def test_systemd_units_verify(tmp_path: Path) -> None:
    """The shipped units parse (systemd-analyze verify) with the binary where it is installed."""
    binary = shutil.which("s3fs-registry")
    if binary is None:
        binary = str(tmp_path / "s3fs-registry")
        Path(binary).write_text(f'#!/bin/sh\nexec {sys.executable} -m s3fs_registry "$@"\n')
        os.chmod(binary, 0o755)
    unit = (REPO / "systemd/s3fs-registry.service").read_text()
    (tmp_path / "s3fs-registry.service").write_text(
        unit.replace("/usr/local/bin/s3fs-registry", binary)
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "s3fs-registry.service")],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [line for line in result.stderr.splitlines() if "s3fs-registry.service" in line]
    assert result.returncode == 0 and not problems, result.stderr
    dropin = (REPO / "systemd/docker-registry.service.d/s3fs-registry.conf").read_text()
    assert "After=s3fs-registry.service" in dropin and "Requires=s3fs-registry.service" in dropin
    assert "Type=notify" in unit and "Restart=on-failure" in unit and "TimeoutStopSec=" in unit
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and line[0].isalpha()
    )
    assert "http" not in settings["Documentation"]  # only what exists on the machine
    assert settings["CapabilityBoundingSet"] == "CAP_SYS_ADMIN"
    assert settings["DeviceAllow"] == "/dev/fuse rw" and settings["NoNewPrivileges"] == "yes"
    # each of these gives the service a mount namespace: the mount would be seen by no one
    private = set(MOUNT_NAMESPACE_SETTINGS.split())
    assert not private & settings.keys()


def test_mount_t_fuse_and_umount(moto: S3Server, tmp_path: Path) -> None:
    """`mount -t fuse.s3fs-registry CONFIG DIR -o ...` as fstab and .mount units run it, and
    `umount`. mount(8) clears PATH, so mount.fuse3 finds `s3fs-registry` on the shell's
    default path: a private mount namespace puts this checkout's there (/usr/local/sbin)."""
    bucket = moto.new_bucket()
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    log = tmp_path / "daemon.log"
    config = write_config(tmp_path / "c.yml", s3_config(moto, bucket), mount={"log_file": str(log)})
    bindir = tmp_path / "sbin"
    bindir.mkdir()
    (bindir / "s3fs-registry").write_text(
        f'#!/bin/sh\ncd {REPO} && exec {sys.executable} -m s3fs_registry "$@"\n'
    )
    (bindir / "s3fs-registry").chmod(0o755)
    options = (
        "allow_other,uid=4321,gid=4322,metadata_ttl=0s,nosuid,nodev,noexec,"  # settings, flags
        "_netdev,nofail,x-systemd.requires=x.service"  # mount(8)'s and systemd's: ignored
    )
    script = f"""
        set -e
        mount --bind {bindir} /usr/local/sbin
        if mount -t fuse.s3fs-registry {config} {mnt} -o bogus 2>&1; then exit 99; fi
        mount -t fuse.s3fs-registry {config} {mnt} -o {options}
        trap 'umount -l {mnt} 2>/dev/null || true' EXIT
        findmnt -n -o FSTYPE,OPTIONS {mnt}
        stat -c 'owner %u:%g' {mnt}
        printf via-mount > {mnt}/f
        umount {mnt}
    """
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert "mount option 'bogus' is not known" in lines[0]
    fstype, flags = lines[1].split()
    assert fstype == "fuse.s3fs-registry"
    assert {"nosuid", "nodev", "noexec", "allow_other"} <= set(flags.split(","))
    assert lines[2] == "owner 4321:4322"
    assert moto.get(bucket, "reg/f") == b"via-mount"
    deadline = time.monotonic() + 20
    while "cleanly" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert f"unmounted {mnt} cleanly" in log.read_text()
