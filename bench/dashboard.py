"""doc/grafana-dashboard.json, and a plot of its panels from a real run.

The panels are declared once, below: each query is a small spec from which both the
PromQL of the Grafana dashboard and a Python evaluation of the same expression over
recorded scrapes are made, so the plot in the README shows exactly what the dashboard would.

    python bench/dashboard.py json                      # writes doc/grafana-dashboard.json
    flock /work/bench.lock python bench/dashboard.py record --out /tmp/run.json [--backend rgw]
    python bench/dashboard.py plot /tmp/run.json doc/dashboard.png

`record` starts a throwaway S3 server (Ceph RGW or moto), the counting proxy of the tests
(answering 3 % of PUTs with 503 SlowDown, so that retries show), a mount with
`metrics_addr` and a small memory budget, and the registry on it; it pushes two images at
once with skopeo, drops the page cache, pulls both at once, pulls one again (from the
page cache), and scrapes the endpoint every second throughout. `plot` needs matplotlib
(`pip install .[dashboard]`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from bench.common import drop_caches  # noqa: E402
from bench.servers import server  # noqa: E402
from s3fs_registry import status  # noqa: E402
from tests.mounts import Mount, free_port  # noqa: E402
from tests.registry import Registry, make_image, pull, push, random_layer  # noqa: E402
from tests.s3proxy import S3Proxy  # noqa: E402

RATE_WINDOW_S = 5.0  # the plot's stand-in for Grafana's $__rate_interval at 1 s scrapes

# -- the panels ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Query:
    """`sum by (by) (...)` of a counter's rate, a gauge, a histogram quantile, or a ratio
    of two rates (`hit` over all results)."""

    kind: str  # "rate" | "gauge" | "quantile" | "ratio"
    metric: str
    legend: str
    by: tuple[str, ...] = ()
    match: dict[str, str] = field(default_factory=dict)  # label =~ regex
    exclude: dict[str, str] = field(default_factory=dict)  # label !~ regex
    quantile: float = 0.99

    def selector(self, metric: str, extra: dict[str, str] | None = None) -> str:
        filters = ['instance=~"$instance"']
        filters += [f'{k}=~"{v}"' for k, v in {**self.match, **(extra or {})}.items()]
        filters += [f'{k}!~"{v}"' for k, v in self.exclude.items()]
        return f"{metric}{{{','.join(filters)}}}"

    def promql(self) -> str:
        by = f"sum by ({', '.join(self.by)}) " if self.by else "sum "
        rate = "[$__rate_interval])"
        if self.kind == "gauge":
            return f"{by}({self.selector(self.metric)})"
        if self.kind == "rate":
            return f"{by}(rate({self.selector(self.metric)}{rate})"
        if self.kind == "quantile":
            labels = ", ".join((*self.by, "le"))
            inner = f"rate({self.selector(self.metric + '_bucket')}{rate}"
            return f"histogram_quantile({self.quantile}, sum by ({labels}) ({inner}))"
        if self.kind == "ratio":
            hits = f"rate({self.selector(self.metric, {'result': 'hit'})}{rate}"
            every = f"rate({self.selector(self.metric)}{rate}"
            return f"{by}({hits}) / {by}({every})"
        raise ValueError(self.kind)


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""


R, G, Q = "rate", "gauge", "quantile"
PANELS: tuple[Panel, ...] = (
    Panel("S3 requests by operation", "reqps", (
        Query(R, "s3fs_registry_s3_requests_total", "{{operation}}", ("operation",)),
    ), "Every attempt, retries included"),
    Panel("S3 errors, retries, failures", "reqps", (
        Query(R, "s3fs_registry_s3_requests_total", "error: {{outcome}}", ("outcome",),
              exclude={"outcome": "ok|not_found"}),
        Query(R, "s3fs_registry_s3_retries_total", "retried"),
        Query(R, "s3fs_registry_s3_failures_total", "failed for good"),
    ), "Attempts that failed, requests sent again, requests that gave up"),
    Panel("S3 latency p99 by operation", "s", (
        Query(Q, "s3fs_registry_s3_request_duration_seconds", "{{operation}}", ("operation",)),
    )),
    Panel("S3 latency p50 by operation", "s", (
        Query(Q, "s3fs_registry_s3_request_duration_seconds", "{{operation}}", ("operation",),
              quantile=0.5),
    )),
    Panel("Bytes read and written", "Bps", (
        Query(R, "s3fs_registry_read_bytes_total", "read from {{source}}", ("source",)),
        Query(R, "s3fs_registry_written_bytes_total", "written to S3"),
    )),
    Panel("FUSE operations", "ops", (
        Query(R, "s3fs_registry_fuse_operations_total", "{{operation}}", ("operation",)),
    )),
    Panel("FUSE errors by errno", "ops", (
        Query(R, "s3fs_registry_fuse_errors_total", "{{operation}} {{errno}}",
              ("operation", "errno")),
    )),
    Panel("Uploads in flight", "short", (
        Query(G, "s3fs_registry_uploads_in_flight", "files being written"),
        Query(G, "s3fs_registry_upload_parts_in_flight", "parts uploading"),
    )),
    Panel("Memory budget", "bytes", (
        Query(G, "s3fs_registry_memory_used_bytes", "in use: {{pool}}", ("pool",)),
        Query(G, "s3fs_registry_memory_limit_bytes", "budget"),
        Query(G, "process_resident_memory_bytes", "daemon RSS"),
    )),
    Panel("Writers waiting for memory", "short", (
        Query(G, "s3fs_registry_memory_waiting_writers", "{{pool}}", ("pool",)),
    )),
    Panel("Cache hit ratio", "percentunit", (
        Query("ratio", "s3fs_registry_cache_lookups_total", "{{cache}}", ("cache",)),
    ), "Attributes, negative entries, link files"),
    Panel("Spool", "bytes", (
        Query(G, "s3fs_registry_spool_used_bytes", "in use"),
    )),
    Panel("CloudFront", "reqps", (
        Query(R, "s3fs_registry_cloudfront_requests_total", "requests"),
        Query(R, "s3fs_registry_cloudfront_fallbacks_total", "fallback: {{cause}}", ("cause",)),
    ), "Ranged GETs of blobs, and those read from S3 instead, by cause"),
    Panel("Janitor", "short", (
        Query(R, "s3fs_registry_janitor_aborts_total", "{{result}}", ("result",)),
    ), "Stale multipart uploads aborted"),
)  # fmt: skip


def grafana_dashboard() -> dict[str, Any]:
    """The dashboard JSON: two panels per row, a data source and an instance variable."""
    panels = []
    for n, panel in enumerate(PANELS):
        panels.append(
            {
                "id": n + 1,
                "type": "timeseries",
                "title": panel.title,
                "description": panel.description,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (n % 2), "y": 8 * (n // 2)},
                "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {"refId": chr(ord("A") + i), "expr": q.promql(), "legendFormat": q.legend}
                    for i, q in enumerate(panel.queries)
                ],
            }
        )
    variables = [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source"},
        {
            "name": "instance",
            "type": "query",
            "label": "Mount",
            "datasource": {"type": "prometheus", "uid": "${datasource}"},
            "query": "label_values(s3fs_registry_mount_info, instance)",
            "includeAll": True,
            "multi": True,
            "refresh": 2,
        },
    ]
    return {
        "title": "s3fs-registry",
        "uid": "s3fs-registry",
        "description": "A mount of s3fs-registry: S3 traffic, FUSE, uploads, memory, caches",
        "tags": ["s3fs-registry", "registry", "s3"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "10s",
        "templating": {"list": variables},
        "panels": panels,
    }


# -- evaluating the queries on recorded scrapes --------------------------------------------

Scrape = tuple[float, list[tuple[str, dict[str, str], float]]]


def _select(
    scrape: Scrape, query: Query, metric: str, extra: dict[str, str] | None = None
) -> dict[tuple[str, ...], float]:
    """`sum by (by, le?)` of the samples of `metric` that pass the query's label filters."""
    out: dict[tuple[str, ...], float] = {}
    match = {**query.match, **(extra or {})}
    by = (*query.by, "le") if metric.endswith("_bucket") else query.by
    for name, labels, value in scrape[1]:
        if name != metric:
            continue
        if any(not re.fullmatch(v, labels.get(k, "")) for k, v in match.items()):
            continue
        if any(re.fullmatch(v, labels.get(k, "")) for k, v in query.exclude.items()):
            continue
        key = tuple(labels.get(label, "") for label in by)
        out[key] = out.get(key, 0.0) + value
    return out


