"""CloudFrontFetcher against the CloudFront stand-in in front of a moto S3 origin.

The stand-in checks signatures on its own (it does not import the signer), so a fetch that
returns bytes proves the URL, the signature and the range handling together. Each failure the
daemon must survive (refused or expired signature, 5xx, a dead or slow edge, a short body, an
untrusted certificate) is provoked for real and must come back as a CloudFrontError with the
right cause, counted, logged once, and never with a signature in a log record or a message.
"""

from __future__ import annotations

import logging
import random
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from urllib3.exceptions import (
    ConnectTimeoutError,
    IncompleteRead,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from s3fs_registry.cloudfront import (
    CAUSES,
    CloudFrontError,
    CloudFrontFetcher,
    UrlSigner,
    check_response,
    classify_error,
    normalize_baseurl,
)
from s3fs_registry.config import CloudFrontConfig, parse_config
from tests.cloudfront_standin import CloudFrontStandIn
from tests.mounts import S3Server, free_port

KEY_PATH = Path(__file__).parent / "data" / "cloudfront_test_key.pem"
KEY_PEM = KEY_PATH.read_bytes()
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
PREFIX = "reg/"
BLOB = "reg/docker/registry/v2/blobs/sha256/ab/abcd/data"
EMPTY = "reg/docker/registry/v2/blobs/sha256/e3/e3b0/data"
MISSING = "reg/docker/registry/v2/blobs/sha256/00/0000/data"
MiB = 1 << 20
DATA = random.Random(1).randbytes(3 * MiB)
SIZE = len(DATA)
SIGNATURE = re.compile(r"Signature=([^&\s]+)")

Factory = Callable[..., CloudFrontFetcher]


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bucket(moto: S3Server) -> str:
    name = moto.new_bucket("cf")
    moto.put(name, BLOB, DATA)
    moto.put(name, EMPTY, b"")
    return name


def _standin(moto: S3Server, bucket: str, **kwargs: Any) -> CloudFrontStandIn:
    return CloudFrontStandIn(
        origin_endpoint=moto.endpoint,
        bucket=bucket,
        public_key_pem=KEY_PEM,
        key_pair_id=KEY_PAIR_ID,
        access_key=moto.access_key,
        secret_key=moto.secret_key,
        **kwargs,
    )


@pytest.fixture(scope="module")
def shared_standin(moto: S3Server, bucket: str) -> Iterator[CloudFrontStandIn]:
    with _standin(moto, bucket, slow_seconds=3.0) as standin:
        yield standin


@pytest.fixture
def standin(shared_standin: CloudFrontStandIn) -> CloudFrontStandIn:
    shared_standin.reset()
    return shared_standin


def _config(baseurl: str, **kwargs: Any) -> CloudFrontConfig:
    options: dict[str, Any] = {"privatekey": str(KEY_PATH), "keypairid": KEY_PAIR_ID}
    options.update(kwargs)
    return CloudFrontConfig(baseurl=baseurl, **options)


@pytest.fixture
def make_fetcher() -> Iterator[Factory]:
    """Builds fetchers (config fields and fetcher options as keywords); closes them after."""
    made: list[CloudFrontFetcher] = []
    fetcher_options = {"max_connections", "connect_timeout", "read_timeout", "clock"}

    def make(baseurl: str, *, key_prefix: str = PREFIX, **kwargs: Any) -> CloudFrontFetcher:
        options = {k: v for k, v in kwargs.items() if k in fetcher_options}
        config = _config(baseurl, **{k: v for k, v in kwargs.items() if k not in options})
        fetcher = CloudFrontFetcher(config, key_prefix, **options)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


async def _failure(fetcher: CloudFrontFetcher, key: str = BLOB) -> CloudFrontError:
    with pytest.raises(CloudFrontError) as info:
        await fetcher.fetch(key, 0, 99)
    return info.value


def _signatures(fetcher: CloudFrontFetcher, *keys: str) -> list[str]:
    signatures = []
    for key in keys:
        match = SIGNATURE.search(fetcher.signed_url(key))
        assert match is not None
        signatures.append(match[1])
    return signatures


# --- good reads ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "last"),
    [
        (0, MiB - 1),
        (MiB, 2 * MiB - 1),
        (SIZE - 100, SIZE - 1),  # the last, partial range
        (SIZE - 10, SIZE + MiB),  # a range running past the end
        (0, SIZE - 1),
        (12345, 12345),
        (SIZE, SIZE + 99),  # starting at the end: 416, which is a fine answer (no bytes)
    ],
)
async def test_ranged_fetch_returns_exact_bytes_and_size(
    standin: CloudFrontStandIn, make_fetcher: Factory, first: int, last: int
) -> None:
    fetcher = make_fetcher(standin.url)
    want = DATA[first : last + 1]
    assert await fetcher.fetch(BLOB, first, last) == (want, SIZE)
    assert fetcher.stats["requests"] == 1
    assert fetcher.stats["bytes"] == len(want)
    assert all(fetcher.stats[cause] == 0 for cause in CAUSES)
    assert standin.requests[-1][:2] == (f"/{BLOB}", f"bytes={first}-{last}")


