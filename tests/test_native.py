"""The bucket is the native driver's: the same pushes through the registry's own S3 driver
(prefix P1) and through the registry on the mount (prefix P2) leave the same keys, bytes and
object headers; and each registry reads what the other wrote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import MountFactory
from tests.mounts import Mount, S3Server, s3_config
from tests.registry import Registry, make_image, make_index, pull, pulled_blobs, push, random_layer

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
CHUNK = 5 * MiB


def native_registry(
    s3: S3Server, bucket: str, root: str, workdir: Path, **options: Any
) -> Registry:
    block = s3_config(s3, bucket, rootdirectory=root, chunksize=CHUNK, **options)
    return Registry(storage={"s3": block}, workdir=workdir)


def push_images(tmp_path: Path, url: str) -> list[str]:
    """The same images for both registries. No empty layer: the 2.8 S3 driver cannot store
    the empty blob (it completes a multipart upload with no parts, which S3 refuses with
    MalformedXML); the mount can (test_registry.py pushes one)."""
    refs = []
    one = make_image(tmp_path / "one", [random_layer(3 * CHUNK + 1, 1), random_layer(777, 2)])
    two = make_image(tmp_path / "two", [random_layer(2 * MiB, 3)])
    make_index(
        tmp_path / "multi",
        [
            ({"architecture": "amd64", "os": "linux"}, [random_layer(1000, 4)]),
            ({"architecture": "arm64", "os": "linux"}, [random_layer(2000, 5)]),
        ],
    )
    for src, ref in (
        ("one", "lib/one:1"),
        ("one", "lib/one:latest"),
        ("two", "team/x/two:v2"),
        ("multi", "team/multi:all"),
    ):
        push(tmp_path / src, url, ref)
        refs.append(ref)
    assert one.layer_digests and two.layer_digests
    return refs


def describe(s3: S3Server, bucket: str, prefix: str) -> dict[str, dict[str, Any]]:
    """Every key under `prefix` (relative) with its bytes and headers."""
    client = s3.client()
    out = {}
    for key in s3.keys(bucket, prefix):
        head = client.head_object(Bucket=bucket, Key=key)
        acl = client.get_object_acl(Bucket=bucket, Key=key)
        grants = sorted((g["Grantee"].get("URI", "owner"), g["Permission"]) for g in acl["Grants"])
        out[key[len(prefix) :]] = {
            "data": s3.get(bucket, key),
            "type": head.get("ContentType"),
            "class": head.get("StorageClass", "STANDARD"),
            "acl": grants,
            "sse": head.get("ServerSideEncryption"),
            "meta": head.get("Metadata", {}),
        }
    return out


@pytest.mark.parametrize(
    "options",
    [{}, {"objectacl": "public-read", "encrypt": True, "storageclass": "REDUCED_REDUNDANCY"}],
    ids=["defaults", "acl-sse-class"],
)
def test_same_keys_bytes_and_headers(
    s3: S3Server, mount_factory: MountFactory, tmp_path: Path, options: dict[str, Any]
) -> None:
    bucket = s3.new_bucket()
    with native_registry(s3, bucket, "/p1", tmp_path / "native", **options) as native:
        push_images(tmp_path / "img", native.url)
    mount = mount_factory(s3, bucket, s3={"rootdirectory": "/p2", "chunksize": CHUNK, **options})
    with Registry(mount.path, workdir=tmp_path / "onmount") as onmount:
        push_images(tmp_path / "img", onmount.url)
    assert mount.stop() == 0
    p1, p2 = describe(s3, bucket, "p1/"), describe(s3, bucket, "p2/")
    in_flight = [k for k in set(p1) | set(p2) if "/_uploads/" in k]
    assert not in_flight, "no upload state is left once the pushes are done"
    assert sorted(p1) == sorted(p2)
    for key in p1:
        assert p1[key] == p2[key], key
    for key in p2:
        name = key.rsplit("/", 1)[-1]
        assert not key.endswith("/") and not name.startswith(".") and ".tmp" not in name, key
    assert all(v["type"] == "application/octet-stream" and v["meta"] == {} for v in p2.values())


def test_each_registry_reads_what_the_other_wrote(
    s3: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    bucket = s3.new_bucket()
    with native_registry(s3, bucket, "/shared", tmp_path / "native") as native:
        refs = push_images(tmp_path / "img1", native.url)
    mount: Mount = mount_factory(s3, bucket, s3={"rootdirectory": "/shared", "chunksize": CHUNK})
    with Registry(mount.path, workdir=tmp_path / "onmount") as onmount:
        for i, ref in enumerate(refs):
            pull(onmount.url, ref, tmp_path / f"a{i}", "--all")
        layer = random_layer(3 * CHUNK + 1, 11)
        make_image(tmp_path / "fresh", [layer])
        push(tmp_path / "fresh", onmount.url, "from/mount:1")
    with native_registry(s3, bucket, "/shared", tmp_path / "native2") as native:
        pull(native.url, "from/mount:1", tmp_path / "b")
        assert layer in pulled_blobs(tmp_path / "b").values()
        assert "from/mount" in native.client.catalog()


@pytest.mark.parametrize("first", ["native", "mount"])
def test_uploads_in_flight_cross_over(
    s3: S3Server, mount_factory: MountFactory, tmp_path: Path, first: str
) -> None:
    """An upload in flight is a pending multipart upload under both drivers, so a chunked
    upload started by one registry continues and completes through the other."""
    import hashlib
    import os

    bucket = s3.new_bucket()
    mount = mount_factory(s3, bucket, s3={"rootdirectory": "/shared", "chunksize": CHUNK})
    data = os.urandom(3 * CHUNK + 123)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with (
        native_registry(s3, bucket, "/shared", tmp_path / "native") as native,
        Registry(mount.path, workdir=tmp_path / "onmount") as onmount,
    ):
        one, two = (native, onmount) if first == "native" else (onmount, native)

        def moved(location: str, src: Registry, dst: Registry) -> str:
            return location.replace(src.netloc, dst.netloc)

        location = one.client.start_upload("cross/repo")
        location = one.client.upload_chunk(location, data[: CHUNK + 7], 0)
        location = two.client.upload_chunk(
            moved(location, one, two), data[CHUNK + 7 : 2 * CHUNK + 9], CHUNK + 7
        )
        location = one.client.upload_chunk(
            moved(location, two, one), data[2 * CHUNK + 9 :], 2 * CHUNK + 9
        )
        two.client.complete_upload(moved(location, one, two), digest)
        time.sleep(1.5)  # what the other replica did shows within metadata_ttl (1 s)
        assert one.client.get_blob("cross/repo", digest) == data
        assert two.client.get_blob("cross/repo", digest) == data
    assert [u for u in s3.uploads(bucket) if "/_uploads/" in u["Key"]] == []
