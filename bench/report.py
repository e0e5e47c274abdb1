"""From samples to the table: medians, ratios, peak RSS, CPU, and the issues' targets.

Ratios are speed ratios computed from median times of the same amount of work:
``x boto3 = boto3 seconds / system seconds``, so 1.00 means as fast as raw boto3 (parallel
ranged GETs / multipart) and 2.00 twice as fast; the same for ``x tm`` (boto3's
TransferManager), ``x get`` (one plain GET or PutObject), ``x s3fs`` and ``x native``.
Workload 11 is a request count, where ``x native = system requests / native requests``
(lower is better).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence

from bench.common import GiB, MiB, Sample
from bench.link import LinkShape

TITLES: dict[str, str] = {
    "1": "(1) sequential write, dd bs=1M, close included",
    "14a": "(14a) sequential write of 256 MiB, dd bs=1M conv=fsync",
    "14b": "(14b) sequential write of 1 GiB, dd bs=1M conv=fsync",
    "2": "(2) cold sequential read of 1 GiB, dd bs=1M",
    "13": "(13) cold sequential read of 1 GiB, cp to local disk",
    "3in": "(3) cp into the mount",
    "3out": "(3) cp out of the mount (cold)",
    "4": "(4) small files created (~100 B each)",
    "5ls": "(5) ls -lR over the tree (cold)",
    "5find": "(5) find over the tree (cold)",
    "6": "(6) rename of a large file",
    "7": "(7) append to an existing file",
    "8w": "(8) 4 concurrent writers",
    "8r": "(8) 4 concurrent readers of 4 files (cold), aggregate",
    "15push": "(15) registry: skopeo push of the ~200 MiB image",
    "15pull": "(15) registry: skopeo pull of the ~200 MiB image (cold)",
    "9push": "(9) registry: skopeo push of the ~1 GiB image",
    "9pull": "(9) registry: skopeo pull of the ~1 GiB image (cold)",
    "17cold": "(17) registry: pull of the ~1 GiB image, first (cold)",
    "17warm": "(17) registry: pull of the ~1 GiB image again (fresh mount, page cache dropped)",
    "10": "(10) registry: chunked upload in PATCHes",
    "11push": "(11) S3 requests of one push of (9)",
    "11pull": "(11) S3 requests of one pull of (9)",
    "12": "(12) concurrent large writers: peak RSS",
}
META_TITLES = {
    "catalog": "GET /v2/_catalog, all pages",
    "tags": "tags/list of 50 repositories (--quick: 10)",
    "gcdry": "garbage-collect --dry-run",
    "delete": "DELETE of 20 manifests (--quick: 5)",
    "gc": "garbage-collect after the deletes",
}
SYSTEM_ORDER = [
    "mount",
    "mount-cache",
    "s3fs",
    "rclone-off",
    "rclone-writes",
    "boto3",
    "boto3-tm",
    "boto3-get",
    "boto3-copy",
    "native",
]
#: ratio columns: header -> reference system
RATIOS = {
    "x boto3": "boto3",
    "x tm": "boto3-tm",
    "x get": "boto3-get",
    "x s3fs": "s3fs",
    "x native": "native",
}

Key = tuple[str, str, str, str]  # backend, link key, workload, system


def title(workload: str) -> str:
    if workload in TITLES:
        return TITLES[workload]
    n, _, phase = workload[1:].partition("-")
    if workload.startswith("m") and phase in META_TITLES:
        return f"(16) {n} repositories: {META_TITLES[phase]}"
    return workload


def _order(workload: str) -> tuple[int, str]:
    order = list(TITLES)
    if workload in order:
        return (order.index(workload), "")
    n, _, phase = workload[1:].partition("-")
    if workload.startswith("m") and phase in META_TITLES and n.isdigit():
        return (len(order) + int(n), f"{list(META_TITLES).index(phase)}")
    return (10**9, workload)


def link_key(s: Sample) -> str:
    """The link shape of a sample; results from before the link model had a delay each way,
    i.e. an uncapped link of twice that round trip."""
    if s.link:
        return s.link
    return "0" if s.delay_ms == 0 else f"{2 * s.delay_ms}/0"


def link_label(key: str) -> str:
    return LinkShape.parse(key).label


@dataclasses.dataclass
class Row:
    backend: str
    link: str
    workload: str
    system: str
    runs: int
    seconds: float | None = None  # median
    amount: float = 0.0
    unit: str = "B"
    requests: float | None = None  # median
    serial: float | None = None  # median
    cpu_s: float | None = None  # median
    rss: int | None = None  # highest peak over the runs
    error: str | None = None

    @property
    def rate(self) -> float | None:
        if self.seconds is None or self.seconds <= 0 or self.unit == "req":
            return None
        return self.amount / self.seconds / (MiB if self.unit == "B" else 1)


def _median(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(samples: Iterable[Sample]) -> dict[Key, Row]:
    """One row per (backend, link, workload, system); any failed run fails the row."""
    groups: dict[Key, list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.backend, link_key(s), s.workload, s.system), []).append(s)
    rows = {}
    for key, group in groups.items():
        row = Row(*key, runs=len(group), amount=group[0].amount, unit=group[0].unit)
        failed = [s for s in group if s.error]
        if failed:
            row.error = f"{failed[0].error} ({len(failed)}/{len(group)} runs)"
        else:
            row.seconds = _median(s.seconds for s in group)
            row.requests = _median(s.requests for s in group)
            row.serial = _median(s.serial for s in group)
            row.cpu_s = _median(s.cpu_s for s in group)
            if row.unit == "req":
                row.amount = row.requests or 0.0
            rss = [s.rss for s in group if s.rss is not None]
            row.rss = max(rss) if rss else None
        rows[key] = row
    return rows


def ratio(rows: dict[Key, Row], row: Row, ref: str) -> float | None:
    """Speed of ``row`` relative to system ``ref`` (request ratio for workload 11)."""
    other = rows.get((row.backend, row.link, row.workload, ref))
    if other is None or other.error or row.error or other is row:
        return None
    if row.unit == "req":
        return row.amount / other.amount if other.amount else None
    if not row.seconds or not other.seconds:
        return None
    return other.seconds / row.seconds


HEADER = [
    "workload",
    "system",
    "median s",
    "rate",
    *RATIOS,
    "S3 req",
    "serial",
    "CPU",
    "peak RSS",
    "runs",
]


def table_cells(rows: dict[Key, Row], backend: str, link: str) -> list[list[str]]:
    """The table of one backend and link shape, as text cells (header first); columns that
    are empty in every row are left out."""
    cells = [HEADER]
    mine = [r for r in rows.values() if r.backend == backend and r.link == link]
    mine.sort(key=lambda r: (_order(r.workload), _index(SYSTEM_ORDER, r.system)))
    for r in mine:
        if r.error:
            blank = [""] * (len(HEADER) - 4)
            cells.append([r.workload, r.system, f"failed: {r.error}", *blank, str(r.runs)])
            continue
        cells.append(
            [
                r.workload,
                r.system,
                _num(r.seconds, "{:.3f}") if r.unit != "req" else "",
                _rate(r),
                *(_num(ratio(rows, r, ref), "{:.2f}") for ref in RATIOS.values()),
                _num(r.requests, "{:.0f}"),
                _num(r.serial, "{:.0f}"),
                _cpu(r),
                _num(r.rss / MiB if r.rss else None, "{:.0f} MiB"),
                str(r.runs),
            ]
        )
    keep = [
        i
        for i in range(len(HEADER))
        if i < 3 or i == len(HEADER) - 1 or any(row[i] for row in cells[1:] if len(row) > i)
    ]
    return [[row[i] for i in keep] for row in cells]


def _cpu(r: Row) -> str:
    """CPU seconds of the daemon per GiB moved (data), or in all (operations)."""
    if r.cpu_s is None:
        return ""
    if r.unit == "B" and r.amount:
        return f"{r.cpu_s / (r.amount / GiB):.2f} s/GiB"
    return f"{r.cpu_s:.2f} s"


def proxy_cost(samples: Iterable[Sample], backend: str, link: str) -> tuple[float, float]:
    """(CPU seconds, bytes) the proxy process spent and relayed in the timed steps that
    move data (not in the metadata phases, whose bytes are few)."""
    cpu = moved = 0.0
    for s in samples:
        mine = s.backend == backend and link_key(s) == link and s.unit == "B"
        if mine and "proxy" in s.cpu_other:
            cpu += s.cpu_other["proxy"]
            moved += float(s.extra.get("proxy_bytes", 0))
    return cpu, moved


def legend(rows: dict[Key, Row], backend: str, link: str) -> list[str]:
    """The titles of the workloads in one table."""
    seen = sorted(
        {r.workload for r in rows.values() if r.backend == backend and r.link == link},
        key=_order,
    )
    return [f"{w}: {title(w)}" for w in seen]


def _index(order: Sequence[str], item: str) -> int:
    return order.index(item) if item in order else len(order)


def _num(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def _rate(r: Row) -> str:
    rate = r.rate
    if rate is None:
        return f"{r.amount:.0f} req" if r.unit == "req" else ""
    return f"{rate:.1f} MiB/s" if r.unit == "B" else f"{rate:.1f} ops/s"


def render_text(cells: list[list[str]]) -> str:
    """Aligned columns; a failed row's long reason is allowed to run past its column."""
    widths = [
        max(len(row[i]) for row in cells if not row[2].startswith("failed"))
        for i in range(len(cells[0]))
    ]
    lines = []
    for row in cells:
        if row[2].startswith("failed"):
            lines.append(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}")
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_markdown(cells: list[list[str]]) -> str:
    out = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * len(cells[0])]
    out += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in cells[1:]]
    return "\n".join(out)


