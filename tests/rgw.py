"""A throwaway single-node Ceph RADOS Gateway (RGW) on 127.0.0.1, for tests.

One monitor, one OSD (``memstore`` or ``bluestore`` on a sparse file) and one
radosgw (beast front end), no cephx, everything (conf, data, logs, run dir,
admin sockets) under one work directory.  Needs the Debian packages
``ceph-mon ceph-osd radosgw ceph-common`` (written against Ceph 16.2.15); the
daemons run fine as an unprivileged user.  Standard library only, plus boto3
for the readiness probe.  No dependency on the rest of the project.

Library use::

    with RadosGateway(tmp_path / "rgw") as gw:
        s3 = gw.client()        # boto3 S3 client, path style, SigV4, us-east-1
        ...

Script use (the daemons keep running after the script exits)::

    python tests/rgw.py start WORKDIR [--port N] [--objectstore memstore|bluestore]
    python tests/rgw.py stop WORKDIR

``start`` prints the endpoint and writes ``WORKDIR/endpoint`` (one line) and
``WORKDIR/pids`` (one PID a line, radosgw, osd, mon).  Main user: access key
``test``, secret ``test``.  SSE-KMS key id: ``RadosGateway.KMS_KEY_ID``.

Ports: the monitor, the messenger range of the OSD and (with ``port=0``) the
HTTP port are one block of consecutive loopback ports below the ephemeral
range, picked at random and checked free while holding a machine-wide lock
file (``$TMPDIR/ceph-rgw-test-ports.lock``) until radosgw listens, so two
clusters started at the same time (two pytest sessions) do not collide.

RGW 16.2.15 behaviour that differs from AWS S3, as seen with boto3 1.43 /
botocore 1.43 (SigV4, path-style):

* CompleteMultipartUpload answers with an empty ETag (known RGW bug);
  HeadObject afterwards gives the right multipart ETag (``"<md5>-<n>"``).
* SSE-S3 (``ServerSideEncryption="AES256"``) is accepted and ignored: the
  header is not echoed back on PUT/GET/HEAD (and the data is stored
  unencrypted, per shared/reference/real-s3-server.md).
* SSE-KMS (``aws:kms`` + key id) works with the ``testing`` KMS backend; the
  PutObject/HeadObject/GetObject responses echo ``aws:kms`` and the key id.
* Storage class ``REDUCED_REDUNDANCY`` is rejected with InvalidArgument unless
  registered in the zonegroup and zone placement (done here); any other
  non-STANDARD class (e.g. ``STANDARD_IA``) is still InvalidArgument.
* Signatures are verified (wrong secret -> SignatureDoesNotMatch, HTTP 403).
* An authenticated user reading another user's private object gets
  AccessDenied (HTTP 403), as on AWS.
* Flexible checksums: botocore >= 1.36 computes a CRC32 for every upload by
  default.  Over plain http with SigV4 it signs the payload and sends the
  checksum as an ``x-amz-checksum-crc32`` header (no aws-chunked trailer), and
  RGW 16 accepts that; the smoke test runs with botocore's defaults.  But RGW
  16 neither checks that header (a wrong CRC32 is stored without complaint)
  nor returns ``x-amz-checksum-*`` on GET/HEAD, so botocore has nothing to
  validate.  Over https, where botocore switches to unsigned aws-chunked
  bodies with a trailer, RGW 16 may not cope: there use
  ``Config(request_checksum_calculation="when_required",
  response_checksum_validation="when_required")``.
* A request with two copies of one signed header (e.g. ``x-amz-checksum-crc32``
  added twice) fails with SignatureDoesNotMatch.
* **``Expect: 100-continue`` stalls (botocore bug, RGW makes it easy to hit).**
  botocore sends ``Expect: 100-continue`` on every PutObject/UploadPart.  When
  RGW refuses such a request before reading the body (InvalidArgument for an
  unknown storage class, NoSuchBucket, AccessDenied, ...) it answers at once
  and keeps the connection alive (``Connection: Keep-Alive``; RGW itself copes
  fine with the unsent body).  botocore then leaves the pooled connection in a
  bad state (boto/botocore PR #3010, issues #3755, boto/boto3#3757): the next
  ``Expect`` request on it has its response misparsed
  (``MissingHeaderBodySeparatorDefect``) and stalls for the whole
  ``read_timeout`` (60 s by default) before botocore silently retries.  Seen
  here as a 60 s PutObject right after a refused one.  ``client()`` therefore
  drops the (unsigned) ``Expect`` header in a ``before-send`` handler; see
  ``disable_expect_100_continue``.  Any S3 client of the project (and AWS S3
  too, per those reports) can hit this.
* **Listings take 40+ ms without ``tcp_nodelay=1`` on the beast front end.** RGW writes a
  listing's response in several small writes; with Nagle's algorithm on its side and
  delayed ACKs on the client's, every ListObjects(V2) waited ~40 ms (48 ms measured
  against 4-5 ms with the option, which this cluster sets). Other requests were not
  affected. An RGW in production wants the same option.
* Bucket names shorter than 3 characters: InvalidBucketName (as AWS).
* No ceph-mgr runs, so ``ceph -s`` reports HEALTH_WARN; harmless.
* Deleted data is freed by RGW's garbage collector only after
  ``rgw gc obj min wait`` (2 h by default).  Here the wait and the GC period
  are 10 s: the RADOS objects of a deleted 40 MiB object were gone about 20 s
  after the DeleteObject.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import errno
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

_PORT_LOCK = Path(tempfile.gettempdir()) / "ceph-rgw-test-ports.lock"
_PORT_BLOCK = 16  # ports per cluster: mon, rgw, 14 for the messenger
_PORT_LOW = 20000
_PORT_HIGH = 32000  # below the default ephemeral range (32768-60999)

_STOP_ORDER = ("radosgw", "osd", "mon")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_state(pid: int) -> str | None:
    """The state letter of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat[stat.rindex(")") + 2 :][:1]


