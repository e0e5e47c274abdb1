"""Project-independent helpers for driving the distribution registry in tests.

Standard library only (plus PyYAML for the config file) and the ``docker-registry``
(Debian ``docker-registry`` 2.8.2) and ``skopeo`` (1.9.3) binaries.

Pieces:

* :class:`Registry` - starts ``docker-registry serve`` on 127.0.0.1 with a free port and a
  config file written from parameters (filesystem root directory, or any ``storage`` mapping,
  e.g. an ``s3`` block for the native S3 driver); ``garbage_collect()``.
* OCI image layout generation: :func:`make_image`, :func:`make_index`, :func:`random_layer`.
* skopeo wrappers: :func:`skopeo_copy`, :func:`push`, :func:`pull`, :func:`pulled_blobs`.
* :class:`RegistryClient` - a minimal HTTP API v2 client including a chunked upload driver.

Registry 2.8.2 / skopeo 1.9.3 facts these helpers rely on (verified by
tests/test_registry_utils.py):

* ``skopeo copy --preserve-digests`` is required to push layers that are random bytes labelled
  ``...tar+gzip``: without it, skopeo sniffs the stream, sees "not compressed" and gzips it for a
  ``docker://`` destination (new digest, new manifest). With it, blobs and manifests are copied
  byte for byte and the registry stores the manifest digest computed here.
* Registry 2.8 refuses to serve an OCI manifest unless the request's Accept header lists the OCI
  media type (it answers 404 MANIFEST_UNKNOWN); :data:`DEFAULT_ACCEPT` lists all four types.
* The upload status ``Range`` header is ``0-<size-1>`` but ``0-0`` for both 0 and 1 bytes;
  :meth:`RegistryClient.upload_progress` disambiguates with the offset carried in the
  ``_state`` token of the returned ``Location``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "DEFAULT_ACCEPT",
    "EMPTY_DIGEST",
    "MT_DOCKER_LIST",
    "MT_DOCKER_MANIFEST",
    "MT_OCI_CONFIG",
    "MT_OCI_INDEX",
    "MT_OCI_LAYER_GZIP",
    "MT_OCI_MANIFEST",
    "HTTPResponse",
    "ImageInfo",
    "IndexInfo",
    "Manifest",
    "Registry",
    "RegistryClient",
    "RegistryError",
    "RegistryHTTPError",
    "SkopeoError",
    "blob_path",
    "digest_of",
    "free_port",
    "iter_layers",
    "make_image",
    "make_index",
    "pull",
    "pulled_blobs",
    "push",
    "random_layer",
    "skopeo_copy",
]

REGISTRY_BINARY = "docker-registry"
SKOPEO_BINARY = "skopeo"
HOST = "127.0.0.1"
HTTP_SECRET = "s3fs-registry-tests-fixed-http-secret"

MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MT_OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DEFAULT_ACCEPT = (MT_OCI_MANIFEST, MT_OCI_INDEX, MT_DOCKER_MANIFEST, MT_DOCKER_LIST)

EMPTY_DIGEST = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

# Environment variables never passed to a docker-registry process: the S3 driver panics with
# AWS_CA_BUNDLE set, and REGISTRY_* variables would silently override the written config.
_SCRUBBED_ENV_PREFIXES = ("REGISTRY_",)
_SCRUBBED_ENV = ("AWS_CA_BUNDLE",)


class RegistryError(RuntimeError):
    """The registry process failed (start, garbage-collect)."""


class SkopeoError(RuntimeError):
    """A skopeo invocation exited non-zero."""

    def __init__(self, argv: Sequence[str], returncode: int, output: str) -> None:
        super().__init__(f"skopeo failed (rc={returncode}): {' '.join(argv)}\n{output}")
        self.argv = list(argv)
        self.returncode = returncode
        self.output = output


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


_RANDBYTES_PIECE = 64 * 1024 * 1024


def random_layer(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes, reproducible from ``seed``."""
    rng = random.Random(seed)
    if size <= _RANDBYTES_PIECE:
        return rng.randbytes(size)
    # randbytes(n) needs n * 8 bits in a C int: build large layers from pieces
    pieces = [
        rng.randbytes(min(_RANDBYTES_PIECE, size - done))
        for done in range(0, size, _RANDBYTES_PIECE)
    ]
    return b"".join(pieces)


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def blob_path(rootdirectory: str | os.PathLike[str], digest: str) -> Path:
    """Where the filesystem driver keeps the bytes of ``digest`` under ``rootdirectory``."""
    alg, hexd = digest.split(":", 1)
    return Path(rootdirectory, "docker/registry/v2/blobs", alg, hexd[:2], hexd, "data")


