"""File-system semantics through a real FUSE mount, driven with os calls and shell tools.

Each test works in its own directory of one shared mount (`d`) and checks both what the
file system answers and what S3 holds afterwards (`shared.object_keys()`, `shared.object()`).
"""

from __future__ import annotations

import errno
import os
import random
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.mounts import Mount, expect_errno, wait_until

MiB = 1024 * 1024


def rel(shared: Mount, path: Path) -> str:
    return str(path.relative_to(shared.path))


def settle() -> None:
    """Wait out metadata_ttl (1 s): changes made behind the mount's back show after it."""
    time.sleep(1.2)


def test_root_is_a_listable_directory(shared: Mount) -> None:
    assert stat.S_ISDIR(os.stat(shared.path).st_mode)
    os.listdir(shared.path)
    assert os.path.ismount(shared.path)


def test_sizes_and_mtimes(shared: Mount, d: Path) -> None:
    before = time.time()
    (d / "f").write_bytes(b"x" * 1234)
    st = os.stat(d / "f")
    assert stat.S_ISREG(st.st_mode) and st.st_size == 1234
    assert before - 2 <= st.st_mtime <= time.time() + 2
    assert shared.object(rel(shared, d / "f")) == b"x" * 1234


def test_mkdir_lives_in_memory_until_it_gains_children(shared: Mount, d: Path) -> None:
    (d / "empty").mkdir()
    assert stat.S_ISDIR(os.stat(d / "empty").st_mode)
    assert "empty" in os.listdir(d)
    assert not [k for k in shared.object_keys() if "/empty" in k], "no marker object"
    (d / "empty" / "child").write_bytes(b"1")
    assert rel(shared, d / "empty" / "child") in shared.object_keys()
    (d / "gone").mkdir()
    (d / "gone").rmdir()
    expect_errno(errno.ENOENT, os.stat, d / "gone")


def test_mkdir_p_and_nested_files(shared: Mount, d: Path) -> None:
    subprocess.run(["mkdir", "-p", str(d / "a/b/c")], check=True)
    (d / "a/b/c/f").write_text("deep")
    assert (d / "a/b/c/f").read_text() == "deep"
    assert sorted(os.listdir(d / "a")) == ["b"]


def test_emptied_directories_stay_at_every_level(shared: Mount, d: Path) -> None:
    """Removing the last file under a/b leaves a and a/b, as on a local disk, also once
    metadata_ttl has passed and S3 holds no key under either."""
    subprocess.run(["mkdir", "-p", str(d / "a/b")], check=True)
    (d / "a/b/f").write_text("x")
    os.unlink(d / "a/b/f")
    settle()
    assert stat.S_ISDIR(os.stat(d / "a").st_mode)
    assert stat.S_ISDIR(os.stat(d / "a/b").st_mode)
    assert os.listdir(d / "a") == ["b"] and os.listdir(d / "a/b") == []
    (d / "a/b").rmdir()
    (d / "a").rmdir()
    expect_errno(errno.ENOENT, os.stat, d / "a")


def test_prefix_siblings_are_not_confused(shared: Mount, d: Path) -> None:
    base = shared.prefix + rel(shared, d)
    shared.server.put(shared.bucket, f"{base}/a/bc", b"bc")
    shared.server.put(shared.bucket, f"{base}/a/b-x", b"dash")
    settle()
    expect_errno(errno.ENOENT, os.stat, d / "a" / "b")
    (d / "a" / "b").mkdir()
    (d / "a" / "b" / "x").write_bytes(b"x")
    assert sorted(os.listdir(d / "a")) == ["b", "b-x", "bc"]
    assert stat.S_ISDIR(os.stat(d / "a" / "b").st_mode)
    assert (d / "a" / "bc").read_bytes() == b"bc"


