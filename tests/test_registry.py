"""The unmodified registry (Debian's docker-registry 2.8) on the mount, driven by skopeo and
by a small HTTP client, on both S3 servers.

One stack per server for the module: a mount with chunksize 5 MiB and a registry whose
filesystem rootdirectory is the mount point. Tests use their own repositories.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import MountFactory
from tests.mounts import Mount, S3Server
from tests.registry import (
    ImageInfo,
    Registry,
    make_image,
    make_index,
    pull,
    pulled_blobs,
    push,
    random_layer,
)

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
CHUNK = 5 * MiB
V2 = "docker/registry/v2"


@dataclass
class Stack:
    mount: Mount
    registry: Registry
    workdir: Path

    @property
    def url(self) -> str:
        return self.registry.url


@pytest.fixture(scope="module")
def stack(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("stack")
    mount = Mount(workdir / "mount", s3, s3.new_bucket(), s3={"chunksize": CHUNK}).start()
    registry = Registry(mount.path, workdir=workdir / "registry").start()
    try:
        yield Stack(mount, registry, workdir)
    finally:
        registry.stop()
        assert mount.stop() == 0, mount.log()[-4000:]


def image(tmp_path: Path, name: str, seed: int, sizes: tuple[int, ...]) -> ImageInfo:
    layers = [random_layer(size, seed * 100 + i) for i, size in enumerate(sizes)]
    return make_image(
        tmp_path / name, layers, {"architecture": "amd64", "os": "linux", "seed": seed}
    )


def check_pull(stack: Stack, reference: str, info: ImageInfo, dest: Path) -> None:
    pull(stack.url, reference, dest)
    blobs = pulled_blobs(dest)
    for digest in info.blob_digests:
        assert digest in blobs, f"{digest} missing from the pull of {reference}"
    assert info.manifest_digest in blobs


def blob_key(digest: str) -> str:
    hex_ = digest.split(":", 1)[1]
    return f"{V2}/blobs/sha256/{hex_[:2]}/{hex_}/data"


def test_push_and_pull_images_tags_and_an_index(stack: Stack, tmp_path: Path) -> None:
    big = image(tmp_path, "big", 1, (3 * CHUNK + 1, 0, 4096, 300_000))
    small = image(tmp_path, "small", 2, (1000, 2000))
    push(tmp_path / "big", stack.url, "team/app:v1")
    push(tmp_path / "big", stack.url, "team/app:stable")
    push(tmp_path / "small", stack.url, "library/alpine:3")
    index = make_index(
        tmp_path / "multi",
        [
            ({"architecture": "amd64", "os": "linux"}, [random_layer(2 * MiB, 31)]),
            ({"architecture": "arm64", "os": "linux"}, [random_layer(2 * MiB, 32)]),
        ],
    )
    push(tmp_path / "multi", stack.url, "team/sub/multi:latest")
    check_pull(stack, "team/app:v1", big, tmp_path / "p1")
    check_pull(stack, "library/alpine:3", small, tmp_path / "p2")
    pull(stack.url, "team/sub/multi:latest", tmp_path / "p3", "--all")
    blobs = pulled_blobs(tmp_path / "p3")
    for arch in index.images:
        assert set(arch.blob_digests) <= set(blobs)
    client = stack.registry.client
    catalog = client.catalog()
    assert {"team/app", "library/alpine", "team/sub/multi"} <= set(catalog)
    assert sorted(client.tags("team/app")) == ["stable", "v1"]
    layer = big.layer_digests[0]
    assert stack.mount.object(blob_key(layer)) == random_layer(3 * CHUNK + 1, 100)
    assert client.get_blob("team/app", layer) == random_layer(3 * CHUNK + 1, 100)
    assert (
        client.get_blob("team/app", layer, byte_range="bytes=1000-1999")
        == random_layer(3 * CHUNK + 1, 100)[1000:2000]
    )


def test_cross_repository_mount_and_retag(stack: Stack, tmp_path: Path) -> None:
    one = image(tmp_path, "one", 3, (100_000,))
    two = image(tmp_path, "two", 4, (200_000,))
    push(tmp_path / "one", stack.url, "src/repo:x")
    client = stack.registry.client
    client.mount_blob("dst/repo", one.layer_digests[0], "src/repo")
    assert client.head_blob("dst/repo", one.layer_digests[0]) == 100_000
    push(tmp_path / "one", stack.url, "src/repo:latest")
    assert client.get_manifest("src/repo", "latest").digest == one.manifest_digest
    push(tmp_path / "two", stack.url, "src/repo:latest")  # re-tag: the next pull sees it
    assert client.get_manifest("src/repo", "latest").digest == two.manifest_digest
    check_pull(stack, "src/repo:latest", two, tmp_path / "p")


def test_chunked_upload_status_and_cancel(stack: Stack) -> None:
    client = stack.registry.client
    data = os.urandom(1_000_000 + 6_000_000 + 5_500_001 + 777)
    digest = client.upload_chunked("chunky/repo", data, [1_000_000, 6_000_000, 5_500_001])
    assert digest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.get_blob("chunky/repo", digest) == data
    assert stack.mount.object(blob_key(digest)) == data

    # a client that asks where the upload stands and continues at the offset it is told
    more = os.urandom(7_000_003)
    location = client.start_upload("chunky/repo")
    location = client.upload_chunk(location, more[:2_000_000], 0)
    offset, location = client.upload_progress(location)
    assert offset == 2_000_000
    location = client.upload_chunk(location, more[offset:], offset)
    digest = client.complete_upload(location, "sha256:" + hashlib.sha256(more).hexdigest())
    assert client.get_blob("chunky/repo", digest) == more

    # a cancelled upload leaves no key of its own behind
    location = client.start_upload("chunky/repo")
    location = client.upload_chunk(location, os.urandom(6 * MiB), 0)
    uuid = location.split("/uploads/")[1].split("?")[0]
    assert any(uuid in key for key in stack.mount.object_keys())
    client.cancel_upload(location)
    leftovers = [key for key in stack.mount.object_keys() if uuid in key]
    assert leftovers == [], leftovers
    assert not any("chunky/repo/_uploads/" in k for k in stack.mount.object_keys())


def test_new_repository_keeps_its_directories_when_its_only_upload_goes(stack: Stack) -> None:
    """The registry cancels the only upload of a new repository: `repo` and `repo/_uploads`
    stay (SEMANTICS: mkdir), also after metadata_ttl, though S3 holds no key under them."""
    client = stack.registry.client
    client.cancel_upload(client.start_upload("fresh/repo"))
    time.sleep(1.2)  # past metadata_ttl (1 s): the mount asks S3 again
    repo = stack.mount.path / V2 / "repositories/fresh/repo"
    assert os.path.isdir(repo / "_uploads") and os.listdir(repo) == ["_uploads"]
    assert not [k for k in stack.mount.object_keys() if "fresh/repo" in k]


def test_debian_registry_as_its_own_user_on_a_mount_point_it_owns(
    moto: S3Server, tmp_path: Path
) -> None:
    """Debian's unit runs the registry as `docker-registry`, who owns /var/lib/docker-registry.
    With no ownership setting at all, the mount takes the mount point's owner and turns
    allow_other on: the registry, run as that user (setpriv), takes a skopeo push."""
    user = pwd.getpwnam("docker-registry")
    base = Path(tempfile.mkdtemp(prefix="s3fs-registry-deb-"))
    try:
        base.chmod(0o755)  # the registry's user must reach its config and the mount point
        mount = Mount(base / "mount", moto, moto.new_bucket())
        os.chown(mount.path, user.pw_uid, user.pw_gid)
        mount.start()
        wrapper = base / "registry-as-docker-registry"
        wrapper.write_text(
            "#!/bin/sh\nexec setpriv --reuid=docker-registry --regid=docker-registry "
            '--init-groups docker-registry "$@"\n'
        )
        wrapper.chmod(0o755)
        try:
            with Registry(mount.path, workdir=base / "registry", binary=str(wrapper)) as reg:
                assert reg.proc is not None
                status = Path(f"/proc/{reg.proc.pid}/status").read_text()
                assert f"Uid:\t{user.pw_uid}\t" in status, status
                info = image(tmp_path, "deb", 12, (CHUNK + 5, 3000))
                push(tmp_path / "deb", reg.url, "debian/app:1")
                check_pull(Stack(mount, reg, tmp_path), "debian/app:1", info, tmp_path / "p")
            layer = mount.path / blob_key(info.layer_digests[0])
            owner = os.stat(layer)
            assert (owner.st_uid, owner.st_gid) == (user.pw_uid, user.pw_gid)
            assert mount.object(blob_key(info.layer_digests[0])) == random_layer(CHUNK + 5, 1200)
        finally:
            assert mount.stop() == 0, mount.log()[-3000:]
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_delete_and_garbage_collect(
    s3: S3Server, mount_factory: MountFactory, tmp_path: Path
) -> None:
    """On a registry of its own, so that "exactly the unreferenced blobs" is checkable."""
    mount = mount_factory(s3, s3={"chunksize": CHUNK})
    with Registry(mount.path, workdir=tmp_path / "reg") as registry:
        stack = Stack(mount, registry, tmp_path)
        shared_layer = random_layer(300_000, 77)
        keep = make_image(tmp_path / "keep", [shared_layer, random_layer(50_000, 78)])
        drop = make_image(tmp_path / "drop", [shared_layer, random_layer(60_000, 79)])
        untagged = make_image(tmp_path / "untagged", [random_layer(70_000, 80)])
        push(tmp_path / "keep", stack.url, "gc/repo:keep")
        push(tmp_path / "drop", stack.url, "gc/repo:drop")
        push(tmp_path / "untagged", stack.url, "gc/repo:temp")
        registry.client.delete_manifest("gc/repo", drop.manifest_digest)
        before = set(mount.object_keys())
        registry.garbage_collect()
        removed = before - set(mount.object_keys())
        only_drop = {drop.layer_digests[1], drop.config_digest, drop.manifest_digest}
        assert {k for k in removed if "/blobs/" in k} == {blob_key(d) for d in only_drop}
        check_pull(stack, "gc/repo:keep", keep, tmp_path / "p1")

        # point "temp" elsewhere: its image is untagged and --delete-untagged removes it
        push(tmp_path / "keep", stack.url, "gc/repo:temp")
        before = set(mount.object_keys())
        registry.garbage_collect(delete_untagged=True)
        removed = before - set(mount.object_keys())
        gone = {untagged.manifest_digest, untagged.config_digest, *untagged.layer_digests}
        assert {k for k in removed if "/blobs/" in k} == {blob_key(d) for d in gone}
        check_pull(stack, "gc/repo:keep", keep, tmp_path / "p2")


def test_two_mounts_two_registries(
    s3: S3Server, mount_factory: MountFactory, stack: Stack, tmp_path: Path
) -> None:
    """A second registry replica with its own mount of the same prefix sees what the first
    pushed within the staleness bound (metadata_ttl: 1 s)."""
    other = mount_factory(s3, stack.mount.bucket, s3={"chunksize": CHUNK})
    with Registry(other.path, workdir=tmp_path / "reg2") as second:
        info = image(tmp_path, "img", 9, (CHUNK + 3, 1234))
        push(tmp_path / "img", stack.url, "replicas/app:1")
        time.sleep(1.5)
        pull(second.url, "replicas/app:1", tmp_path / "p")
        assert set(info.blob_digests) <= set(pulled_blobs(tmp_path / "p"))
        push(tmp_path / "img", second.url, "replicas/app:2")
        time.sleep(1.5)
        assert sorted(stack.registry.client.tags("replicas/app")) == ["1", "2"]
        # a chunked upload whose PATCHes alternate between the two replicas
        data = os.urandom(3 * MiB + 11)
        one, two = stack.registry.client, second.client
        location = one.start_upload("replicas/chunked")
        location = one.upload_chunk(location, data[:MiB], 0)
        time.sleep(1.5)
        location = two.upload_chunk(
            two.absolute(location.replace(stack.registry.netloc, second.netloc)),
            data[MiB : 2 * MiB],
            MiB,
        )
        time.sleep(1.5)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        one.complete_upload(
            location.replace(second.netloc, stack.registry.netloc), digest, data[2 * MiB :]
        )
        assert two.get_blob("replicas/chunked", digest) == data


def test_dropped_upload_of_a_blob_that_exists_leaves_no_multipart_upload(stack: Stack) -> None:
    """A monolithic POST + PUT of a blob another repository holds (podman pushing a known
    layer to a new repository): the registry finds the blob, drops its upload, and the
    upload's data, a multipart upload kept open, is aborted with it."""
    client = stack.registry.client
    data = random_layer(20 * MiB, 4242)
    digest = client.upload_blob("known/one", data)
    location = client.start_upload("known/two")
    uuid = location.split("/uploads/")[1].split("?")[0]
    assert client.complete_upload(location, digest, data) == digest
    assert client.get_blob("known/two", digest) == data
    mount = stack.mount
    pending = [
        u["Key"] for u in mount.server.uploads(mount.bucket, mount.prefix) if uuid in u["Key"]
    ]
    assert pending == [], pending
    assert not [k for k in mount.object_keys() if uuid in k]
