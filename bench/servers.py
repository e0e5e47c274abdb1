"""The S3 servers the benchmark measures against: Ceph RGW (main) and moto (second).

Both come from the test helpers. RGW runs on ``bluestore`` because ``memstore`` keeps every
byte in the OSD's RAM and frees deleted data only after RGW's garbage collection
(shared/reference/real-s3-server.md); its block file is made larger than the tests' 10 GiB
because workload 12 alone writes 8 GiB. The file is sparse, so only what is stored uses disk.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from bench.common import GiB
from tests.mounts import MotoServer, S3Server
from tests.rgw import RadosGateway

RGW_BLOCK_SIZE = 48 * GiB


class BenchRadosGateway(RadosGateway):
    """tests/rgw.py's gateway with a bigger bluestore block file."""

    def _write_conf(self) -> None:
        super()._write_conf()
        text = self.conf.read_text()
        text = text.replace(
            "bluestore block size = 10737418240", f"bluestore block size = {RGW_BLOCK_SIZE}"
        )
        self.conf.write_text(text)


@contextlib.contextmanager
def rgw_server(workdir: Path, objectstore: str = "bluestore") -> Iterator[S3Server]:
    gateway = BenchRadosGateway(workdir, objectstore=objectstore)
    gateway.start(timeout=180.0)
    try:
        yield S3Server("rgw", gateway.endpoint, gateway.access_key, gateway.secret_key)
    finally:
        gateway.stop()


@contextlib.contextmanager
def moto_server(workdir: Path) -> Iterator[S3Server]:
    workdir.mkdir(parents=True, exist_ok=True)
    server = MotoServer(workdir / "moto.log")
    server.start()
    try:
        yield S3Server("moto", server.endpoint, "test", "test")
    finally:
        server.stop()


def server(
    name: str, workdir: Path, objectstore: str
) -> contextlib.AbstractContextManager[S3Server]:
    """The context manager that runs backend ``name`` (``rgw`` or ``moto``)."""
    if name == "rgw":
        return rgw_server(workdir, objectstore)
    if name == "moto":
        return moto_server(workdir)
    raise ValueError(f"unknown backend {name!r}")
