"""Shared fixtures: the S3 servers (moto always, Ceph RGW unless --s3=moto), mounts.

`s3` is parametrised over the servers the run uses, so every test that takes it runs once
per server; `moto` alone is the cheap server for tests about the daemon rather than S3.
`mount_factory` starts real mounts and, at teardown, unmounts them and fails the test if a
daemon did not exit cleanly (exit code 0).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.mounts import MotoServer, Mount, S3Server
from tests.s3proxy import S3Proxy


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--s3",
        default="moto,rgw",
        help="comma-separated S3 servers to run the parametrised tests on",
    )


def pytest_configure(config: pytest.Config) -> None:
    os.environ.pop("AWS_PROFILE", None)


@pytest.fixture(scope="session", autouse=True)
def _default_log_files() -> Iterator[None]:
    """Background mounts of tests (no log_file, no /dev/log) log to default files named after
    their temporary mount points (log.default_log_file): removed when the session ends."""
    yield
    for path in Path("/var/log/s3fs-registry").glob("tmp-*.log"):
        path.unlink(missing_ok=True)


def _servers(config: pytest.Config) -> list[str]:
    return [s for s in str(config.getoption("--s3")).split(",") if s]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "s3" in metafunc.fixturenames:
        servers = _servers(metafunc.config)
        if metafunc.definition.get_closest_marker("one_server"):
            servers = servers[-1:]  # RGW by default: the production server
        metafunc.parametrize("s3", servers, indirect=True, scope="session")


@pytest.fixture(scope="session")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    try:
        yield S3Server("moto", server.endpoint, "test", "test")
    finally:
        server.stop()


@pytest.fixture(scope="session")
def rgw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    from tests.rgw import RadosGateway

    if not shutil.which("radosgw"):
        pytest.fail("radosgw is not installed (the README's test command installs it)")
    gateway = RadosGateway(tmp_path_factory.mktemp("rgw"))
    gateway.start()
    try:
        yield S3Server(
            "rgw",
            gateway.endpoint,
            gateway.access_key,
            gateway.secret_key,
            kms_key_id=gateway.kms_key_id,
            extra={"gateway": gateway},
        )
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def s3(request: pytest.FixtureRequest) -> S3Server:
    server: S3Server = request.getfixturevalue(request.param)
    return server


MountFactory = Callable[..., Mount]


@pytest.fixture
def mount_factory(tmp_path: Path) -> Iterator[MountFactory]:
    mounts: list[Mount] = []

    def make(server: S3Server, bucket: str | None = None, **kwargs: Any) -> Mount:
        mount = Mount(tmp_path / f"m{len(mounts)}", server, bucket or server.new_bucket(), **kwargs)
        mounts.append(mount)
        return mount.start()

    yield make
    codes = {str(m.path): m.stop() for m in mounts}
    bad = {path: code for path, code in codes.items() if code != 0}
    if bad:
        logs = "\n".join(m.log()[-4000:] for m in mounts if str(m.path) in bad)
        pytest.fail(f"daemon exited uncleanly: {bad}\n{logs}")


@pytest.fixture
def mnt(s3: S3Server, mount_factory: MountFactory) -> Mount:
    """A fresh mount on a fresh bucket of the parametrised server."""
    return mount_factory(s3)


@pytest.fixture(scope="module")
def shared(s3: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mount]:
    """One mount for a whole module; tests keep to their own directory (`d`)."""
    mount = Mount(tmp_path_factory.mktemp("shared"), s3, s3.new_bucket()).start()
    yield mount
    code = mount.stop()
    assert code == 0, mount.log()[-4000:]


@pytest.fixture
def d(shared: Mount, request: pytest.FixtureRequest) -> Path:
    """A fresh directory on the shared mount, named after the test."""
    path = shared.path / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir()
    return path


@pytest.fixture
def proxy(s3: S3Server) -> Iterator[S3Proxy]:
    """The counting, fault-injecting proxy in front of `s3` (tests/s3proxy.py)."""
    with S3Proxy(s3.endpoint) as p:
        yield p
