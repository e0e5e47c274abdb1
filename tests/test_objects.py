"""What the objects in S3 look like: parts, headers, ACL, storage class, SSE, no extra keys.

Runs on both servers. Where Ceph RGW differs from AWS the assertion says so explicitly:
RGW accepts SSE-S3 (AES256) but stores the object unencrypted and does not echo the header.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config as BotoConfig

from tests.conftest import MountFactory
from tests.mounts import Mount, S3Server, object_grants
from tests.s3proxy import S3Proxy

MiB = 1024 * 1024


def grants(mount: Mount, rel: str) -> set[tuple[str, str]]:
    return object_grants(mount.server.client(), mount.bucket, mount.prefix + rel)


def check_headers(
    mount: Mount, rel: str, *, storage_class: str, sse: str = "", kms: str = ""
) -> None:
    head: dict[str, Any] = mount.head(rel)
    assert head["ContentType"] == "application/octet-stream"
    assert head.get("Metadata", {}) == {}, "no x-amz-meta-* ever"
    assert head.get("StorageClass", "STANDARD") == storage_class
    if sse == "AES256" and mount.server.is_rgw:
        # RGW 16 accepts x-amz-server-side-encryption: AES256, ignores it and does not echo it
        assert head.get("ServerSideEncryption") is None
    else:
        assert head.get("ServerSideEncryption", "") == sse
    if kms:
        assert head.get("SSEKMSKeyId", "").endswith(kms)


def test_multipart_object_with_default_headers(s3: S3Server, mount_factory: MountFactory) -> None:
    mount = mount_factory(s3, s3={"chunksize": 5 * MiB})
    data = os.urandom(25 * MiB)
    (mount.path / "big").write_bytes(data)
    (mount.path / "small").write_bytes(b"small")
    assert mount.object("big") == data
    assert mount.head("big")["ETag"].strip('"').endswith("-5"), "five 5 MiB parts"
    assert "-" not in mount.head("small")["ETag"], "a small file is one PutObject"
    for rel in ("big", "small"):
        check_headers(mount, rel, storage_class="STANDARD")
        assert grants(mount, rel) == {("owner", "FULL_CONTROL")}
    assert mount.object_keys() == ["big", "small"]
    assert s3.keys(mount.bucket) == ["reg/big", "reg/small"]
    assert s3.uploads(mount.bucket) == []


def test_configured_acl_class_and_sse_on_every_write(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    mount = mount_factory(
        s3,
        s3={
            "chunksize": 5 * MiB,
            "objectacl": "public-read",
            "storageclass": "reduced_redundancy",
            "encrypt": True,
            "multipartcopythresholdsize": 6 * MiB,
            "multipartcopychunksize": 5 * MiB,
        },
    )
    (mount.path / "put").write_bytes(b"x" * 1000)
    (mount.path / "mpu").write_bytes(os.urandom(11 * MiB))
    (mount.path / "copied").write_bytes(b"y" * 1000)
    os.rename(mount.path / "copied", mount.path / "copied2")  # CopyObject
    (mount.path / "mcopied").write_bytes(os.urandom(7 * MiB))
    os.rename(mount.path / "mcopied", mount.path / "mcopied2")  # UploadPartCopy
    with open(mount.path / "put", "ab") as f:  # append: PutObject of old + new bytes
        f.write(b"z")
    for rel in ("put", "mpu", "copied2", "mcopied2"):
        check_headers(mount, rel, storage_class="REDUCED_REDUNDANCY", sse="AES256")
        assert ("AllUsers", "READ") in grants(mount, rel), rel
    assert mount.head("mcopied2")["ETag"].strip('"').endswith("-2")
    assert mount.object_keys() == ["copied2", "mcopied2", "mpu", "put"]


def test_sse_kms_key(s3: S3Server, mount_factory: MountFactory) -> None:
    key_id = s3.kms_key_id or "test-key-id"
    mount = mount_factory(s3, s3={"encrypt": True, "keyid": key_id, "chunksize": 5 * MiB})
    (mount.path / "k").write_bytes(b"secret bytes")
    (mount.path / "m").write_bytes(os.urandom(6 * MiB))
    for rel in ("k", "m"):
        check_headers(mount, rel, storage_class="STANDARD", sse="aws:kms", kms=key_id)
    assert (mount.path / "k").read_bytes() == b"secret bytes"


def test_storage_class_none_sends_no_header(s3: S3Server, mount_factory: MountFactory) -> None:
    mount = mount_factory(s3, s3={"storageclass": "NONE", "objectacl": "bucket-owner-full-control"})
    (mount.path / "f").write_bytes(b"f")
    check_headers(mount, "f", storage_class="STANDARD")


def test_rootdirectory_normalisation(s3: S3Server, mount_factory: MountFactory) -> None:
    bucket = s3.new_bucket()
    for root, prefix in (("", ""), ("/", ""), ("a/b///", "a/b/"), ("/a//b/", "a//b/")):
        mount = mount_factory(s3, bucket, s3={"rootdirectory": root})
        (mount.path / "f").write_bytes(root.encode())
        assert s3.get(bucket, prefix + "f") == root.encode()
        assert mount.stop() == 0


def test_sigv2_mount(s3: S3Server, mount_factory: MountFactory) -> None:
    """v4auth: false signs every request with SigV2; RGW verifies those signatures."""
    mount = mount_factory(s3, s3={"v4auth": False, "chunksize": 5 * MiB})
    data = os.urandom(6 * MiB)
    (mount.path / "d" / "e").mkdir(parents=True)
    (mount.path / "d" / "e" / "f").write_bytes(data)
    (mount.path / "d" / "g").write_bytes(b"g")
    os.rename(mount.path / "d" / "g", mount.path / "d" / "h")
    assert sorted(os.listdir(mount.path / "d")) == ["e", "h"]
    assert (mount.path / "d" / "e" / "f").read_bytes() == data
    shutil.rmtree(mount.path / "d")
    assert mount.object_keys() == []


@pytest.mark.parametrize("v4auth", [True, False], ids=["sigv4", "sigv2"])
def test_checksum_headers_are_the_native_drivers(
    s3: S3Server, mount_factory: MountFactory, v4auth: bool
) -> None:
    """Content-MD5 on every PutObject, UploadPart and DeleteObjects and no x-amz-checksum-*
    header anywhere, as the registry's driver (aws-sdk-go v1) sends them, seen on the wire
    through a proxy that refuses anything else, as stores that know only Content-MD5 do."""
    with S3Proxy(s3.endpoint, md5_only=True) as proxy:
        plain = boto3.client(
            "s3",
            endpoint_url=proxy.url,
            region_name=s3.region,
            aws_access_key_id=s3.access_key,
            aws_secret_access_key=s3.secret_key,
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"total_max_attempts": 1}),
        )
        with pytest.raises(botocore.exceptions.ClientError, match="not supported"):
            plain.delete_objects(Bucket="b", Delete={"Objects": [{"Key": "k"}]})  # CRC32
        proxy.reset_counts()
        mount = mount_factory(s3, s3={"chunksize": 5 * MiB, "v4auth": v4auth}, endpoint=proxy.url)
        big = os.urandom(11 * MiB)  # three parts
        (mount.path / "d").mkdir()
        (mount.path / "d" / "small").write_bytes(b"small")
        (mount.path / "d" / "big").write_bytes(big)
        os.rename(mount.path / "d", mount.path / "e")  # CopyObject x2, then DeleteObjects
        assert (mount.path / "e" / "big").read_bytes() == big
        assert mount.object_keys() == ["e/big", "e/small"]
        records = proxy.requests
    writes = [r for r in records if r.method == "PUT" and not r.header("x-amz-copy-source")]
    parts = [r for r in writes if "partNumber=" in r.query]
    deletes = [r for r in records if r.method == "POST" and r.query.startswith("delete")]
    assert len(writes) == 4 and len(parts) == 3 and len(deletes) == 1, records
    assert all(r.header("content-md5") for r in writes + deletes)
    assert [r for r in records if r.fault is not None] == []
    flexible = [k for r in records for k, _ in r.headers if "checksum" in k.lower()]
    assert flexible == []
