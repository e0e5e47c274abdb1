#!/usr/bin/env python3
"""The benchmark: this mount against s3fs-fuse, rclone mount, boto3 (ranged GETs, its
TransferManager, a single GET) and the registry's native S3 driver, on the same S3 server
in the same run, on loopback and on modelled network links.

    python bench/run.py [--quick] [--backend rgw|moto|both] [--systems LIST]
                        [--workloads LIST] [--runs N] [--link RTT/MIBPS,...] [--out FILE]
                        [--markdown FILE]

Starts the server(s) itself (Ceph RGW on bluestore, then moto), a counting proxy per link
shape (with the link model in front of it unless loopback, bench/link.py), and for every
run, workload and system a fresh bucket and a fresh mount. Prints one table per backend
and link shape (median of the runs, MiB/s or ops/s, speed ratios to each boto3 client,
s3fs and the native driver, S3 requests, serial round trips, CPU of the daemon, peak RSS)
and the issues' targets; writes every sample and the summary as JSON. See bench/README.md.
Run as root (drop_caches, FUSE mounts); talks only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import boto3

from bench import fsworkloads as fw
from bench import metaworkloads as mw
from bench import regworkloads as rw
from bench import report
from bench.common import (
    FULL,
    QUICK,
    REPO,
    BenchError,
    Endpoint,
    GiB,
    MiB,
    Sample,
    Sizes,
    delete_bucket,
    run_cmd,
    s3_client,
    write_random_file,
)
from bench.context import REFERENCES, Ctx, LocalData, Proxy, reason
from bench.link import LinkShape
from bench.proxy import NoProxy, ProxyProcess
from bench.servers import server as start_server
from bench.systems import ALL_SYSTEMS, CACHE_SYSTEM, DEFAULT_SYSTEMS, FS_SYSTEMS, Mounter
from tests.mounts import S3Server
from tests.registry import make_image, random_layer

Workload = Callable[[Ctx, str, list[Sample]], None]


@dataclasses.dataclass(frozen=True)
class Group:
    """One numbered workload of the issues: the sample ids it yields and who can run it."""

    ids: Callable[[Sizes], tuple[str, ...]]
    systems: tuple[str, ...]
    fn: Workload


def _ids(*ids: str) -> Callable[[Sizes], tuple[str, ...]]:
    return lambda sizes: ids


FS_AND_BOTO3 = (*FS_SYSTEMS, "boto3")
FS_AND_CLIENTS = (*FS_SYSTEMS, *REFERENCES)  # the transfers every boto3 client can do
FS_AND_NATIVE = (*FS_SYSTEMS, "native")
GROUPS: dict[int, Group] = {
    1: Group(_ids("1"), FS_AND_CLIENTS, fw.w1_write),
    2: Group(_ids("2"), FS_AND_CLIENTS, fw.w2_read),
    3: Group(_ids("3in", "3out"), FS_AND_CLIENTS, fw.w3_cp),
    4: Group(_ids("4"), FS_AND_BOTO3, fw.w4_small),
    5: Group(_ids("5ls", "5find"), FS_AND_BOTO3, fw.w5_list),
    6: Group(_ids("6"), FS_AND_BOTO3, fw.w6_rename),
    7: Group(_ids("7"), FS_AND_BOTO3, fw.w7_append),
    8: Group(_ids("8w", "8r"), FS_AND_CLIENTS, fw.w8_parallel),
    9: Group(_ids("9push", "9pull", "11push", "11pull"), FS_AND_NATIVE, rw.w9_push_pull),
    10: Group(_ids("10"), FS_AND_NATIVE, rw.w10_chunked),
    12: Group(_ids("12"), FS_AND_BOTO3, fw.w12_memory),
    13: Group(_ids("13"), FS_AND_CLIENTS, fw.w13_cp_read),
    14: Group(
        lambda z: tuple(f"14{'abcdefgh'[i]}" for i in range(len(z.fsync_writes))),
        FS_AND_CLIENTS,
        fw.w14_fsync_writes,
    ),
    15: Group(_ids("15push", "15pull"), FS_AND_NATIVE, rw.w15_small_image),
    16: Group(lambda z: mw.meta_ids(z.meta_repos), ("mount", "native"), mw.w16_metadata),
    17: Group(_ids("17cold", "17warm"), ("mount", CACHE_SYSTEM, "native"), rw.w17_warm_pull),
}
#: names for sets of workloads; 16 (metadata, minutes per system at N=1000) only on request
ALIASES: dict[str, list[int]] = {
    "all": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
    "issue11": [2, 8, 9, 13, 14, 15],
    "meta": [16],
    "cache": [17],
}
DEFAULT_LINKS = "0,20/20"


# ------------------------------------------------------------------------------ arguments


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python bench/run.py",
        description="Benchmark this mount against its peers on one S3 server (bench/README.md).",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="small sizes and 1 run: a smoke test of the harness, not a benchmark",
    )
    ap.add_argument("--backend", choices=["rgw", "moto", "both"], default="both")
    ap.add_argument(
        "--systems",
        default=",".join(DEFAULT_SYSTEMS),
        help=f"comma-separated subset of {','.join(ALL_SYSTEMS)}",
    )
    ap.add_argument(
        "--workloads",
        default="all",
        help="comma-separated workload numbers or names: all (1-15), issue11 (2,8,9,13,14,15), "
        "meta (16); 11 is measured with 9",
    )
    ap.add_argument("--runs", type=int, default=None, help="runs per workload (3; --quick: 1)")
    ap.add_argument(
        "--link",
        default="",
        help=f"link shapes RTT_MS/MIBPS (per connection and direction; 0 = loopback), e.g. "
        f"0,20/20,5/50,50/10 (default {DEFAULT_LINKS})",
    )
    ap.add_argument("--rtt-ms", default="", help="round trips of the link shapes, e.g. 0,20")
    ap.add_argument("--conn-mibps", default="", help="their caps, paired with --rtt-ms: 0,20")
    ap.add_argument(
        "--delay-ms",
        default="",
        help="old form: delays each way, each an uncapped link of twice that round trip",
    )
    ap.add_argument(
        "--repos",
        default="",
        help="repositories of the metadata phases (16), e.g. 100,1000 (default; --quick: 20)",
    )
    ap.add_argument(
        "--trace",
        default="",
        metavar="DIR",
        help="write every timed step's requests (method, path, start, end...) to DIR as JSON",
    )
    ap.add_argument("--out", default=str(REPO / "bench" / "results.json"))
    ap.add_argument(
        "--markdown", default="", help="also write the tables as a RESULTS.md-style file"
    )
    ap.add_argument("--objectstore", choices=["bluestore", "memstore"], default="bluestore")
    ap.add_argument(
        "--direct",
        action="store_true",
        help="at delay 0, connect straight to the server (no proxy, no counts)",
    )
    ap.add_argument(
        "--mount-opt",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a mount: setting of this daemon, e.g. memory_budget=512MiB",
    )
    ap.add_argument("--s3fs-opt", action="append", default=[], help="extra s3fs -o option")
    ap.add_argument("--rclone-flag", action="append", default=[], help="extra rclone flag")
    ap.add_argument("--workdir", default="", help="scratch directory (default: a new one)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory and logs")
    ap.add_argument(
        "--report",
        default="",
        metavar="JSON[,JSON]",
        help="measure nothing: print (and --markdown) the tables of saved result files",
    )
    args = ap.parse_args(argv)
    args.runs = args.runs or (1 if args.quick else 3)
    args.links = link_shapes(args)
    return args


def link_shapes(args: argparse.Namespace) -> list[LinkShape]:
    """The link shapes from --link, or --rtt-ms with --conn-mibps, or --delay-ms."""
    given = [bool(args.link), bool(args.rtt_ms or args.conn_mibps), bool(args.delay_ms)]
    if sum(given) > 1:
        raise SystemExit("give link shapes one way: --link, --rtt-ms/--conn-mibps or --delay-ms")
    try:
        if args.rtt_ms or args.conn_mibps:
            rtts = [x for x in args.rtt_ms.split(",") if x.strip()]
            rates = [x for x in args.conn_mibps.split(",") if x.strip()]
            if len(rtts) != len(rates):
                raise SystemExit("--rtt-ms and --conn-mibps need as many values each")
            return [LinkShape.parse(f"{r}/{m}") for r, m in zip(rtts, rates, strict=True)]
        if args.delay_ms:
            delays = [float(x) for x in args.delay_ms.split(",") if x.strip()]
            return [LinkShape(2 * d, 0) for d in delays]
        return [LinkShape.parse(x) for x in (args.link or DEFAULT_LINKS).split(",") if x.strip()]
    except ValueError as e:
        raise SystemExit(str(e)) from None


def selected_groups(text: str) -> list[int]:
    wanted: set[int] = set()
    for item in (x.strip() for x in text.split(",")):
        if not item:
            continue
        if item in ALIASES:
            wanted.update(ALIASES[item])
        elif item.isdigit():
            wanted.add(int(item))
        else:
            raise SystemExit(f"unknown workload {item!r}: a number or one of {sorted(ALIASES)}")
    if 11 in wanted:
        wanted.add(9)  # the requests of (11) are counted during the push and pull of (9)
    unknown = wanted - set(GROUPS) - {11}
    if unknown:
        raise SystemExit(f"unknown workloads: {sorted(unknown)}")
    return sorted(wanted & set(GROUPS))


def selected_systems(text: str) -> list[str]:
    systems = [s.strip() for s in text.split(",") if s.strip()]
    unknown = set(systems) - set(ALL_SYSTEMS)
    if unknown:
        raise SystemExit(f"unknown systems: {sorted(unknown)}")
    return systems


def mount_options(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--mount-opt wants KEY=VALUE, not {item!r}")
        out[key.strip()] = value.strip()
    return out


def parse_size(text: str) -> int:
    """A mount size setting (``512MiB``, ``1GB``, ``1048576``) in bytes."""
    units = {
        "": 1,
        "b": 1,
        "kb": 1000,
        "mb": 1000**2,
        "gb": 1000**3,
        "kib": 1024,
        "mib": MiB,
        "gib": GiB,
    }
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in units:
        raise SystemExit(f"cannot read the size {text!r}")
    return int(float(m.group(1)) * units[m.group(2).lower()])


# ------------------------------------------------------------------------------ inputs


class LazyLayers(Sequence[bytes]):
    """Random layers made on demand, so a ~1 GiB image never sits in memory at once."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = list(sizes)
        self.seed = 1000 + 100 * len(self.sizes)  # the two images share no layer

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        return random_layer(self.sizes[i], seed=self.seed + i % len(self))