def _alive(pid: int) -> bool:
    state = _pid_state(pid)
    return state is not None and state not in ("Z", "X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _tail(path: Path, lines: int = 40) -> str:
    try:
        data = path.read_bytes()[-65536:]
    except OSError as e:
        return f"(cannot read {path}: {e})"
    text = data.decode(errors="replace").splitlines()[-lines:]
    return f"--- tail of {path} ---\n" + "\n".join(text)


class RadosGateway:
    """A single-node Ceph cluster with one RGW on 127.0.0.1 (see module doc)."""

    access_key = "test"
    secret_key = "test"
    region = "us-east-1"
    KMS_KEY_ID = "testkey-1"

    def __init__(self, workdir: str | Path, objectstore: str = "memstore", port: int = 0) -> None:
        if objectstore not in ("memstore", "bluestore"):
            raise ValueError(f"objectstore must be memstore or bluestore, not {objectstore!r}")
        self.workdir = Path(workdir).resolve()
        self.objectstore = objectstore
        self.requested_port = port
        self.port = port
        self.mon_port = 0
        self.kms_key_id = self.KMS_KEY_ID
        self.conf = self.workdir / "ceph.conf"
        self.logdir = self.workdir / "log"
        self.fsid = str(uuid.uuid4())
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._pids: dict[str, int] = {}
        self._atexit = False
        longest = self.workdir / "run" / "ceph-client.rgw.a.asok"
        if len(str(longest).encode()) > 100:
            raise ValueError(f"workdir too long for a unix socket path: {longest}")

    # ------------------------------------------------------------------ API

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> RadosGateway:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(
        self,
        access_key: str | None = None,
        secret_key: str | None = None,
        *,
        expect_100_continue: bool = False,
        **config: Any,
    ) -> Any:
        """A boto3 S3 client for this gateway (path style, SigV4, us-east-1).

        ``config`` goes to botocore's ``Config``.  Unless
        ``expect_100_continue``, the client sends no ``Expect: 100-continue``
        (see the module docstring: botocore bug, 60 s stalls).
        """
        options: dict[str, Any] = {
            "signature_version": "s3v4",
            "s3": {"addressing_style": "path"},
            "retries": {"max_attempts": 2, "mode": "standard"},
        }
        options.update(config)
        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            config=Config(**options),
        )
        if not expect_100_continue:
            disable_expect_100_continue(client)
        return client

    def start(self, timeout: float = 120.0, *, detach: bool = False) -> None:
        """mkfs and start mon, osd, rgw; return once a PutObject works.

        With ``detach`` the daemons are not stopped when this Python process
        exits (the CLI uses it); otherwise an atexit hook stops them.
        """
        if self._pids:
            raise RuntimeError("already started")
        deadline = time.monotonic() + timeout
        self._prepare_workdir()
        try:
            with self._port_lock(deadline):
                self._pick_ports()
                self._write_conf()
                self._start_mon(deadline)
                self._start_osd(deadline)
                self._setup_rgw(deadline)
                self._start_rgw(deadline)
                self._wait_http(deadline)
            self._wait_put(deadline)
        except BaseException:
            self.stop()
            raise
        (self.workdir / "endpoint").write_text(self.endpoint + "\n")
        self._write_pids()
        if not detach and not self._atexit:
            atexit.register(self.stop)
            self._atexit = True

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM radosgw, osd, mon in turn; SIGKILL one not gone in ``grace`` s.

        One at a time: radosgw's shutdown talks to the OSD and the monitor and
        hangs if they are already gone.
        """
        pids = dict(self._pids)
        for name in _STOP_ORDER:
            pid = pids.get(name)
            if pid is None:
                continue
            proc = self._procs.get(name)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            if not self._wait_gone(pid, proc, grace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self._wait_gone(pid, proc, 5.0)
        self._pids.clear()
        self._procs.clear()
        with contextlib.suppress(FileNotFoundError):
            (self.workdir / "pids").unlink()

    def create_user(self, uid: str, access_key: str, secret_key: str) -> None:
        self._admin(
            "user",
            "create",
            "--uid",
            uid,
            "--display-name",
            uid,
            "--access-key",
            access_key,
            "--secret-key",
            secret_key,
            timeout=60,
        )

    @property
    def pids(self) -> dict[str, int]:
        return dict(self._pids)

    # ------------------------------------------------------------ detached

    @classmethod
    def stop_workdir(cls, workdir: str | Path, grace: float = 10.0) -> None:
        """Stop the daemons of a cluster started by another process (the CLI)."""
        workdir = Path(workdir).resolve()
        gw = cls(workdir)
        try:
            lines = (workdir / "pids").read_text().split()
        except FileNotFoundError:
            return
        conf = str(workdir / "ceph.conf")
        for name, text in zip(_STOP_ORDER, lines, strict=False):
            pid = int(text)
            # Do not signal a recycled PID: it must be our daemon with our conf.
            if _alive(pid) and conf in _cmdline(pid):
                gw._pids[name] = pid
        gw.stop(grace)
        with contextlib.suppress(FileNotFoundError):
            (workdir / "pids").unlink()

    # ------------------------------------------------------------- internals

    def _prepare_workdir(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        pidfile = self.workdir / "pids"
        if pidfile.exists():
            conf = str(self.conf)
            for text in pidfile.read_text().split():
                if _alive(int(text)) and conf in _cmdline(int(text)):
                    raise RuntimeError(f"a cluster is still running in {self.workdir}")
        # Only remove what this class creates.

        for name in ("ceph.conf", "monmap", "endpoint", "pids"):
            with contextlib.suppress(FileNotFoundError):
                (self.workdir / name).unlink()
        for name in ("mon.a", "osd.0", "rgw.a", "run", "log"):
            shutil.rmtree(self.workdir / name, ignore_errors=True)
        for name in ("mon.a", "rgw.a", "run", "log"):
            (self.workdir / name).mkdir()

    @contextlib.contextmanager
    def _port_lock(self, deadline: float) -> Iterator[None]:
        fd = os.open(_PORT_LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as e:
                    if e.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"timed out waiting for {_PORT_LOCK}") from None
                    time.sleep(0.1)
            yield
        finally:
            os.close(fd)

    def _pick_ports(self) -> None:
        rng = random.SystemRandom()
        starts = list(range(_PORT_LOW, _PORT_HIGH - _PORT_BLOCK, _PORT_BLOCK))
        rng.shuffle(starts)
        for base in starts:
            ports = range(base, base + _PORT_BLOCK)
            if self.requested_port in ports:
                continue
            if all(_port_free(p) for p in ports):
                if self.requested_port and not _port_free(self.requested_port):
                    raise RuntimeError(f"port {self.requested_port} is in use")
                self.mon_port = base
                self.port = self.requested_port or base + 1
                self.ms_port_min = base + 2
                self.ms_port_max = base + _PORT_BLOCK - 1
                return
        raise RuntimeError("no free block of loopback ports found")

    def _write_conf(self) -> None:
        w = self.workdir
        key = base64.b64encode(os.urandom(32)).decode()
        conf = f"""\
