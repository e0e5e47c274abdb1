"""Nothing leaked, bad input refused: secrets never reach a log, `check` output or an error
message; TLS is verified unless told otherwise; a readable CloudFront key is warned about;
the mount is private by default; objects carry the configured ACL; names that cannot be
keys are refused (EINVAL, ENAMETOOLONG) and every other name is stored as it is.

Tests that talk to S3 run on moto and Ceph RGW (the `s3` fixture); where the two differ the
test says so. Settings that do not depend on the server run on moto only.
"""

from __future__ import annotations

import errno
import os
import re
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import botocore.exceptions
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.cloudfront_standin import CloudFrontStandIn, make_self_signed_cert
from tests.conftest import MountFactory
from tests.mounts import (
    REPO,
    Mount,
    S3Server,
    expect_errno,
    free_port,
    object_grants,
    s3_config,
)
from tests.s3proxy import S3Proxy
from tests.test_cli import run
from tests.test_resilience import TamperProxy

MiB = 1024 * 1024
CHUNK = 5 * MiB
KEY_PAIR_ID = "K2JCJMDEHXQW5F"
V2 = "docker/registry/v2"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run(*args, env=env, timeout=120)


def proc_mount_options(path: Path) -> set[str]:
    with open("/proc/mounts") as f:
        for line in f:
            fields = line.split()
            if fields[1] == str(path):
                return set(fields[3].split(","))
    raise AssertionError(f"{path} is not mounted")


def rsa_key_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1, as the registry wants
        serialization.NoEncryption(),
    )


def pem_body_lines(pem: bytes) -> list[str]:
    return [line for line in pem.decode().splitlines() if line and not line.startswith("-----")]


def own_credentials(s3: S3Server) -> tuple[str, str, str]:
    """Credentials nobody else uses, with a secret distinctive enough to grep for, and a
    bucket of theirs. RGW checks signatures, so there a user is created with them; moto
    accepts any credentials."""
    tag = uuid.uuid4().hex
    access = f"AKSEC{tag[:15].upper()}"
    secret = f"sEcReT{tag}NeverLogged"
    if s3.is_rgw:
        s3.extra["gateway"].create_user(f"sec{tag[:10]}", access, secret)
    bucket = f"sec-{tag[:16]}"
    s3.client(access, secret).create_bucket(Bucket=bucket)
    return access, secret, bucket


def leaks(text: str, secrets: list[str]) -> list[str]:
    """Secrets (or signatures) found in `text`."""
    found = [s for s in secrets if s and s in text]
    for pattern in (
        r"Signature=(?!REDACTED)[^&\s'\"]+",  # CloudFront signatures (and SigV2 query ones)
        r"X-Amz-Signature=(?!REDACTED)[^&\s'\"]+",
        r"X-Amz-Security-Token=(?!REDACTED)[^&\s'\"]+",
        r"Signature=[0-9a-f]{64}",  # a SigV4 Authorization header
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
    ):
        found += re.findall(pattern, text)
    return found


# -- secrets never logged --------------------------------------------------------------------


