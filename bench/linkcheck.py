"""Check the link model itself: what it delays, what it caps, what it costs.

    python -m bench.linkcheck [--link 20/20] [--connections 1,4,10,16] [--mib 128]

Starts a trivial upstream in its own process (answers every GET with ``--mib`` MiB of
zeros, every PUT by reading its body, HEAD with nothing), the benchmark's proxy process with
the link in front, and measures through it, from this process:

* the time of a small request on a fresh connection (should be 2 round trips: handshake and
  request) and on a kept-alive one (1 round trip);
* the aggregate download and upload rate of N connections at once, each moving ``--mib``
  MiB (should be N x the cap until the proxy or the machine is the limit);
* the proxy process's CPU seconds per GiB moved, and the request count it reports.

Prints one JSON line per measurement. It needs no S3 server, so it measures only the link
and the counting proxy (on this 2-core machine the client and upstream share the CPUs).
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import REPO, MiB
from bench.link import LinkShape
from bench.proxy import ProxyProcess

_ZEROS = bytes(MiB)
_SELF = [sys.executable, "-m", "bench.linkcheck"]


class _Zeros(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    size = 0

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(self.size))
        self.end_headers()
        left = self.size
        view = memoryview(_ZEROS)
        while left:
            n = min(left, len(_ZEROS))
            self.wfile.write(view[:n])
            left -= n

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_PUT(self) -> None:
        left = int(self.headers.get("Content-Length", "0"))
        while left:
            left -= len(self.rfile.read(min(left, MiB)))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


def upstream_main(port_file: str, size: int) -> None:
    _Zeros.size = size
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Zeros)
    Path(port_file).write_text(str(server.server_address[1]))
    server.serve_forever()


def _netloc(url: str) -> str:
    return url.split("//", 1)[1]


def _timed_head(netloc: str, conn: http.client.HTTPConnection | None = None) -> float:
    fresh = conn is None
    c = conn or http.client.HTTPConnection(netloc, timeout=60)
    t0 = time.perf_counter()
    c.request("HEAD", "/b/k")
    c.getresponse().read()
    took = time.perf_counter() - t0
    if fresh:
        c.close()
    return took


def _get(netloc: str) -> int:
    c = http.client.HTTPConnection(netloc, timeout=300)
    c.request("GET", "/b/k")
    resp = c.getresponse()
    buf = bytearray(MiB)
    n = 0
    while got := resp.readinto(buf):
        n += got
    c.close()
    return n


def _put(netloc: str, size: int) -> int:
    c = http.client.HTTPConnection(netloc, timeout=300)
    c.putrequest("PUT", "/b/k")
    c.putheader("Content-Length", str(size))
    c.endheaders()
    left = size
    while left:
        n = min(left, MiB)
        c.send(_ZEROS[:n])
        left -= n
    c.getresponse().read()
    c.close()
    return size


def measure(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    size = args.mib * MiB
    port_file = workdir / "upstream.port"
    up = subprocess.Popen(
        [*_SELF, "--upstream-only", str(port_file), "--mib", str(args.mib)],
        cwd=REPO,
    )
    results = []
    try:
        while not port_file.exists() or not port_file.read_text():
            time.sleep(0.05)
        upstream = f"http://127.0.0.1:{port_file.read_text()}"
        proxy = ProxyProcess(upstream, args.link, workdir / "proxy.log").start()
        try:
            netloc = _netloc(proxy.url)
            fresh = min(_timed_head(netloc) for _ in range(5))
            kept = http.client.HTTPConnection(netloc, timeout=60)
            _timed_head(netloc, kept)
            again = min(_timed_head(netloc, kept) for _ in range(5))
            kept.close()
            results.append(
                {"link": args.link.key, "fresh_head_ms": fresh * 1000, "kept_head_ms": again * 1000}
            )
            for n in args.connections:
                for direction in ("down", "up"):
                    results.append(_aggregate(proxy, netloc, n, size, direction, args.link))
        finally:
            proxy.stop()
    finally:
        up.kill()
        up.wait()
    return results


def _aggregate(
    proxy: ProxyProcess, netloc: str, n: int, size: int, direction: str, link: LinkShape
) -> dict[str, Any]:
    proxy.reset()
    cpu0 = proxy.stats()["cpu_s"]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=n) as pool:
        if direction == "down":
            moved = sum(pool.map(lambda _: _get(netloc), range(n)))
        else:
            moved = sum(pool.map(lambda _: _put(netloc, size), range(n)))
    seconds = time.perf_counter() - t0
    stats = proxy.stats()
    cpu = stats["cpu_s"] - cpu0
    return {
        "link": link.key,
        "direction": direction,
        "connections": n,
        "MiB_per_s": moved / seconds / MiB,
        "per_connection_MiB_per_s": moved / seconds / MiB / n,
        "proxy_cpu_s_per_GiB": cpu / (moved / 1024 / MiB),
        "proxy_cpu_share": cpu / seconds,
        "requests": stats["requests"],
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--link", type=LinkShape.parse, default=LinkShape(20, 20))
    ap.add_argument(
        "--connections", type=lambda t: [int(x) for x in t.split(",")], default=[1, 4, 10, 16]
    )
    ap.add_argument("--mib", type=int, default=128, help="MiB per connection")
    ap.add_argument("--upstream-only", default="", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.upstream_only:
        upstream_main(args.upstream_only, args.mib * MiB)
        return 0
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="linkcheck-") as tmp:
        for row in measure(args, Path(tmp)):
            print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