def _registry_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in _SCRUBBED_ENV and not k.startswith(_SCRUBBED_ENV_PREFIXES)
    }
    if extra:
        env.update(extra)
    for k in _SCRUBBED_ENV:  # even if a caller passed it explicitly
        env.pop(k, None)
    return env


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


# --------------------------------------------------------------------------------------------
# Registry process
# --------------------------------------------------------------------------------------------


class Registry:
    """A ``docker-registry serve`` process on 127.0.0.1.

    Exactly one of ``rootdirectory`` (filesystem driver) or ``storage`` (any storage mapping,
    e.g. ``{"s3": {...}}``) must be given. ``storage.delete.enabled: true`` and
    ``storage.maintenance.uploadpurging.enabled: false`` are always set unless ``storage``
    overrides them explicitly. ``config_overrides`` is deep-merged into the whole config last.

    The config file and the log (stdout+stderr) go to ``workdir`` (a fresh temporary directory,
    removed by :meth:`stop`, if not given).
    """

    def __init__(
        self,
        rootdirectory: str | os.PathLike[str] | None = None,
        *,
        storage: Mapping[str, Any] | None = None,
        log_level: str = "info",
        accesslog: bool = True,
        port: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        config_overrides: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        binary: str = REGISTRY_BINARY,
        start_timeout: float = 30.0,
    ) -> None:
        if (rootdirectory is None) == (storage is None):
            raise ValueError("give exactly one of rootdirectory or storage")
        self.rootdirectory = None if rootdirectory is None else Path(rootdirectory)
        self._storage = (
            {"filesystem": {"rootdirectory": str(rootdirectory)}}
            if storage is None
            else dict(storage)
        )
        self.log_level = log_level
        self.accesslog = accesslog
        self._fixed_port = port
        self.port = port or 0
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir is not None else None
        self.config_overrides = dict(config_overrides or {})
        self.extra_env = dict(env or {})
        self.binary = binary
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.config: dict[str, Any] = {}

    # -- config ---------------------------------------------------------------------------

    def _build_config(self) -> dict[str, Any]:
        storage = _deep_merge(
            {"delete": {"enabled": True}, "maintenance": {"uploadpurging": {"enabled": False}}},
            self._storage,
        )
        config: dict[str, Any] = {
            "version": 0.1,
            "log": {
                "level": self.log_level,
                "formatter": "text",
                "accesslog": {"disabled": not self.accesslog},
            },
            "storage": storage,
            "http": {
                "addr": f"{HOST}:{self.port}",
                "secret": HTTP_SECRET,
                "headers": {"X-Content-Type-Options": ["nosniff"]},
            },
        }
        return _deep_merge(config, self.config_overrides)

    def _write_config(self) -> None:
        assert self.workdir is not None
        self.config = self._build_config()
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))

    @property
    def config_path(self) -> Path:
        assert self.workdir is not None, "registry not started"
        return self.workdir / "config.yml"

    @property
    def log_path(self) -> Path:
        assert self.workdir is not None, "registry not started"
        return self.workdir / "registry.log"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def netloc(self) -> str:
        """``127.0.0.1:<port>``, the registry part of a docker reference."""
        return f"{HOST}:{self.port}"

    @property
    def client(self) -> RegistryClient:
        return RegistryClient(self.url)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (FileNotFoundError, AssertionError):
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Registry:
        if self.proc is not None:
            raise RegistryError("already started")
        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="registry-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self._fixed_port else 5
        for attempt in range(attempts):
            self.port = self._fixed_port or free_port()
            self._write_config()
            try:
                self._spawn_and_wait()
                return self
            except RegistryError:
                in_use = "address already in use" in self.log_text()
                self._terminate()
                if not in_use or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "serve", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_registry_env(self.extra_env),
                start_new_session=True,
            )
        deadline = time.monotonic() + self.start_timeout
        last_err = ""
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                raise RegistryError(
                    f"docker-registry exited with {rc} during startup; log tail:\n"
                    + self.log_tail()
                )
            try:
                status = self.client.request("GET", "/v2/").status
                if status == 200:
                    return
                last_err = f"GET /v2/ -> {status}"
            except OSError as e:
                last_err = repr(e)
            time.sleep(0.05)
        raise RegistryError(
            f"docker-registry not ready after {self.start_timeout}s ({last_err}); log tail:\n"
            + self.log_tail()
        )

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    def stop(self) -> None:
        self._terminate()
        if self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- maintenance ----------------------------------------------------------------------

    def garbage_collect(
        self, delete_untagged: bool = False, *, dry_run: bool = False, timeout: float = 300
    ) -> str:
        """Run ``docker-registry garbage-collect [--delete-untagged] CONFIG``; return its output.

        The config file must have been written (i.e. the registry started at least once).
        Raises :class:`RegistryError` with the output on a non-zero exit.
        """
        argv = [self.binary, "garbage-collect"]
        if delete_untagged:
            argv.append("--delete-untagged")
        if dry_run:
            argv.append("--dry-run")
        argv.append(str(self.config_path))
        res = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=_registry_env(self.extra_env),
            timeout=timeout,
            check=False,
        )
        out = res.stdout.decode(errors="replace")
        if res.returncode != 0:
            raise RegistryError(f"garbage-collect failed (rc={res.returncode}):\n{out}")
        return out