# ------------------------------------------------------------------------------ targets


@dataclasses.dataclass
class Target:
    backend: str
    link: str
    name: str
    status: str  # PASS, FAIL, n/a
    detail: str


def targets(rows: dict[Key, Row], backend: str, link: str, budget: int) -> list[Target]:
    """The issues' targets for this mount, checked against one backend and link shape.

    Loopback: the first benchmark's targets and issue 11's loopback ones. A capped link:
    issue 11's and issue 12's (the figures are for 20 ms / 20 MiB/s; the same ratios are
    checked on every capped shape). An uncapped link with a round trip (the old delay
    model): the first benchmark's "with delay" targets.
    """
    shape = LinkShape.parse(link)
    check = _Checker(rows, backend, link)
    if shape.loopback:
        return _loopback_targets(check, budget)
    if shape.mibps:
        return _link_targets(check, rows, backend, link)
    out = [
        check.speed("1", "s3fs", 2.0, "(1) write >= 2x s3fs with delay"),
        check.speed("2", "s3fs", 2.0, "(2) read >= 2x s3fs with delay"),
    ]
    return [t for t in out if t.status != "skip"]


class _Checker:
    def __init__(self, rows: dict[Key, Row], backend: str, link: str) -> None:
        self.rows = rows
        self.backend = backend
        self.link = link

    def get(self, wl: str, system: str = "mount") -> Row | None:
        return self.rows.get((self.backend, self.link, wl, system))

    def speed(self, wl: str, ref: str, factor: float, name: str, system: str = "mount") -> Target:
        return self._compare(wl, ref, factor, name, higher=True, system=system)

    def fewer(self, wl: str, factor: float, name: str) -> Target:
        return self._compare(wl, "native", factor, name, higher=False)

    def _compare(
        self, wl: str, ref: str, factor: float, name: str, *, higher: bool, system: str = "mount"
    ) -> Target:
        r, other = self.get(wl, system), self.get(wl, ref)
        if r is None or other is None:  # one side was not run: no target to check
            return Target(self.backend, self.link, name, "skip", "")
        return self.judge(name, ratio(self.rows, r, ref), factor, higher=higher)

    def judge(self, name: str, value: float | None, factor: float, *, higher: bool) -> Target:
        if value is None:
            return Target(self.backend, self.link, name, "n/a", "not measured or failed")
        ok = value >= factor if higher else value <= factor
        return Target(self.backend, self.link, name, "PASS" if ok else "FAIL", f"{value:.2f}x")


