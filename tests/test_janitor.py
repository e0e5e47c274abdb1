"""The janitor aborts stale multipart uploads under the prefix, and nothing else."""

from __future__ import annotations

import os
import time

from s3fs_registry import metrics
from s3fs_registry.janitor import Janitor
from tests.conftest import MountFactory
from tests.mounts import S3Server, wait_until
from tests.test_store import make_store


async def test_sweep_is_scoped_and_paginated(moto: S3Server) -> None:
    bucket = moto.new_bucket()
    client = moto.client()
    inside = [f"reg/k{i:04d}" for i in range(1005)]
    for key in [*inside, "other/k", "regsuffix/k"]:
        client.create_multipart_upload(Bucket=bucket, Key=key)
    janitor = Janitor(make_store(moto, bucket), "reg/", age=0.0, interval=3600)

    def aborted() -> float:
        labels = {"result": "aborted"}
        return metrics.REGISTRY.get_sample_value("s3fs_registry_janitor_aborts_total", labels) or 0

    before = aborted()
    assert await janitor.sweep() == 1005
    assert sorted(u["Key"] for u in moto.uploads(bucket)) == ["other/k", "regsuffix/k"]
    assert aborted() == before + 1005, "every abort is counted"


async def test_young_uploads_are_kept(rgw: S3Server) -> None:
    """On RGW only: moto reports every multipart upload as initiated on 2010-11-10."""
    bucket = rgw.new_bucket()
    rgw.client().create_multipart_upload(Bucket=bucket, Key="reg/young")
    janitor = Janitor(make_store(rgw, bucket), "reg/", age=3600.0, interval=3600)
    assert await janitor.sweep() == 0
    assert [u["Key"] for u in rgw.uploads(bucket)] == ["reg/young"]


def test_janitor_spares_the_mounts_own_uploads(moto: S3Server, mount_factory: MountFactory) -> None:
    """moto dates every upload 2010, so a janitor running every 0.2 s sees this mount's own
    uploads in flight as stale: it must leave them alone."""
    mount = mount_factory(
        moto,
        s3={"chunksize": 5 * 1024 * 1024},
        mount={"janitor_age": "1s", "janitor_interval": "0.2s"},
    )
    data = os.urandom(1024 * 1024)
    with open(mount.path / "slow", "wb") as f:
        for _ in range(12):
            f.write(data)
            time.sleep(0.1)
    assert mount.object("slow") == data * 12
    assert "janitor: aborted" not in mount.log()


def test_mount_runs_the_janitor(s3: S3Server, mount_factory: MountFactory) -> None:
    bucket = s3.new_bucket()
    client = s3.client()
    client.create_multipart_upload(Bucket=bucket, Key="reg/stale")
    client.create_multipart_upload(Bucket=bucket, Key="elsewhere/stale")
    time.sleep(1.1)
    mount = mount_factory(s3, bucket, mount={"janitor_age": "1s", "janitor_interval": "1s"})
    deadline = time.monotonic() + 10
    while any(u["Key"] == "reg/stale" for u in s3.uploads(bucket)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [u["Key"] for u in s3.uploads(bucket)] == ["elsewhere/stale"]
    # the log line follows the abort's answer: the upload can be gone a moment before it
    aborted = "janitor: aborted a multipart upload of reg/stale"
    assert wait_until(lambda: aborted in mount.log(), 10)
    disabled = mount_factory(
        s3,
        bucket,
        s3={"rootdirectory": "/elsewhere"},
        mount={"janitor": False, "janitor_age": "1s"},
    )
    time.sleep(1.5)
    assert [u["Key"] for u in s3.uploads(bucket)] == ["elsewhere/stale"]
    assert "janitor:" not in disabled.log()


async def test_registry_uploads_in_flight_are_left_to_the_registry(moto: S3Server) -> None:
    """An upload's `data` kept open belongs to the registry while its `startedat` exists (the
    registry purges it); without `startedat` it is an orphan and is aborted."""
    bucket = moto.new_bucket()
    client = moto.client()
    uploads = "reg/docker/registry/v2/repositories/lib/app/_uploads"
    client.put_object(Bucket=bucket, Key=f"{uploads}/live/startedat", Body=b"2026-11-26T00:00:00Z")
    for key in [f"{uploads}/live/data", f"{uploads}/orphan/data", "reg/plain"]:
        client.create_multipart_upload(Bucket=bucket, Key=key)
    janitor = Janitor(make_store(moto, bucket), "reg/", age=0.0, interval=3600)
    assert await janitor.sweep() == 2
    assert [u["Key"] for u in moto.uploads(bucket)] == [f"{uploads}/live/data"]