# --------------------------------------------------------------------------------------------
# OCI image layout generation
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImageInfo:
    manifest_digest: str
    manifest: bytes
    config_digest: str
    config: bytes
    layer_digests: list[str]
    layer_sizes: list[int]
    platform: dict[str, str] | None = None
    media_type: str = MT_OCI_MANIFEST

    @property
    def blob_digests(self) -> list[str]:
        """Config and layer digests (what a manifest references), deduplicated, in order."""
        return list(dict.fromkeys([self.config_digest, *self.layer_digests]))

    @property
    def descriptor(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "mediaType": self.media_type,
            "digest": self.manifest_digest,
            "size": len(self.manifest),
        }
        if self.platform:
            d["platform"] = dict(self.platform)
        return d


@dataclasses.dataclass
class IndexInfo:
    index_digest: str
    index: bytes
    images: list[ImageInfo]
    media_type: str = MT_OCI_INDEX

    @property
    def manifest_digests(self) -> list[str]:
        return [im.manifest_digest for im in self.images]


def _write_blob(root: Path, data: bytes) -> str:
    digest = digest_of(data)
    p = root / "blobs" / "sha256" / digest.split(":", 1)[1]
    p.parent.mkdir(parents=True, exist_ok=True)
    if not p.exists():
        p.write_bytes(data)
    return digest


def _write_layout(root: Path, descriptor: dict[str, Any], ref_name: str | None) -> None:
    (root / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    desc = dict(descriptor)
    desc.pop("platform", None)
    if ref_name:
        desc["annotations"] = {"org.opencontainers.image.ref.name": ref_name}
    index = {"schemaVersion": 2, "mediaType": MT_OCI_INDEX, "manifests": [desc]}
    (root / "index.json").write_text(json.dumps(index))


def _add_image(
    root: Path,
    layers: Sequence[bytes],
    config: Mapping[str, Any] | None,
    platform: Mapping[str, str] | None,
    layer_media_type: str,
) -> ImageInfo:
    layer_digests = [_write_blob(root, data) for data in layers]
    if config is None:
        plat = dict(platform or {"architecture": "amd64", "os": "linux"})
        cfg: dict[str, Any] = {
            "architecture": plat.get("architecture", "amd64"),
            "os": plat.get("os", "linux"),
            # diff_ids should be digests of the *uncompressed* layers; the layers here are
            # opaque bytes copied as-is, so nothing ever checks them.
            "rootfs": {"type": "layers", "diff_ids": list(layer_digests)},
            "config": {},
        }
        if "variant" in plat:
            cfg["variant"] = plat["variant"]
    else:
        cfg = dict(config)
    config_bytes = json.dumps(cfg, sort_keys=True).encode()
    config_digest = _write_blob(root, config_bytes)
    manifest = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_MANIFEST,
        "config": {"mediaType": MT_OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": layer_media_type, "digest": d, "size": len(data)}
            for d, data in zip(layer_digests, layers, strict=True)
        ],
    }
    manifest_bytes = json.dumps(manifest).encode()
    manifest_digest = _write_blob(root, manifest_bytes)
    return ImageInfo(
        manifest_digest=manifest_digest,
        manifest=manifest_bytes,
        config_digest=config_digest,
        config=config_bytes,
        layer_digests=layer_digests,
        layer_sizes=[len(x) for x in layers],
        platform=dict(platform) if platform else None,
    )


