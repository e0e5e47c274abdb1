"""Tests for tests/s3proxy.py, the fault-injecting S3 proxy, against a moto server."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import boto3
import botocore.httpchecksum
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from bench.link import Link, LinkShape
from bench.proxy import serial_round_trips
from tests.s3proxy import FAULT_KINDS, S3Proxy

MiB = 1024 * 1024
Checksums = Literal["when_supported", "when_required"]
CHECKSUM_MODES: list[Checksums] = ["when_supported", "when_required"]
# What a dropped or reset connection may look like to botocore, depending on timing.
CONNECTION_ERRORS = (ConnectionClosedError, EndpointConnectionError)


# -- fixtures -------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                pytest.fail(f"moto server exited with {proc.returncode}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("moto server did not answer")
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_client(
    endpoint: str,
    *,
    attempts: int | None = None,
    checksums: Checksums = "when_supported",
    **config: Any,
) -> Any:
    """boto3 S3 client; attempts=None keeps botocore's default retries, attempts=1 shows
    every fault directly (note: retries={"max_attempts": 1} means ONE RETRY in botocore)."""
    if attempts is not None:
        config["retries"] = {"total_max_attempts": attempts}
    cfg = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
        **config,
    )
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=cfg,
    )


@pytest.fixture(scope="module")
def direct(moto_url: str) -> Any:
    """A client talking to moto without the proxy (to check what really happened)."""
    return make_client(moto_url)


@pytest.fixture
def proxy(moto_url: str) -> Iterator[S3Proxy]:
    with S3Proxy(moto_url, seed=1234) as p:
        yield p


@pytest.fixture
def bucket(direct: Any) -> str:
    name = f"t-{uuid.uuid4().hex[:16]}"
    direct.create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3c(proxy: S3Proxy) -> Any:
    """Through the proxy, no retries.  (Not named `s3`: conftest parametrises that name.)"""
    return make_client(proxy.url, attempts=1)


def _exists(client: Any, bucket: str, key: str) -> bool:
    try:
        client.head_object(Bucket=bucket, Key=key)
    except ClientError as e:
        if e.response["Error"]["Code"] in ("404", "NoSuchKey"):
            return False
        raise
    return True


class PatternFile(io.RawIOBase):
    """A deterministic, seekable, never-materialised file of `size` bytes."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pos = 0
        self.block = hashlib.sha256(b"pattern").digest() * 4096  # 128 KiB

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.pos, 2: self.size}[whence]
        self.pos = max(0, min(self.size, base + offset))
        return self.pos

    def readinto(self, b: Any) -> int:
        view = memoryview(b).cast("B")
        n = min(len(view), self.size - self.pos)
        done = 0
        while done < n:
            off = (self.pos + done) % len(self.block)
            take = min(n - done, len(self.block) - off)
            view[done : done + take] = self.block[off : off + take]
            done += take
        self.pos += n
        return n

    def sha256(self) -> str:
        h = hashlib.sha256()
        self.seek(0)
        while chunk := self.read(MiB):
            h.update(chunk)
        self.seek(0)
        return h.hexdigest()


