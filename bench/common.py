"""Pieces every part of the benchmark shares: sizes, samples, process and S3 helpers.

Kept free of any system or workload logic so that the worker processes (``bench.rawboto``,
``bench.proxy``) import only what they need.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig

REPO = Path(__file__).resolve().parent.parent
MiB = 1024 * 1024
GiB = 1024 * MiB


class BenchError(RuntimeError):
    """A workload could not be measured; its text becomes "failed: <reason>" in the table."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """How big each workload is. ``FULL`` is the issue's benchmark, ``QUICK`` a smoke test."""

    seq: int  # (1) write, (2) cold read
    cp: int  # (3) cp in and out
    small_count: int  # (4) files of small_size bytes
    small_size: int
    tree_dirs: int  # (5) directories ...
    tree_files: int  # ... with this many files each
    rename: int  # (6)
    append_base: int  # (7) existing object ...
    append_add: int  # ... and what is appended
    par_count: int  # (8) concurrent writers, then readers ...
    par_size: int  # ... of this many bytes each
    image_layers: tuple[int, ...]  # (9)/(11) layer sizes of the pushed image
    chunked: int  # (10) blob size ...
    chunk: int  # ... sent in PATCHes of this size
    rss_writers: int  # (12) concurrent writers ...
    rss_size: int  # ... of this many bytes each
    timeout: float  # seconds one timed step may take before it counts as failed
    fsync_writes: tuple[int, ...] = (256 * MiB, GiB)  # (14a) (14b) dd conv=fsync
    small_image_layers: tuple[int, ...] = tuple(n * MiB for n in (96, 64, 32, 8))  # (15)
    meta_repos: tuple[int, ...] = (100, 1000)  # (16) repositories of 2 tags each ...
    meta_tag_lists: int = 50  # ... tags/list of this many of them ...
    meta_deletes: int = 20  # ... and this many manifests deleted


FULL = Sizes(
    seq=GiB,
    cp=512 * MiB,
    small_count=1000,
    small_size=100,
    tree_dirs=1000,
    tree_files=10,
    rename=GiB,
    append_base=256 * MiB,
    append_add=64 * MiB,
    par_count=4,
    par_size=256 * MiB,
    image_layers=tuple(n * MiB for n in (256, 256, 192, 128, 96, 64, 24, 8)),
    chunked=200 * MiB,
    chunk=5 * MiB,
    rss_writers=8,
    rss_size=GiB,
    timeout=1800.0,
)

QUICK = Sizes(
    seq=32 * MiB,
    cp=16 * MiB,
    small_count=50,
    small_size=100,
    tree_dirs=20,
    tree_files=10,
    rename=64 * MiB,  # above the 32 MiB multipart-copy threshold, so the parallel path runs
    append_base=16 * MiB,  # >= 5 MiB, so UploadPartCopy can be used for the old bytes
    append_add=8 * MiB,
    par_count=4,
    par_size=8 * MiB,
    image_layers=tuple(n * MiB for n in (24, 12, 8, 4)),
    chunked=20 * MiB,
    chunk=5 * MiB,
    rss_writers=8,
    rss_size=32 * MiB,
    timeout=120.0,
    fsync_writes=(8 * MiB, 32 * MiB),
    small_image_layers=tuple(n * MiB for n in (8, 4, 2, 1)),
    meta_repos=(20,),
    meta_tag_lists=10,
    meta_deletes=5,
)


@dataclasses.dataclass
class Sample:
    """One timed measurement of one workload on one system (or why there is none).

    ``amount`` is in ``unit``: bytes (``"B"``), operations (``"ops"``) or S3 requests
    (``"req"``, workload 11, where ``seconds`` is not the point).
    """

    backend: str
    delay_ms: int  # half the link's round trip (before the link model: the delay each way)
    run: int
    workload: str
    system: str
    seconds: float | None = None
    amount: float = 0.0
    unit: str = "B"
    requests: int | None = None
    by_method: dict[str, int] = dataclasses.field(default_factory=dict)
    rss: int | None = None  # peak RSS of the daemon (bytes)
    rss_other: dict[str, int] = dataclasses.field(default_factory=dict)
    error: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    link: str = ""  # LinkShape.key ("0", "20/20"); "" in results from before the link model
    serial: int | None = None  # serial round trips of the step's requests
    cpu_s: float | None = None  # CPU seconds of the daemon (native: the registry) in the step
    cpu_other: dict[str, float] = dataclasses.field(default_factory=dict)  # registry, proxy


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """Where S3 clients of one backend connect (the proxy, or the server itself)."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def s3_client(ep: Endpoint, *, pool: int = 64, read_timeout: float = 600.0) -> Any:
    """A boto3 S3 client, path style, no checksum extras, a connection pool of ``pool``.

    botocore's pool defaults to 10; anything that runs more requests at once needs more.
    ``Expect: 100-continue`` is dropped (tests/rgw.py: botocore stalls 60 s after an early
    RGW refusal on a kept-alive connection).
    """
    client = boto3.client(
        "s3",
        endpoint_url=ep.url,
        region_name=ep.region,
        aws_access_key_id=ep.access_key,
        aws_secret_access_key=ep.secret_key,
        config=BotoConfig(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=pool,
            read_timeout=read_timeout,
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    client.meta.events.register("before-send.s3", _drop_expect)
    return client


def _drop_expect(request: Any, **kwargs: Any) -> None:
    request.headers.pop("Expect", None)


# ------------------------------------------------------------------------------ processes


def run_cmd(
    argv: Sequence[str],
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> str:
    """Run a command; raise BenchError with its last output lines when it fails or hangs."""
    try:
        res = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"{argv[0]} timed out after {timeout:.0f}s") from None
    out = (res.stdout + res.stderr).decode(errors="replace")
    if res.returncode != 0:
        raise BenchError(f"{argv[0]} exit {res.returncode}: {last_line(out)}")
    return out


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:200] if lines else "(no output)"


def run_parallel(argvs: Sequence[Sequence[str]], timeout: float) -> None:
    """Run commands at the same time; raise the first failure once all have ended."""
    with ThreadPoolExecutor(max_workers=max(1, len(argvs))) as pool:
        futures = [pool.submit(run_cmd, argv, timeout) for argv in argvs]
        errors = [f.exception() for f in futures]
    for err in errors:
        if err is not None:
            raise err


def vm_hwm(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a live process in bytes, None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_hwm(pid: int) -> None:
    """Reset a process's VmHWM to its current RSS, so the peak covers only what follows.

    Writing 5 to clear_refs does that (Linux >= 4.0); without permission the peak simply
    includes the set-up, which only makes the number larger.
    """
    with contextlib.suppress(OSError), open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a live process (all its threads) has used, None if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop_caches() -> bool:
    """Drop the kernel page cache (root only), so a read really goes to the daemon."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3")
    except OSError:
        return False
    return True


