#!/usr/bin/env python3
"""Counting, delaying and fault-injecting reverse proxy for path-style S3 over HTTP/1.1.

Standard library only.  Put it between an S3 client (boto3 with ``endpoint_url`` pointing at
:attr:`S3Proxy.url`) and an S3 server (moto server, Ceph RGW) on 127.0.0.1::

    with S3Proxy("http://127.0.0.1:9000", delay=0.02) as proxy:
        client = boto3.client("s3", endpoint_url=proxy.url, ...)
        proxy.add_fault("slowdown", method="PUT", probability=0.1)
        ...
        assert proxy.count("GET", query_contains="list-type=2") == 1

or as a script (prints its URL on stdout, runs until SIGTERM/SIGINT)::

    python tests/s3proxy.py --upstream http://127.0.0.1:9000 --port 0 [--delay-ms 20]

Transparency: every client connection gets its own upstream connection (opened lazily,
reopened when the upstream closed it), and request heads are forwarded byte for byte,
including the ``Host`` header the client signed (SigV4), ``Expect`` and
``Transfer-Encoding``.  Response heads are forwarded byte for byte except the hop-by-hop
``Connection`` header: persistence is decided per hop, so the client connection stays
alive although moto's werkzeug server sends ``Connection: close`` after every answer (as
real S3 would keep it).  Bodies are streamed in pieces of at most 256 KiB, never held in
memory; chunked bodies (including aws-chunked payloads with checksum trailers) are forwarded
with their framing, extensions and trailers untouched.  ``Expect: 100-continue`` is honoured
end to end: the proxy forwards the head, relays the upstream's ``100 Continue`` (or its
early final answer) and only then streams the body (it stops waiting after 1 s, like
botocore).  An upstream answer sent before the whole body was forwarded is relayed.

Accounting: :attr:`S3Proxy.requests` lists a :class:`RequestRecord` per request as soon as
its head is read; byte counters and the status are updated before the bytes are sent, so
anything a client has observed is already counted; :meth:`S3Proxy.wait_idle` waits for the
final ``duration``.

``down()`` drops every open connection with an RST and resets new ones right after accepting
them (botocore: ConnectionClosedError, or EndpointConnectionError when the RST wins the race
with connect); ``down(refuse=True)`` closes the listening socket instead (ECONNREFUSED,
EndpointConnectionError).  ``up()`` restores service on the same port.

Fault kinds (see :meth:`S3Proxy.add_fault`):

``slowdown`` / ``internal`` / ``access_denied``
    Answer 503 SlowDown / 500 InternalError / 403 AccessDenied with an S3 XML error body,
    without contacting the upstream.  With ``after_upstream=True`` the request is forwarded
    and completed upstream first, then the real answer is discarded and replaced.
``reset``
    Close the client connection with a TCP RST (SO_LINGER 0) before any answer; with
    ``after_upstream=True`` the request is completed upstream first.
``cut``
    Forward normally, send the response head and only half of the body (of the first chunk
    if chunked), then close the connection (FIN).  A response without a body gets half of
    its status line instead (half a head would look complete: http.client takes EOF as the
    end of the headers).
``delay``
    Sleep ``seconds`` before forwarding (or, with ``after_upstream=True``, after the upstream
    answered and before relaying), then forward normally, or with ``drop=True`` reset the
    client connection instead.

``S3Proxy(..., md5_only=True)`` behaves as a store that knows only ``Content-MD5`` (older
MinIO, appliances): PutObject, UploadPart and DeleteObjects without it get 400
InvalidRequest, and any request with ``x-amz-checksum-*`` or ``x-amz-sdk-checksum-algorithm``
gets 400 InvalidArgument, without reaching the upstream.  Every record keeps the request's
headers (:meth:`RequestRecord.header`).

Injected error answers are sent with ``Connection: keep-alive`` when the request body was
read, and with ``Connection: close`` (and a lingering close) when the client was still
holding its body back for ``100 Continue``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import random
import re
import select
import signal
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable
from email.utils import formatdate
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

__all__ = ["FAULT_KINDS", "FaultRule", "RequestRecord", "S3Proxy", "main"]

FAULT_KINDS = frozenset(
    {"slowdown", "internal", "reset", "cut", "delay", "access_denied", "too_large", "quota"}
)

# kind -> (status, reason, S3 error code, message)
_ERRORS: dict[str, tuple[int, str, str, str]] = {
    "slowdown": (503, "Slow Down", "SlowDown", "Please reduce your request rate."),
    "internal": (
        500,
        "Internal Server Error",
        "InternalError",
        "We encountered an internal error. Please try again.",
    ),
    "access_denied": (403, "Forbidden", "AccessDenied", "Access Denied"),
    "too_large": (
        400,
        "Bad Request",
        "EntityTooLarge",
        "Your proposed upload exceeds the maximum allowed object size.",
    ),
    "quota": (403, "Forbidden", "QuotaExceeded", "Quota exceeded."),
    "bad_gateway": (502, "Bad Gateway", "BadGateway", "s3proxy could not reach the upstream."),
    "bad_request": (400, "Bad Request", "BadRequest", "s3proxy could not parse the request."),
    # md5_only stores (S3Proxy(md5_only=True)): what AWS answers a DeleteObjects without MD5
    "md5_required": (
        400,
        "Bad Request",
        "InvalidRequest",
        "Missing required header for this request: Content-MD5.",
    ),
    "checksum_refused": (
        400,
        "Bad Request",
        "InvalidArgument",
        "x-amz-checksum-* and x-amz-sdk-checksum-algorithm headers are not supported.",
    ),
}

_BUF = 256 * 1024  # largest piece of body held in memory at once
_MAX_LINE = 64 * 1024
_MAX_HEADERS = 256
_CONTINUE_WAIT = 1.0  # how long to wait for the upstream's 100 Continue before sending anyway
_LINGER = 2.0  # how long to drain a client we answered before it sent its body
_LINGER_ZERO = struct.pack("ii", 1, 0)


class _ProtocolError(Exception):
    pass


class _Killed(Exception):
    pass


@dataclasses.dataclass
class RequestRecord:
    """One request seen by the proxy.  ``bytes_in``/``bytes_out`` count body bytes as they
    went over the wire (including chunked framing); ``status`` is what the client got
    (``None`` if it got no answer); ``upstream_status`` what the upstream answered (``None``
    if the request never reached it)."""

    method: str
    path: str  # raw (percent-encoded) path, without the query
    query: str
    status: int | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    duration: float = 0.0  # seconds, from the end of the request head to the end of the answer
    fault: str | None = None
    upstream_status: int | None = None
    connection: int = 0  # sequence number of the client connection it arrived on
    started: float = 0.0  # time.time() when the request head was read
    done: bool = False  # False while the exchange is in flight
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # as received

    def header(self, name: str) -> str | None:
        """The request header `name` (case-insensitive), or None."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    # Records are listed as soon as the request head is read, and counters are updated
    # before the bytes are sent, so whatever a client has seen is already accounted for
    # (only ``duration``/``done`` are set after the exchange, see S3Proxy.wait_idle).
    def _add_in(self, n: int) -> None:
        self.bytes_in += n

    def _add_out(self, n: int) -> None:
        self.bytes_out += n