async def test_empty_blob(standin: CloudFrontStandIn, make_fetcher: Factory) -> None:
    assert await make_fetcher(standin.url).fetch(EMPTY, 0, 1023) == (b"", 0)


async def test_concurrent_fetches_through_a_small_pool(
    standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    fetcher = make_fetcher(standin.url, max_connections=4)
    chunk = 128 * 1024
    got: dict[int, bytes] = {}

    async def one(index: int) -> None:
        data, total = await fetcher.fetch(BLOB, index * chunk, (index + 1) * chunk - 1)
        assert total == SIZE
        got[index] = data

    async with trio.open_nursery() as nursery:
        for index in range(SIZE // chunk):
            nursery.start_soon(one, index)
    assert b"".join(got[i] for i in sorted(got)) == DATA
    assert fetcher.stats["requests"] == SIZE // chunk


# --- URLs ----------------------------------------------------------------------------------------


def test_resource_url_is_baseurl_plus_full_key(make_fetcher: Factory) -> None:
    fetcher = make_fetcher("https://d111.cloudfront.net/")
    assert fetcher.resource_url(BLOB) == f"https://d111.cloudfront.net/{BLOB}"


def test_baseurl_from_the_registry_configuration() -> None:
    """`https://` and the trailing slash are added, as the registry's middleware does."""
    config = parse_config(
        {
            "storage": {"s3": {"bucket": "b", "region": "us-east-1", "rootdirectory": "/reg"}},
            "middleware": {
                "storage": [
                    {
                        "name": "cloudfront",
                        "options": {
                            "baseurl": "d111.cloudfront.net/edge",
                            "privatekey": str(KEY_PATH),
                            "keypairid": KEY_PAIR_ID,
                        },
                    }
                ]
            },
        },
        {},
    )
    assert config.cloudfront is not None
    fetcher = CloudFrontFetcher(config.cloudfront, config.s3.key_prefix())
    try:
        assert fetcher.resource_url(BLOB) == f"https://d111.cloudfront.net/edge/{BLOB}"
    finally:
        fetcher.close()


def test_hand_built_config_baseurl_is_normalized(make_fetcher: Factory) -> None:
    assert normalize_baseurl("d111.cloudfront.net") == "https://d111.cloudfront.net/"
    assert normalize_baseurl("http://x/") == "http://x/"
    fetcher = make_fetcher("d111.cloudfront.net")
    assert fetcher.resource_url(BLOB) == f"https://d111.cloudfront.net/{BLOB}"


async def test_unusual_root_directory_is_percent_encoded(
    moto: S3Server, bucket: str, standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    prefix = "my root+é/"
    key = prefix + "docker/registry/v2/blobs/sha256/ab/abcd/data"
    moto.put(bucket, key, DATA[:1000])
    fetcher = make_fetcher(standin.url, key_prefix=prefix)
    assert fetcher.resource_url(key) == (
        f"{standin.url}/my%20root%2B%C3%A9/docker/registry/v2/blobs/sha256/ab/abcd/data"
    )
    assert fetcher.signed_url(key).isascii()
    assert await fetcher.fetch(key, 990, 2000) == (DATA[990:1000], 1000)


async def test_rootrelative_with_origin_path(
    moto: S3Server, bucket: str, make_fetcher: Factory
) -> None:
    with _standin(moto, bucket, origin_path="/reg") as edge:
        relative = make_fetcher(edge.url, rootrelative=True)
        assert (
            relative.resource_url(BLOB)
            == f"{edge.url}/docker/registry/v2/blobs/sha256/ab/abcd/data"
        )
        assert await relative.fetch(BLOB, 100, 199) == (DATA[100:200], SIZE)
        assert edge.requests == [
            ("/docker/registry/v2/blobs/sha256/ab/abcd/data", "bytes=100-199", 206)
        ]
        # The registry's URL (full key) on this distribution would look for reg/reg/...
        assert (await _failure(make_fetcher(edge.url))).cause == "not-found"
    with pytest.raises(ValueError):
        relative.resource_url("elsewhere/docker/registry/v2/blobs/sha256/ab/abcd/data")


async def test_only_immutable_blob_data_is_fetched(
    standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    fetcher = make_fetcher(standin.url)
    for key in (
        "reg/docker/registry/v2/repositories/lib/_manifests/tags/latest/current/link",
        "reg/docker/registry/v2/repositories/lib/_uploads/u1/data",
        "other/docker/registry/v2/blobs/sha256/ab/abcd/data",
        "docker/registry/v2/blobs/sha256/ab/abcd/data",
    ):
        assert not fetcher.serves(key)
        with pytest.raises(ValueError):
            await fetcher.fetch(key, 0, 9)
    with pytest.raises(ValueError):
        await fetcher.fetch(BLOB, 10, 9)
    with pytest.raises(ValueError):
        await fetcher.fetch(BLOB, -1, 9)
    assert fetcher.stats["requests"] == 0
    assert standin.requests == []


# --- signed URL reuse ----------------------------------------------------------------------------


async def test_signed_urls_are_reused_then_renewed_at_half_life(
    standin: CloudFrontStandIn, make_fetcher: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed: list[int] = []
    real_sign = UrlSigner.sign

    def counting_sign(self: UrlSigner, url: str, expires_epoch: int) -> str:
        signed.append(expires_epoch)
        return real_sign(self, url, expires_epoch)

    monkeypatch.setattr(UrlSigner, "sign", counting_sign)
    now = [time.time()]
    fetcher = make_fetcher(standin.url, duration=600.0, clock=lambda: now[0])
    first_url = fetcher.signed_url(BLOB)
    for offset in range(3):
        assert (await fetcher.fetch(BLOB, offset, offset))[0] == DATA[offset : offset + 1]
    now[0] += 299
    assert fetcher.signed_url(BLOB) == first_url
    assert len(signed) == 1
    now[0] += 2  # past half of the 600 s lifetime
    renewed = fetcher.signed_url(BLOB)
    assert renewed != first_url
    assert len(signed) == 2
    assert signed[1] == signed[0] + 301
    assert await fetcher.fetch(BLOB, 0, 9) == (DATA[:10], SIZE)
    assert len(signed) == 2


# --- failures: each maps to its cause ------------------------------------------------------------


async def test_expired_signature_is_forbidden(
    standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    fetcher = make_fetcher(standin.url, duration=60.0, clock=lambda: time.time() - 3600)
    error = await _failure(fetcher)
    assert (error.cause, error.status) == ("forbidden", 403)
    assert "Request has expired" in str(error)
    assert fetcher.stats["forbidden"] == 1


async def test_wrong_key_pair_id_is_forbidden(
    standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    error = await _failure(make_fetcher(standin.url, keypairid="KWRONGKEYPAIR"))
    assert error.cause == "forbidden"
    assert "Unknown Key-Pair-Id" in str(error)


async def test_signature_by_another_key_is_forbidden(
    standin: CloudFrontStandIn, make_fetcher: Factory, tmp_path: Path
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path = tmp_path / "other.pem"
    path.write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    error = await _failure(make_fetcher(standin.url, privatekey=str(path)))
    assert error.cause == "forbidden"
    assert "Invalid signature" in str(error)


async def test_missing_object_is_not_found(
    standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    fetcher = make_fetcher(standin.url)
    assert (await _failure(fetcher, MISSING)).cause == "not-found"
    assert fetcher.stats["not-found"] == 1


async def test_error500_is_server_error(standin: CloudFrontStandIn, make_fetcher: Factory) -> None:
    standin.mode = "error500"
    fetcher = make_fetcher(standin.url)
    error = await _failure(fetcher)
    assert (error.cause, error.status) == ("server-error", 500)
    standin.mode = "ok"
    assert await fetcher.fetch(BLOB, 0, 0) == (DATA[:1], SIZE)
    assert fetcher.stats["server-error"] == 1


async def test_edge_that_drops_the_connection(
    standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    standin.mode = "down"
    error = await _failure(make_fetcher(standin.url))
    assert (error.cause, error.status) == ("connection", 0)


async def test_nothing_listening(make_fetcher: Factory) -> None:
    fetcher = make_fetcher(f"http://127.0.0.1:{free_port()}/")
    assert (await _failure(fetcher)).cause == "connection"
    assert fetcher.stats["connection"] == 1


async def test_slow_edge_times_out(standin: CloudFrontStandIn, make_fetcher: Factory) -> None:
    standin.mode = "slow"
    fetcher = make_fetcher(standin.url, read_timeout=0.3)
    started = time.monotonic()
    assert (await _failure(fetcher)).cause == "timeout"
    assert time.monotonic() - started < standin.slow_seconds
    assert fetcher.stats["timeout"] == 1


async def test_wrong_length_is_bad_response(
    standin: CloudFrontStandIn, make_fetcher: Factory
) -> None:
    standin.wrong_length = True
    fetcher = make_fetcher(standin.url)
    error = await _failure(fetcher)
    assert (error.cause, error.status) == ("bad-response", 206)
    assert "99 bytes for Content-Range bytes 0-99/" in str(error)
    assert fetcher.stats["bytes"] == 0


async def test_body_cut_short_is_bad_response(make_fetcher: Factory) -> None:
    """An edge that promises 100 bytes and hangs up after 50: a short body, never returned."""
    head = b"HTTP/1.1 206 Partial Content\r\nContent-Length: 100\r\n"
    head += f"Content-Range: bytes 0-99/{SIZE}\r\n\r\n".encode()
    with socket.create_server(("127.0.0.1", 0)) as server:

        def answer_once() -> None:
            conn, _ = server.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(head + DATA[:50])

        thread = threading.Thread(target=answer_once, daemon=True)
        thread.start()
        fetcher = make_fetcher(f"http://127.0.0.1:{server.getsockname()[1]}")
        error = await _failure(fetcher)
        thread.join(timeout=5)
    assert error.cause == "bad-response"
    assert "IncompleteRead" in str(error)
    assert fetcher.stats["bytes"] == 0


async def test_https_needs_the_ca_bundle(
    moto: S3Server, bucket: str, make_fetcher: Factory
) -> None:
    with _standin(moto, bucket, https=True) as edge:
        assert edge.cert_pem is not None
        trusted = make_fetcher(edge.url, cabundle=edge.cert_pem)
        assert await trusted.fetch(BLOB, 0, 9) == (DATA[:10], SIZE)
        error = await _failure(make_fetcher(edge.url))  # system store: self-signed is unknown
        assert error.cause == "connection"
        assert "CERTIFICATE_VERIFY_FAILED" in str(error)
        assert edge.requests == [(f"/{BLOB}", "bytes=0-9", 206)]


# --- logging and secrecy -------------------------------------------------------------------------


async def test_failures_logged_once_per_cause_and_counted(
    standin: CloudFrontStandIn, make_fetcher: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fetcher = make_fetcher(standin.url)
    for _ in range(3):
        await _failure(fetcher, MISSING)
    standin.mode = "error500"
    for _ in range(2):
        await _failure(fetcher)
    standin.mode = "ok"
    await fetcher.fetch(BLOB, 0, 9)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "HTTP 404" in warnings[0].getMessage()
    assert "HTTP 500" in warnings[1].getMessage()
    assert fetcher.stats == {
        "requests": 6,
        "bytes": 10,
        **dict.fromkeys(CAUSES, 0),
        "not-found": 3,
        "server-error": 2,
    }


async def test_no_signature_in_logs_or_errors(
    standin: CloudFrontStandIn, make_fetcher: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # urllib3 included: it logs request URLs at DEBUG
    fetcher = make_fetcher(standin.url)
    refused = make_fetcher(standin.url, keypairid="KWRONGKEYPAIR")
    texts: list[str] = []
    await fetcher.fetch(BLOB, 0, 9)
    texts.append(str(await _failure(refused)))
    texts.append(str(await _failure(fetcher, MISSING)))
    standin.mode = "error500"
    texts.append(str(await _failure(fetcher)))
    standin.mode = "ok"
    standin.wrong_length = True
    texts.append(str(await _failure(fetcher)))
    standin.mode = "down"
    texts.append(str(await _failure(fetcher)))

    signatures = _signatures(fetcher, BLOB, MISSING) + _signatures(refused, BLOB)
    records = [r.getMessage() for r in caplog.records]
    records += [caplog.text]
    assert any("urllib3" in r.name for r in caplog.records)  # the URLs were logged...
    assert any("Signature=REDACTED" in text for text in records)  # ...redacted
    for signature in signatures:
        assert len(signature) > 300
        for text in records + texts:
            assert signature not in text
    assert all("Signature=REDACTED" in text for text in texts)


# --- response checks and error classification ----------------------------------------------------


def _headers(body: bytes, **extra: str) -> dict[str, str]:
    return {"Content-Length": str(len(body)), **{k.replace("_", "-"): v for k, v in extra.items()}}


@pytest.mark.parametrize(
    ("status", "headers", "body", "first", "last", "want"),
    [
        (206, _headers(b"cd", Content_Range="bytes 2-3/10"), b"cd", 2, 3, (b"cd", 10)),
        (206, _headers(b"ij", Content_Range="bytes 8-9/10"), b"ij", 8, 20, (b"ij", 10)),
        # a server that ignores Range: the whole object is fine from byte 0, trimmed
        (200, _headers(b"abcdef"), b"abcdef", 0, 2, (b"abc", 6)),
        (200, _headers(b"abc"), b"abc", 0, 9, (b"abc", 3)),
        (416, {"Content-Range": "bytes */10"}, b"", 10, 19, (b"", 10)),
    ],
)
def test_check_response_accepts(
    status: int,
    headers: dict[str, str],
    body: bytes,
    first: int,
    last: int,
    want: tuple[bytes, int],
) -> None:
    assert check_response(status, headers, body, first, last) == want


@pytest.mark.parametrize(
    ("status", "headers", "body", "first", "last", "cause"),
    [
        (403, {}, b"<Error><Message>Access denied</Message></Error>", 0, 9, "forbidden"),
        (404, {}, b"", 0, 9, "not-found"),
        (503, {}, b"", 0, 9, "server-error"),
        (502, {}, b"", 0, 9, "server-error"),
        (302, {"Location": "http://x/"}, b"", 0, 9, "bad-response"),
        (400, {}, b"", 0, 9, "bad-response"),
        (200, _headers(b"abcdef"), b"abcdef", 1, 2, "bad-response"),  # whole object, not 0
        (200, {}, b"abc", 0, 2, "bad-response"),  # no Content-Length
        (206, _headers(b"cd"), b"cd", 2, 3, "bad-response"),  # no Content-Range
        (206, _headers(b"cd", Content_Range="bytes 2-3/*"), b"cd", 2, 3, "bad-response"),
        (206, _headers(b"bc", Content_Range="bytes 1-2/10"), b"bc", 2, 3, "bad-response"),
        (206, _headers(b"cde", Content_Range="bytes 2-4/10"), b"cde", 2, 3, "bad-response"),
        (206, _headers(b"cd", Content_Range="bytes 2-3/10"), b"cd", 2, 5, "bad-response"),
        (206, _headers(b"cd", Content_Range="bytes 2-3/3"), b"cd", 2, 3, "bad-response"),
        (206, _headers(b"c", Content_Range="bytes 2-3/10"), b"c", 2, 3, "bad-response"),
        (206, {"Content-Length": "2", "Content-Range": "bytes 2-3/10"}, b"c", 2, 3, "bad-response"),
        (
            206,
            _headers(b"cd", Content_Range="bytes 2-3/10", Content_Encoding="gzip"),
            b"cd",
            2,
            3,
            "bad-response",
        ),
        (416, {"Content-Range": "bytes */10"}, b"", 5, 9, "bad-response"),
        (416, {}, b"", 10, 19, "bad-response"),
    ],
)
def test_check_response_refuses(
    status: int, headers: dict[str, str], body: bytes, first: int, last: int, cause: str
) -> None:
    with pytest.raises(CloudFrontError) as info:
        check_response(status, headers, body, first, last)
    assert info.value.cause == cause


def test_error_message_text_is_kept_only_when_plain() -> None:
    body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    with pytest.raises(CloudFrontError, match=r"HTTP 403 \(Request has expired\)"):
        check_response(403, {}, body, 0, 9)
    with pytest.raises(CloudFrontError) as info:
        check_response(403, {}, b"<Message>see https://x/?Signature=abc&y</Message>", 0, 9)
    assert str(info.value) == "HTTP 403"


def test_classify_error() -> None:
    pool: Any = None
    assert classify_error(NewConnectionError(pool, "refused")) == "connection"
    assert classify_error(ConnectTimeoutError("connect timed out")) == "timeout"
    assert classify_error(ReadTimeoutError(pool, "/x", "read timed out")) == "timeout"
    assert classify_error(TimeoutError()) == "timeout"
    short = ProtocolError("Connection broken", IncompleteRead(5, 10))
    assert classify_error(short) == "bad-response"
    reset = ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
    assert classify_error(reset) == "connection"
    assert classify_error(ProtocolError("aborted", TimeoutError())) == "timeout"
    assert classify_error(SSLError(ssl.SSLCertVerificationError("bad cert"))) == "connection"
    assert classify_error(ConnectionRefusedError()) == "connection"


def test_error_causes_are_checked() -> None:
    with pytest.raises(ValueError):
        CloudFrontError("sideways", "no such cause")
    assert CloudFrontError("timeout", "m", 0).cause == "timeout"
