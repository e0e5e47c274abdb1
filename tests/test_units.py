"""Pure units: the errno table, error translation, part sizes, the budget, names, logging."""

from __future__ import annotations

import errno
import hashlib
import logging
from pathlib import Path
from typing import Any

import botocore.exceptions
import pyfuse3
import pytest
import trio
import trio.testing

from s3fs_registry import errors, metrics, mounthelper, status
from s3fs_registry.budget import MemoryBudget, Pool, SpoolBudget
from s3fs_registry.config import MountConfig, S3Config
from s3fs_registry.fs import fuse_errors
from s3fs_registry.log import RedactingFilter
from s3fs_registry.namespace import Entry, Namespace
from s3fs_registry.store import (
    MAX_PARTS,
    _checked_get,
    check_key,
    make_client,
    multipart_etag,
    translate_client_error,
    translate_error,
)
from s3fs_registry.writer import WriteContext

MiB = 1024 * 1024
GiB = 1024 * MiB


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (errors.NotFoundError("x"), errno.ENOENT),
        (errors.AccessDeniedError("x"), errno.EACCES),
        (errors.CredentialsError("x"), errno.EACCES),
        (errors.PreconditionError("x"), errno.ESTALE),
        (errors.TooLargeError("x"), errno.EFBIG),
        (errors.NoSpaceError("x"), errno.ENOSPC),
        (errors.NameTooLongError("x"), errno.ENAMETOOLONG),
        (errors.TransientError("x"), errno.EIO),
        (errors.IntegrityError("x"), errno.EIO),
        (errors.NoSuchBucketError("x"), errno.EIO),
        (errors.StoreError("x"), errno.EIO),
        (errors.FsError(errno.ENOTEMPTY), errno.ENOTEMPTY),
        (ValueError("bug"), errno.EIO),
    ],
)
def test_errno_table(exc: BaseException, code: int) -> None:
    assert errors.to_errno(exc) == code


def client_error(code: str, status: int = 400) -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "Op")


@pytest.mark.parametrize(
    ("code", "status", "cls"),
    [
        ("NoSuchKey", 404, errors.NotFoundError),
        ("404", 404, errors.NotFoundError),
        ("NoSuchBucket", 404, errors.NoSuchBucketError),
        ("AccessDenied", 403, errors.AccessDeniedError),
        ("SignatureDoesNotMatch", 403, errors.CredentialsError),
        ("InvalidAccessKeyId", 403, errors.CredentialsError),
        ("PreconditionFailed", 412, errors.PreconditionError),
        ("EntityTooLarge", 400, errors.TooLargeError),
        ("KeyTooLongError", 400, errors.NameTooLongError),
        ("QuotaExceeded", 403, errors.NoSpaceError),
        ("SlowDown", 503, errors.TransientError),
        ("InternalError", 500, errors.TransientError),
        ("WeirdNewError", 502, errors.TransientError),
        ("BadDigest", 400, errors.IntegrityError),
        ("InvalidArgument", 400, errors.StoreError),
    ],
)
def test_client_error_translation(code: str, status: int, cls: type) -> None:
    exc = translate_client_error(client_error(code, status), "PutObject", "k")
    assert type(exc) is cls
    assert "PutObject k" in str(exc)


def test_transport_errors_are_transient() -> None:
    raw = botocore.exceptions.EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    assert isinstance(translate_error(raw, "GetObject", "k"), errors.TransientError)
    missing = botocore.exceptions.NoCredentialsError()
    assert isinstance(translate_error(missing, "GetObject", "k"), errors.CredentialsError)


def test_key_limit() -> None:
    check_key("k" * 1024)
    with pytest.raises(errors.NameTooLongError):
        check_key("k" * 1025)
    with pytest.raises(errors.NameTooLongError):
        check_key("é" * 513)  # 1026 bytes of UTF-8


def test_multipart_etag() -> None:
    # S3: md5 of the concatenated binary part md5s, then "-<number of parts>"
    a, b = hashlib.md5(b"a").digest(), hashlib.md5(b"b").digest()
    etags = [f'"{a.hex()}"', f'"{b.hex()}"']
    assert multipart_etag(etags) == f'"{hashlib.md5(a + b).hexdigest()}-2"'


