"""The registry's own system-call sequences (reference §1.2, §1.3, Appendix A), replayed.

These mirror what Go's os package does for the filesystem driver in distribution 2.8 (and
the v3.1 PutContent with a temporary file and rename), with the same flags and order, so a
failure here is a failure the registry would hit. The registry itself runs on the mount in
test_registry.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from pathlib import Path

from tests.conftest import MountFactory
from tests.mounts import S3Server

MiB = 1024 * 1024
WRITE = 32 * 1024


def put_content_28(path: Path, data: bytes) -> None:
    """2.8 PutContent: MkdirAll, open(O_WRONLY|O_CREAT) without O_TRUNC, ftruncate(0),
    write, fsync (Commit), fsync + close (Close)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, data)
        os.fsync(fd)
        os.fsync(fd)
    finally:
        os.close(fd)


def put_content_31(path: Path, data: bytes) -> None:
    """v3.1 PutContent: write <name>.<uuid>.tmp, fsync, close, rename over, fsync the dir."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4()}.tmp")
    put_content_28(tmp, data)
    os.rename(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
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