@dataclasses.dataclass(eq=False)
class FaultRule:
    """A fault rule.  Matches on method (case-insensitive), path (regex, ``re.search`` on the
    raw path without query) and query (substring); fires with ``probability`` (own seeded
    RNG) at most ``times`` times (``None`` = unlimited), then disarms."""

    kind: str
    method: str | None = None
    path: str | None = None
    query: str | None = None
    probability: float = 1.0
    times: int | None = None
    after_upstream: bool = False
    seconds: float = 0.0
    drop: bool = False
    seed: int = 0
    fired: int = 0
    active: bool = True
    _regex: re.Pattern[str] | None = dataclasses.field(default=None, repr=False)
    _rng: random.Random = dataclasses.field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; one of {sorted(FAULT_KINDS)}")
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        if self.times is not None and self.times < 0:
            raise ValueError("times must be >= 0")
        self._regex = re.compile(self.path) if self.path is not None else None
        self._rng = random.Random(self.seed)

    @property
    def armed(self) -> bool:
        return self.active and (self.times is None or self.fired < self.times)

    def matches(self, method: str, path: str, query: str) -> bool:
        if self.method is not None and self.method.upper() != method.upper():
            return False
        if self._regex is not None and not self._regex.search(path):
            return False
        return self.query is None or self.query in query

    def _try_fire(self, method: str, path: str, query: str) -> bool:
        """Caller holds the proxy lock."""
        if not self.armed or not self.matches(method, path, query):
            return False
        if self.probability < 1.0 and self._rng.random() >= self.probability:
            return False
        self.fired += 1
        return True


