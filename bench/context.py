"""What a workload needs to measure one system: buckets, mounts, the proxy, the timer.

One ``Ctx`` exists per (backend, link shape, run). Workloads call ``measure`` for
file-system and registry steps and ``reference`` (or ``boto3``) for the boto3 clients, so
that every number is taken the same way: the proxy's request count is reset just before the
timed step and read just after (with the serial round trips and the proxy's own CPU), the
daemon's peak RSS is reset just before it, and its CPU seconds are read on both sides.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import resource
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from bench.common import (
    REPO,
    BenchError,
    Endpoint,
    Sample,
    Sizes,
    cpu_seconds,
    delete_bucket,
    last_line,
    reset_hwm,
    run_cmd,
)
from bench.link import LinkShape
from bench.systems import Mounted, Mounter
from tests.mounts import S3Server
from tests.registry import ImageInfo, SkopeoError


def _children_cpu() -> float:
    """CPU seconds of this process's finished children: the client commands of a step
    (dd, cp, skopeo, garbage-collect), in the JSON as ``cpu_other.client``."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reason(e: BaseException) -> str:
    """One short line that says why a step failed (scratch paths shortened to MNT/...)."""
    if isinstance(e, SkopeoError):
        line = last_line(e.output)
        m = re.search(r'msg="(.*)', line)  # skopeo's logrus line: the message is what matters
        text = f"skopeo: {m.group(1).rstrip(chr(34)) if m else line}"
    else:
        lines = str(e).strip().splitlines()
        text = lines[0] if lines else ""
        if not isinstance(e, BenchError):
            text = f"{type(e).__name__}: {text}"
    return _SCRATCH.sub("MNT/", text)[:160]


_SCRATCH = re.compile(r"/\S*/mnt/")


class Proxy(Protocol):
    url: str

    def reset(self) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def dump(self, path: Path) -> None: ...


#: the rawboto operation of each boto3 client for each kind of transfer (bench/rawboto.py)
REFERENCE_OPS: dict[str, dict[str, str]] = {
    "boto3": {"put": "put", "put-file": "put-file", "get": "get", "get-file": "get-file"},
    "boto3-tm": {
        "put": "tm-put",
        "put-file": "tm-put-file",
        "get": "tm-get",
        "get-file": "tm-get-file",
    },
    "boto3-get": {"put": "put1", "put-file": "put1-file", "get": "get1", "get-file": "get1-file"},
}
REFERENCES = tuple(REFERENCE_OPS)


@dataclasses.dataclass
class LocalData:
    """Inputs made once per benchmark run and shared by every backend and system."""

    cp_src: Path  # (3) random bytes, copied in
    image_dir: Path  # (9) OCI layout of the pushed image
    image: ImageInfo
    chunked: bytes  # (10) the blob uploaded in PATCHes
    small_image_dir: Path  # (15) OCI layout of the ~200 MiB image
    small_image: ImageInfo


