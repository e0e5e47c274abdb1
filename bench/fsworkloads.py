"""Workloads 1-8 and 12-14: file operations through each mount, and their boto3 twins.

Each ``wN`` function appends the samples of one run of workload N on one system to
``out``. Writes are timed until S3 has the object (``wait_objects``), so a system that
acknowledges close() before uploading gets no credit for it. Reads start cold: from a
fresh mount, after the page cache was dropped. Inputs that are only read live in the
backend's read-only bucket, made once (``make_ro_bucket``).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    BenchError,
    MiB,
    Sample,
    Sizes,
    drop_caches,
    put_many,
    run_cmd,
    run_parallel,
    upload_zeros,
    wait_count,
    wait_gone,
    wait_objects,
)
from bench.context import REFERENCES, Ctx
from bench.systems import Mounted

SMALL_DIR = "small"


def make_ro_bucket(client: object, bucket: str, sizes: Sizes) -> None:
    """The read-only inputs: ``seq``, ``cp``, ``r0``..``rN`` and the ``tree/`` of (5)."""
    upload_zeros(client, bucket, "seq", sizes.seq)
    upload_zeros(client, bucket, "cp", sizes.cp)
    for i in range(sizes.par_count):
        upload_zeros(client, bucket, f"r{i}", sizes.par_size)
    body = b"x" * sizes.small_size
    put_many(client, bucket, ((key, body) for key in tree_keys(sizes)))


def tree_keys(sizes: Sizes) -> list[str]:
    return [
        f"tree/d{d:04d}/f{f:02d}" for d in range(sizes.tree_dirs) for f in range(sizes.tree_files)
    ]


def _dd_write(path: Path, size: int) -> list[str]:
    return ["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={size // MiB}", "status=none"]


def _dd_read(path: Path) -> list[str]:
    return ["dd", f"if={path}", "of=/dev/null", "bs=1M", "status=none"]


# ------------------------------------------------------------------------------ (1) (2)


def w1_write(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Sequential write of one file with dd bs=1M, close included."""
    size, t = ctx.sizes.seq, ctx.sizes.timeout
    with ctx.bucket(system, "1") as bucket:
        if system in REFERENCES:
            out.append(
                ctx.reference("1", system, "put", ["seq"], bucket=bucket, amount=size, size=size)
            )
            return
        with ctx.mounted(system, bucket, out) as fs:

            def step() -> None:
                run_cmd(_dd_write(fs.path / "seq", size), t)
                ctx.mark("returned_s")
                wait_objects(ctx.direct, bucket, {"seq": size}, t)

            out.append(ctx.measure("1", system, step, amount=size, fs=fs))


