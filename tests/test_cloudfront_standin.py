"""The CloudFront stand-in against a real (moto) S3 origin, driven with urllib.

These pin the stand-in's behaviour so that later client tests can trust a 403 or a short body
to mean what it says.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

from s3fs_registry.cloudfront import UrlSigner
from tests.cloudfront_standin import CloudFrontStandIn, parse_range

KEY_PEM = (Path(__file__).parent / "data" / "cloudfront_test_key.pem").read_bytes()
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
BUCKET = "cf-origin"
BLOB_KEY = (
    "prefix/docker/registry/v2/blobs/sha256/4f/"
    "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945/data"
)
DATA = bytes(range(256)) * 4 + b"tail"  # 1028 bytes
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def moto_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with NO_PROXY.open(endpoint + "/", timeout=1):
                    break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto did not start: {log_path.read_text()}") from None
                time.sleep(0.1)
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def origin(moto_endpoint: str) -> str:
    s3 = boto3.session.Session().client(
        "s3",
        endpoint_url=moto_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}),
    )
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=BLOB_KEY, Body=DATA)
    s3.put_object(Bucket=BUCKET, Key="prefix/empty", Body=b"")
    return moto_endpoint


@pytest.fixture
def standin(origin: str) -> Iterator[CloudFrontStandIn]:
    with CloudFrontStandIn(
        origin_endpoint=origin,
        bucket=BUCKET,
        public_key_pem=KEY_PEM,
        key_pair_id=KEY_PAIR_ID,
        slow_seconds=2.0,
    ) as s:
        yield s


@pytest.fixture(scope="module")
def signer() -> UrlSigner:
    return UrlSigner(KEY_PAIR_ID, KEY_PEM)


def _signed(signer: UrlSigner, url: str, ttl: int = 600) -> str:
    return signer.sign(url, int(time.time()) + ttl)


def _get(
    url: str,
    range_: str | None = None,
    timeout: float = 10,
    context: ssl.SSLContext | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) without raising on HTTP error statuses."""
    req = urllib.request.Request(url, headers={"Range": range_} if range_ else {})
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


# --- good requests -----------------------------------------------------------------------------