def test_secrets_never_reach_logs_check_output_or_error_messages(
    s3: S3Server, tmp_path: Path
) -> None:
    """A whole mount, use and unmount at debug level with a static secret key and the
    CloudFront middleware (a private key, signed URLs against a CloudFront stand-in), with
    S3 faults injected so that error paths log too; then `check`, and configuration errors
    that involve the secret. None of the output holds the secret key, a signature (SigV4,
    CloudFront) or a line of the private key; nor do /proc/mounts, the command line, the
    Prometheus endpoint and `status`. The per-request DEBUG lines and the INFO line of a
    failed request are among what was checked."""
    access, secret, bucket = own_credentials(s3)
    pem = rsa_key_pem()
    key_file = tmp_path / "cloudfront.pem"
    key_file.write_bytes(pem)
    key_file.chmod(0o600)
    secrets = [secret, *pem_body_lines(pem)]
    standin = CloudFrontStandIn(
        origin_endpoint=s3.endpoint,
        bucket=bucket,
        public_key_pem=pem,
        key_pair_id=KEY_PAIR_ID,
        access_key=access,
        secret_key=secret,
    ).start()
    try:
        metrics_port = free_port()
        with S3Proxy(s3.endpoint) as proxy:
            mount = Mount(
                tmp_path / "m",
                s3,
                bucket,
                s3={
                    "accesskey": access,
                    "secretkey": secret,
                    "chunksize": CHUNK,
                    "loglevel": "debugwithsigning",
                },
                mount={
                    "log_level": "debug",
                    "retry_attempts": 2,
                    "retry_time": "2s",
                    "metrics_addr": str(metrics_port),
                },
                endpoint=proxy.url,
                extra_config={
                    "middleware": {
                        "storage": [
                            {
                                "name": "cloudfront",
                                "options": {
                                    "baseurl": standin.url + "/",
                                    "privatekey": str(key_file),
                                    "keypairid": KEY_PAIR_ID,
                                    "duration": "20m",
                                },
                            }
                        ]
                    }
                },
            ).start()
            try:
                assert mount.proc is not None
                mnt = mount.path
                blob = os.urandom(3 * MiB)
                digest = "ab" + uuid.uuid4().hex * 2
                blob_dir = mnt / V2 / "blobs" / "sha256" / digest[:2] / digest[:64]
                blob_dir.mkdir(parents=True)
                (blob_dir / "data").write_bytes(blob)
                (mnt / "big").write_bytes(os.urandom(CHUNK + 10))
                os.rename(mnt / "big", mnt / "big2")
                proxy.add_fault("internal", method="PUT", times=1)
                proxy.add_fault("reset", method="GET", path="/data$", times=1)
                (mnt / "retried").write_bytes(b"retried once")
                proxy.add_fault("access_denied", method="PUT", path="/denied$")
                expect_errno(errno.EACCES, (mnt / "denied").write_bytes, b"x")
                time.sleep(1.2)  # the blob's data: read after its attributes went stale
                assert (blob_dir / "data").read_bytes() == blob
                assert sorted(os.listdir(mnt)) == ["big2", "docker", "retried"]
                os.unlink(mnt / "big2")
                with open("/proc/mounts") as f:
                    assert not leaks(f.read(), secrets)
                url = f"http://127.0.0.1:{metrics_port}/metrics"
                with urllib.request.urlopen(url, timeout=10) as resp:
                    exported = resp.read().decode()
                assert "s3fs_registry_s3_failures_total" in exported
                assert not leaks(exported, secrets)
                for form in ((), ("--json",)):
                    status = run_cli("status", *form, str(mnt))
                    assert status.returncode == 0, status.stderr
                    assert "AccessDenied" in status.stdout, status.stdout
                    assert not leaks(status.stdout + status.stderr, secrets)
                with open(f"/proc/{mount.proc.pid}/cmdline", "rb") as f:
                    assert secret.encode() not in f.read()
            finally:
                assert mount.stop() == 0, mount.log()[-3000:]
        log = mount.log()
        assert "DEBUG" in log, "debug logging was not on"
        assert not leaks(log, secrets), leaks(log, secrets)
        requests = [line for line in log.splitlines() if "s3fs_registry.store: S3 " in line]
        assert any("status=500" in line and "attempt=1" in line for line in requests)
        assert any("size=" in line and "latency=" in line for line in requests)
        assert any(" INFO " in line and "/denied" in line for line in requests), requests
        signed = [line for line in log.splitlines() if ": S3 signed PUT " in line]
        assert signed and all("Signature=REDACTED" in line for line in signed), signed[:3]
        assert all("x-amz-content-sha256: " in line.lower() for line in signed), signed[:3]
        # the blob was read through CloudFront with signed URLs, so there were signatures
        # to leak
        assert any(200 <= status < 300 for _, _, status in standin.requests), standin.requests

        check = run_cli("check", "--config", str(mount.config_path))
        out = check.stdout + check.stderr
        assert not leaks(out, secrets), out
        config = yaml.safe_load(mount.config_path.read_text())

        # configuration errors that involve the secret
        bad = dict(config)
        bad["storage"] = {"s3": {**config["storage"]["s3"], "secretkey": 987654321987654}}
        (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
        result = run_cli("check", "--config", str(tmp_path / "bad.yml"))
        assert result.returncode == 2, result.stderr
        assert "secretkey" in result.stderr and "987654321987654" not in result.stderr
        result = run_cli(
            "check",
            "--config",
            str(mount.config_path),
            env={
                "REGISTRY_STORAGE_S3_SECRETKEY": secret + "-from-env",
                "REGISTRY_STORAGE_S3_CHUNKSIZE": "10MB",
            },
        )
        assert result.returncode == 2 and "CHUNKSIZE" in result.stderr, result.stderr
        assert not leaks(result.stdout + result.stderr, secrets)
    finally:
        standin.stop()


def test_session_token_from_the_environment_never_logged(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """Empty accesskey/secretkey: the default credential chain takes AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY and AWS_SESSION_TOKEN from the environment. The token is sent
    (x-amz-security-token on every request, seen in flight) and appears in no log line and
    no `check` output, although registry v3's `loglevel: debugwithhttpbody` logs every
    request's and response's headers (at mount log level info). Neither server validates
    the token (moto accepts anything; RGW without STS ignores the header), so the mount
    works on both."""
    access, secret, bucket = own_credentials(s3)
    token = "FQoGZXIvYXdzE" + uuid.uuid4().hex * 3 + "SessionTokenNeverLogged"
    env = {
        "AWS_ACCESS_KEY_ID": access,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_SESSION_TOKEN": token,
    }
    with TamperProxy(s3.endpoint) as recorder:
        m = mount_factory(
            s3,
            bucket,
            s3={
                "accesskey": "",
                "secretkey": "",
                "chunksize": CHUNK,
                "loglevel": "DebugWithHTTPBody",
            },
            mount={"log_level": "info"},
            endpoint=recorder.url,
            env=env,
        )
        (m.path / "f").write_bytes(b"with a session token")
        (m.path / "big").write_bytes(os.urandom(CHUNK + 1))
        assert (m.path / "f").read_bytes() == b"with a session token"
        with pytest.raises(OSError):
            (m.path / "missing-dir" / "x").read_bytes()
        assert m.stop() == 0
        check = run_cli("check", "--config", str(m.config_path), env=env)
        sent = {e.header("x-amz-security-token") for e in recorder.exchanges}
        assert sent == {token}, "every request carries the session token"
    got = s3.client(access, secret).get_object(Bucket=bucket, Key="reg/f")["Body"].read()
    assert got == b"with a session token"
    log = m.log()
    sent_lines = [line for line in log.splitlines() if ": S3 request PUT " in line]
    assert sent_lines and all("x-amz-security-token: redacted" in x.lower() for x in sent_lines)
    assert any("; body: 20 bytes" in line for line in sent_lines), sent_lines  # data: a count
    assert "<ListBucketResult" in log  # XML bodies of responses
    assert "s3fs_registry.store: S3 PutObject reg/f size=20 status=200" in log
    assert not leaks(log, [secret, token]), leaks(log, [secret, token])
    assert check.returncode == 0, check.stdout + check.stderr
    assert not leaks(check.stdout + check.stderr, [secret, token])


# -- TLS -------------------------------------------------------------------------------------


class TlsForwarder:
    """TLS on 127.0.0.1 with a self-signed certificate, forwarding the plain bytes to an
    HTTP S3 server: an https endpoint that is an S3 server behind a certificate no system
    trusts. Counts handshakes that succeeded and failed."""

    def __init__(self, upstream: str, cert: str, key: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self._upstream = (host, int(port))
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(cert, key)
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.handshakes = 0
        self.failed_handshakes = 0
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def close(self) -> None:
        self._stop.set()
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self._ctx.wrap_socket(conn, server_side=True)
        except (ssl.SSLError, OSError):
            self.failed_handshakes += 1
            conn.close()
            return
        self.handshakes += 1
        up = socket.create_connection(self._upstream)
        try:
            while not self._stop.is_set():
                ready = [tls] if tls.pending() else select.select([tls, up], [], [], 1)[0]
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    (up if sock is tls else tls).sendall(data)
        except OSError:
            pass
        finally:
            up.close()
            tls.close()


@pytest.fixture
def tls_endpoint(s3: S3Server, tmp_path: Path) -> Iterator[tuple[TlsForwarder, str]]:
    cert, key = make_self_signed_cert(str(tmp_path))
    forwarder = TlsForwarder(s3.endpoint, cert, key)
    try:
        yield forwarder, cert
    finally:
        forwarder.close()


def test_tls_is_verified_by_default_and_skipverify_warns(
    s3: S3Server,
    mount_factory: MountFactory,
    tmp_path: Path,
    tls_endpoint: tuple[TlsForwarder, str],
) -> None:
    """regionendpoint is https://127.0.0.1:<port>, an S3 server behind a self-signed
    certificate.

    * Default configuration (skipverify false, no CA given): `mount` stops at start with
      one line naming the endpoint and the certificate failure (exit 3), nothing mounted;
      `check` fails the same way; no TLS handshake ever completed.
    * The same certificate made trusted (AWS_CA_BUNDLE): the mount works, which shows the
      failure above was the verification and nothing else.
    * skipverify: true: the handshake is accepted and the mount works (the endpoint is a
      real S3 server), and a warning at start says certificates are not verified.
    """
    forwarder, cert = tls_endpoint
    bucket = s3.new_bucket()
    block = s3_config(s3, bucket, regionendpoint=forwarder.url, secure=True)
    config = tmp_path / "c.yml"
    config.write_text(yaml.safe_dump({"storage": {"s3": block}}))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fast = {"REGISTRY_MOUNT_RETRY_TIME": "2s"}

    result = run_cli("mount", "--config", str(config), str(mnt), env=fast)
    assert result.returncode == 3, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and forwarder.url in line, line
    assert re.search(r"certificate verify failed|CERTIFICATE_VERIFY_FAILED", line), line
    assert not os.path.ismount(mnt)
    result = run_cli("check", "--config", str(config), env=fast)
    assert result.returncode != 0
    assert "certificate verify failed" in (result.stdout + result.stderr).lower()
    assert forwarder.handshakes == 0 and forwarder.failed_handshakes > 0

    trusted = mount_factory(
        s3,
        bucket,
        s3={"regionendpoint": forwarder.url, "secure": True},
        env={"AWS_CA_BUNDLE": cert},
    )
    (trusted.path / "f").write_bytes(b"over verified TLS")
    assert trusted.object("f") == b"over verified TLS"
    assert "NOT verified" not in trusted.log()
    assert trusted.stop() == 0

    insecure = mount_factory(
        s3, bucket, s3={"regionendpoint": forwarder.url, "secure": True, "skipverify": True}
    )
    assert (insecure.path / "f").read_bytes() == b"over verified TLS"
    (insecure.path / "g").write_bytes(b"over unverified TLS")
    assert insecure.object("g") == b"over unverified TLS"
    warning = [line for line in insecure.log().splitlines() if "skipverify" in line]
    assert warning and "WARNING" in warning[0] and forwarder.url in warning[0], warning
    assert "NOT verified" in warning[0]
    assert forwarder.handshakes > 0


def test_default_configuration_verifies_tls(tmp_path: Path) -> None:
    from s3fs_registry.config import load_config
    from s3fs_registry.store import known_regions

    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump({"storage": {"s3": {"bucket": "b", "region": "eu-west-1"}}}))
    config = load_config(str(path), {}, known_regions())
    assert config.s3.skipverify is False and config.s3.secure is True
    assert not [w for w in config.warnings if "skipverify" in w]


# -- the CloudFront private key's mode ----------------------------------------------------------


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604, 0o644], ids=lambda m: f"{m:04o}")
def test_cloudfront_private_key_readable_by_others_is_warned_about(
    moto: S3Server, mount_factory: MountFactory, tmp_path: Path, mode: int
) -> None:
    """A key file that group or others can read gives one warning at start naming the file
    and its mode; 0600 gives none. (Independent of the S3 server: moto only.)"""
    pem = rsa_key_pem()
    key_file = tmp_path / "cf.pem"
    key_file.write_bytes(pem)
    key_file.chmod(mode)
    m = mount_factory(
        moto,
        extra_config={
            "middleware": {
                "storage": [
                    {
                        "name": "cloudfront",
                        "options": {
                            "baseurl": "https://d111111abcdef8.cloudfront.net/",
                            "privatekey": str(key_file),
                            "keypairid": KEY_PAIR_ID,
                        },
                    }
                ]
            }
        },
    )
    assert m.stop() == 0
    log = m.log()
    warnings = [line for line in log.splitlines() if "privatekey" in line and "mode" in line]
    if mode == 0o600:
        assert warnings == []
    else:
        assert len(warnings) == 1, warnings
        assert "WARNING" in warnings[0] and str(key_file) in warnings[0]
        assert f"{mode:04o}" in warnings[0], warnings[0]
    assert not leaks(log, pem_body_lines(pem))


