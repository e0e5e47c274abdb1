"""Shutdown and load: nothing dirty is lost at exit, memory stays within the budget, many
readers get the right bytes, a full spool is ENOSPC at write() and never a truncated object.

Tests run on moto and on Ceph RGW (the `s3` fixture), except the one that does not depend
on the server (moto only, said so). `test_an_empty_directory_survives_the_kernel_forgetting_it`
writes `2` to /proc/sys/vm/drop_caches: it drops every unused dentry and inode of the
machine (harmless to correct file systems, and it needs root).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MountFactory
from tests.mounts import (
    Mount,
    S3Server,
    check_random_preads,
    expect_errno,
    wait_until,
    write_file,
)
from tests.s3proxy import S3Proxy

MiB = 1024 * 1024
CHUNK = 5 * MiB


def write_until_error(fd: int, data: bytes, offset: int) -> tuple[int, OSError | None]:
    """pwrite all of `data`, as an application would: a short write is followed by another
    write of the rest, whose error is the answer. Returns (bytes accepted, the error)."""
    done = 0
    while done < len(data):
        try:
            done += os.pwrite(fd, data[done:], offset + done)
        except OSError as exc:
            return done, exc
    return done, None


def status_kib(pid: int, field: str) -> int:
    """A `VmHWM`/`VmRSS`-style line of /proc/<pid>/status, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def in_proc_mounts(path: Path) -> bool:
    with open("/proc/mounts") as f:
        return any(line.split()[1] == str(path) for line in f)


# -- shutdown: SIGTERM, fusermount3 -u, umount ------------------------------------------------

_RUNNER = """
import json, subprocess, sys
for line in sys.stdin:
    done = subprocess.run(json.loads(line), capture_output=True, text=True, check=False)
    print(json.dumps([done.returncode, done.stderr]), flush=True)
"""


