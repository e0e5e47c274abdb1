"""How each file system under test is mounted, and its daemon's PID for peak RSS.

* ``mount``: this project, ``python -m s3fs_registry mount --foreground`` through
  tests/mounts.py's ``Mount`` (the config it writes: ``storage.s3`` with
  ``regionendpoint``, ``bucket``, ``rootdirectory`` "", the default 10 MiB chunk size).
* ``s3fs``: Debian's s3fs-fuse, in the foreground, with only what a non-AWS endpoint
  needs: ``url``, ``use_path_request_style``, ``passwd_file``, ``endpoint`` (the SigV4
  region), ``sigv4``; everything else (10 MB parts, 5 parallel, 900 s stat cache) default.
* ``rclone-off`` / ``rclone-writes``: ``rclone mount`` with ``--vfs-cache-mode off`` /
  ``writes`` and a remote of type s3 given by environment variables (provider ``Ceph`` on
  RGW, ``Other`` on moto), otherwise rclone's defaults. With ``writes`` the upload starts
  ``--vfs-write-back`` (5 s) after close() returned, which is why every timed write waits
  until S3 has the object (the time until close() returned is kept as ``returned_s``).
  On moto only, ``no_head`` is set: moto answers CompleteMultipartUpload with
  ``x-amz-version-id: null`` on an unversioned bucket and then 400 to rclone's verifying
  HEAD ?versionId=null. (rclone's streaming upload, used by ``off``, HEADs regardless, so
  ``rclone-off`` cannot write on moto at all.)

Every system sees the bucket root, so a file's path below the mount point is its key.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.common import BenchError, Endpoint, last_line, vm_hwm
from tests.mounts import Mount, S3Server, free_port

FS_SYSTEMS = ("mount", "s3fs", "rclone-off", "rclone-writes")
#: this mount with its blob cache (`mount.cache_dir`), kept across the mounts of a bucket;
#: registry workloads only, and only when asked for (not in the default systems)
CACHE_SYSTEM = "mount-cache"
CACHE_SIZE = 4 * 1024**3
DEFAULT_SYSTEMS = (*FS_SYSTEMS, "boto3", "boto3-tm", "boto3-get", "native")
ALL_SYSTEMS = (*DEFAULT_SYSTEMS, CACHE_SYSTEM)


class Mounted:
    """A mounted file system: where it is, its daemon, and how to take it down."""

    def __init__(
        self,
        system: str,
        path: Path,
        pid: int,
        stop: Callable[[], int],
        settle: Callable[[float], None] | None = None,
    ) -> None:
        self.system = system
        self.path = path
        self.pid = pid
        self._stop = stop
        self._settle = settle
        self.exit_code: int | None = None

    def rss(self) -> int | None:
        return vm_hwm(self.pid)

    def settle(self, timeout: float) -> None:
        """Wait until the daemon has uploaded what it acknowledged before uploading.

        Only rclone's cache mode needs it: it uploads after close() and drops what is
        still queued when it is unmounted, which the next mount (with a fresh cache)
        would see as lost data.
        """
        if self._settle is not None:
            self._settle(timeout)

    def stop(self) -> int:
        if self.exit_code is None:
            self.exit_code = self._stop()
        return self.exit_code


class Mounter:
    """Mounts the file systems under test against one endpoint (proxy or server)."""

    def __init__(
        self,
        server: S3Server,
        endpoint: Endpoint,
        *,
        provider: str,
        mount_options: dict[str, Any] | None = None,
        s3fs_options: Sequence[str] = (),
        rclone_flags: Sequence[str] = (),
    ) -> None:
        self.server = server
        self.endpoint = endpoint
        self.provider = provider
        self.mount_options = dict(mount_options or {})
        self.s3fs_options = list(s3fs_options)
        self.rclone_flags = list(rclone_flags)

    def mount(self, system: str, bucket: str, workdir: Path) -> Mounted:
        """Mount ``bucket`` for ``system`` under ``workdir``/mnt; raise BenchError if it fails."""
        workdir.mkdir(parents=True, exist_ok=True)
        if system == "mount":
            return self._mount_ours(bucket, workdir)
        if system == CACHE_SYSTEM:
            # the same for every mount of the bucket; `--mount-opt cache_dir=D` puts it in D
            cache = Path(self.mount_options.get("cache_dir") or workdir) / workdir.name
            cache.mkdir(parents=True, exist_ok=True)
            return self._mount_ours(
                bucket, workdir, {"cache_dir": str(cache), "cache_size": CACHE_SIZE}, system
            )
        if system == "s3fs":
            return self._mount_s3fs(bucket, workdir)
        if system in ("rclone-off", "rclone-writes"):
            return self._mount_rclone(bucket, workdir, system.split("-", 1)[1])
        raise ValueError(f"{system} is not a file system")

    def _mount_ours(
        self,
        bucket: str,
        workdir: Path,
        extra: dict[str, Any] | None = None,
        system: str = "mount",
    ) -> Mounted:
        # `--mount-opt cache_dir=D` says where mount-cache keeps its caches, for it only
        options = {k: v for k, v in self.mount_options.items() if k != "cache_dir"}
        mount = Mount(
            workdir,
            self.server,
            bucket,
            s3={"rootdirectory": ""},
            mount={"log_level": "info", **options, **(extra or {})},
            endpoint=self.endpoint.url,
        )
        try:
            mount.start(timeout=60.0)
        except RuntimeError as e:
            raise BenchError(f"mount failed: {last_line(str(e))}") from None
        assert mount.proc is not None
        return Mounted(system, mount.path, mount.proc.pid, mount.stop)

    def _mount_s3fs(self, bucket: str, workdir: Path) -> Mounted:
        passwd = workdir / "passwd-s3fs"
        passwd.write_text(f"{self.endpoint.access_key}:{self.endpoint.secret_key}\n")
        passwd.chmod(0o600)
        tmp = workdir / "s3fs-tmp"
        tmp.mkdir(exist_ok=True)
        options = [
            f"url={self.endpoint.url}",
            "use_path_request_style",
            f"passwd_file={passwd}",
            f"endpoint={self.endpoint.region}",
            "sigv4",
            f"tmpdir={tmp}",
            "dbglevel=warn",
            *self.s3fs_options,
        ]
        argv = ["s3fs", bucket, "", "-f", "-o", ",".join(options)]
        return self._spawn("s3fs", argv, workdir, _clean_env())

    def _mount_rclone(self, bucket: str, workdir: Path, mode: str) -> Mounted:
        cache = workdir / "rclone-cache"
        shutil.rmtree(cache, ignore_errors=True)  # a remount starts cold
        config = workdir / "rclone.conf"
        config.write_text("")
        env = _clean_env()
        env.update(
            RCLONE_CONFIG=str(config),
            RCLONE_CONFIG_BENCH_TYPE="s3",
            RCLONE_CONFIG_BENCH_PROVIDER=self.provider,
            RCLONE_CONFIG_BENCH_ENDPOINT=self.endpoint.url,
            RCLONE_CONFIG_BENCH_ACCESS_KEY_ID=self.endpoint.access_key,
            RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY=self.endpoint.secret_key,
            RCLONE_CONFIG_BENCH_REGION=self.endpoint.region,
            RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE="true",
        )
        if self.provider == "Other":
            # moto answers CompleteMultipartUpload with "x-amz-version-id: null" on an
            # unversioned bucket, then 400 to rclone's HEAD ?versionId=null, so every
            # multipart upload of rclone fails on moto; not rclone's fault, so skip the HEAD.
            env["RCLONE_CONFIG_BENCH_NO_HEAD"] = "true"
        argv = ["rclone", "mount", f"bench:{bucket}", "", "--vfs-cache-mode", mode]
        argv += ["--cache-dir", str(cache), "--log-level", "NOTICE"]
        settle = None
        if mode == "writes":
            rc = f"127.0.0.1:{free_port()}"
            argv += ["--rc", f"--rc-addr={rc}", "--rc-no-auth"]
            settle = functools.partial(_rclone_settle, rc)
        argv += self.rclone_flags
        return self._spawn(f"rclone-{mode}", argv, workdir, env, settle)

    def _spawn(
        self,
        system: str,
        argv: list[str],
        workdir: Path,
        env: dict[str, str],
        settle: Callable[[float], None] | None = None,
    ) -> Mounted:
        """Start a FUSE daemon in the foreground ("" in argv is the mount point)."""
        path = workdir / "mnt"
        path.mkdir(exist_ok=True)
        argv = [str(path) if a == "" else a for a in argv]
        log_path = workdir / f"{system}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env
            )
        deadline = time.monotonic() + 60.0
        while not os.path.ismount(path):
            if proc.poll() is not None or time.monotonic() > deadline:
                _kill(proc, path)
                tail = log_path.read_text(errors="replace")
                raise BenchError(f"{system} did not mount: {last_line(tail)}")
            time.sleep(0.05)
        return Mounted(system, path, proc.pid, lambda: _stop(path, proc, workdir), settle)


def _rclone_settle(rc_addr: str, timeout: float) -> None:
    """Wait until rclone's VFS cache has no upload queued or running (rc ``vfs/stats``)."""
    deadline = time.monotonic() + timeout
    while True:
        req = urllib.request.Request(
            f"http://{rc_addr}/vfs/stats", data=b"{}", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            cache = json.loads(resp.read()).get("diskCache", {})
        if cache.get("erroredFiles"):
            raise BenchError(f"rclone: {cache['erroredFiles']} file(s) failed to upload")
        if not cache.get("uploadsInProgress") and not cache.get("uploadsQueued"):
            return
        if time.monotonic() > deadline:
            raise BenchError(f"rclone still uploading after {timeout:.0f}s")
        time.sleep(0.1)


def _clean_env() -> dict[str, str]:
    """The environment without AWS_* and RCLONE_* variables.

    The peers must use the credentials and endpoint given here: rclone refuses to start
    with ``AWS_CA_BUNDLE`` set ("unsupported transport"), and s3fs would prefer
    ``AWS_ACCESS_KEY_ID`` to its password file.
    """
    return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}


def _stop(path: Path, proc: subprocess.Popen[bytes], workdir: Path) -> int:
    """Unmount, then drop rclone's cache: 8 GiB a run of workload 12, which filled the disk
    of a 3-run benchmark when kept."""
    code = _unmount(path, proc)
    shutil.rmtree(workdir / "rclone-cache", ignore_errors=True)
    return code


def _unmount(path: Path, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int:
    """fusermount3 -u (retried while busy), then wait for the daemon to exit."""
    for _ in range(50):
        if not os.path.ismount(path):
            break
        done = subprocess.run(["fusermount3", "-u", str(path)], check=False, capture_output=True)
        if done.returncode == 0:
            break
        time.sleep(0.1)
    else:
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc, path)
        return -9


def _kill(proc: subprocess.Popen[bytes], path: Path | None = None) -> None:
    """Kill a daemon we started, and lazily unmount what it leaves behind."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    if path is not None and os.path.ismount(path):
        subprocess.run(["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True)