def test_signed_url_serves_whole_object(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    status, headers, body = _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"))
    assert (status, body) == (200, DATA)
    assert headers["Content-Length"] == str(len(DATA))
    assert standin.requests == [(f"/{BLOB_KEY}", None, 200)]
    assert standin.counts_by_status == {200: 1}


@pytest.mark.parametrize(
    ("range_", "first", "last"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=0-0", 0, 0),
        ("bytes=1000-", 1000, 1027),
        ("bytes=-4", 1024, 1027),
        ("bytes=1020-5000", 1020, 1027),
    ],
)
def test_ranges_give_206(
    standin: CloudFrontStandIn, signer: UrlSigner, range_: str, first: int, last: int
) -> None:
    status, headers, body = _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"), range_)
    assert status == 206
    assert body == DATA[first : last + 1]
    assert headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert standin.requests == [(f"/{BLOB_KEY}", range_, 206)]


@pytest.mark.parametrize("range_", ["bytes=1028-", "bytes=5000-6000", "bytes=-0"])
def test_unsatisfiable_range_gives_416(
    standin: CloudFrontStandIn, signer: UrlSigner, range_: str
) -> None:
    status, headers, _ = _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"), range_)
    assert status == 416
    assert headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_missing_key_gives_404(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    status, _, _ = _get(_signed(signer, f"{standin.url}/prefix/nope/data"))
    assert status == 404
    assert standin.counts_by_status == {404: 1}


def test_empty_object(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    url = _signed(signer, f"{standin.url}/prefix/empty")
    assert _get(url)[::2] == (200, b"")
    assert _get(url, "bytes=0-")[0] == 416


def test_url_with_own_query_string_is_verified_with_it(
    standin: CloudFrontStandIn, signer: UrlSigner
) -> None:
    url = _signed(signer, f"{standin.url}/{BLOB_KEY}?x-id=GetObject&v=2")
    assert _get(url, "bytes=0-3")[::2] == (206, DATA[:4])
    # The same signature on the URL without that query is for a different resource.
    tampered = url.replace("x-id=GetObject&v=2&", "")
    assert _get(tampered)[0] == 403


def test_origin_path_is_prepended(origin: str, signer: UrlSigner) -> None:
    with CloudFrontStandIn(
        origin_endpoint=origin,
        bucket=BUCKET,
        public_key_pem=KEY_PEM,
        key_pair_id=KEY_PAIR_ID,
        origin_path="/prefix",
    ) as s:
        path = BLOB_KEY.removeprefix("prefix/")
        assert _get(_signed(signer, f"{s.url}/{path}"), "bytes=4-7")[::2] == (206, DATA[4:8])


def test_parse_range_edges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=0-9", 10) == (0, 9)
    assert parse_range("bytes=5-2", 10) is None  # invalid: ignored, whole object
    assert parse_range("bytes=0-1,4-5", 10) is None  # multi-range: ignored
    assert parse_range("items=0-1", 10) is None
    assert parse_range("bytes=-20", 10) == (0, 9)
    assert parse_range("bytes=10-", 10) == "416"


# --- refusals ----------------------------------------------------------------------------------


def test_expired_url_is_403(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    url = signer.sign(f"{standin.url}/{BLOB_KEY}", int(time.time()) - 5)
    status, _, body = _get(url)
    assert status == 403
    assert b"expired" in body
    assert standin.counts_by_status == {403: 1}


def test_expiry_is_checked_against_the_injected_clock(origin: str, signer: UrlSigner) -> None:
    now = [2_000_000_000.0]
    with CloudFrontStandIn(
        origin_endpoint=origin,
        bucket=BUCKET,
        public_key_pem=KEY_PEM,
        key_pair_id=KEY_PAIR_ID,
        clock=lambda: now[0],
    ) as s:
        url = signer.sign(f"{s.url}/{BLOB_KEY}", 2_000_000_010)
        assert _get(url)[0] == 200
        now[0] = 2_000_000_010.0  # DateLessThan: the expiry second itself is too late
        assert _get(url)[0] == 403


def test_wrong_key_pair_id_is_403(standin: CloudFrontStandIn) -> None:
    other = UrlSigner("KOTHERKEYPAIR", KEY_PEM)
    assert _get(_signed(other, f"{standin.url}/{BLOB_KEY}"))[0] == 403


def test_forged_signature_is_403(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    url = _signed(signer, f"{standin.url}/{BLOB_KEY}")
    head, sig_and_rest = url.split("&Signature=")
    sig, rest = sig_and_rest.split("&", 1)
    flipped = ("A" if sig[10] != "A" else "B").join((sig[:10], sig[11:]))
    assert _get(f"{head}&Signature={flipped}&{rest}")[0] == 403
    assert _get(f"{head}&Signature=not*base64&{rest}")[0] == 403
    assert standin.counts_by_status == {403: 2}


def test_signature_for_another_path_or_expiry_is_403(
    standin: CloudFrontStandIn, signer: UrlSigner
) -> None:
    expires = int(time.time()) + 600
    other = signer.sign(f"{standin.url}/prefix/other/data", expires)
    stolen_sig = other.split("&Signature=")[1]
    assert _get(f"{standin.url}/{BLOB_KEY}?Expires={expires}&Signature={stolen_sig}")[0] == 403
    longer = signer.sign(f"{standin.url}/{BLOB_KEY}", expires).replace(
        f"Expires={expires}", f"Expires={expires + 3600}"
    )
    assert _get(longer)[0] == 403


def test_signature_for_another_host_is_403(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    url = _signed(signer, f"http://localhost:1/{BLOB_KEY}")
    assert _get(standin.url + url.removeprefix("http://localhost:1"))[0] == 403


def test_unsigned_or_partly_signed_is_403(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    assert _get(f"{standin.url}/{BLOB_KEY}")[0] == 403
    url = _signed(signer, f"{standin.url}/{BLOB_KEY}")
    assert _get(url.split("&Key-Pair-Id=")[0])[0] == 403


def test_configured_base_url_is_used_for_the_policy(origin: str, signer: UrlSigner) -> None:
    with CloudFrontStandIn(
        origin_endpoint=origin,
        bucket=BUCKET,
        public_key_pem=KEY_PEM,
        key_pair_id=KEY_PAIR_ID,
        base_url="https://d111111abcdef8.cloudfront.net/",
    ) as s:
        cf_url = _signed(signer, f"https://d111111abcdef8.cloudfront.net/{BLOB_KEY}")
        local = s.url + cf_url.removeprefix("https://d111111abcdef8.cloudfront.net")
        assert _get(local)[::2] == (200, DATA)
        assert _get(_signed(signer, f"{s.url}/{BLOB_KEY}"))[0] == 403


# --- fault switches ----------------------------------------------------------------------------


def test_error500_mode(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    standin.mode = "error500"
    assert _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"))[0] == 500
    standin.mode = "ok"
    assert _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"))[0] == 200
    assert standin.counts_by_status == {500: 1, 200: 1}


def test_down_mode_closes_without_answer(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    standin.mode = "down"
    with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
        _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"))
    assert standin.requests == [(f"/{BLOB_KEY}", None, 0)]


def test_slow_mode_outlasts_client_timeout(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    standin.mode = "slow"
    started = time.monotonic()
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"), timeout=0.3)
    assert time.monotonic() - started < standin.slow_seconds


def test_wrong_length_sends_a_short_but_well_framed_body(
    standin: CloudFrontStandIn, signer: UrlSigner
) -> None:
    standin.wrong_length = True
    status, headers, body = _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"), "bytes=0-99")
    assert status == 206
    assert headers["Content-Range"] == f"bytes 0-99/{len(DATA)}"
    assert body == DATA[:99]
    assert headers["Content-Length"] == "99"


def test_unknown_mode_is_refused(standin: CloudFrontStandIn) -> None:
    with pytest.raises(ValueError):
        standin.mode = "sideways"


def test_reset_clears_counts_and_faults(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    standin.mode = "error500"
    standin.wrong_length = True
    _get(_signed(signer, f"{standin.url}/{BLOB_KEY}"))
    standin.reset()
    assert (standin.mode, standin.wrong_length, standin.requests) == ("ok", False, [])
    assert not standin.counts_by_status


def test_requests_record_no_signatures(standin: CloudFrontStandIn, signer: UrlSigner) -> None:
    _get(_signed(signer, f"{standin.url}/{BLOB_KEY}?a=1"))
    assert all("Signature" not in path for path, _, _ in standin.requests)


# --- HTTPS and the command line ------------------------------------------------------------------


def test_https_with_self_signed_cert_as_ca(origin: str, signer: UrlSigner) -> None:
    with CloudFrontStandIn(
        origin_endpoint=origin,
        bucket=BUCKET,
        public_key_pem=KEY_PEM,
        key_pair_id=KEY_PAIR_ID,
        https=True,
    ) as s:
        assert s.url.startswith("https://127.0.0.1:")
        assert s.cert_pem is not None
        url = _signed(signer, f"{s.url}/{BLOB_KEY}")
        trusted = ssl.create_default_context(cafile=s.cert_pem)
        assert _get(url, "bytes=0-9", context=trusted)[::2] == (206, DATA[:10])
        with pytest.raises(urllib.error.URLError) as info:
            _get(url, context=ssl.create_default_context())
        assert isinstance(info.value.reason, ssl.SSLCertVerificationError)
        # An http:// signature is not valid on the https:// edge.
        plain = _signed(signer, f"http://{s.url.removeprefix('https://')}/{BLOB_KEY}")
        assert _get("https://" + plain.removeprefix("http://"), context=trusted)[0] == 403


def test_command_line_stand_in(origin: str, signer: UrlSigner, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_bytes(KEY_PEM)
    script = Path(__file__).parent / "cloudfront_standin.py"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--origin",
            origin,
            "--bucket",
            BUCKET,
            "--public-key",
            str(key_file),
            "--key-pair-id",
            KEY_PAIR_ID,
            "--port",
            "0",
            "--https",
            "--cert-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline())
        assert ready["cert_pem"] == str(tmp_path / "standin-cert.pem")
        trusted = ssl.create_default_context(cafile=ready["cert_pem"])
        url = _signed(signer, f"{ready['url']}/{BLOB_KEY}")
        assert _get(url, "bytes=1-2", context=trusted)[::2] == (206, DATA[1:3])
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
