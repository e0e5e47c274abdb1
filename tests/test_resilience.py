"""Nothing lost under S3 faults: retries, outages, a killed daemon, corrupted bytes in flight.

Faults are injected between the daemon and the S3 server by `tests/s3proxy.py` (503
SlowDown, 500 InternalError before or after the request took effect upstream, a connection
reset, a response cut half way, latency beyond `mount.read_timeout`, the server down) and,
for bytes that are changed rather than dropped, by `TamperProxy` below. Whatever happens,
a `close`/`fsync` that returned 0 names an object whose bytes are right, a failure is an
error from `write`/`fsync`/`close`, and a read returns the right bytes or EIO.

Every test runs on moto and on Ceph RGW (the `s3` fixture). Where the two servers differ
the test says so: moto does not verify Content-MD5 and dates every multipart upload 2010;
RGW verifies Content-MD5 and dates uploads truly.
"""

from __future__ import annotations

import base64
import concurrent.futures
import errno
import hashlib
import http.client
import itertools
import multiprocessing
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import botocore.exceptions
import pytest

from tests.conftest import MountFactory
from tests.mounts import (
    Mount,
    S3Server,
    check_random_preads,
    expect_errno,
    read_all,
    wait_until,
    write_file,
)
from tests.registry import (
    ImageInfo,
    Registry,
    SkopeoError,
    make_image,
    pull,
    pulled_blobs,
    push,
    random_layer,
)
from tests.s3proxy import FaultRule, S3Proxy

MiB = 1024 * 1024
CHUNK = 5 * MiB
V2 = "docker/registry/v2"
SEED = 20240611


# -- helpers ---------------------------------------------------------------------------------