def prepare_local(workdir: Path, sizes: Sizes) -> LocalData:
    data = workdir / "data"
    data.mkdir(parents=True, exist_ok=True)
    cp_src = data / "cp-src"
    write_random_file(cp_src, sizes.cp)
    images = []
    for name, layers in (("image", sizes.image_layers), ("small-image", sizes.small_image_layers)):
        image_dir = data / name
        shutil.rmtree(image_dir, ignore_errors=True)
        images.append((image_dir, make_image(image_dir, LazyLayers(layers))))
    (image_dir, image), (small_dir, small) = images
    return LocalData(cp_src, image_dir, image, os.urandom(sizes.chunked), small_dir, small)


# ------------------------------------------------------------------------------ running


class Runner:
    """Runs every selected workload on every selected system, recording all samples."""

    def __init__(self, args: argparse.Namespace, sizes: Sizes, workdir: Path) -> None:
        self.args = args
        self.sizes = sizes
        self.workdir = workdir
        self.groups = selected_groups(args.workloads)
        self.systems = selected_systems(args.systems)
        self.links: list[LinkShape] = args.links
        self.mount_opts = mount_options(args.mount_opt)
        self.samples: list[Sample] = []
        self.meta: dict[str, Any] = {}
        self.started = time.monotonic()

    def run(self) -> None:
        data = prepare_local(self.workdir, self.sizes)
        backends = ["rgw", "moto"] if self.args.backend == "both" else [self.args.backend]
        for backend in backends:
            self._backend(backend, data)

    def _backend(self, backend: str, data: LocalData) -> None:
        log(f"== {backend}: starting the server")
        with start_server(backend, self.workdir / backend, self.args.objectstore) as server:
            direct = s3_client(Endpoint(server.endpoint, server.access_key, server.secret_key))
            ro_bucket = "bench-ro"
            direct.create_bucket(Bucket=ro_bucket)
            try:
                t0 = time.monotonic()
                fw.make_ro_bucket(direct, ro_bucket, self.sizes)
                log(f"   read-only inputs uploaded in {time.monotonic() - t0:.1f}s")
                for link in self.links:
                    with self._proxy(server, link) as proxy:
                        self._link(backend, link, server, direct, proxy, ro_bucket, data)
            finally:
                with contextlib.suppress(Exception):
                    delete_bucket(direct, ro_bucket)

    @contextlib.contextmanager
    def _proxy(self, server: S3Server, link: LinkShape) -> Iterator[Proxy]:
        if link.loopback and self.args.direct:
            yield NoProxy(server.endpoint)
            return
        log_path = self.workdir / f"proxy-{link.key.replace('/', '_')}.log"
        proxy = ProxyProcess(server.endpoint, link, log_path).start()
        try:
            yield proxy
        finally:
            proxy.stop()

    def _link(
        self,
        backend: str,
        link: LinkShape,
        server: S3Server,
        direct: Any,
        proxy: Proxy,
        ro_bucket: str,
        data: LocalData,
    ) -> None:
        endpoint = Endpoint(proxy.url, server.access_key, server.secret_key)
        mounter = Mounter(
            server,
            endpoint,
            provider="Ceph" if backend == "rgw" else "Other",
            mount_options=self.mount_opts,
            s3fs_options=self.args.s3fs_opt,
            rclone_flags=self.args.rclone_flag,
        )
        workdir = self.workdir / f"{backend}-{link.key.replace('/', '_')}"
        workdir.mkdir(parents=True, exist_ok=True)
        for run in range(self.args.runs):
            ctx = Ctx(
                backend,
                link,
                run,
                self.sizes,
                server,
                direct,
                endpoint,
                proxy,
                mounter,
                workdir,
                ro_bucket,
                data,
                trace_dir=Path(self.args.trace) if self.args.trace else None,
            )
            for number in self.groups:
                for system in self.systems:
                    if system in GROUPS[number].systems:
                        self._one(ctx, number, system)

    def _one(self, ctx: Ctx, number: int, system: str) -> None:
        """One workload on one system; a failure becomes samples that say why."""
        group = GROUPS[number]
        out: list[Sample] = []
        try:
            group.fn(ctx, system, out)
        except Exception as e:  # any failure of a peer is a result, not the end of the run
            why = reason(e)
            expected = [(wl, system) for wl in group.ids(self.sizes)]
            if number == 6 and system == "boto3":
                expected.append(("6", "boto3-copy"))
            have = {(s.workload, s.system) for s in out}
            out += [ctx.sample(wl, sy, error=why) for wl, sy in expected if (wl, sy) not in have]
        for s in out:
            log(f"   [{ctx.backend} {ctx.link.key} run {ctx.run + 1}] {describe(s)}")
        self.samples += out
        self.save()

    # -------------------------------------------------------------------------- output

    def save(self) -> None:
        """Write the JSON after every workload, so an interrupted run keeps its numbers."""
        rows = report.summarize(self.samples)
        doc = {
            "meta": self.meta,
            "summary": [dataclasses.asdict(r) | {"rate": r.rate} for r in rows.values()],
            "targets": [dataclasses.asdict(t) for t in self.all_targets(rows)],
            "samples": [dataclasses.asdict(s) for s in self.samples],
        }
        out = Path(self.args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=1))
        tmp.replace(out)

    def budget(self) -> int:
        return parse_size(self.mount_opts.get("memory_budget", "512MiB"))

    def sections(self) -> list[tuple[str, str]]:
        """(backend, link key) of every table, in the order measured."""
        seen = dict.fromkeys((s.backend, report.link_key(s)) for s in self.samples)
        return list(seen)

    def all_targets(self, rows: dict[report.Key, report.Row]) -> list[report.Target]:
        out: list[report.Target] = []
        for backend, link in self.sections():
            out += report.targets(rows, backend, link, self.budget())
        return out

    def proxy_line(self, backend: str, link: str) -> str:
        """What the proxy (and link model) cost in the timed steps of one table."""
        cpu, moved = report.proxy_cost(self.samples, backend, link)
        if not moved:
            return ""
        return (
            f"proxy process ({report.link_label(link)}): {cpu:.1f} CPU s for "
            f"{moved / GiB:.1f} GiB relayed in the timed steps, {cpu / (moved / GiB):.2f} s/GiB"
        )


