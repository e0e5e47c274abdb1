"""What the mount tells its operator: the Prometheus endpoint, `status`, and request logs.

One stack per S3 server for the module: the counting proxy, a mount behind it with the
metrics endpoint on a loopback port, and the registry on the mount. The counters are
checked against what the proxy saw during a real push and pull, and against faults the
proxy injects; `status` is asked while a writer holds a large file open; the endpoint must
listen exactly where it was told to and nowhere else.
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import MountFactory
from tests.mounts import REPO, Mount, S3Server, expect_errno, free_port, wait_until, write_file
from tests.registry import Registry, make_image, pull, pulled_blobs, push, random_layer
from tests.s3proxy import RequestRecord, S3Proxy
from tests.test_cli import run

MiB = 1024 * 1024
CHUNK = 5 * MiB
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

#: how a daemon operation shows at the proxy, which sees methods and queries but no headers
#: (a copy is a PUT like an upload, told apart only by its x-amz-copy-source header)
GROUPS = {
    "UploadPart": "PUT part",
    "UploadPartCopy": "PUT part",
    "PutObject": "PUT object",
    "CopyObject": "PUT object",
}


def http_operation(rec: RequestRecord) -> str:
    """The S3 operation (or GROUPS' group) of a request the proxy recorded."""
    params = dict(parse_qsl(rec.query, keep_blank_values=True))
    bucket_level = rec.path.strip("/").count("/") == 0
    if rec.method == "GET":
        if "list-type" in params:
            return "ListObjectsV2"
        if "uploads" in params:
            return "ListMultipartUploads"
        if "uploadId" in params:
            return "ListParts"
        return "GetBucketLocation" if "location" in params else "GetObject"
    if rec.method == "HEAD":
        return "HeadObject"
    if rec.method == "PUT":
        return "PUT part" if "partNumber" in params else "PUT object"
    if rec.method == "POST":
        if "delete" in params and bucket_level:
            return "DeleteObjects"
        return "CreateMultipartUpload" if "uploads" in params else "CompleteMultipartUpload"
    if rec.method == "DELETE":
        return "AbortMultipartUpload" if "uploadId" in params else "DeleteObject"
    return rec.method


def scrape(port: int, host: str = "127.0.0.1") -> Samples:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    return sum(
        value
        for (sample, sample_labels), value in samples.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    )


def by_operation(samples: Samples) -> dict[str, int]:
    counts: dict[str, int] = {}
    for (name, labels), value in samples.items():
        if name == "s3fs_registry_s3_requests_total" and value:
            group = GROUPS.get(dict(labels)["operation"], dict(labels)["operation"])
            counts[group] = counts.get(group, 0) + int(value)
    return counts


def proxy_by_operation(proxy: S3Proxy) -> dict[str, int]:
    counts: dict[str, int] = {}
    for rec in proxy.requests:
        op = http_operation(rec)
        counts[op] = counts.get(op, 0) + 1
    return counts


def status(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run("status", *args, str(path), timeout=60)


def status_as(uid: int, path: Path) -> tuple[int, str]:
    """`status` run by user `uid`: exit code and stderr. Forked, not executed: the venv's
    interpreter lives under /root, where another user cannot execute it."""
    from s3fs_registry import cli

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 99
        try:
            sys.stderr = os.fdopen(write_fd, "w")
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            code = cli.main(["status", str(path)])
        finally:
            sys.stderr.flush()
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        err = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status), err


def status_json(path: Path) -> dict[str, object]:
    result = status(path, "--json")
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on (/proc/net/tcp{,6})."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        with open(f"/proc/net/{table}") as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                    continue
                hex_addr, hex_port = fields[1].split(":")
                raw = bytes.fromhex(hex_addr)
                # the kernel prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if width == 8 else socket.AF_INET6
                found.add((socket.inet_ntop(family, words), int(hex_port, 16)))
    return found


@dataclass
class Watched:
    proxy: S3Proxy
    mount: Mount
    registry: Registry
    port: int

    def scrape(self) -> Samples:
        return scrape(self.port)

    @property
    def pid(self) -> int:
        assert self.mount.proc is not None
        return self.mount.proc.pid


@pytest.fixture(scope="module")
def watched(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Watched]:
    workdir = tmp_path_factory.mktemp("watched")
    port = free_port()
    with S3Proxy(s3.endpoint) as proxy:
        mount = Mount(
            workdir / "mount",
            s3,
            s3.new_bucket(),
            s3={"chunksize": CHUNK},
            endpoint=proxy.url,
            mount={"metrics_addr": f":{port}", "retry_attempts": 3, "retry_time": "5s"},
        ).start()
        registry = Registry(mount.path, workdir=workdir / "registry").start()
        try:
            yield Watched(proxy, mount, registry, port)
        finally:
            registry.stop()
            assert mount.stop() == 0, mount.log()[-4000:]


def counted_alike(watched: Watched) -> bool:
    watched.proxy.wait_idle()
    return by_operation(watched.scrape()) == proxy_by_operation(watched.proxy)


# -- the request counters ----------------------------------------------------------------------


@pytest.mark.registry
def test_request_counters_equal_what_the_proxy_saw_during_a_push_and_pull(
    watched: Watched, tmp_path: Path
) -> None:
    """Scraped every 0.2 s during a skopeo push and pull (a layer of two parts and a small
    one): the scrapes answer and the request total never goes down; afterwards the daemon's
    request counts per operation equal the proxy's (uploads and copies, which the proxy
    cannot tell apart, as groups), the object bytes it counts as written equal the bodies of
    the PUTs S3 accepted, and the bytes it read are no more than the GET bodies the proxy
    sent. FUSE operations and the latency histograms count the same traffic."""
    layers = [random_layer(CHUNK + 4096, 1), random_layer(3000, 2)]
    info = make_image(tmp_path / "img", layers, {"architecture": "amd64", "os": "linux"})
    totals: list[float] = []
    stop = threading.Event()

    def scraper() -> None:
        while not stop.wait(0.2):
            totals.append(total(watched.scrape(), "s3fs_registry_s3_requests_total"))

    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        push(tmp_path / "img", watched.registry.url, "watched/app:v1")
        pull(watched.registry.url, "watched/app:v1", tmp_path / "pulled")
    finally:
        stop.set()
        thread.join()
    assert set(info.blob_digests) <= set(pulled_blobs(tmp_path / "pulled"))
    assert len(totals) >= 2 and totals == sorted(totals), totals

    assert wait_until(lambda: counted_alike(watched), timeout=10)
    samples = watched.scrape()
    proxy = watched.proxy.requests
    assert total(samples, "s3fs_registry_s3_requests_total") == len(proxy)
    assert by_operation(samples) == proxy_by_operation(watched.proxy)
    accepted_puts = [r for r in proxy if r.method == "PUT" and r.status == 200]
    written = total(samples, "s3fs_registry_written_bytes_total")
    assert written == sum(r.bytes_in for r in accepted_puts)
    assert written >= sum(len(layer) for layer in layers)
    get_bodies = sum(r.bytes_out for r in proxy if http_operation(r) == "GetObject")
    read = total(samples, "s3fs_registry_read_bytes_total", source="s3")
    assert 0 < read <= get_bodies
    assert total(samples, "s3fs_registry_s3_request_duration_seconds_count") == len(proxy)
    for operation in ("create", "write", "rename", "read", "lookup"):
        assert total(samples, "s3fs_registry_fuse_operations_total", operation=operation) > 0
    assert total(samples, "s3fs_registry_cache_lookups_total", cache="links", result="hit") > 0
    assert total(samples, "s3fs_registry_mount_info", bucket=watched.mount.bucket) == 1


# -- faults --------------------------------------------------------------------------------------


def test_injected_faults_show_in_the_retry_and_failure_counters_and_the_logs(
    watched: Watched,
) -> None:
    """Two 500s before a PutObject succeeds are two retries; a PutObject that gets 500
    every time is three attempts (retry_attempts), two retries and one failure; a 403 is
    one attempt and a failure without retry. The FUSE errors carry the errnos; each attempt
    has its DEBUG line (key, size, status, latency, attempt) and each failed request one
    INFO line; `status` counts the errors and shows the last one."""
    d = watched.mount.path / "faults"
    d.mkdir()
    proxy = watched.proxy
    before = watched.scrape()
    proxy.add_fault("internal", method="PUT", path="/faults/retried$", times=2)
    write_file(d / "retried", b"third time lucky")
    proxy.add_fault("internal", method="PUT", path="/faults/failed$")
    expect_errno(errno.EIO, write_file, d / "failed", b"never stored")
    proxy.add_fault("access_denied", method="PUT", path="/faults/denied$")
    expect_errno(errno.EACCES, write_file, d / "denied", b"refused")
    proxy.clear_faults()
    assert wait_until(lambda: counted_alike(watched), timeout=10)
    after = watched.scrape()

    def delta(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    put = {"operation": "PutObject"}
    assert delta("s3fs_registry_s3_requests_total", **put, outcome="transient") == 5
    assert delta("s3fs_registry_s3_requests_total", **put, outcome="denied") == 1
    assert delta("s3fs_registry_s3_requests_total", **put, outcome="ok") == 1
    assert delta("s3fs_registry_s3_retries_total", **put) == 4
    assert delta("s3fs_registry_s3_failures_total", **put, outcome="transient") == 1
    assert delta("s3fs_registry_s3_failures_total", **put, outcome="denied") == 1
    assert delta("s3fs_registry_fuse_errors_total", operation="flush", errno="EIO") == 1
    assert delta("s3fs_registry_fuse_errors_total", operation="flush", errno="EACCES") == 1

    log = watched.mount.log()
    key = watched.mount.prefix + "faults/"
    for attempt in (1, 2):
        assert re.search(
            rf"DEBUG s3fs_registry\.store: S3 PutObject {key}retried size=16 status=500 "
            rf"latency=\d+\.\d+s attempt={attempt} outcome=transient: ",
            log,
        ), attempt
    assert re.search(rf"S3 PutObject {key}retried size=16 status=200 .* attempt=3 outcome=ok", log)
    failed = [line for line in log.splitlines() if "S3 request failed after" in line]
    assert any(" INFO " in line and "3 attempt(s)" in line and "failed:" in line for line in failed)
    assert any(" INFO " in line and "1 attempt(s)" in line and "denied:" in line for line in failed)
    assert not any(f"{key}retried" in line for line in failed)

    report = status_json(watched.mount.path)
    last = report["last_error"]
    assert isinstance(last, dict) and "faults/denied" in last["key"] and last["final"]
    recent = report["requests"]
    assert isinstance(recent, dict)
    assert recent["15"]["errors"] >= 6 and recent["15"]["retries"] >= 4
    assert recent["15"]["failures"] >= 2
    text = status(watched.mount.path).stdout
    assert "last S3 error" in text and "faults/denied" in text and "AccessDenied" in text


# -- status --------------------------------------------------------------------------------------

WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
for _ in range(int(sys.argv[2])):
    os.write(fd, os.urandom(1024 * 1024))
print("written", flush=True)
sys.stdin.read()
os.close(fd)
"""


def test_status_reports_an_upload_in_flight_while_a_large_write_is_pending(
    watched: Watched,
) -> None:
    """A writer (its own process: a fork of this one would close, and so flush, the file)
    has written 12 MiB and keeps the file open: `status` lists the upload with 12 MiB
    written and two 5 MiB parts in S3, the gauge says one upload in flight; once the writer
    closes, the upload is gone from both."""
    d = watched.mount.path / "inflight"
    d.mkdir()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(d / "big"), "12"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == b"written\n"

        def two_parts_stored() -> bool:
            uploads = status_json(watched.mount.path)["uploads"]
            return isinstance(uploads, list) and [u["parts"] for u in uploads] == [2]

        assert wait_until(two_parts_stored, timeout=30)
        [upload] = status_json(watched.mount.path)["uploads"]  # type: ignore[misc]
        assert upload["key"] == watched.mount.prefix + "inflight/big"
        assert upload["written"] == 12 * MiB and upload["stored"] == 2 * CHUNK
        result = status(watched.mount.path)
        assert result.returncode == 0, result.stderr
        assert "uploads in flight: 1" in result.stdout
        assert "inflight/big: 12.0 MiB written, 10.0 MiB in S3 (2 parts)" in result.stdout
        assert f"s3://{watched.mount.bucket}/{watched.mount.prefix}" in result.stdout
        assert total(watched.scrape(), "s3fs_registry_uploads_in_flight") == 1
    finally:
        assert writer.stdin is not None
        writer.stdin.close()
        assert writer.wait(timeout=60) == 0
    assert watched.mount.object("inflight/big") is not None
    assert status_json(watched.mount.path)["uploads"] == []
    assert "uploads in flight: 0" in status(watched.mount.path).stdout
    assert total(watched.scrape(), "s3fs_registry_uploads_in_flight") == 0


def control_socket(mount: Mount) -> Path:
    from s3fs_registry.status import socket_name

    return Path("/run/s3fs-registry") / socket_name(str(mount.path))


def test_status_answers_only_root_and_the_owner_and_says_why_it_cannot(
    watched: Watched, tmp_path: Path
) -> None:
    """The control socket is root's, mode 0600: user nobody gets permission denied, and
    even with the mode opened up the daemon refuses (SO_PEERCRED), exit 10 both times. A
    path that is no mount, or another file system's, is exit 9; a daemon that does not
    answer (stopped) is exit 10 after --timeout. Every failure is one line."""
    sock = control_socket(watched.mount)
    info = os.stat(sock)
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == 0
    code, err = status_as(65534, watched.mount.path)
    assert code == 10 and "permission denied" in err, (code, err)
    os.chmod(sock, 0o666)
    try:
        code, err = status_as(65534, watched.mount.path)
    finally:
        os.chmod(sock, 0o600)
    assert code == 10 and "refused" in err, (code, err)
    assert "refused a client with uid 65534" in watched.mount.log()

    for path, why in ((tmp_path, "not a mount point"), (Path("/proc"), "a proc mount")):
        result = status(path)
        assert result.returncode == 9, result
        assert result.stderr.strip().count("\n") == 0 and why in result.stderr, result.stderr

    os.kill(watched.pid, signal.SIGSTOP)
    try:
        stopped = status(watched.mount.path, "--timeout", "1")
    finally:
        os.kill(watched.pid, signal.SIGCONT)
    assert stopped.returncode == 10 and "does not answer" in stopped.stderr, stopped
    assert stopped.stderr.strip().count("\n") == 0
    assert status(watched.mount.path).returncode == 0


# -- where the endpoint listens --------------------------------------------------------------


def test_the_endpoint_listens_only_where_configured(watched: Watched) -> None:
    """`:PORT` is 127.0.0.1:PORT, and the daemon listens on nothing else."""
    assert listening(watched.pid) == {("127.0.0.1", watched.port)}


@pytest.mark.parametrize("form", ["PORT", "localhost:PORT", "[::1]:PORT", "0.0.0.0:PORT", ""])
def test_each_address_form_binds_exactly_its_address(
    moto: S3Server, mount_factory: MountFactory, form: str
) -> None:
    """A bare port is the loopback address, an explicit address is that address, and
    without the setting the daemon listens on no TCP port at all. (Independent of the S3
    server: moto only.)"""
    port = free_port()
    m = mount_factory(moto, mount={"metrics_addr": form.replace("PORT", str(port))})
    assert m.proc is not None
    expected = {
        "PORT": {("127.0.0.1", port)},
        "localhost:PORT": {("127.0.0.1", port)},
        "[::1]:PORT": {("::1", port)},
        "0.0.0.0:PORT": {("0.0.0.0", port)},
        "": set(),
    }[form]
    assert listening(m.proc.pid) == expected
    if expected:
        host = next(iter(expected))[0]
        samples = scrape(port, f"[{host}]" if ":" in host else host)
        assert total(samples, "s3fs_registry_start_time_seconds") > 0


def test_a_starting_daemon_removes_the_sockets_of_dead_daemons(
    watched: Watched, moto: S3Server, mount_factory: MountFactory
) -> None:
    """A daemon killed with SIGKILL leaves its socket behind; the next daemon to start
    removes it (nothing listens on it), and leaves the sockets of live daemons alone."""
    stale = Path("/run/s3fs-registry") / f"stale-test-{os.getpid()}.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(stale))
        dead.listen()
    assert stale.exists()
    mount_factory(moto)
    assert not stale.exists()
    assert control_socket(watched.mount).exists()
    assert status(watched.mount.path).returncode == 0


def test_a_busy_port_stops_the_daemon_at_start(moto: S3Server, tmp_path: Path) -> None:
    """Another process holds the port: exit 2 with one line naming the setting, and
    nothing is mounted."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        mount = Mount(tmp_path / "m", moto, moto.new_bucket(), mount={"metrics_addr": str(port)})
        result = run("mount", "--config", str(mount.config_path), str(mount.path), env=mount.env)
    assert result.returncode == 2, result
    line = result.stderr.strip()
    assert "\n" not in line and f"mount.metrics_addr 127.0.0.1:{port}" in line, line
    assert not os.path.ismount(mount.path)


# -- the dashboard -------------------------------------------------------------------------------


@pytest.mark.registry
def test_the_dashboard_queries_only_metrics_the_endpoint_exports(watched: Watched) -> None:
    """Every metric name in doc/grafana-dashboard.json's queries is exported (scraped
    after the push and pull above, so the histograms and labelled series exist)."""
    dashboard = json.loads((REPO / "doc" / "grafana-dashboard.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 10
    used = {
        name
        for expr in exprs
        for name in re.findall(r"\b((?:s3fs_registry|process)_[a-z_]+)\b", expr)
    }
    with urllib.request.urlopen(f"http://127.0.0.1:{watched.port}/metrics") as resp:
        text = resp.read().decode()
    exported = {name for name, _ in watched.scrape()}  # samples, and families without any:
    exported |= set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    assert used and used <= exported, used - exported


def test_the_dashboard_json_is_generated_from_its_panels() -> None:
    """doc/grafana-dashboard.json is what `python bench/dashboard.py json` writes."""
    from bench.dashboard import grafana_dashboard

    committed = json.loads((REPO / "doc" / "grafana-dashboard.json").read_text())
    assert committed == grafana_dashboard()