def _rates(
    scrapes: Sequence[Scrape], query: Query, metric: str, extra: dict[str, str] | None = None
) -> list[tuple[float, dict[tuple[str, ...], float]]]:
    """Per-second increase over the last RATE_WINDOW_S, at every scrape after the first."""
    out = []
    selected = [(t, _select((t, s), query, metric, extra)) for t, s in scrapes]
    for i, (t, now) in enumerate(selected):
        j = max((k for k in range(i) if selected[k][0] <= t - RATE_WINDOW_S), default=0)
        if j == i:
            continue
        t0, then = selected[j]
        out.append((t, {k: max(0.0, v - then.get(k, 0.0)) / (t - t0) for k, v in now.items()}))
    return out


def _quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile: linear within the bucket the rank falls into."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return None


def evaluate(query: Query, scrapes: Sequence[Scrape]) -> dict[str, tuple[list[float], list[float]]]:
    """legend -> (times, values), the way Prometheus would answer the query."""
    points: list[tuple[float, dict[tuple[str, ...], float]]]
    if query.kind == "gauge":
        points = [(t, _select((t, s), query, query.metric)) for t, s in scrapes]
    elif query.kind == "rate":
        points = _rates(scrapes, query, query.metric)
    elif query.kind == "ratio":
        hits = dict(_rates(scrapes, query, query.metric, {"result": "hit"}))
        every = _rates(scrapes, query, query.metric)
        points = [
            (t, {k: hits[t].get(k, 0.0) / v for k, v in all_.items() if v > 0}) for t, all_ in every
        ]
    else:
        points = []
        for t, rates in _rates(scrapes, query, query.metric + "_bucket"):
            groups: dict[tuple[str, ...], dict[float, float]] = {}
            for key, value in rates.items():
                groups.setdefault(key[:-1], {})[float(key[-1])] = value
            answers = {k: _quantile(query.quantile, b) for k, b in groups.items()}
            points.append((t, {k: v for k, v in answers.items() if v is not None}))
    series: dict[str, tuple[list[float], list[float]]] = {}
    for t, values in points:
        for key, value in values.items():
            legend = query.legend
            for label, part in zip(query.by, key, strict=False):
                legend = legend.replace("{{" + label + "}}", part)
            times, ys = series.setdefault(legend, ([], []))
            times.append(t)
            ys.append(value)
    return series