# ------------------------------------------------------------------------------ S3 helpers


def wait_objects(client: Any, bucket: str, sizes: Mapping[str, int], timeout: float) -> None:
    """Wait until every key has its size in the bucket.

    Part of every timed write: a write counts as done only once S3 has it (rclone with a
    cache acknowledges close() before the upload; the others upload before close returns,
    so this costs them one HEAD).
    """
    deadline = time.monotonic() + timeout
    pending = dict(sizes)
    while pending:
        for key, size in list(pending.items()):
            if _head_size(client, bucket, key) == size:
                del pending[key]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{len(pending)} object(s) not in S3 after {timeout:.0f}s")
        time.sleep(0.02)


def wait_gone(client: Any, bucket: str, key: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _head_size(client, bucket, key) is not None:
        if time.monotonic() > deadline:
            raise BenchError(f"{key} still in S3 after {timeout:.0f}s")
        time.sleep(0.02)


def wait_count(client: Any, bucket: str, prefix: str, count: int, timeout: float) -> None:
    """Wait until ``count`` objects exist under ``prefix`` (many small files at once)."""
    deadline = time.monotonic() + timeout
    while len(list_keys(client, bucket, prefix)) < count:
        if time.monotonic() > deadline:
            raise BenchError(f"fewer than {count} objects under {prefix} after {timeout:.0f}s")
        time.sleep(0.05)


def _head_size(client: Any, bucket: str, key: str) -> int | None:
    try:
        return int(client.head_object(Bucket=bucket, Key=key)["ContentLength"])
    except client.exceptions.ClientError:
        return None


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys.extend(o["Key"] for o in page.get("Contents", []))
    return keys


def delete_bucket(client: Any, bucket: str) -> None:
    """Remove a bucket with everything in it (objects, pending multipart uploads).

    The RGW's bluestore file is finite, so every workload's data goes away once measured.
    """
    with contextlib.suppress(client.exceptions.NoSuchBucket):
        for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            with contextlib.suppress(client.exceptions.ClientError):
                client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
        keys = list_keys(client, bucket)
        for i in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            client.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        client.delete_bucket(Bucket=bucket)


def put_many(
    client: Any, bucket: str, items: Iterable[tuple[str, bytes]], workers: int = 16
) -> None:
    """PutObject many small objects in parallel (set-up only, never timed)."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), items))


class ZeroStream:
    """A read-only stream of ``size`` zero bytes, what ``dd if=/dev/zero`` writes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        self._zeros: dict[int, bytes] = {}

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.pos
        if n < 0 or n > left:
            n = left
        self.pos += n
        if n not in self._zeros:
            self._zeros[n] = bytes(n)
        return self._zeros[n]


class ZeroFile(ZeroStream):
    """The same stream, seekable: botocore sends it as one PutObject body (its length from
    seek and tell) and can rewind it for a retry."""

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def tell(self) -> int:
        return self.pos


def upload_zeros(client: Any, bucket: str, key: str, size: int) -> None:
    """Set-up upload of a zero-filled object (10 MiB parts, 8 at a time)."""
    client.upload_fileobj(ZeroStream(size), bucket, key, Config=transfer_config())


def transfer_config() -> Any:
    """The issue's raw-boto3 reference: 10 MiB parts, 8 at a time."""
    return TransferConfig(
        multipart_threshold=10 * MiB, multipart_chunksize=10 * MiB, max_concurrency=8
    )


def write_random_file(path: Path, size: int) -> None:
    """A local file of random bytes (source of cp and of the chunked upload)."""
    if path.exists() and path.stat().st_size == size:
        return
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 16 * MiB)
            f.write(os.urandom(n))
            left -= n
