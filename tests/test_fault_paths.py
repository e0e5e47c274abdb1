"""Every error path of the mount, with faults injected by a proxy between daemon and server.

A failed upload must surface as an error from write/fsync/close and leave the previous
object (or nothing) in S3; transient failures are retried; S3 errors map to precise
errnos. The proxy also counts requests, so "no request for an fsync with nothing new" and
"no HEAD per directory entry" are checked here as behaviour.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from tests.conftest import MountFactory
from tests.mounts import Mount, S3Server, expect_errno, wait_until, write_file
from tests.s3proxy import S3Proxy

MiB = 1024 * 1024
PART_QUERY = "partNumber="


@pytest.fixture
def pm(s3: S3Server, proxy: S3Proxy, mount_factory: MountFactory) -> Mount:
    """A mount whose S3 traffic goes through `proxy`; few retries so tests stay quick."""
    return mount_factory(
        s3,
        endpoint=proxy.url,
        s3={"chunksize": 5 * MiB},
        mount={"retry_attempts": 3, "retry_time": "5s"},
    )


def test_failed_put_is_an_error_at_close_and_keeps_the_old_object(
    pm: Mount, proxy: S3Proxy
) -> None:
    write_file(pm.path / "f", b"old")
    proxy.add_fault("internal", method="PUT")
    expect_errno(errno.EIO, write_file, pm.path / "f", b"new bytes")
    assert os.path.getsize(pm.path / "f") == 3, "the size S3 still holds"
    expect_errno(errno.EIO, write_file, pm.path / "g", b"never stored", fsync=True)
    proxy.clear_faults()
    assert pm.object("f") == b"old"
    assert "g" not in pm.object_keys()
    write_file(pm.path / "g", b"stored now")
    assert pm.object("g") == b"stored now"
    assert "failed" in pm.log() or "InternalError" in pm.log()


def test_failed_part_upload_is_an_error_and_aborts(pm: Mount, proxy: S3Proxy) -> None:
    proxy.add_fault("internal", method="PUT", query=PART_QUERY)
    fd = os.open(pm.path / "big", os.O_WRONLY | os.O_CREAT)
    try:
        with pytest.raises(OSError) as info:
            for _ in range(16):
                os.write(fd, os.urandom(MiB))
            os.fsync(fd)
        assert info.value.errno == errno.EIO
        expect_errno(errno.EIO, os.fsync, fd)  # sticky until closed
    finally:
        expect_errno(errno.EIO, os.close, fd)
    proxy.clear_faults()
    assert "big" not in pm.object_keys()
    pm.stop()
    assert pm.server.uploads(pm.bucket) == [], "the multipart upload was aborted"


def test_access_denied_is_eacces(pm: Mount, proxy: S3Proxy) -> None:
    write_file(pm.path / "f", b"data")
    proxy.add_fault("access_denied", method="PUT")
    expect_errno(errno.EACCES, write_file, pm.path / "g", b"x")
    proxy.add_fault("access_denied", method="DELETE")
    expect_errno(errno.EACCES, os.unlink, pm.path / "f")
    proxy.clear_faults()
    assert (pm.path / "f").read_bytes() == b"data"
    proxy.add_fault("access_denied", method="GET", path="/f$")
    fd = os.open(pm.path / "f", os.O_RDONLY)
    try:
        expect_errno(errno.EACCES, os.read, fd, 10)
    finally:
        os.close(fd)


def test_too_large_and_quota(pm: Mount, proxy: S3Proxy) -> None:
    proxy.add_fault("too_large", method="PUT")
    expect_errno(errno.EFBIG, write_file, pm.path / "f", b"x")
    proxy.clear_faults()
    proxy.add_fault("quota", method="PUT")
    expect_errno(errno.ENOSPC, write_file, pm.path / "f", b"x")


def test_failed_rename_leaves_the_source(pm: Mount, proxy: S3Proxy) -> None:
    write_file(pm.path / "src", b"source")
    proxy.add_fault("access_denied", method="PUT", path="/dst$")
    expect_errno(errno.EACCES, os.rename, pm.path / "src", pm.path / "dst")
    proxy.clear_faults()
    assert (pm.path / "src").read_bytes() == b"source"
    assert pm.object_keys() == ["src"]


def test_transient_faults_are_retried(pm: Mount, proxy: S3Proxy) -> None:
    proxy.add_fault("slowdown", method="PUT", times=1)
    proxy.add_fault("reset", method="PUT", times=1)
    data = os.urandom(12 * MiB)
    write_file(pm.path / "f", data)
    assert pm.object("f") == data
    proxy.add_fault("internal", method="GET", times=1)
    proxy.add_fault("cut", method="GET", times=1)
    assert (pm.path / "f").read_bytes() == data
    assert proxy.count(method="PUT") > 4


def test_complete_that_took_effect_is_recognised(pm: Mount, proxy: S3Proxy) -> None:
    proxy.add_fault("internal", method="POST", query="uploadId=", times=1, after_upstream=True)
    data = os.urandom(11 * MiB)
    write_file(pm.path / "f", data, fsync=True)
    assert pm.object("f") == data


def test_upload_in_flight_failures_lose_nothing(pm: Mount, proxy: S3Proxy, s3: S3Server) -> None:
    """A registry upload kept open as a multipart upload: a failed part is an error at close
    and leaves the parts stored before; a failed completion (the registry's commit rename)
    is an error and the upload is still there to retry; a failed abort at unlink is an
    error and the file stays (an upload left behind would be found again by a lookup)."""
    upload = "docker/registry/v2/repositories/r/_uploads/u"
    data_key = pm.prefix + upload + "/data"
    (pm.path / upload).mkdir(parents=True)
    write_file(pm.path / upload / "startedat", b"2026-11-26T00:00:00Z")
    first = os.urandom(5 * MiB)  # one whole part: an append adds parts to the same upload
    write_file(pm.path / upload / "data", first)
    assert [u["Key"] for u in s3.uploads(pm.bucket)] == [data_key]

    def append() -> None:
        with open(pm.path / upload / "data", "ab") as f:
            f.write(b"more")

    proxy.add_fault("internal", method="PUT", query=PART_QUERY)
    expect_errno(errno.EIO, append)
    proxy.clear_faults()
    assert os.path.getsize(pm.path / upload / "data") == len(first)
    assert [u["Key"] for u in s3.uploads(pm.bucket)] == [data_key], "not aborted"

    blob = "docker/registry/v2/blobs/sha256/ab/ab01/data"
    (pm.path / blob).parent.mkdir(parents=True)
    proxy.add_fault("internal", method="POST", query="uploadId=")
    expect_errno(errno.EIO, os.rename, pm.path / upload / "data", pm.path / blob)
    proxy.clear_faults()
    assert [u["Key"] for u in s3.uploads(pm.bucket)] == [data_key]
    os.rename(pm.path / upload / "data", pm.path / blob)
    assert pm.object(blob) == first
    assert s3.uploads(pm.bucket) == []

    write_file(pm.path / upload / "data", b"x" * 100)
    proxy.add_fault("internal", method="DELETE", query="uploadId=")
    expect_errno(errno.EIO, os.unlink, pm.path / upload / "data")
    proxy.clear_faults()
    assert [u["Key"] for u in s3.uploads(pm.bucket)] == [data_key], "still there"
    assert (pm.path / upload / "data").read_bytes() == b"x" * 100
    os.unlink(pm.path / upload / "data")
    assert s3.uploads(pm.bucket) == []
    assert not (pm.path / upload / "data").exists()


def test_persistent_read_failure_is_eio_never_short_bytes(pm: Mount, proxy: S3Proxy) -> None:
    data = os.urandom(3 * MiB)
    write_file(pm.path / "f", data)
    proxy.add_fault("cut", method="GET")
    with open(pm.path / "f", "rb") as f:
        expect_errno(errno.EIO, f.read)
    proxy.clear_faults()
    assert (pm.path / "f").read_bytes() == data


def test_spool_full_is_enospc_at_write(s3: S3Server, mount_factory: MountFactory) -> None:
    mount = mount_factory(s3, mount={"spool_limit": MiB})
    data = os.urandom(3 * MiB)
    write_file(mount.path / "f", data)
    with open(mount.path / "f", "r+b", buffering=0) as f:
        f.seek(1000)
        expect_errno(errno.ENOSPC, f.write, b"in the middle")
    assert mount.object("f") == data, "the object is never truncated or corrupted"


def test_no_request_for_nothing_new(pm: Mount, proxy: S3Proxy) -> None:
    fd = os.open(pm.path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        os.write(fd, b"x" * 100)
        os.fsync(fd)
        proxy.reset_counts()
        os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    assert proxy.count() == 0
    fd = os.open(pm.path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    assert proxy.count() == 0


def test_listing_attributes_need_no_head(pm: Mount, proxy: S3Proxy) -> None:
    (pm.path / "d").mkdir()
    for i in range(50):
        write_file(pm.path / "d" / f"f{i}", b"x" * i)
    proxy.reset_counts()
    sizes = {entry.name: entry.stat().st_size for entry in os.scandir(pm.path / "d")}
    assert sizes["f49"] == 49 and len(sizes) == 50
    assert proxy.count(method="HEAD") == 0
    assert proxy.count(method="GET", query_contains="list-type=2") <= 1


def test_append_copies_large_objects_server_side(pm: Mount, proxy: S3Proxy) -> None:
    base = os.urandom(6 * MiB)
    write_file(pm.path / "f", base)
    proxy.reset_counts()
    with open(pm.path / "f", "ab") as f:
        f.write(b"tail")
    assert pm.object("f") == base + b"tail"
    parts = [r for r in proxy.requests if r.method == "PUT" and PART_QUERY in r.query]
    assert sorted(r.bytes_in for r in parts) == [0, 4], "part 1 copied server-side, part 2 sent"
    assert proxy.count(method="GET", path_contains="/f") == 0, "no download of the base"


def test_small_files_cost_one_get(pm: Mount, proxy: S3Proxy) -> None:
    write_file(pm.path / "link", b"sha256:" + b"a" * 64)
    proxy.reset_counts()
    assert (pm.path / "link").read_bytes() == b"sha256:" + b"a" * 64
    assert proxy.count(method="GET", path_contains="/link") == 1


def test_digest_links_are_read_from_s3_once(pm: Mount, proxy: S3Proxy, s3: S3Server) -> None:
    """A link named by a digest holds that digest: while its ETag is the MD5 of that
    digest, reading it costs no GET at all. Other small files, and a link whose ETag
    changed, are fetched again."""
    digest = b"sha256:" + b"b" * 64
    layer = "docker/registry/v2/repositories/r/_layers/sha256/" + "b" * 64 + "/link"
    tag = "docker/registry/v2/repositories/r/_manifests/tags/t/current/link"
    for rel in (layer, tag):
        (pm.path / rel).parent.mkdir(parents=True, exist_ok=True)
        write_file(pm.path / rel, digest)
    proxy.reset_counts()
    for _ in range(3):
        assert (pm.path / layer).read_bytes() == digest
        assert (pm.path / tag).read_bytes() == digest
    assert proxy.count(method="GET", path_contains="/_layers/") == 0
    assert proxy.count(method="GET", path_contains="/current/link") == 3
    s3.put(pm.bucket, pm.prefix + layer, b"sha256:" + b"c" * 64)  # by hand, behind the mount
    assert wait_until(lambda: (pm.path / layer).read_bytes() == b"sha256:" + b"c" * 64, 10)


def test_rewrite_with_the_same_bytes_needs_no_request(pm: Mount, proxy: S3Proxy) -> None:
    """The registry writes every upload hash state twice; the second write costs nothing.
    Only for registry paths whose content is a function of their name."""
    from tests.test_registry_trace import put_content_28

    state = pm.path / "docker/registry/v2/repositories/r/_uploads/u/hashstates/sha256/0"
    put_content_28(pm.path / "docker/registry/v2/repositories/r/_uploads/u/startedat", b"t")
    put_content_28(state, b"h" * 108)
    proxy.reset_counts()
    put_content_28(state, b"h" * 108)
    assert proxy.count(method="PUT") == 0
    put_content_28(state, b"x" * 108)
    assert proxy.count(method="PUT") == 1
    assert (
        pm.object("docker/registry/v2/repositories/r/_uploads/u/hashstates/sha256/0") == b"x" * 108
    )
    tag = pm.path / "docker/registry/v2/repositories/r/_manifests/tags/t/current/link"
    put_content_28(tag, b"sha256:" + b"1" * 64)
    proxy.reset_counts()
    put_content_28(tag, b"sha256:" + b"1" * 64)  # a tag may have moved meanwhile: rewrite it
    assert proxy.count(method="PUT") == 1


def test_empty_new_file_is_in_s3_when_close_returns(pm: Mount, proxy: S3Proxy) -> None:
    """close() of a new file nothing was written to stores the 0-byte object before it
    returns (the release that follows close is asynchronous: too late to count on)."""
    fd = os.open(pm.path / "empty", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    proxy.reset_counts()
    os.close(fd)
    assert proxy.count(method="PUT") == 1
    assert pm.object("empty") == b""


def test_shell_redirection_stores_the_content(pm: Mount, proxy: S3Proxy) -> None:
    """`printf x > f` closes f once before writing to it (dup2): that close stores an empty
    object, the last one the content; nothing else is sent."""
    import subprocess

    proxy.reset_counts()
    subprocess.run(f"printf hello > {pm.path}/redirected", shell=True, check=True)
    assert pm.object("redirected") == b"hello"
    assert proxy.count(method="PUT") == 2
    assert proxy.count(method="GET", path_contains="redirected") == 0


def test_tree_walk_lists_the_subtree_once(pm: Mount, proxy: S3Proxy) -> None:
    """ls -lR and find over a tree written by another tool: a few listing pages for the
    whole tree (not one ListObjectsV2 per directory), no HEAD, every name right."""
    import subprocess

    client = pm.server.client()
    expected = set()
    for d in range(60):
        for f in range(5):
            key = f"tree/d{d:02d}/sub/f{f}"
            client.put_object(Bucket=pm.bucket, Key=pm.prefix + key, Body=b"x" * f)
            expected.add(key)
    client.put_object(Bucket=pm.bucket, Key=pm.prefix + "tree/marker/", Body=b"")
    proxy.reset_counts()
    listing = subprocess.run(
        ["ls", "-lR", str(pm.path / "tree")], check=True, capture_output=True, text=True
    ).stdout
    found = subprocess.run(
        ["find", str(pm.path / "tree"), "-type", "f"], check=True, capture_output=True, text=True
    ).stdout.split()
    assert {str(Path(p).relative_to(pm.path)) for p in found} == expected
    assert listing.count(" f4\n") == 60 and "marker" in listing
    assert proxy.count(method="HEAD") == 0
    assert proxy.count(method="GET", query_contains="list-type=2") <= 6