def _rss_peak_reset() -> Callable[[], int] | None:
    """Reset the peak RSS and return a function giving the growth of the peak, or None."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        base = _status_kib("VmRSS")
    except OSError:
        return None
    return lambda: (_status_kib("VmHWM") - base) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(field)


# -- pass-through -----------------------------------------------------------------------------


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_put_get_list_passthrough(proxy: S3Proxy, bucket: str, checksums: Checksums) -> None:
    s3 = make_client(proxy.url, checksums=checksums)
    s3.put_object(Bucket=bucket, Key="a/one", Body=b"hello")  # bytes: no Expect header
    s3.put_object(Bucket=bucket, Key="a/two", Body=io.BytesIO(b"x" * 70000))  # Expect
    s3.put_object(Bucket=bucket, Key="a/empty", Body=b"")
    assert s3.get_object(Bucket=bucket, Key="a/one")["Body"].read() == b"hello"
    assert s3.get_object(Bucket=bucket, Key="a/two")["Body"].read() == b"x" * 70000
    assert s3.get_object(Bucket=bucket, Key="a/empty")["Body"].read() == b""
    part = s3.get_object(Bucket=bucket, Key="a/two", Range="bytes=10-19")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["Body"].read() == b"x" * 10
    assert s3.head_object(Bucket=bucket, Key="a/two")["ContentLength"] == 70000
    listing = s3.list_objects_v2(Bucket=bucket, Prefix="a/")
    assert sorted(o["Key"] for o in listing["Contents"]) == ["a/empty", "a/one", "a/two"]
    s3.delete_object(Bucket=bucket, Key="a/one")
    assert not _exists(s3, bucket, "a/one")
    # The client connection is kept alive although moto closes after every answer.
    assert proxy.connections == 1
    assert {r.status for r in proxy.requests} <= {200, 204, 206, 404}


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_large_object_is_streamed(
    proxy: S3Proxy, bucket: str, direct: Any, checksums: Checksums
) -> None:
    s3 = make_client(proxy.url, attempts=1, checksums=checksums)
    src = PatternFile(50 * MiB)
    want = src.sha256()
    peak_growth = _rss_peak_reset()

    s3.put_object(Bucket=bucket, Key="big", Body=src)
    body = s3.get_object(Bucket=bucket, Key="big")["Body"]
    h = hashlib.sha256()
    for chunk in body.iter_chunks(MiB):
        h.update(chunk)
    assert h.hexdigest() == want

    if peak_growth is not None:  # neither the proxy nor the client held 50 MiB at once
        assert peak_growth() < 40 * MiB
    put, get = proxy.requests
    assert (put.method, put.status, put.bytes_in) == ("PUT", 200, 50 * MiB)
    assert (get.method, get.status, get.bytes_out) == ("GET", 200, 50 * MiB)
    assert direct.head_object(Bucket=bucket, Key="big")["ContentLength"] == 50 * MiB


@pytest.mark.parametrize("checksums", CHECKSUM_MODES)
def test_multipart_upload(proxy: S3Proxy, bucket: str, direct: Any, checksums: Checksums) -> None:
    s3 = make_client(proxy.url, attempts=1, checksums=checksums)
    p1, p2 = os.urandom(5 * MiB), os.urandom(MiB)
    upload = s3.create_multipart_upload(Bucket=bucket, Key="mpu")["UploadId"]
    e1 = s3.upload_part(Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=1, Body=p1)
    e2 = s3.upload_part(
        Bucket=bucket, Key="mpu", UploadId=upload, PartNumber=2, Body=io.BytesIO(p2)
    )
    parts = [
        {"PartNumber": n, "ETag": e["ETag"], **{k: v for k, v in e.items() if "Checksum" in k}}
        for n, e in ((1, e1), (2, e2))
    ]
    s3.complete_multipart_upload(
        Bucket=bucket, Key="mpu", UploadId=upload, MultipartUpload={"Parts": parts}
    )
    assert direct.get_object(Bucket=bucket, Key="mpu")["Body"].read() == p1 + p2
    assert proxy.count("POST", query_contains="uploads") == 1
    assert proxy.count("PUT", query_contains="partNumber=") == 2
    assert proxy.count("POST", query_contains="uploadId=") == 1

    # Concurrent parts through s3transfer: many simultaneous client connections.
    proxy.reset_counts()
    src = PatternFile(30 * MiB)
    cfg = TransferConfig(
        multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB, max_concurrency=6
    )
    s3.upload_fileobj(src, bucket, "mpu-threads", Config=cfg)
    out = io.BytesIO()
    s3.download_fileobj(bucket, "mpu-threads", out, Config=cfg)
    assert hashlib.sha256(out.getvalue()).hexdigest() == src.sha256()
    assert proxy.count("PUT", query_contains="partNumber=") == 6
    assert proxy.connections > 2


def test_aws_chunked_trailer_passthrough(
    proxy: S3Proxy, bucket: str, direct: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore only sends aws-chunked bodies with checksum trailers over https; make it
    believe the endpoint is https so the real encoder runs over our plain HTTP."""
    if not hasattr(botocore.httpchecksum, "urlparse"):
        pytest.skip("botocore changed how it decides on trailers")
    monkeypatch.setattr(
        botocore.httpchecksum,
        "urlparse",
        lambda url: urlparse(url.replace("http://", "https://", 1)),
    )
    s3 = make_client(proxy.url, attempts=1)
    data = os.urandom(300_000)
    resp = s3.put_object(Bucket=bucket, Key="trailer", Body=io.BytesIO(data))
    assert resp["ChecksumCRC32"]
    (put,) = proxy.requests
    assert put.status == 200
    assert put.bytes_in > len(data)  # chunk framing and the trailer went over the wire
    assert direct.get_object(Bucket=bucket, Key="trailer")["Body"].read() == data


