"""The benchmark's model of a real S3 network link (shared/reference/real-s3-network.md).

A TCP front end that owns every client connection and hands the counting proxy
(tests/s3proxy.py's ``S3Proxy.adopt``) the far end of a socket pair. Between the two, each
direction of each connection is a delay line with a rate cap:

* every piece of data that arrives is delivered half a round trip later, after it has been
  "transmitted" at the connection's rate: ``start = max(arrival, link free)``,
  ``free = start + bytes / rate``, ``delivered at free + rtt / 2``. So a connection never
  carries more than ``rate`` in either direction, and a request waits a round trip for its
  answer however small it is;
* a new connection costs a round trip before its first byte goes out (the TCP handshake):
  the client side's first data is delivered no earlier than ``accept + rtt + rtt / 2``;
* a bounded window (``rate x rtt / 2`` plus two pieces, at least four pieces) is held per
  direction; beyond it the line stops reading, and the sender feels backpressure in its
  socket buffers, as over a real link.

``0`` for both (``LinkShape.loopback``) means no front end at all: the client talks to the
proxy's own port. Each direction is one thread that polls its source with the time until
the next delivery as timeout, so an idle connection costs nothing and a busy one two
system calls per piece.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import math
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

_LINGER_ZERO = struct.pack("ii", 1, 0)
_MIN_PIECE = 32 * 1024
_MAX_PIECE = 256 * 1024
_UNCAPPED_WINDOW = 4 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class LinkShape:
    """Round trip in ms and cap per connection and direction in MiB/s (0: none)."""

    rtt_ms: float = 0.0
    mibps: float = 0.0

    @classmethod
    def parse(cls, text: str) -> LinkShape:
        """``RTT/MIBPS`` (``20/20``), ``RTT`` alone (uncapped) or ``0`` (loopback)."""
        rtt, _, rate = text.strip().partition("/")
        try:
            shape = cls(float(rtt), float(rate or 0))
        except ValueError:
            raise ValueError(f"a link is RTT_MS/MIBPS, e.g. 20/20, not {text!r}") from None
        if shape.rtt_ms < 0 or shape.mibps < 0:
            raise ValueError(f"a link cannot have a negative round trip or rate: {text!r}")
        return shape

    @property
    def loopback(self) -> bool:
        return self.rtt_ms == 0 and self.mibps == 0

    @property
    def key(self) -> str:
        """What ``parse`` reads back: ``0``, ``20/20``, ``40/0``."""
        return "0" if self.loopback else f"{self.rtt_ms:g}/{self.mibps:g}"

    @property
    def label(self) -> str:
        if self.loopback:
            return "loopback"
        rate = f"{self.mibps:g} MiB/s" if self.mibps else "uncapped"
        return f"{self.rtt_ms:g} ms RTT, {rate} per connection"

    @property
    def rate(self) -> float:
        """Bytes per second, ``math.inf`` when uncapped."""
        return self.mibps * 1024 * 1024 if self.mibps else math.inf

    def piece(self) -> int:
        """Largest read: 5 ms of the cap, within 32-256 KiB."""
        if not self.mibps:
            return _MAX_PIECE
        return int(min(_MAX_PIECE, max(_MIN_PIECE, self.rate * 0.005)))

    def window(self) -> int:
        """Bytes one direction holds in flight before it stops reading."""
        if not self.mibps:
            return _UNCAPPED_WINDOW
        in_flight = self.rate * self.rtt_ms / 2000.0
        return int(max(4 * self.piece(), in_flight + 2 * self.piece()))


class Link:
    """Listens on 127.0.0.1 and shapes every connection before ``adopt`` serves it."""

    def __init__(
        self, shape: LinkShape, adopt: Callable[[socket.socket], None], host: str = "127.0.0.1"
    ) -> None:
        self.shape = shape
        self._adopt = adopt
        self._listener = socket.create_server((host, 0), backlog=512)
        self._listener.settimeout(0.2)
        self.host = host
        self.port = int(self._listener.getsockname()[1])
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._conns: set[_ShapedConnection] = set()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, name="link-accept", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Link:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn.abort()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue
            accepted = time.monotonic()
            client.settimeout(None)
            with contextlib.suppress(OSError):
                client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            near, far = socket.socketpair()
            conn = _ShapedConnection(self, client, near, accepted)
            with self._lock:
                self.connections += 1
                self._conns.add(conn)
            self._adopt(far)
            conn.start()

    def _forget(self, conn: _ShapedConnection) -> None:
        with self._lock:
            self._conns.discard(conn)


class _ShapedConnection:
    """One client connection: a delay line each way between the client and the proxy."""

    def __init__(
        self, link: Link, client: socket.socket, near: socket.socket, accepted: float
    ) -> None:
        self.link = link
        self.client = client
        self.near = near
        shape = link.shape
        handshake = accepted + shape.rtt_ms / 1000.0
        self._lines = [
            _DelayLine(self, client, near, shape, not_before=handshake, name="up"),
            _DelayLine(self, near, client, shape, not_before=accepted, name="down"),
        ]
        self._left = len(self._lines)
        self._lock = threading.Lock()

    def start(self) -> None:
        for line in self._lines:
            line.thread.start()

    def abort(self) -> None:
        """Reset both sides (a line failed, or the link stops)."""
        for sock in (self.client, self.near):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ZERO)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def line_done(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            for sock in (self.client, self.near):
                with contextlib.suppress(OSError):
                    sock.close()
            self.link._forget(self)


class _DelayLine:
    """One direction: read eagerly, deliver each piece when the model says it arrives."""

    def __init__(
        self,
        conn: _ShapedConnection,
        src: socket.socket,
        dst: socket.socket,
        shape: LinkShape,
        *,
        not_before: float,
        name: str,
    ) -> None:
        self.conn = conn
        self.src = src
        self.dst = dst
        self.half = shape.rtt_ms / 2000.0
        self.per_byte = 0.0 if not shape.mibps else 1.0 / shape.rate
        self.piece = shape.piece()
        self.window = shape.window()
        self.free = not_before  # when the modelled transmitter can start the next byte
        self.thread = threading.Thread(target=self._run, name=f"link-{name}", daemon=True)

    def _run(self) -> None:
        try:
            self._pump()
        except OSError:
            self.conn.abort()
        finally:
            self.conn.line_done()

    def _pump(self) -> None:
        queue: collections.deque[tuple[float, bytes | None]] = collections.deque()
        held = 0
        eof = False
        poller = select.poll()
        poller.register(self.src, select.POLLIN)
        while True:
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, data = queue.popleft()
                if data is None:
                    with contextlib.suppress(OSError):
                        self.dst.shutdown(socket.SHUT_WR)
                    return
                self.dst.sendall(data)
                held -= len(data)
                now = time.monotonic()
            wait = queue[0][0] - now if queue else None
            if eof or held >= self.window:
                time.sleep(wait or 0.0)
                continue
            if not poller.poll(-1 if wait is None else math.ceil(wait * 1000.0)):
                continue
            data = self.src.recv(self.piece)
            arrived = time.monotonic()
            if not data:
                eof = True
                last = queue[-1][0] if queue else 0.0
                queue.append((max(arrived + self.half, last), None))
                continue
            self.free = max(arrived, self.free) + len(data) * self.per_byte
            queue.append((self.free + self.half, data))
            held += len(data)
