"""The local blob cache (`mount.cache_dir`): real mounts on the moto server.

Blobs are put into the bucket at their digest paths, read through the mount, and the
daemon's metrics say where the bytes came from (cache hits and misses, GetObject calls).
Between reads the kernel's page cache of the file is dropped (POSIX_FADV_DONTNEED), so
that each read reaches the daemon.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MountFactory
from tests.mounts import REPO, Mount, S3Server, expect_errno, free_port, read_all, wait_until
from tests.s3proxy import S3Proxy
from tests.test_metrics import Samples, scrape

MiB = 1024 * 1024
BLOBS = "docker/registry/v2/blobs"


def put_blob(server: S3Server, bucket: str, prefix: str, data: bytes) -> str:
    """Store `data` at its digest path under `prefix`; returns the path relative to it."""
    hexdigest = hashlib.sha256(data).hexdigest()
    rel = f"{BLOBS}/sha256/{hexdigest[:2]}/{hexdigest}/data"
    server.put(bucket, prefix + rel, data)
    return rel


def uncached_read(path: Path) -> bytes:
    """Read the whole file after dropping the kernel's cached pages of it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return read_all(path)


def value(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= set(ls))


class Cached:
    """A mount with the blob cache and its metrics endpoint."""

    def __init__(self, mount: Mount, port: int, cache_dir: Path) -> None:
        self.mount, self.port, self.cache_dir = mount, port, cache_dir

    def figures(self) -> dict[str, float]:
        samples = scrape(self.port)
        names = ["hits", "misses", "evictions", "verification_failures", "write_errors"]
        got = {n: value(samples, f"s3fs_registry_blob_cache_{n}_total") for n in names}
        got["gets"] = value(
            samples, "s3fs_registry_s3_requests_total", operation="GetObject", outcome="ok"
        )
        got["size"] = value(samples, "s3fs_registry_blob_cache_size_bytes")
        got["entries"] = value(samples, "s3fs_registry_blob_cache_entries")
        return got

    def read(self, rel: str) -> bytes:
        """Read a whole file with the page cache dropped, then wait until the fill it may
        have started is done (its reader may finish first: it is served from memory)."""
        data = uncached_read(self.mount.path / rel)

        def idle() -> bool:
            return value(scrape(self.port), "s3fs_registry_blob_cache_fills") == 0

        assert wait_until(idle, 10)
        return data

    def files(self) -> list[Path]:
        return sorted(p for p in self.cache_dir.rglob("sha256-*") if not p.name.endswith(".crc"))


def cached_mount(
    factory: MountFactory,
    server: S3Server,
    bucket: str,
    cache_dir: Path,
    size: int = 64 * MiB,
    s3: dict[str, Any] | None = None,
    endpoint: str | None = None,
    **mount: Any,
) -> Cached:
    cache_dir.mkdir(exist_ok=True)
    port = free_port()
    m = factory(
        server,
        bucket,
        s3=s3,
        endpoint=endpoint,
        mount={
            "cache_dir": str(cache_dir),
            "cache_size": size,
            "metrics_addr": f":{port}",
            **mount,
        },
    )
    return Cached(m, port, cache_dir)


