"""Test helpers: S3 servers on loopback and real mounts of the daemon in a subprocess.

`MotoServer` runs the moto server as its own process (not a thread of the test process, so
that its work never competes with the tests for the GIL). `S3Server` is what tests see of
either server: endpoint, credentials, a boto3 client for checking the bucket, and the
quirks where Ceph RGW differs from AWS. `Mount` starts `python -m s3fs_registry mount
--foreground` with a generated configuration, waits until the kernel mount is up, and on
`stop()` unmounts and returns the daemon's exit code.
"""

from __future__ import annotations

import errno
import os
import random
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from botocore.config import Config as BotoConfig

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port}")


class MotoServer:
    """`python -m moto.server` on a free loopback port, in its own process."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        wait_port(self.port)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()


@dataclass
class S3Server:
    """One S3 protocol server as the tests use it."""

    name: str
    endpoint: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    kms_key_id: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_rgw(self) -> bool:
        return self.name == "rgw"

    def client(self, access_key: str | None = None, secret_key: str | None = None) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=BotoConfig(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 2},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def new_bucket(self, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(keys)

    def get(self, bucket: str, key: str) -> bytes:
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=body)

    def uploads(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        resp = self.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        return list(resp.get("Uploads", []))


def s3_config(server: S3Server, bucket: str, **overrides: Any) -> dict[str, Any]:
    """A `storage.s3` block for the daemon or the registry's native driver."""
    block: dict[str, Any] = {
        "accesskey": server.access_key,
        "secretkey": server.secret_key,
        "region": server.region,
        "regionendpoint": server.endpoint,
        "bucket": bucket,
        "rootdirectory": "/reg",
        "secure": False,
    }
    block.update(overrides)
    return block


class Mount:
    """A real mount of the daemon in a subprocess (see module docstring)."""

    def __init__(
        self,
        workdir: Path,
        server: S3Server,
        bucket: str,
        *,
        s3: dict[str, Any] | None = None,
        mount: dict[str, Any] | None = None,
        extra_config: dict[str, Any] | None = None,
        endpoint: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.server = server
        self.bucket = bucket
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / "mnt"
        self.path.mkdir(exist_ok=True)
        self.log_path = workdir / "daemon.log"
        block = s3_config(server, bucket, **(s3 or {}))
        if endpoint is not None:
            block["regionendpoint"] = endpoint
        self.rootdirectory = str(block.get("rootdirectory", ""))
        config: dict[str, Any] = {
            "storage": {"s3": block},
            # the start-up permission probe adds requests and a scratch key that tests
            # counting requests or injecting faults do not expect: it has tests of its own
            "mount": {"log_level": "debug", "check_permissions": False, **(mount or {})},
        }
        config.update(extra_config or {})
        self.config_path = workdir / "config.yml"
        self.config_path.write_text(yaml.safe_dump(config))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None

    @property
    def prefix(self) -> str:
        """The key prefix of the mount root (the registry driver's s3Path("/"))."""
        return (self.rootdirectory.rstrip("/") + "/").lstrip("/")

    def start(self, timeout: float = 30.0) -> Mount:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "s3fs_registry",
                    "mount",
                    "--foreground",
                    "--config",
                    str(self.config_path),
                    str(self.path),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=REPO,
            )
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"mount did not come up:\n{self.log()}")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        """Unmount (fusermount3 -u) and wait for the daemon; returns its exit code."""
        if self.proc is None:
            return self.returncode or 0
        if os.path.ismount(self.path):
            for _ in range(50):
                done = subprocess.run(
                    ["fusermount3", "-u", str(self.path)], check=False, capture_output=True
                )
                if done.returncode == 0 or not os.path.ismount(self.path):
                    break
                time.sleep(0.1)  # EBUSY while a test's handle is still being closed
            else:
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        return self._wait(timeout)

    def signal(self, signum: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signum)
        return self._wait(timeout)

    def _wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.returncode = self.proc.wait()
        self.proc = None
        if os.path.ismount(self.path):
            subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)
        return self.returncode

    def object_keys(self) -> list[str]:
        """Keys under the mount's prefix, relative to it."""
        return [k[len(self.prefix) :] for k in self.server.keys(self.bucket, self.prefix)]

    def head(self, rel: str) -> dict[str, Any]:
        return dict(self.server.client().head_object(Bucket=self.bucket, Key=self.prefix + rel))

    def object(self, rel: str) -> bytes:
        return self.server.get(self.bucket, self.prefix + rel)


def walk_files(root: Path) -> Iterator[Path]:
    for dirpath, _, files in os.walk(root):
        for name in files:
            yield Path(dirpath) / name


def write_file(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write `data` as the whole new content of `path` (O_TRUNC), in write(2)s of 4 MiB."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view[: 4 * 1024 * 1024]) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_all(path: Path, chunk: int = 1024 * 1024) -> bytes:
    """Read with plain read(2) calls until one returns 0 (EOF)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        pieces = []
        while piece := os.read(fd, chunk):
            pieces.append(piece)
        return b"".join(pieces)
    finally:
        os.close(fd)


def expect_errno(code: int, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """`fn(*args, **kwargs)` must fail with OSError `code`."""
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"{info.value} (wanted {errno.errorcode[code]})"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it holds (True) or `timeout` seconds have passed (False)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def check_random_preads(
    fd: int, data: bytes, rng: random.Random, max_length: int, label: str, times: int = 3
) -> None:
    """`times` preads at random offsets of an open file must return exactly `data`'s bytes."""
    for _ in range(times):
        offset = rng.randrange(len(data))
        length = rng.randint(1, max_length)
        got = os.pread(fd, length, offset)
        assert got == data[offset : offset + length], f"{label}@{offset}+{length}"


def object_grants(client: Any, bucket: str, key: str) -> set[tuple[str, str]]:
    """The object's ACL as (grantee, permission) pairs; the owner's grantee is "owner"."""
    acl = client.get_object_acl(Bucket=bucket, Key=key)
    out = set()
    for grant in acl["Grants"]:
        who = grant["Grantee"].get("URI", "").rsplit("/", 1)[-1] or "owner"
        out.add((who, grant["Permission"]))
    return out