def test_directory_markers_of_other_tools(shared: Mount, d: Path) -> None:
    base = shared.prefix + rel(shared, d)
    shared.server.put(shared.bucket, f"{base}/m/", b"")
    shared.server.put(shared.bucket, f"{base}/m/sub/", b"")
    shared.server.put(shared.bucket, f"{base}/m/file", b"data")
    settle()
    assert stat.S_ISDIR(os.stat(d / "m").st_mode)
    assert sorted(os.listdir(d / "m")) == ["file", "sub"]
    assert os.listdir(d / "m" / "sub") == []
    (d / "m" / "sub").rmdir()
    assert f"{base}/m/sub/" not in shared.server.keys(shared.bucket, base)


def test_errnos(shared: Mount, d: Path) -> None:
    (d / "file").write_bytes(b"f")
    (d / "dir").mkdir()
    (d / "dir" / "child").write_bytes(b"c")
    expect_errno(errno.ENOENT, os.stat, d / "missing")
    expect_errno(errno.ENOENT, os.unlink, d / "missing")
    expect_errno(errno.ENOENT, os.rename, d / "missing", d / "other")
    expect_errno(errno.EEXIST, os.mkdir, d / "dir")
    expect_errno(errno.EEXIST, os.mkdir, d / "file")
    expect_errno(errno.ENOTDIR, os.stat, d / "file" / "x")
    expect_errno(errno.EISDIR, os.unlink, d / "dir")
    expect_errno(errno.ENOTEMPTY, os.rmdir, d / "dir")
    expect_errno(errno.ENOTDIR, os.rmdir, d / "file")
    expect_errno(errno.ENOTDIR, os.listdir, d / "file")


def test_readdir_paginates_and_uses_listing_attributes(shared: Mount, d: Path) -> None:
    base = shared.prefix + rel(shared, d)
    client = shared.server.client()
    for i in range(1100):
        client.put_object(Bucket=shared.bucket, Key=f"{base}/many/f{i:05d}", Body=b"x" * (i % 7))
    settle()
    names = os.listdir(d / "many")
    assert len(names) == 1100 and len(set(names)) == 1100
    sizes = {e.name: e.stat().st_size for e in os.scandir(d / "many")}
    assert sizes["f00006"] == 6 and sizes["f01099"] == 1099 % 7


def test_zero_byte_and_small_files(shared: Mount, d: Path) -> None:
    (d / "empty").touch()  # stored at the release after close (doc/SEMANTICS.md: create)
    assert os.stat(d / "empty").st_size == 0
    assert wait_until(lambda: rel(shared, d / "empty") in shared.object_keys(), 5)
    assert shared.object(rel(shared, d / "empty")) == b""
    fd = os.open(d / "synced", os.O_WRONLY | os.O_CREAT)
    try:
        os.fsync(fd)  # fsync stores it at once
        assert shared.object(rel(shared, d / "synced")) == b""
    finally:
        os.close(fd)
    subprocess.run(f"printf abc > {d}/redirected", shell=True, check=True)
    assert shared.object(rel(shared, d / "redirected")) == b"abc"
    (d / "small").write_bytes(b"71 bytes" * 9)
    assert (d / "small").read_bytes() == b"71 bytes" * 9


def test_fsync_makes_the_object_exist_before_close(shared: Mount, d: Path) -> None:
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"durable")
        os.fsync(fd)
        assert shared.object(rel(shared, d / "f")) == b"durable"
        os.write(fd, b" more")
        os.fsync(fd)
        os.fsync(fd)  # nothing new: cheap, still 0
        assert shared.object(rel(shared, d / "f")) == b"durable more"
    finally:
        os.close(fd)


def test_fsync_on_a_directory(shared: Mount, d: Path) -> None:
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_truncate_after_open_never_mixes_old_bytes(shared: Mount, d: Path) -> None:
    (d / "f").write_bytes(os.urandom(MiB))
    fd = os.open(d / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, b"k" * 1024)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"k" * 1024
    assert shared.object(rel(shared, d / "f")) == b"k" * 1024