def test_chunked_request_to_moto(proxy: S3Proxy, bucket: str, direct: Any) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)
    pieces = [b"abc", os.urandom(100_000), b"xyz"]
    conn.request("PUT", f"/{bucket}/chunked", body=iter(pieces), encode_chunked=True)
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200
    conn.close()
    assert direct.get_object(Bucket=bucket, Key="chunked")["Body"].read() == b"".join(pieces)


# -- byte-exact behaviour against a scripted upstream -------------------------------------


class RawUpstream:
    """A scripted upstream server: `handler(sock)` runs for every accepted connection."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.handler = handler
        self.accepted = 0
        self.errors: list[BaseException] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._run, args=(conn,), daemon=True).start()

    def _run(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(10)
                self.handler(conn)
        except BaseException as e:
            self.errors.append(e)

    def close(self) -> None:
        self.sock.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        data = sock.recv(n - len(buf))
        if not data:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes")
        buf += data
    return buf


def recv_until(sock: socket.socket, marker: bytes) -> bytes:
    buf = b""
    while marker not in buf:
        data = sock.recv(1)
        if not data:
            raise EOFError(buf)
        buf += data
    return buf


def test_chunked_bodies_and_trailers_are_forwarded_verbatim() -> None:
    request = (
        b"PUT /bkt/obj HTTP/1.1\r\n"
        b"Host: 127.0.0.1:1\r\n"  # whatever the client signed, not the upstream address
        b"Transfer-Encoding: chunked\r\n"
        b"Content-Encoding: aws-chunked\r\n"
        b"x-amz-decoded-content-length: 11\r\n"
        b"x-amz-trailer: x-amz-checksum-crc32\r\n"
        b"\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-amz-checksum-crc32:DUoRhQ==\r\n\r\n"
    )
    response = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-foo\r\n\r\n"
        b"4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\nx-foo: bar\r\n\r\n"
    )
    second = b"GET /bkt/obj?x=1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"
    second_resp = b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "e"\r\n\r\nabc'
    received: list[bytes] = []

    def handler(sock: socket.socket) -> None:
        received.append(recv_exact(sock, len(request)))
        sock.sendall(response)
        received.append(recv_exact(sock, len(second)))
        sock.sendall(second_resp)
        assert sock.recv(1) == b""  # the proxy closes when the client does

    upstream = RawUpstream(handler)
    try:
        with (
            S3Proxy(upstream.url) as proxy,
            socket.create_connection(("127.0.0.1", proxy.port)) as c,
        ):
            c.settimeout(10)
            c.sendall(request)
            assert recv_exact(c, len(response)) == response
            c.sendall(second)
            assert recv_exact(c, len(second_resp)) == second_resp
            assert received == [request, second]
            assert upstream.accepted == 1  # one upstream connection, kept alive
            first, last = proxy.requests
            assert (first.method, first.path, first.query) == ("PUT", "/bkt/obj", "")
            assert first.bytes_in == len(request) - request.index(b"\r\n\r\n") - 4
            assert first.bytes_out == len(response) - response.index(b"\r\n\r\n") - 4
            assert (last.method, last.query, last.bytes_out) == ("GET", "x=1", 3)
    finally:
        upstream.close()
    assert not upstream.errors


def test_expect_100_continue_is_relayed() -> None:
    head = b"PUT /bkt/obj HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"

    def handler(sock: socket.socket) -> None:
        got = recv_until(sock, b"\r\n\r\n")
        assert got == head
        sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        assert recv_exact(sock, 10) == b"0123456789"
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    upstream = RawUpstream(handler)
    try:
        with (
            S3Proxy(upstream.url) as proxy,
            socket.create_connection(("127.0.0.1", proxy.port)) as c,
        ):
            c.settimeout(0.8)  # well before any client would give up waiting
            c.sendall(head)
            assert recv_until(c, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
            c.sendall(b"0123456789")
            c.settimeout(10)
            assert recv_until(c, b"ok").startswith(b"HTTP/1.1 200 OK\r\n")
            assert proxy.requests[0].bytes_in == 10
    finally:
        upstream.close()
    assert not upstream.errors


def test_expect_100_continue_early_final_answer() -> None:
    head = b"PUT /bkt/obj HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"

    def handler(sock: socket.socket) -> None:
        recv_until(sock, b"\r\n\r\n")
        sock.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 4\r\n\r\nnope")

    upstream = RawUpstream(handler)
    try:
        with (
            S3Proxy(upstream.url) as proxy,
            socket.create_connection(("127.0.0.1", proxy.port)) as c,
        ):
            c.settimeout(5)
            c.sendall(head)
            answer = recv_until(c, b"nope")
            assert answer.startswith(b"HTTP/1.1 403 Forbidden\r\n")
            assert b"Connection: close\r\n" in answer
            assert c.recv(100) == b""  # the proxy closes: the body will never be read
            assert proxy.requests[0].status == 403
    finally:
        upstream.close()


def test_upstream_error_in_the_middle_of_a_body_is_relayed() -> None:
    """The upstream answers before it read the whole body and closes: the client gets that
    answer, not a dropped connection."""
    head = b"PUT /bkt/obj HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % (20 * MiB)

    def handler(sock: socket.socket) -> None:
        recv_until(sock, b"\r\n\r\n")
        recv_exact(sock, 64 * 1024)
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad")
        # close with unread data: the proxy gets an RST while it forwards the body

    upstream = RawUpstream(handler)
    try:
        with S3Proxy(upstream.url) as proxy:
            c = socket.create_connection(("127.0.0.1", proxy.port))
            c.settimeout(10)
            with c:
                c.sendall(head)
                with contextlib.suppress(OSError):
                    c.sendall(b"\0" * (20 * MiB))
                answer = recv_until(c, b"bad")
            assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
            assert b"Connection: close\r\n" in answer
            assert proxy.requests[0].status == 400
    finally:
        upstream.close()


# -- counting -------------------------------------------------------------------------------


def test_counting(proxy: S3Proxy, bucket: str, s3c: Any) -> None:
    for i in range(3):
        s3c.put_object(Bucket=bucket, Key=f"dir/k{i}", Body=b"x")
    s3c.get_object(Bucket=bucket, Key="dir/k0")["Body"].read()
    s3c.list_objects_v2(Bucket=bucket, Prefix="dir/")
    s3c.head_object(Bucket=bucket, Key="dir/k1")
    assert proxy.count() == 6
    assert proxy.count("PUT") == 3
    assert proxy.count("put", path_contains="/dir/k") == 3
    assert proxy.count("GET") == 2
    assert proxy.count("GET", query_contains="list-type=2") == 1
    assert proxy.count(path_contains="dir/k1") == 2
    assert proxy.count("HEAD", path_contains="k0") == 0
    assert proxy.wait_idle()
    recs = proxy.requests
    assert all(r.fault is None and r.status == 200 and r.duration > 0 for r in recs)
    assert [r.bytes_in for r in recs[:3]] == [1, 1, 1]
    assert recs[3].bytes_out == 1
    proxy.reset_counts()
    assert proxy.count() == 0 and proxy.requests == []


def test_max_attempts_one_means_one_retry(proxy: S3Proxy, bucket: str) -> None:
    """Surprise: botocore's retries={"max_attempts": N} counts *retries*, not attempts."""
    s3 = make_client(proxy.url, retries={"max_attempts": 1})
    proxy.add_fault("slowdown", method="GET")
    with pytest.raises(ClientError):
        s3.get_object(Bucket=bucket, Key="nope")
    assert proxy.count("GET") == 2