# -- allow_other ---------------------------------------------------------------------------------


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="s3fs-registry-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        user=65534,
        group=65534,
        extra_groups=[],
        timeout=30,
        check=False,
    )


def test_allow_other_is_off_by_default_and_default_permissions_stays_on(
    s3: S3Server, public_dir: Path
) -> None:
    """By default (`allow_other: auto`, on a mount point the daemon's user owns) only the
    mounting user gets in: /proc/mounts shows default_permissions and not allow_other, and
    user nobody is refused even a listing. With
    mount.allow_other: true, /proc/mounts shows allow_other and still default_permissions,
    so the kernel checks the configured modes: nobody can list (dir_mode 0755) but can
    neither read a file (file_mode 0640, owner root) nor create one."""
    bucket = s3.new_bucket()
    private = Mount(public_dir / "private", s3, bucket).start()
    try:
        (private.path / "f").write_bytes(b"root only")
        options = proc_mount_options(private.path)
        assert "default_permissions" in options and "allow_other" not in options, options
        denied = as_nobody("ls", str(private.path))
        assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    finally:
        assert private.stop() == 0

    shared = Mount(
        public_dir / "shared",
        s3,
        bucket,
        mount={"allow_other": True, "file_mode": "0640", "dir_mode": "0755"},
    ).start()
    try:
        options = proc_mount_options(shared.path)
        assert {"allow_other", "default_permissions"} <= options, options
        listing = as_nobody("ls", str(shared.path))
        assert listing.returncode == 0 and listing.stdout.split() == ["f"], listing
        read = as_nobody("cat", str(shared.path / "f"))
        assert read.returncode != 0 and "Permission denied" in read.stderr, read
        create = as_nobody("touch", str(shared.path / "new"))
        assert create.returncode != 0 and "Permission denied" in create.stderr, create
        assert (shared.path / "f").read_bytes() == b"root only"
    finally:
        assert shared.stop() == 0
    assert s3.keys(bucket) == ["reg/f"]