def response(status: int, length: int, content_range: str = "") -> dict[str, Any]:
    resp: dict[str, Any] = {
        "ResponseMetadata": {"HTTPStatusCode": status},
        "ContentLength": length,
        "ETag": '"e"',
    }
    if content_range:
        resp["ContentRange"] = content_range
    return resp


def test_get_responses_are_checked() -> None:
    assert _checked_get("k", response(206, 4, "bytes 2-5/10"), b"cdef", 2, 5).total_size == 10
    assert _checked_get("k", response(200, 3), b"abc", None, None).data == b"abc"
    with pytest.raises(errors.IntegrityError):
        _checked_get("k", response(206, 4, "bytes 2-5/10"), b"cde", 2, 5)  # short body
    with pytest.raises(errors.IntegrityError):
        _checked_get("k", response(206, 4, "bytes 3-6/10"), b"defg", 2, 5)  # wrong range
    with pytest.raises(errors.IntegrityError):
        _checked_get("k", response(200, 10), b"0123456789", 2, 5)  # range ignored
    with pytest.raises(errors.IntegrityError):
        _checked_get("k", response(500, 3), b"abc", None, None)
    # the range may end early at the end of the object
    assert _checked_get("k", response(206, 2, "bytes 8-9/10"), b"89", 8, 20).data == b"89"