# -- faults -------------------------------------------------------------------------------------


@pytest.mark.parametrize("after_upstream", [False, True])
@pytest.mark.parametrize(
    ("kind", "code", "status"),
    [
        ("slowdown", "SlowDown", 503),
        ("internal", "InternalError", 500),
        ("access_denied", "AccessDenied", 403),
    ],
)
def test_error_faults(
    proxy: S3Proxy,
    bucket: str,
    s3c: Any,
    direct: Any,
    kind: str,
    code: str,
    status: int,
    after_upstream: bool,
) -> None:
    direct.put_object(Bucket=bucket, Key="k", Body=b"data")
    proxy.add_fault(kind, method="GET", after_upstream=after_upstream)
    proxy.add_fault(kind, method="PUT", after_upstream=after_upstream)
    with pytest.raises(ClientError) as ei:
        s3c.get_object(Bucket=bucket, Key="k")
    err = ei.value.response
    assert (err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]) == (code, status)
    assert err["ResponseMetadata"]["RequestId"]
    for body in (b"small", io.BytesIO(b"y" * 200_000)):  # without and with Expect
        with pytest.raises(ClientError) as ei:
            s3c.put_object(Bucket=bucket, Key="new", Body=body)
        assert ei.value.response["Error"]["Code"] == code
    # After the fault the client goes on normally (on the same or a new connection).
    assert s3c.head_object(Bucket=bucket, Key="k")["ContentLength"] == 4
    recs = proxy.requests
    assert [r.fault for r in recs] == [kind, kind, kind, None]
    assert [r.status for r in recs] == [status, status, status, 200]
    assert [r.upstream_status for r in recs[:3]] == ([200] * 3 if after_upstream else [None] * 3)
    # after_upstream: the PUT happened although the client saw an error.
    assert _exists(direct, bucket, "new") is after_upstream