def w2_read(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Cold sequential read of the file of (1)."""
    size, t = ctx.sizes.seq, ctx.sizes.timeout
    if system in REFERENCES:
        out.append(ctx.reference("2", system, "get", ["seq"], bucket=ctx.ro_bucket, amount=size))
        return
    with ctx.mounted(system, ctx.ro_bucket, out) as fs:
        drop_caches()
        step = lambda: run_cmd(_dd_read(fs.path / "seq"), t)  # noqa: E731
        out.append(ctx.measure("2", system, step, amount=size, fs=fs))


# ------------------------------------------------------------------------------ (3)


def w3_cp(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """cp of a file into the mount, then (cold) out of it to local disk."""
    ctx.attempt("3in", system, out, lambda: _cp_in(ctx, system, out))
    ctx.attempt("3out", system, out, lambda: _cp_out(ctx, system, out))


def _cp_in(ctx: Ctx, system: str, out: list[Sample]) -> None:
    size, t, src = ctx.sizes.cp, ctx.sizes.timeout, ctx.data.cp_src
    with ctx.bucket(system, "3") as bucket:
        if system in REFERENCES:
            ref = ctx.reference(
                "3in", system, "put-file", ["cp"], bucket=bucket, amount=size, file=src
            )
            out.append(ref)
            return
        with ctx.mounted(system, bucket, out) as fs:

            def step() -> None:
                run_cmd(["cp", str(src), str(fs.path / "cp")], t)
                ctx.mark("returned_s")
                wait_objects(ctx.direct, bucket, {"cp": size}, t)

            out.append(ctx.measure("3in", system, step, amount=size, fs=fs))


def _cp_out(ctx: Ctx, system: str, out: list[Sample]) -> None:
    _cold_cp(ctx, system, out, "3out", "cp", ctx.sizes.cp)


def w13_cp_read(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Cold sequential read of the 1 GiB file of (2) by cp to local disk."""
    _cold_cp(ctx, system, out, "13", "seq", ctx.sizes.seq)


def _cold_cp(ctx: Ctx, system: str, out: list[Sample], wl: str, key: str, size: int) -> None:
    """cp of a read-only object out of a fresh mount to local disk (the reference clients
    download it to a local file)."""
    t = ctx.sizes.timeout
    dst = ctx.workdir / f"cp-out-{system}"
    try:
        if system in REFERENCES:
            ro = ctx.ro_bucket
            ref = ctx.reference(wl, system, "get-file", [key], bucket=ro, amount=size, file=dst)
            out.append(ref)
            return
        with ctx.mounted(system, ctx.ro_bucket, out) as fs:
            drop_caches()
            step = lambda: run_cmd(["cp", str(fs.path / key), str(dst)], t)  # noqa: E731
            out.append(ctx.measure(wl, system, step, amount=size, fs=fs))
    finally:
        dst.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ (4) (5)

#: one process writing the files as the registry writes a link file: open, one write, close.
#: (A shell's `printf x > f` costs every system more: it closes the file once before
#: writing to it, after dup2, and each close must report whether the file is stored.)
_CREATE_LOOP = """
import os, sys
directory, count, body = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
for i in range(count):
    fd = os.open(f"{directory}/f{i}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, body)
    os.close(fd)
"""


def w4_small(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Many ~100-byte files (the registry's link files) created one after another."""
    n, t = ctx.sizes.small_count, ctx.sizes.timeout
    with ctx.bucket(system, "4") as bucket:
        if system == "boto3":
            out.append(
                ctx.boto3(
                    "4",
                    "small",
                    [],
                    bucket=bucket,
                    amount=n,
                    unit="ops",
                    prefix=f"{SMALL_DIR}/f",
                    count=n,
                    size=ctx.sizes.small_size,
                )
            )
            return
        with ctx.mounted(system, bucket, out) as fs:
            (fs.path / SMALL_DIR).mkdir()
            argv = [sys.executable, "-c", _CREATE_LOOP, str(fs.path / SMALL_DIR), str(n)]
            argv.append("x" * ctx.sizes.small_size)

            def step() -> None:
                run_cmd(argv, t)
                ctx.mark("returned_s")
                wait_count(ctx.direct, bucket, f"{SMALL_DIR}/f", n, t)

            out.append(ctx.measure("4", system, step, amount=n, unit="ops", fs=fs))


def w5_list(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """ls -lR, then (remounted) find, over the tree of small files in many directories."""
    ctx.attempt("5ls", system, out, lambda: _listing(ctx, system, out, "5ls", ["ls", "-lR"]))
    ctx.attempt("5find", system, out, lambda: _listing(ctx, system, out, "5find", ["find"]))


def _listing(ctx: Ctx, system: str, out: list[Sample], wl: str, argv: list[str]) -> None:
    n = ctx.sizes.tree_dirs * ctx.sizes.tree_files
    if system == "boto3":
        ro = ctx.ro_bucket
        out.append(ctx.boto3(wl, "list", [], bucket=ro, amount=n, unit="ops", prefix="tree/"))
        return
    with ctx.mounted(system, ctx.ro_bucket, out) as fs:
        drop_caches()
        step = _check_listing([*argv, str(fs.path / "tree")], ctx.sizes.timeout, n)
        out.append(ctx.measure(wl, system, step, amount=n, unit="ops", fs=fs))


_FILE_LINE = re.compile(r"(?:^|[\s/])f\d{2}$")


def _check_listing(cmd: list[str], timeout: float, files: int) -> Callable[[], None]:
    """A listing step that fails when the listing misses files (a wrong answer is no answer)."""

    def step() -> None:
        text = run_cmd(cmd, timeout)
        seen = sum(1 for line in text.splitlines() if _FILE_LINE.search(line.rstrip()))
        if seen < files:
            raise BenchError(f"{cmd[0]} showed {seen} of {files} files")

    return step


# ------------------------------------------------------------------------------ (6) (7)


def w6_rename(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Rename of a large file (server-side copy, then delete)."""
    size, t = ctx.sizes.rename, ctx.sizes.timeout
    with ctx.bucket(system, "6") as bucket:
        upload_zeros(ctx.direct, bucket, "big", size)
        if system == "boto3":
            out.append(ctx.boto3("6", "mpcopy", ["big", "big2"], bucket=bucket, amount=size))
            out.append(
                ctx.boto3(
                    "6", "copy", ["big2", "big3"], bucket=bucket, amount=size, system="boto3-copy"
                )
            )
            return
        with ctx.mounted(system, bucket, out) as fs:
            os.stat(fs.path / "big")  # looked up before, as a registry would have

            def step() -> None:
                run_cmd(["mv", str(fs.path / "big"), str(fs.path / "big2")], t)
                ctx.mark("returned_s")
                wait_objects(ctx.direct, bucket, {"big2": size}, t)
                wait_gone(ctx.direct, bucket, "big", t)

            out.append(ctx.measure("6", system, step, amount=size, fs=fs))


def w7_append(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Append to an existing file (O_APPEND, without O_TRUNC)."""
    base, add, t = ctx.sizes.append_base, ctx.sizes.append_add, ctx.sizes.timeout
    with ctx.bucket(system, "7") as bucket:
        upload_zeros(ctx.direct, bucket, "app", base)
        if system == "boto3":
            out.append(ctx.boto3("7", "append", ["app"], bucket=bucket, amount=add, size=add))
            return
        with ctx.mounted(system, bucket, out) as fs:
            argv = [*_dd_write(fs.path / "app", add), "oflag=append", "conv=notrunc"]

            def step() -> None:
                run_cmd(argv, t)
                ctx.mark("returned_s")
                wait_objects(ctx.direct, bucket, {"app": base + add}, t)

            out.append(ctx.measure("7", system, step, amount=add, fs=fs))


# ------------------------------------------------------------------------------ (8) (12)


def w8_parallel(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Concurrent writers (all at once), then concurrent cold readers."""
    ctx.attempt("8w", system, out, lambda: _par_writers(ctx, system, out))
    ctx.attempt("8r", system, out, lambda: _par_readers(ctx, system, out))


def _par_writers(ctx: Ctx, system: str, out: list[Sample]) -> None:
    n, size = ctx.sizes.par_count, ctx.sizes.par_size
    keys = [f"w{i}" for i in range(n)]
    with ctx.bucket(system, "8") as bucket:
        if system in REFERENCES:
            amount = n * size
            out.append(
                ctx.reference("8w", system, "put", keys, bucket=bucket, amount=amount, size=size)
            )
            return
        with ctx.mounted(system, bucket, out) as fs:
            out.append(_parallel_writes(ctx, "8w", system, fs, bucket, keys, size))


def _par_readers(ctx: Ctx, system: str, out: list[Sample]) -> None:
    n, size, t = ctx.sizes.par_count, ctx.sizes.par_size, ctx.sizes.timeout
    keys = [f"r{i}" for i in range(n)]
    if system in REFERENCES:
        ro = ctx.ro_bucket
        out.append(ctx.reference("8r", system, "get", keys, bucket=ro, amount=n * size))
        return
    with ctx.mounted(system, ctx.ro_bucket, out) as fs:
        drop_caches()
        step = lambda: run_parallel([_dd_read(fs.path / k) for k in keys], t)  # noqa: E731
        out.append(ctx.measure("8r", system, step, amount=n * size, fs=fs))


def w12_memory(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Many concurrent large writers: peak RSS against the memory budget; none may fail."""
    n, size = ctx.sizes.rss_writers, ctx.sizes.rss_size
    keys = [f"m{i}" for i in range(n)]
    with ctx.bucket(system, "12") as bucket:
        if system == "boto3":
            out.append(ctx.boto3("12", "put", keys, bucket=bucket, amount=n * size, size=size))
            return
        with ctx.mounted(system, bucket, out) as fs:
            out.append(_parallel_writes(ctx, "12", system, fs, bucket, keys, size))


def w14_fsync_writes(ctx: Ctx, system: str, out: list[Sample]) -> None:
    """Sequential writes of each size in ``fsync_writes`` with ``dd conv=fsync``: (14a), (14b)."""
    for i, size in enumerate(ctx.sizes.fsync_writes):
        wl = f"14{'abcdefgh'[i]}"
        ctx.attempt(wl, system, out, functools.partial(_fsync_write, ctx, system, out, wl, size))


def _fsync_write(ctx: Ctx, system: str, out: list[Sample], wl: str, size: int) -> None:
    t = ctx.sizes.timeout
    with ctx.bucket(system, wl) as bucket:
        if system in REFERENCES:
            out.append(
                ctx.reference(wl, system, "put", ["w"], bucket=bucket, amount=size, size=size)
            )
            return
        with ctx.mounted(system, bucket, out) as fs:
            argv = [*_dd_write(fs.path / "w", size), "conv=fsync"]

            def step() -> None:
                run_cmd(argv, t)
                ctx.mark("returned_s")
                wait_objects(ctx.direct, bucket, {"w": size}, t)

            out.append(ctx.measure(wl, system, step, amount=size, fs=fs))


def _parallel_writes(
    ctx: Ctx, wl: str, system: str, fs: Mounted, bucket: str, keys: list[str], size: int
) -> Sample:
    t = ctx.sizes.timeout

    def step() -> None:
        run_parallel([_dd_write(fs.path / k, size) for k in keys], t)
        ctx.mark("returned_s")
        wait_objects(ctx.direct, bucket, dict.fromkeys(keys, size), t)

    return ctx.measure(wl, system, step, amount=len(keys) * size, fs=fs)