[global]
fsid = {self.fsid}
mon host = v2:127.0.0.1:{self.mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
ms bind ipv6 = false
ms bind port min = {self.ms_port_min}
ms bind port max = {self.ms_port_max}
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc secure
keyring = {w}/keyring
run dir = {w}/run
pid file = {w}/run/$cluster-$name.pid
admin socket = {w}/run/$cluster-$name.asok
log file = {w}/log/$cluster-$name.log
log to stderr = false
err to stderr = true
mon cluster log file = {w}/log/$cluster.log
mon data = {w}/mon.$id
osd data = {w}/osd.$id
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
mon max pg per osd = 1000
osd crush chooseleaf type = 0
mon data avail warn = 2
mon data avail crit = 1

[mon]
paxos propose interval = 0.05
paxos min wait = 0.01

[osd]
osd objectstore = {self.objectstore}
memstore device bytes = 17179869184
bluestore block path = {w}/osd.$id/block.file
bluestore block size = 10737418240
bluestore block create = true
bluestore fsck on mount = false
bluestore fsck on mkfs = false
osd memory target = 1073741824
osd op num shards = 2
osd op num threads per shard = 1
osd fast shutdown = true
osd fast shutdown notify mon = false
osd mon shutdown timeout = 1

[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:{self.port} tcp_nodelay=1
rgw data = {w}/rgw.a
rgw thread pool size = 64
rgw crypt require ssl = false
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = {self.kms_key_id}={key}
rgw gc obj min wait = 10
rgw gc processor period = 10
rgw gc processor max time = 10
"""
        self.conf.write_text(conf)
        (w / "keyring").write_text("")

    # --- helpers for running things

    def _run(self, args: list[str], deadline: float, log: str, timeout: float | None = None) -> str:
        remaining = deadline - time.monotonic()
        if timeout is not None:
            remaining = min(remaining, timeout)
        if remaining <= 0:
            raise RuntimeError(f"timed out before {' '.join(args)}\n" + self._tails(log))
        try:
            r = subprocess.run(
                args,
                check=False,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=remaining,
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(
                f"timed out: {' '.join(args)}\n"
                f"{(e.stderr or b'').decode(errors='replace')[-2000:]}\n" + self._tails(log)
            ) from None
        if r.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {r.returncode}:\n"
                f"{r.stdout.decode(errors='replace')[-2000:]}"
                f"{r.stderr.decode(errors='replace')[-4000:]}\n" + self._tails(log)
            )
        return r.stdout.decode()

    def _ceph(self, *args: str, deadline: float, log: str = "mon") -> str:
        return self._run(
            ["ceph", "-c", str(self.conf), "--connect-timeout", "30", *args], deadline, log
        )

    def _admin(
        self, *args: str, deadline: float | None = None, timeout: float | None = None
    ) -> str:
        if deadline is None:
            deadline = time.monotonic() + (timeout or 60)
        return self._run(
            ["radosgw-admin", "-c", str(self.conf), "-n", "client.admin", *args],
            deadline,
            "osd",
            timeout,
        )

    def _log(self, name: str) -> Path:
        return (
            self.logdir
            / {
                "mon": "ceph-mon.a.log",
                "osd": "ceph-osd.0.log",
                "radosgw": "ceph-client.rgw.a.log",
            }[name]
        )

    def _tails(self, *names: str) -> str:
        parts = []
        for name in names:
            parts.append(_tail(self._log(name)))
            stderr = self.logdir / f"{name}.stderr"
            if stderr.exists() and stderr.stat().st_size:
                parts.append(_tail(stderr, 20))
        return "\n".join(parts)

    def _spawn(self, name: str, args: list[str]) -> None:
        with open(self.logdir / f"{name}.stderr", "ab") as err:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._procs[name] = proc
        self._pids[name] = proc.pid

    def _check_running(self, name: str) -> None:
        proc = self._procs[name]
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}\n" + self._tails(name))

    def _wait_gone(self, pid: int, proc: subprocess.Popen[bytes] | None, timeout: float) -> bool:
        end = time.monotonic() + max(timeout, 0)
        while True:
            if proc is not None:
                if proc.poll() is not None:
                    return True
            elif not _alive(pid):
                return True
            if time.monotonic() >= end:
                return False
            time.sleep(0.05)

    # --- the steps

    def _start_mon(self, deadline: float) -> None:
        self._run(
            [
                "monmaptool",
                "--create",
                "--clobber",
                "--fsid",
                self.fsid,
                "--addv",
                "a",
                f"[v2:127.0.0.1:{self.mon_port}]",
                str(self.workdir / "monmap"),
            ],
            deadline,
            "mon",
        )
        self._run(
            [
                "ceph-mon",
                "-c",
                str(self.conf),
                "--mkfs",
                "-i",
                "a",
                "--monmap",
                str(self.workdir / "monmap"),
            ],
            deadline,
            "mon",
        )
        self._spawn("mon", ["ceph-mon", "-f", "-c", str(self.conf), "-i", "a"])

    def _start_osd(self, deadline: float) -> None:
        osd_uuid = str(uuid.uuid4())
        out = self._ceph("osd", "new", osd_uuid, deadline=deadline).strip()
        self.osd_id = int(out.splitlines()[-1])
        osd_dir = self.workdir / f"osd.{self.osd_id}"
        osd_dir.mkdir(exist_ok=True)
        self._run(
            [
                "ceph-osd",
                "-c",
                str(self.conf),
                "-i",
                str(self.osd_id),
                "--mkfs",
                "--osd-uuid",
                osd_uuid,
            ],
            deadline,
            "osd",
        )
        self._spawn("osd", ["ceph-osd", "-f", "-c", str(self.conf), "-i", str(self.osd_id)])
        while True:
            self._check_running("osd")
            dump = json.loads(self._ceph("osd", "dump", "-f", "json", deadline=deadline, log="osd"))
            if any(o["osd"] == self.osd_id and o["up"] for o in dump["osds"]):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "timed out waiting for the OSD to come up\n" + self._tails("osd", "mon")
                )
            time.sleep(0.1)

    def _setup_rgw(self, deadline: float) -> None:
        self._admin(
            "user",
            "create",
            "--uid",
            self.access_key,
            "--display-name",
            self.access_key,
            "--access-key",
            self.access_key,
            "--secret-key",
            self.secret_key,
            deadline=deadline,
        )
        self._admin(
            "zonegroup",
            "placement",
            "add",
            "--rgw-zonegroup",
            "default",
            "--placement-id",
            "default-placement",
            "--storage-class",
            "REDUCED_REDUNDANCY",
            deadline=deadline,
        )
        self._admin(
            "zone",
            "placement",
            "add",
            "--rgw-zone",
            "default",
            "--placement-id",
            "default-placement",
            "--storage-class",
            "REDUCED_REDUNDANCY",
            "--data-pool",
            "default.rgw.buckets.data",
            deadline=deadline,
        )

    def _start_rgw(self, deadline: float) -> None:
        self._spawn("radosgw", ["radosgw", "-f", "-c", str(self.conf), "-n", "client.rgw.a"])

    def _wait_http(self, deadline: float) -> None:
        while True:
            self._check_running("radosgw")
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.settimeout(1)
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out waiting for radosgw on port {self.port}\n" + self._tails("radosgw")
                )
            time.sleep(0.05)

    def _wait_put(self, deadline: float) -> None:
        s3 = self.client(connect_timeout=2, read_timeout=20, retries={"max_attempts": 1})
        bucket = f"rgw-probe-{uuid.uuid4().hex[:12]}"
        last: Exception | None = None
        while True:
            self._check_running("radosgw")
            try:
                s3.create_bucket(Bucket=bucket)
                s3.put_object(Bucket=bucket, Key="probe", Body=b"probe")
                s3.delete_object(Bucket=bucket, Key="probe")
                s3.delete_bucket(Bucket=bucket)
                return
            except Exception as e:  # retried until the deadline
                last = e
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"timed out waiting for a PutObject to work: {last!r}\n"
                    + self._tails("radosgw")
                )
            time.sleep(0.1)

    def _write_pids(self) -> None:
        (self.workdir / "pids").write_text(
            "".join(f"{self._pids[n]}\n" for n in _STOP_ORDER if n in self._pids)
        )


def _drop_expect(request: Any, **kwargs: Any) -> None:
    # Must return None: a before-send handler's return value is taken as the response.
    request.headers.pop("Expect", None)


def disable_expect_100_continue(client: Any) -> None:
    """Make a boto3 S3 client stop sending ``Expect: 100-continue``.

    The header is not signed, so dropping it is signature-safe.  Works around
    the botocore bug described in the module docstring.
    """
    client.meta.events.register("before-send.s3", _drop_expect)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_start = sub.add_parser("start", help="start a cluster detached")
    p_start.add_argument("workdir")
    p_start.add_argument("--port", type=int, default=0)
    p_start.add_argument("--objectstore", choices=("memstore", "bluestore"), default="memstore")
    p_start.add_argument("--timeout", type=float, default=120.0)
    p_stop = sub.add_parser("stop", help="stop the cluster of WORKDIR")
    p_stop.add_argument("workdir")
    args = parser.parse_args(argv)
    if args.command == "start":
        gw = RadosGateway(args.workdir, objectstore=args.objectstore, port=args.port)
        try:
            gw.start(args.timeout, detach=True)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            return 1
        print(gw.endpoint)
        return 0
    RadosGateway.stop_workdir(args.workdir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