class Runner:
    """Runs commands (umount, fusermount3) from a process started before the test opened
    any file of the mount.

    A command forked from the test process itself would inherit the test's open files of
    the mount and close them at exec; the kernel sends FUSE a flush for each, which commits
    them: they would no longer be dirty when the unmount comes."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _RUNNER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, *argv: str) -> tuple[int, str]:
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(json.dumps(list(argv)) + "\n")
        self._proc.stdin.flush()
        code, stderr = json.loads(self._proc.stdout.readline())
        return int(code), str(stderr)

    def close(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.wait(timeout=30)


@pytest.fixture
def runner() -> Iterator[Runner]:
    r = Runner()
    try:
        yield r
    finally:
        r.close()


@dataclass
class Dirty:
    """A file open for writing with changes not yet in S3, and what S3 must end up holding."""

    name: str
    fd: int
    expected: bytes


def not_yet_in_s3(m: Mount, files: list[Dirty]) -> None:
    """The files are dirty: S3 holds none of their new content yet."""
    keys = m.object_keys()
    for f in files:
        assert f.name not in keys or m.object(f.name) != f.expected, f"{f.name} is committed"


def open_dirty_files(m: Mount) -> list[Dirty]:
    """Four kinds of unsaved change, each still open: a small file (one PutObject at commit),
    a multipart upload with parts already sent, a spooled non-sequential write to an
    existing object, and an append to an existing object of more than 5 MiB (server-side
    copy of the old bytes)."""
    base_spool, base_append = os.urandom(3 * MiB), os.urandom(6 * MiB)
    write_file(m.path / "spooled", base_spool)
    write_file(m.path / "appended", base_append)
    files = []
    small = os.urandom(1000)
    fd = os.open(m.path / "small", os.O_WRONLY | os.O_CREAT)
    os.write(fd, small)
    files.append(Dirty("small", fd, small))

    multi = os.urandom(2 * CHUNK + 12345)
    fd = os.open(m.path / "multi", os.O_WRONLY | os.O_CREAT)
    os.write(fd, multi)
    files.append(Dirty("multi", fd, multi))

    fd = os.open(m.path / "spooled", os.O_RDWR)
    os.pwrite(fd, b"in the middle", MiB)
    spooled = base_spool[:MiB] + b"in the middle" + base_spool[MiB + 13 :]
    files.append(Dirty("spooled", fd, spooled))

    fd = os.open(m.path / "appended", os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"tail" * 1000)
    files.append(Dirty("appended", fd, base_append + b"tail" * 1000))
    return files


def close_quietly(fd: int) -> None:
    with contextlib.suppress(OSError):  # the mount may already be gone
        os.close(fd)


@pytest.mark.parametrize("how", ["SIGTERM", "fusermount3 -u", "umount"])
def test_shutdown_completes_every_dirty_file(
    s3: S3Server, mount_factory: MountFactory, runner: Runner, how: str
) -> None:
    """SIGTERM ends the FUSE loop while files are open and dirty: the daemon commits each of
    them before it exits (0). `fusermount3 -u` and `umount` refuse (EBUSY) while files are
    open, and the mount keeps serving; their lazy forms (-z, -l) detach it, the open files
    keep working, and each is committed when the application closes it, before the daemon
    exits (0)."""
    m = mount_factory(s3, s3={"chunksize": CHUNK})
    files = open_dirty_files(m)
    assert m.proc is not None
    try:
        not_yet_in_s3(m, files)
        if how == "SIGTERM":
            assert m.signal(signal.SIGTERM) == 0, m.log()[-4000:]
            for f in files:
                assert f"committed {m.prefix}{f.name} at shutdown" in m.log()
        else:
            plain, lazy = (
                (["fusermount3", "-u"], ["fusermount3", "-u", "-z"])
                if how.startswith("fusermount3")
                else (["umount"], ["umount", "-l"])
            )
            code, stderr = runner.run(*plain, str(m.path))
            assert code != 0 and "busy" in stderr.lower(), stderr
            assert in_proc_mounts(m.path) and m.proc.poll() is None
            not_yet_in_s3(m, files)  # refused, and nothing was lost or committed early
            write_file(m.path / "still-serving", b"yes")
            assert m.object("still-serving") == b"yes"

            assert runner.run(*lazy, str(m.path)) == (0, "")
            assert not in_proc_mounts(m.path)
            not_yet_in_s3(m, files)
            time.sleep(0.5)
            assert m.proc.poll() is None, "the daemon left while files were still open"
            for f in files:  # the application goes on writing, then closes
                os.pwrite(f.fd, b"+more", len(f.expected))
                f.expected += b"+more"
                os.close(f.fd)
                f.fd = -1
            assert m.proc.wait(timeout=60) == 0, m.log()[-4000:]
            m.proc, m.returncode = None, 0
    finally:
        for f in files:
            if f.fd >= 0:
                close_quietly(f.fd)
    for f in files:
        assert m.object(f.name) == f.expected, f.name
    assert s3.uploads(m.bucket) == []
    assert not in_proc_mounts(m.path)


@pytest.mark.parametrize("how", ["SIGTERM", "fusermount3 -u -z", "umount -l"])
def test_a_final_upload_that_fails_is_logged_with_its_key(
    s3: S3Server, mount_factory: MountFactory, runner: Runner, how: str
) -> None:
    """The final upload of dirty files fails (S3 refuses PutObject, or keeps answering 500
    to CompleteMultipartUpload).

    After SIGTERM nobody can be told but the log: each key and its error are logged and
    the exit code is 8. After a lazy unmount the files are committed when the application
    closes them, so close(2) reports the error (and the log names the key); nothing is
    pending at exit, which is 0."""
    with S3Proxy(s3.endpoint) as proxy:
        m = mount_factory(
            s3,
            endpoint=proxy.url,
            s3={"chunksize": CHUNK},
            mount={"retry_attempts": 2, "retry_time": "3s"},
        )
        small, multi = os.urandom(1000), os.urandom(CHUNK + 777)
        fd_small = os.open(m.path / "small", os.O_WRONLY | os.O_CREAT)
        fd_multi = os.open(m.path / "multi", os.O_WRONLY | os.O_CREAT)
        os.write(fd_small, small)
        os.write(fd_multi, multi)
        proxy.add_fault("access_denied", method="PUT", path="/small$")
        proxy.add_fault("internal", method="POST", path="/multi$", query="uploadId=")
        assert m.proc is not None
        try:
            if how == "SIGTERM":
                code = m.signal(signal.SIGTERM)
                log = m.log()
                assert code == 8, log[-4000:]
                m.returncode = 0  # expected: the fixture's "exited cleanly" check is done here
                assert f"{m.prefix}small: pending upload failed at shutdown" in log
                assert f"{m.prefix}multi: pending upload failed at shutdown" in log
                assert "AccessDenied" in log and "InternalError" in log
            else:
                assert runner.run(*how.split(), str(m.path)) == (0, "")
                assert "small" not in m.object_keys() and "multi" not in m.object_keys()
                expect_errno(errno.EACCES, os.close, fd_small)
                expect_errno(errno.EIO, os.close, fd_multi)
                fd_small = fd_multi = -1
                assert m.proc.wait(timeout=60) == 0, m.log()[-4000:]
                m.proc, m.returncode = None, 0
                log = m.log()
                assert f"PutObject {m.prefix}small: AccessDenied" in log
                assert f"CompleteMultipartUpload {m.prefix}multi: InternalError" in log
        finally:
            for fd in (fd_small, fd_multi):
                if fd >= 0:
                    close_quietly(fd)
        proxy.clear_faults()
    keys = m.object_keys()
    assert "small" not in keys and "multi" not in keys, "never acknowledged, never stored"
    assert wait_until(lambda: s3.uploads(m.bucket) == [], 10), "the failed upload not aborted"


# -- 32 writers of 32 MiB and 100 readers -------------------------------------------------------

WRITERS = 32
WRITE_SIZE = 32 * MiB
READERS = 100
BUDGET = 64 * MiB
# What the daemon legitimately holds beyond mount.memory_budget, the stated slack:
# * each FUSE request being served has libfuse's receive buffer (max_write, 1 MiB) and, for
#   a write, a copy of its bytes (up to 1 MiB) while the writer waits for budget: 2 MiB for
#   each of the 32 writers (measured: peak growth rises by about 1.9 MiB per writer, 47 MiB
#   for 8 writers, 105 MiB for 32, 165 MiB for 64, with a 64 MiB budget and no readers);
# * the bytes a reader is blocked on are fetched even when the budget is used up (budget.py
#   `force`): at most one initial read-ahead window, 1.125 MiB, for each of the 100 readers;
# * 32 MiB for the interpreter, botocore and the allocator.
SLACK = 2 * MiB * WRITERS + (MiB + 128 * 1024) * READERS + 32 * MiB  # 208.5 MiB


def block(seed: int, index: int) -> bytes:
    return random.Random(seed * 1000 + index).randbytes(MiB)


def test_32_writers_and_100_readers_stay_within_the_memory_budget(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """1 GiB written by 32 concurrent writers while 100 readers read other files: nothing
    deadlocks, every byte is right, and the daemon's peak RSS (VmHWM) stays below its RSS
    at start + mount.memory_budget + SLACK (stated above). Without the budget, 32 writers
    outrunning S3 could hold up to 1 GiB of part buffers."""
    with S3Proxy(s3.endpoint, delay=0.01) as proxy:  # S3 slower than the writers
        m = mount_factory(
            s3,
            endpoint=proxy.url,
            s3={"chunksize": CHUNK},
            mount={"memory_budget": BUDGET, "read_ahead": "8MiB", "metadata_ttl": "30s"},
        )
        assert m.proc is not None
        pid = m.proc.pid
        (m.path / "r").mkdir()
        (m.path / "w").mkdir()
        (m.path / "w" / "placeholder").write_bytes(b"")  # not an empty directory for long
        sources = {f"small{i}": os.urandom(60_000 + i) for i in range(5)}
        sources.update({f"big{i}": os.urandom(3 * MiB + 1000 * i) for i in range(15)})
        for name, data in sources.items():
            write_file(m.path / "r" / name, data)
        baseline = status_kib(pid, "VmRSS") * 1024
        start_hwm = status_kib(pid, "VmHWM") * 1024

        errors: list[str] = []
        digests: dict[int, str] = {}
        go = threading.Event()

        def writer(n: int) -> None:
            go.wait()
            digest = hashlib.sha256()
            try:
                with open(m.path / "w" / f"f{n}", "wb", buffering=0) as f:
                    for i in range(WRITE_SIZE // MiB):
                        data = block(n, i)
                        digest.update(data)
                        f.write(data)
                digests[n] = digest.hexdigest()
            except BaseException as exc:
                errors.append(f"writer {n}: {exc!r}")

        def reader(n: int) -> None:
            go.wait()
            rng = random.Random(n)
            name = rng.choice(sorted(sources))
            data = sources[name]
            try:
                fd = os.open(m.path / "r" / name, os.O_RDONLY)
                try:
                    if n % 2:
                        got = b"".join(iter(lambda: os.read(fd, 256 * 1024), b""))
                        assert got == data, f"reader {n}: wrong bytes of {name}"
                    check_random_preads(fd, data, rng, 2 * MiB, f"reader {n}: {name}")
                finally:
                    os.close(fd)
            except BaseException as exc:
                errors.append(f"reader {n}: {exc!r}")

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
        threads += [threading.Thread(target=reader, args=(n,)) for n in range(READERS)]
        for t in threads:
            t.start()
        started = time.monotonic()
        go.set()
        deadline = started + 300
        for t in threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()))
        stuck = sum(t.is_alive() for t in threads)
        took = time.monotonic() - started
        peak = status_kib(pid, "VmHWM") * 1024
        assert stuck == 0, (
            f"{stuck} threads still blocked after 300 s: deadlock?\n" + m.log()[-4000:]
        )
        assert not errors, errors[:10]

    client = s3.client()
    for n in range(WRITERS):
        body = client.get_object(Bucket=m.bucket, Key=f"{m.prefix}w/f{n}")["Body"]
        digest = hashlib.sha256()
        while piece := body.read(4 * MiB):
            digest.update(piece)
        assert digest.hexdigest() == digests[n], f"f{n}: wrong bytes in S3"
    limit = baseline + BUDGET + SLACK
    print(
        f"\n[{s3.name}] {WRITERS}x{WRITE_SIZE // MiB} MiB written, {READERS} readers, "
        f"{took:.1f}s; RSS at start {baseline / MiB:.0f} MiB (peak so far "
        f"{start_hwm / MiB:.0f}), peak {peak / MiB:.0f} MiB, limit {limit / MiB:.0f} MiB"
    )
    assert peak <= limit, (
        f"peak RSS {peak / MiB:.0f} MiB > RSS at start {baseline / MiB:.0f} MiB + budget "
        f"{BUDGET / MiB:.0f} MiB + slack {SLACK / MiB:.0f} MiB"
    )


def test_concurrent_reads_of_one_open_file_return_the_right_bytes(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """Six threads read one open file at random offsets at once (pread on one descriptor,
    as a server does with one handle, and as the kernel's own read-ahead does beside a
    sequential reader), with S3 a few milliseconds away: every read returns exactly the
    bytes at its offset, short only at the end of the file, and the file keeps its size."""
    with S3Proxy(s3.endpoint, delay=0.005) as proxy:
        m = mount_factory(s3, endpoint=proxy.url)
        data = os.urandom(6 * MiB + 5)
        write_file(m.path / "f", data)
        errors: list[str] = []
        for round_ in range(5):
            fd = os.open(m.path / "f", os.O_RDONLY)

            def reader(n: int, fd: int = fd, round_: int = round_) -> None:
                rng = random.Random(round_ * 100 + n)
                for _ in range(6):
                    offset, length = rng.randrange(len(data)), rng.randint(1, 2 * MiB)
                    try:
                        got = os.pread(fd, length, offset)
                    except OSError as exc:
                        errors.append(f"pread({length}, {offset}): {exc}")
                        continue
                    want = data[offset : offset + length]
                    if got != want:
                        errors.append(
                            f"pread({length}, {offset}): {len(got)} bytes, wanted {len(want)}"
                        )

            try:
                threads = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join(timeout=120)
                assert not any(t.is_alive() for t in threads), "reads hang"
            finally:
                os.close(fd)
        size = os.stat(m.path / "f").st_size
    assert not errors, f"{len(errors)} of 180 reads wrong, e.g. {errors[:5]}"
    assert size == len(data)
    assert m.object("f") == data


# -- the kernel forgets -------------------------------------------------------------------


def test_an_empty_directory_survives_the_kernel_forgetting_it(
    moto: S3Server, mount_factory: MountFactory
) -> None:
    """mkdir makes a directory that lives in the mount's memory "until a file is written
    under it or it is removed" (doc/SEMANTICS.md). The kernel may drop its cached entry at
    any time (memory pressure; here `echo 2 > /proc/sys/vm/drop_caches`, which drops every
    unused dentry and inode of the machine): the directory must still be there, and a file
    can be created in it. (Independent of the S3 server: moto only.)"""
    m = mount_factory(moto)
    (m.path / "empty").mkdir()
    (m.path / "full").mkdir()
    (m.path / "full" / "f").write_bytes(b"f")
    time.sleep(1.2)  # past the entry timeout (metadata_ttl)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("2")
    assert sorted(os.listdir(m.path)) == ["empty", "full"]
    (m.path / "empty" / "g").write_bytes(b"g")
    assert m.object("empty/g") == b"g"


# -- the local spool full ------------------------------------------------------------------


def test_spool_limit_reached_is_enospc_at_write_never_a_truncated_object(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """mount.spool_limit is shared by the whole mount. A non-sequential write (or a
    truncate to a middle size) that would take the spool past it fails with ENOSPC at the
    write itself; the writes that succeeded are all in the object at close, the object is
    never cut short, and the spool is given back when the file is closed."""
    m = mount_factory(s3, s3={"chunksize": CHUNK}, mount={"spool_limit": "8MiB"})
    a, b = os.urandom(6 * MiB), os.urandom(3 * MiB)
    write_file(m.path / "a", a)
    write_file(m.path / "b", b)

    fa = os.open(m.path / "a", os.O_RDWR)
    fb = os.open(m.path / "b", os.O_RDWR)
    try:
        os.pwrite(fa, b"A" * 100, 1000)  # a moves to the spool: 6 of 8 MiB used
        expected_a = bytearray(a)
        expected_a[1000:1100] = b"A" * 100
        expect_errno(errno.ENOSPC, os.pwrite, fb, b"B", 10)  # b would need 3 MiB more
        expect_errno(errno.ENOSPC, os.ftruncate, fb, MiB)  # so would truncating b
        os.pwrite(fa, b"x" * MiB, 6 * MiB)  # a grows to 7 MiB inside its own spool
        expected_a += b"x" * MiB
        accepted, error = write_until_error(fa, b"y" * (2 * MiB), 7 * MiB)  # 9 > 8 MiB
        assert error is not None and error.errno == errno.ENOSPC, error
        assert accepted <= MiB, accepted
        expected_a += b"y" * accepted  # what write(2) said it took, and nothing more
        os.fsync(fa)
        assert m.object("a") == bytes(expected_a), "every successful write, nothing cut"
    finally:
        os.close(fa)
        os.close(fb)
    assert m.object("a") == bytes(expected_a)
    assert m.object("b") == b, "b is untouched"

    # a's spool was given back at close: b can spool now
    with open(m.path / "b", "r+b", buffering=0) as f:
        f.seek(10)
        f.write(b"B")
    assert m.object("b") == b[:10] + b"B" + b[11:]

    off = mount_factory(s3, m.bucket, mount={"spool_limit": 0})  # spooling disabled
    with open(off.path / "b", "r+b", buffering=0) as f:
        f.seek(20)
        expect_errno(errno.ENOSPC, f.write, b"no spool")
    assert off.object("b") == b[:10] + b"B" + b[11:]


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, so that the spool directory's file system really fills up."""
    path = tmp_path / "spool"
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=False)


