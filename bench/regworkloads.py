"""Workloads 9, 10, 11 and 15: the real registry, on each mount and with its native S3 driver.

* (9) ``skopeo copy`` push of a multi-layer OCI image, then a cold pull (fresh mount, page
  cache dropped, fresh registry process) to a local ``dir:``; (15) the same with the
  ~200 MiB image (layers of 96, 64, 32 and 8 MiB).
* (11) the S3 requests of that push and that pull, counted by the proxy. The push count
  is read after the registry stopped and the file system was unmounted, so uploads a
  daemon deferred past close() are included.
* (10) a chunked blob upload: POST, PATCHes of ``sizes.chunk`` bytes, PUT ?digest=.

As for file writes, a push or upload counts as done once S3 has the data: for rclone's
cache mode the time includes waiting for its deferred uploads (``returned_s`` is when the
registry answered).

The registry is Debian's ``docker-registry`` started by tests/registry.py: with the
``filesystem`` driver rooted at the mount point, or (system ``native``) with its ``s3``
driver pointed at the same proxy and an identical ``storage.s3`` block.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bench.common import Sample, drop_caches, vm_hwm
from bench.context import Ctx
from bench.systems import Mounted
from tests.registry import ImageInfo, Registry, skopeo_copy

REPO_NAME = "bench/image"


def native_storage(ctx: Ctx, bucket: str) -> dict[str, Any]:
    """The registry's own ``storage.s3`` block for ``bucket``, through the proxy."""
    return {
        "s3": {
            "accesskey": ctx.endpoint.access_key,
            "secretkey": ctx.endpoint.secret_key,
            "region": ctx.endpoint.region,
            "regionendpoint": ctx.endpoint.url,
            "bucket": bucket,
            "rootdirectory": "",
            "secure": False,
        }
    }


@contextlib.contextmanager
def registry_on(
    ctx: Ctx, system: str, bucket: str, out: list[Sample], *, cold: bool = False
) -> Iterator[tuple[Registry, Mounted | None]]:
    """A registry process storing into ``bucket`` through ``system``; stopped afterwards."""
    workdir = ctx.workdir / f"registry-{system}-{bucket}"
    if system == "native":
        reg = Registry(storage=native_storage(ctx, bucket), workdir=workdir)
        with _running(reg):
            yield reg, None
        return
    with ctx.mounted(system, bucket, out) as fs:
        if cold:
            drop_caches()
        reg = Registry(rootdirectory=fs.path, workdir=workdir)
        with _running(reg):
            yield reg, fs


@contextlib.contextmanager
def _running(reg: Registry) -> Iterator[Registry]:
    reg.start()
    try:
        yield reg
    finally:
        reg.stop()


