"""Where the bytes of an object come from: the one narrow place every byte range passes.

A `Source` answers `get(key, first, last, etag)`: bytes first..last (inclusive) of one
object, checked, as a `store.GetResult`. Everything the read path fetches, small files
whole and every ranged GET of a read-ahead window, goes through exactly one call of it
(`ObjectReader._get`), so that a source can be put in front of another one without the
reader knowing: CloudFront in front of S3 for immutable blobs (`BlobSource`), and a local
cache of blobs in front of either. A source must keep the reader's guarantees: the bytes
are exactly the asked range of the object version `etag` names (or fewer only at the
object's end), or it raises; `PreconditionError` when the object is no longer that
version (ESTALE), other `StoreError`s after its own retries (EIO).
"""

from __future__ import annotations

from typing import Protocol

from s3fs_registry.cloudfront import CloudFrontError, CloudFrontFetcher
from s3fs_registry.store import GetResult, Store

#: `last` of a CloudFront range meaning "to the end of the object" (a range past the end is
#: answered up to the end, RFC 9110)
_TO_THE_END = 1 << 62


class Source(Protocol):
    """Byte ranges of objects (module docstring)."""

    async def get(self, key: str, first: int, last: int | None, etag: str) -> GetResult:
        """Bytes first..last of `key` (last None: to the end, so 0..None is the whole
        object whatever its size now); with `etag` set, of that version only."""
        ...


class S3Source:
    """Ranged GETs from S3 with `If-Match`; the store checks status, length and range and
    retries transient failures of this one range on its own."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, key: str, first: int, last: int | None, etag: str) -> GetResult:
        if first == 0 and last is None:
            return await self.store.get(key, if_match=etag)
        return await self.store.get(key, first, last, if_match=etag)


class BlobSource:
    """Immutable blob bytes through CloudFront, and from S3 whenever CloudFront fails.

    Only `blobs/**/data` keys come this way (content-addressed: no cached copy can be
    stale); link files, tags and uploads always read from S3, and so does every question
    of existence and size. A failure of any cause (expired or refused signature, 5xx,
    timeout, connection, a response that fails its checks) costs one S3 GET of the same
    range instead: the reader never sees it. The fetcher logs the first failure of each
    cause and counts all.
    """

    def __init__(self, fetcher: CloudFrontFetcher, store: Store) -> None:
        self.fetcher = fetcher
        self.store = store
        self._s3 = S3Source(store)

    def serves(self, key: str) -> bool:
        return self.fetcher.serves(key)

    async def get(self, key: str, first: int, last: int | None, etag: str) -> GetResult:
        try:
            data, total = await self.fetcher.fetch(
                key, first, _TO_THE_END if last is None else last
            )
        except CloudFrontError:
            return await self._s3.get(key, first, last, etag)
        return GetResult(data, total, etag)
