"""The store against real S3 servers: requests, pagination, checks, SigV2."""

from __future__ import annotations

import os
from typing import Any

import pytest

from s3fs_registry.config import parse_config
from s3fs_registry.errors import NotFoundError
from s3fs_registry.store import Store
from tests.mounts import S3Server, s3_config

MiB = 1024 * 1024


def make_store(server: S3Server, bucket: str, **overrides: Any) -> Store:
    config = parse_config({"storage": {"s3": s3_config(server, bucket, **overrides)}}, {})
    return Store(config.s3, config.mount)


@pytest.mark.parametrize("v4auth", [True, False], ids=["sigv4", "sigv2"])
async def test_every_operation(s3: S3Server, v4auth: bool) -> None:
    """Every request the mount sends works, with SigV4 and with SigV2 (v4auth: false);
    RGW verifies both kinds of signature, bucket listings and multi-object deletes included."""
    bucket = s3.new_bucket()
    store = make_store(s3, bucket, v4auth=v4auth)
    await store.put("reg/a/one", b"1")
    await store.put("reg/a/two", b"22")
    assert (await store.head("reg/a/two")).size == 2
    page = await store.list_page("reg/", delimiter="/")
    assert page.prefixes == ["reg/a/"]
    objects, _ = await store.list_all("reg/a/")
    assert [o.key for o in objects] == ["reg/a/one", "reg/a/two"]
    assert (await store.get("reg/a/two")).data == b"22"
    assert (await store.get("reg/a/two", 1, 1)).data == b"2"
    assert (await store.get("reg/a/two", 5, 9)).data == b""  # past the end: no bytes
    upload = await store.create_multipart("reg/mp")
    etag1 = await store.upload_part("reg/mp", upload, 1, os.urandom(5 * MiB))
    etag2 = await store.upload_part_copy("reg/mp", upload, 2, "reg/a/two", 0, 1)
    parts = await store.list_parts("reg/mp", upload)
    assert [(number, size) for number, size, _ in parts] == [(1, 5 * MiB), (2, 2)]
    assert [etag for _, _, etag in parts] == [etag1, etag2]
    assert [u.key for u in await store.list_uploads("reg/")] == ["reg/mp"]
    await store.complete_multipart("reg/mp", upload, [etag1, etag2])
    assert (await store.head("reg/mp")).size == 5 * MiB + 2
    await store.copy("reg/a/one", "reg/b/one")
    assert (await store.get("reg/b/one")).data == b"1"
    upload = await store.create_multipart("reg/aborted")
    await store.abort_multipart("reg/aborted", upload)
    await store.delete("reg/b/one")
    await store.delete_many(["reg/a/one", "reg/a/two", "reg/mp", "reg/missing"])
    assert s3.keys(bucket) == []
    assert await store.bucket_location()
    with pytest.raises(NotFoundError):
        await store.get("reg/a/one")


async def test_pagination_and_sibling_order(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    client = s3.client()
    for i in range(1005):
        client.put_object(Bucket=bucket, Key=f"p/many/k{i:04d}", Body=b"")
    store = make_store(s3, bucket)
    objects, prefixes = await store.list_all("p/many/")
    assert len(objects) == 1005 and not prefixes
    await store.delete_many(o.key for o in objects)  # two DeleteObjects batches
    assert s3.keys(bucket, "p/many/") == []


async def test_listing_decodes_unusual_key_names(s3: S3Server) -> None:
    bucket = s3.new_bucket()
    store = make_store(s3, bucket)
    names = ["sp ace", "back\\slash", "ümlaut", "and%25percent", "plus+hash#q?mark", "a&b=c"]
    for name in names:
        await store.put(f"reg/{name}", name.encode())
    objects, _ = await store.list_all("reg/")
    assert sorted(o.key[4:] for o in objects) == sorted(names)