# -- recording a run -----------------------------------------------------------------------


def parse_scrape(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name, dict(s.labels), float(s.value))
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


class Scraper(threading.Thread):
    """Scrapes the endpoint every `interval` seconds until stopped; notes events, and keeps
    the `status` of the mount from the first scrape with the most uploads in flight."""

    def __init__(self, url: str, mountpoint: Path, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.url, self.mountpoint, self.interval = url, mountpoint, interval
        self.scrapes: list[Scrape] = []
        self.events: list[tuple[float, str]] = []
        self.status = ""
        self.most_uploads = 0
        self._done = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._done.is_set():
            with contextlib.suppress(OSError), urllib.request.urlopen(self.url, timeout=5) as resp:
                self.scrapes.append((time.time(), parse_scrape(resp.read().decode())))
                gauge = "s3fs_registry_uploads_in_flight"
                in_flight = [v for n, _, v in self.scrapes[-1][1] if n == gauge]
                if in_flight and in_flight[0] > self.most_uploads:
                    self.most_uploads = int(in_flight[0])
                    self.status = status.format_report(status.query(str(self.mountpoint)))
            elapsed = time.monotonic() - start
            self._done.wait(self.interval - elapsed % self.interval)

    def mark(self, what: str) -> None:
        self.events.append((time.time(), what))

    def stop(self) -> None:
        self._done.set()
        self.join()


IMAGES = (0, 1)  # pushed, then pulled, at the same time


def _at_once(step: Callable[[int], object]) -> None:
    """`step(i)` for every image, each in its own thread; re-raises the first failure."""
    failures: list[BaseException] = []

    def run(i: int) -> None:
        try:
            step(i)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in IMAGES]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


