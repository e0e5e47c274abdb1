"""The file system's logic, free of pyfuse3: what each operation does to S3 and the namespace.

fs.py translates FUSE requests into calls of the three parts of `Filesystem` and their
results back; operations take and return plain values (`Attr`, names as `str`); POSIX
refusals are `FsError(errno)`, S3 failures the store's domain errors.

* `names`: lookups, attributes, directories and their listings (`Names`);
* `files`: open, read, write, truncate, commit, and the write state of files (`Files`);
* `moves`: unlink and rename (`Moves`).

Concurrency (all on the trio thread; see doc/DEVELOPMENT.md): handlers interleave at every
`await`. Namespace updates happen after the S3 request that justifies them, with no `await`
between re-reading a node and changing it.
"""

from __future__ import annotations

from s3fs_registry.blobcache import BlobCache
from s3fs_registry.config import Config
from s3fs_registry.namespace import Namespace
from s3fs_registry.reader import ReadContext
from s3fs_registry.store import Store
from s3fs_registry.vfs.files import Files
from s3fs_registry.vfs.moves import Moves
from s3fs_registry.vfs.names import Attr, Names
from s3fs_registry.writer import WriteContext

__all__ = ["Attr", "Filesystem"]


class Filesystem:
    """The mount's namespace and the operations on it, in three parts (module docstring)."""

    def __init__(
        self,
        config: Config,
        store: Store,
        writes: WriteContext,
        reads: ReadContext,
        cache: BlobCache | None = None,
    ) -> None:
        mount = config.mount
        self.ns = Namespace(
            config.s3.key_prefix(), mount.metadata_ttl, mount.immutable_ttl, mount.negative_ttl
        )
        if cache is not None:
            self.ns.on_gone = cache.gone
        self.names = Names(self.ns, store)
        if reads.links is not None:
            self.names.learn = reads.links.learn
        self.files = Files(self.names, store, writes, reads, cache)
        self.moves = Moves(self.names, self.files, store, writes, config.s3)