def test_error_fault_on_head_has_no_body(proxy: S3Proxy, bucket: str, s3c: Any) -> None:
    proxy.add_fault("slowdown", method="HEAD", times=1)
    with pytest.raises(ClientError) as ei:
        s3c.head_object(Bucket=bucket, Key="whatever")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(ClientError) as ei:  # the connection is still usable
        s3c.head_object(Bucket=bucket, Key="whatever")
    assert ei.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert proxy.connections == 1


@pytest.mark.parametrize("after_upstream", [False, True])
def test_reset(proxy: S3Proxy, bucket: str, s3c: Any, direct: Any, after_upstream: bool) -> None:
    direct.put_object(Bucket=bucket, Key="k", Body=b"data")
    proxy.add_fault("reset", after_upstream=after_upstream)
    with pytest.raises(ConnectionClosedError):
        s3c.get_object(Bucket=bucket, Key="k")
    with pytest.raises(ConnectionClosedError):
        s3c.put_object(Bucket=bucket, Key="new", Body=io.BytesIO(b"z" * 300_000))
    with pytest.raises(ConnectionClosedError):
        s3c.delete_object(Bucket=bucket, Key="k")
    assert _exists(direct, bucket, "new") is after_upstream
    assert _exists(direct, bucket, "k") is not after_upstream
    assert all(r.status is None and r.fault == "reset" for r in proxy.requests)
    proxy.clear_faults()
    assert s3c.list_objects_v2(Bucket=bucket)["KeyCount"] >= 1


def test_cut(proxy: S3Proxy, bucket: str, s3c: Any, direct: Any) -> None:
    data = os.urandom(1_000_000)
    direct.put_object(Bucket=bucket, Key="k", Body=data)
    rule = proxy.add_fault("cut", method="GET")
    resp = s3c.get_object(Bucket=bucket, Key="k")  # the head arrives intact
    assert resp["ContentLength"] == len(data)
    with pytest.raises((ResponseStreamingError, IncompleteReadError)):
        resp["Body"].read()
    assert proxy.requests[-1].bytes_out == len(data) // 2
    # A non-streaming operation reads the body inside the call; botocore 1.43 reports the
    # short body as a connection error, 1.44 as a ClientError with status 500.
    with pytest.raises((ConnectionClosedError, ResponseStreamingError, ClientError)):
        s3c.list_objects_v2(Bucket=bucket)
    proxy.remove_fault(rule)
    # No body to cut (PUT answers with an empty body): the status line is cut instead.
    proxy.add_fault("cut", method="PUT")
    with pytest.raises(ConnectionClosedError):
        s3c.put_object(Bucket=bucket, Key="put", Body=b"123")
    assert _exists(direct, bucket, "put")  # it happened upstream
    assert rule.fired == 2