def write_context(chunksize: int, budget: int) -> WriteContext:
    ctx = WriteContext.__new__(WriteContext)
    ctx.chunksize = chunksize
    ctx.max_part = min(5 * GiB, MemoryBudget(budget, MiB).parts.limit // 4)
    return ctx


def test_part_sizes_grow_so_objects_reach_terabytes() -> None:
    ctx = write_context(10 * MiB, 8 * GiB)
    assert ctx.part_size(1) == ctx.part_size(1000) == 10 * MiB
    assert ctx.part_size(1001) == 20 * MiB
    total = sum(ctx.part_size(n) for n in range(1, MAX_PARTS + 1))
    assert total >= 5 * 1024 * GiB
    small = write_context(5 * MiB, 512 * MiB)
    assert max(small.part_size(n) for n in range(1, MAX_PARTS + 1)) <= small.max_part
    assert sum(small.part_size(n) for n in range(1, MAX_PARTS + 1)) > 500 * GiB


async def test_budget_never_deadlocks_many_writers() -> None:
    """200 writers, each first taking a small reservation, then upgrading to parts, with a
    budget far too small for all of them at once: every one finishes."""
    budget = MemoryBudget(40 * MiB, MiB)
    done = 0

    async def writer(nursery: trio.Nursery) -> None:
        nonlocal done
        await budget.first.take(MiB)
        await trio.sleep(0)
        await budget.parts.take(10 * MiB)  # upgrade while holding the first reservation
        budget.first.give(MiB)
        for _ in range(3):
            held = 10 * MiB
            nursery.start_soon(upload, held)  # the "part upload" gives it back later
            await budget.parts.take(10 * MiB)
        budget.parts.give(10 * MiB)
        done += 1

    async def upload(held: int) -> None:
        await trio.sleep(0.001)
        budget.parts.give(held)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            for _ in range(200):
                nursery.start_soon(writer, nursery)
    assert done == 200
    assert budget.used == 0
    assert budget.parts.peak <= budget.parts.limit + 10 * MiB


def test_pool_and_spool_budget() -> None:
    pool = Pool("p", 100)
    assert pool.try_take(60) and not pool.try_take(50)
    pool.force(50)
    pool.give(110)
    assert pool.used == 0 and pool.peak == 110
    spool = SpoolBudget(10)
    spool.grow(10)
    with pytest.raises(errors.NoSpaceError):
        spool.grow(1)
    spool.shrink(10)
    spool.grow(5)


def test_namespace_ttls_and_negative_cache() -> None:
    now = [0.0]
    ns = Namespace(
        "pre/", metadata_ttl=1.0, immutable_ttl=300.0, negative_ttl=2.0, clock=lambda: now[0]
    )
    v2 = ns.attach(ns.root, "docker", Entry(True))
    blob = ns.attach(v2, "x", Entry(False, 3, 1.0, '"e"'))
    assert ns.key(blob) == "pre/docker/x"
    assert ns.ttl("docker/registry/v2/blobs/sha256/ab/abc/data") == 300.0
    # a manifest DELETE on another replica removes its revision link: not trusted long
    assert ns.ttl("docker/registry/v2/repositories/r/_manifests/revisions/sha256/a/link") == 1.0
    assert ns.ttl("docker/registry/v2/repositories/r/_manifests/tags/t/current/link") == 1.0
    assert ns.fresh(blob)
    now[0] = 1.5
    assert not ns.fresh(blob)
    ns.set_negative("a/b")
    assert ns.is_negative("a/b")
    now[0] = 4.0
    assert not ns.is_negative("a/b")
    ns.remember_lookup(blob)
    ns.forget(blob.ino, 1)
    assert blob.ino not in ns.nodes and "x" not in v2.children


async def test_fuse_errors_boundary(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(pyfuse3.FUSEError) as info:
        async with fuse_errors("read"):
            raise ValueError("a bug")
    assert info.value.errno == errno.EIO
    assert "Traceback" in caplog.text and "a bug" in caplog.text
    with pytest.raises(pyfuse3.FUSEError) as info:
        async with fuse_errors("lookup"):
            raise errors.NotFoundError("gone")
    assert info.value.errno == errno.ENOENT
    with pytest.raises(pyfuse3.FUSEError) as info:
        async with fuse_errors("rmdir"):
            raise errors.FsError(errno.ENOTEMPTY)
    assert info.value.errno == errno.ENOTEMPTY


def test_redaction() -> None:
    record = logging.LogRecord(
        "x",
        logging.INFO,
        "f",
        1,
        "key %s at %s",
        ("topsecret", "https://d/x?Expires=1&Signature=abc~_-&Key-Pair-Id=K"),
        None,
    )
    RedactingFilter(["topsecret"]).filter(record)
    message = record.getMessage()
    assert "topsecret" not in message and "abc~_-" not in message
    assert "Key-Pair-Id=K" in message and "Signature=REDACTED" in message


def test_link_cache_keeps_only_digest_links_by_etag() -> None:
    from s3fs_registry.reader import LinkCache

    cache = LinkCache("root/", entries=2)
    repo = "root/docker/registry/v2/repositories/a/b"
    layer, rev = f"{repo}/_layers/sha256/ab/link", f"{repo}/_manifests/revisions/sha256/cd/link"
    index = f"{repo}/_manifests/tags/v1/index/sha256/ef/link"
    assert cache.holds(layer) and cache.holds(rev) and cache.holds(index)
    for other in (f"{repo}/_manifests/tags/v1/current/link", f"{repo}/_uploads/u/startedat"):
        assert not cache.holds(other)
        cache.put(other, '"e"', b"x")
        assert cache.get(other, '"e"', 1) is None
    cache.put(layer, '"e1"', b"sha256:ab")
    assert cache.get(layer, '"e1"', 9) == b"sha256:ab"
    assert cache.get(layer, '"e2"', 9) is None and cache.get(layer, "", 9) is None
    assert cache.get(layer, '"e1"', 10) is None
    cache.put(rev, '"e3"', b"r")
    cache.put(index, '"e4"', b"i")  # over 2 entries: the least recently used goes
    assert cache.get(layer, '"e1"', 9) is None and cache.get(index, '"e4"', 1) == b"i"


# -- metrics and status ------------------------------------------------------------------------


def sample(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


async def test_fuse_errors_counts_every_request_and_each_errno() -> None:
    ops = sample("s3fs_registry_fuse_operations_total", operation="mkdir")
    eexist = sample("s3fs_registry_fuse_errors_total", operation="mkdir", errno="EEXIST")
    async with fuse_errors("mkdir"):
        pass
    with pytest.raises(pyfuse3.FUSEError):
        async with fuse_errors("mkdir"):
            raise errors.FsError(errno.EEXIST)
    with pytest.raises(pyfuse3.FUSEError):
        async with fuse_errors("mkdir"):
            raise pyfuse3.FUSEError(errno.EEXIST)
    assert sample("s3fs_registry_fuse_operations_total", operation="mkdir") == ops + 3
    assert (
        sample("s3fs_registry_fuse_errors_total", operation="mkdir", errno="EEXIST") == eexist + 2
    )


def test_s3_attempts_are_counted_by_outcome_and_keep_the_last_error() -> None:
    def count(name: str, outcome: str = "") -> float:
        labels = {"operation": "HeadObject", **({"outcome": outcome} if outcome else {})}
        return sample(name, **labels)

    before = {
        "ok": count("s3fs_registry_s3_requests_total", "ok"),
        "nf": count("s3fs_registry_s3_requests_total", "not_found"),
        "tr": count("s3fs_registry_s3_requests_total", "transient"),
        "retries": count("s3fs_registry_s3_retries_total"),
        "failed": count("s3fs_registry_s3_failures_total", "transient"),
        "latency": count("s3fs_registry_s3_request_duration_seconds_count"),
    }
    assert metrics.s3_attempt("HeadObject", "k", 1, 0.01, None, True) == "ok"
    metrics.RECENT.last_error = None
    gone = errors.NotFoundError("HeadObject k: 404")
    assert metrics.s3_attempt("HeadObject", "k", 1, 0.01, gone, True) == "not_found"
    assert metrics.RECENT.last_error is None, "not found is an answer, not an error"
    slow = errors.TransientError("HeadObject k: SlowDown")
    assert metrics.s3_attempt("HeadObject", "k", 1, 0.2, slow, False) == "transient"
    assert metrics.s3_attempt("HeadObject", "k", 2, 0.3, slow, True) == "transient"
    last = metrics.RECENT.last_error
    assert last is not None and last.attempt == 2 and last.final and "SlowDown" in last.message
    assert count("s3fs_registry_s3_requests_total", "ok") == before["ok"] + 1
    assert count("s3fs_registry_s3_requests_total", "not_found") == before["nf"] + 1
    assert count("s3fs_registry_s3_requests_total", "transient") == before["tr"] + 2
    assert count("s3fs_registry_s3_retries_total") == before["retries"] + 1
    assert count("s3fs_registry_s3_failures_total", "transient") == before["failed"] + 1
    assert count("s3fs_registry_s3_request_duration_seconds_count") == before["latency"] + 4
    assert metrics.outcome_of(errors.CredentialsError("x")) == "denied"
    assert metrics.outcome_of(errors.StoreError("x")) == "error"


def test_recent_counts_per_minute_windows() -> None:
    now = [1000 * 60.0]
    recent = metrics.Recent(minutes=15, clock=lambda: now[0])
    recent.add("requests", 5)
    recent.add("errors")
    now[0] += 4 * 60  # minute 4
    recent.add("requests", 2)
    now[0] += 11 * 60  # minute 15: minute 0 is out of the 15-minute window
    recent.add("retries")
    assert recent.totals(1) == {"requests": 0, "errors": 0, "retries": 1, "failures": 0}
    assert recent.totals(15) == {"requests": 2, "errors": 0, "retries": 1, "failures": 0}
    assert recent.since_start() == {"requests": 7, "errors": 1, "retries": 1, "failures": 0}
    now[0] += 30 * 60
    assert recent.totals(15)["requests"] == 0


def test_cache_lookups_are_counted_where_the_namespace_decides() -> None:
    now = [0.0]
    ns = Namespace("", 1.0, 300.0, 1.0, clock=lambda: now[0])
    node = ns.attach(ns.root, "f", Entry(False, 3))
    hits = sample("s3fs_registry_cache_lookups_total", cache="attributes", result="hit")
    misses = sample("s3fs_registry_cache_lookups_total", cache="attributes", result="miss")
    assert ns.fresh(node)
    now[0] = 2.0
    assert not ns.fresh(node)
    assert sample("s3fs_registry_cache_lookups_total", cache="attributes", result="hit") == hits + 1
    assert (
        sample("s3fs_registry_cache_lookups_total", cache="attributes", result="miss") == misses + 1
    )
    negative_hits = sample("s3fs_registry_cache_lookups_total", cache="negative", result="hit")
    ns.set_negative("g")
    assert ns.is_negative("g") and not ns.is_negative("h")
    assert (
        sample("s3fs_registry_cache_lookups_total", cache="negative", result="hit")
        == negative_hits + 1
    )


def test_pool_waiting_counts_writers_that_wait() -> None:
    async def main() -> None:
        pool = Pool("part", 10)
        await pool.take(10)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(pool.take, 5)
            nursery.start_soon(pool.take, 5)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.waiting == 2
            pool.give(10)
        assert pool.waiting == 0 and pool.used == 10

    trio.run(main)


def test_control_socket_names() -> None:
    assert status.socket_name("/var/lib/docker-registry") == "var-lib-docker-registry.sock"
    assert status.socket_name("/mnt/with space/é") == "mnt-with%20space-%e9.sock"
    long = status.socket_name("/" + "d" * 300)
    assert len(long) <= 62 and long.endswith(".sock")
    assert long != status.socket_name("/" + "d" * 299)


def test_find_mount_reads_mountinfo(tmp_path: Path) -> None:
    info = tmp_path / "mountinfo"
    info.write_text(
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "98 22 0:50 / /mnt/a\\040b rw,nosuid,nodev,relatime shared:1 - fuse.s3fs-registry "
        "s3fs-registry:bucket/reg/ rw,user_id=1000,group_id=1000,default_permissions\n"
    )
    found = status.find_mount("/mnt/a b", str(info))
    assert found == status.MountEntry("/mnt/a b", "fuse.s3fs-registry", 1000)
    assert status.find_mount("/proc", str(info)) == status.MountEntry("/proc", "proc", -1)
    assert status.find_mount("/mnt", str(info)) is None


def test_status_report_is_summarised() -> None:
    report = {
        "version": "1.0", "pid": 42, "mountpoint": "/m", "endpoint": "http://s3:9000",
        "bucket": "b", "prefix": "reg/", "cloudfront": "", "metrics": "127.0.0.1:9464",
        "started": 0.0, "now": 3725.0,
        "uploads": [{"key": "reg/x/data", "written": 12 * MiB, "stored": 10 * MiB, "parts": 2,
                     "parts_in_flight": 1, "since": 3700.0}],
        "memory": [{"pool": "part", "used": 16 * MiB, "limit": 300 * MiB, "waiting": 2}],
        "spool": {"used": 0, "limit": GiB},
        "requests": {w: {"requests": 10, "errors": 1, "retries": 1, "failures": 0}
                     for w in ("1", "5", "15", "total")},
        "last_error": {"when": 3600.0, "operation": "PutObject", "key": "reg/f", "attempt": 1,
                       "message": "PutObject reg/f: SlowDown: slow", "final": False},
    }  # fmt: skip
    text = status.format_report(report)
    assert text.startswith("s3fs-registry 1.0 on /m (pid 42), up 1h02m\n")
    assert "  s3://b/reg/ at http://s3:9000" in text
    assert "  metrics: http://127.0.0.1:9464/metrics" in text
    assert "  x/data: 12.0 MiB written, 10.0 MiB in S3 (2 parts, 1 uploading), for 25s" in text
    assert "memory: 16.0 MiB of 300.0 MiB in use (part 16.0 MiB/300.0 MiB); 2 writer(s)" in text
    assert "last S3 error 2m05s ago (attempt 1, retried): PutObject reg/f: SlowDown" in text


class _Stop(Exception):
    pass


def _first_url(s3: S3Config) -> str:
    """The URL the daemon's client would send a PutObject to; the request is stopped before
    anything is sent (the endpoints are AWS's, which tests must not reach)."""
    client = make_client(s3, MountConfig())
    seen: list[str] = []

    def stop(request: Any, **_: Any) -> None:
        seen.append(request.url)
        raise _Stop

    client.meta.events.register_first("before-send.s3", stop)
    with pytest.raises(_Stop):
        client.put_object(Bucket=s3.bucket, Key="k", Body=b"x")
    return seen[0]


@pytest.mark.parametrize(
    ("options", "url"),
    [
        ({}, "https://reg-bucket.s3.eu-west-1.amazonaws.com/k"),
        ({"usedualstack": True}, "https://reg-bucket.s3.dualstack.eu-west-1.amazonaws.com/k"),
        ({"accelerate": True}, "https://reg-bucket.s3-accelerate.amazonaws.com/k"),
        (
            {"accelerate": True, "usedualstack": True, "forcepathstyle": True},
            "https://reg-bucket.s3-accelerate.dualstack.amazonaws.com/k",
        ),
        ({"usefipsendpoint": True}, "https://reg-bucket.s3-fips.eu-west-1.amazonaws.com/k"),
        (
            {"usedualstack": True, "regionendpoint": "http://127.0.0.1:9"},
            "http://127.0.0.1:9/reg-bucket/k",
        ),
    ],
)
def test_v3_endpoint_parameters_select_the_endpoint(
    options: dict[str, Any], url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_USE_DUALSTACK_ENDPOINT", "AWS_USE_FIPS_ENDPOINT", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    s3 = S3Config(bucket="reg-bucket", region="eu-west-1", accesskey="a", secretkey="b", **options)
    assert _first_url(s3) == url


def test_mount_options_are_sorted_by_who_takes_them() -> None:
    """-o of mount(8): its own and systemd's ignored, kernel flags to FUSE, settings to env."""
    opts = mounthelper.parse_options(
        ["rw,nosuid,nodev,_netdev,nofail,noauto,x-systemd.automount", "allow_other,uid=102"]
    )
    assert opts.fuse == ["rw", "nosuid", "nodev"]
    assert opts.ignored == ["_netdev", "nofail", "noauto", "x-systemd.automount"]
    assert opts.environment() == {
        "REGISTRY_MOUNT_ALLOW_OTHER": "true",
        "REGISTRY_MOUNT_UID": "102",
    }
    with pytest.raises(errors.ConfigError, match="'lazytime' is not known"):
        mounthelper.parse_options(["lazytime"])


def _stream_model(
    per_connection: float, total: float, rtt: float, readers: int, seconds: float = 8.0
) -> tuple[int, list[float]]:
    """`Streams` driving greedy sequential readers of 10 MiB ranges over a modelled link:
    each GET waits one round trip, then moves at min(per-connection cap, total / GETs
    moving). Returns the limit reached and each reader's MiB/s."""
    from s3fs_registry.reader.streams import Streams

    now = [0.0]
    streams = Streams(12, clock=lambda: now[0])
    gets: list[list[Any]] = []  # [reader, bytes left, ticket, latency left]
    got = [0.0] * readers

    def pump(reader: int) -> None:
        while (ticket := streams.start(reader, lambda: pump(reader))) is not None:
            gets.append([reader, 10 * MiB, ticket, rtt])

    for reader in range(readers):
        pump(reader)
    step = 0.001
    while now[0] < seconds:
        moving = sum(1 for g in gets if g[3] <= 0)
        rate = min(per_connection, total / max(1, moving))
        for g in gets:
            if g[3] > 0:
                g[3] -= step
            else:
                g[1] -= rate * step
        now[0] += step
        for g in [g for g in gets if g[1] <= 0]:
            gets.remove(g)
            got[g[0]] += 10 * MiB
            streams.done(g[2], 10 * MiB)
            pump(g[0])
    return streams.limit, [n / seconds / MiB for n in got]


def test_read_streams_grow_where_each_connection_is_capped_and_not_on_loopback() -> None:
    infinite = float(1 << 50)
    limit, rates = _stream_model(20 * MiB, infinite, 0.02, readers=1)  # 20 ms, 20 MiB/s
    assert limit == 12 and rates[0] > 150, (limit, rates)
    limit, rates = _stream_model(infinite, 600 * MiB, 0.002, readers=1)  # one CPU's worth
    assert limit <= 2 and rates[0] > 450, (limit, rates)
    limit, rates = _stream_model(20 * MiB, infinite, 0.02, readers=4)
    assert limit == 12 and sum(rates) > 150, (limit, rates)
    assert max(rates) - min(rates) <= 0.25 * max(rates), f"unfair: {rates}"
