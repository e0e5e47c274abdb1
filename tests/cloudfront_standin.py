"""A CloudFront stand-in for tests: checks canned-policy signed URLs, then serves from S3.

It behaves like a distribution whose origin is an S3 bucket and which requires signed URLs
from one trusted key pair:

* `GET /<path>?...&Expires=E&Signature=S&Key-Pair-Id=K` -> 403 unless K is the configured key
  pair id, E is still in the future, and S is a valid RSA-SHA1 PKCS#1 v1.5 signature over the
  canned policy for the URL the client asked for (`base_url` + path + any remaining query,
  where `base_url` defaults to scheme://Host-header).
* The object key is the URL path, percent-decoded, with the optional origin path prepended.
  `Range: bytes=a-b` gives 206 with Content-Range, no Range gives 200, an unsatisfiable range
  416, a missing key 404.

The signature check deliberately does not import `s3fs_registry`: it rebuilds the policy on its
own, so a bug in the signer under test cannot hide itself here.

Fault switches (`mode`, `wrong_length`, `slow_seconds`) may be flipped while it runs. Every
request is recorded in `requests` as (path, Range header or None, status); status 0 means
the connection was closed without an answer. Query strings (and so signatures) are never
recorded or logged.

Run standalone (prints one JSON line {"url": ..., "cert_pem": ...} when ready, stops on
SIGTERM/SIGINT):

    python tests/cloudfront_standin.py --origin http://127.0.0.1:5000 --bucket b \\
        --public-key key.pem --key-pair-id K2JCJMDEHXQW5F --port 0 [--https]
"""

from __future__ import annotations

import argparse
import base64
import binascii
import collections
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
MODES = frozenset({"ok", "down", "error500", "slow"})
_SIGNING_PARAMS = ("Expires", "Signature", "Key-Pair-Id")
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")
_FROM_AWS_B64 = str.maketrans("-_~", "+=/")


class Denied(Exception):
    """The request fails CloudFront's signed-URL checks (always a 403)."""


def load_public_key(pem: bytes) -> rsa.RSAPublicKey:
    """An RSA public key from a public-key PEM, or from a private-key PEM for convenience."""
    try:
        key: Any = serialization.load_pem_public_key(pem)
    except ValueError:
        key = serialization.load_pem_private_key(pem, password=None).public_key()
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("the stand-in needs an RSA key")
    return key


def policy_for(resource: str, expires: int) -> bytes:
    """The canned policy CloudFront reconstructs for a request (written out independently)."""
    return (
        '{"Statement":[{"Resource":' + json.dumps(resource) + ',"Condition":'
        '{"DateLessThan":{"AWS:EpochTime":' + str(expires) + "}}}]}"
    ).encode()


def make_self_signed_cert(directory: str) -> tuple[str, str]:
    """Write a self-signed cert for 127.0.0.1/localhost (usable as its own CA); return paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudfront-standin")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path = os.path.join(directory, "standin-cert.pem")
    key_path = os.path.join(directory, "standin-key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(first, last) for a single satisfiable range, None to serve all, "416" if unsatisfiable.

    Malformed or multi-range headers are ignored (whole object), as RFC 9110 allows.
    """
    if header is None:
        return None
    m = _RANGE.fullmatch(header.strip())
    if not m or (not m.group(1) and not m.group(2)):
        return None
    if not m.group(1):  # suffix: the last N bytes
        n = int(m.group(2))
        if n == 0 or size == 0:
            return "416"
        return max(0, size - n), size - 1
    first = int(m.group(1))
    if m.group(2) and int(m.group(2)) < first:
        return None  # syntactically invalid
    if first >= size:
        return "416"
    last = int(m.group(2)) if m.group(2) else size - 1
    return first, min(last, size - 1)


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that does the TLS handshake in the request thread, not in accept."""

    daemon_threads = True
    standin: CloudFrontStandIn

    def finish_request(self, request: Any, client_address: Any) -> None:
        ctx = self.standin.ssl_context
        if ctx is not None:
            try:
                request = ctx.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                request.close()
                return
        self.standin._track(request, add=True)
        try:
            super().finish_request(request, client_address)
        finally:
            self.standin._track(request, add=False)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 30
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """The default logs the request line, which carries the signature; log nothing."""

    def do_GET(self) -> None:
        self.server.standin._handle(self)

    def send_body(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.close_connection = True

    def drop(self) -> None:
        """Close the connection without answering, as a dead edge would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)


def _error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
    ).encode()