def record(backend: str, out: Path, layers: int, layer_mib: int) -> None:
    """A push and two pulls on a mount with metrics, scraped every second (module doc)."""
    workdir = Path(tempfile.mkdtemp(prefix="s3fs-dashboard-"))
    port = free_port()
    with server(backend, workdir / backend, "bluestore") as s3, S3Proxy(s3.endpoint) as proxy:
        proxy.add_fault("slowdown", method="PUT", probability=0.03, seed=7)
        mount = Mount(
            workdir / "mount",
            s3,
            s3.new_bucket(),
            endpoint=proxy.url,
            mount={"metrics_addr": str(port), "log_level": "info", "memory_budget": "256MiB"},
        ).start()
        scraper = Scraper(f"http://127.0.0.1:{port}/metrics", mount.path)
        scraper.start()
        try:
            registry = Registry(mount.path, workdir=workdir / "registry").start()
            for image in IMAGES:
                seeds = range(image * layers, (image + 1) * layers)
                blobs = [random_layer(layer_mib << 20, seed) for seed in seeds]
                config = {"architecture": "amd64", "os": "linux", "image": image}
                make_image(workdir / f"img{image}", blobs, config)
                del blobs
            time.sleep(3)
            scraper.mark("2 pushes")
            _at_once(lambda i: push(workdir / f"img{i}", registry.url, f"demo/app{i}:v1"))
            time.sleep(3)
            drop_caches()
            scraper.mark("2 cold pulls")
            _at_once(lambda i: pull(registry.url, f"demo/app{i}:v1", workdir / f"cold{i}"))
            time.sleep(3)
            scraper.mark("warm pull")
            pull(registry.url, "demo/app0:v1", workdir / "warm")
            time.sleep(3)
            registry.stop()
        finally:
            scraper.stop()
            mount.stop()
    run = {
        "backend": backend,
        "what": f"{len(IMAGES)} images of {layers} x {layer_mib} MiB pushed at once, pulled "
        "cold at once, one pulled warm",
        "faults": "3% of PUTs answered 503 SlowDown by the proxy",
        "events": scraper.events,
        "status": scraper.status,
        "scrapes": scraper.scrapes,
    }
    out.write_text(json.dumps(run))
    print(f"{len(scraper.scrapes)} scrapes written to {out}; status during the push:")
    print(scraper.status)


# -- plotting ------------------------------------------------------------------------------


def plot(run_path: Path, png: Path) -> None:
    import matplotlib  # noqa: PLC0415 - optional: only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    run = json.loads(run_path.read_text())
    scrapes: list[Scrape] = [(t, [(n, labels, v) for n, labels, v in s]) for t, s in run["scrapes"]]
    start = scrapes[0][0]
    columns = 2
    rows = -(-len(PANELS) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(15, 3.1 * rows), sharex=True)
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        for query in panel.queries:
            for legend, (times, values) in sorted(evaluate(query, scrapes).items()):
                if any(values) or query.kind == "gauge":
                    ax.plot([t - start for t in times], values, label=legend, linewidth=1.2)
        for when, what in run["events"]:
            ax.axvline(when - start, color="grey", linestyle=":", linewidth=0.8)
            ax.annotate(what, (when - start, 1), xycoords=("data", "axes fraction"),
                        fontsize=7, color="grey", va="top", rotation=90)  # fmt: skip
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.set_ylim(bottom=0)
        if ax.get_ylim()[1] <= 0:
            ax.set_ylim(0, 1)
        ax.yaxis.set_major_formatter(_formatter(panel.unit))
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper right", ncol=2)
        else:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="grey")
    for ax in axes.flat[len(PANELS) :]:
        ax.remove()
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    fig.suptitle(
        f"s3fs-registry dashboard panels over a real run on {run['backend']}: {run['what']}; "
        f"{run['faults']}; scraped every second",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    fig.savefig(png, dpi=80)
    print(f"wrote {png}")


def _formatter(unit: str) -> Any:
    from matplotlib.ticker import FuncFormatter  # noqa: PLC0415

    def fmt(value: float, _pos: int) -> str:
        if unit in ("bytes", "Bps"):
            for suffix in ("B", "KiB", "MiB", "GiB"):
                if abs(value) < 1024 or suffix == "GiB":
                    digits = 0 if value == int(value) or abs(value) >= 10 else 1
                    return f"{value:.{digits}f} {suffix}" + ("/s" if unit == "Bps" else "")
                value /= 1024
        if unit == "s":
            return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.1f} s"
        if unit == "percentunit":
            return f"{value * 100:.0f}%"
        if unit in ("reqps", "ops"):
            return f"{value:g}/s"
        return f"{value:g}"

    return FuncFormatter(fmt)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("json", help="write doc/grafana-dashboard.json")
    rec = sub.add_parser("record", help="scrape a real push and pull")
    rec.add_argument("--backend", choices=("rgw", "moto"), default="rgw")
    rec.add_argument("--out", type=Path, required=True)
    rec.add_argument("--layers", type=int, default=4, help="layers per image")
    rec.add_argument("--layer-mib", type=int, default=96)
    draw = sub.add_parser("plot", help="draw the panels of a recorded run")
    draw.add_argument("run", type=Path)
    draw.add_argument("png", type=Path)
    args = parser.parse_args(argv)
    if args.command == "json":
        path = REPO / "doc" / "grafana-dashboard.json"
        path.write_text(json.dumps(grafana_dashboard(), indent=2) + "\n")
        print(f"wrote {path}")
    elif args.command == "record":
        record(args.backend, args.out, args.layers, args.layer_mib)
    else:
        plot(args.run, args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