def describe(s: Sample) -> str:
    if s.error:
        return f"{s.workload} {s.system}: failed: {s.error}"
    if s.unit == "req":
        return f"{s.workload} {s.system}: {s.requests} requests {s.by_method}"
    rate = ""
    if s.seconds:
        rate = (
            f"{s.amount / s.seconds / MiB:.1f} MiB/s"
            if s.unit == "B"
            else f"{s.amount / s.seconds:.1f} ops/s"
        )
    rss = f", peak RSS {s.rss / MiB:.0f} MiB" if s.rss else ""
    return f"{s.workload} {s.system}: {s.seconds:.3f}s {rate}, {s.requests} requests{rss}"


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ metadata


def versions() -> dict[str, str]:
    """Versions of everything measured, for RESULTS.md."""

    def first_line(argv: list[str]) -> str:
        try:
            return run_cmd(argv, 30).strip().splitlines()[0]
        except (BenchError, OSError, IndexError):
            return "unavailable"

    import moto  # noqa: PLC0415 - only needed for its version

    import s3fs_registry  # noqa: PLC0415

    return {
        "kernel": platform.release(),
        "s3fs-registry": getattr(s3fs_registry, "__version__", "?"),
        "s3fs": first_line(["s3fs", "--version"]),
        "rclone": first_line(["rclone", "version"]),
        "ceph": first_line(["ceph", "--version"]),
        "docker-registry": first_line(["docker-registry", "--version"]),
        "skopeo": first_line(["skopeo", "--version"]),
        "python": platform.python_version(),
        "boto3": boto3.__version__,
        "moto": moto.__version__,
    }


