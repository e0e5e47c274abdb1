"""The registry's digest-named link files, kept after their first read."""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from collections.abc import Iterable

from s3fs_registry import metrics


class LinkCache:
    """Contents of the registry's digest-named link files, kept after their first read.

    A link under `_layers/<alg>/<hex>/`, `_manifests/revisions/<alg>/<hex>/` or a tag's
    `index/<alg>/<hex>/` holds the digest its own path names, nothing else, ever: while the
    file exists (which lookups keep asking S3, within the metadata TTL) its bytes cannot
    change. The registry reads each of them several times per pull (blob access checks,
    then the blob's descriptor); the native driver's count of GETs is reached only by not
    asking again. Entries are also keyed by ETag, so bytes someone wrote there by hand are
    never served in place of the new ones once the mount has seen the new ETag.

    A link never read before needs no GET either when its ETag (from the listing that
    found it) is the MD5 of the digest its path names: S3 gives an object stored in one
    PutObject, unencrypted or SSE-S3, the MD5 of its bytes as ETag, so those bytes are
    known. Any other ETag (multipart, SSE-KMS, other bytes) costs the GET. The same holds
    for a link whose content is not its own name (a tag's `current/link`): listings show
    the digests of the registry's blobs and revisions (`learn`), and a link whose ETag is
    the MD5 of one of them holds exactly that digest.
    """

    PATH = re.compile(
        r"docker/registry/v2/repositories/.+/"
        r"(?:_layers|_manifests/revisions|_manifests/tags/[^/]+/index)/([^/]+)/([^/]+)/link"
    )
    #: any link of a repository (what `learn`'t digests may answer)
    ANY_LINK = re.compile(r"docker/registry/v2/repositories/.+/link")
    #: keys that name a digest: a blob's data or a digest-named link
    NAMED = re.compile(
        r"docker/registry/v2/(?:blobs/([^/]+)/[^/]+/([^/]+)/data"
        r"|repositories/.+/(?:_layers|_manifests/revisions|_manifests/tags/[^/]+/index)"
        r"/([^/]+)/([^/]+)/link)"
    )
    MAX_SIZE = 1024  # a link is "<alg>:<hex>": 71 bytes for sha256
    DIGESTS = 65536  # digests learnt from listings, by the MD5 of their text

    def __init__(self, prefix: str, entries: int = 8192) -> None:
        self._prefix = prefix
        self._entries = entries
        self._data: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._digests: OrderedDict[str, bytes] = OrderedDict()

    def learn(self, keys: Iterable[str]) -> None:
        """Remember the digests these listed keys name, by the MD5 of their text."""
        cut = len(self._prefix)
        for key in keys:
            if not key.endswith(("/link", "/data")):
                continue
            match = self.NAMED.fullmatch(key, cut)
            if match is None:
                continue
            alg, hexd = (match[1], match[2]) if match[1] else (match[3], match[4])
            text = f"{alg}:{hexd}".encode()
            md5 = _md5(text)
            self._digests[md5] = text
            self._digests.move_to_end(md5)
        while len(self._digests) > self.DIGESTS:
            self._digests.popitem(last=False)

    def holds(self, key: str) -> bool:
        """Whether `key` is a link file whose bytes this cache may keep."""
        return self.PATH.fullmatch(key[len(self._prefix) :]) is not None

    def get(self, key: str, etag: str, size: int) -> bytes | None:
        kept = self._data.get(key)
        if kept is None or not etag or kept[0] != etag or len(kept[1]) != size:
            named = self._named(key, etag, size)  # (a GET follows unless it knows)
            if named is None:
                if self.holds(key):
                    metrics.LINKS_MISS.inc()
                return None
            self.put(key, etag, named)
            metrics.LINKS_HIT.inc()
            return named
        metrics.LINKS_HIT.inc()
        self._data.move_to_end(key)
        return kept[1]

    def _named(self, key: str, etag: str, size: int) -> bytes | None:
        """The digest the link holds, if its ETag proves it: the MD5 of the digest its path
        names, or of one the listings showed."""
        if not etag or size > self.MAX_SIZE:
            return None
        bare = etag.strip('"')
        match = self.PATH.fullmatch(key, len(self._prefix))
        if match is not None:
            digest = f"{match[1]}:{match[2]}".encode()
            if len(digest) == size and _md5(digest) == bare:
                return digest
        known = self._digests.get(bare)
        if known is None or len(known) != size:
            return None
        return known if self.ANY_LINK.fullmatch(key, len(self._prefix)) else None

    def put(self, key: str, etag: str, data: bytes) -> None:
        if not etag or len(data) > self.MAX_SIZE or not self.holds(key):
            return
        self._data[key] = (etag, data)
        self._data.move_to_end(key)
        while len(self._data) > self._entries:
            self._data.popitem(last=False)


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()
