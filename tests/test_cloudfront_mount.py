"""Reads through CloudFront, end to end: a registry on a mount configured with the cloudfront
middleware pulls images; blob bytes come through the stand-in (tests/cloudfront_standin.py),
link files never do, and every CloudFront failure falls back to S3 with identical bytes;
the mount's metrics count the requests, their bytes and each fallback by cause."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from s3fs_registry.cloudfront import CAUSES
from tests.cloudfront_standin import CloudFrontStandIn
from tests.conftest import MountFactory
from tests.mounts import REPO, Mount, S3Server, free_port
from tests.registry import Registry, make_image, pull, pulled_blobs, push, random_layer
from tests.test_metrics import scrape, total

pytestmark = pytest.mark.registry

MiB = 1024 * 1024
KEY = REPO / "tests/data/cloudfront_test_key.pem"
KEY_PAIR_ID = "KTESTKEYPAIR01"


def public_pem(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.fixture
def standin(s3: S3Server, tmp_path: Path) -> Iterator[tuple[CloudFrontStandIn, str]]:
    bucket = s3.new_bucket()
    with CloudFrontStandIn(
        origin_endpoint=s3.endpoint,
        bucket=bucket,
        public_key_pem=public_pem(KEY),
        key_pair_id=KEY_PAIR_ID,
        access_key=s3.access_key,
        secret_key=s3.secret_key,
    ) as server:
        yield server, bucket


def cloudfront_mount(
    mount_factory: MountFactory,
    s3: S3Server,
    bucket: str,
    url: str,
    tmp_path: Path,
    key_pem: bytes | None = None,
) -> Mount:
    key = tmp_path / "cf.pem"
    key.write_bytes(key_pem or KEY.read_bytes())
    key.chmod(0o600)
    cloudfront = {
        "baseurl": url,
        "privatekey": str(key),
        "keypairid": KEY_PAIR_ID,
        "duration": "20m",
    }
    return mount_factory(
        s3,
        bucket,
        s3={"chunksize": 5 * MiB},
        mount={"metrics_addr": str(free_port())},
        extra_config={"middleware": {"storage": [{"name": "cloudfront", "options": cloudfront}]}},
    )


def cloudfront_counts(mount: Mount) -> dict[str, float]:
    """The mount's CloudFront metrics: requests, bytes, fallbacks by cause."""
    config = yaml.safe_load(mount.config_path.read_text())
    samples = scrape(int(config["mount"]["metrics_addr"]))
    counts = {
        "requests": total(samples, "s3fs_registry_cloudfront_requests_total"),
        "bytes": total(samples, "s3fs_registry_read_bytes_total", source="cloudfront"),
        "fallbacks": total(samples, "s3fs_registry_cloudfront_fallbacks_total"),
    }
    for (name, labels), value in samples.items():
        if name == "s3fs_registry_cloudfront_fallbacks_total" and value:
            counts[dict(labels)["cause"]] = value
    return counts


def push_and_pull(mount: Mount, tmp_path: Path, tag: str) -> dict[str, bytes]:
    layers = [random_layer(12 * MiB + 5, 1), random_layer(300_000, 2), random_layer(50, 3)]
    info = make_image(tmp_path / "img", layers)
    with Registry(mount.path, workdir=tmp_path / f"reg-{tag}") as registry:
        push(tmp_path / "img", registry.url, f"cf/app:{tag}")
        pull(registry.url, f"cf/app:{tag}", tmp_path / f"pulled-{tag}")
    blobs = pulled_blobs(tmp_path / f"pulled-{tag}")
    for digest, data in zip(info.layer_digests, layers, strict=True):
        assert blobs[digest] == data
    return blobs


def test_blob_bytes_come_through_cloudfront(
    s3: S3Server,
    mount_factory: MountFactory,
    standin: tuple[CloudFrontStandIn, str],
    tmp_path: Path,
) -> None:
    server, bucket = standin
    mount = cloudfront_mount(mount_factory, s3, bucket, server.url, tmp_path)
    push_and_pull(mount, tmp_path, "1")
    paths = [path for path, _range, status in server.requests]
    assert paths, "blob reads went through the stand-in"
    assert all(status == 206 for _p, _r, status in server.requests)
    assert all("/docker/registry/v2/blobs/sha256/" in p and p.endswith("/data") for p in paths)
    assert not any(p.endswith("/link") or "_uploads" in p for p in paths), "links never"
    counts = cloudfront_counts(mount)
    assert counts["requests"] == len(server.requests) and counts["fallbacks"] == 0, counts
    assert counts["bytes"] >= 12 * MiB + 5
    assert mount.stop() == 0
    assert "reading from S3 instead" not in mount.log()


@pytest.mark.parametrize("fault", ["expired", "wrong-key-pair-id", "forged", "down"])
def test_cloudfront_failures_fall_back_to_s3(
    s3: S3Server,
    mount_factory: MountFactory,
    standin: tuple[CloudFrontStandIn, str],
    tmp_path: Path,
    fault: str,
) -> None:
    server, bucket = standin
    key_pem = None
    if fault == "expired":
        server.clock = lambda: time.time() + 3600  # the edge lives an hour ahead of us
    elif fault == "wrong-key-pair-id":
        server.key_pair_id = "KSOMEOTHERPAIR"
    elif fault == "down":
        server.mode = "down"
    elif fault == "forged":  # signed with a key the distribution does not trust
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_pem = other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    mount = cloudfront_mount(mount_factory, s3, bucket, server.url, tmp_path, key_pem)
    push_and_pull(mount, tmp_path, "1")
    statuses = {status for _p, _r, status in server.requests}
    assert statuses <= ({0} if fault == "down" else {403}), statuses
    counts = cloudfront_counts(mount)
    assert counts["fallbacks"] == counts["requests"] > 0 and counts["bytes"] == 0, counts
    cause = "forbidden" if fault != "down" else next(c for c in counts if c in CAUSES)
    assert counts[cause] == counts["fallbacks"], counts
    assert mount.stop() == 0
    log = mount.log()
    assert log.count("reading from S3 instead") == 1, "logged once per cause"
    assert "Signature=REDACTED" in log or fault == "down"