def machine() -> dict[str, str]:
    mem = "?"
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) // 1024} MiB"
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"nproc": str(os.cpu_count()), "memory": mem, "cpu": cpu}


def print_report(runner: Runner) -> str:
    rows = report.summarize(runner.samples)
    parts = []
    for backend, link in runner.sections():
        cells = report.table_cells(rows, backend, link)
        head = f"\n== {backend}, {report.link_label(link)} ==\n"
        parts.append(head + report.render_text(cells))
        parts.append(runner.proxy_line(backend, link))
        tlines = [
            f"  {t.status:<4} {t.name}: {t.detail}"
            for t in report.targets(rows, backend, link, runner.budget())
        ]
        parts.append("targets:\n" + "\n".join(tlines))
    text = "\n".join(parts)
    print(text)
    return text


def human_sizes(sizes: dict[str, Any]) -> str:
    """The Sizes of a run in words, for RESULTS.md."""

    def mib(n: int) -> str:
        return f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB"

    def layers(key: str) -> str:
        return "+".join(f"{n // MiB}" for n in sizes.get(key, ()))

    fsync = " and ".join(mib(n) for n in sizes.get("fsync_writes", ()))
    repos = ", ".join(str(n) for n in sizes.get("meta_repos", ()))
    return (
        f"(1)(2) {mib(sizes['seq'])}; (3) {mib(sizes['cp'])}; "
        f"(4) {sizes['small_count']} x {sizes['small_size']} B; "
        f"(5) {sizes['tree_dirs'] * sizes['tree_files']} files in {sizes['tree_dirs']} dirs; "
        f"(6) {mib(sizes['rename'])}; (7) {mib(sizes['append_base'])} + "
        f"{mib(sizes['append_add'])}; (8) {sizes['par_count']} x {mib(sizes['par_size'])}; "
        f"(9) image of {layers('image_layers')} MiB layers; (10) {mib(sizes['chunked'])} in "
        f"{mib(sizes['chunk'])} PATCHes; (12) {sizes['rss_writers']} x {mib(sizes['rss_size'])}; "
        f"(13) {mib(sizes['seq'])}; (14) {fsync}; "
        f"(15) image of {layers('small_image_layers')} MiB layers; (16) {repos} repositories"
    )


