"""From samples to the table: medians, ratios, peak RSS, and the issue's targets.

Ratios are speed ratios computed from median times of the same amount of work:
``x boto3 = boto3 seconds / system seconds``, so 1.00 means as fast as raw boto3 and 2.00
twice as fast; the same for ``x s3fs`` and ``x native``. Workload 11 is a request count,
where ``x native = system requests / native requests`` (lower is better).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Iterable, Sequence

from bench.common import MiB, Sample

TITLES: dict[str, str] = {
    "1": "(1) sequential write, dd bs=1M, close included",
    "2": "(2) cold sequential read, dd bs=1M",
    "3in": "(3) cp into the mount",
    "3out": "(3) cp out of the mount (cold)",
    "4": "(4) small files created (~100 B each)",
    "5ls": "(5) ls -lR over the tree (cold)",
    "5find": "(5) find over the tree (cold)",
    "6": "(6) rename of a large file",
    "7": "(7) append to an existing file",
    "8w": "(8) concurrent writers",
    "8r": "(8) concurrent readers (cold)",
    "9push": "(9) registry: skopeo push",
    "9pull": "(9) registry: skopeo pull (cold)",
    "10": "(10) registry: chunked upload in PATCHes",
    "11push": "(11) S3 requests of one push",
    "11pull": "(11) S3 requests of one pull",
    "12": "(12) concurrent large writers: peak RSS",
}
WORKLOAD_ORDER = list(TITLES)
SYSTEM_ORDER = [
    "mount",
    "s3fs",
    "rclone-off",
    "rclone-writes",
    "boto3",
    "boto3-copy",
    "native",
]


@dataclasses.dataclass
class Row:
    backend: str
    delay_ms: int
    workload: str
    system: str
    runs: int
    seconds: float | None = None  # median
    amount: float = 0.0
    unit: str = "B"
    requests: float | None = None  # median
    rss: int | None = None  # highest peak over the runs
    error: str | None = None

    @property
    def rate(self) -> float | None:
        if self.seconds is None or self.seconds <= 0 or self.unit == "req":
            return None
        return self.amount / self.seconds / (MiB if self.unit == "B" else 1)


def summarize(samples: Iterable[Sample]) -> dict[tuple[str, int, str, str], Row]:
    """One row per (backend, delay, workload, system); any failed run fails the row."""
    groups: dict[tuple[str, int, str, str], list[Sample]] = {}
    for s in samples:
        groups.setdefault((s.backend, s.delay_ms, s.workload, s.system), []).append(s)
    rows = {}
    for key, group in groups.items():
        row = Row(*key, runs=len(group), amount=group[0].amount, unit=group[0].unit)
        failed = [s for s in group if s.error]
        if failed:
            row.error = f"{failed[0].error} ({len(failed)}/{len(group)} runs)"
        else:
            secs = [s.seconds for s in group if s.seconds is not None]
            row.seconds = statistics.median(secs) if secs else None
            reqs = [s.requests for s in group if s.requests is not None]
            row.requests = statistics.median(reqs) if reqs else None
            if row.unit == "req":
                row.amount = row.requests or 0.0
            rss = [s.rss for s in group if s.rss is not None]
            row.rss = max(rss) if rss else None
        rows[key] = row
    return rows


def ratio(rows: dict[tuple[str, int, str, str], Row], row: Row, ref: str) -> float | None:
    """Speed of ``row`` relative to system ``ref`` (request ratio for workload 11)."""
    other = rows.get((row.backend, row.delay_ms, row.workload, ref))
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
    "x boto3",
    "x s3fs",
    "x native",
    "S3 req",
    "peak RSS",
    "runs",
]


def table_cells(
    rows: dict[tuple[str, int, str, str], Row], backend: str, delay_ms: int
) -> list[list[str]]:
    """The table of one backend and delay, as text cells (header first)."""
    cells = [HEADER]
    mine = [r for r in rows.values() if r.backend == backend and r.delay_ms == delay_ms]
    mine.sort(key=lambda r: (_index(WORKLOAD_ORDER, r.workload), _index(SYSTEM_ORDER, r.system)))
    for r in mine:
        if r.error:
            cells.append(
                [r.workload, r.system, f"failed: {r.error}", "", "", "", "", "", "", str(r.runs)]
            )
            continue
        cells.append(
            [
                r.workload,
                r.system,
                _num(r.seconds, "{:.3f}") if r.unit != "req" else "",
                _rate(r),
                _num(ratio(rows, r, "boto3"), "{:.2f}"),
                _num(ratio(rows, r, "s3fs"), "{:.2f}"),
                _num(ratio(rows, r, "native"), "{:.2f}"),
                _num(r.requests, "{:.0f}"),
                _num(r.rss / MiB if r.rss else None, "{:.0f} MiB"),
                str(r.runs),
            ]
        )
    return cells


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
    delay_ms: int
    name: str
    status: str  # PASS, FAIL, n/a
    detail: str


def targets(
    rows: dict[tuple[str, int, str, str], Row], backend: str, delay_ms: int, budget: int
) -> list[Target]:
    """The issue's targets for this mount, checked against one backend and delay."""

    def get(wl: str, system: str) -> Row | None:
        return rows.get((backend, delay_ms, wl, system))

    def speed(wl: str, ref: str, factor: float, name: str) -> Target:
        r = get(wl, "mount")
        value = ratio(rows, r, ref) if r else None
        return _judge(backend, delay_ms, name, value, factor, higher=True)

    def fewer(wl: str, factor: float, name: str) -> Target:
        r = get(wl, "mount")
        value = ratio(rows, r, "native") if r else None
        return _judge(backend, delay_ms, name, value, factor, higher=False)

    if delay_ms > 0:
        return [
            speed("1", "s3fs", 2.0, "(1) write >= 2x s3fs with delay"),
            speed("2", "s3fs", 2.0, "(2) read >= 2x s3fs with delay"),
        ]
    out = [
        speed("1", "boto3", 0.9, "(1) write >= 0.9x raw boto3 multipart"),
        speed("1", "s3fs", 1.25, "(1) write >= 1.25x s3fs"),
        speed("1", "rclone-off", 1.0, "(1) write ahead of rclone off"),
        speed("1", "rclone-writes", 1.0, "(1) write ahead of rclone writes"),
        speed("2", "boto3", 0.9, "(2) read >= 0.9x raw parallel ranged GET"),
        speed("2", "s3fs", 1.25, "(2) read >= 1.25x s3fs"),
        speed("2", "rclone-off", 1.0, "(2) read ahead of rclone off"),
        speed("2", "rclone-writes", 1.0, "(2) read ahead of rclone writes"),
        speed("9push", "native", 1.0, "(9) push no slower than native S3 driver"),
        speed("9pull", "native", 1.0, "(9) pull no slower than native S3 driver"),
        speed("10", "native", 1.0, "(10) chunked upload no slower than native"),
        speed("5ls", "s3fs", 5.0, "(5) ls -lR >= 5x s3fs"),
        speed("4", "boto3", 0.8, "(4) small files >= 0.8x raw PutObject rate"),
        fewer("11push", 1.5, "(11) requests per push <= 1.5x native"),
        fewer("11pull", 1.5, "(11) requests per pull <= 1.5x native"),
        speed("6", "boto3-copy", 3.0, "(6) rename >= 3x one CopyObject"),
    ]
    out.append(_memory_target(get("12", "mount"), backend, delay_ms, budget))
    return out


def _judge(
    backend: str, delay_ms: int, name: str, value: float | None, factor: float, *, higher: bool
) -> Target:
    if value is None:
        return Target(backend, delay_ms, name, "n/a", "not measured or failed")
    ok = value >= factor if higher else value <= factor
    return Target(backend, delay_ms, name, "PASS" if ok else "FAIL", f"{value:.2f}x")


def _memory_target(row: Row | None, backend: str, delay_ms: int, budget: int) -> Target:
    name = f"(12) peak RSS <= memory budget ({budget // MiB} MiB), no writer fails"
    if row is None:
        return Target(backend, delay_ms, name, "n/a", "not measured")
    if row.error:
        return Target(backend, delay_ms, name, "FAIL", f"failed: {row.error}")
    if row.rss is None:
        return Target(backend, delay_ms, name, "n/a", "no RSS")
    ok = row.rss <= budget
    return Target(backend, delay_ms, name, "PASS" if ok else "FAIL", f"{row.rss / MiB:.0f} MiB")