class CloudFrontStandIn:
    """A signed-URL CloudFront edge in front of an S3 (moto) bucket, on 127.0.0.1."""

    def __init__(
        self,
        *,
        origin_endpoint: str,
        bucket: str,
        public_key_pem: bytes,
        key_pair_id: str,
        origin_path: str = "",
        access_key: str = "testing",
        secret_key: str = "testing",
        region: str = "us-east-1",
        port: int = 0,
        https: bool = False,
        cert_dir: str | None = None,
        base_url: str | None = None,
        clock: Callable[[], float] = time.time,
        slow_seconds: float = 5.0,
    ) -> None:
        self.bucket = bucket
        self.key_pair_id = key_pair_id
        self.origin_path = origin_path.strip("/")
        self.base_url = base_url.rstrip("/") if base_url else None
        self.clock = clock
        self._mode = "ok"
        self.wrong_length = False
        self.slow_seconds = slow_seconds
        self.requests: list[tuple[str, str | None, int]] = []
        self.counts_by_status: collections.Counter[int] = collections.Counter()
        self.cert_pem: str | None = None
        self.ssl_context: ssl.SSLContext | None = None
        self._public_key = load_public_key(public_key_pem)
        self._s3 = boto3.session.Session().client(
            "s3",
            endpoint_url=origin_endpoint,
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )
        self._port = port
        self._https = https
        self._cert_dir = cert_dir
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._connections: set[Any] = set()

    @property
    def mode(self) -> str:
        """One of MODES; may be changed while the stand-in runs."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        if value not in MODES:
            raise ValueError(f"unknown mode {value!r}; expected one of {sorted(MODES)}")
        self._mode = value

    # --- lifecycle ----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL without a trailing slash, e.g. http://127.0.0.1:40123."""
        if self._server is None:
            raise RuntimeError("stand-in not started")
        scheme = "https" if self._https else "http"
        return f"{scheme}://{HOST}:{self._server.server_address[1]}"

    def start(self) -> CloudFrontStandIn:
        if self._https:
            self._setup_tls()
        self._stopping.clear()
        server = _Server((HOST, self._port), _Handler)
        server.standin = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def __enter__(self) -> CloudFrontStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget recorded requests and return to `mode="ok"`, `wrong_length=False`."""
        with self._lock:
            self.requests.clear()
            self.counts_by_status.clear()
        self.mode = "ok"
        self.wrong_length = False

    def _setup_tls(self) -> None:
        directory = self._cert_dir
        if directory is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="cf-standin-")
            directory = self._tmpdir.name
        cert_path, key_path = make_self_signed_cert(directory)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        self.ssl_context = ctx
        self.cert_pem = cert_path

    def _track(self, conn: Any, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    def _record(self, path: str, range_header: str | None, status: int) -> None:
        """Record before answering, so a client that has its answer sees the count."""
        with self._lock:
            self.requests.append((path, range_header, status))
            self.counts_by_status[status] += 1

    # --- request handling ---------------------------------------------------------------------

    def _handle(self, req: _Handler) -> None:
        raw_path, _, raw_query = req.path.partition("?")
        raw_query = raw_query.partition("#")[0]
        range_header = req.headers.get("Range")
        mode = self._mode
        if mode == "down":
            self._record(raw_path, range_header, 0)
            req.drop()
            return
        if mode == "slow" and self._stopping.wait(self.slow_seconds):
            self._record(raw_path, range_header, 0)
            req.drop()
            return
        if mode == "error500":
            self._respond(req, raw_path, range_header, 500, _error_xml("InternalError", "boom"))
            return
        try:
            self._check_signature(req, raw_path, raw_query)
        except Denied as exc:
            self._respond(req, raw_path, range_header, 403, _error_xml("AccessDenied", str(exc)))
            return
        self._serve_object(req, raw_path, range_header)

    def _check_signature(self, req: _Handler, raw_path: str, raw_query: str) -> None:
        """CloudFront's canned-policy checks, in a fixed order; raises Denied."""
        kept: list[str] = []
        params: dict[str, str] = {}
        for part in raw_query.split("&") if raw_query else []:
            name, _, value = part.partition("=")
            if name in _SIGNING_PARAMS:
                params[name] = value
            else:
                kept.append(part)
        missing = [name for name in _SIGNING_PARAMS if name not in params]
        if missing:
            raise Denied(f"Missing {', '.join(missing)} query parameter(s)")
        if params["Key-Pair-Id"] != self.key_pair_id:
            raise Denied("Unknown Key-Pair-Id")
        try:
            expires = int(params["Expires"])
        except ValueError:
            raise Denied("Malformed Expires") from None
        if self.clock() >= expires:
            raise Denied("Request has expired")
        try:
            signature = base64.b64decode(
                params["Signature"].translate(_FROM_AWS_B64), validate=True
            )
        except (binascii.Error, ValueError):
            raise Denied("Malformed Signature") from None
        resource = self._base_for(req) + raw_path + ("?" + "&".join(kept) if kept else "")
        try:
            self._public_key.verify(
                signature, policy_for(resource, expires), padding.PKCS1v15(), hashes.SHA1()
            )
        except InvalidSignature:
            raise Denied("Invalid signature") from None

    def _base_for(self, req: _Handler) -> str:
        """scheme://host[:port] as the client addressed us (or the configured base URL)."""
        if self.base_url is not None:
            return self.base_url
        scheme = "https" if self._https else "http"
        return f"{scheme}://{req.headers.get('Host', '')}"

    def _object_key(self, raw_path: str) -> str:
        key = urllib.parse.unquote(raw_path.lstrip("/"))
        return f"{self.origin_path}/{key}" if self.origin_path else key

    def _serve_object(self, req: _Handler, raw_path: str, range_header: str | None) -> None:
        key = self._object_key(raw_path)
        try:
            head = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            status = 404 if code in ("404", "NoSuchKey", "NotFound") else 502
            self._respond(req, raw_path, range_header, status, _error_xml(code, "origin error"))
            return
        size = int(head["ContentLength"])
        span = parse_range(range_header, size)
        if span == "416":
            headers = {"Content-Range": f"bytes */{size}"}
            body = _error_xml("InvalidRange", "The requested range is not satisfiable")
            self._respond(req, raw_path, range_header, 416, body, headers)
            return
        headers = {
            "Content-Type": head.get("ContentType", "application/octet-stream"),
            "ETag": head.get("ETag", ""),
            "Accept-Ranges": "bytes",
            "X-Cache": "Miss from cloudfront",
        }
        if isinstance(span, tuple):
            first, last = span
            obj = self._s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={first}-{last}")
            headers["Content-Range"] = f"bytes {first}-{last}/{size}"
            status = 206
        else:
            obj = self._s3.get_object(Bucket=self.bucket, Key=key)
            status = 200
        body = obj["Body"].read()
        if self.wrong_length:
            # Well-framed HTTP whose length disagrees with the range: only a client that
            # checks what it got against what it asked for notices.
            body = body[:-1] if body else b"\0"
        self._respond(req, raw_path, range_header, status, body, headers)

    def _respond(
        self,
        req: _Handler,
        raw_path: str,
        range_header: str | None,
        status: int,
        body: bytes,
        headers: dict[str, str] | None = None,
    ) -> None:
        self._record(raw_path, range_header, status)
        if status >= 400:
            headers = {**(headers or {}), "Content-Type": "application/xml"}
        req.send_body(status, body, headers)