def write_markdown(runner: Runner, path: Path) -> None:
    rows = report.summarize(runner.samples)
    meta = runner.meta
    lines = ["# Benchmark results", ""]
    if meta.get("quick"):
        lines += [
            "> **Quick smoke run with small sizes (`--quick`), NOT the real benchmark.**",
            "> The numbers, and the PASS/FAIL of the targets, only show that the harness runs;",
            "> at these sizes they say nothing about speed. The benchmark is",
            "> `python bench/run.py --markdown bench/RESULTS.md` on an idle machine.",
            "",
        ]
    lines += [
        f"* Date: {meta['date']}",
        f"* Command: `{meta['command']}`",
        f"* Wall time: {meta.get('wall_seconds', 0):.0f} s",
        "* Versions:",
    ]
    lines += [f"  * {k}: {v}" for k, v in meta["versions"].items()]
    lines += ["* Machine: " + ", ".join(f"{k} {v}" for k, v in meta["machine"].items())]
    lines += [
        f"* RGW object store: {meta.get('rgw_objectstore', 'bluestore')}; "
        f"S3 proxy: {meta.get('proxy', 'bench/proxy.py at every delay')}",
        "",
    ]
    lines += [
        f"Sizes: {human_sizes(meta['sizes'])}",
        "",
        "How to read the table: bench/README.md. Ratios are speed ratios "
        "(higher is faster) except workload 11, where x native = requests / native's.",
        "",
    ]
    lines += markdown_sections(runner, rows, level="##")
    path.write_text("\n".join(lines))


