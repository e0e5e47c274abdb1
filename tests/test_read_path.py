"""The read path's parallel ranged GETs, through a counting, delaying, faulting proxy.

What a reader gets is exactly the file's bytes, whatever ranges were in flight (sizes and
offsets around part and window edges), or an error: ESTALE when the file was replaced
during the read, EIO when a range kept failing, never bytes of another version, out of
order or short. A sequential reader opens several GETs at once on a slow link, but never
more than the settings allow, and many readers stay within the memory budget.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from collections.abc import Iterator

import pytest

from tests.conftest import MountFactory
from tests.mounts import Mount, S3Server
from tests.s3proxy import RequestRecord, S3Proxy
from tests.test_load import status_kib

MiB = 1024 * 1024
PART = 5 * MiB  # chunksize: ranges grow to 10 MiB, two parts
SEGMENT = 10 * MiB
MAX_CONNECTIONS = 8  # 4 read slots: at most 3 read-ahead GETs, 4 GETs at all


@pytest.fixture(scope="module")
def proxy(moto: S3Server) -> Iterator[S3Proxy]:
    with S3Proxy(moto.endpoint, delay=0.02) as p:  # a 40 ms round trip: streams pay
        yield p


@pytest.fixture(scope="module")
def pm(moto: S3Server, proxy: S3Proxy, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    mount = Mount(
        tmp_path_factory.mktemp("read"),
        moto,
        moto.new_bucket(),
        endpoint=proxy.url,
        s3={"chunksize": PART},
        mount={"max_connections": MAX_CONNECTIONS, "retry_attempts": 4, "retry_time": "10s"},
    ).start()
    yield mount
    assert mount.stop() == 0, mount.log()[-4000:]


@pytest.fixture(scope="module")
def big(pm: Mount) -> bytes:
    """A file of a few ranges and an odd tail, written behind the mount."""
    data = random.Random(11).randbytes(3 * SEGMENT + 3 * MiB + 12345)
    pm.server.put(pm.bucket, pm.prefix + "big", data)
    return data


def overlap(records: list[RequestRecord]) -> int:
    """Most requests that were in flight at the same moment."""
    events = sorted(
        [(r.started, 1) for r in records] + [(r.started + r.duration, -1) for r in records]
    )
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_sequential_reads_are_exact_and_parallel_within_the_settings(
    pm: Mount, proxy: S3Proxy, big: bytes
) -> None:
    for bs in (MiB, 131072 + 7, 3 * MiB + 1):
        os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
        proxy.reset_counts()
        with open(pm.path / "big", "rb", buffering=0) as f:
            got = b"".join(iter(lambda bs=bs: f.read(bs), b""))
        assert hashlib.sha256(got).digest() == hashlib.sha256(big).digest(), f"bs={bs}"
        assert proxy.wait_idle()
        gets = [r for r in proxy.requests if r.method == "GET" and r.path.endswith("/big")]
        assert overlap(gets) <= MAX_CONNECTIONS // 2, "more GETs at once than read slots"
    assert overlap(gets) >= 2, "a sequential reader keeps several ranges in flight"


def test_a_random_read_costs_small_gets(pm: Mount, proxy: S3Proxy, big: bytes) -> None:
    os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
    fd = os.open(pm.path / "big", os.O_RDONLY)
    try:
        proxy.reset_counts()
        assert os.pread(fd, 4096, 2 * SEGMENT + 12345) == big[2 * SEGMENT + 12345 :][:4096]
    finally:
        os.close(fd)
    assert proxy.wait_idle()
    gets = [r for r in proxy.requests if r.method == "GET" and r.path.endswith("/big")]
    # the kernel's own read-ahead (1 MiB) may add a second small GET; no range grows
    sizes = [g.bytes_out for g in gets]
    assert 1 <= len(gets) <= 2 and max(sizes) <= 1152 * 1024, sizes


def test_random_reads_around_range_and_window_edges(pm: Mount, big: bytes) -> None:
    edges = [0, 1, 1152 * 1024, 4 * MiB + 640 * 1024, PART, SEGMENT, 2 * SEGMENT, len(big)]
    offsets = [max(0, e + d) for e in edges for d in (-4097, -1, 0, 1, 4096)]
    rng = random.Random(5)
    offsets += [rng.randrange(len(big)) for _ in range(20)]
    fd = os.open(pm.path / "big", os.O_RDONLY)
    try:
        for offset in offsets:
            size = rng.choice([1, 4096, 128 * 1024 + 3, MiB, 2 * MiB + 5, SEGMENT + 1])
            assert os.pread(fd, size, offset) == big[offset : offset + size], (offset, size)
    finally:
        os.close(fd)


def test_failed_ranges_are_retried_alone_or_eio_never_wrong_bytes(
    pm: Mount, proxy: S3Proxy, big: bytes
) -> None:
    os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
    proxy.reset_counts()
    proxy.add_fault("cut", method="GET", path="/big$", probability=0.3, seed=3)
    proxy.add_fault("internal", method="GET", path="/big$", probability=0.2, seed=4)
    try:
        with open(pm.path / "big", "rb", buffering=0) as f:
            assert f.read() == big
    finally:
        proxy.clear_faults()
    assert sum(1 for r in proxy.requests if r.fault) >= 2, "faults fired"

    os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
    with open(pm.path / "big", "rb", buffering=0) as f:
        head = f.read(2 * MiB)
        proxy.add_fault("cut", method="GET", path="/big$")
        try:
            got, code = bytearray(head), 0
            try:
                while piece := f.read(MiB):
                    got += piece
            except OSError as exc:
                code = exc.errno or 0
        finally:
            proxy.clear_faults()
    assert code == errno.EIO, "a range that keeps failing is EIO"
    assert bytes(got) == big[: len(got)], "what came before the error is right"


def test_a_file_replaced_during_a_read_is_estale(pm: Mount, big: bytes) -> None:
    old = random.Random(7).randbytes(len(big))
    pm.server.put(pm.bucket, pm.prefix + "replaced", old)
    new = random.Random(8).randbytes(len(big))
    os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
    with open(pm.path / "replaced", "rb", buffering=0) as f:
        got = bytearray(f.read(MiB))
        pm.server.put(pm.bucket, pm.prefix + "replaced", new)
        with pytest.raises(OSError) as info:
            while piece := f.read(MiB):
                got += piece
    assert info.value.errno == errno.ESTALE
    assert bytes(got) == old[: len(got)], "only bytes of the version opened"


def test_many_readers_stay_within_the_memory_budget(
    moto: S3Server, mount_factory: MountFactory
) -> None:
    """16 readers of 24 MiB files at once on a slow link, with a 48 MiB memory budget: the
    daemon's peak RSS stays below its RSS at start + the budget + 1.125 MiB per reader
    (what a waiting read may take beyond the budget) + 32 MiB for the runtime; every byte
    is right."""
    budget, readers = 48 * MiB, 16
    with S3Proxy(moto.endpoint, delay=0.01) as proxy:
        m = mount_factory(
            moto,
            endpoint=proxy.url,
            s3={"chunksize": PART},
            mount={"memory_budget": budget, "metadata_ttl": "30s"},
        )
        assert m.proc is not None
        files = {f"f{i}": random.Random(i).randbytes(24 * MiB + i) for i in range(4)}
        for name, data in files.items():
            m.server.put(m.bucket, m.prefix + name, data)
        os.listdir(m.path)
        baseline = status_kib(m.proc.pid, "VmRSS") * 1024
        errors: list[str] = []

        def reader(n: int) -> None:
            name = f"f{n % len(files)}"
            try:
                with open(m.path / name, "rb", buffering=0) as f:
                    if f.read() != files[name]:
                        errors.append(f"reader {n}: wrong bytes")
            except OSError as exc:
                errors.append(f"reader {n}: {exc}")

        os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
        threads = [threading.Thread(target=reader, args=(n,)) for n in range(readers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        peak = status_kib(m.proc.pid, "VmHWM") * 1024
    assert not any(t.is_alive() for t in threads), "readers hang"
    assert not errors, errors[:5]
    limit = baseline + budget + readers * (MiB + 128 * 1024) + 32 * MiB
    assert peak <= limit, f"peak RSS {peak / MiB:.0f} MiB > {limit / MiB:.0f} MiB"


def test_too_short_a_range_is_never_handed_on(pm: Mount, proxy: S3Proxy, big: bytes) -> None:
    """A body cut short once is fetched again: the reader sees the right bytes."""
    os.system("sync; echo 1 > /proc/sys/vm/drop_caches")
    proxy.add_fault("cut", method="GET", path="/big$", times=3)
    fd = os.open(pm.path / "big", os.O_RDONLY)
    try:
        assert os.pread(fd, 3 * MiB, SEGMENT - MiB) == big[SEGMENT - MiB : SEGMENT + 2 * MiB]
    finally:
        os.close(fd)
        proxy.clear_faults()
