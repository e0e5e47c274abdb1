"""Signals against a real daemon, in the foreground and in the background (README, "Signals").

SIGHUP reopens the log file and leaves the mount alone; SIGUSR1 and other stray signals are
logged and ignored; SIGTERM and SIGINT unmount cleanly, and a SIGTERM that arrives just
after `fusermount3 -u` (systemd stopping a unit whose mount was just unmounted) still ends
the daemon with exit code 0, never by the signal (143) or a segmentation fault (139).

A background daemon is not the test's child: it is started under a small reaper process
(PR_SET_CHILD_SUBREAPER) that inherits it when `mount` returns, so that its real exit
status is seen, as systemd would see it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.mounts import REPO, Mount, S3Server, free_port, s3_config, wait_until

REAPER = r"""
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
rc = subprocess.run(sys.argv[1:], stdin=subprocess.DEVNULL).returncode
me = os.getpid()
with open(f"/proc/{me}/task/{me}/children") as f:
    children = f.read().split()
print(rc, *children, flush=True)
if rc == 0 and children:
    pid, status = os.waitpid(int(children[0]), 0)
    print(os.waitstatus_to_exitcode(status), flush=True)
"""


class Daemon:
    """A mount of a fresh bucket, foreground (the test's child) or background (the
    reaper's); `kill` signals the daemon itself, `wait` returns its exit code."""

    def __init__(self, where: str, workdir: Path, server: S3Server, log_file: Path) -> None:
        self.server = server
        self.bucket = server.new_bucket()
        settings = {"log_level": "debug", "janitor": False, "log_file": str(log_file)}
        self._mount: Mount | None = None
        if where == "foreground":
            self._mount = Mount(workdir, server, self.bucket, mount=settings).start()
            assert self._mount.proc is not None
            self.path, self.pid = self._mount.path, self._mount.proc.pid
            return
        workdir.mkdir(parents=True, exist_ok=True)
        self.path = workdir / "mnt"
        self.path.mkdir(exist_ok=True)
        config = workdir / "config.yml"
        config.write_text(
            yaml.safe_dump({"storage": {"s3": s3_config(server, self.bucket)}, "mount": settings})
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        command = [sys.executable, "-m", "s3fs_registry", "mount", "--config", str(config)]
        self._reaper = subprocess.Popen(
            [sys.executable, "-c", REAPER, *command, str(self.path)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        assert self._reaper.stdout is not None
        first = self._reaper.stdout.readline().split()
        assert first and first[0] == "0", f"mount failed: {first}"
        self.pid = int(first[1])

    def kill(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float = 60) -> int:
        try:
            if self._mount is not None:
                return self._mount._wait(timeout)
            out, _ = self._reaper.communicate(timeout=timeout)
            return int(out.split()[0])
        finally:
            if os.path.ismount(self.path):
                subprocess.run(["fusermount3", "-u", "-z", str(self.path)], check=False)

    def key(self, name: str) -> bytes:
        return self.server.get(self.bucket, f"reg/{name}")


@pytest.mark.parametrize("where", ["foreground", "background"])
def test_sighup_reopens_the_log_and_stray_signals_are_ignored(
    moto: S3Server, tmp_path: Path, where: str
) -> None:
    """logrotate renames the log and sends SIGHUP: the daemon writes a new file and keeps
    serving; SIGUSR1, SIGUSR2, SIGALRM, SIGPWR and a real-time signal are logged and
    change nothing; SIGTERM then ends it with 0, every file in S3."""
    log_file = tmp_path / "daemon.log"
    daemon = Daemon(where, tmp_path / "d", moto, log_file)
    (daemon.path / "before").write_bytes(b"before")
    os.rename(log_file, tmp_path / "daemon.log.1")
    daemon.kill(signal.SIGHUP)
    assert wait_until(lambda: log_file.exists() and "SIGHUP" in log_file.read_text(), 10)
    assert os.path.ismount(daemon.path)
    (daemon.path / "after").write_bytes(b"after")
    assert "after" in log_file.read_text()  # the new file gets the lines that follow
    stray = [signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM, signal.SIGPWR, signal.SIGRTMIN + 3]
    for signum in stray:
        daemon.kill(signum)
    assert wait_until(lambda: log_file.read_text().count("ignored") >= len(stray), 10)
    assert os.path.ismount(daemon.path) and os.listdir(daemon.path) == ["after", "before"]
    (daemon.path / "last").write_bytes(b"last")
    daemon.kill(signal.SIGTERM)
    assert daemon.wait() == 0, log_file.read_text()[-3000:]
    assert not os.path.ismount(daemon.path)
    assert [daemon.key(n) for n in ("before", "after", "last")] == [b"before", b"after", b"last"]


@pytest.mark.parametrize("where", ["foreground", "background"])
def test_sigterm_just_after_unmount_ends_with_exit_code_0(
    moto: S3Server, tmp_path: Path, where: str
) -> None:
    """systemd stopping a unit whose mount was just unmounted: the SIGTERM lands while the
    daemon commits, unmounts, tears down, or exits; each time it ends with 0, never by the
    signal (143) or a segmentation fault (139). Delays of 0-40 ms cover those stages."""
    codes = []
    for attempt in range(10):
        log_file = tmp_path / f"daemon{attempt}.log"
        daemon = Daemon(where, tmp_path / f"d{attempt}", moto, log_file)
        (daemon.path / "f").write_bytes(b"x")
        subprocess.run(["fusermount3", "-u", str(daemon.path)], check=True)
        time.sleep(0.01 * (attempt % 5))
        with contextlib.suppress(ProcessLookupError):  # already gone: its code still counts
            daemon.kill(signal.SIGTERM)
        codes.append(daemon.wait())
        assert codes[-1] == 0, (codes, log_file.read_text()[-2000:])
        assert daemon.key("f") == b"x"


def test_sigterm_while_starting_stops_the_start(moto: S3Server, tmp_path: Path) -> None:
    """A stop while the daemon still waits for S3 (retrying an endpoint that does not answer):
    the start ends at once with 0 and nothing is mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    block = s3_config(moto, "b", regionendpoint=f"http://127.0.0.1:{free_port()}")
    config = tmp_path / "c.yml"
    settings = {"retry_time": 120, "log_level": "debug"}
    config.write_text(yaml.safe_dump({"storage": {"s3": block}, "mount": settings}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "s3fs_registry", "mount", "-f", "-c", str(config), str(mnt)],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert proc.stderr is not None
    seen = [proc.stderr.readline() for _ in range(2)]  # two attempts: into the retries
    assert all("ListObjectsV2" in line for line in seen), seen
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "SIGTERM before the mount was up" in err and not os.path.ismount(mnt)
