"""Workload 16: the registry's metadata phases on a bucket of many repositories (issue 12).

For each N in ``sizes.meta_repos`` a bucket holds N repositories (``meta/r0000`` ...) of two
tags each (``v1``, ``v2``), every tag a distinct one-layer OCI image. The keys are written
straight into each system's fresh bucket exactly as the registry lays them out
(shared/reference/registry-semantics.md §2; set-up, not timed, not counted): per tag the
layer, config and manifest blobs (``blobs/sha256/xx/<hex>/data``), the ``_layers`` links of
layer and config, the manifest's revision link and the tag's ``current`` and ``index``
links; 16 objects per repository.

Then, each phase on a cold mount (fresh mount, page cache dropped) and a fresh registry
process, in this order, timed with its S3 requests and serial round trips:

* ``m<N>-catalog``: ``GET /v2/_catalog``, every page; must list the N repositories;
* ``m<N>-tags``: ``GET /v2/<name>/tags/list`` of ``meta_tag_lists`` repositories one after
  another; each must answer ``v1`` and ``v2``;
* ``m<N>-gcdry``: ``docker-registry garbage-collect --dry-run``;
* ``m<N>-delete``: ``DELETE /v2/<name>/manifests/<digest>`` of the ``v1`` manifest of
  ``meta_deletes`` repositories (``storage.delete.enabled`` is on); each must answer 202;
* ``m<N>-gc``: ``docker-registry garbage-collect``; afterwards (untimed) exactly the three
  blobs of every deleted manifest must be gone from the bucket.

Systems: ``mount`` (the registry's filesystem driver on the mount) and ``native`` (its S3
driver); the code would run on any file system of bench/systems.py, but s3fs takes
minutes per phase on a link and the issue compares the mount with the native driver.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Callable

from bench.common import BenchError, Sample, list_keys, put_many
from bench.context import Ctx
from bench.regworkloads import registry_on
from tests.registry import Registry

ROOT = "docker/registry/v2"
PHASES = ("catalog", "tags", "gcdry", "delete", "gc")
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def meta_ids(repos: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"m{n}-{phase}" for n in repos for phase in PHASES)


@dataclasses.dataclass
class Fixture:
    """The bucket's keys and what the phases need to know about them."""

    objects: list[tuple[str, bytes]]
    repos: list[str]
    v1_manifests: dict[str, str]  # repository -> digest of its v1 manifest
    blobs_of: dict[str, list[str]]  # manifest digest -> its blob keys (manifest, config, layer)


def _hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob_key(hexd: str) -> str:
    return f"{ROOT}/blobs/sha256/{hexd[:2]}/{hexd}/data"


def _link(hexd: str) -> bytes:
    return f"sha256:{hexd}".encode()


def fixture(n: int) -> Fixture:
    """N repositories of two tags, each tag its own tiny image, laid out as the registry does."""
    fx = Fixture([], [], {}, {})
    for i in range(n):
        name = f"meta/r{i:04d}"
        fx.repos.append(name)
        repo = f"{ROOT}/repositories/{name}"
        for tag in ("v1", "v2"):
            layer = f"layer of {name}:{tag}\n".encode() * 32
            config = json.dumps(
                {
                    "architecture": "amd64",
                    "os": "linux",
                    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{_hex(layer)}"]},
                }
            ).encode()
            manifest = json.dumps(
                {
                    "schemaVersion": 2,
                    "mediaType": MT_MANIFEST,
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": f"sha256:{_hex(config)}",
                        "size": len(config),
                    },
                    "layers": [
                        {
                            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": f"sha256:{_hex(layer)}",
                            "size": len(layer),
                        }
                    ],
                }
            ).encode()
            lh, ch, mh = _hex(layer), _hex(config), _hex(manifest)
            fx.objects += [(_blob_key(h), body) for h, body in ((lh, layer), (ch, config))]
            fx.objects += [
                (_blob_key(mh), manifest),
                (f"{repo}/_layers/sha256/{lh}/link", _link(lh)),
                (f"{repo}/_layers/sha256/{ch}/link", _link(ch)),
                (f"{repo}/_manifests/revisions/sha256/{mh}/link", _link(mh)),
                (f"{repo}/_manifests/tags/{tag}/current/link", _link(mh)),
                (f"{repo}/_manifests/tags/{tag}/index/sha256/{mh}/link", _link(mh)),
            ]
            fx.blobs_of[f"sha256:{mh}"] = [_blob_key(h) for h in (mh, ch, lh)]
            if tag == "v1":
                fx.v1_manifests[name] = f"sha256:{mh}"
    return fx


