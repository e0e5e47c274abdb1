"""How many ranged GETs of read-ahead run at once, mount-wide, and which reader gets them.

One connection to S3 carries only so much (latency, TCP window, S3's per-request rate);
many ranged GETs of the same object at once carry more, until the client's CPU, the
server or the network is the limit (shared/reference/real-s3-network.md). Which of the two
a mount talks to is not configured but measured: `Streams` keeps a mount-wide `limit` of
read-ahead GETs in flight and moves it by what the GETs deliver.

*Measuring.* Every GET reports its bytes and duration (from the moment it was started,
waits for a connection included) and the average number of GETs in flight mount-wide
during its life, `c`. The aggregate at that concurrency is `c x bytes / duration`, kept as
a moving average per level. Reader speed does not enter: a GET's body is read at network
speed whatever the reader does with it later.

*Deciding.* The limit starts at 2 and doubles (2, 4, 8, ... up to `most`) as long as
the aggregate measured at the new level is worth the extra streams: each added stream must
add at least a fifth of what one stream delivered before (`GAIN`). When it does not, the
limit goes back to the level it grew from and stays there; every `PROBE_S` seconds it tries
one level higher again, since links and load change. On a link that caps each connection
(a real network) the aggregate grows with every stream and the limit climbs to `most`; on
loopback, where two streams already keep a CPU busy, it stays at two. Decisions use
only samples taken while the concurrency was the limit itself (or above it), judged against
a level that was the limit before, and only whole ranges (at least half of a full one:
the round trip weighs more in a small one and would make every added stream look worth
it): when readers want fewer streams (slow readers, small files) nothing is learnt and
nothing changes.

*Sharing.* Readers queue for a free stream in turn (round robin), and one that already
holds its fair share (`limit` / readers wanting streams) yields to one that holds less, so
several readers split the streams evenly. Every reader may always have one GET in flight,
and the bytes a reader is waiting for are always fetched (`needed`), so no reader starves
whatever the limit. Everything here runs on the trio thread.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import trio

from s3fs_registry import metrics

log = logging.getLogger(__name__)

GAIN = 0.2  # each added stream must add at least this share of what one delivered
PROBE_S = 30.0  # after settling, try one level higher again this often
SMOOTHING = 0.5  # weight of a new sample in a level's moving average


@dataclass
class Ticket:
    """One GET in flight: who holds it, when it started, the in-flight area then."""

    holder: Hashable
    started: float
    area: float


@dataclass
class _Level:
    """Moving average of the aggregate throughput (bytes/s) measured at one concurrency."""

    rate: float = 0.0
    samples: int = 0
    when: float = 0.0  # time of the last sample

    def add(self, rate: float, now: float) -> None:
        self.rate = rate if not self.samples else self.rate + SMOOTHING * (rate - self.rate)
        self.samples += 1
        self.when = now


class Streams:
    """The mount-wide stream limit and its queue (module docstring)."""

    def __init__(self, most: int, clock: Callable[[], float] = trio.current_time) -> None:
        self.most = max(1, most)
        self.limit = min(2, self.most)
        self._tried = {self.limit}  # levels that were the limit: what growth is judged against
        self.in_flight = 0
        self._clock = clock
        self._area = 0.0  # integral of in_flight over time
        self._area_at = clock()
        self._held: dict[Hashable, int] = {}
        self._waiting: OrderedDict[Hashable, Callable[[], None]] = OrderedDict()
        self._levels: dict[int, _Level] = {}
        self._settled_at: float | None = None
        metrics.READ_STREAM_LIMIT.set(self.limit)

    def held(self, holder: Hashable) -> int:
        return self._held.get(holder, 0)

    def start(
        self, holder: Hashable, wake: Callable[[], None], *, needed: bool = False
    ) -> Ticket | None:
        """A ticket for one GET, or None: then `wake` is called when a stream frees up."""
        held = self._held.get(holder, 0)
        if not needed and held and not self._may_take(holder, held):
            self._waiting[holder] = wake
            return None
        self._waiting.pop(holder, None)
        self._advance()
        self.in_flight += 1
        self._held[holder] = held + 1
        metrics.READ_STREAMS.set(self.in_flight)
        return Ticket(holder, self._clock(), self._area)

    def done(self, ticket: Ticket, nbytes: int) -> None:
        """The GET ended; `nbytes` it delivered (0: failed, or too small a range to judge
        the link by: the round trip weighs more in a small range). Wakes waiting readers."""
        self._advance()
        seconds = self._clock() - ticket.started
        concurrency = (self._area - ticket.area) / seconds if seconds > 0 else 1.0
        self.in_flight -= 1
        held = self._held.get(ticket.holder, 1) - 1
        if held:
            self._held[ticket.holder] = held
        else:
            self._held.pop(ticket.holder, None)
        metrics.READ_STREAMS.set(self.in_flight)
        if nbytes and seconds > 0:
            self._learn(max(1, round(concurrency)), concurrency * nbytes / seconds)
        self._wake()

    def forget(self, holder: Hashable) -> None:
        """A reader that closed or restarted: it no longer waits for a stream."""
        self._waiting.pop(holder, None)

    # -- sharing ---------------------------------------------------------------------------

    def _may_take(self, holder: Hashable, held: int) -> bool:
        if self.in_flight >= self.limit:
            return False
        others = [h for h in self._waiting if h != holder]
        if not others:
            return True
        wanting = len(set(self._held) | set(self._waiting))
        return held < -(-self.limit // max(1, wanting))

    def _wake(self) -> None:
        """Offer free streams to waiting readers in turn; one that still wants more after
        taking one goes to the back of the queue (`start`)."""
        for _ in range(len(self._waiting)):
            if self.in_flight >= self.limit or not self._waiting:
                return
            _, wake = self._waiting.popitem(last=False)
            wake()

    def _advance(self) -> None:
        now = self._clock()
        self._area += self.in_flight * (now - self._area_at)
        self._area_at = now

    # -- learning --------------------------------------------------------------------------

    def _learn(self, level: int, rate: float) -> None:
        """Record a sample; at (or, forced by many readers, above) the limit, decide.

        The concurrency running is `level`. Against the best-known fewer streams (the
        highest lower level with recent samples) it must be worth its extra streams, else
        the limit goes back to that level; if it is, or there is nothing to compare with,
        the limit doubles from `level`.
        """
        now = self._clock()
        self._levels.setdefault(level, _Level()).add(rate, now)
        if level < self.limit or self._levels[level].samples < min(level, 2):
            return
        if self._settled_at is not None:
            if now - self._settled_at >= PROBE_S:
                self._grow(level)
            return
        lower = [
            n
            for n, v in self._levels.items()
            if n < level and n in self._tried and now - v.when < 2 * PROBE_S
        ]
        if not lower:
            self._grow(level)
            return
        base = max(lower)
        before, current = self._levels[base].rate, self._levels[level].rate
        if current >= before * (1 + GAIN * (level / base - 1)):
            self._grow(level)
            return
        log.info(
            "read streams: %d deliver %.0f MiB/s, %d delivered %.0f: staying at %d",
            level,
            current / 2**20,
            base,
            before / 2**20,
            base,
        )
        self._set(base)
        self._settled_at = now

    def _grow(self, level: int) -> None:
        self._settled_at = None
        higher = min(self.most, max(self.limit, level) * 2)
        if higher <= self.limit:
            self._settled_at = self._clock()
            return
        self._levels.pop(higher, None)  # judge the new level by fresh samples only
        self._tried.add(higher)
        self._set(higher)
        self._wake()

    def _set(self, limit: int) -> None:
        if limit != self.limit:  # a few lines as it learns, then at most two per PROBE_S
            log.info("read streams: at most %d ranged GETs at once (was %d)", limit, self.limit)
        self.limit = limit
        metrics.READ_STREAM_LIMIT.set(limit)