# --- command line --------------------------------------------------------------------------------


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="CloudFront signed-URL stand-in for tests")
    p.add_argument("--origin", required=True, help="S3 endpoint URL, e.g. http://127.0.0.1:5000")
    p.add_argument("--bucket", required=True)
    p.add_argument("--origin-path", default="", help="prefix prepended to the request path")
    p.add_argument("--public-key", required=True, help="PEM file (public or private RSA key)")
    p.add_argument("--key-pair-id", required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--https", action="store_true")
    p.add_argument("--cert-dir", default=None, help="where to write the self-signed cert")
    p.add_argument("--base-url", default=None, help="URL base assumed when rebuilding policies")
    p.add_argument("--access-key", default=os.environ.get("AWS_ACCESS_KEY_ID", "testing"))
    p.add_argument("--secret-key", default=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))
    p.add_argument("--region", default="us-east-1")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    with open(args.public_key, "rb") as f:
        pem = f.read()
    standin = CloudFrontStandIn(
        origin_endpoint=args.origin,
        bucket=args.bucket,
        public_key_pem=pem,
        key_pair_id=args.key_pair_id,
        origin_path=args.origin_path,
        access_key=args.access_key,
        secret_key=args.secret_key,
        region=args.region,
        port=args.port,
        https=args.https,
        cert_dir=args.cert_dir,
        base_url=args.base_url,
    )
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    with standin:
        print(json.dumps({"url": standin.url, "cert_pem": standin.cert_pem}), flush=True)
        done.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
