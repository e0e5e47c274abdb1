"""The counting and delaying S3 proxy of the benchmark, in a process of its own.

Every system under test talks to S3 through one of these: it counts the requests each
workload sends (what S3 bills) and, with ``--delay-ms``, adds that delay each way to mimic
a real region (this kernel has no netem qdisc). The proxy is tests/s3proxy.py's
``S3Proxy``; it runs in its own process so that its byte shuffling never competes for the
GIL with the benchmark's own timing or with a boto3 baseline.

The parent drives it over stdin/stdout, one command a line, one JSON answer a line::

    reset   -> {"ok": true}                  forget the requests seen so far
    stats   -> {"requests": N, "by_method": {...}, "bytes_in": B, "bytes_out": B}
    quit    -> (exits)

``python -m bench.proxy --upstream URL [--delay-ms N]`` prints its URL first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import IO, Any

from bench.common import REPO
from tests.s3proxy import S3Proxy


def serve(upstream: str, delay_ms: float, out: IO[str], inp: IO[str]) -> None:
    """Run the proxy until stdin says quit (or closes)."""
    proxy = S3Proxy(upstream, delay=delay_ms / 1000.0)
    proxy.start()
    print(proxy.url, file=out, flush=True)
    try:
        for line in inp:
            cmd = line.strip()
            if cmd == "quit":
                break
            print(json.dumps(_answer(proxy, cmd)), file=out, flush=True)
    finally:
        proxy.stop()


def _answer(proxy: S3Proxy, cmd: str) -> dict[str, Any]:
    if cmd == "reset":
        proxy.wait_idle(30.0)
        proxy.reset_counts()
        return {"ok": True}
    if cmd == "stats":
        proxy.wait_idle(30.0)
        records = proxy.requests
        by_method: dict[str, int] = {}
        for r in records:
            by_method[r.method] = by_method.get(r.method, 0) + 1
        return {
            "requests": len(records),
            "by_method": by_method,
            "bytes_in": sum(r.bytes_in for r in records),
            "bytes_out": sum(r.bytes_out for r in records),
        }
    return {"error": f"unknown command {cmd!r}"}


class ProxyProcess:
    """Parent side: start ``python -m bench.proxy`` and talk to it."""

    def __init__(self, upstream: str, delay_ms: float, log_path: Path) -> None:
        self.upstream = upstream
        self.delay_ms = delay_ms
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> ProxyProcess:
        argv = [sys.executable, "-m", "bench.proxy", "--upstream", self.upstream]
        argv += ["--delay-ms", str(self.delay_ms)]
        self._proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            cwd=REPO,
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()
        if not self.url.startswith("http://"):
            raise RuntimeError(f"proxy did not start (see {self._log.name})")
        return self

    def _ask(self, cmd: str) -> dict[str, Any]:
        proc = self._proc
        assert proc is not None and proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(cmd + "\n")
        proc.stdin.flush()
        answer: dict[str, Any] = json.loads(proc.stdout.readline())
        return answer

    def reset(self) -> None:
        self._ask("reset")

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                assert proc.stdin is not None
                proc.stdin.write("quit\n")
                proc.stdin.close()
                proc.wait(timeout=15)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        self._log.close()


class NoProxy:
    """Stands in for the proxy when systems talk to the server directly (``--direct``)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def reset(self) -> None:
        pass

    def stats(self) -> dict[str, Any]:
        return {}

    def stop(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    args = ap.parse_args(argv)
    serve(args.upstream, args.delay_ms, sys.stdout, sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
