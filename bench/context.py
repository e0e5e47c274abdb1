"""What a workload needs to measure one system: buckets, mounts, the proxy, the timer.

One ``Ctx`` exists per (backend, delay, run). Workloads call ``measure`` for file-system
steps and ``boto3`` for the raw-boto3 reference, so that every number is taken the same
way: the proxy's request count is reset just before the timed step and read just after,
and the daemon's peak RSS is reset just before it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
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
    delete_bucket,
    last_line,
    reset_hwm,
    run_cmd,
)
from bench.systems import Mounted, Mounter
from tests.mounts import S3Server
from tests.registry import ImageInfo, SkopeoError


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

    def reset(self) -> None: ...

    def stats(self) -> dict[str, Any]: ...


@dataclasses.dataclass
class LocalData:
    """Inputs made once per benchmark run and shared by every backend and system."""

    cp_src: Path  # (3) random bytes, copied in
    image_dir: Path  # (9) OCI layout of the pushed image
    image: ImageInfo
    chunked: bytes  # (10) the blob uploaded in PATCHes


@dataclasses.dataclass
class Ctx:
    backend: str
    delay_ms: int
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
    _t0: float = 0.0
    _marks: dict[str, float] = dataclasses.field(default_factory=dict)

    def sample(self, workload: str, system: str, **fields: Any) -> Sample:
        return Sample(self.backend, self.delay_ms, self.run, workload, system, **fields)

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
        pids: Sequence[int] = (),
    ) -> Sample:
        """Time ``fn`` with requests counted and the peak RSS of ``fs`` (and ``pids``)."""
        watched = ([fs.pid] if fs else []) + list(pids)
        self.proxy.reset()
        for pid in watched:
            reset_hwm(pid)
        self._marks = {}
        self._t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - self._t0
        stats = self.proxy.stats()
        return self.sample(
            workload,
            system,
            seconds=seconds,
            amount=amount,
            unit=unit,
            requests=stats.get("requests"),
            by_method=stats.get("by_method", {}),
            rss=fs.rss() if fs else None,
            extra=dict(self._marks),
        )

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
        self.proxy.reset()
        out = run_cmd(argv, self.sizes.timeout, env=env, cwd=REPO)
        stats = self.proxy.stats()
        try:
            result = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise BenchError(f"rawboto printed no result: {out[-200:]!r}") from None
        return self.sample(
            workload,
            system,
            seconds=float(result["seconds"]),
            amount=amount,
            unit=unit,
            requests=stats.get("requests"),
            by_method=stats.get("by_method", {}),
            rss=result.get("rss"),
        )