def test_hits_misses_eviction_and_restart(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """Misses fill, hits need no GET, the least recently used blob goes first, the cache
    stays under its size, and a restarted daemon serves what the last one kept."""
    bucket = moto.new_bucket()
    blobs = [os.urandom(3 * MiB + i * 1000) for i in range(3)]
    rels = [put_blob(moto, bucket, "reg/", b) for b in blobs]
    size = 7 * MiB  # room for two blobs, not three
    c = cached_mount(mount_factory, moto, bucket, tmp_path / "cache", size)

    assert c.read(rels[0]) == blobs[0]
    assert c.read(rels[1]) == blobs[1]
    before = c.figures()
    assert (before["misses"], before["hits"], before["entries"]) == (2, 0, 2)
    assert c.read(rels[0]) == blobs[0]  # a hit; blob 1 is now least recently used
    after = c.figures()
    assert (after["hits"], after["gets"]) == (1, before["gets"])

    assert c.read(rels[2]) == blobs[2]  # evicts blob 1
    figures = c.figures()
    assert figures["evictions"] == 1 and figures["entries"] == 2
    assert 0 < figures["size"] <= size
    names = {p.name for p in c.files()}
    digest = [r.split("/")[-2] for r in rels]
    assert names == {f"sha256-{digest[0]}", f"sha256-{digest[2]}"}
    assert sum(p.stat().st_size for p in c.cache_dir.rglob("*")) <= size

    assert c.mount.stop() == 0
    c = cached_mount(mount_factory, moto, bucket, tmp_path / "cache", size)
    for i in (0, 2):
        assert c.read(rels[i]) == blobs[i]
    figures = c.figures()
    assert (figures["hits"], figures["misses"], figures["gets"]) == (2, 0, 0)

    # a data file truncated while no daemon runs is found at start, by its size
    assert c.mount.stop() == 0
    os.truncate(next(c.cache_dir.rglob(f"sha256-{digest[2]}")), MiB)
    c = cached_mount(mount_factory, moto, bucket, tmp_path / "cache", size)
    assert c.figures()["verification_failures"] == 1 and c.figures()["entries"] == 1
    assert c.read(rels[2]) == blobs[2]
    assert (c.figures()["misses"], c.figures()["entries"]) == (1, 2)


def test_damaged_files_are_detected_and_read_from_s3(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """A flipped byte and a truncated cache file are found before a byte is served; the
    right bytes come from S3, and the blob is cached again by the next full read."""
    bucket = moto.new_bucket()
    blobs = [os.urandom(2 * MiB + 17), os.urandom(2 * MiB + 33)]
    rels = [put_blob(moto, bucket, "reg/", b) for b in blobs]
    c = cached_mount(mount_factory, moto, bucket, tmp_path / "cache")
    for rel, blob in zip(rels, blobs, strict=True):
        assert c.read(rel) == blob
    flipped, truncated = c.files()[0], c.files()[1]
    with open(flipped, "r+b") as f:
        f.seek(MiB + 5)
        byte = f.read(1)
        f.seek(MiB + 5)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.truncate(truncated, MiB + 100)
    before = c.figures()
    for rel, blob in zip(rels, blobs, strict=True):
        assert c.read(rel) == blob
    after = c.figures()
    assert after["verification_failures"] - before["verification_failures"] == 2
    assert after["gets"] > before["gets"]
    for rel, blob in zip(rels, blobs, strict=True):  # filled again, then served whole
        assert c.read(rel) == blob
    assert c.read(rels[0]) == blobs[0]
    assert c.figures()["verification_failures"] == after["verification_failures"]


def test_a_blob_whose_bytes_do_not_match_its_digest_is_served_but_not_kept(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """The cache serves only what S3 has; it keeps only what matches the path's digest.
    Two prefixes on one cache directory: one holds the real blob, the other other bytes
    at the same path; neither mount ever sees the other's."""
    bucket = moto.new_bucket()
    real = os.urandom(MiB + 3)
    rel = put_blob(moto, bucket, "a/", real)
    wrong = os.urandom(MiB + 3)
    moto.put(bucket, "b/" + rel, wrong)
    cache_dir = tmp_path / "cache"
    a = cached_mount(mount_factory, moto, bucket, cache_dir, s3={"rootdirectory": "/a"})
    b = cached_mount(mount_factory, moto, bucket, cache_dir, s3={"rootdirectory": "/b"})
    assert a.read(rel) == real
    for _ in range(2):
        assert b.read(rel) == wrong
    assert b.figures()["verification_failures"] == 2  # the digest never matched: not kept
    assert b.figures()["entries"] == 0 and b.figures()["hits"] == 0
    assert a.read(rel) == real
    assert a.figures()["hits"] == 1
    subdirs = sorted(p for p in cache_dir.iterdir() if p.is_dir())
    assert len(subdirs) == 2
    identities = [json.loads((s / "IDENTITY").read_text())["prefix"] for s in subdirs]
    assert sorted(identities) == ["a/", "b/"]


def test_gc_on_another_mount_drops_the_blob_within_the_ttl(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """A blob removed through another mount is unreadable here once `immutable_ttl` has
    passed, and its cached copy is deleted."""
    bucket = moto.new_bucket()
    blobs = [os.urandom(MiB + 1), os.urandom(MiB + 2)]
    rels = [put_blob(moto, bucket, "reg/", b) for b in blobs]
    c = cached_mount(mount_factory, moto, bucket, tmp_path / "cache", immutable_ttl="1s")
    other = mount_factory(moto, bucket)
    for rel, blob in zip(rels, blobs, strict=True):
        assert c.read(rel) == blob
    assert len(c.files()) == 2
    # the registry's garbage collector removes the blob's directory
    subprocess.run(["rm", "-r", str((other.path / rels[0]).parent)], check=True)
    assert wait_until(lambda: not (c.mount.path / rels[0]).exists(), timeout=10)
    expect_errno(errno.ENOENT, os.open, c.mount.path / rels[0], os.O_RDONLY)
    assert [p.name for p in c.files()] == [f"sha256-{rels[1].split('/')[-2]}"]
    assert c.figures()["entries"] == 1
    # the last blob goes too: then the whole tree is gone from S3
    subprocess.run(["rm", "-r", str(other.path / "docker")], check=True)
    assert wait_until(lambda: not (c.mount.path / rels[1]).exists(), timeout=10)
    assert c.files() == []


def test_a_full_cache_directory_degrades_to_uncached_reads(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """A cache directory on a 2 MiB tmpfs, told it may use 64 MiB: the fill of a 3 MiB blob
    hits ENOSPC; every read still returns S3's bytes, the cache then keeps what fits."""
    cache_dir = tmp_path / "tiny"
    cache_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(cache_dir)], check=True)
    c: Cached | None = None
    try:
        bucket = moto.new_bucket()
        big, small = os.urandom(3 * MiB), os.urandom(MiB // 2)
        big_rel = put_blob(moto, bucket, "reg/", big)
        small_rel = put_blob(moto, bucket, "reg/", small)
        c = cached_mount(mount_factory, moto, bucket, cache_dir)
        for _ in range(2):
            assert c.read(big_rel) == big
        figures = c.figures()
        assert figures["write_errors"] == 1 and figures["entries"] == 0
        assert c.read(small_rel) == small  # fits: kept
        assert c.read(small_rel) == small
        assert c.figures()["hits"] == 1
        status = subprocess.run(
            [sys.executable, "-m", "s3fs_registry", "status", str(c.mount.path)],
            capture_output=True,
            text=True,
            cwd=REPO,
            check=True,
        ).stdout
        assert "blob cache:" in status and "(lowered: disk full)" in status, status
    finally:
        if c is not None:
            assert c.mount.stop() == 0  # the daemon holds the cache's lock file open
        subprocess.run(["umount", str(cache_dir)], check=True)


def test_concurrent_readers_share_one_fill(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """Readers of one cold blob at once all get its bytes, from one fill: as many GETs as
    one reader of another blob of that size costs."""
    readers = 4
    bucket = moto.new_bucket()
    blob, alone = os.urandom(12 * MiB + 5), os.urandom(12 * MiB + 5)
    rel, alone_rel = put_blob(moto, bucket, "reg/", blob), put_blob(moto, bucket, "reg/", alone)
    c = cached_mount(mount_factory, moto, bucket, tmp_path / "cache")
    assert c.read(alone_rel) == alone
    one_fill = c.figures()["gets"]
    results: list[bytes] = []

    def read() -> None:
        fd = os.open(c.mount.path / rel, os.O_RDONLY | os.O_DIRECT)
        try:
            pieces = []
            while piece := os.read(fd, MiB):
                pieces.append(piece)
            results.append(b"".join(pieces))
        finally:
            os.close(fd)

    threads = [threading.Thread(target=read) for _ in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [blob] * readers
    figures = c.figures()
    assert (figures["entries"], figures["misses"]) == (2, readers + 1)
    assert figures["gets"] == 2 * one_fill
    assert c.read(rel) == blob
    assert c.figures()["gets"] == figures["gets"]


def test_one_cache_directory_per_daemon(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """A second daemon of the same bucket and prefix on the same cache directory does not
    start (exit 2, saying why)."""
    bucket = moto.new_bucket()
    cached_mount(mount_factory, moto, bucket, tmp_path / "cache")
    second = Mount(tmp_path / "second", moto, bucket, mount={"cache_dir": str(tmp_path / "cache")})
    with pytest.raises(RuntimeError, match="in use by another daemon"):
        second.start()
    assert second.stop() == 2


def test_a_cold_blob_does_not_hold_up_a_warm_one(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """While the fill of one blob waits for S3, a cached blob is served at once."""
    bucket = moto.new_bucket()
    warm, cold = os.urandom(4 * MiB), os.urandom(2 * MiB)
    warm_rel, cold_rel = put_blob(moto, bucket, "reg/", warm), put_blob(moto, bucket, "reg/", cold)
    cold_hex = cold_rel.split("/")[-2]
    with S3Proxy(moto.endpoint) as proxy:
        c = cached_mount(mount_factory, moto, bucket, tmp_path / "cache", endpoint=proxy.url)
        assert c.read(warm_rel) == warm
        proxy.add_fault("delay", method="GET", path=f"{cold_hex}/data$", seconds=4, times=1)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(read_all(c.mount.path / cold_rel)))
        reader.start()
        try:
            assert wait_until(
                lambda: any(r.method == "GET" and cold_hex in r.path for r in proxy.requests),
                timeout=10,
            )
            started = time.monotonic()
            assert uncached_read(c.mount.path / warm_rel) == warm  # (c.read waits for fills)
            assert time.monotonic() - started < 1.5
            assert reader.is_alive()  # the cold read still waits for S3
        finally:
            reader.join()
        assert got == [cold]
        assert c.figures()["hits"] == 1
        assert c.mount.stop() == 0


def test_a_failed_fill_keeps_nothing(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """S3 fails the blob's GETs beyond the retries: the reader gets S3's bytes or S3's
    error (EIO), never a partial copy; nothing is kept, and the next read fills it."""
    bucket = moto.new_bucket()
    blob = os.urandom(24 * MiB)
    rel = put_blob(moto, bucket, "reg/", blob)
    hexdigest = rel.split("/")[-2]
    with S3Proxy(moto.endpoint) as proxy:
        c = cached_mount(
            mount_factory,
            moto,
            bucket,
            tmp_path / "cache",
            endpoint=proxy.url,
            retry_attempts=2,
            retry_time="2s",
        )
        proxy.add_fault("internal", method="GET", path=f"{hexdigest}/data$", times=6)
        try:
            assert c.read(rel) == blob
        except OSError as exc:
            assert exc.errno == errno.EIO  # S3 failed this reader's GETs too
        assert c.figures()["entries"] == 0 and c.files() == []
        assert c.read(rel) == blob  # the faults are spent: filled whole
        assert [p.name for p in c.files()] == [f"sha256-{hexdigest}"]
        assert c.read(rel) == blob and c.figures()["hits"] == 1
        assert c.mount.stop() == 0