def w16_metadata(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Every phase for every N; a failed phase fails the phases after it on that N."""
    for n in ctx.sizes.meta_repos:
        fx = fixture(n)
        with ctx.bucket(system, f"m{n}") as bucket:
            put_many(ctx.direct, bucket, fx.objects, workers=32)
            for phase in PHASES:
                wl = f"m{n}-{phase}"
                if any(s.workload.startswith(f"m{n}-") and s.error for s in out):
                    out.append(ctx.sample(wl, system, error="an earlier phase failed"))
                    continue
                step = functools.partial(_phase, ctx, system, out, fx, bucket, phase, wl)
                ctx.attempt(wl, system, out, step)


def _phase(
    ctx: Ctx, system: str, out: list[Sample], fx: Fixture, bucket: str, phase: str, wl: str
) -> None:
    """One phase on a cold mount and a fresh registry; checks its answer outside the timing."""
    action, amount = _action(ctx, fx, phase)
    mine: list[Sample] = []
    with registry_on(ctx, system, bucket, mine, cold=True) as (reg, fs):
        assert reg.proc is not None
        sample = ctx.measure(
            wl,
            system,
            lambda: action(reg),
            amount=amount,
            unit="ops",
            fs=fs,
            pids={"registry": reg.proc.pid},
        )
        mine.append(sample)
    if fs is None and phase in ("gcdry", "gc"):
        # the native driver runs in the garbage-collect process, not in the idle server
        sample.cpu_s = sample.cpu_other.get("client")
    if phase == "gc" and not sample.error:
        sample.error = _check_collected(ctx, fx, bucket)
    out.append(sample)


def _action(ctx: Ctx, fx: Fixture, phase: str) -> tuple[Callable[[Registry], None], float]:
    """What the phase does to the registry, and how many operations that is."""
    timeout = ctx.sizes.timeout
    listed = fx.repos[: ctx.sizes.meta_tag_lists]
    deleted = list(fx.v1_manifests.items())[: ctx.sizes.meta_deletes]

    def catalog(reg: Registry) -> None:
        got = reg.client.catalog()
        if sorted(got) != sorted(fx.repos):
            raise BenchError(f"catalog listed {len(got)} of {len(fx.repos)} repositories")

    def tags(reg: Registry) -> None:
        for name in listed:
            got = sorted(reg.client.tags(name))
            if got != ["v1", "v2"]:
                raise BenchError(f"tags/list of {name}: {got}")

    def gc(dry_run: bool) -> Callable[[Registry], None]:
        return lambda reg: _gc(reg, dry_run, timeout)

    def delete(reg: Registry) -> None:
        for name, digest in deleted:
            reg.client.delete_manifest(name, digest)

    table: dict[str, tuple[Callable[[Registry], None], float]] = {
        "catalog": (catalog, len(fx.repos)),
        "tags": (tags, len(listed)),
        "gcdry": (gc(True), len(fx.repos)),
        "delete": (delete, len(deleted)),
        "gc": (gc(False), len(fx.repos)),
    }
    return table[phase]


def _gc(reg: Registry, dry_run: bool, timeout: float) -> None:
    reg.garbage_collect(dry_run=dry_run, timeout=timeout)


def _check_collected(ctx: Ctx, fx: Fixture, bucket: str) -> str | None:
    """After the GC: the blobs of the deleted manifests are gone, every other blob is there
    (what is wrong otherwise)."""
    present = set(list_keys(ctx.direct, bucket, f"{ROOT}/blobs/"))
    deleted = [d for _, d in list(fx.v1_manifests.items())[: ctx.sizes.meta_deletes]]
    gone = {key for d in deleted for key in fx.blobs_of[d]}
    kept = {key for keys in fx.blobs_of.values() for key in keys} - gone
    if present & gone or kept - present:
        return (
            f"after GC: {len(present & gone)} deleted blobs remain, {len(kept - present)} "
            "live blobs are missing"
        )
    return None