def test_after_upstream_internal_delete_took_effect(
    proxy: S3Proxy, bucket: str, s3c: Any, direct: Any
) -> None:
    direct.put_object(Bucket=bucket, Key="victim", Body=b"x")
    proxy.add_fault("internal", method="DELETE", after_upstream=True, times=1)
    with pytest.raises(ClientError) as ei:
        s3c.delete_object(Bucket=bucket, Key="victim")
    assert ei.value.response["Error"]["Code"] == "InternalError"
    assert not _exists(direct, bucket, "victim")  # gone upstream all the same
    rec = proxy.requests[0]
    assert (rec.status, rec.upstream_status, rec.fault) == (500, 204, "internal")
    # With default retries the retried DELETE succeeds (idempotent).
    direct.put_object(Bucket=bucket, Key="victim", Body=b"x")
    proxy.add_fault("internal", method="DELETE", after_upstream=True, times=1)
    make_client(proxy.url).delete_object(Bucket=bucket, Key="victim")
    assert not _exists(direct, bucket, "victim")


def test_after_upstream_internal_complete_multipart(
    proxy: S3Proxy, bucket: str, s3c: Any, direct: Any
) -> None:
    upload = s3c.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    etag = s3c.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=1, Body=b"p")["ETag"]
    rule = proxy.add_fault(
        "internal", method="POST", query="uploadId=", after_upstream=True, times=1
    )
    parts = {"Parts": [{"PartNumber": 1, "ETag": etag}]}
    # Default retries: the first attempt completes upstream, the client sees 500 and retries;
    # moto (like S3) answers the retried CompleteMultipartUpload with 200.
    make_client(proxy.url).complete_multipart_upload(
        Bucket=bucket, Key="m", UploadId=upload, MultipartUpload=parts
    )
    assert rule.fired == 1 and not rule.armed
    assert proxy.count("POST", query_contains="uploadId=") == 2
    assert direct.get_object(Bucket=bucket, Key="m")["Body"].read() == b"p"


def test_down_and_up(proxy: S3Proxy, bucket: str, s3c: Any) -> None:
    s3c.list_objects_v2(Bucket=bucket)  # leaves an idle keep-alive connection in the pool
    proxy.down()
    assert proxy.is_down
    for _ in range(3):
        with pytest.raises(CONNECTION_ERRORS):
            s3c.list_objects_v2(Bucket=bucket)
    proxy.up()
    assert s3c.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    # Retries ride out a short outage (explicit: botocore's default policy differs between
    # releases).
    proxy.down()
    threading.Timer(0.3, proxy.up).start()
    riding = make_client(proxy.url, retries={"mode": "standard", "total_max_attempts": 10})
    assert riding.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_down_drops_a_transfer_in_flight(proxy: S3Proxy, bucket: str, direct: Any) -> None:
    direct.put_object(Bucket=bucket, Key="big", Body=os.urandom(8 * MiB))
    s3 = make_client(proxy.url, attempts=1)
    body = s3.get_object(Bucket=bucket, Key="big")["Body"]
    body.read(1000)
    proxy.down()
    with pytest.raises((ResponseStreamingError, IncompleteReadError, ConnectionClosedError)):
        body.read()
    proxy.up()


