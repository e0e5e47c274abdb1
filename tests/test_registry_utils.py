"""Tests of tests/registry.py against docker-registry 2.8.2 on a plain local directory."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.registry import (
    EMPTY_DIGEST,
    MT_DOCKER_MANIFEST,
    MT_OCI_INDEX,
    MT_OCI_MANIFEST,
    ImageInfo,
    Registry,
    RegistryError,
    RegistryHTTPError,
    blob_path,
    digest_of,
    make_image,
    make_index,
    pull,
    pulled_blobs,
    push,
    random_layer,
    skopeo_copy,
)

pytestmark = [
    pytest.mark.registry,
    pytest.mark.skipif(
        not (shutil.which("docker-registry") and shutil.which("skopeo")),
        reason="needs docker-registry and skopeo",
    ),
]

BIG = 3 * 10 * 2**20 + 1


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    base = tmp_path_factory.mktemp("registry")
    with Registry(base / "root", workdir=base / "work") as reg:
        yield reg


@pytest.fixture(scope="module")
def small_image(
    registry: Registry, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, ImageInfo]:
    d = tmp_path_factory.mktemp("small") / "oci"
    info = make_image(d, [random_layer(4096, 7), random_layer(100, 8)])
    return d, info


def _on_disk(reg: Registry, digest: str) -> Path:
    assert reg.rootdirectory is not None
    return blob_path(reg.rootdirectory, digest)


# ----------------------------------------------------------------------------------------------


def test_registry_env_and_config(registry: Registry) -> None:
    assert registry.running
    assert registry.client.ping() == 200
    assert registry.url.startswith("http://127.0.0.1:")
    assert registry.config["storage"]["delete"] == {"enabled": True}
    assert registry.config["storage"]["maintenance"]["uploadpurging"] == {"enabled": False}
    assert registry.config["storage"]["filesystem"]["rootdirectory"] == str(registry.rootdirectory)
    assert registry.proc is not None
    environ = Path(f"/proc/{registry.proc.pid}/environ").read_bytes().split(b"\0")
    assert not any(e.startswith(b"AWS_CA_BUNDLE=") for e in environ)


def test_start_failure_raises_with_log_tail(tmp_path: Path) -> None:
    reg = Registry(storage={"nosuchdriver": {}}, workdir=tmp_path, start_timeout=10)
    with pytest.raises(RegistryError, match="nosuchdriver"):
        reg.start()
    assert not reg.running


def test_push_pull_three_layers(registry: Registry, tmp_path: Path) -> None:
    layers = [random_layer(BIG, 1), b"", random_layer(1234, 2)]
    info = make_image(tmp_path / "oci", layers)
    assert info.layer_digests[1] == EMPTY_DIGEST
    push(tmp_path / "oci", registry.url, "team/app:v1")

    c = registry.client
    m = c.get_manifest("team/app", "v1")
    # --preserve-digests: manifest and blobs arrive byte for byte
    assert m.media_type == MT_OCI_MANIFEST
    assert m.digest == info.manifest_digest
    assert m.body == info.manifest
    for d, data in zip(info.layer_digests, layers, strict=True):
        assert c.head_blob("team/app", d) == len(data)
        assert _on_disk(registry, d).stat().st_size == len(data)
    assert c.get_blob("team/app", info.layer_digests[0]) == layers[0]
    assert c.get_blob("team/app", info.layer_digests[1]) == b""
    assert c.get_blob("team/app", info.layer_digests[0], byte_range="bytes=5-9") == layers[0][5:10]

    dest = tmp_path / "pulled"
    pull(registry.url, "team/app:v1", dest)
    blobs = pulled_blobs(dest)
    expected = dict(zip(info.layer_digests, layers, strict=True))
    expected[info.config_digest] = info.config
    expected[info.manifest_digest] = info.manifest
    assert blobs.keys() == expected.keys()
    for d, data in expected.items():
        assert blobs[d] == data, d

    # the oci: transport works for pulling too
    dest2 = tmp_path / "pulled-oci"
    pull(registry.url, f"team/app@{info.manifest_digest}", dest2, transport="oci")
    assert pulled_blobs(dest2) == expected


def test_without_preserve_digests_skopeo_recompresses(registry: Registry, tmp_path: Path) -> None:
    """Documents why skopeo_copy passes --preserve-digests by default."""
    layer = random_layer(1000, 3)
    info = make_image(tmp_path / "oci", [layer])
    skopeo_copy(
        f"oci:{tmp_path / 'oci'}",
        f"docker://{registry.netloc}/team/gz:v1",
        preserve_digests=False,
    )
    m = registry.client.get_manifest("team/gz", "v1")
    assert m.digest != info.manifest_digest
    (pushed_layer,) = m.json()["layers"]
    assert pushed_layer["digest"] != info.layer_digests[0]
    data = registry.client.get_blob("team/gz", pushed_layer["digest"])
    assert data[:2] == b"\x1f\x8b"  # gzip magic: skopeo compressed the "uncompressed" layer


def test_multi_arch_index(registry: Registry, tmp_path: Path) -> None:
    platforms = [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    idx = make_index(
        tmp_path / "oci",
        [(p, [random_layer(2000 + i, 10 + i), b"shared-layer"]) for i, p in enumerate(platforms)],
    )
    push(tmp_path / "oci", registry.url, "team/multi:latest")

    c = registry.client
    m = c.get_manifest("team/multi", "latest")
    assert m.media_type == MT_OCI_INDEX
    assert m.digest == idx.index_digest
    assert [d["digest"] for d in m.json()["manifests"]] == idx.manifest_digests
    for im in idx.images:
        mm = c.get_manifest("team/multi", im.manifest_digest)
        assert mm.media_type == MT_OCI_MANIFEST
        assert mm.body == im.manifest

    # whole index
    dest = tmp_path / "pulled-all"
    pull(registry.url, "team/multi:latest", dest)
    blobs = pulled_blobs(dest)
    assert blobs[idx.index_digest] == idx.index
    for im in idx.images:
        assert blobs[im.manifest_digest] == im.manifest
        assert blobs[im.config_digest] == im.config

    # each platform's manifest on its own
    for im in idx.images:
        d = tmp_path / f"pulled-{im.manifest_digest[7:19]}"
        pull(registry.url, f"team/multi@{im.manifest_digest}", d)
        got = pulled_blobs(d)
        assert set(got) == {im.manifest_digest, *im.blob_digests}
        assert got[im.manifest_digest] == im.manifest


def test_catalog_and_tags(registry: Registry, small_image: tuple[Path, ImageInfo]) -> None:
    d, _ = small_image
    for ref in ("team/cat:v1", "team/cat:v2", "team/sub/deep:latest", "solo:x"):
        push(d, registry.url, ref)
    c = registry.client
    cat = c.catalog()
    assert {"team/cat", "team/sub/deep", "solo"} <= set(cat)
    assert cat == sorted(cat)
    assert c.catalog(page_size=1) == cat  # follows the Link: rel="next" pagination
    assert sorted(c.tags("team/cat")) == ["v1", "v2"]
    assert c.tags("team/sub/deep") == ["latest"]
    with pytest.raises(RegistryHTTPError) as ei:
        c.tags("team/nonexistent")
    assert ei.value.status == 404


def test_cross_repo_mount(registry: Registry, small_image: tuple[Path, ImageInfo]) -> None:
    d, info = small_image
    push(d, registry.url, "team/src:v1")
    c = registry.client
    layer = info.layer_digests[0]
    assert c.head_blob("team/dst", layer) is None
    loc = c.mount_blob("team/dst", layer, "team/src")
    assert loc.endswith(f"/v2/team/dst/blobs/{layer}")
    assert c.head_blob("team/dst", layer) == 4096
    assert c.get_blob("team/dst", layer) == random_layer(4096, 7)
    # unknown source blob: the registry starts an upload (202) instead; mount_blob raises
    with pytest.raises(RegistryHTTPError) as ei:
        c.mount_blob("team/dst", digest_of(b"nope"), "team/src")
    assert ei.value.status == 202


def test_chunked_upload(registry: Registry) -> None:
    c = registry.client
    data = random_layer(12_500_001, 20)
    digest = c.upload_chunked("team/chunks", data, [1_000_000, 6_000_000, 5_500_001])
    assert digest == digest_of(data)
    assert c.head_blob("team/chunks", digest) == len(data)
    assert c.get_blob("team/chunks", digest) == data
    assert _on_disk(registry, digest).read_bytes() == data

    # leftover bytes travel in the final PUT; monolithic upload
    data2 = random_layer(300_001, 21)
    assert c.upload_chunked("team/chunks", data2, [100_000]) == digest_of(data2)
    assert c.get_blob("team/chunks", digest_of(data2)) == data2
    assert c.upload_blob("team/chunks", b"") == EMPTY_DIGEST
    assert c.get_blob("team/chunks", EMPTY_DIGEST) == b""


def test_upload_status_and_resume(registry: Registry) -> None:
    c = registry.client
    data = random_layer(2_345_678, 30)
    loc = c.start_upload("team/resume")
    assert c.upload_status(loc) == 0
    loc = c.upload_chunk(loc, data[:1], 0)
    assert c.upload_status(loc) == 1  # Range "0-0", disambiguated through _state
    loc = c.upload_chunk(loc, data[1:1_000_000], 1)
    offset, loc = c.upload_progress(loc)
    assert offset == 1_000_000
    loc = c.upload_chunk(loc, data[offset:2_000_000], offset)
    offset = c.upload_status(loc)
    assert offset == 2_000_000
    loc = c.upload_chunk(loc, data[offset:], offset)
    assert c.complete_upload(loc, digest_of(data)) == digest_of(data)
    assert c.get_blob("team/resume", digest_of(data)) == data


def test_cancel_upload(registry: Registry) -> None:
    c = registry.client
    loc = c.start_upload("team/cancel")
    loc = c.upload_chunk(loc, b"x" * 1000, 0)
    assert c.upload_status(loc) == 1000
    uuid = loc.split("/blobs/uploads/", 1)[1].split("?", 1)[0]
    assert registry.rootdirectory is not None
    updir = registry.rootdirectory / "docker/registry/v2/repositories/team/cancel/_uploads" / uuid
    assert (updir / "data").stat().st_size == 1000
    c.cancel_upload(loc)
    with pytest.raises(RegistryHTTPError) as ei:
        c.upload_status(loc)
    assert ei.value.status == 404
    assert ei.value.error_codes == ["BLOB_UPLOAD_UNKNOWN"]
    # 2.8.2 quirk: removeResources deletes the upload directory, then the handler's deferred
    # Close() stores the hash state again (size 0 after fileWriter.Cancel), so one stale
    # 108-byte hashstate file is left behind.
    left = sorted(str(p.relative_to(updir)) for p in updir.rglob("*") if p.is_file())
    assert left == ["hashstates/sha256/0"]
    assert (updir / "hashstates/sha256/0").stat().st_size == 108


def test_put_get_manifest_by_api(registry: Registry) -> None:
    c = registry.client
    layer = random_layer(5000, 40)
    cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    c.upload_blob("team/api", layer)
    c.upload_blob("team/api", cfg)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MT_DOCKER_MANIFEST,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "digest": digest_of(cfg),
                "size": len(cfg),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "digest": digest_of(layer),
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    d = c.put_manifest("team/api", "t1", manifest, MT_DOCKER_MANIFEST)
    assert d == digest_of(manifest)
    m = c.get_manifest("team/api", "t1")
    assert (m.body, m.media_type, m.digest) == (manifest, MT_DOCKER_MANIFEST, d)
    assert c.head_manifest("team/api", "t1") == d
    assert c.head_manifest("team/api", "nope") is None
    # registry 2.8 hides OCI manifests from clients that do not accept them; docker ones are fine
    assert c.get_manifest("team/api", d, accept=MT_DOCKER_MANIFEST).body == manifest


def test_delete_and_garbage_collect(tmp_path: Path) -> None:
    with Registry(tmp_path / "root", workdir=tmp_path / "work", log_level="warn") as reg:
        c = reg.client
        shared = random_layer(50_000, 50)
        keep = make_image(tmp_path / "keep", [shared, random_layer(60_000, 51)])
        gone = make_image(tmp_path / "gone", [shared, random_layer(70_000, 52)])
        push(tmp_path / "keep", reg.url, "team/keep:v1")
        push(tmp_path / "gone", reg.url, "team/gone:v1")
        unique = [gone.layer_digests[1], gone.config_digest, gone.manifest_digest]
        for d in unique:
            assert _on_disk(reg, d).exists()

        c.delete_manifest("team/gone", gone.manifest_digest)
        with pytest.raises(RegistryHTTPError) as ei:
            c.get_manifest("team/gone", gone.manifest_digest)
        assert ei.value.status == 404
        assert c.tags("team/gone") == []

        out = reg.garbage_collect()
        for d in unique:
            assert f"blob eligible for deletion: {d}" in out, out
        for d in unique:
            assert not _on_disk(reg, d).exists(), d
        for d in [keep.manifest_digest, *keep.blob_digests]:
            assert _on_disk(reg, d).exists(), d

        dest = tmp_path / "pulled"
        pull(reg.url, "team/keep:v1", dest)
        blobs = pulled_blobs(dest)
        assert blobs[keep.layer_digests[0]] == shared
        assert blobs[keep.manifest_digest] == keep.manifest

        # --delete-untagged: an untagged manifest (pushed by digest) goes away with its blobs
        lone = make_image(tmp_path / "lone", [random_layer(1000, 53)])
        push(tmp_path / "lone", reg.url, f"team/keep@{lone.manifest_digest}")
        reg.garbage_collect()
        assert _on_disk(reg, lone.layer_digests[0]).exists()
        reg.garbage_collect(delete_untagged=True)
        assert not _on_disk(reg, lone.layer_digests[0]).exists()
        assert _on_disk(reg, keep.layer_digests[1]).exists()
    assert not reg.running
    assert os.path.exists(tmp_path / "work" / "registry.log")