def make_image(
    dirpath: str | os.PathLike[str],
    layers: Sequence[bytes],
    config: Mapping[str, Any] | None = None,
    *,
    ref_name: str | None = None,
    layer_media_type: str = MT_OCI_LAYER_GZIP,
) -> ImageInfo:
    """Write an OCI image layout at ``dirpath`` holding one image manifest.

    ``layers`` are used as-is as layer blobs (they need not really be gzip). ``config`` is the
    image config JSON object (a minimal linux/amd64 one by default). The layout's index.json
    has exactly one entry, so the skopeo reference is just ``oci:<dirpath>``.
    """
    root = Path(dirpath)
    root.mkdir(parents=True, exist_ok=True)
    info = _add_image(root, layers, config, None, layer_media_type)
    _write_layout(root, info.descriptor, ref_name)
    return info


def make_index(
    dirpath: str | os.PathLike[str],
    images: Iterable[tuple[Mapping[str, str], Sequence[bytes]]],
    *,
    ref_name: str | None = None,
    layer_media_type: str = MT_OCI_LAYER_GZIP,
) -> IndexInfo:
    """Write an OCI layout at ``dirpath`` whose single entry is a multi-arch image index.

    ``images`` is a list of ``(platform, layers)``, e.g.
    ``({"architecture": "arm64", "os": "linux"}, [b"..."])``. The layout's index.json points
    at the image index blob (``application/vnd.oci.image.index.v1+json``), which lists one
    image manifest per platform. Copy it with ``--all`` (``push()`` does).
    """
    root = Path(dirpath)
    root.mkdir(parents=True, exist_ok=True)
    infos = [
        _add_image(root, layers, None, platform, layer_media_type) for platform, layers in images
    ]
    index = {
        "schemaVersion": 2,
        "mediaType": MT_OCI_INDEX,
        "manifests": [im.descriptor for im in infos],
    }
    index_bytes = json.dumps(index).encode()
    index_digest = _write_blob(root, index_bytes)
    _write_layout(
        root,
        {"mediaType": MT_OCI_INDEX, "digest": index_digest, "size": len(index_bytes)},
        ref_name,
    )
    return IndexInfo(index_digest=index_digest, index=index_bytes, images=infos)


# --------------------------------------------------------------------------------------------
# skopeo
# --------------------------------------------------------------------------------------------


def _transport(ref: str) -> str:
    return ref.split(":", 1)[0]


def skopeo_copy(
    src: str,
    dst: str,
    *extra: str,
    all_images: bool = True,
    preserve_digests: bool = True,
    timeout: float = 600,
) -> str:
    """``skopeo copy`` with the flags tests want; returns the combined output.

    * ``--src-tls-verify=false --src-no-creds`` when ``src`` is ``docker://``, likewise
      ``--dest-...`` for ``dst`` (plain HTTP to 127.0.0.1, never read auth files).
    * ``--all``: copy every image of an index; harmless for a single image.
    * ``--preserve-digests``: never re-compress or convert (without it skopeo 1.9.3 gzips
      "uncompressed" layers on the way to a registry, changing all digests).
    """
    argv = [SKOPEO_BINARY, "copy"]
    if all_images:
        argv.append("--all")
    if preserve_digests:
        argv.append("--preserve-digests")
    if _transport(src) == "docker":
        argv += ["--src-tls-verify=false", "--src-no-creds"]
    if _transport(dst) == "docker":
        argv += ["--dest-tls-verify=false", "--dest-no-creds"]
    argv += [*extra, src, dst]
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    res = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=timeout,
        env=env,
        check=False,
    )
    out = res.stdout.decode(errors="replace")
    if res.returncode != 0:
        raise SkopeoError(argv, res.returncode, out)
    return out


def _docker_ref(registry_url: str, reference: str) -> str:
    netloc = urllib.parse.urlsplit(registry_url).netloc or registry_url
    return f"docker://{netloc}/{reference}"


def push(image_dir: str | os.PathLike[str], registry_url: str, reference: str, *extra: str) -> str:
    """Copy the OCI layout ``image_dir`` to ``<registry>/<reference>`` (``repo/name:tag``)."""
    return skopeo_copy(f"oci:{image_dir}", _docker_ref(registry_url, reference), *extra)