@dataclasses.dataclass
class _Head:
    raw: bytes
    start: str
    headers: list[tuple[str, str]]
    lines: list[bytes]  # raw lines, start line first, empty line last

    def get(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name]
        return ", ".join(values) if values else None

    def tokens(self, name: str) -> list[str]:
        value = self.get(name)
        if value is None:
            return []
        return [t.strip().lower() for t in value.split(",") if t.strip()]


class _Reader:
    """Minimal buffered reader over a socket (we need to know what is buffered)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def readline(self) -> bytes:
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[: i + 1])
                del self.buf[: i + 1]
                return line
            if len(self.buf) > _MAX_LINE:
                raise _ProtocolError("line too long")
            start = len(self.buf)
            data = self.sock.recv(_BUF)
            if not data:
                line = bytes(self.buf)
                self.buf.clear()
                return line
            self.buf += data

    def read_some(self, n: int) -> bytes:
        if self.buf:
            data = bytes(self.buf[:n])
            del self.buf[:n]
            return data
        return self.sock.recv(min(n, _BUF))


def _read_head(reader: _Reader, *, request: bool) -> _Head | None:
    """Read a message head; ``None`` on EOF before its first byte."""
    line = reader.readline()
    while request and line in (b"\r\n", b"\n"):  # tolerated between requests (RFC 9112 2.2)
        line = reader.readline()
    if not line:
        return None
    if not line.endswith(b"\n"):
        raise _ProtocolError("EOF inside message head")
    raw = [line]
    headers: list[tuple[str, str]] = []
    while True:
        line = reader.readline()
        if not line.endswith(b"\n"):
            raise _ProtocolError("EOF inside message head")
        raw.append(line)
        if line in (b"\r\n", b"\n"):
            break
        if len(headers) >= _MAX_HEADERS:
            raise _ProtocolError("too many header fields")
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t") and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, value + " " + text.strip())
            continue
        name, sep, value = text.partition(":")
        if not sep:
            raise _ProtocolError(f"bad header line {text!r}")
        headers.append((name.strip(), value.strip()))
    return _Head(b"".join(raw), raw[0].decode("latin-1").rstrip("\r\n"), headers, raw)


def _with_connection(head: _Head, *, close: bool) -> bytes:
    """The head with its hop-by-hop ``Connection`` header replaced for the client hop:
    ``Connection: close`` when the proxy will close the client connection, none otherwise.
    Everything else stays byte for byte."""
    if not close and head.get("connection") is None:
        return head.raw
    if close and head.tokens("connection") == ["close"]:
        return head.raw
    kept = [
        line
        for line in head.lines[1:-1]
        if line.split(b":", 1)[0].strip().lower() not in (b"connection", b"keep-alive")
    ]
    extra = [b"Connection: close\r\n"] if close else []
    return b"".join([head.lines[0], *kept, *extra, head.lines[-1]])


def _body_framing(head: _Head) -> tuple[str, int] | None:
    """("chunked", 0) or ("length", n) from the head, or None if it says neither."""
    te = head.tokens("transfer-encoding")
    if te:
        if te[-1] != "chunked":
            raise _ProtocolError(f"unsupported Transfer-Encoding {te}")
        return ("chunked", 0)
    cl = head.get("content-length")
    if cl is None:
        return None
    values = {v.strip() for v in cl.split(",")}
    if len(values) != 1 or not next(iter(values)).isdigit():
        raise _ProtocolError(f"bad Content-Length {cl!r}")
    return ("length", int(next(iter(values))))


def _keep_alive(version: str, head: _Head) -> bool:
    conn = head.tokens("connection")
    if "close" in conn:
        return False
    if version == "HTTP/1.0":
        return "keep-alive" in conn
    return True


_Tally = Callable[[int], None]


def _put(dst: socket.socket | None, data: bytes, tally: _Tally | None) -> None:
    if tally is not None:
        tally(len(data))  # counted before it is sent: a client never sees uncounted bytes
    if dst is not None:
        dst.sendall(data)


def _copy_length(src: _Reader, dst: socket.socket | None, n: int, tally: _Tally | None) -> int:
    left = n
    while left:
        data = src.read_some(min(left, _BUF))
        if not data:
            raise _ProtocolError("EOF inside body")
        _put(dst, data, tally)
        left -= len(data)
    return n


def _copy_chunked(src: _Reader, dst: socket.socket | None, tally: _Tally | None) -> int:
    """Forward a chunked body verbatim (sizes, extensions, trailers); return wire bytes."""
    total = 0
    while True:
        line = src.readline()
        if not line.endswith(b"\n"):
            raise _ProtocolError("EOF inside chunked body")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _ProtocolError(f"bad chunk size line {line!r}") from None
        _put(dst, line, tally)
        total += len(line)
        if size == 0:
            break
        total += _copy_length(src, dst, size, tally)
        crlf = src.readline()
        if crlf not in (b"\r\n", b"\n"):
            raise _ProtocolError("chunk data not followed by CRLF")
        _put(dst, crlf, tally)
        total += len(crlf)
    while True:  # trailer section, ends with an empty line
        line = src.readline()
        if not line.endswith(b"\n"):
            raise _ProtocolError("EOF inside chunked trailers")
        _put(dst, line, tally)
        total += len(line)
        if line in (b"\r\n", b"\n"):
            return total


def _copy_until_close(src: _Reader, dst: socket.socket | None, tally: _Tally | None) -> int:
    total = 0
    while True:
        data = src.read_some(_BUF)
        if not data:
            return total
        _put(dst, data, tally)
        total += len(data)


def _copy_body(
    src: _Reader,
    dst: socket.socket | None,
    framing: tuple[str, int],
    tally: _Tally | None = None,
) -> int:
    kind, n = framing
    if kind == "chunked":
        return _copy_chunked(src, dst, tally)
    if kind == "close":
        return _copy_until_close(src, dst, tally)
    return _copy_length(src, dst, n, tally)


def _nodelay(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _rst_close(sock: socket.socket | None) -> None:
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
    with contextlib.suppress(OSError):
        sock.close()


def _error_body(code: str, message: str, resource: str, request_id: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<Resource>{_xml_escape(resource)}</Resource><RequestId>{request_id}</RequestId>"
        f"<HostId>{uuid.uuid4().hex}</HostId></Error>"
    ).encode()


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Connection:
    """One client connection and its (lazily opened) upstream connection."""

    def __init__(self, proxy: S3Proxy, sock: socket.socket, number: int) -> None:
        self.proxy = proxy
        self.number = number
        self.client = sock
        self.creader = _Reader(sock)
        self.up: socket.socket | None = None
        self.ureader: _Reader | None = None
        self.killed = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"s3proxy-conn-{number}", daemon=True)

    # -- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        try:
            while not self.killed.is_set() and self._exchange():
                pass
        except (OSError, _ProtocolError, _Killed):
            pass
        finally:
            self._close_upstream()
            if self.killed.is_set():
                _rst_close(self.client)
            else:
                with contextlib.suppress(OSError):
                    self.client.close()
            self.proxy._forget(self)

    def kill(self) -> None:
        """Drop the connection (from another thread): RST both sides, wake the thread."""
        self.killed.set()
        for sock in (self.client, self.up):
            if sock is None:
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _sleep(self, seconds: float) -> None:
        if seconds > 0 and self.killed.wait(seconds):
            raise _Killed
        if self.killed.is_set():
            raise _Killed

    def _close_upstream(self) -> None:
        if self.up is not None:
            with contextlib.suppress(OSError):
                self.up.close()
        self.up = None
        self.ureader = None

    def _ensure_upstream(self) -> tuple[socket.socket, _Reader]:
        if self.up is not None and self.ureader is not None:
            # Reuse only if the upstream has not closed (or spoken) while idle.
            readable, _, _ = select.select([self.up], [], [], 0)
            if not readable and not self.ureader.buffered:
                return self.up, self.ureader
            self._close_upstream()
        sock = socket.create_connection(self.proxy._upstream_addr, timeout=10)
        sock.settimeout(None)
        _nodelay(sock)
        self.up, self.ureader = sock, _Reader(sock)
        if self.killed.is_set():
            raise _Killed
        return sock, self.ureader

    def _lingering_close(self) -> None:
        """Close after answering a request whose body we did not read: half-close, drain
        what the client may still send for a while, then close (avoids an RST eating our
        answer)."""
        sock = self.client
        with contextlib.suppress(OSError, ValueError):
            sock.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + _LINGER
            while (left := deadline - time.monotonic()) > 0 and not self.killed.is_set():
                readable, _, _ = select.select([sock], [], [], min(left, 0.2))
                if readable and not sock.recv(_BUF):
                    break
        with contextlib.suppress(OSError):
            sock.close()

    # -- one request/response exchange -----------------------------------------------------

    def _exchange(self) -> bool:
        """Handle one request; return whether the client connection stays open."""
        head = _read_head(self.creader, request=True)
        if head is None:
            return False
        t0 = time.monotonic()
        parts = head.start.split(" ")
        method, target, version = [*parts, "", "", ""][:3]
        if target.startswith(("http://", "https://")):  # absolute-form
            target = "/" + target.split("/", 3)[3] if target.count("/") >= 3 else "/"
        path, _, query = target.partition("?")
        rec = RequestRecord(
            method=method,
            path=path,
            query=query,
            connection=self.number,
            started=time.time(),
            headers=head.headers,
        )
        self.proxy._record(rec)
        try:
            if len(parts) != 3 or not version.startswith("HTTP/1."):
                self._send_error("bad_request", rec, keep=False, head_only=False)
                return False
            return self._handle(head, rec, version)
        finally:
            rec.duration = time.monotonic() - t0
            rec.done = True

    def _handle(self, head: _Head, rec: RequestRecord, version: str) -> bool:
        proxy = self.proxy
        method = rec.method
        head_only = method == "HEAD"
        try:
            framing = _body_framing(head) or ("length", 0)
        except _ProtocolError:
            self._send_error("bad_request", rec, keep=False, head_only=head_only)
            return False
        has_body = framing != ("length", 0)
        expect = "100-continue" in head.tokens("expect")
        client_keep = _keep_alive(version, head)
        rule = proxy._pick_fault(method, rec.path, rec.query)
        kind = rule.kind if rule is not None else None
        refusal = _md5_only_refusal(method, rec.query, head) if proxy.md5_only else None
        if refusal is not None:
            rule = FaultRule("internal")  # answered before the upstream, like a fault
            kind = refusal
        rec.fault = kind

        self._sleep(proxy.delay)  # the request's trip to the "region"

        if rule is not None and not rule.after_upstream:
            if kind == "reset":
                _rst_close(self.client)
                return False
            if kind in _ERRORS:
                if has_body and expect and not self.creader.buffered:
                    # The client waits for 100 Continue: answer now and never read the body.
                    self._sleep(proxy.delay)
                    self._send_error(kind, rec, keep=False, head_only=head_only)
                    self._lingering_close()
                    return False
                _copy_body(self.creader, None, framing, rec._add_in)
                self._sleep(proxy.delay)
                self._send_error(kind, rec, keep=client_keep, head_only=head_only)
                return client_keep
            if kind == "delay":
                self._sleep(rule.seconds)
                if rule.drop:
                    _rst_close(self.client)
                    return False

        # -- forward the request ---------------------------------------------------------
        try:
            up, ureader = self._ensure_upstream()
            up.sendall(head.raw)
        except OSError:
            self._close_upstream()
            self._send_error("bad_gateway", rec, keep=False, head_only=head_only)
            return False

        if has_body:
            if expect and not self.creader.buffered:
                early = self._await_continue(up, ureader)
                if early is not None:
                    # Final answer before the body: relay it, the body will never come.
                    self._relay_early_answer(early, rec)
                    return False
            try:
                _copy_body(self.creader, up, framing, rec._add_in)
            except OSError:
                # The upstream may have answered early and stopped reading (an error); the
                # client deserves that answer rather than a dropped connection.
                early = self._early_answer(ureader)
                if early is None:
                    raise
                self._relay_early_answer(early, rec)
                return False

        # -- read the answer (relaying interim 1xx) ---------------------------------------
        while True:
            resp = _read_head(ureader, request=False)
            if resp is None:
                self._close_upstream()
                self._send_error("bad_gateway", rec, keep=False, head_only=head_only)
                return False
            status = _status(resp)
            if 100 <= status < 200 and status != 101:
                self._sleep(proxy.delay)
                self.client.sendall(resp.raw)
                continue
            break
        rec.upstream_status = rec.status = status
        resp_framing = _response_framing(method, status, resp)
        resp_version = resp.start.split(" ", 1)[0]
        up_keep = resp_framing[0] != "close" and _keep_alive(resp_version, resp)
        # Connection persistence is per hop: moto (werkzeug) closes after every answer, the
        # client connection is kept open anyway unless the body is delimited by the close.
        keep = client_keep and resp_framing[0] != "close"

        if rule is not None and (rule.after_upstream or kind == "cut"):
            if kind in _ERRORS or kind == "reset":
                _copy_body(ureader, None, resp_framing)  # let the upstream finish its answer
                if not up_keep:
                    self._close_upstream()
                if kind == "reset":
                    rec.status = None
                    _rst_close(self.client)
                    return False
                self._sleep(proxy.delay)
                self._send_error(kind, rec, keep=client_keep, head_only=head_only)
                return client_keep
            if kind == "cut":
                self._sleep(proxy.delay)
                self._cut(resp, resp_framing, rec)
                return False
            if kind == "delay":
                self._sleep(rule.seconds)
                if rule.drop:
                    rec.status = None
                    _rst_close(self.client)
                    return False

        # -- relay the answer ---------------------------------------------------------------
        self._sleep(proxy.delay)  # the answer's trip back
        self.client.sendall(_with_connection(resp, close=not keep))
        _copy_body(ureader, self.client, resp_framing, rec._add_out)
        if not up_keep:
            self._close_upstream()
        return keep

    def _early_answer(self, ureader: _Reader) -> _Head | None:
        """A final answer the upstream sent before it had the whole request, if any."""
        with contextlib.suppress(OSError, _ProtocolError):
            if ureader.buffered or select.select([ureader.sock], [], [], 0.5)[0]:
                resp = _read_head(ureader, request=False)
                if resp is not None and _status(resp) >= 200:
                    return resp
        return None

    def _relay_early_answer(self, resp: _Head, rec: RequestRecord) -> None:
        """Relay a final answer given before the request body was (fully) forwarded, then
        close both connections: the rest of the body will never be read."""
        ureader = self.ureader
        assert ureader is not None
        rec.upstream_status = rec.status = _status(resp)
        self._sleep(self.proxy.delay)
        self.client.sendall(_with_connection(resp, close=True))
        with contextlib.suppress(OSError, _ProtocolError):
            framing = _response_framing(rec.method, rec.status, resp)
            _copy_body(ureader, self.client, framing, rec._add_out)
        self._close_upstream()
        self._lingering_close()

    def _await_continue(self, up: socket.socket, ureader: _Reader) -> _Head | None:
        """The client sent ``Expect: 100-continue`` and holds its body back.  Wait until the
        upstream speaks or the client starts sending anyway.  Relays interim answers; returns
        an early final answer, or None when the body should be streamed now."""
        deadline = time.monotonic() + _CONTINUE_WAIT
        while True:
            if not ureader.buffered:
                left = deadline - time.monotonic()
                if left <= 0 or self.creader.buffered:
                    return None
                readable, _, _ = select.select([up, self.client], [], [], left)
                if up not in readable:
                    if self.client in readable:
                        return None  # the client did not wait; stream its body
                    continue
            resp = _read_head(ureader, request=False)
            if resp is None:
                raise _ProtocolError("upstream closed while client waits for 100 Continue")
            status = _status(resp)
            if not 100 <= status < 200:
                return resp
            self._sleep(self.proxy.delay)
            self.client.sendall(resp.raw)
            if status == 100:
                return None

    def _cut(self, resp: _Head, framing: tuple[str, int], rec: RequestRecord) -> None:
        """Send the head and half of the body, then close both connections.

        Without a body there is nothing to cut, so half of the status line is sent instead
        (a head cut between header lines would look complete to http.client, which takes
        EOF as the end of the headers)."""
        kind, n = framing
        ureader = self.ureader
        assert ureader is not None
        head = _with_connection(resp, close=True)
        status_line = resp.lines[0][: len(resp.lines[0]) // 2]
        if kind == "length" and n > 0:
            self.client.sendall(head)
            _copy_length(ureader, self.client, n // 2, rec._add_out)
        elif kind == "chunked" and (line := ureader.readline()).endswith(b"\n"):
            size = int(line.split(b";", 1)[0].strip() or b"0", 16)
            if size:
                self.client.sendall(head)
                _put(self.client, line, rec._add_out)
                _copy_length(ureader, self.client, size // 2, rec._add_out)
            else:
                self.client.sendall(status_line)
        elif kind == "close":
            # The client cannot tell a cut close-delimited body from a complete one.
            self.client.sendall(head)
            data = ureader.read_some(_BUF)
            _put(self.client, data[: len(data) // 2], rec._add_out)
        else:
            self.client.sendall(status_line)
        self._close_upstream()
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_WR)

    def _send_error(self, kind: str, rec: RequestRecord, *, keep: bool, head_only: bool) -> None:
        status, reason, code, message = _ERRORS[kind]
        request_id = uuid.uuid4().hex[:16].upper()
        body = _error_body(code, message, rec.path, request_id)
        lines = [
            f"HTTP/1.1 {status} {reason}",
            f"Date: {formatdate(usegmt=True)}",
            "Server: s3proxy",
            f"x-amz-request-id: {request_id}",
            f"x-amz-id-2: {uuid.uuid4().hex}",
            "Content-Type: application/xml",
            f"Content-Length: {0 if head_only else len(body)}",
            f"Connection: {'keep-alive' if keep else 'close'}",
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head_only:
            data += body
        rec.status = status
        rec.bytes_out += 0 if head_only else len(body)
        self.client.sendall(data)


def _md5_only_refusal(method: str, query: str, head: _Head) -> str | None:
    """What a store that knows only Content-MD5 says to this request, or None if it takes
    it: PutObject, UploadPart and DeleteObjects need Content-MD5, and flexible checksum
    headers are refused everywhere."""
    if any(k.lower().startswith("x-amz-checksum-") for k, _ in head.headers) or head.get(
        "x-amz-sdk-checksum-algorithm"
    ):
        return "checksum_refused"
    writes = method == "PUT" and head.get("x-amz-copy-source") is None
    deletes = method == "POST" and "delete" in (part.split("=")[0] for part in query.split("&"))
    if (writes or deletes) and head.get("content-md5") is None:
        return "md5_required"
    return None


def _status(head: _Head) -> int:
    parts = head.start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _ProtocolError(f"bad status line {head.start!r}")
    return int(parts[1])


def _response_framing(method: str, status: int, head: _Head) -> tuple[str, int]:
    if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
        return ("length", 0)
    return _body_framing(head) or ("close", 0)


class S3Proxy:
    """Reverse proxy for path-style S3 over plain HTTP/1.1; see the module docstring.

    ``delay`` seconds are added each way: before forwarding a request and before returning
    any answer (also interim ``100 Continue`` answers and injected errors).
    """

    def __init__(
        self,
        upstream: str,
        delay: float = 0.0,
        *,
        port: int = 0,
        host: str = "127.0.0.1",
        seed: int = 0,
        md5_only: bool = False,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be an http:// URL, not {upstream!r}")
        self.upstream = upstream
        self._upstream_addr = (parts.hostname, parts.port or 80)
        self.delay = delay
        self.host = host
        self.port = port
        self.seed = seed
        #: behave as a store that knows only Content-MD5 (older MinIO, appliances)
        self.md5_only = md5_only
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._rules: list[FaultRule] = []
        self._rule_seq = 0
        self._conns: set[_Connection] = set()
        self._conn_seq = 0
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._down = False

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("S3Proxy not started")
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        if self._accept_thread is not None:
            raise RuntimeError("S3Proxy already started")
        self._listener = self._listen(self.port)
        self.port = self._listener.getsockname()[1]
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"s3proxy-accept-{self.port}", daemon=True
        )
        self._accept_thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            listener, self._listener = self._listener, None
            conns = list(self._conns)
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        if self._accept_thread is not None:
            self._accept_thread.join(5)
        for conn in conns:
            conn.kill()
        for conn in conns:
            conn.thread.join(5)

    def __enter__(self) -> S3Proxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _listen(self, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
            sock.listen(512)
        except OSError:
            sock.close()
            raise
        return sock

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                self._stopping.wait(0.05)
                continue
            try:
                readable, _, _ = select.select([listener], [], [], 0.2)
                if not readable:
                    continue
                sock, _ = listener.accept()
            except (OSError, ValueError):
                continue  # listener closed by down(refuse=True)/stop()
            _nodelay(sock)
            self.adopt(sock)

    def adopt(self, sock: socket.socket) -> None:
        """Serve a connected client socket as if the proxy had accepted it.

        For a front end that owns the client's TCP connection and hands the proxy the far
        end of a socket pair (bench/link.py, the benchmark's model of a network link).
        While the proxy is down or stopping, the socket is reset instead.
        """
        with self._lock:
            if self._down or self._stopping.is_set():
                conn = None
            else:
                self._conn_seq += 1
                conn = _Connection(self, sock, self._conn_seq)
                self._conns.add(conn)
        if conn is None:
            _rst_close(sock)
            return
        conn.thread.start()

    def _forget(self, conn: _Connection) -> None:
        with self._lock:
            self._conns.discard(conn)

    # -- "down" -----------------------------------------------------------------------------

    def down(self, *, refuse: bool = False) -> None:
        """Drop every open connection (RST) and reset every new one until :meth:`up`.
        With ``refuse=True`` the listening socket is closed instead, so new connections are
        refused (ECONNREFUSED); :meth:`up` binds the same port again."""
        with self._lock:
            self._down = True
            conns = list(self._conns)
            listener = None
            if refuse:
                listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        for conn in conns:
            conn.kill()

    def up(self) -> None:
        with self._lock:
            self._down = False
            if self._listener is None and not self._stopping.is_set():
                self._listener = self._listen(self.port)

    @property
    def is_down(self) -> bool:
        return self._down

    # -- accounting -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RequestRecord]:
        """Snapshot of the records, in arrival order (listed when the request head is read)."""
        with self._lock:
            return list(self._records)

    @property
    def connections(self) -> int:
        """Number of client connections accepted so far."""
        return self._conn_seq

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self._records.append(rec)

    def count(
        self,
        method: str | None = None,
        path_contains: str | None = None,
        query_contains: str | None = None,
    ) -> int:
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper())
            and (path_contains is None or path_contains in r.path)
            and (query_contains is None or query_contains in r.query)
        )

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until every recorded exchange has finished (``duration`` is final)."""
        deadline = time.monotonic() + timeout
        while any(not r.done for r in self.requests):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def reset_counts(self) -> None:
        with self._lock:
            self._records.clear()

    # -- faults ----------------------------------------------------------------------------------

    def add_fault(
        self,
        kind: str,
        *,
        method: str | None = None,
        path: str | None = None,
        query: str | None = None,
        probability: float = 1.0,
        times: int | None = None,
        after_upstream: bool = False,
        seconds: float = 0.0,
        drop: bool = False,
        seed: int | None = None,
    ) -> FaultRule:
        """Add a rule; rules are tried in order and the first one that fires applies."""
        with self._lock:
            self._rule_seq += 1
            rule = FaultRule(
                kind=kind,
                method=method,
                path=path,
                query=query,
                probability=probability,
                times=times,
                after_upstream=after_upstream,
                seconds=seconds,
                drop=drop,
                seed=self.seed * 1000003 + self._rule_seq if seed is None else seed,
            )
            self._rules.append(rule)
        return rule

    def remove_fault(self, rule: FaultRule) -> None:
        with self._lock:
            rule.active = False
            if rule in self._rules:
                self._rules.remove(rule)

    def clear_faults(self) -> None:
        with self._lock:
            for rule in self._rules:
                rule.active = False
            self._rules.clear()

    @property
    def faults(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def _pick_fault(self, method: str, path: str, query: str) -> FaultRule | None:
        with self._lock:
            for rule in self._rules:
                if rule._try_fire(method, path, query):
                    return rule
        return None


# -- script mode ---------------------------------------------------------------------------------


def _parse_fault(spec: str) -> dict[str, Any]:
    """``kind[,key=value...]``, e.g. ``slowdown,method=PUT,probability=0.1``."""
    kind, *items = spec.split(",")
    out: dict[str, Any] = {"kind": kind.strip()}
    for item in items:
        key, _, value = item.partition("=")
        key = key.strip()
        if key in ("probability", "seconds"):
            out[key] = float(value)
        elif key in ("times", "seed"):
            out[key] = int(value)
        elif key in ("after_upstream", "drop"):
            out[key] = value.strip().lower() in ("1", "true", "yes", "")
        elif key in ("method", "path", "query"):
            out[key] = value
        else:
            raise argparse.ArgumentTypeError(f"unknown fault option {key!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--upstream", required=True, help="http://HOST:PORT of the S3 server")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0, help="0 picks a free port")
    ap.add_argument("--delay-ms", type=float, default=0.0, help="added each way")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--fault",
        action="append",
        default=[],
        type=_parse_fault,
        help="kind[,method=M][,path=REGEX][,query=S][,probability=P][,times=N]"
        "[,after_upstream=1][,seconds=S][,drop=1]; repeatable",
    )
    ap.add_argument("--stats-json", help="write the request records here on exit")
    args = ap.parse_args(argv)

    proxy = S3Proxy(
        args.upstream, delay=args.delay_ms / 1000.0, port=args.port, host=args.host, seed=args.seed
    )
    for fault in args.fault:
        kind = fault.pop("kind")
        proxy.add_fault(kind, **fault)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    proxy.start()
    print(proxy.url, flush=True)
    while not stop.wait(1.0):
        pass
    proxy.stop()
    records = proxy.requests
    by_method: dict[str, int] = {}
    for r in records:
        by_method[r.method] = by_method.get(r.method, 0) + 1
    print(
        f"s3proxy: {len(records)} requests {by_method}, {proxy.connections} connections",
        file=sys.stderr,
    )
    if args.stats_json:
        with open(args.stats_json, "w") as f:
            json.dump([dataclasses.asdict(r) for r in records], f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