def test_down_refuse(proxy: S3Proxy, bucket: str, s3c: Any) -> None:
    port = proxy.port
    s3c.list_objects_v2(Bucket=bucket)
    proxy.down(refuse=True)
    with pytest.raises(CONNECTION_ERRORS):  # the pooled connection was dropped
        s3c.list_objects_v2(Bucket=bucket)
    with pytest.raises(EndpointConnectionError):  # and new ones are refused
        s3c.list_objects_v2(Bucket=bucket)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    proxy.up()
    assert proxy.port == port
    assert s3c.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_delay_fault(proxy: S3Proxy, bucket: str, direct: Any) -> None:
    direct.put_object(Bucket=bucket, Key="k", Body=b"data")
    impatient = make_client(proxy.url, attempts=1, read_timeout=0.3, connect_timeout=2)
    # Beyond the client's read timeout.
    proxy.add_fault("delay", seconds=2.0, times=1)
    t0 = time.monotonic()
    with pytest.raises(ReadTimeoutError):
        impatient.get_object(Bucket=bucket, Key="k")
    assert 0.25 < time.monotonic() - t0 < 1.8
    # Within it: just slower.
    proxy.add_fault("delay", seconds=0.15, times=1)
    t0 = time.monotonic()
    assert impatient.get_object(Bucket=bucket, Key="k")["Body"].read() == b"data"
    assert time.monotonic() - t0 >= 0.15
    # Delay then drop.
    proxy.add_fault("delay", seconds=0.1, times=1, drop=True)
    t0 = time.monotonic()
    with pytest.raises(ConnectionClosedError):
        impatient.get_object(Bucket=bucket, Key="k")
    assert time.monotonic() - t0 >= 0.1
    # after_upstream: the DELETE took effect while the client timed out.
    proxy.add_fault("delay", method="DELETE", seconds=1.0, after_upstream=True, times=1)
    with pytest.raises(ReadTimeoutError):
        impatient.delete_object(Bucket=bucket, Key="k")
    assert not _exists(direct, bucket, "k")


def test_probability_is_seeded(proxy: S3Proxy, bucket: str, s3c: Any) -> None:
    def run() -> list[bool]:
        proxy.clear_faults()
        rule = proxy.add_fault("slowdown", method="HEAD", probability=0.5, seed=42)
        outcome = []
        for _ in range(200):
            try:
                s3c.head_object(Bucket=bucket, Key="absent")
            except ClientError as e:
                outcome.append(e.response["ResponseMetadata"]["HTTPStatusCode"] == 503)
        assert rule.fired == sum(outcome)
        return outcome

    first = run()
    assert 70 <= sum(first) <= 130
    assert run() == first  # reproducible
    assert proxy.count("HEAD") == 400


def test_times_and_default_retries(proxy: S3Proxy, bucket: str, s3c: Any) -> None:
    s3c.put_object(Bucket=bucket, Key="k", Body=b"v")
    rule = proxy.add_fault("slowdown", method="GET", path=r"/k$", times=1)
    with pytest.raises(ClientError):
        s3c.get_object(Bucket=bucket, Key="k")
    assert s3c.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
    assert (rule.fired, rule.armed) == (1, False)
    # Default retries hide a couple of transient faults of each kind.
    retrying = make_client(proxy.url)
    for kind in ("slowdown", "internal", "reset"):
        proxy.reset_counts()
        proxy.add_fault(kind, method="GET", times=2)
        assert retrying.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
        assert proxy.count("GET") == 3
        assert [r.fault for r in proxy.requests] == [kind, kind, None]
    # ...but AccessDenied is not retried.
    proxy.reset_counts()
    proxy.add_fault("access_denied", method="GET", times=1)
    with pytest.raises(ClientError):
        retrying.get_object(Bucket=bucket, Key="k")
    assert proxy.count("GET") == 1


def test_rules_match_on_method_path_query(proxy: S3Proxy, bucket: str, s3c: Any) -> None:
    s3c.put_object(Bucket=bucket, Key="keep/a", Body=b"1")
    proxy.add_fault("access_denied", path=r"/deny/")
    proxy.add_fault("internal", method="GET", query="list-type=2")
    s3c.get_object(Bucket=bucket, Key="keep/a")
    with pytest.raises(ClientError, match="AccessDenied"):
        s3c.put_object(Bucket=bucket, Key="deny/x", Body=b"1")
    with pytest.raises(ClientError, match="InternalError"):
        s3c.list_objects_v2(Bucket=bucket)
    with pytest.raises(ValueError, match="unknown fault kind"):
        proxy.add_fault("nope")
    assert {
        "slowdown",
        "internal",
        "reset",
        "cut",
        "delay",
        "access_denied",
        "too_large",
        "quota",
    } == FAULT_KINDS