@pytest.mark.parametrize("first", [3 * MiB, 6 * MiB + 5], ids=["small-base", "large-base"])
def test_append_after_lseek_end(shared: Mount, d: Path, first: int) -> None:
    one, two = os.urandom(first), os.urandom(70_000)
    (d / "data").write_bytes(one)
    fd = os.open(d / "data", os.O_WRONLY | os.O_CREAT)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == first
        os.write(fd, two)
        os.fsync(fd)
    finally:
        os.close(fd)
    fd = os.open(d / "data", os.O_WRONLY | os.O_CREAT)
    try:
        assert os.lseek(fd, 0, os.SEEK_END) == first + len(two)
    finally:
        os.close(fd)
    assert (d / "data").read_bytes() == one + two
    assert shared.object(rel(shared, d / "data")) == one + two


def test_shell_append(shared: Mount, d: Path) -> None:
    subprocess.run(f"echo one > {d}/log && echo two >> {d}/log", shell=True, check=True)
    assert (d / "log").read_text() == "one\ntwo\n"


def test_write_in_the_middle_and_holes(shared: Mount, d: Path) -> None:
    data = bytearray(os.urandom(12 * MiB))
    (d / "f").write_bytes(data)
    with open(d / "f", "r+b") as f:
        f.seek(7 * MiB)
        f.write(b"MIDDLE")
        f.seek(14 * MiB)
        f.write(b"END")
    data[7 * MiB : 7 * MiB + 6] = b"MIDDLE"
    data.extend(bytes(14 * MiB - len(data)) + b"END")
    assert (d / "f").read_bytes() == data
    assert shared.object(rel(shared, d / "f")) == data


def test_random_writes_to_a_new_file(shared: Mount, d: Path) -> None:
    rng = random.Random(7)
    expected = bytearray(3 * MiB)
    fd = os.open(d / "f", os.O_RDWR | os.O_CREAT)
    try:
        for _ in range(50):
            offset, chunk = rng.randrange(0, 3 * MiB - 4096), rng.randbytes(rng.randrange(1, 4096))
            os.pwrite(fd, chunk, offset)
            expected[offset : offset + len(chunk)] = chunk
        size = max(os.fstat(fd).st_size, 0)
        assert os.pread(fd, 100, 1000) == bytes(expected[1000:1100])
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == bytes(expected[:size])


def test_truncate_to_other_sizes(shared: Mount, d: Path) -> None:
    (d / "f").write_bytes(b"0123456789")
    os.truncate(d / "f", 4)
    assert (d / "f").read_bytes() == b"0123"
    os.truncate(d / "f", 8)
    assert (d / "f").read_bytes() == b"0123" + bytes(4)
    subprocess.run(["truncate", "-s", "0", str(d / "f")], check=True)
    assert (d / "f").read_bytes() == b""
    assert shared.object(rel(shared, d / "f")) == b""


def test_directory_times_stay_the_mount_start(shared: Mount, d: Path) -> None:
    """SEMANTICS "Not supported": a directory has no object, so its times never change."""
    (d / "sub").mkdir()
    before = os.stat(d / "sub")
    (d / "sub" / "f").write_bytes(b"x")
    os.rename(d / "sub" / "f", d / "sub" / "g")
    (d / "sub" / "g").unlink()
    after = os.stat(d / "sub")
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    assert after.st_mtime_ns == os.stat(shared.path).st_mtime_ns


