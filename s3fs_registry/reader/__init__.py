"""Read path: whole small files, and read-ahead fetched as parallel ranged GETs.

Registry reads are of two kinds: small metadata files (links of 71 bytes, hashstates,
manifests), which cost one GET and nothing more, and blob data served to clients in large
sequential reads (`io.Copy` of a whole blob, or from an HTTP Range offset) with several
readers at once; `cp`, `cat` and `dd` read the same way. The package, by its lines:

* `objects`: one open file's reads: the window ahead of a sequential reader, cut into
  part-aligned ranges that grow from 1.125 MiB to 8-16 MiB, every response checked;
* `streams`: how many of those ranges are in flight mount-wide (learnt from what they
  deliver: one or two on loopback, many on a real network) and how readers share them;
* `sources`: where bytes come from, `Source.get(key, first, last, etag)`: S3, or
  CloudFront for immutable blobs; the one place every byte range passes, and where
  further sources (a local blob cache) plug in, through `ReadContext.source_for`;
* `links`: the registry's digest-named link files, kept after their first read.

doc/DEVELOPMENT.md ("The read path") says why it is built this way and what was measured.
"""

from s3fs_registry.reader.links import LinkCache
from s3fs_registry.reader.objects import (
    INITIAL_WINDOW,
    Buffer,
    ObjectReader,
    ReadContext,
    Segment,
    full_segment,
)
from s3fs_registry.reader.sources import BlobSource, S3Source, Source
from s3fs_registry.reader.streams import Streams

__all__ = [
    "INITIAL_WINDOW",
    "BlobSource",
    "Buffer",
    "LinkCache",
    "ObjectReader",
    "ReadContext",
    "S3Source",
    "Segment",
    "Source",
    "Streams",
    "full_segment",
]
