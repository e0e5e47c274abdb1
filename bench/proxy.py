"""The counting S3 proxy of the benchmark and its link model, in a process of its own.

Every system under test talks to S3 through one of these: it counts the requests each
workload sends (what S3 bills) and, on a link shape other than loopback, models a real
network link in front of them (bench/link.py: a round trip added to every piece of data and
to every new connection, a rate cap per connection and direction; this kernel has no netem
qdisc). The counting proxy is tests/s3proxy.py's ``S3Proxy``; it runs in its own process so
that its byte shuffling never competes for the GIL with the benchmark's own timing or with a
boto3 baseline.

The parent drives it over stdin/stdout, one command a line, one JSON answer a line::

    reset       -> {"ok": true, "cpu_s": T}   forget the requests seen so far
    stats       -> {"requests": N, "by_method": {...}, "bytes_in": B, "bytes_out": B,
                    "serial": S, "connections": C, "cpu_s": T}
    dump PATH   -> {"ok": true}        write every request (method, path, query, status,
                                       start, end, bytes) seen since the reset as JSON
    quit        -> (exits)

``serial`` is the number of serial round trips of the requests since the reset (see
``serial_round_trips``), ``connections`` the client connections opened since the reset,
``cpu_s`` the CPU seconds this process has used in all (the parent takes differences).

``python -m bench.proxy --upstream URL [--link RTT_MS/MIBPS]`` prints its URL first.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from bench.common import REPO
from bench.link import Link, LinkShape
from tests.s3proxy import RequestRecord, S3Proxy


def serve(upstream: str, shape: LinkShape, out: IO[str], inp: IO[str]) -> None:
    """Run the proxy (behind the link model unless loopback) until stdin says quit."""
    proxy = S3Proxy(upstream)
    proxy.start()
    link = None if shape.loopback else Link(shape, proxy.adopt).start()
    counter = _Counter(proxy, link, shape)
    print(link.url if link else proxy.url, file=out, flush=True)
    try:
        for line in inp:
            cmd, _, arg = line.strip().partition(" ")
            if cmd == "quit":
                break
            print(json.dumps(counter.answer(cmd, arg)), file=out, flush=True)
    finally:
        if link is not None:
            link.stop()
        proxy.stop()


class _Counter:
    """Answers the parent's commands from the proxy's request records."""

    def __init__(self, proxy: S3Proxy, link: Link | None, shape: LinkShape) -> None:
        self.proxy = proxy
        self.link = link
        self.shape = shape
        self.connections_at_reset = 0

    def _connections(self) -> int:
        return self.link.connections if self.link else self.proxy.connections

    def answer(self, cmd: str, arg: str) -> dict[str, Any]:
        if cmd == "reset":
            self.proxy.wait_idle(30.0)
            self.proxy.reset_counts()
            self.connections_at_reset = self._connections()
            times = os.times()
            return {"ok": True, "cpu_s": times.user + times.system}
        if cmd == "stats":
            self.proxy.wait_idle(30.0)
            return self._stats(self.proxy.requests)
        if cmd == "dump":
            self.proxy.wait_idle(30.0)
            rows = [_row(r) for r in self.proxy.requests]
            Path(arg).write_text(json.dumps(rows, indent=0))
            return {"ok": True}
        return {"error": f"unknown command {cmd!r}"}

    def _stats(self, records: list[RequestRecord]) -> dict[str, Any]:
        by_method: dict[str, int] = {}
        for r in records:
            by_method[r.method] = by_method.get(r.method, 0) + 1
        times = os.times()
        return {
            "requests": len(records),
            "by_method": by_method,
            "bytes_in": sum(r.bytes_in for r in records),
            "bytes_out": sum(r.bytes_out for r in records),
            "serial": serial_round_trips(
                [(r.started, r.started + r.duration) for r in records], self.shape.rtt_ms / 1000
            ),
            "connections": self._connections() - self.connections_at_reset,
            "cpu_s": times.user + times.system,
        }


def _row(r: RequestRecord) -> dict[str, Any]:
    return {
        "method": r.method,
        "path": r.path,
        "query": r.query,
        "status": r.status,
        "start": r.started,
        "end": r.started + r.duration,
        "bytes_in": r.bytes_in,
        "bytes_out": r.bytes_out,
        "connection": r.connection,
    }


def serial_round_trips(spans: Sequence[tuple[float, float]], rtt: float = 0.0) -> int:
    """The length of the longest chain of requests each of which starts after the one
    before it ended: the requests that wait on each other (bench/README.md).

    ``spans`` are (start, end) as the proxy saw them: the start when the request head
    reached it, the end when the last byte of the answer left it. Behind the link model the
    client sent each request half a round trip earlier and got the answer half a round trip
    later, so a request follows another when it starts at least ``rtt`` after that one's
    end. Longest chain by dynamic programming over the requests sorted by end:
    ``chain(r) = 1 + max(chain(q) for q ending at least rtt before r starts)``.
    """
    ordered = sorted(spans, key=lambda s: s[1])
    ends = [end for _, end in ordered]
    best_upto = [0]  # best_upto[k]: longest chain among the first k requests by end
    for start, _ in ordered:
        k = bisect.bisect_right(ends, start - rtt)
        best_upto.append(max(best_upto[-1], 1 + best_upto[k]))
    return best_upto[-1]


class ProxyProcess:
    """Parent side: start ``python -m bench.proxy`` and talk to it."""

    def __init__(self, upstream: str, shape: LinkShape, log_path: Path) -> None:
        self.upstream = upstream
        self.shape = shape
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._proc: subprocess.Popen[str] | None = None
        self.url = ""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> ProxyProcess:
        argv = [sys.executable, "-m", "bench.proxy", "--upstream", self.upstream]
        argv += ["--link", self.shape.key]
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

    def reset(self) -> dict[str, Any]:
        return self._ask("reset")

    def stats(self) -> dict[str, Any]:
        return self._ask("stats")

    def dump(self, path: Path) -> None:
        self._ask(f"dump {path}")

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

    def reset(self) -> dict[str, Any]:
        return {}

    def stats(self) -> dict[str, Any]:
        return {}

    def dump(self, path: Path) -> None:
        pass

    def stop(self) -> None:
        pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--upstream", required=True)
    ap.add_argument(
        "--link", type=LinkShape.parse, default=LinkShape(), help="RTT_MS/MIBPS, 0: loopback"
    )
    args = ap.parse_args(argv)
    serve(args.upstream, args.link, sys.stdout, sys.stdin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