def test_sizes_beyond_what_s3_can_hold_are_efbig(shared: Mount, d: Path) -> None:
    """An S3 object holds at most 5 TiB: truncate or write past that is EFBIG at once (not
    ENOSPC from the spool, nor terabytes of zeros uploaded), and the file is unchanged."""
    (d / "f").write_bytes(b"abc")
    expect_errno(errno.EFBIG, os.truncate, d / "f", 999_999_999_999_999)
    done = subprocess.run(
        ["truncate", "-s", "999999999999999", str(d / "g")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0 and "File too large" in done.stderr, done
    fd = os.open(d / "f", os.O_WRONLY)
    try:
        expect_errno(errno.EFBIG, os.pwrite, fd, b"x", 6 * 1024**4)
    finally:
        os.close(fd)
    assert (d / "f").read_bytes() == b"abc" and shared.object(rel(shared, d / "f")) == b"abc"


def test_rename_replaces_target_and_removes_source(shared: Mount, d: Path) -> None:
    (d / "src").write_bytes(b"new")
    (d / "dst").write_bytes(b"old contents")
    os.rename(d / "src", d / "dst")
    assert (d / "dst").read_bytes() == b"new"
    expect_errno(errno.ENOENT, os.stat, d / "src")
    keys = shared.object_keys()
    assert rel(shared, d / "src") not in keys and rel(shared, d / "dst") in keys
    assert shared.object(rel(shared, d / "dst")) == b"new"


def test_rename_across_directories_and_of_a_file_being_written(shared: Mount, d: Path) -> None:
    (d / "a").mkdir()
    (d / "b").mkdir()
    fd = os.open(d / "a" / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"first;")
        os.rename(d / "a" / "f", d / "b" / "g")
        assert shared.object(rel(shared, d / "b" / "g")) == b"first;"
        os.write(fd, b"second")
    finally:
        os.close(fd)
    assert (d / "b" / "g").read_bytes() == b"first;second"
    assert not [k for k in shared.object_keys() if k.endswith("/a/f")]


def test_directory_rename_moves_every_key(shared: Mount, d: Path) -> None:
    for name in ("x/1", "x/2", "x/sub/3", "x/sub/deeper/4"):
        path = d / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    os.rename(d / "x", d / "y")
    assert sorted(str(p.relative_to(d / "y")) for p in (d / "y").rglob("*") if p.is_file()) == [
        "1",
        "2",
        "sub/3",
        "sub/deeper/4",
    ]
    assert (d / "y/sub/deeper/4").read_text() == "x/sub/deeper/4"
    base = rel(shared, d)
    assert not [k for k in shared.object_keys() if k.startswith(f"{base}/x/")]
    assert len([k for k in shared.object_keys() if k.startswith(f"{base}/y/")]) == 4


def test_rename_exchange_is_refused(shared: Mount, d: Path) -> None:
    import ctypes

    (d / "a").write_text("a")
    (d / "b").write_text("b")
    libc = ctypes.CDLL(None, use_errno=True)
    rename_exchange = 2
    result = libc.renameat2(
        -100, str(d / "a").encode(), -100, str(d / "b").encode(), rename_exchange
    )
    assert result == -1 and ctypes.get_errno() == errno.EINVAL
    assert (d / "a").read_text() == "a"


def test_reads_past_eof_and_concurrent_ranged_readers(shared: Mount, d: Path) -> None:
    data = os.urandom(20 * MiB + 123)
    (d / "big").write_bytes(data)
    with open(d / "big", "rb") as f:
        f.seek(len(data) + 10)
        assert f.read(100) == b""
    errors: list[str] = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        with open(d / "big", "rb", buffering=0) as f:
            for _ in range(20):
                offset = rng.randrange(0, len(data))
                size = rng.randrange(1, 4 * MiB)
                f.seek(offset)
                got = f.read(size)
                if got != data[offset : offset + size][: len(got)] or (
                    len(got) < size and offset + len(got) != len(data)
                ):
                    errors.append(f"seed {seed} offset {offset} size {size} got {len(got)}")

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (d / "big").read_bytes() == data


def test_own_writes_visible_at_once(shared: Mount, d: Path) -> None:
    (d / "f").write_bytes(b"1")
    assert "f" in os.listdir(d)
    (d / "f").write_bytes(b"22")
    assert os.stat(d / "f").st_size == 2
    os.unlink(d / "f")
    assert "f" not in os.listdir(d)
    expect_errno(errno.ENOENT, os.stat, d / "f")


def test_other_writers_visible_within_the_ttl(shared: Mount, d: Path) -> None:
    key = shared.prefix + rel(shared, d) + "/remote"
    settle()
    expect_errno(errno.ENOENT, os.stat, d / "remote")
    shared.server.put(shared.bucket, key, b"v1")
    time.sleep(2.0)
    assert (d / "remote").read_bytes() == b"v1"
    assert "remote" in os.listdir(d)
    shared.server.put(shared.bucket, key, b"version 2")
    time.sleep(2.0)
    assert os.stat(d / "remote").st_size == 9
    assert (d / "remote").read_bytes() == b"version 2"
    shared.server.client().delete_object(Bucket=shared.bucket, Key=key)
    time.sleep(2.0)
    expect_errno(errno.ENOENT, os.stat, d / "remote")
    assert "remote" not in os.listdir(d)


def test_key_length_limit(shared: Mount, d: Path) -> None:
    base = len((shared.prefix + rel(shared, d) + "/").encode())
    path, used = d, base
    while used + 201 <= 1024:
        path = path / ("n" * 200)
        path.mkdir()
        used += 201
    fits = "f" * (1024 - used)
    (path / fits).write_bytes(b"ok")
    assert (path / fits).read_bytes() == b"ok"
    expect_errno(errno.ENAMETOOLONG, (path / (fits + "x")).write_bytes, b"no")
    expect_errno(errno.ENAMETOOLONG, os.mkdir, path / (fits + "x"))


def test_statfs_and_df(shared: Mount) -> None:
    st = os.statvfs(shared.path)
    assert st.f_bavail > 0 and st.f_namemax == 255
    subprocess.run(["df", "-h", str(shared.path)], check=True, capture_output=True)


def test_shell_tools(shared: Mount, d: Path, tmp_path: Path) -> None:
    local = tmp_path / "tree"
    (local / "x" / "y").mkdir(parents=True)
    (local / "x" / "y" / "f").write_bytes(os.urandom(300_000))
    (local / "x" / "g").write_text("g")
    subprocess.run(["cp", "-r", str(local / "x"), str(d / "copy")], check=True)
    subprocess.run(["diff", "-r", str(local / "x"), str(d / "copy")], check=True)
    found = subprocess.run(
        ["find", str(d / "copy"), "-type", "f"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert sorted(found) == sorted([str(d / "copy/y/f"), str(d / "copy/g")])
    du = subprocess.run(["du", "-sb", str(d / "copy")], check=True, capture_output=True, text=True)
    assert int(du.stdout.split()[0]) >= 300_001
    subprocess.run(["mv", str(d / "copy"), str(d / "moved")], check=True)
    assert (d / "moved" / "g").read_text() == "g"
    subprocess.run(["cat", str(d / "moved" / "g")], check=True, capture_output=True)
    subprocess.run(["cp", str(d / "moved" / "y" / "f"), str(tmp_path / "back")], check=True)
    assert (tmp_path / "back").read_bytes() == (local / "x" / "y" / "f").read_bytes()
    subprocess.run(["rm", "-r", str(d / "moved")], check=True)
    assert not (d / "moved").exists()
    assert not [k for k in shared.object_keys() if "/moved/" in k]


def test_metadata_changes(shared: Mount, d: Path) -> None:
    (d / "f").write_text("x")
    subprocess.run(["touch", str(d / "f")], check=True)  # times: accepted, S3 keeps its own
    expect_errno(errno.EPERM, os.chmod, d / "f", 0o600)
    os.chmod(d / "f", os.stat(d / "f").st_mode)  # unchanged mode is fine
    expect_errno(errno.EPERM, os.symlink, "f", d / "link")
    expect_errno(errno.EPERM, os.link, d / "f", d / "hard")


def test_unlink_while_open(shared: Mount, d: Path) -> None:
    fd = os.open(d / "w", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"doomed")
        os.unlink(d / "w")
        os.write(fd, b" still accepted")
    finally:
        os.close(fd)
    assert not [k for k in shared.object_keys() if k.endswith("/w")]
    expect_errno(errno.ENOENT, os.stat, d / "w")


def test_no_unexpected_keys(shared: Mount, d: Path) -> None:
    (d / "a" / "b").mkdir(parents=True)
    (d / "a" / "b" / "f").write_bytes(b"f")
    (d / "a" / "e").mkdir()
    base = rel(shared, d)
    assert [k for k in shared.object_keys() if k.startswith(base + "/")] == [f"{base}/a/b/f"]