def _loopback_targets(check: _Checker, budget: int) -> list[Target]:
    speed, fewer = check.speed, check.fewer
    out = [
        speed("1", "boto3", 0.9, "(1) write >= 0.9x raw boto3 multipart"),
        speed("1", "s3fs", 1.25, "(1) write >= 1.25x s3fs"),
        speed("1", "rclone-off", 1.0, "(1) write ahead of rclone off"),
        speed("1", "rclone-writes", 1.0, "(1) write ahead of rclone writes"),
        speed("2", "boto3", 0.9, "(2) read >= 0.9x raw parallel ranged GET"),
        speed("2", "s3fs", 1.25, "(2) read >= 1.25x s3fs"),
        speed("2", "rclone-off", 1.0, "(2) read ahead of rclone off"),
        speed("2", "rclone-writes", 1.0, "(2) read ahead of rclone writes"),
    ]
    for wl, size in (("14a", "256 MiB"), ("14b", "1 GiB")):
        out += [
            speed(wl, "boto3-tm", 0.9, f"({wl}) write {size} conv=fsync >= 0.9x TransferManager"),
            speed(wl, "s3fs", 1.25, f"({wl}) write {size} conv=fsync >= 1.25x s3fs"),
        ]
    out += [
        speed("9push", "native", 1.0, "(9) push no slower than native S3 driver"),
        speed("9pull", "native", 1.0, "(9) pull no slower than native S3 driver"),
        speed("10", "native", 1.0, "(10) chunked upload no slower than native"),
        speed("5ls", "s3fs", 5.0, "(5) ls -lR >= 5x s3fs"),
        speed("4", "boto3", 0.8, "(4) small files >= 0.8x raw PutObject rate"),
        fewer("11push", 1.5, "(11) requests per push <= 1.5x native"),
        fewer("11pull", 1.5, "(11) requests per pull <= 1.5x native"),
        speed("6", "boto3-copy", 3.0, "(6) rename >= 3x one CopyObject"),
    ]
    if check.get("12"):
        out.append(_memory_target(check, budget))
    return [t for t in out if t.status != "skip"]