def test_proxy_delay_adds_latency(moto_url: str, bucket: str) -> None:
    with S3Proxy(moto_url, delay=0.1) as proxy:
        s3 = make_client(proxy.url, attempts=1)
        s3.head_bucket(Bucket=bucket)  # connect
        t0 = time.monotonic()
        s3.put_object(Bucket=bucket, Key="k", Body=b"v")
        elapsed = time.monotonic() - t0
        assert elapsed >= 0.2  # 0.1 s each way
        t0 = time.monotonic()
        s3.put_object(Bucket=bucket, Key="k", Body=io.BytesIO(b"v"))  # plus 100-continue
        assert time.monotonic() - t0 >= 0.3
        proxy.add_fault("slowdown", times=1)  # injected errors cost a round trip as well
        t0 = time.monotonic()
        with pytest.raises(ClientError):
            s3.head_object(Bucket=bucket, Key="k")
        assert time.monotonic() - t0 >= 0.2
        assert proxy.wait_idle()
        assert all(r.duration >= 0.2 for r in proxy.requests)


def test_concurrent_connections(proxy: S3Proxy, bucket: str) -> None:
    s3 = make_client(proxy.url, attempts=1, max_pool_connections=32)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            body = os.urandom(10_000 + i)
            s3.put_object(Bucket=bucket, Key=f"c/{i}", Body=body)
            assert s3.get_object(Bucket=bucket, Key=f"c/{i}")["Body"].read() == body
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert proxy.count("PUT", path_contains="/c/") == 32
    assert proxy.count("GET", path_contains="/c/") == 32
    assert proxy.connections > 4


def test_script_mode(moto_url: str, bucket: str, tmp_path: Path) -> None:
    stats = tmp_path / "stats.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(Path(__file__).with_name("s3proxy.py")),
            "--upstream",
            moto_url,
            "--port",
            "0",
            "--delay-ms",
            "20",
            "--fault",
            "slowdown,method=GET,times=1",
            "--stats-json",
            str(stats),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        s3 = make_client(url, attempts=1)
        s3.put_object(Bucket=bucket, Key="k", Body=b"v")
        with pytest.raises(ClientError, match="SlowDown"):
            s3.get_object(Bucket=bucket, Key="k")
        assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"v"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    assert "3 requests" in err
    records = json.loads(stats.read_text())
    assert [(r["method"], r["status"], r["fault"]) for r in records] == [
        ("PUT", 200, None),
        ("GET", 503, "slowdown"),
        ("GET", 200, None),
    ]
    assert all(r["duration"] >= 0.04 for r in records)


def test_link_model_in_front_of_adopt(moto_url: str, bucket: str, direct: Any) -> None:
    """bench/link.py hands each connection to S3Proxy.adopt: requests are still counted,
    bodies arrive intact, a new connection costs a round trip more than a kept one, and a
    body moves no faster than the cap."""
    body = os.urandom(3 * MiB)
    direct.put_object(Bucket=bucket, Key="big", Body=body)
    with S3Proxy(moto_url) as proxy:
        link = Link(LinkShape(rtt_ms=100, mibps=10), proxy.adopt).start()
        try:
            s3 = make_client(link.url, attempts=1)
            t0 = time.monotonic()
            s3.head_bucket(Bucket=bucket)  # handshake + request
            first = time.monotonic() - t0
            t0 = time.monotonic()
            s3.head_bucket(Bucket=bucket)  # kept alive: the request's round trip only
            kept = time.monotonic() - t0
            t0 = time.monotonic()
            assert s3.get_object(Bucket=bucket, Key="big")["Body"].read() == body
            transfer = time.monotonic() - t0
        finally:
            link.stop()
        assert proxy.wait_idle()
        assert proxy.count("HEAD") == 2
        assert proxy.count("GET", path_contains="/big") == 1
    assert kept >= 0.1
    assert first >= 0.2
    assert transfer >= 0.3 + 0.1  # 3 MiB at 10 MiB/s, plus the round trip


def test_serial_round_trips() -> None:
    """The longest chain of requests each starting after the one before ended."""
    assert serial_round_trips([]) == 0
    assert serial_round_trips([(0, 1), (0, 1), (0.5, 2)]) == 1  # all overlap
    assert serial_round_trips([(0, 1), (1, 2), (2, 3), (0, 3)]) == 3
    # behind a link of RTT 0.1 the next request arrives at least 0.1 after the last answer
    assert serial_round_trips([(0, 1), (1.05, 2)], rtt=0.1) == 1
    assert serial_round_trips([(0, 1), (1.1, 2), (0.5, 2.5), (2.6, 3)], rtt=0.1) == 3