def markdown_sections(runner: Runner, rows: dict[report.Key, report.Row], level: str) -> list[str]:
    """One table per backend and link shape, with its legend, proxy cost and targets."""
    lines: list[str] = []
    for backend, link in runner.sections():
        lines += [f"{level} {backend}, {report.link_label(link)}", ""]
        lines += [report.render_markdown(report.table_cells(rows, backend, link)), ""]
        lines += [f"* {item}" for item in report.legend(rows, backend, link)]
        proxy = runner.proxy_line(backend, link)
        lines += ["", proxy, ""] if proxy else [""]
        lines += ["Targets:", ""]
        lines += [
            f"* {t.status} {t.name}: {t.detail}"
            for t in report.targets(rows, backend, link, runner.budget())
        ]
        lines.append("")
    return lines


# ------------------------------------------------------------------------------ main


def report_only(args: argparse.Namespace, sizes: Sizes) -> int:
    """Tables from saved JSON files (several runs merged), without measuring anything."""
    runner = Runner(args, sizes, Path(tempfile.gettempdir()))
    metas = []
    for name in args.report.split(","):
        doc = json.loads(Path(name).read_text())
        metas.append(doc["meta"])
        runner.samples += [Sample(**d) for d in doc["samples"]]
    runner.meta = dict(metas[0])
    runner.meta["command"] = " ; ".join(m["command"] for m in metas)
    runner.meta["wall_seconds"] = sum(m.get("wall_seconds", 0.0) for m in metas)
    runner.meta["quick"] = any(m.get("quick") for m in metas)
    print_report(runner)
    if args.markdown:
        write_markdown(runner, Path(args.markdown))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sizes = QUICK if args.quick else FULL
    if args.repos:
        repos = tuple(int(x) for x in args.repos.split(",") if x.strip())
        sizes = dataclasses.replace(sizes, meta_repos=repos)
    if args.report:
        return report_only(args, sizes)
    own_workdir = not args.workdir
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="s3b-", dir="/tmp")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(args, sizes, workdir)
    runner.meta = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python bench/run.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick,
        "sizes": dataclasses.asdict(sizes),
        "versions": versions(),
        "machine": machine(),
        "workdir": str(workdir),
        "rgw_objectstore": args.objectstore,
        "proxy": (
            "none on loopback (--direct); bench/proxy.py with the link model on the links"
            if args.direct
            else "bench/proxy.py on every link shape (with bench/link.py unless loopback)"
        ),
        "links": [link.key for link in args.links],
    }
    log(f"scratch directory: {workdir}")
    try:
        runner.run()
    except KeyboardInterrupt:
        log("interrupted: reporting what was measured")
    finally:
        runner.meta["wall_seconds"] = time.monotonic() - runner.started
        runner.save()
        if own_workdir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print_report(runner)
    if args.markdown:
        write_markdown(runner, Path(args.markdown))
    log(f"results: {args.out}; wall time {runner.meta['wall_seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
