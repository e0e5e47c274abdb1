"""Fixed vectors for the CloudFront canned-policy signer.

Every expected URL is derived twice: independently inside this file (policy written out by hand,
signed with `cryptography` directly, base64 alphabet swapped literally) and as pinned literals.
RSA PKCS#1 v1.5 is deterministic, so the literals never change for the committed test key; a
regression in either the module or the hand derivation fails a test.

The aws-sdk-go v1 `service/cloudfront/sign` tests (policy_test.go, sign_url_test.go) contribute
the policy JSON/base64 vectors, the URL-building shape and the validateURL cases. Their
signature strings come from a 1024-bit key generated from Go's math/rand, which cannot be
recreated here, so those are not used.
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from s3fs_registry.cloudfront import (
    SignedUrlCache,
    UrlSigner,
    aws_b64,
    canned_policy,
    redact_url,
)

KEY_PATH = Path(__file__).parent / "data" / "cloudfront_test_key.pem"
KEY_PEM = KEY_PATH.read_bytes()
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
DIST = "https://d111111abcdef8.cloudfront.net"
BLOB = (
    DIST + "/prefix/docker/registry/v2/blobs/sha256/4f/"
    "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945/data"
)
EXPIRES = 1767225600  # 2026-01-01T00:00:00Z


def _private_key() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(KEY_PEM, password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _expected_url(url: str, expires: int, resource: str | None = None) -> str:
    """The signed URL, derived without the module under test."""
    resource = url if resource is None else resource
    policy = (
        '{"Statement":[{"Resource":"' + resource + '","Condition":'
        '{"DateLessThan":{"AWS:EpochTime":' + str(expires) + "}}}]}"
    ).encode()
    sig = _private_key().sign(policy, padding.PKCS1v15(), hashes.SHA1())
    b64 = base64.b64encode(sig).decode().replace("+", "-").replace("=", "_").replace("/", "~")
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}Expires={expires}&Signature={b64}&Key-Pair-Id={KEY_PAIR_ID}"


@pytest.fixture(scope="module")
def signer() -> UrlSigner:
    return UrlSigner(KEY_PAIR_ID, KEY_PEM)


# --- aws_b64 and canned_policy ---------------------------------------------------------------


def test_aws_b64_swaps_all_three_characters_and_keeps_padding() -> None:
    assert base64.b64encode(b"\xfb\xff\xbf") == b"+/+/"
    assert aws_b64(b"\xfb\xff\xbf") == "-~-~"
    assert aws_b64(b"a") == "YQ__"
    assert aws_b64(b"") == ""


def test_canned_policy_matches_aws_sdk_go_encode_policy_vector() -> None:
    # aws-sdk-go v1 policy_test.go TestEncodePolicy (2009-11-10T23:00:00Z)
    policy = canned_policy("https://example.com/a", 1257894000)
    assert policy == (
        b'{"Statement":[{"Resource":"https://example.com/a",'
        b'"Condition":{"DateLessThan":{"AWS:EpochTime":1257894000}}}]}'
    )
    assert aws_b64(policy) == (
        "eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9hIiwiQ29uZGl0aW9uIjp7"
        "IkRhdGVMZXNzVGhhbiI6eyJBV1M6RXBvY2hUaW1lIjoxMjU3ODk0MDAwfX19XX0_"
    )


def test_canned_policy_with_query_does_not_html_escape_ampersand() -> None:
    # aws-sdk-go v1 policy_test.go TestEncodePolicyWithQueryParams: SetEscapeHTML(false)
    policy = canned_policy("https://example.com/a?b=1&c=2", 1257894000)
    assert policy == (
        b'{"Statement":[{"Resource":"https://example.com/a?b=1&c=2",'
        b'"Condition":{"DateLessThan":{"AWS:EpochTime":1257894000}}}]}'
    )
    assert aws_b64(policy) == (
        "eyJTdGF0ZW1lbnQiOlt7IlJlc291cmNlIjoiaHR0cHM6Ly9leGFtcGxlLmNvbS9hP2I9MSZjPTIiLCJDb25k"
        "aXRpb24iOnsiRGF0ZUxlc3NUaGFuIjp7IkFXUzpFcG9jaFRpbWUiOjEyNTc4OTQwMDB9fX1dfQ__"
    )


def test_canned_policy_escapes_like_go_json() -> None:
    policy = canned_policy('https://e.com/a"b\\c<d>/', 5)
    assert policy == (
        b'{"Statement":[{"Resource":"https://e.com/a\\"b\\\\c<d>/",'
        b'"Condition":{"DateLessThan":{"AWS:EpochTime":5}}}]}'
    )


@pytest.mark.parametrize(
    "resource", ["http://example.com/a\u019b?b=1", "https://e.com/\u00e9", "https://e.com/a\nb", ""]
)
def test_canned_policy_refuses_non_ascii_control_and_empty(resource: str) -> None:
    with pytest.raises(ValueError):
        canned_policy(resource, 1257894000)


def test_canned_policy_refuses_float_expiry() -> None:
    with pytest.raises(TypeError):
        canned_policy("https://e.com/a", 1.5)  # type: ignore[arg-type]


# --- UrlSigner.sign --------------------------------------------------------------------------

PINNED = {
    (BLOB, EXPIRES): (
        BLOB + "?Expires=1767225600&Signature="
        "ZThlj4a3hVesFyLBOr~Zl24sjTfDz~RrBbMtdguoQTKx50RKTEYFNPT4kroqT5dpSJf4C9MjnpeElF-II-D6XD"
        "e-H-UvznPXrqHgWMF4wM0F~G3fqcjuTQW9fZ58b3xNmsPbLHx-yaDnCC08MWUM-CLdHT8WEn07BnS475-ybiL1"
        "tT9jcGzOOIFrFp6gVdacvWnoCirVF3nryOJnb1Vy0g1M4zckE69yZa8YTf14O7ZsCGUa36afiY-NWreGbROXNr"
        "9e0od77IgKs3cEE44p2z9y6EmhDkr66FaI4tbhedg3MDg8xqKao4-60rZ~W8RI3W~kOLdIMfu8ziiypXASpQ__"
        "&Key-Pair-Id=K2JCJMDEHXQW5F"
    ),
    ("https://example.com/a?b=1&c=2", 1257894000): (
        "https://example.com/a?b=1&c=2&Expires=1257894000&Signature="
        "bNyp1LMj~XZK7kUtE7xllhZ0TsEA8~8b4oI96HpNBpC-QHavKPzTcqWe5af2tRmQ94XmUdW6K0xd4ckobmknYu"
        "niveJJ0ZXyTFD85pSgDC9LunLbbX8Vobl6Te~rcpPPnGF1fvIIp8KmjttIAGyEh~1KiKdGMhx8HaU3UuS7V3zA"
        "aRO3qwrC-2PE~Lx6rztW3pjw2j2CNy7F2yQTikkc6Fz3a1YlrQZB9rXENKDWbxa9jWUFh2-GIR99GFDDel2Ixj"
        "xM8med1Jx1Wjv4XK9750eJ7-QAswsNyxPAf9ekU01mVV69VMrUdqKclhg3IfxkHdyTlFSCprB-ecbSFot1Pw__"
        "&Key-Pair-Id=K2JCJMDEHXQW5F"
    ),
    ("http://127.0.0.1:8080/a/b/data", 2000000000): (
        "http://127.0.0.1:8080/a/b/data?Expires=2000000000&Signature="
        "Pejk~FHgyb0wqLEZK0w-m-xzL1180ClLUD45nmta7GzaXtVtxlN4YLWQMJ4kBRzK2tYuKx3Y9rykN1wapKbdTE"
        "eCJ2ITw5K8nRmCaWBwnpbxuaU~niAc8MlmuZD1v-l4eR8blt5guTQoJqy3cJll6O-XL7aNEAtV0jHi-bIIXfwV"
        "uppbGRRMzokhgX2iS6BQjVu2DpNazPhVEolGDgu~PfPmzXSlSfZAM3yxj1swRm7gOLC-UX55j5wjMX9yydppgk"
        "5ZOcCTlOZ4fo1WleYv8DfbsjSPRNKGV6VgBRRRJmLcCbDhtM6JyF-8Fj8GaHN5nfU31pMJORwl-dTd7Lls2A__"
        "&Key-Pair-Id=K2JCJMDEHXQW5F"
    ),
}


@pytest.mark.parametrize(("url", "expires"), list(PINNED))
def test_sign_matches_pinned_literal(signer: UrlSigner, url: str, expires: int) -> None:
    assert signer.sign(url, expires) == PINNED[(url, expires)]


@pytest.mark.parametrize(("url", "expires"), list(PINNED))
def test_pinned_literals_match_independent_derivation(url: str, expires: int) -> None:
    assert _expected_url(url, expires) == PINNED[(url, expires)]


@pytest.mark.parametrize(
    "url",
    [
        BLOB,
        DIST + "/a/b/data?versionId=3",
        DIST + "/a/b/data?b=1&else=b",
        "HTTPS://Example.COM/UPPER/Case",
        "http://127.0.0.1:9/x%20y/data",
    ],
)
@pytest.mark.parametrize("expires", [0, 1257894000, EXPIRES, 4102444800])
def test_sign_matches_independent_derivation(signer: UrlSigner, url: str, expires: int) -> None:
    assert signer.sign(url, expires) == _expected_url(url, expires)


def test_sign_appends_with_ampersand_after_existing_query(signer: UrlSigner) -> None:
    # aws-sdk-go v1 sign_url_test.go TestBuildSignedURL, third case, with a real signature
    signed = signer.sign("https://example.com/a?b=1", 1257894000)
    assert signed.startswith("https://example.com/a?b=1&Expires=1257894000&Signature=")
    assert signed.endswith("&Key-Pair-Id=K2JCJMDEHXQW5F")
    assert signed.count("?") == 1


def test_wildcard_scheme_is_signed_but_not_handed_out(signer: UrlSigner) -> None:
    # cleanURLScheme drops one '*' from the URL; CreateResource keeps the URL as given.
    signed = signer.sign("http*://example.com/a?b=1", 1257894000)
    assert signed == _expected_url(
        "http://example.com/a?b=1", 1257894000, resource="http*://example.com/a?b=1"
    )


def test_signature_verifies_with_public_key(signer: UrlSigner) -> None:
    signed = signer.sign(BLOB, EXPIRES)
    b64 = signed.split("&Signature=")[1].split("&")[0]
    sig = base64.b64decode(b64.replace("-", "+").replace("_", "=").replace("~", "/"))
    public = _private_key().public_key()
    policy = canned_policy(BLOB, EXPIRES)
    public.verify(sig, policy, padding.PKCS1v15(), hashes.SHA1())
    with pytest.raises(InvalidSignature):
        public.verify(sig, canned_policy(BLOB, EXPIRES + 1), padding.PKCS1v15(), hashes.SHA1())


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # aws-sdk-go v1 sign_url_test.go testValidURL
        ("https://example.com/a?b=1&Policy=something&else=b", "Policy"),
        ("https://example.com/a?b=1&Signature=something&else=b", "Signature"),
        ("https://example.com/a?b=1&Key-Pair-Id=something&else=b", "Key-Pair-Id"),
        ("http://example.com/a\u019b?b=1", "URL contains non-ascii characters"),
        # and the fourth illegal parameter, plus Go's ParseQuery details
        ("https://example.com/a?Expires=1", "Expires"),
        ("https://example.com/a?Signature", "Signature"),
        ("https://example.com/a?x=1&Signatur%65=x", "Signature"),
    ],
)
def test_sign_refuses_invalid_urls_like_validate_url(
    signer: UrlSigner, url: str, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        signer.sign(url, 1257894000)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/a?b=1",  # policy_test.go testCreateResource
        "rtmp://example.com/a",  # RTMP distributions no longer exist
        "example.com/a",  # no scheme at all
        "http?://example.com/a?b=1",
        "http://example.com:port/a",
        "http://[::1/a",
        "http://example.com/a%zz",
        "http://example.com/a\tb",
    ],
)
def test_sign_refuses_bad_schemes_and_unparsable_urls(signer: UrlSigner, url: str) -> None:
    with pytest.raises(ValueError):
        signer.sign(url, 1257894000)


def test_sign_accepts_harmless_query(signer: UrlSigner) -> None:
    # aws-sdk-go v1 sign_url_test.go testValidURL, first case
    signer.sign("https://example.com/a?b=1&else=b", 1257894000)


# --- keys --------------------------------------------------------------------------------------


def test_pkcs8_key_gives_the_same_url_as_pkcs1(signer: UrlSigner) -> None:
    pkcs8 = _private_key().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert pkcs8.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert KEY_PEM.count(b"-----BEGIN RSA PRIVATE KEY-----") == 1
    other = UrlSigner(KEY_PAIR_ID, pkcs8)
    for (url, expires), expected in PINNED.items():
        assert other.sign(url, expires) == expected


def test_from_file_reads_the_pem(tmp_path: Path) -> None:
    assert (
        UrlSigner.from_file(KEY_PAIR_ID, str(KEY_PATH)).sign(BLOB, EXPIRES)
        == PINNED[(BLOB, EXPIRES)]
    )
    with pytest.raises(OSError):
        UrlSigner.from_file(KEY_PAIR_ID, str(tmp_path / "missing.pem"))


def _pem(key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    "pem",
    [
        _pem(ec.generate_private_key(ec.SECP256R1())),
        _pem(ed25519.Ed25519PrivateKey.generate()),
        _private_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        ),
        _private_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        b"not a key",
        b"",
    ],
    ids=["ec", "ed25519", "encrypted", "public-key", "garbage", "empty"],
)
def test_non_rsa_or_unusable_keys_are_value_errors(pem: bytes) -> None:
    with pytest.raises(ValueError) as info:
        UrlSigner(KEY_PAIR_ID, pem)
    assert "BEGIN" not in str(info.value)


@pytest.mark.parametrize("key_pair_id", ["", "K1&Signature=x", "K1 K2", "K1#"])
def test_key_pair_id_that_would_corrupt_the_query_is_refused(key_pair_id: str) -> None:
    with pytest.raises(ValueError):
        UrlSigner(key_pair_id, KEY_PEM)


def test_repr_has_no_key_material(signer: UrlSigner) -> None:
    numbers = _private_key().private_numbers()
    body = b"".join(KEY_PEM.split(b"-----")[2].split())  # base64 body of the PEM
    for text in (repr(signer), str(signer)):
        assert KEY_PAIR_ID in text
        assert "PRIVATE" not in text
        for secret in (numbers.d, numbers.p, numbers.q, numbers.public_numbers.n):
            assert str(secret)[:12] not in text
            assert format(secret, "x")[:12] not in text
        assert body[:16].decode() not in text
    assert not hasattr(signer, "__dict__")  # only the slots: key object and id


# --- SignedUrlCache ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_cache_reuses_then_renews_once_half_the_duration_is_gone(signer: UrlSigner) -> None:
    clock = FakeClock(1_700_000_000.7)
    cache = SignedUrlCache(signer, duration=1200, clock=clock)

    first, expires = cache.url_for(BLOB)
    assert expires == 1_700_001_200.0  # truncated like Go's Unix()
    assert first == _expected_url(BLOB, 1_700_001_200)

    clock.now += 599
    assert cache.url_for(BLOB) == (first, expires)

    clock.now += 1  # 600 s after signing: half the lifetime is used up
    renewed, new_expires = cache.url_for(BLOB)
    assert new_expires == 1_700_001_800.0
    assert renewed == _expected_url(BLOB, 1_700_001_800)
    assert cache.url_for(BLOB) == (renewed, new_expires)


def test_cache_renew_fraction_and_separate_resources(signer: UrlSigner) -> None:
    clock = FakeClock(1000.0)
    cache = SignedUrlCache(signer, duration=100, clock=clock, renew_fraction=0.8)
    a, _ = cache.url_for(DIST + "/a/data")
    b, _ = cache.url_for(DIST + "/b/data")
    assert a != b
    clock.now = 1079.9
    assert cache.url_for(DIST + "/a/data")[0] == a
    clock.now = 1080.0
    assert cache.url_for(DIST + "/a/data")[0] != a


def test_cache_is_bounded_lru(signer: UrlSigner) -> None:
    clock = FakeClock(1000.0)
    cache = SignedUrlCache(signer, duration=100, clock=clock, max_entries=2)
    a, _ = cache.url_for(DIST + "/a")
    cache.url_for(DIST + "/b")
    assert cache.url_for(DIST + "/a")[0] == a  # a is now most recent
    cache.url_for(DIST + "/c")  # evicts b
    assert len(cache) == 2
    clock.now = 1001.0
    assert cache.url_for(DIST + "/a")[0] == a  # still cached: same expiry
    assert cache.url_for(DIST + "/b")[1] == 1101.0  # re-signed: new expiry


@pytest.mark.parametrize(
    "kwargs",
    [{"duration": 0}, {"duration": 0.5}, {"renew_fraction": 0}, {"renew_fraction": 1}],
)
def test_cache_refuses_nonsense_settings(signer: UrlSigner, kwargs: dict[str, float]) -> None:
    args: dict[str, float] = {"duration": 60, **kwargs}
    with pytest.raises(ValueError):
        SignedUrlCache(signer, **args)  # type: ignore[arg-type]


def test_cache_propagates_signing_errors(signer: UrlSigner) -> None:
    cache = SignedUrlCache(signer, duration=60)
    with pytest.raises(ValueError):
        cache.url_for(DIST + "/a?Signature=x")


# --- redaction and logging ---------------------------------------------------------------------


def test_redact_url_hides_only_the_signature(signer: UrlSigner) -> None:
    signed = signer.sign(DIST + "/a/data?versionId=3", EXPIRES)
    signature = signed.split("&Signature=")[1].split("&")[0]
    redacted = redact_url(signed)
    assert signature not in redacted
    assert redacted == (
        f"{DIST}/a/data?versionId=3&Expires=1767225600"
        "&Signature=REDACTED&Key-Pair-Id=K2JCJMDEHXQW5F"
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://e.com/a", "https://e.com/a"),
        ("https://e.com/a?x=1#Signature=s", "https://e.com/a?x=1#Signature=s"),
        ("https://e.com/a?Signature=s#f", "https://e.com/a?Signature=REDACTED#f"),
        (
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA/x&X-Amz-Signature=ab12"
            "&X-Amz-Security-Token=tok",
            "https://b.s3.amazonaws.com/k?X-Amz-Credential=AKIA/x&X-Amz-Signature=REDACTED"
            "&X-Amz-Security-Token=REDACTED",
        ),
    ],
)
def test_redact_url_other_shapes(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_nothing_secret_is_logged(signer: UrlSigner, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="s3fs_registry")
    fresh = UrlSigner(KEY_PAIR_ID, KEY_PEM)
    cache = SignedUrlCache(fresh, duration=60)
    url, _ = cache.url_for(BLOB)
    signature = url.split("&Signature=")[1].split("&")[0]
    body = KEY_PEM.split(b"-----")[2].split()[1].decode()
    assert caplog.records, "expected debug logging from the signer"
    for record in caplog.records:
        message = record.getMessage()
        assert signature not in message
        assert body not in message