def w9_push_pull(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """(9) push and cold pull of the ~1 GiB image timed; (11) their S3 requests."""
    _push_pull(ctx, system, out, "9", ctx.data.image_dir, ctx.data.image)


def w15_small_image(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """(15) push and cold pull of the ~200 MiB image (requests and serial round trips are
    in the rows)."""
    _push_pull(ctx, system, out, "15", ctx.data.small_image_dir, ctx.data.small_image)


def _push_pull(
    ctx: Ctx, system: str, out: list[Sample], wl: str, image_dir: Path, image: ImageInfo
) -> None:
    amount = float(sum(image.layer_sizes))
    timeout = ctx.sizes.timeout
    dest = ctx.workdir / f"pulled-{system}"

    def push(reg: Registry) -> object:
        src = f"oci:{image_dir}"
        return skopeo_copy(src, f"docker://{reg.netloc}/{REPO_NAME}:v1", timeout=timeout)

    def pull(reg: Registry) -> object:
        shutil.rmtree(dest, ignore_errors=True)
        return skopeo_copy(f"docker://{reg.netloc}/{REPO_NAME}:v1", f"dir:{dest}", timeout=timeout)

    with ctx.bucket(system, wl) as bucket:
        try:
            _step(ctx, system, bucket, out, f"{wl}push", push, amount)
            _step(ctx, system, bucket, out, f"{wl}pull", pull, amount)
        finally:
            shutil.rmtree(dest, ignore_errors=True)


def w17_warm_pull(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """(17) the ~1 GiB image pushed (not sampled), pulled cold (17cold), then pulled again
    from a fresh mount and registry with the page cache dropped (17warm): what the blob
    cache (system mount-cache) keeps across mounts, with the GETs each pull sent."""
    image = ctx.data.image
    amount = float(sum(image.layer_sizes))
    timeout = ctx.sizes.timeout
    dest = ctx.workdir / f"pulled-{system}"

    def push(reg: Registry) -> object:
        src = f"oci:{ctx.data.image_dir}"
        return skopeo_copy(src, f"docker://{reg.netloc}/{REPO_NAME}:v1", timeout=timeout)

    def pull(reg: Registry) -> object:
        shutil.rmtree(dest, ignore_errors=True)
        return skopeo_copy(f"docker://{reg.netloc}/{REPO_NAME}:v1", f"dir:{dest}", timeout=timeout)

    with ctx.bucket(system, "17") as bucket:
        try:
            with registry_on(ctx, system, bucket, []) as (reg, fs):
                push(reg)
                if fs is not None:
                    fs.settle(timeout)
            _step(ctx, system, bucket, out, "17cold", pull, amount)
            _step(ctx, system, bucket, out, "17warm", pull, amount)
        finally:
            shutil.rmtree(dest, ignore_errors=True)


def w10_chunked(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """(10) one blob uploaded in equal PATCHes, then PUT ?digest= with an empty body."""
    data = ctx.data.chunked
    sizes = [ctx.sizes.chunk] * (len(data) // ctx.sizes.chunk)

    def upload(reg: Registry) -> object:
        return reg.client.upload_chunked(REPO_NAME, data, sizes)

    with ctx.bucket(system, "10") as bucket:
        _step(ctx, system, bucket, out, "10", upload, float(len(data)))


def _step(
    ctx: Ctx,
    system: str,
    bucket: str,
    out: list[Sample],
    name: str,
    action: Callable[[Registry], object],
    amount: float,
) -> None:
    """Run one registry action on a fresh registry (and mount); sample time and requests.

    ``name`` is ``9push``/``9pull`` (samples 9<x> and 11<x>), ``15push``/``15pull`` or
    ``10``. An exception propagates: the runner records the missing samples as failed (a
    pull after a failed push is then never attempted).
    """
    wl = name
    mine: list[Sample] = []
    cold = name.endswith(("pull", "cold", "warm"))
    with registry_on(ctx, system, bucket, mine, cold=cold) as (reg, fs):
        assert reg.proc is not None

        def step() -> None:
            action(reg)
            if fs is not None:  # durable, as the native driver is when it answers
                ctx.mark("returned_s")
                fs.settle(ctx.sizes.timeout)

        pids = {"registry": reg.proc.pid}
        sample = ctx.measure(wl, system, step, amount=amount, fs=fs, pids=pids)
        registry_rss = vm_hwm(reg.proc.pid)
        if registry_rss is not None:
            sample.rss_other["registry"] = registry_rss
        if fs is None:
            sample.rss = registry_rss
        mine.append(sample)
    stats = ctx.proxy.stats()  # after unmount: includes uploads deferred past close()
    if stats:
        sample.requests = stats.get("requests")
        sample.by_method = stats.get("by_method", {})
        sample.serial = stats.get("serial")
    out.append(sample)
    if name in ("9push", "9pull"):
        counted = ctx.sample(
            f"11{name[1:]}",
            system,
            amount=float(sample.requests or 0),
            unit="req",
            requests=sample.requests,
            by_method=dict(sample.by_method),
            error=sample.error,
            serial=sample.serial,
        )
        if not stats:
            counted.error = "not counted (--direct: no proxy)"
        out.append(counted)