# -- the configured ACL --------------------------------------------------------------------------


def anonymous_get(s3: S3Server, bucket: str, key: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"{s3.endpoint}/{bucket}/{key}", timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.parametrize("acl", ["public-read", "private"])
def test_objects_carry_the_configured_acl(
    s3: S3Server, mount_factory: MountFactory, acl: str
) -> None:
    """Every way the daemon writes an object (PutObject, multipart upload, CopyObject on
    rename, an append that copies the old bytes server-side, a spooled non-sequential
    write) leaves it with the configured canned ACL: get_object_acl shows AllUsers READ
    for public-read and only the owner for private, and an anonymous GET agrees (both
    servers enforce it)."""
    m = mount_factory(s3, s3={"chunksize": CHUNK, "objectacl": acl})
    (m.path / "put").write_bytes(b"small")
    (m.path / "multipart").write_bytes(os.urandom(CHUNK + 100))
    (m.path / "to-rename").write_bytes(b"renamed")
    os.rename(m.path / "to-rename", m.path / "renamed")
    (m.path / "appended").write_bytes(os.urandom(CHUNK + 1))
    with open(m.path / "appended", "ab") as f:
        f.write(b"tail")
    (m.path / "spooled").write_bytes(os.urandom(100_000))
    with open(m.path / "spooled", "r+b") as f:
        f.seek(10)
        f.write(b"middle")
    client = s3.client()
    for rel in ("put", "multipart", "renamed", "appended", "spooled"):
        key = m.prefix + rel
        got = object_grants(client, m.bucket, key)
        if acl == "public-read":
            assert ("AllUsers", "READ") in got, (rel, got)
            assert anonymous_get(s3, m.bucket, key) == 200, rel
        else:
            assert got == {("owner", "FULL_CONTROL")}, (rel, got)
            assert anonymous_get(s3, m.bucket, key) == 403, rel


# -- names -----------------------------------------------------------------------------------

REFUSED = [
    "new\nline",
    "carriage\rreturn",
    "tab\there",
    "bell\x07",
    "delete\x7f",
    "escape\x1b[0m",
]
REFUSED_BYTES = [b"latin1-caf\xe9", b"\xff\xfe", b"half-\xe6\x97"]
FAITHFUL = [
    "back\\slash",
    "with space",
    " leading-and-trailing ",
    "100%",
    "percent%41encoded",
    "a+b",
    "#hash",
    "what?",
    "a&b=c",
    "café",
    "日本語",
    "emoji-😀",
    "punct~!@$^*()[]{};:',<>|`\"",
]


def test_names_that_cannot_be_keys_are_refused_with_einval(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """Control characters and bytes that are not UTF-8 are refused with EINVAL by every
    operation that takes a name (create, mkdir, rename, stat, unlink), and nothing reaches
    S3."""
    m = mount_factory(s3)
    d = m.path / "d"
    d.mkdir()
    (d / "ok").write_bytes(b"ok")
    names: list[bytes] = [os.fsencode(n) for n in REFUSED] + REFUSED_BYTES
    base = os.fsencode(d) + b"/"
    for name in names:
        path = base + name
        expect_errno(errno.EINVAL, os.open, path, os.O_WRONLY | os.O_CREAT)
        expect_errno(errno.EINVAL, os.mkdir, path)
        expect_errno(errno.EINVAL, os.rename, base + b"ok", path)
        expect_errno(errno.EINVAL, os.stat, path)
        expect_errno(errno.EINVAL, os.unlink, path)
    assert os.listdir(d) == ["ok"]
    assert m.object_keys() == ["d/ok"]


def test_other_names_are_stored_faithfully(s3: S3Server, mount_factory: MountFactory) -> None:
    """Backslashes, spaces, %, +, #, ?, &, quotes and non-ASCII UTF-8 are names like any
    other: the S3 key is the UTF-8 of the name, byte for byte; listing, reading, renaming
    and deleting work; and keys with such names written by another tool show up as the
    same names."""
    m = mount_factory(s3)
    d = m.path / "d"
    d.mkdir()
    for n, name in enumerate(FAITHFUL):
        (d / name).write_bytes(f"content {n}".encode())
    assert sorted(os.listdir(d)) == sorted(FAITHFUL)
    assert sorted(m.object_keys()) == sorted(f"d/{name}" for name in FAITHFUL)
    for n, name in enumerate(FAITHFUL):
        assert (d / name).read_bytes() == f"content {n}".encode()
        assert m.object(f"d/{name}") == f"content {n}".encode()
    os.rename(d / "back\\slash", d / "日本語 \\ 100% + #?&")
    assert m.object("d/日本語 \\ 100% + #?&") == b"content 0"
    os.unlink(d / "emoji-😀")
    assert "d/emoji-😀" not in m.object_keys()

    for n, name in enumerate(FAITHFUL):
        s3.put(m.bucket, f"{m.prefix}ext/{name}", f"external {n}".encode())
    assert sorted(os.listdir(m.path / "ext")) == sorted(FAITHFUL)
    for n, name in enumerate(FAITHFUL):
        assert (m.path / "ext" / name).read_bytes() == f"external {n}".encode()


def test_keys_with_control_characters_from_other_tools_are_handled_consistently(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """A key holding a newline, written by another tool, cannot be a name on this mount
    (EINVAL). The mount must then be consistent: a name it lists can be looked up. (RGW
    stores such keys; moto cannot store a key with a newline at all, which is asserted.)"""
    m = mount_factory(s3)
    key = f"{m.prefix}ext/new\nline"
    try:
        s3.put(m.bucket, key, b"written by another tool")
    except botocore.exceptions.ClientError:
        assert not s3.is_rgw, "RGW stores keys with a newline"
        return  # moto: such a key cannot exist, so there is nothing to be consistent about
    assert s3.is_rgw, "moto refused keys with a newline until now"
    s3.put(m.bucket, f"{m.prefix}ext/plain", b"plain")
    listed = os.listdir(m.path / "ext")
    assert "plain" in listed
    time.sleep(1.5)  # past metadata_ttl: the kernel asks the daemon again (no cached entry)
    for name in listed:
        try:
            os.stat(m.path / "ext" / name)
            (m.path / "ext" / name).read_bytes()
        except OSError as exc:
            pytest.fail(f"{name!r} is listed but cannot be looked up or read: {exc}")


def test_keys_longer_than_1024_bytes_are_enametoolong(
    s3: S3Server, mount_factory: MountFactory
) -> None:
    """With a 700-byte rootdirectory and a 255-byte directory, a file name may have 67
    bytes (key: 1024 bytes): 67 bytes work, 68 bytes (in ASCII or in two-byte UTF-8) are
    ENAMETOOLONG for create, mkdir, rename and stat. A name over 255 bytes is ENAMETOOLONG
    too."""
    m = mount_factory(s3, s3={"rootdirectory": "/" + "p" * 700})
    d = m.path / ("d" * 255)
    d.mkdir()
    fits = "f" * 67
    (d / fits).write_bytes(b"exactly 1024")
    key = f"{m.prefix}{'d' * 255}/{fits}"
    assert len(key.encode()) == 1024
    assert s3.get(m.bucket, key) == b"exactly 1024"
    (d / ("é" * 33 + "x")).write_bytes(b"67 bytes of UTF-8")
    for name in ("g" * 68, "é" * 34):
        assert len(name.encode()) == 68
        expect_errno(errno.ENAMETOOLONG, os.open, d / name, os.O_WRONLY | os.O_CREAT)
        expect_errno(errno.ENAMETOOLONG, os.mkdir, d / name)
        expect_errno(errno.ENAMETOOLONG, os.rename, d / fits, d / name)
        expect_errno(errno.ENAMETOOLONG, os.stat, d / name)
    expect_errno(errno.ENAMETOOLONG, os.open, m.path / ("n" * 256), os.O_WRONLY | os.O_CREAT)
    assert sorted(os.listdir(d)) == sorted([fits, "é" * 33 + "x"])
    assert len(m.object_keys()) == 2


def test_name_rules_are_documented() -> None:
    """doc/SEMANTICS.md says which names are refused and which are stored as they are."""
    text = (REPO / "doc" / "SEMANTICS.md").read_text()
    einval = next(line for line in text.splitlines() if line.startswith("| EINVAL"))
    assert "UTF-8" in einval and "control character" in einval
    for stored in ("Spaces", "backslashes", "`%`", "`+`", "`#`", "`?`", "`&`"):
        assert stored in einval, stored
    toolong = next(line for line in text.splitlines() if line.startswith("| ENAMETOOLONG"))
    assert "1024" in toolong and "255" in toolong