def pull(
    registry_url: str,
    reference: str,
    dest_dir: str | os.PathLike[str],
    *extra: str,
    transport: str = "dir",
) -> str:
    """Copy ``<registry>/<reference>`` (tag or ``@sha256:...``) to ``dest_dir``.

    ``transport`` is ``dir`` (default) or ``oci``; read the result with :func:`pulled_blobs`.
    """
    if transport not in ("dir", "oci"):
        raise ValueError(transport)
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    return skopeo_copy(_docker_ref(registry_url, reference), f"{transport}:{dest_dir}", *extra)


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DIR_MANIFEST = re.compile(r"^(?:([0-9a-f]{64})\.)?manifest\.json$")


def pulled_blobs(dirpath: str | os.PathLike[str]) -> dict[str, bytes]:
    """All blobs (layers, configs, manifests, indexes) of a ``dir:`` or ``oci:`` copy.

    Keys are ``sha256:<hex>`` digests computed from the file contents (and checked against the
    file name where the name is a digest).
    """
    root = Path(dirpath)
    out: dict[str, bytes] = {}
    if (root / "oci-layout").exists():
        for p in (root / "blobs").glob("*/*"):
            data = p.read_bytes()
            d = f"{p.parent.name}:{p.name}"
            if d.startswith("sha256:") and digest_of(data) != d:
                raise ValueError(f"{p}: content does not match its name")
            out[d] = data
        return out
    for p in root.iterdir():
        if not p.is_file():
            continue
        data = p.read_bytes()
        d = digest_of(data)
        if _HEX64.match(p.name):
            if d != "sha256:" + p.name:
                raise ValueError(f"{p}: content does not match its name")
            out[d] = data
        elif _DIR_MANIFEST.match(p.name):
            # manifest.json (top level) and <instance-hex>.manifest.json (list instances)
            out[d] = data
    return out


# --------------------------------------------------------------------------------------------
# HTTP API client
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class HTTPResponse:
    status: int
    headers: http.client.HTTPMessage
    body: bytes
    url: str

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def json(self) -> Any:
        return json.loads(self.body)


class RegistryHTTPError(RuntimeError):
    def __init__(self, method: str, resp: HTTPResponse, expected: Iterable[int]) -> None:
        super().__init__(
            f"{method} {resp.url} -> {resp.status} (expected {sorted(expected)}): "
            f"{resp.body[:2000]!r}"
        )
        self.method = method
        self.status = resp.status
        self.response = resp

    @property
    def error_codes(self) -> list[str]:
        try:
            return [e.get("code", "") for e in json.loads(self.response.body)["errors"]]
        except (ValueError, KeyError, TypeError):
            return []


@dataclasses.dataclass
class Manifest:
    body: bytes
    media_type: str
    digest: str  # Docker-Content-Digest header (or computed when absent)

    def json(self) -> Any:
        return json.loads(self.body)


def _with_query(url: str, **params: str) -> str:
    sep = "&" if "?" in url else "?"
    return url + sep + urllib.parse.urlencode(params)


def _state_offset(location: str) -> int | None:
    """Offset in the registry's HMAC-signed ``_state`` token (2.8: base64url(mac32 || json))."""
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    token = q.get("_state", [None])[0]
    if not token:
        return None
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        return int(json.loads(raw[32:])["Offset"])
    except (ValueError, KeyError, TypeError):
        return None


