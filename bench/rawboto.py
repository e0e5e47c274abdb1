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

from bench.common import (
    Endpoint,
    MiB,
    ZeroStream,
    reset_hwm,
    s3_client,
    transfer_config,
    vm_hwm,
)

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
    }
    return table[args.op]()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument(
        "op",
        choices=["put", "put-file", "get", "get-file", "small", "list", "copy", "mpcopy", "append"],
    )
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
    t0 = time.perf_counter()
    result = _dispatch(args, s3)
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "rss": vm_hwm(os.getpid()), "result": result}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