def test_spool_directory_full_is_enospc_at_write(
    s3: S3Server, mount_factory: MountFactory, small_tmpfs: Path
) -> None:
    """The spool's own file system (4 MiB) fills up long before mount.spool_limit (1 GiB):
    the write that cannot be stored fails with ENOSPC, the object keeps every write that
    succeeded and nothing of the failed one, and it is never truncated."""
    m = mount_factory(s3, s3={"chunksize": CHUNK}, mount={"spool_dir": str(small_tmpfs)})
    a, b = os.urandom(3 * MiB), os.urandom(2 * MiB)
    write_file(m.path / "a", a)
    write_file(m.path / "b", b)
    more = os.urandom(2 * MiB)
    fa = os.open(m.path / "a", os.O_RDWR)
    try:
        os.pwrite(fa, b"middle", 100)  # 3 MiB of the tmpfs now hold a's spool
        fb = os.open(m.path / "b", os.O_RDWR)
        try:
            expect_errno(errno.ENOSPC, os.pwrite, fb, b"no room for b's 2 MiB", 5)
        finally:
            os.close(fb)
        accepted, error = write_until_error(fa, more, 3 * MiB)  # past the end of the tmpfs
        assert error is not None and error.errno == errno.ENOSPC, error
        assert accepted <= MiB, accepted  # the tmpfs had 1 MiB left
    finally:
        os.close(fa)
    assert m.object("a") == a[:100] + b"middle" + a[106:] + more[:accepted]
    assert m.object("b") == b
    assert not os.listdir(small_tmpfs), "spool files are unlinked at once"