class RegistryClient:
    """Minimal Docker Registry HTTP API V2 client (no auth). One connection per request."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    # -- plumbing -------------------------------------------------------------------------

    def absolute(self, path_or_url: str) -> str:
        return urllib.parse.urljoin(self.base_url + "/", path_or_url)

    def request(
        self,
        method: str,
        path_or_url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        *,
        expect: Iterable[int] | None = None,
        follow_redirects: bool = False,
    ) -> HTTPResponse:
        """One HTTP request; ``path_or_url`` is relative to the registry or absolute.

        Raises :class:`RegistryHTTPError` when ``expect`` is given and the status is not in it.
        """
        url = self.absolute(path_or_url)
        for _ in range(5):
            parts = urllib.parse.urlsplit(url)
            conn: http.client.HTTPConnection
            if parts.scheme == "https":
                conn = http.client.HTTPSConnection(
                    parts.netloc, timeout=self.timeout, context=ssl.create_default_context()
                )
            else:
                conn = http.client.HTTPConnection(parts.netloc, timeout=self.timeout)
            target = parts.path or "/"
            if parts.query:
                target += "?" + parts.query
            hdrs = dict(headers or {})
            if body is not None or method in ("POST", "PUT", "PATCH"):
                hdrs.setdefault("Content-Length", str(len(body or b"")))
            try:
                conn.request(method, target, body=body, headers=hdrs)
                r = conn.getresponse()
                data = r.read()
                resp = HTTPResponse(r.status, r.headers, data, url)
            finally:
                conn.close()
            loc = resp.headers.get("Location")
            if follow_redirects and resp.status in (301, 302, 303, 307, 308) and loc:
                url = urllib.parse.urljoin(url, loc)
                continue
            break
        if expect is not None and resp.status not in set(expect):
            raise RegistryHTTPError(method, resp, expect)
        return resp

    def _paged_list(self, path: str, key: str) -> list[str]:
        items: list[str] = []
        url: str | None = path
        while url:
            resp = self.request("GET", url, expect=[200])
            items += resp.json().get(key) or []
            link = resp.headers.get("Link")
            m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', link or "")
            url = m.group(1) if m else None
        return items

    # -- read API -------------------------------------------------------------------------

    def ping(self) -> int:
        return self.request("GET", "/v2/").status

    def catalog(self, page_size: int | None = None) -> list[str]:
        path = "/v2/_catalog" + (f"?n={page_size}" if page_size else "")
        return self._paged_list(path, "repositories")

    def tags(self, name: str) -> list[str]:
        return self._paged_list(f"/v2/{name}/tags/list", "tags")

    def get_manifest(
        self, name: str, ref: str, accept: str | Sequence[str] | None = None
    ) -> Manifest:
        if accept is None:
            accept = DEFAULT_ACCEPT
        if not isinstance(accept, str):
            accept = ", ".join(accept)
        resp = self.request(
            "GET", f"/v2/{name}/manifests/{ref}", headers={"Accept": accept}, expect=[200]
        )
        return Manifest(
            body=resp.body,
            media_type=(resp.headers.get("Content-Type") or "").split(";")[0].strip(),
            digest=resp.headers.get("Docker-Content-Digest") or digest_of(resp.body),
        )

    def head_manifest(self, name: str, ref: str) -> str | None:
        """The digest of ``name:ref``, or None when the registry answers 404."""
        resp = self.request(
            "HEAD",
            f"/v2/{name}/manifests/{ref}",
            headers={"Accept": ", ".join(DEFAULT_ACCEPT)},
            expect=[200, 404],
        )
        return None if resp.status == 404 else resp.headers.get("Docker-Content-Digest")

    def head_blob(self, name: str, digest: str) -> int | None:
        """The blob's size (Content-Length), or None when the registry answers 404."""
        resp = self.request("HEAD", f"/v2/{name}/blobs/{digest}", expect=[200, 404])
        if resp.status == 404:
            return None
        return int(resp.headers.get("Content-Length", "0"))

    def get_blob(self, name: str, digest: str, *, byte_range: str | None = None) -> bytes:
        """The blob's bytes (``byte_range`` e.g. ``"bytes=0-99"`` asks for a partial read)."""
        headers = {"Range": byte_range} if byte_range else None
        resp = self.request(
            "GET",
            f"/v2/{name}/blobs/{digest}",
            headers=headers,
            expect=[206] if byte_range else [200],
            follow_redirects=True,
        )
        return resp.body

    # -- write API ------------------------------------------------------------------------

    def put_manifest(self, name: str, ref: str, body: bytes, media_type: str) -> str:
        """PUT a manifest (201); returns Docker-Content-Digest."""
        resp = self.request(
            "PUT",
            f"/v2/{name}/manifests/{ref}",
            body=body,
            headers={"Content-Type": media_type},
            expect=[201],
        )
        return resp.headers.get("Docker-Content-Digest") or digest_of(body)

    def delete_manifest(self, name: str, digest: str) -> None:
        self.request("DELETE", f"/v2/{name}/manifests/{digest}", expect=[202])

    def delete_blob(self, name: str, digest: str) -> None:
        self.request("DELETE", f"/v2/{name}/blobs/{digest}", expect=[202])

    def mount_blob(self, name: str, digest: str, from_repo: str) -> str:
        """Cross-repository mount; expects 201 and returns the blob's Location.

        If the registry answers 202 (it started an upload instead: source blob not found),
        the upload is cancelled and :class:`RegistryHTTPError` raised.
        """
        q = urllib.parse.urlencode({"mount": digest, "from": from_repo})
        resp = self.request("POST", f"/v2/{name}/blobs/uploads/?{q}", expect=None)
        if resp.status != 201:
            loc = resp.headers.get("Location")
            if resp.status == 202 and loc:
                with contextlib.suppress(Exception):
                    self.cancel_upload(loc)
            raise RegistryHTTPError("POST", resp, [201])
        return self.absolute(resp.headers.get("Location") or f"/v2/{name}/blobs/{digest}")

    # -- uploads --------------------------------------------------------------------------

    def start_upload(self, name: str) -> str:
        """POST /v2/<name>/blobs/uploads/ (202); returns the absolute upload Location."""
        resp = self.request("POST", f"/v2/{name}/blobs/uploads/", expect=[202])
        return self._location(resp)

    def _location(self, resp: HTTPResponse) -> str:
        loc = resp.headers.get("Location")
        if not loc:
            raise RegistryHTTPError("(no Location header)", resp, [resp.status])
        return urllib.parse.urljoin(resp.url, loc)

    def upload_chunk(self, location: str, chunk: bytes, start: int) -> str:
        """PATCH one chunk at offset ``start``; returns the next Location.

        Sends ``Content-Range: <start>-<end>`` (end inclusive) and
        ``Content-Type: application/octet-stream``. An empty chunk is sent without
        Content-Range.
        """
        headers = {"Content-Type": "application/octet-stream"}
        if chunk:
            headers["Content-Range"] = f"{start}-{start + len(chunk) - 1}"
        resp = self.request("PATCH", location, body=chunk, headers=headers, expect=[202])
        return self._location(resp)

    def complete_upload(self, location: str, digest: str, final_chunk: bytes = b"") -> str:
        """PUT <location>&digest=<digest> (201), optionally carrying a last chunk.

        Returns the Docker-Content-Digest of the committed blob.
        """
        headers = {"Content-Type": "application/octet-stream"}
        resp = self.request(
            "PUT",
            _with_query(location, digest=digest),
            body=final_chunk,
            headers=headers,
            expect=[201],
        )
        return resp.headers.get("Docker-Content-Digest") or digest

    def upload_chunked(
        self, name: str, data: bytes, chunk_sizes: Sequence[int], digest: str | None = None
    ) -> str:
        """POST, one PATCH per size in ``chunk_sizes`` (following Location), then PUT ?digest=.

        Bytes left over after ``sum(chunk_sizes)`` travel in the body of the final PUT.
        Returns the committed digest.
        """
        if sum(chunk_sizes) > len(data):
            raise ValueError("chunk sizes exceed the data")
        location = self.start_upload(name)
        offset = 0
        for size in chunk_sizes:
            location = self.upload_chunk(location, data[offset : offset + size], offset)
            offset += size
        return self.complete_upload(location, digest or digest_of(data), data[offset:])

    def upload_blob(self, name: str, data: bytes) -> str:
        """Monolithic upload: POST then a single PUT ?digest= carrying all of ``data``."""
        return self.upload_chunked(name, data, [])

    def upload_progress(self, location: str) -> tuple[int, str]:
        """GET the upload URL (204): ``(offset, new_location)``.

        The offset is taken from ``Range: 0-<last>`` (offset = last + 1). Registry 2.8 sends
        ``0-0`` for both 0 and 1 bytes received; that case is resolved with the offset in the
        ``_state`` token of the returned Location.
        """
        resp = self.request("GET", location, expect=[204])
        new_location = self._location(resp)
        rng = resp.headers.get("Range", "")
        m = re.fullmatch(r"\s*(?:bytes=)?0-(\d+)\s*", rng)
        if not m:
            raise RegistryHTTPError("GET", resp, [204])
        last = int(m.group(1))
        if last > 0:
            return last + 1, new_location
        state = _state_offset(new_location)
        return (state if state is not None else 0), new_location

    def upload_status(self, location: str) -> int:
        """Bytes the registry holds for the upload at ``location``."""
        return self.upload_progress(location)[0]

    def cancel_upload(self, location: str) -> None:
        """DELETE the upload (204)."""
        self.request("DELETE", location, expect=[204])


def iter_layers(sizes: Iterable[int], seed: int = 0) -> Iterator[bytes]:
    """Random layers of the given sizes with consecutive seeds."""
    for i, size in enumerate(sizes):
        yield random_layer(size, seed + i)