def _write_once(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def direct_sha(client: Any, bucket: str, key: str) -> str | None:
    """sha256 of the object as the S3 server has it (no proxy), or None if there is none."""
    try:
        body = client.get_object(Bucket=bucket, Key=key)["Body"]
    except botocore.exceptions.ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    digest = hashlib.sha256()
    for piece in iter(lambda: body.read(4 * MiB), b""):
        digest.update(piece)
    return digest.hexdigest()


def describe(client: Any, bucket: str, key: str, data: bytes) -> str:
    """How an object differs from `data` (for failure messages)."""
    got = bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    same = next((i for i, (a, b) in enumerate(zip(got, data, strict=False)) if a != b), None)
    where = "is a prefix of" if same is None else f"differs at byte {same} from"
    return f"{len(got)} bytes that {where} the {len(data)} bytes written"


def blob_keys_intact(mount: Mount) -> int:
    """Every `blobs/sha256/xx/<hex>/data` object in S3 hashes to its name; returns how many."""
    client = mount.server.client()
    checked = 0
    for rel in mount.object_keys():
        parts = rel.split("/")
        if rel.startswith(f"{V2}/blobs/sha256/") and parts[-1] == "data":
            hex_ = parts[-2]
            assert direct_sha(client, mount.bucket, mount.prefix + rel) == hex_, (
                f"corrupt blob object {rel}"
            )
            checked += 1
    return checked


def uploads_of(server: S3Server, bucket: str, key: str) -> list[dict[str, Any]]:
    return [u for u in server.uploads(bucket) if u["Key"] == key]


def mounted(path: Path) -> bool:
    """Listed in /proc/mounts (os.path.ismount is False for a dead FUSE mount: ENOTCONN)."""
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


def image(tmp_path: Path, name: str, seed: int, sizes: tuple[int, ...]) -> ImageInfo:
    layers = [random_layer(size, seed * 100 + i) for i, size in enumerate(sizes)]
    return make_image(tmp_path / name, layers, {"architecture": "amd64", "os": "linux", "n": seed})


def push_with_retries(src: Path, url: str, ref: str, attempts: int) -> tuple[bool, list[str]]:
    errors: list[str] = []
    for _ in range(attempts):
        try:
            push(src, url, ref)
            return True, errors
        except SkopeoError as exc:
            errors.append(exc.output[-2000:])
    return False, errors


def pull_and_check(url: str, ref: str, info: ImageInfo, dest: Path, attempts: int = 3) -> None:
    """Pull until it works; a digest mismatch (wrong bytes served) fails at once."""
    for attempt in range(attempts):
        try:
            pull(url, ref, dest / str(attempt))
        except SkopeoError as exc:
            assert "did not match" not in exc.output.lower(), (
                f"wrong bytes served for {ref}: {exc.output[-2000:]}"
            )
            continue
        blobs = pulled_blobs(dest / str(attempt))
        assert set(info.blob_digests) <= set(blobs), f"{ref}: blobs missing from the pull"
        assert info.manifest_digest in blobs
        return
    pytest.fail(f"could not pull {ref} in {attempts} attempts")


# -- every fault kind on every kind of request ------------------------------------------------

READ_TIMEOUT = 1.5
DELAY = 3.5  # beyond READ_TIMEOUT: the daemon gives up on the answer and retries


@dataclass(frozen=True)
class Fault:
    kind: str
    after_upstream: bool = False
    seconds: float = 0.0

    @property
    def label(self) -> str:
        return self.kind + ("-after" if self.after_upstream else "")


FAULTS = [
    Fault("slowdown"),
    Fault("internal"),
    Fault("internal", after_upstream=True),
    Fault("reset"),
    Fault("reset", after_upstream=True),
    Fault("cut"),  # forwarded (took effect upstream), then half of the answer
]
LATENCY = [Fault("delay", seconds=DELAY), Fault("delay", after_upstream=True, seconds=DELAY)]


def _arm(proxy: S3Proxy, fault: Fault, **match: Any) -> FaultRule:
    return proxy.add_fault(
        fault.kind,
        after_upstream=fault.after_upstream,
        seconds=fault.seconds,
        times=1,
        **match,
    )


def op_put(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    data = os.urandom(1000)
    rule = _arm(proxy, fault, method="PUT", path=f"/{name}$")
    write_file(m.path / name, data)
    assert m.object(name) == data
    return [rule]


def op_create_multipart(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    data = os.urandom(CHUNK + 1000)
    rule = _arm(proxy, fault, method="POST", path=f"/{name}$", query="uploads")
    write_file(m.path / name, data)
    assert m.object(name) == data
    return [rule]


def op_upload_part(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    data = os.urandom(2 * CHUNK + 1000)
    rule = _arm(proxy, fault, method="PUT", path=f"/{name}$", query="partNumber=")
    write_file(m.path / name, data, fsync=True)
    assert m.object(name) == data
    return [rule]


def op_complete(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    data = os.urandom(CHUNK + 1000)
    rule = _arm(proxy, fault, method="POST", path=f"/{name}$", query="uploadId=")
    write_file(m.path / name, data, fsync=True)
    assert m.object(name) == data
    return [rule]


def op_get_small(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    data = os.urandom(5000)
    write_file(m.path / name, data)
    rule = _arm(proxy, fault, method="GET", path=f"/{name}$")
    assert read_all(m.path / name) == data
    return [rule]


def op_get_range(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    data = os.urandom(3 * MiB + 77)
    write_file(m.path / name, data)
    rule = _arm(proxy, fault, method="GET", path=f"/{name}$")
    fd = os.open(m.path / name, os.O_RDONLY)
    try:
        assert os.pread(fd, 300_000, 2 * MiB + 5) == data[2 * MiB + 5 : 2 * MiB + 300_005]
    finally:
        os.close(fd)
    assert read_all(m.path / name) == data
    return [rule]


def op_list(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    """`name/inner` was written by another tool before the mount started (so that no
    listing this mount holds can predate it)."""
    # one fault for the lookup's probe, one for the readdir (names end in -x: no name here
    # is a prefix of another's, so a rule never matches another case's listing)
    rules = [_arm(proxy, fault, method="GET", query=f"prefix=reg%2F{name}") for _ in range(2)]
    assert os.listdir(m.path / name) == ["inner"]
    assert (m.path / name / "inner").read_bytes() == b"written by another tool"
    return rules


def op_delete(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    write_file(m.path / name, b"to be deleted")
    rule = _arm(proxy, fault, method="DELETE", path=f"/{name}$")
    os.unlink(m.path / name)
    assert not (m.path / name).exists()
    assert name not in m.object_keys()
    return [rule]


def op_copy(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    data = os.urandom(2000)
    write_file(m.path / name, data)
    rule = _arm(proxy, fault, method="PUT", path=f"/{name}-moved$")
    os.rename(m.path / name, m.path / f"{name}-moved")
    assert m.object(f"{name}-moved") == data
    assert name not in m.object_keys()
    return [rule]


def op_abort(m: Mount, proxy: S3Proxy, fault: Fault, name: str) -> list[FaultRule]:
    """A failed upload is aborted even when the abort itself meets a fault.

    One write(2) of a part and a bit: the refused part is noticed at close, when the
    upload is completed (test_failed_upload_noticed_by_a_write_is_aborted covers a refusal
    that a later write notices)."""
    proxy.add_fault("access_denied", method="PUT", path=f"/{name}$", query="partNumber=")
    rule = _arm(proxy, fault, method="DELETE", path=f"/{name}$", query="uploadId=")
    expect_errno(errno.EACCES, _write_once, m.path / name, os.urandom(CHUNK + 1000))
    key = m.prefix + name
    assert wait_until(lambda: not uploads_of(m.server, m.bucket, key), 20), "not aborted"
    assert name not in m.object_keys()
    return [rule]


OPERATIONS: dict[str, Callable[[Mount, S3Proxy, Fault, str], list[FaultRule]]] = {
    "put": op_put,
    "create": op_create_multipart,
    "part": op_upload_part,
    "complete": op_complete,
    "getsmall": op_get_small,
    "getrange": op_get_range,
    "list": op_list,
    "delete": op_delete,
    "copy": op_copy,
    "abort": op_abort,
}
LATENCY_OPERATIONS = ("put", "part", "complete", "getsmall", "getrange", "delete")


def test_every_fault_on_every_kind_of_request(
    s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory
) -> None:
    """Each fault once on each kind of request: the operation succeeds with the right bytes.

    The "-after" faults and `cut` let the request take effect upstream first, so a retried
    CompleteMultipartUpload or DeleteObject finds its work already done and must recognise
    it. The delays exceed `mount.read_timeout`, so the daemon abandons the answer and
    retries. A CreateMultipartUpload that took effect but whose answer was lost leaves an
    orphaned (invisible) upload behind for the janitor: counted and checked below.
    """
    bucket = s3.new_bucket()
    for fault in FAULTS:
        s3.put(bucket, f"reg/list-{fault.label}-x/inner", b"written by another tool")
    m = mount_factory(
        s3,
        bucket,
        endpoint=proxy.url,
        s3={"chunksize": CHUNK},
        mount={"read_timeout": READ_TIMEOUT, "retry_time": "30s"},
    )
    cases = [(op, f) for op in OPERATIONS for f in FAULTS]
    cases += [(op, f) for op in LATENCY_OPERATIONS for f in LATENCY]

    def run(case: tuple[str, Fault]) -> tuple[str, list[FaultRule]]:
        op, fault = case
        name = f"{op}-{fault.label}-x"
        return name, OPERATIONS[op](m, proxy, fault, name)

    failures: list[str] = []
    fired: dict[str, list[FaultRule]] = {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = {pool.submit(run, case): case for case in cases}
        for future in concurrent.futures.as_completed(futures):
            op, fault = futures[future]
            try:
                name, rules = future.result()
                fired[name] = rules
            except BaseException as exc:  # collect all, report together
                failures.append(f"{op} with {fault.label}: {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(sorted(failures)) + "\n" + m.log()[-6000:]
    not_fired = [name for name, rules in fired.items() if not any(r.fired for r in rules)]
    assert not not_fired, f"faults that never fired (test would prove nothing): {not_fired}"

    log = m.log()
    assert "unexpected error" not in log, log[-6000:]
    assert "upload at close failed" not in log
    proxy.clear_faults()
    proxy.wait_idle(10)
    # Orphans: CreateMultipartUpload requests that reached the server but whose answer the
    # daemon never saw. Nothing else may be left pending.
    orphans = [
        r
        for r in proxy.requests
        if r.method == "POST" and r.query == "uploads" and r.fault and r.upstream_status == 200
    ]
    pending = m.server.uploads(m.bucket)
    assert len(pending) == len(orphans), (pending, orphans)
    assert all(u["Key"].startswith(m.prefix + "create-") for u in pending), pending


def test_failed_upload_noticed_by_a_write_is_aborted(
    s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory
) -> None:
    """A part upload fails in the background and the application's next write(2) reports
    it (EACCES). The file is then closed: the multipart upload must be aborted, as after
    any failed upload (doc/SEMANTICS.md, fsync/close), not left pending."""
    m = mount_factory(s3, endpoint=proxy.url, s3={"chunksize": CHUNK})
    proxy.add_fault("access_denied", method="PUT", query="partNumber=")
    fd = os.open(m.path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            for _ in range(4 * CHUNK // MiB):
                os.write(fd, os.urandom(MiB))
                time.sleep(0.05)  # the refusal of part 1 arrives while the writer writes
        assert info.value.errno == errno.EACCES
    finally:
        expect_errno(errno.EACCES, os.close, fd)
    assert "f" not in m.object_keys()
    assert proxy.faults[0].fired >= 1
    assert wait_until(lambda: s3.uploads(m.bucket) == [], 8), (
        f"multipart upload left pending: {s3.uploads(m.bucket)}\n{m.log()[-3000:]}"
    )


def test_bounded_attempts_with_jittered_exponential_backoff(
    s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory
) -> None:
    """mount.retry_attempts bounds the attempts; the waits between them are
    0.1 s * 2^(n-1), jittered down to half (store._call's schedule)."""
    m = mount_factory(s3, endpoint=proxy.url, mount={"retry_attempts": 4, "retry_time": "30s"})
    names = [f"f{i}" for i in range(4)]
    for name in names:
        proxy.add_fault("slowdown", method="PUT", path=f"/{name}$")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(
            pool.map(lambda n: _errno_of(write_file, m.path / n, b"never stored"), names)
        )
    assert results == [errno.EIO] * 4
    proxy.wait_idle()
    third_gaps = []
    for name in names:
        starts = [r.started for r in proxy.requests if r.method == "PUT" and r.path.endswith(name)]
        assert len(starts) == 4, f"{name}: {len(starts)} attempts, retry_attempts is 4"
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        for n, gap in enumerate(gaps, start=1):
            base = 0.1 * 2 ** (n - 1)
            assert base * 0.5 - 0.02 <= gap <= base + 0.3, f"{name}: wait {n} was {gap:.3f}s"
        third_gaps.append(gaps[2])
    assert max(third_gaps) - min(third_gaps) > 0.005, f"no jitter: {third_gaps}"
    assert m.object_keys() == []


def _errno_of(fn: Callable[..., Any], *args: Any) -> int:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno or -1
    return 0


def test_total_retry_time_is_bounded(
    s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory
) -> None:
    """With 100 attempts allowed, mount.retry_time (2 s) still ends the retrying: a read
    whose answers never come (latency beyond read_timeout) and a write that is always
    throttled both fail with EIO after about retry_time, not after 100 attempts."""
    m = mount_factory(
        s3,
        endpoint=proxy.url,
        mount={"retry_attempts": 100, "retry_time": "2s", "read_timeout": "1s"},
    )
    data = os.urandom(2 * MiB)
    write_file(m.path / "slow", data)
    proxy.add_fault("delay", method="GET", path="/slow$", seconds=6)
    start = time.monotonic()
    expect_errno(errno.EIO, read_all, m.path / "slow")
    took = time.monotonic() - start
    assert took < 2 + 1 + 2.0, f"read failed after {took:.1f}s"
    assert proxy.count("GET", path_contains="/slow") < 10

    proxy.add_fault("slowdown", method="PUT", path="/throttled$")
    start = time.monotonic()
    expect_errno(errno.EIO, write_file, m.path / "throttled", b"x")
    took = time.monotonic() - start
    attempts = proxy.count("PUT", path_contains="/throttled")
    assert took < 2 + 1.5, f"write failed after {took:.1f}s"
    assert 5 <= attempts < 20, f"{attempts} attempts in {took:.1f}s"
    proxy.clear_faults()
    assert read_all(m.path / "slow") == data
    assert "throttled" not in m.object_keys()


def test_a_body_always_cut_is_eio_never_short_bytes(
    s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory
) -> None:
    """Every answer cut half way: a read fails with EIO after the retries, for a small file
    (one whole GET) and a large one (ranged GETs); it never returns the half it got."""
    m = mount_factory(s3, endpoint=proxy.url, mount={"retry_attempts": 3})
    small, big = os.urandom(5000), os.urandom(3 * MiB)
    write_file(m.path / "small", small)
    write_file(m.path / "big", big)
    proxy.add_fault("cut", method="GET", path="/(small|big)$")
    expect_errno(errno.EIO, read_all, m.path / "small")
    expect_errno(errno.EIO, read_all, m.path / "big")
    fd = os.open(m.path / "big", os.O_RDONLY)
    try:
        expect_errno(errno.EIO, os.pread, fd, 100_000, 2 * MiB)
    finally:
        os.close(fd)
    assert proxy.faults[0].fired >= 9
    proxy.clear_faults()
    assert read_all(m.path / "small") == small
    assert read_all(m.path / "big") == big


# -- 10% of all requests fail at random ----------------------------------------------------------

FAULT_RATE = 0.02  # per kind; five kinds tried in turn: 1 - 0.98^5 = 9.6% of requests fail


@dataclass
class Written:
    name: str
    size: int
    seed: int
    how: str  # "cp" or "write"
    digest: str = ""
    ok: bool = False
    error: str = ""
    mid: int = 0  # offset of a successful fsync half way (0: none)

    def data(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)


def _sizes(rng: random.Random) -> list[int]:
    sizes = [0, 1, 4096, MiB, MiB + 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 64 * MiB]
    sizes += [64 * MiB - 1, rng.randint(20 * MiB, 30 * MiB), rng.randint(20 * MiB, 30 * MiB)]
    sizes += [rng.randint(CHUNK, 12 * MiB) for _ in range(8)]
    sizes += [rng.randint(MiB, 4 * MiB) for _ in range(20)]
    sizes += [rng.randint(0, 512 * 1024) for _ in range(200 - len(sizes))]
    rng.shuffle(sizes)
    return sizes


@dataclass(frozen=True)
class Target:
    """Where a writer process writes, and how it looks at S3 directly (picklable)."""

    directory: Path
    src_dir: Path
    endpoint: str
    access_key: str
    secret_key: str
    bucket: str
    prefix: str

    def client(self) -> Any:
        return S3Server("direct", self.endpoint, self.access_key, self.secret_key).client()


def _write_one(item: Written, target: Target) -> Written:
    """Write one file, in a worker process of its own.

    Each writer runs in a process that holds no other file of the mount open: a `cp`
    forked from a process that has another file of the mount open closes that descriptor
    at exec, and the kernel sends FUSE a flush for it, which commits the half-written file
    (correctly: every close is a commit point). That would make every prefix a legitimate
    content of S3 and weaken the check below.
    """
    data = item.data()
    item.digest = sha256(data)
    path = target.directory / item.name
    if item.how == "cp":
        src = target.src_dir / item.name
        src.write_bytes(data)
        done = subprocess.run(
            ["cp", str(src), str(path)], capture_output=True, text=True, check=False
        )
        src.unlink()
        item.ok = done.returncode == 0
        item.error = done.stderr.strip()
        return item
    rng = random.Random(item.seed)
    mid = item.size // 2 if item.size > MiB and rng.random() < 0.5 else 0
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    except OSError as exc:
        item.error = f"open: {exc}"
        return item
    stage = "write"
    try:
        pos = 0
        while pos < item.size:
            end = min(item.size, pos + rng.randint(4096, 3 * MiB))
            if pos < mid <= end:
                end = mid
            os.write(fd, data[pos:end])
            pos = end
            if pos == mid:
                stage = "fsync half way"
                os.fsync(fd)
                # fsync returned 0: the object is the bytes written so far, now
                got = direct_sha(target.client(), target.bucket, target.prefix + item.name)
                assert got == sha256(data[:mid]), f"{item.name}: fsync at {mid} returned 0"
                item.mid = mid
                stage = "write"
        stage = "fsync"
        os.fsync(fd)
        item.ok = True
    except OSError as exc:
        item.error = f"{stage}: {exc}"
    finally:
        try:
            os.close(fd)
        except OSError as exc:
            item.ok = False
            item.error = item.error or f"close: {exc}"
    return item


def _read_back(mount: Mount, item: Written) -> str:
    """'ok', or 'EIO'; wrong or short bytes fail the test."""
    path = mount.path / "files" / item.name
    data = item.data()
    try:
        got = read_all(path, chunk=MiB)
        assert len(got) == item.size, f"{item.name}: read {len(got)} of {item.size} bytes"
        assert sha256(got) == item.digest, f"{item.name}: wrong bytes read"
        if item.size > 8 * MiB:
            rng = random.Random(item.seed + 1)
            fd = os.open(path, os.O_RDONLY)
            try:
                check_random_preads(fd, data, rng, 9 * MiB, item.name)
            finally:
                os.close(fd)
    except OSError as exc:
        assert exc.errno == errno.EIO, f"{item.name}: {exc}"
        return "EIO"
    return "ok"


@pytest.mark.one_server
def test_ten_percent_of_requests_fail_at_random(
    s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """200 files of 0 B .. 64 MiB (about 360 MiB) written with cp and with write+fsync,
    plus registry pushes, while about 10% of all S3 requests fail (fixed seed)."""
    started = time.monotonic()
    for kind, after in [
        ("slowdown", False),
        ("internal", False),
        ("internal", True),
        ("reset", False),
        ("cut", False),
    ]:
        proxy.add_fault(kind, after_upstream=after, probability=FAULT_RATE, seed=SEED + len(kind))
    m = mount_factory(
        s3,
        endpoint=proxy.url,
        s3={"chunksize": CHUNK},
        mount={"read_timeout": "10s", "retry_time": "30s"},
    )
    client = s3.client()
    # the directory exists through a file: an empty mkdir'd directory can vanish meanwhile
    # (test_load.py::test_an_empty_directory_survives_the_kernel_forgetting_it)
    (m.path / "files").mkdir()
    (m.path / "files" / "placeholder").write_bytes(b"")
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    rng = random.Random(SEED)
    items = [
        Written(f"f{i:03d}-{size}", size, SEED * 1000 + i, "cp" if i % 2 else "write")
        for i, size in enumerate(_sizes(rng))
    ]
    assert len(items) == 200

    registry = Registry(m.path, workdir=tmp_path / "registry").start()
    try:
        images = [
            ("faults/app:v1", image(tmp_path, "img1", 1, (7 * MiB, 300_000, 0))),
            ("faults/app:v2", image(tmp_path, "img2", 2, (2 * MiB, 50_000))),
        ]
        pushed: dict[str, tuple[bool, list[str]]] = {}

        def push_all() -> None:
            for n, (ref, _) in enumerate(images, start=1):
                pushed[ref] = push_with_retries(tmp_path / f"img{n}", registry.url, ref, 4)

        pusher = threading.Thread(target=push_all)
        pusher.start()
        target = Target(
            m.path / "files",
            src_dir,
            s3.endpoint,
            s3.access_key,
            s3.secret_key,
            m.bucket,
            m.prefix + "files/",
        )
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(4, mp_context=spawn) as pool:
            items = list(pool.map(_write_one, items, [target] * len(items)))
        pusher.join(timeout=600)
        assert not pusher.is_alive()
        written = time.monotonic()

        # reads, still under faults: right bytes or EIO, never wrong or short
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            reads = list(pool.map(lambda it: _read_back(m, it), [i for i in items if i.ok]))
        for ref, info in images:
            ok, errors = pushed[ref]
            assert ok, f"push of {ref} failed 4 times under 10% faults:\n" + "\n".join(errors)
            pull_and_check(registry.url, ref, info, tmp_path / "pulls" / ref.replace("/", "_"))
    finally:
        registry.stop()
    read_done = time.monotonic()

    # what S3 has, looked at directly (no proxy, no faults)
    fired = sum(r.fired for r in proxy.faults)
    total = len(proxy.requests)
    proxy.clear_faults()
    for item in items:
        got = direct_sha(client, m.bucket, f"{m.prefix}files/{item.name}")
        if item.ok:
            assert got == item.digest, f"{item.name} ({item.how}) returned 0 but S3 has {got}"
        else:
            # failed: no object, the previous version (the half-way fsync), or, when the
            # failed request had taken effect upstream, the whole new content; never else
            allowed = {None, item.digest}
            if item.mid:
                allowed.add(sha256(item.data()[: item.mid]))
            assert got in allowed, (
                f"{item.name} failed ({item.error}) but S3 has "
                f"{describe(client, m.bucket, f'{m.prefix}files/{item.name}', item.data())}"
            )
    names = {f"files/{item.name}" for item in items} | {"files/placeholder"}
    stray = [k for k in m.object_keys() if k not in names and not k.startswith(V2 + "/")]
    assert not stray, stray
    blobs = blob_keys_intact(m)
    log = m.log()
    assert "unexpected error" not in log, log[-5000:]
    assert "upload at close failed" not in log, "an upload failed where no one could be told"
    failed = [f"{i.name}: {i.error}" for i in items if not i.ok]
    print(
        f"\n[{s3.name}] {total} requests, {fired} faults ({100 * fired / max(total, 1):.1f}%); "
        f"{sum(i.size for i in items) / MiB:.0f} MiB in 200 files, {len(failed)} failed "
        f"(errors surfaced: {failed[:5]}), reads: {reads.count('ok')} ok, "
        f"{reads.count('EIO')} EIO; {blobs} blob objects intact; "
        f"write {written - started:.0f}s, read+pull {read_done - written:.0f}s, "
        f"total {time.monotonic() - started:.0f}s"
    )
    assert fired >= 0.05 * total, "far fewer faults than 10%: the test proves little"
    assert len(failed) <= 10, f"too many failures for 5 attempts per request: {failed}"


# -- the S3 server down for 30 s during a push ---------------------------------------------------

OUTAGE = 30.0


@pytest.mark.one_server
def test_server_down_for_30s_during_a_push(
    s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory, tmp_path: Path
) -> None:
    m = mount_factory(s3, endpoint=proxy.url, s3={"chunksize": CHUNK})
    big = image(tmp_path, "big", 7, (40 * MiB, 3 * MiB, 1000))
    with Registry(m.path, workdir=tmp_path / "registry") as registry:
        result: dict[str, str] = {}

        def do_push() -> None:
            try:
                push(tmp_path / "big", registry.url, "outage/app:v1")
                result["ok"] = "pushed"
            except SkopeoError as exc:
                result["error"] = exc.output

        pusher = threading.Thread(target=do_push)
        pusher.start()
        assert wait_until(
            lambda: any(
                r.method == "PUT" and "/_uploads/" in r.path and "partNumber=" in r.query
                for r in proxy.requests
            ),
            60,
            0.01,
        ), "the push never started uploading blob data"
        proxy.down()
        down_at = time.monotonic()
        try:
            # while S3 is down, the mount answers errors promptly instead of hanging
            expect_errno(errno.EIO, write_file, m.path / "probe-while-down", b"x")
            assert time.monotonic() - down_at < 20
            pusher.join(timeout=OUTAGE)
            assert not pusher.is_alive(), "the push hangs while S3 is down"
            assert "error" in result, "the push succeeded although S3 was down"
            assert m.proc is not None and m.proc.poll() is None, "the daemon died"
            time.sleep(max(0.0, down_at + OUTAGE - time.monotonic()))
        finally:
            proxy.up()

        # the mount serves again by itself
        assert wait_until(lambda: _errno_of(write_file, m.path / "probe", b"back") == 0, 30)
        assert m.object("probe") == b"back"
        # nothing partial is visible: no tag, no manifest, every blob object complete
        client = registry.client
        assert client.head_manifest("outage/app", "v1") is None
        keys = m.object_keys()
        assert not [k for k in keys if "/_manifests/" in k], keys
        blob_keys_intact(m)
        assert (
            f"{V2}/blobs/sha256/{big.layer_digests[0][7:9]}/{big.layer_digests[0][7:]}/data"
            not in keys
        ), "the big layer cannot be complete: its upload was cut off"
        # a later push succeeds and pulls back intact
        push(tmp_path / "big", registry.url, "outage/app:v1")
        pull_and_check(registry.url, "outage/app:v1", big, tmp_path / "pull")
        assert blob_keys_intact(m) >= 4  # three layers and the config (and manifests)
    assert "unexpected error" not in m.log()


# -- kill -9 during a large upload ------------------------------------------------------------


def test_kill_9_during_a_large_upload_then_the_janitor_cleans_up(
    s3: S3Server, tmp_path: Path
) -> None:
    """The killed daemon leaves an invisible multipart upload and no object; the next
    daemon's janitor aborts the upload once it is older than mount.janitor_age.

    moto dates every multipart upload 2010-11-10, so there any janitor_age is exceeded at
    once; RGW dates it truly, so the janitor waits until the upload is janitor_age old.
    """
    bucket = s3.new_bucket()
    key = "reg/big"
    first = Mount(
        tmp_path / "first",
        s3,
        bucket,
        s3={"chunksize": CHUNK},
        mount={"janitor_age": "1h"},
    ).start()
    stop = threading.Event()
    outcome: dict[str, Any] = {}

    def writer() -> None:
        block = os.urandom(MiB)
        try:
            with open(first.path / "big", "wb", buffering=0) as f:
                for _ in range(200):
                    if stop.is_set():
                        break
                    f.write(block)
                    time.sleep(0.01)
        except OSError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=writer)
    try:
        thread.start()

        def parts_uploaded() -> bool:
            for upload in uploads_of(s3, bucket, key):
                parts = s3.client().list_parts(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
                if len(parts.get("Parts", [])) >= 2:
                    return True
            return False

        assert wait_until(parts_uploaded, 60), "no parts were uploaded"
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.proc.wait(timeout=30) == -signal.SIGKILL
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
    finally:
        stop.set()
        if first.proc is not None and first.proc.poll() is None:
            first.proc.kill()
        if mounted(first.path):
            subprocess.run(["fusermount3", "-u", "-z", str(first.path)], check=False)
        first.proc = None
    assert outcome.get("error") is not None, "the writer should have seen the daemon die"

    # no partial object is visible; the upload is pending
    assert s3.keys(bucket) == []
    pending = uploads_of(s3, bucket, key)
    assert len(pending) == 1
    initiated = pending[0]["Initiated"]
    if s3.is_rgw:
        assert abs(initiated.timestamp() - time.time()) < 600, initiated
    else:
        assert initiated.year == 2010, f"moto's fixed upload date changed: {initiated}"

    second = Mount(
        tmp_path / "second",
        s3,
        bucket,
        s3={"chunksize": CHUNK},
        mount={"janitor_age": "3s", "janitor_interval": "1s"},
    ).start()
    try:
        assert not (second.path / "big").exists()
        assert os.listdir(second.path) == []
        assert wait_until(lambda: not uploads_of(s3, bucket, key), 30), "upload not aborted"
        # the log line follows the abort's answer: the upload can be gone a moment before it
        aborted = "janitor: aborted a multipart upload of reg/big"
        assert wait_until(lambda: aborted in second.log(), 10)
        if s3.is_rgw:
            # the janitor waited for janitor_age: the upload was at least 3 s old
            assert time.time() - initiated.timestamp() >= 3
    finally:
        assert second.stop() == 0, second.log()[-3000:]
    assert s3.keys(bucket) == [] and s3.uploads(bucket) == []


# -- integrity: bytes changed in flight ----------------------------------------------------


@dataclass
class Exchange:
    """One request/answer through TamperProxy, as seen (and possibly changed) by it."""

    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes
    sent_md5: str = ""  # base64 MD5 of the body as the client sent it
    sent_sha256: str = ""  # hex SHA-256 of the body as the client sent it
    status: int = 0
    reason: str = ""
    resp_headers: list[tuple[str, str]] = field(default_factory=list)
    resp_body: bytes = b""
    tampered: bool = False

    def header(self, name: str, where: str = "request") -> str | None:
        items = self.headers if where == "request" else self.resp_headers
        return next((v for k, v in items if k.lower() == name.lower()), None)

    def set_header(self, name: str, value: str | None) -> None:
        self.resp_headers = [(k, v) for k, v in self.resp_headers if k.lower() != name.lower()]
        if value is not None:
            self.resp_headers.append((name, value))


Hook = Callable[[Exchange], bool]  # changes the exchange; True if it did


class TamperProxy:
    """A small reverse proxy that can change a request body or an answer in flight.

    `S3Proxy` forwards bytes unchanged; this one buffers each message, so a test can flip a
    byte of an upload (`on_request`) or rewrite status, headers and body of an answer
    (`on_response`), each at most `times` times. Request heads are forwarded as received
    (the SigV4 signature covers them), one upstream connection per request.
    """

    _HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "content-length"})

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._hooks: list[tuple[str, Hook, list[int]]] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def handle_one(self) -> None:
                proxy._handle(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> TamperProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def on_request(self, hook: Hook, times: int | None = None) -> None:
        self._add("request", hook, times)

    def on_response(self, hook: Hook, times: int | None = None) -> None:
        self._add("response", hook, times)

    def clear(self) -> None:
        with self._lock:
            self._hooks.clear()

    def _add(self, stage: str, hook: Hook, times: int | None) -> None:
        with self._lock:
            self._hooks.append((stage, hook, [10**9 if times is None else times]))

    def _apply(self, stage: str, ex: Exchange) -> None:
        with self._lock:
            for hook_stage, hook, left in self._hooks:
                if hook_stage == stage and left[0] > 0 and hook(ex):
                    left[0] -= 1
                    ex.tampered = True
                    return

    def _handle(self, req: BaseHTTPRequestHandler) -> None:
        assert "chunked" not in (req.headers.get("Transfer-Encoding") or "")
        length = int(req.headers.get("Content-Length") or 0)
        body = req.rfile.read(length) if length else b""
        path, _, query = req.path.partition("?")
        ex = Exchange(req.command, path, query, list(req.headers.items()), body)
        ex.sent_md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
        ex.sent_sha256 = hashlib.sha256(body).hexdigest()
        with self._lock:
            self.exchanges.append(ex)
        self._apply("request", ex)
        conn = http.client.HTTPConnection(*self._upstream, timeout=120)
        try:
            conn.putrequest(req.command, req.path, skip_host=True, skip_accept_encoding=True)
            for name, value in ex.headers:
                if name.lower() not in ("connection", "keep-alive"):
                    conn.putheader(name, value)
            conn.endheaders(ex.body or None)
            resp = conn.getresponse()
            ex.resp_body = resp.read()
            ex.status, ex.reason = resp.status, resp.reason
            raw_headers = resp.getheaders()
        finally:
            conn.close()
        head_only = req.command == "HEAD" or ex.status in (204, 304)
        ex.resp_headers = [
            (k, v) for k, v in raw_headers if k.lower() not in self._HOP or head_only
        ]
        ex.resp_headers = [(k, v) for k, v in ex.resp_headers if k.lower() != "transfer-encoding"]
        self._apply("response", ex)
        req.send_response_only(ex.status, ex.reason)
        for name, value in ex.resp_headers:
            if name.lower() not in ("connection", "keep-alive"):
                req.send_header(name, value)
        if not head_only:
            req.send_header("Content-Length", str(len(ex.resp_body)))
        req.end_headers()
        if not head_only:
            req.wfile.write(ex.resp_body)
        req.wfile.flush()

    def puts(self, path_end: str) -> list[Exchange]:
        with self._lock:
            return [e for e in self.exchanges if e.method == "PUT" and e.path.endswith(path_end)]


def flip_one_byte(path_end: str, *, parts: bool) -> Hook:
    """Flip a byte in the middle of a PutObject (parts=False) or UploadPart body."""

    def hook(ex: Exchange) -> bool:
        if ex.method != "PUT" or not ex.path.endswith(path_end) or not ex.body:
            return False
        if ("partNumber=" in ex.query) != parts or ex.header("x-amz-copy-source"):
            return False
        middle = len(ex.body) // 2
        ex.body = ex.body[:middle] + bytes([ex.body[middle] ^ 0x01]) + ex.body[middle + 1 :]
        return True

    return hook


def test_uploads_carry_a_checksum_and_corrupt_bytes_are_never_stored(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """One byte of an upload body is flipped on its way to S3.

    Every PutObject and UploadPart carries a checksum of the bytes the daemon meant to send
    that the server can verify: Content-MD5, or the SigV4 signed payload hash
    (x-amz-content-sha256, which the signature covers). Checked on both servers. RGW
    verifies it: the corrupted request fails (BadDigest / XAmzContentSHA256Mismatch), the
    daemon retries (a single corruption) or reports EIO (persistent corruption), and the
    corrupt bytes are never stored. moto verifies NEITHER: it stores what it received, so
    there the test only shows the difference (the guarantee rests on the server checking).
    """
    with TamperProxy(s3.endpoint) as tamper:
        m = mount_factory(s3, endpoint=tamper.url, s3={"chunksize": CHUNK})
        small, large = os.urandom(10_000), os.urandom(2 * CHUNK + 123)
        flipped_small = bytearray(small)
        flipped_small[len(small) // 2] ^= 1

        tamper.on_request(flip_one_byte("/once-put", parts=False), times=1)
        tamper.on_request(flip_one_byte("/once-part", parts=True), times=1)
        tamper.on_request(flip_one_byte("/always-put", parts=False))
        tamper.on_request(flip_one_byte("/always-part", parts=True))
        write_file(m.path / "once-put", small)
        write_file(m.path / "once-part", large)
        always_put = _errno_of(write_file, m.path / "always-put", small)
        always_part = _errno_of(write_file, m.path / "always-part", large)
        tamper.clear()

        for ex in tamper.puts(""):
            if ex.body and not ex.header("x-amz-copy-source"):
                md5, sha = ex.header("Content-MD5"), ex.header("x-amz-content-sha256")
                assert md5 == ex.sent_md5 or sha == ex.sent_sha256, (
                    f"{ex.path}?{ex.query}: no checksum of the body "
                    f"(Content-MD5 {md5!r}, x-amz-content-sha256 {sha!r})"
                )
        assert all(e.tampered for e in tamper.puts("/always-put"))

        if s3.is_rgw:
            assert m.object("once-put") == small
            assert m.object("once-part") == large
            assert [e.status for e in tamper.puts("/once-put")] == [400, 200], "refused, retried"
            assert always_put == errno.EIO and always_part == errno.EIO
            keys = m.object_keys()
            assert "always-put" not in keys and "always-part" not in keys
            assert wait_until(lambda: s3.uploads(m.bucket) == [], 10), "failed upload not aborted"
        else:
            # moto accepts a body that does not match its Content-MD5: the corrupted
            # requests succeed. The object then holds the corrupted bytes, unless the
            # daemon noticed by itself (the ETag of a plain upload is the MD5 of what the
            # server stored) and uploaded again: never anything else.
            assert next(e.status for e in tamper.puts("/once-put")) == 200
            assert m.object("once-put") in (small, bytes(flipped_small))
            if always_put == 0:
                assert m.object("always-put") in (small, bytes(flipped_small))
            else:
                assert "always-put" not in m.object_keys()
            assert one_bit_apart_or_equal(m.object("once-part"), large)


def one_bit_apart_or_equal(a: bytes, b: bytes) -> bool:
    if len(a) != len(b):
        return False
    x = int.from_bytes(a) ^ int.from_bytes(b)
    return x & (x - 1) == 0


def _range_of(ex: Exchange) -> tuple[int, int, str] | None:
    value = ex.header("Content-Range", "response")
    if ex.method != "GET" or ex.status != 206 or not value:
        return None
    span, _, total = value.removeprefix("bytes ").partition("/")
    first, _, last = span.partition("-")
    return int(first), int(last), total


def shifted_range(path_end: str) -> Hook:
    """A 206 that claims to start one byte later than asked (same length)."""

    def hook(ex: Exchange) -> bool:
        rng = _range_of(ex)
        if rng is None or not ex.path.endswith(path_end):
            return False
        first, last, total = rng
        ex.set_header("Content-Range", f"bytes {first + 1}-{last + 1}/{total}")
        return True

    return hook


def short_body(path_end: str, *, fix_range: bool) -> Hook:
    """A 206 whose body is half as long as the range asked for; Content-Length matches the
    body, Content-Range either still claims the whole range or is made to match."""

    def hook(ex: Exchange) -> bool:
        rng = _range_of(ex)
        if rng is None or not ex.path.endswith(path_end) or len(ex.resp_body) < 2:
            return False
        first, _, total = rng
        ex.resp_body = ex.resp_body[: len(ex.resp_body) // 2]
        if fix_range:
            ex.set_header("Content-Range", f"bytes {first}-{first + len(ex.resp_body) - 1}/{total}")
        return True

    return hook


def range_as_200(path_end: str) -> Hook:
    """A ranged GET answered 200 without Content-Range (as if the range were ignored)."""

    def hook(ex: Exchange) -> bool:
        rng = _range_of(ex)
        if rng is None or not ex.path.endswith(path_end) or rng[0] == 0:
            return False
        ex.status, ex.reason = 200, "OK"
        ex.set_header("Content-Range", None)
        return True

    return hook


def whole_as_206(path_end: str) -> Hook:
    """A whole-object GET answered 206."""

    def hook(ex: Exchange) -> bool:
        if ex.method != "GET" or ex.status != 200 or not ex.path.endswith(path_end):
            return False
        if ex.header("Range") is not None:
            return False
        ex.status, ex.reason = 206, "Partial Content"
        ex.set_header("Content-Range", f"bytes 0-{len(ex.resp_body) - 1}/{len(ex.resp_body)}")
        return True

    return hook


TAMPERS: dict[str, Callable[[str], Hook]] = {
    "shifted-range": shifted_range,
    "short-body": lambda p: short_body(p, fix_range=False),
    "short-body-and-range": lambda p: short_body(p, fix_range=True),
    "range-as-200": range_as_200,
    "whole-as-206": whole_as_206,
}


def test_get_answers_are_checked_before_any_byte_is_handed_out(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """Answers whose status, length or range is not what was asked for are refused: once,
    the read is retried and returns the right bytes; always, the read fails with EIO. No
    read ever returns a byte from the wrong place."""
    with TamperProxy(s3.endpoint) as tamper:
        m = mount_factory(s3, endpoint=tamper.url, mount={"retry_attempts": 3})
        big, small = os.urandom(3 * MiB + 10), os.urandom(3000)
        for name in TAMPERS:
            for how in ("once", "always"):
                write_file(m.path / f"{name}-{how}", small if name == "whole-as-206" else big)
        for name, make in TAMPERS.items():
            data = small if name == "whole-as-206" else big
            offset = 0 if name == "whole-as-206" else 2 * MiB + 7
            for how, times in (("once", 1), ("always", None)):
                target = f"{name}-{how}"
                tamper.on_response(make(f"/{target}"), times=times)
                fd = os.open(m.path / target, os.O_RDONLY)
                try:
                    if how == "once":
                        assert os.pread(fd, 200_000, offset) == data[offset : offset + 200_000]
                    else:
                        expect_errno(errno.EIO, os.pread, fd, 200_000, offset)
                finally:
                    os.close(fd)
                hits = [e for e in tamper.exchanges if e.tampered and e.path.endswith(target)]
                assert hits, f"{target}: the tamper never applied"
                tamper.clear()
                assert read_all(m.path / target) == data, target
    log = m.log()
    assert "unexpected error" not in log, log[-4000:]


def s3_error(status: int, code: str, message: str) -> Hook:
    """Replace an answer with an S3 error (after the request took effect upstream)."""

    def apply(ex: Exchange) -> None:
        ex.status, ex.reason = status, "Error"
        ex.resp_headers = [("Content-Type", "application/xml"), ("x-amz-request-id", "TAMPER")]
        ex.resp_body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{ex.path}</Resource><RequestId>TAMPER</RequestId></Error>"
        ).encode()
        if ex.method == "HEAD":
            ex.resp_headers = [("Content-Length", "0")]

    return apply


def when(method: str, path_end: str, query: str, apply: Callable[[Exchange], None]) -> Hook:
    def hook(ex: Exchange) -> bool:
        if ex.method != method or not ex.path.endswith(path_end) or query not in ex.query:
            return False
        apply(ex)
        return True

    return hook


@pytest.mark.parametrize("check_fails_once", [False, True], ids=["check-ok", "check-fails-once"])
def test_retried_complete_that_took_effect_is_recognised(
    s3: S3Server, mount_factory: MountFactory, check_fails_once: bool
) -> None:
    """CompleteMultipartUpload takes effect but its answer is a 500; the retry is answered
    NoSuchUpload, as AWS S3 answers once the upload is complete. The daemon must see that
    the object is the one it completed (HEAD, multipart ETag) and report success.

    Both moto and RGW answer a repeated CompleteMultipartUpload with 200, which never
    exercises this branch; the NoSuchUpload is therefore put in by TamperProxy. With
    `check-fails-once` the daemon's HEAD meets one fault (a 500), as any request may under
    faults: it must be retried like every other request, not turned into an EIO for an
    upload that is complete in S3."""
    with TamperProxy(s3.endpoint) as tamper:
        m = mount_factory(s3, endpoint=tamper.url, s3={"chunksize": CHUNK})
        data = os.urandom(CHUNK + 1000)
        internal = s3_error(500, "InternalError", "We encountered an internal error.")
        gone = s3_error(404, "NoSuchUpload", "The specified upload does not exist.")
        tamper.on_response(when("POST", "/f", "uploadId=", internal), times=1)
        tamper.on_response(when("POST", "/f", "uploadId=", gone), times=1)
        if check_fails_once:
            tamper.on_response(when("HEAD", "/f", "", internal), times=1)
        result = _errno_of(lambda: write_file(m.path / "f", data, fsync=True))
        posts = [e for e in tamper.exchanges if e.method == "POST" and "uploadId=" in e.query]
        assert [e.tampered for e in posts] == [True, True], "the scenario did not happen"
        assert m.object("f") == data, "the upload did take effect"
        assert result == 0, (
            f"close/fsync failed ({errno.errorcode.get(result)}) for an object complete in "
            f"S3\n{m.log()[-3000:]}"
        )
