"""The registry's own system-call sequences (reference §1.2, §1.3, Appendix A), replayed.

These mirror what Go's os package does for the filesystem driver in distribution 2.8 (and
the v3.1 PutContent with a temporary file and rename), with the same flags and order, so a
failure here is a failure the registry would hit. The registry itself runs on the mount in
test_registry.py.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import MountFactory
from tests.mounts import S3Server
from tests.s3proxy import S3Proxy

MiB = 1024 * 1024
WRITE = 32 * 1024


def mkdir_all(path: Path) -> None:
    """Go's os.MkdirAll(path, 0o777): stat first, then make the missing parents, then mkdir."""
    try:
        if os.stat(path).st_mode & 0o170000 == 0o040000:
            return
        raise NotADirectoryError(path)
    except FileNotFoundError:
        pass
    mkdir_all(path.parent)
    try:
        os.mkdir(path, 0o777)
    except FileExistsError:
        if not path.is_dir():
            raise


def put_content_28(path: Path, data: bytes) -> None:
    """2.8 and 3.0 PutContent: MkdirAll, open(O_WRONLY|O_CREAT) without O_TRUNC, ftruncate(0),
    write, fsync (Commit, whose error the registry returns), then the deferred Close: fsync
    and close, whose errors the registry ignores."""
    mkdir_all(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        with contextlib.suppress(OSError):
            os.fsync(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def uuid7() -> str:
    """A version 7 UUID as distribution's internal/uuid.NewString makes them (google/uuid)."""
    ms = time.time_ns() // 1_000_000
    raw = bytearray(ms.to_bytes(6, "big") + os.urandom(10))
    raw[6] = 0x70 | (raw[6] & 0x0F)
    raw[8] = 0x80 | (raw[8] & 0x3F)
    return str(uuid.UUID(bytes=bytes(raw)))


def put_content_31(path: Path, data: bytes, tmp_name: str | None = None) -> None:
    """v3.1 PutContent (filesystem driver.go, verbatim order):

    Writer(tmp, false): MkdirAll(dir, 0o777), open(tmp, O_WRONLY|O_CREAT, 0o666), ftruncate(0);
    io.Copy: one write (bufio); Commit: fsync; Move(tmp, path): Stat(tmp), MkdirAll(dir),
    rename, while the file is still open; syncDir(dir): open, fsync, close; then the
    deferred Close, which after a Commit only closes. On a Move error: Delete(tmp), that is
    Stat(tmp) + RemoveAll(tmp), before the deferred Close. Raises what the failing call raised.
    """
    tmp = path.with_name(tmp_name or f"{path.name}.{uuid7()}.tmp")
    mkdir_all(tmp.parent)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    committed = False
    try:
        os.ftruncate(fd, 0)
        os.write(fd, data)
        os.fsync(fd)
        committed = True
        os.stat(tmp)
        mkdir_all(path.parent)
        try:
            os.rename(tmp, path)
        except OSError:
            os.stat(tmp)
            os.unlink(tmp)  # RemoveAll: Remove succeeds at once
            raise
        dfd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:  # the deferred Close: only close after a Commit; its error is ignored
        if not committed:
            with contextlib.suppress(OSError):
                os.fsync(fd)
        with contextlib.suppress(OSError):
            os.close(fd)


def get_content(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 4 * MiB):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def append_chunk(data_path: Path, chunk: bytes, expected_offset: int) -> None:
    """A PATCH: Writer(append=true) -> lseek(SEEK_END) must equal what was written so far."""
    fd = os.open(data_path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        offset = os.lseek(fd, 0, os.SEEK_END)
        assert offset == expected_offset, "the registry would cancel the upload here"
        for start in range(0, len(chunk), WRITE):
            os.write(fd, chunk[start : start + WRITE])
        os.fsync(fd)
    finally:
        os.close(fd)


def test_chunked_blob_upload_trace(s3: S3Server, mount_factory: MountFactory) -> None:
    mount = mount_factory(s3, s3={"chunksize": 5 * MiB})
    v2 = mount.path / "docker/registry/v2"
    repo = v2 / "repositories/library/demo"
    upload = repo / "_uploads" / str(uuid.uuid4())
    chunks = [os.urandom(70_000), os.urandom(50_000), os.urandom(6 * MiB + 17), os.urandom(3)]
    blob = b"".join(chunks)
    digest = hashlib.sha256(blob).hexdigest()

    # POST: startedat, empty data file, hashstate 0 (written twice)
    put_content_28(upload / "startedat", b"2026-11-26T17:13:37Z")
    fd = os.open(upload / "data", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    os.ftruncate(fd, 0)
    put_content_28(upload / "hashstates/sha256/0", b"h" * 108)
    os.fsync(fd)
    os.close(fd)
    put_content_28(upload / "hashstates/sha256/0", b"h" * 108)

    written = 0
    for chunk in chunks:  # one PATCH per chunk
        assert get_content(upload / "startedat") == b"2026-11-26T17:13:37Z"
        if written:
            assert os.listdir(upload / "hashstates/sha256")
            assert get_content(upload / f"hashstates/sha256/{written}") == b"h" * 108
        append_chunk(upload / "data", chunk, written)
        written += len(chunk)
        put_content_28(upload / f"hashstates/sha256/{written}", b"h" * 108)
        put_content_28(upload / f"hashstates/sha256/{written}", b"h" * 108)

    # PUT ?digest=: Commit, validate, move the blob, link it, remove the upload
    append_chunk(upload / "data", b"", written)
    assert os.stat(upload / "data").st_size == len(blob)
    blob_dir = v2 / f"blobs/sha256/{digest[:2]}/{digest}"
    assert not os.path.exists(blob_dir / "data")
    blob_dir.mkdir(parents=True)
    os.rename(upload / "data", blob_dir / "data")
    link = f"sha256:{digest}".encode()
    put_content_28(repo / f"_layers/sha256/{digest}/link", link)
    shutil.rmtree(upload)

    # GET: link, stat, read the blob in 4 MiB reads
    assert get_content(repo / f"_layers/sha256/{digest}/link") == link
    assert os.stat(blob_dir / "data").st_size == len(blob)
    assert get_content(blob_dir / "data") == blob
    assert mount.object_keys() == [
        f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data",
        f"docker/registry/v2/repositories/library/demo/_layers/sha256/{digest}/link",
    ]
    assert mount.object(f"docker/registry/v2/blobs/sha256/{digest[:2]}/{digest}/data") == blob
    assert s3.uploads(mount.bucket) == []


def test_tag_rewrites_in_place_and_by_rename(s3: S3Server, mount_factory: MountFactory) -> None:
    mount = mount_factory(s3)
    current = mount.path / "docker/registry/v2/repositories/r/_manifests/tags/latest/current/link"
    put_content_28(current, b"sha256:" + b"1" * 64)
    put_content_28(current, b"sha256:" + b"2" * 64)
    assert get_content(current) == b"sha256:" + b"2" * 64
    put_content_31(current, b"sha256:" + b"3" * 64)
    assert get_content(current) == b"sha256:" + b"3" * 64
    assert mount.object_keys() == [
        "docker/registry/v2/repositories/r/_manifests/tags/latest/current/link"
    ]
    assert mount.object(mount.object_keys()[0]) == b"sha256:" + b"3" * 64


def test_cancelled_upload_and_remove_all(s3: S3Server, mount_factory: MountFactory) -> None:
    mount = mount_factory(s3)
    upload = mount.path / "docker/registry/v2/repositories/r/_uploads/u1"
    put_content_28(upload / "startedat", b"2026-11-26T17:13:37Z")
    append_chunk(upload / "data", os.urandom(1000), 0)
    put_content_28(upload / "hashstates/sha256/1000", b"h" * 108)
    # Cancel: close, unlink data, then RemoveAll of the upload directory
    os.unlink(upload / "data")
    shutil.rmtree(upload)
    assert not (mount.path / "docker/registry/v2/repositories/r/_uploads/u1").exists()
    assert mount.object_keys() == []
    # RemoveAll of a prefix must not touch siblings that merely share it
    put_content_28(mount.path / "d/f", b"1")
    put_content_28(mount.path / "d/fsuffix", b"2")
    put_content_28(mount.path / "d/dsuffix/f", b"3")
    put_content_28(mount.path / "d/d/f", b"4")
    os.unlink(mount.path / "d/f")
    shutil.rmtree(mount.path / "d/d")
    assert mount.object_keys() == ["d/dsuffix/f", "d/fsuffix"]


REPO = "docker/registry/v2/repositories/library/demo"


def s3_calls(proxy: S3Proxy) -> list[str]:
    """What the mount asked S3, as `METHOD key?query` (the bucket and prefix cut off)."""
    assert proxy.wait_idle()
    return [
        f"{r.method} {r.path.split('/', 3)[-1]}{'?' + r.query if r.query else ''}"
        for r in proxy.requests
    ]


def test_put_content_31_is_one_put_object_as_under_the_native_driver(
    moto: S3Server, mount_factory: MountFactory
) -> None:
    """v3.1's PutContent (temporary, fsync, rename while open, directory fsync, close) costs
    one PutObject at the final key, as the native driver's PutContent: no request names the
    temporary, which never appears in the bucket. A hash state written twice with the same
    bytes costs one (as 2.8's in-place rewrite). In directories last seen longer than
    metadata_ttl ago it costs what 3.0's in-place PutContent costs: the same lookups."""
    with S3Proxy(moto.endpoint) as proxy:
        mount = mount_factory(moto, endpoint=proxy.url)
        repo = mount.path / REPO
        mkdir_all(repo)
        upload = repo / "_uploads" / uuid7()
        digest = hashlib.sha256(b"blob").hexdigest()
        tag = repo / "_manifests/tags/latest/current/link"
        writes = [
            (upload / "startedat", b"2026-11-26T17:13:37Z"),
            (upload / "hashstates/sha256/0", b"h" * 108),
            (upload / "hashstates/sha256/0", b"h" * 108),
            (repo / f"_layers/sha256/{digest}/link", f"sha256:{digest}".encode()),
            (tag, b"sha256:" + b"1" * 64),
            (tag, b"sha256:" + b"2" * 64),
        ]
        calls = []
        for path, data in writes:
            proxy.reset_counts()
            put_content_31(path, data)
            calls.append(s3_calls(proxy))
        key = f"{REPO}/_manifests/tags/latest/current/link"
        assert calls == [
            [f"PUT {path.relative_to(mount.path)}"] if n != 2 else []
            for n, (path, _) in enumerate(writes)
        ]
        stale = []
        for put_content in (put_content_31, put_content_28):
            time.sleep(1.2)  # metadata_ttl: every directory of the path must be asked again
            proxy.reset_counts()
            put_content(tag, b"sha256:" + b"3" * 64)
            stale.append(s3_calls(proxy))
        own = {quote("reg/" + key.rsplit("/", n)[0], safe="") for n in range(key.count("/") + 1)}
        for version in stale:  # only the path's own names are asked again, never the .tmp
            assert [c for c in version if "?list-type=2&" not in c] == [f"PUT {key}"], version
            listed = [c.split("&prefix=")[1].split("&")[0] for c in version if "&prefix=" in c]
            assert set(listed) <= own, version
    assert mount.object(key) == b"sha256:" + b"3" * 64
    assert mount.object_keys() == sorted({str(p.relative_to(mount.path)) for p, _ in writes})
    assert moto.uploads(mount.bucket) == []


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_put_content_failures_leave_the_old_object_and_no_temporary(
    moto: S3Server, mount_factory: MountFactory, version: str
) -> None:
    """A failed upload fails the call the registry checks with its errno (v3.1: rename, then
    the registry's Delete(tmp) and close; 3.0: the Commit fsync): the object keeps its old
    bytes and no temporary is left, here or in the bucket. An answer lost after S3 took the
    request is retried and the call succeeds; then the next PutContent works."""
    put_content = put_content_31 if version == "3.1" else put_content_28
    with S3Proxy(moto.endpoint) as proxy:
        mount = mount_factory(
            moto, endpoint=proxy.url, mount={"retry_attempts": 2, "retry_time": "2s"}
        )
        key = f"{REPO}/_manifests/tags/latest/current/link"
        tag = mount.path / key
        put_content(tag, b"old")
        for kind, code in (
            ("internal", errno.EIO),
            ("access_denied", errno.EACCES),
            ("quota", errno.ENOSPC),
        ):
            rule = proxy.add_fault(kind, method="PUT", path="/current/link$")
            with pytest.raises(OSError) as info:
                put_content(tag, b"new")
            assert info.value.errno == code, kind
            proxy.remove_fault(rule)
            assert get_content(tag) == b"old" and mount.object(key) == b"old"
            assert os.listdir(tag.parent) == ["link"]
        proxy.add_fault("reset", method="PUT", path="/current/link$", after_upstream=True, times=1)
        put_content(tag, b"after a lost answer")
        assert mount.object(key) == b"after a lost answer"
        put_content(tag, b"next")
        assert not [r for r in proxy.requests if ".tmp" in r.path]
    assert mount.object_keys() == [key] and mount.object(key) == b"next"


def test_temporary_closed_without_rename_costs_nothing(
    moto: S3Server, mount_factory: MountFactory
) -> None:
    """v3.1's error paths: a temporary closed without a rename (a failed Commit: fsync,
    close) is discarded; one cancelled (close, unlink) too; neither costs a request. Other
    names keep "fsync means in S3", also the ones that only resemble a temporary."""
    with S3Proxy(moto.endpoint) as proxy:
        mount = mount_factory(moto, endpoint=proxy.url)
        current = mount.path / REPO / "_manifests/tags/latest/current"
        mkdir_all(current)
        proxy.reset_counts()
        for cancel in (False, True):
            tmp = current / f"link.{uuid7()}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            os.write(fd, b"sha256:" + b"1" * 64)
            os.fsync(fd)
            assert get_content(tmp) == b"sha256:" + b"1" * 64  # held: read from memory
            os.close(fd)
            if cancel:
                with pytest.raises(FileNotFoundError):
                    os.unlink(tmp)  # gone at its close already
            assert not tmp.exists()
        assert s3_calls(proxy) == []
        for name in (f"link.{uuid.uuid4()}.tmp", "link.tmp", f"link.{uuid7().upper()}.tmp"):
            fd = os.open(current / name, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
            os.write(fd, b"x")
            os.fsync(fd)
            assert mount.object(f"{REPO}/_manifests/tags/latest/current/{name}") == b"x"
            os.close(fd)


def push_31(v2: Path, repo: str, blobs: list[bytes], manifest: bytes, tag: str) -> None:
    """A v3.1 push on the filesystem driver (reference §1.3 with v3.1's PutContent, Close and
    Move): per blob a POST, one PATCH and the PUT; then the manifest PUT with its tag."""
    r = v2 / "repositories" / repo
    for blob in blobs:
        digest = hashlib.sha256(blob).hexdigest()
        u = r / "_uploads" / uuid7()
        put_content_31(u / "startedat", b"2026-11-26T17:13:37Z")  # POST: Create
        mkdir_all(u)
        fd = os.open(u / "data", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        os.ftruncate(fd, 0)
        put_content_31(u / "hashstates/sha256/0", b"h" * 108)  # upload.Close: storeHashState
        os.fsync(fd)  # fileWriter.Close, not committed: fsync, close
        os.close(fd)
        assert get_content(u / "startedat")  # PATCH: Resume, append the chunk, Close
        append_chunk(u / "data", blob, 0)
        put_content_31(u / f"hashstates/sha256/{len(blob)}", b"h" * 108)
        assert get_content(u / "startedat")  # PUT: Resume, Commit (fsync), Close
        fd = os.open(u / "data", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
        assert os.lseek(fd, 0, os.SEEK_END) == len(blob)
        os.fsync(fd)
        put_content_31(u / f"hashstates/sha256/{len(blob)}", b"h" * 108)
        assert os.stat(u / "data").st_size == len(blob)  # validateBlob, resumeDigest
        assert os.listdir(u / "hashstates/sha256")
        assert get_content(u / f"hashstates/sha256/{len(blob)}")
        data = v2 / f"blobs/sha256/{digest[:2]}/{digest}/data"  # moveBlob: v3 Move
        assert not data.exists()
        os.stat(u / "data")
        os.stat(u / "data")
        mkdir_all(data.parent)
        os.rename(u / "data", data)
        os.close(fd)  # the deferred Close after Commit: close only
        put_content_31(r / f"_layers/sha256/{digest}/link", f"sha256:{digest}".encode())
        os.stat(u)  # removeResources: Delete = Stat + RemoveAll
        shutil.rmtree(u)
    digest = hashlib.sha256(manifest).hexdigest()
    data = v2 / f"blobs/sha256/{digest[:2]}/{digest}/data"
    assert not data.exists()
    put_content_31(data, manifest)
    link = f"sha256:{digest}".encode()
    put_content_31(r / f"_manifests/revisions/sha256/{digest}/link", link)
    put_content_31(r / f"_manifests/tags/{tag}/index/sha256/{digest}/link", link)
    put_content_31(r / f"_manifests/tags/{tag}/current/link", link)


def test_push_31_leaves_what_the_native_driver_leaves(
    moto: S3Server, mount_factory: MountFactory
) -> None:
    """A replayed v3.1 push of a config blob, a 6 MiB layer and a manifest: the bucket holds
    exactly the native driver's keys, no request names a temporary, and every PutContent
    is one PutObject (hash states written twice: one)."""
    blobs = [b'{"architecture":"amd64"}', os.urandom(6 * MiB)]
    manifest = b'{"schemaVersion":2,"layers":[]}'
    with S3Proxy(moto.endpoint) as proxy:
        mount = mount_factory(moto, s3={"chunksize": 5 * MiB}, endpoint=proxy.url)
        push_31(mount.path / "docker/registry/v2", "library/demo", blobs, manifest, "latest")
        calls = s3_calls(proxy)
        proxy.reset_counts()
        big = os.urandom(6 * MiB)  # a PutContent larger than a part: spooled, then multipart
        put_content_31(mount.path / REPO / "big", big)
        assert not [c for c in s3_calls(proxy) if ".tmp" in c]
        assert mount.object(f"{REPO}/big") == big
        os.unlink(mount.path / REPO / "big")
    print(f"push: {len(calls)} requests", collections.Counter(c.split(" ")[0] for c in calls))
    digests = [hashlib.sha256(b).hexdigest() for b in [*blobs, manifest]]
    m = digests[-1]
    assert mount.object_keys() == sorted(
        [f"docker/registry/v2/blobs/sha256/{d[:2]}/{d}/data" for d in digests]
        + [f"{REPO}/_layers/sha256/{d}/link" for d in digests[:2]]
        + [f"{REPO}/_manifests/revisions/sha256/{m}/link"]
        + [f"{REPO}/_manifests/tags/latest/{p}" for p in (f"index/sha256/{m}/link", "current/link")]
    )
    assert not [c for c in calls if ".tmp" in c]
    puts = [c.split("?")[0] for c in calls if c.startswith("PUT ") and "partNumber" not in c]
    # per blob: startedat, hash states 0 and N (N twice, same bytes), its data (an upload
    # kept open), its link; then the manifest's four PutContents
    assert len([p for p in puts if "/hashstates/" in p]) == 4
    assert len([p for p in puts if p.endswith(("/startedat", "/link"))]) == 2 + 2 + 3
    assert mount.object(f"{REPO}/_manifests/tags/latest/current/link") == f"sha256:{m}".encode()