@dataclasses.dataclass
class Ctx:
    backend: str
    link: LinkShape
    run: int
    sizes: Sizes
    server: S3Server
    direct: Any  # boto3 client straight to the server: set-up and checks, never counted
    endpoint: Endpoint  # what the systems under test talk to (the proxy)
    proxy: Proxy
    mounter: Mounter
    workdir: Path
    ro_bucket: str  # read-only inputs of (2), (3 out), (5), (8 readers)
    data: LocalData
    trace_dir: Path | None = None  # --trace: every step's requests are dumped here
    _t0: float = 0.0
    _marks: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def delay_ms(self) -> int:
        return round(self.link.rtt_ms / 2)

    def sample(self, workload: str, system: str, **fields: Any) -> Sample:
        return Sample(
            self.backend, self.delay_ms, self.run, workload, system, link=self.link.key, **fields
        )

    def counted(self, sample: Sample, stats: dict[str, Any], before: dict[str, Any]) -> Sample:
        """Put the proxy's counts since ``before`` (its answer to the reset) on ``sample``."""
        sample.requests = stats.get("requests")
        sample.by_method = stats.get("by_method", {})
        sample.serial = stats.get("serial")
        if "cpu_s" in stats and "cpu_s" in before:
            sample.cpu_other["proxy"] = stats["cpu_s"] - before["cpu_s"]
            sample.extra["proxy_bytes"] = stats.get("bytes_in", 0) + stats.get("bytes_out", 0)
            sample.extra["connections"] = stats.get("connections")
        if self.trace_dir is not None and stats:
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            name = f"{self.backend}-{self.link.key.replace('/', '_')}-{sample.workload}"
            self.proxy.dump(self.trace_dir / f"{name}-{sample.system}-r{self.run}.json")
        return sample

    @contextlib.contextmanager
    def bucket(self, system: str, workload: str) -> Iterator[str]:
        """A fresh bucket for one workload on one system, deleted with its data afterwards."""
        name = f"{system}-{workload}-r{self.run}-{uuid.uuid4().hex[:8]}".lower()
        self.direct.create_bucket(Bucket=name)
        try:
            yield name
        finally:
            with contextlib.suppress(Exception):
                delete_bucket(self.direct, name)

    @contextlib.contextmanager
    def mounted(self, system: str, bucket: str, out: list[Sample]) -> Iterator[Mounted]:
        """Mount ``bucket`` for ``system``; unmount afterwards.

        A daemon that exits non-zero at unmount (e.g. an upload it could not finish) turns
        the samples taken on that mount into failures.
        """
        fs = self.mounter.mount(system, bucket, self.workdir / f"{system}-{bucket}")
        first = len(out)
        try:
            yield fs
            fs.settle(self.sizes.timeout)
        finally:
            code = fs.stop()
            if code != 0:
                for s in out[first:]:
                    s.error = s.error or f"daemon exited {code} at unmount"

    def attempt(
        self, workload: str, system: str, out: list[Sample], fn: Callable[[], None]
    ) -> None:
        """Run one independent part of a workload; its failure is recorded, not raised.

        (3 out) need not fail because (3 in) did: they use different inputs.
        """
        try:
            fn()
        except Exception as e:  # a peer's failure is a result
            out.append(self.sample(workload, system, error=reason(e)))

    def measure(
        self,
        workload: str,
        system: str,
        fn: Callable[[], object],
        *,
        amount: float,
        unit: str = "B",
        fs: Mounted | None = None,
        pids: dict[str, int] | None = None,
    ) -> Sample:
        """Time ``fn`` with requests counted, the peak RSS of ``fs`` and the CPU seconds of
        its daemon and of ``pids`` (by name; ``cpu_s`` is the daemon's, or without ``fs``
        the first of ``pids``)."""
        watched = {"daemon": fs.pid} if fs else {}
        watched.update(pids or {})
        before = self.proxy.reset()
        for pid in watched.values():
            reset_hwm(pid)
        cpu0 = {name: cpu_seconds(pid) for name, pid in watched.items()}
        children0 = _children_cpu()
        self._marks = {}
        self._t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - self._t0
        cpu = {"client": _children_cpu() - children0}
        for name, pid in watched.items():
            now, then = cpu_seconds(pid), cpu0[name]
            if now is not None and then is not None:
                cpu[name] = now - then
        sample = self.sample(
            workload,
            system,
            seconds=seconds,
            amount=amount,
            unit=unit,
            rss=fs.rss() if fs else None,
            extra=dict(self._marks),
        )
        first = next(iter(watched), None)
        sample.cpu_s = cpu.pop(first, None) if first else None
        sample.cpu_other.update(cpu)
        return self.counted(sample, self.proxy.stats(), before)

    def reference(
        self,
        workload: str,
        system: str,
        kind: str,
        keys: Sequence[str],
        *,
        bucket: str,
        amount: float,
        **opts: Any,
    ) -> Sample:
        """The boto3 client ``system`` doing transfer ``kind`` (put, put-file, get, get-file)."""
        op = REFERENCE_OPS[system][kind]
        return self.boto3(workload, op, keys, bucket=bucket, amount=amount, system=system, **opts)

    def mark(self, name: str) -> None:
        """Note how long the timed step has run so far (e.g. until close() returned)."""
        self._marks[name] = time.perf_counter() - self._t0

    def boto3(
        self,
        workload: str,
        op: str,
        keys: Sequence[str],
        *,
        bucket: str,
        amount: float,
        unit: str = "B",
        system: str = "boto3",
        **opts: object,
    ) -> Sample:
        """Run one raw-boto3 operation in its own process (bench/rawboto.py) and time it."""
        argv = [sys.executable, "-m", "bench.rawboto", op, *keys]
        argv += ["--endpoint", self.endpoint.url, "--bucket", bucket]
        for name, value in opts.items():
            argv += [f"--{name}", str(value)]
        env = dict(os.environ)
        env.update(
            BENCH_ACCESS_KEY=self.endpoint.access_key, BENCH_SECRET_KEY=self.endpoint.secret_key
        )
        before = self.proxy.reset()
        out = run_cmd(argv, self.sizes.timeout, env=env, cwd=REPO)
        stats = self.proxy.stats()
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"rawboto printed no result: {out[-200:]!r}") from None
        sample = self.sample(
            workload,
            system,
            seconds=float(result["seconds"]),
            amount=amount,
            unit=unit,
            rss=result.get("rss"),
            cpu_s=result.get("cpu"),
        )
        return self.counted(sample, stats, before)
