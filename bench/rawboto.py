"""Raw boto3 on the same server: the limit each file system is measured against.

Runs as its own process (``python -m bench.rawboto OP ...``), one operation per process,
so that its peak RSS is its own and its threads never share a GIL with the benchmark.
It times only the operation (not the interpreter start or the imports) and prints one
JSON line: ``{"seconds": s, "rss": peak_bytes, ...}``.

Operations (the reference for workload N in brackets):

* ``put KEY... --size N``     multipart upload of N zero bytes per key, all keys at once,
                               TransferConfig(10 MiB parts, 8 at a time) each  [1, 8, 12]
* ``put-file KEY --file F``    the same from a local file  [3 in]
* ``get KEY...``               HEAD, then parallel ranged GETs (10 MiB, 8 at a time per
                               key), bytes discarded  [2, 8]
* ``get-file KEY --file F``    download_file with the same TransferConfig  [3 out]
* ``small --prefix P --count N --size S``   N PutObject one after another  [4]
* ``list --prefix P``          ListObjectsV2, paginated  [5]
* ``copy SRC DST``             one CopyObject, then DeleteObject (a rename)  [6]
* ``mpcopy SRC DST``           parallel UploadPartCopy (32 MiB parts, 16 at a time),
                               then DeleteObject  [6]
* ``append KEY --size N``      a multipart upload whose first part is UploadPartCopy of
                               the existing object and the rest N new bytes  [7]

``boto3-tm``, the client most programs use: one s3transfer ``TransferManager`` with its
defaults (``TransferConfig()``: 8 MiB parts and ranges, 10 threads), all keys on it at once:

* ``tm-put KEY... --size N``   ``upload`` of N zero bytes per key  [1, 8, 14]
* ``tm-put-file KEY --file F`` ``upload`` of a local file (what ``upload_file`` does)  [3 in]
* ``tm-get KEY...``            ``download`` into a seekable sink that drops the bytes  [2, 8]
* ``tm-get-file KEY --file F`` ``download`` to a local file (``download_file``)  [3 out, 13]

``boto3-get``, the naive client: one request per object, streamed:

* ``put1 KEY... --size N``     one PutObject of N zero bytes per key, all keys at once
* ``put1-file KEY --file F``   one PutObject of a local file
* ``get1 KEY...``              one GET per key, all at once, read in 1 MiB pieces, dropped
* ``get1-file KEY --file F``   one GET written to a local file
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from boto3.s3.transfer import TransferConfig, create_transfer_manager

from bench.common import (
    Endpoint,
    MiB,
    ZeroFile,
    ZeroStream,
    reset_hwm,
    s3_client,
    transfer_config,
    vm_hwm,
)

OPS = [
    *("put", "put-file", "get", "get-file", "small", "list", "copy", "mpcopy", "append"),
    *("tm-put", "tm-put-file", "tm-get", "tm-get-file", "put1", "put1-file", "get1", "get1-file"),
]
RANGE = 10 * MiB
COPY_PART = 32 * MiB
COPY_CONCURRENCY = 16


def op_put(s3: Any, bucket: str, keys: list[str], size: int) -> None:
    def one(key: str) -> None:
        s3.upload_fileobj(ZeroStream(size), bucket, key, Config=transfer_config())

    _each(one, keys)


def op_put_file(s3: Any, bucket: str, key: str, path: str) -> None:
    s3.upload_file(path, bucket, key, Config=transfer_config())


def op_get(s3: Any, bucket: str, keys: list[str]) -> int:
    def ranged(arg: tuple[str, int, int]) -> int:
        key, start, end = arg
        body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes={start}-{end}")["Body"]
        n = 0
        while chunk := body.read(MiB):
            n += len(chunk)
        return n

    def one(key: str) -> int:
        size = int(s3.head_object(Bucket=bucket, Key=key)["ContentLength"])
        ranges = [(key, o, min(o + RANGE, size) - 1) for o in range(0, size, RANGE)]
        with ThreadPoolExecutor(max_workers=8) as pool:
            return sum(pool.map(ranged, ranges))

    return sum(_each(one, keys))


def op_get_file(s3: Any, bucket: str, key: str, path: str) -> None:
    s3.download_file(bucket, key, path, Config=transfer_config())


def op_small(s3: Any, bucket: str, prefix: str, count: int, size: int) -> None:
    body = b"x" * size
    for i in range(count):
        s3.put_object(Bucket=bucket, Key=f"{prefix}{i:05d}", Body=body)


def op_list(s3: Any, bucket: str, prefix: str) -> int:
    n = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        n += len(page.get("Contents", []))
    return n


def op_copy(s3: Any, bucket: str, src: str, dst: str) -> None:
    s3.copy_object(Bucket=bucket, Key=dst, CopySource={"Bucket": bucket, "Key": src})
    s3.delete_object(Bucket=bucket, Key=src)


def op_mpcopy(s3: Any, bucket: str, src: str, dst: str) -> None:
    size = int(s3.head_object(Bucket=bucket, Key=src)["ContentLength"])
    upload = s3.create_multipart_upload(Bucket=bucket, Key=dst)["UploadId"]
    ranges = [(o, min(o + COPY_PART, size) - 1) for o in range(0, size, COPY_PART)]

    def part(i: int) -> dict[str, Any]:
        start, end = ranges[i]
        resp = s3.upload_part_copy(
            Bucket=bucket,
            Key=dst,
            UploadId=upload,
            PartNumber=i + 1,
            CopySource={"Bucket": bucket, "Key": src},
            CopySourceRange=f"bytes={start}-{end}",
        )
        return {"PartNumber": i + 1, "ETag": resp["CopyPartResult"]["ETag"]}

    with ThreadPoolExecutor(max_workers=COPY_CONCURRENCY) as pool:
        parts = list(pool.map(part, range(len(ranges))))
    s3.complete_multipart_upload(
        Bucket=bucket, Key=dst, UploadId=upload, MultipartUpload={"Parts": parts}
    )
    s3.delete_object(Bucket=bucket, Key=src)


def op_append(s3: Any, bucket: str, key: str, size: int) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]

    def first() -> dict[str, Any]:
        resp = s3.upload_part_copy(
            Bucket=bucket,
            Key=key,
            UploadId=upload,
            PartNumber=1,
            CopySource={"Bucket": bucket, "Key": key},
        )
        return {"PartNumber": 1, "ETag": resp["CopyPartResult"]["ETag"]}

    def new(i: int) -> dict[str, Any]:
        n = min(RANGE, size - i * RANGE)
        resp = s3.upload_part(
            Bucket=bucket, Key=key, UploadId=upload, PartNumber=i + 2, Body=bytes(n)
        )
        return {"PartNumber": i + 2, "ETag": resp["ETag"]}

    with ThreadPoolExecutor(max_workers=8) as pool:
        head = pool.submit(first)
        parts = [head.result(), *pool.map(new, range((size + RANGE - 1) // RANGE))]
    s3.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
    )


# ------------------------------------------------------------------ boto3-tm, boto3-get


class _Sink:
    """A seekable file that drops what is written (TransferManager's download target)."""

    def __init__(self) -> None:
        self.pos = 0

    def write(self, data: bytes) -> int:
        self.pos += len(data)
        return len(data)

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.pos = offset if whence == os.SEEK_SET else self.pos + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def seekable(self) -> bool:
        return True


def _manager(s3: Any) -> Any:
    """s3transfer's TransferManager with its defaults (never the CRT client)."""
    return create_transfer_manager(s3, TransferConfig(preferred_transfer_client="classic"))


def op_tm(s3: Any, bucket: str, keys: list[str], *, get: bool, size: int, path: str) -> None:
    """All keys on one TransferManager at once: uploads of zeros or of ``path``, downloads
    to a sink or to ``path``."""
    with _manager(s3) as mgr:
        futures = []
        for key in keys:
            if get:
                futures.append(mgr.download(bucket, key, path or _Sink()))
            else:
                futures.append(mgr.upload(path or ZeroStream(size), bucket, key))
        for future in futures:
            future.result()


def op_get1(s3: Any, bucket: str, keys: list[str], path: str) -> int:
    def one(key: str) -> int:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"]
        n = 0
        with open(path or os.devnull, "wb") as f:
            while chunk := body.read(MiB):
                n += len(chunk)
                if path:
                    f.write(chunk)
        return n

    return sum(_each(one, keys))


def op_put1(s3: Any, bucket: str, keys: list[str], size: int, path: str) -> None:
    def one(key: str) -> None:
        if path:
            with open(path, "rb") as f:
                s3.put_object(Bucket=bucket, Key=key, Body=f)
        else:
            s3.put_object(Bucket=bucket, Key=key, Body=ZeroFile(size), ContentLength=size)

    _each(one, keys)


def _each(fn: Callable[[str], Any], keys: list[str]) -> list[Any]:
    """``fn`` for every key at the same time (concurrent writers / readers)."""
    if len(keys) == 1:
        return [fn(keys[0])]
    with ThreadPoolExecutor(max_workers=len(keys)) as pool:
        return list(pool.map(fn, keys))


def _dispatch(args: argparse.Namespace, s3: Any) -> Any:
    b = args.bucket
    table: dict[str, Callable[[], Any]] = {
        "put": lambda: op_put(s3, b, args.keys, args.size),
        "put-file": lambda: op_put_file(s3, b, args.keys[0], args.file),
        "get": lambda: op_get(s3, b, args.keys),
        "get-file": lambda: op_get_file(s3, b, args.keys[0], args.file),
        "small": lambda: op_small(s3, b, args.prefix, args.count, args.size),
        "list": lambda: op_list(s3, b, args.prefix),
        "copy": lambda: op_copy(s3, b, args.keys[0], args.keys[1]),
        "mpcopy": lambda: op_mpcopy(s3, b, args.keys[0], args.keys[1]),
        "append": lambda: op_append(s3, b, args.keys[0], args.size),
        "tm-put": lambda: op_tm(s3, b, args.keys, get=False, size=args.size, path=""),
        "tm-put-file": lambda: op_tm(s3, b, args.keys, get=False, size=0, path=args.file),
        "tm-get": lambda: op_tm(s3, b, args.keys, get=True, size=0, path=""),
        "tm-get-file": lambda: op_tm(s3, b, args.keys, get=True, size=0, path=args.file),
        "put1": lambda: op_put1(s3, b, args.keys, args.size, ""),
        "put1-file": lambda: op_put1(s3, b, args.keys, 0, args.file),
        "get1": lambda: op_get1(s3, b, args.keys, ""),
        "get1-file": lambda: op_get1(s3, b, args.keys, args.file),
    }
    return table[args.op]()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("op", choices=OPS)
    ap.add_argument("keys", nargs="*")
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--prefix", default="")
    ap.add_argument("--file", default="")
    args = ap.parse_args(argv)
    ep = Endpoint(args.endpoint, os.environ["BENCH_ACCESS_KEY"], os.environ["BENCH_SECRET_KEY"])
    s3 = s3_client(ep, pool=64)
    reset_hwm(os.getpid())
    cpu0 = os.times()
    t0 = time.perf_counter()
    result = _dispatch(args, s3)
    seconds = time.perf_counter() - t0
    cpu1 = os.times()
    cpu = cpu1.user + cpu1.system - cpu0.user - cpu0.system
    rss = vm_hwm(os.getpid())
    print(json.dumps({"seconds": seconds, "rss": rss, "cpu": cpu, "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