def _link_targets(check: _Checker, rows: dict[Key, Row], backend: str, link: str) -> list[Target]:
    """Issue 11 (reads, writes, registry on the link) and issue 12 (metadata phases)."""
    speed = check.speed
    out = [
        speed("2", "boto3-tm", 0.9, "(2) cold read 1 GiB (dd) >= 0.9x TransferManager"),
        speed("2", "s3fs", 2.0, "(2) cold read 1 GiB (dd) >= 2x s3fs"),
        speed("13", "boto3-tm", 0.9, "(13) cold read 1 GiB (cp) >= 0.9x TransferManager"),
        speed("13", "s3fs", 2.0, "(13) cold read 1 GiB (cp) >= 2x s3fs"),
        speed("8r", "boto3-tm", 0.9, "(8r) 4 readers >= 0.9x TransferManager with 4 files"),
        speed("15pull", "native", 2.0, "(15) pull of the ~200 MiB image >= 2x native"),
        speed("9pull", "native", 2.0, "(9) pull of the ~1 GiB image >= 2x native"),
        speed("15push", "native", 1.5, "(15) push of the ~200 MiB image >= 1.5x native"),
        speed("9push", "native", 1.5, "(9) push of the ~1 GiB image >= 1.5x native"),
        speed("14a", "boto3-tm", 0.9, "(14a) write 256 MiB >= 0.9x TransferManager"),
        speed("14b", "boto3-tm", 0.9, "(14b) write 1 GiB >= 0.9x TransferManager"),
        speed("17warm", "native", 5.0, "(17) warm pull, blob cache >= 5x native", "mount-cache"),
        speed("17cold", "mount", 0.95, "(17) cold pull, blob cache no slower", "mount-cache"),
    ]
    phases = sorted(
        {r.workload for r in rows.values() if r.backend == backend and r.link == link}
        & {w for w in (r.workload for r in rows.values()) if w.startswith("m") and "-" in w},
        key=_order,
    )
    for wl in phases:
        phase = wl.partition("-")[2]
        factor = 2.0 if phase in ("catalog", "gcdry", "gc") else 1.0
        words = "at least 2x faster than" if factor == 2.0 else "no slower than"
        out.append(speed(wl, "native", factor, f"({wl}) {words} native"))
    return [t for t in out if t.status != "skip"]


def _memory_target(check: _Checker, budget: int) -> Target:
    name = f"(12) peak RSS <= memory budget ({budget // MiB} MiB), no writer fails"
    row = check.get("12")
    backend, link = check.backend, check.link
    if row is None:
        return Target(backend, link, name, "n/a", "not measured")
    if row.error:
        return Target(backend, link, name, "FAIL", f"failed: {row.error}")
    if row.rss is None:
        return Target(backend, link, name, "n/a", "no RSS")
    ok = row.rss <= budget
    return Target(backend, link, name, "PASS" if ok else "FAIL", f"{row.rss / MiB:.0f} MiB")
