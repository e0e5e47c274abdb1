"""Files: open, read, write, truncate and commit, with the write state of each file.

Each file being written has a `FileState` whose lock serialises its writes, truncates,
commits, unlink and rename, so that a commit never races a write and an unlink never races
the upload it cancels. A commit makes the content one object in S3 (or, for a registry
upload in flight, the parts of a multipart upload kept open) before `flush`/`fsync`
returns; a failure is sticky until the last writer closes.

One kind of file is not committed by `flush`/`fsync`: registry v3.1's PutContent
temporary (`<path>.<uuidv7>.tmp`, namespace.V31_TEMP) is held in memory (or the spool, if
it outgrows a part) until its rename uploads it straight to `<path>` (vfs/moves.py), as one
PutObject, the native driver's cost; closed or unlinked without a rename it is discarded.
Its name never reaches S3.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from dataclasses import dataclass

import trio

from s3fs_registry.blobcache import BlobCache, CachedReader
from s3fs_registry.errors import FsError, TooLargeError
from s3fs_registry.namespace import (
    DETERMINISTIC_PATH,
    UPLOAD_DATA,
    UPLOAD_HASHSTATE,
    V31_TEMP,
    Entry,
    Node,
    Pending,
)
from s3fs_registry.reader import Buffer, ObjectReader, ReadContext
from s3fs_registry.store import MAX_OBJECT, MIN_PART, Store
from s3fs_registry.vfs.names import Attr, Names
from s3fs_registry.writer import Base, SpoolSession, WriteContext, WriteSession

log = logging.getLogger(__name__)

Content = WriteSession | SpoolSession


class FileState:
    """Write state of a file while it has writable handles (or an uncommitted change)."""

    def __init__(self, stored_size: int = 0) -> None:
        self.content: Content | None = None
        self.stored_size = stored_size  # the size S3 holds: what a failed commit leaves
        self.writers = 0
        self.error: BaseException | None = None  # sticky until the last writer closes
        self.lock = trio.Lock()

    @property
    def dirty(self) -> bool:
        content = self.content
        return content is not None and (isinstance(content, WriteSession) or content.dirty)


@dataclass
class Handle:
    """One open file."""

    node: Node
    writable: bool
    reader: ObjectReader | CachedReader | None = None


class Files:
    """File operations on the namespace; see the module docstring."""

    def __init__(
        self,
        names: Names,
        store: Store,
        writes: WriteContext,
        reads: ReadContext,
        cache: BlobCache | None = None,
    ) -> None:
        self.names = names
        self.cache = cache
        self.ns = names.ns
        self.store = store
        self.writes = writes
        self.reads = reads
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1

    async def create(self, parent_ino: int, name: str) -> tuple[int, Attr]:
        parent = self.names.directory(parent_ino)
        rel = self.names.child_rel(parent, name)
        if UPLOAD_HASHSTATE.match(rel):
            await self._require_live_upload(parent, rel)
        node = self.ns.new_local(parent, name, False, time.time())
        state = FileState()
        state.content = WriteSession(self.writes, self.ns.key(node), None)
        node.file = state
        self.ns.remember_lookup(node)
        return self._open_handle(node, True), self.names.attr(node)

    async def _require_live_upload(self, parent: Node, rel: str) -> None:
        """A registry upload's hash state is only stored while the upload has its `startedat`.

        When the registry cancels an upload it deletes `_uploads/<uuid>` and then, closing
        the upload, writes `hashstates/<alg>/<offset>` once more; under either storage driver
        that object would stay forever (upload purging ignores uploads without `startedat`).
        Refusing it with ENOENT keeps the bucket clean; the registry only logs the error.
        """
        upload = parent.parent.parent if parent.parent is not None else None
        if upload is not None and await self.names.resolve(upload, "startedat") is None:
            log.info("%s: not stored, its upload no longer exists (cancelled or purged)", rel)
            raise FsError(errno.ENOENT, "the upload of this hash state no longer exists")

    async def open(self, ino: int, flags: int) -> tuple[int, bool]:
        """Open for reading or writing; returns the handle and whether to keep the page cache."""
        node = self.ns.get(ino)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        if node.detached:
            # a stale dentry of the kernel's: ESTALE makes it look the name up again
            raise FsError(errno.ESTALE, "the file was removed or replaced")
        writable = flags & os.O_ACCMODE != os.O_RDONLY
        # an append must start from the size S3 has now; an upload's data may have grown on
        # another replica moments ago, so it is always asked (as the S3 driver does)
        recheck = self._keeps_open(node)
        if (
            writable
            and node.file is None
            and node.parent is not None
            and (recheck or not self.ns.fresh(node))
        ):
            found = await self.names.resolve(node.parent, node.name, recheck=recheck)
            if found is not node:
                raise FsError(errno.ESTALE, "the file was removed or replaced")
        fh = self._open_handle(node, writable)
        if writable and flags & os.O_TRUNC:
            await self.truncate(node, 0)
        immutable = self.ns.ttl(self.ns.rel(node)) == self.ns.immutable_ttl and not writable
        return fh, immutable and node.file is None

    def _open_handle(self, node: Node, writable: bool) -> int:
        if writable:
            if node.file is None:
                node.file = FileState(node.size)
            node.file.writers += 1
        node.opens += 1
        fh, self._next_fh = self._next_fh, self._next_fh + 1
        self.handles[fh] = Handle(node, writable)
        return fh

    def _handle(self, fh: int) -> Handle:
        handle = self.handles.get(fh)
        if handle is None:
            raise FsError(errno.EBADF)
        return handle

    async def read(self, fh: int, offset: int, size: int) -> Buffer:
        handle = self._handle(fh)
        node = handle.node
        if node.detached:
            raise FsError(errno.ESTALE, "file was removed while open")
        state = node.file
        if state is not None and isinstance(state.content, SpoolSession):
            async with state.lock:
                if isinstance(state.content, SpoolSession):
                    return await state.content.read(offset, size)
        if state is not None and self.held(node) and isinstance(state.content, WriteSession):
            async with state.lock:
                if isinstance(state.content, WriteSession):
                    data = await state.content.content()  # a held file is all in memory
                    assert data is not None
                    return bytes(data[offset : offset + size])
        if (state is not None and state.content is not None) or node.pending is not None:
            await self.settle(node)  # read what was written, from S3
        key = self.ns.key(node)
        reader = handle.reader
        if reader is None or reader.key != key or reader.size != node.size:
            if reader is not None:
                reader.close()
            reader = handle.reader = self._reader(key, node)
        return await reader.read(offset, size)

    def _reader(self, key: str, node: Node) -> ObjectReader | CachedReader:
        """The read path's reader of the object, behind the blob cache for blob data."""
        reads, size, etag = self.reads, node.size, node.etag

        def make() -> ObjectReader:
            return ObjectReader(reads, key, size, etag)

        cache = self.cache
        if cache is None or node.file is not None or not cache.holds(key):
            return make()
        return CachedReader(cache, key, size, etag, make)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handle(fh)
        node, state = handle.node, handle.node.file
        if not handle.writable or state is None:
            raise FsError(errno.EBADF)
        self._check_size(node, offset + len(data))
        async with state.lock:
            if state.error is not None:
                raise state.error
            if node.detached:
                return len(data)  # an unlinked file's bytes go nowhere, as on any file system
            content = await self._content_for(node, state, offset)
            if not self._may_stream(node, content, offset + len(data)):
                content = await self._to_spool(node, state)
            await content.write(offset, data)
            node.size, node.mtime = content.size, time.time()
        return len(data)

    async def _content_for(self, node: Node, state: FileState, offset: int) -> Content:
        """The session that can take a write at `offset`: stream if possible, else spool."""
        content = state.content
        if content is None and node.pending is not None:
            if node.pending.sizes and node.pending.sizes[-1] < MIN_PART:
                # only the last part may be smaller than 5 MiB: complete, then append by
                # copying the object server-side, as the registry's S3 driver does
                await self._complete_pending(node)
            else:
                content = WriteSession(self.writes, self.ns.key(node), None, pending=node.pending)
                state.content = content
        if content is None:
            content = state.content = WriteSession(self.writes, self.ns.key(node), self._base(node))
        if isinstance(content, WriteSession) and offset > content.size:
            await content.extend(offset)
        if not content.accepts(offset):
            content = await self._to_spool(node, state)
        return content

    def held(self, node: Node) -> bool:
        """Is `node` a v3.1 PutContent temporary, held here until its rename (module doc)?"""
        return not node.detached and V31_TEMP.match(self.ns.rel(node)) is not None

    def _may_stream(self, node: Node, content: Content, end: int) -> bool:
        """A held file must not start a multipart upload under its temporary name: once it
        would outgrow one part it moves to the spool, which uploads only at the rename."""
        if not isinstance(content, WriteSession) or not self.held(node):
            return True
        return end < self.writes.part_size(1)

    def _base(self, node: Node) -> Base | None:
        return Base(self.ns.key(node), node.size, node.etag) if node.in_s3 and node.size else None

    async def _to_spool(self, node: Node, state: FileState) -> SpoolSession:
        """Move the file's content to a local spool file (non-sequential writes)."""
        content = state.content
        if isinstance(content, SpoolSession):
            return content
        data = await content.content() if content is not None else None
        if content is not None and data is None:
            await self._commit_locked(node, state)  # parts are in S3: finish, then fetch back
            content = None
        if content is None and node.pending is not None:
            await self._complete_pending(node)
        key = self.ns.key(node)
        base = None if content is not None else self._base(node)
        spool = await SpoolSession.create(self.writes, key, data, base)
        if content is not None:
            content.abort()
        spool.dirty = content is not None
        state.content = spool
        log.debug("%s: non-sequential write, spooling %d bytes locally", key, spool.size)
        return spool

    async def truncate(self, node: Node, size: int) -> None:
        """Set the file's size; committed at once when no handle will commit it later."""
        if node.is_dir:
            raise FsError(errno.EISDIR)
        self._check_size(node, size)
        state = node.file
        transient = state is None
        if transient and node.detached:
            raise FsError(errno.ESTALE, "the file was removed or replaced")
        if state is None:
            state = node.file = FileState(node.size)
        try:
            async with state.lock:
                await self._truncate_locked(node, state, size)
                if transient:
                    await self._commit_locked(node, state)
        finally:
            if transient:
                await self._close_state(node, state)

    def _check_size(self, node: Node, size: int) -> None:
        """EFBIG before anything is done: no S3 object can be larger than 5 TiB, and a
        spool or a stream of zeros would fail only after filling disk or uploading TiBs."""
        if size > MAX_OBJECT:
            raise TooLargeError(
                f"{self.ns.key(node)}: {size} bytes is more than an S3 object holds (5 TiB)"
            )

    async def _truncate_locked(self, node: Node, state: FileState, size: int) -> None:
        content = state.content
        current = content.size if content is not None else node.size
        if size == current and content is not None:
            return
        if size == 0:
            await self.abort_pending(node)
            if content is not None:
                discard(content)
            same_skippable = DETERMINISTIC_PATH.match(self.ns.rel(node)) is not None
            recent = same_skippable and node.stored_here and self.ns.confirmed_recently(node)
            stored = node.etag if recent else ""
            state.content = WriteSession(self.writes, self.ns.key(node), None, stored)
        elif isinstance(content, WriteSession) and size > current:
            if self._may_stream(node, content, size):
                await content.extend(size)
            else:
                await (await self._to_spool(node, state)).truncate(size)
        elif size != current:
            spool = await self._to_spool(node, state)
            await spool.truncate(size)
        node.size, node.mtime = size, time.time()

    async def abort_pending(self, node: Node) -> None:
        """Abort the upload kept open whose content is being thrown away, before saying it is
        gone: an upload left behind would be found again by the next lookup. A failure
        raises and changes nothing."""
        if node.pending is not None:
            await self.store.abort_multipart(self.ns.key(node), node.pending.upload_id)
            node.pending = None

    async def _commit_locked(self, node: Node, state: FileState) -> None:
        """Upload the pending change of `node`, if any, and record the result."""
        content = state.content
        if content is None or not state.dirty or self.held(node):
            return  # (a held file is uploaded by its rename)
        if node.detached:
            discard(content)
            state.content = None
            return
        try:
            if isinstance(content, WriteSession):
                committed = await content.commit(keep_open=self._keeps_open(node))
            else:
                committed = await content.commit()
        except BaseException as exc:
            state.error = exc
            if isinstance(content, WriteSession):
                content.abort()  # no multipart upload is left behind, whatever failed
                state.content = None
                # what S3 still holds: the object as it was, or the upload kept open earlier
                node.size = node.pending.size if node.pending is not None else state.stored_size
            raise
        if isinstance(content, WriteSession):
            state.content = None
        state.stored_size = committed.size
        if committed.pending is not None:
            self._note_pending(node, committed.size, committed.pending)
        else:
            self.note_committed(node, committed.size, committed.etag)

    def _keeps_open(self, node: Node) -> bool:
        """Registry uploads in flight stay pending multipart uploads, as with the registry's
        own S3 driver: each PATCH adds parts, none copies what earlier ones sent."""
        return UPLOAD_DATA.match(self.ns.rel(node)) is not None

    def _note_pending(self, node: Node, size: int, pending: Pending) -> None:
        node.pending, node.size, node.mtime = pending, size, time.time()
        node.local, node.checked = False, self.ns.clock()
        if node.parent is not None:
            self.ns.note_entry(node.parent, node.name, Entry(False, size, node.mtime, "", pending))

    async def _complete_pending(self, node: Node) -> None:
        """Turn a multipart upload kept open into the object (rename, read, rewrite)."""
        pending, key = node.pending, self.ns.key(node)
        assert pending is not None
        etags = pending.etags
        if not etags:  # CompleteMultipartUpload needs a part: an empty one makes an empty file
            etags = [await self.store.upload_part(key, pending.upload_id, 1, b"")]
        etag = await self.store.complete_multipart(key, pending.upload_id, etags)
        node.pending = None
        self.note_committed(node, pending.size, etag)

    async def settle(self, node: Node) -> None:
        """Make `node` one complete object in S3: commit pending writes, complete an upload
        kept open. Under the file's lock, which is made for the occasion if needed."""
        state = node.file
        transient = state is None
        if state is None:
            state = node.file = FileState(node.size)
        try:
            async with state.lock:
                if state.error is not None:
                    raise state.error
                await self.settle_locked(node, state)
        finally:
            if transient and node.file is state and state.content is None:
                node.file = None

    async def settle_locked(self, node: Node, state: FileState) -> None:
        await self._commit_locked(node, state)
        if node.pending is not None:
            await self._complete_pending(node)

    def note_committed(self, node: Node, size: int, etag: str) -> None:
        node.size, node.etag, node.mtime = size, etag, time.time()
        node.stored_here = True
        node.in_s3, node.local, node.checked = True, False, self.ns.clock()
        parent = node.parent
        while parent is not None and parent.local and parent is not self.ns.root:
            parent.local = parent.pinned = False  # it exists in S3 through this file now
            parent.checked = self.ns.clock()
            parent = parent.parent
        if node.parent is not None:
            self.ns.note_entry(node.parent, node.name, Entry(False, size, node.mtime, etag))
        self.ns.clear_negative_under(self.ns.rel(node))

    async def flush(self, fh: int) -> None:
        """close(): a writable handle reports the upload's outcome here.

        Every close commits, even of a new file nothing was written to: the kernel sends the
        release after close has returned, so an object stored only then would not be in S3
        when close says it is. A shell's `> file` therefore stores an empty object before
        the content (it closes the file once before writing to it, after dup2).
        """
        handle = self._handle(fh)
        if handle.writable:
            await self.commit_state(handle.node)

    async def fsync(self, fh: int) -> None:
        await self.commit_state(self._handle(fh).node)

    async def commit_state(self, node: Node) -> None:
        state = node.file
        if state is None:
            return
        async with state.lock:
            if state.error is not None:
                raise state.error
            await self._commit_locked(node, state)

    async def release(self, fh: int) -> None:
        handle = self.handles.pop(fh, None)
        if handle is None:
            return
        node = handle.node
        if handle.reader is not None:
            handle.reader.close()
        state = node.file
        if handle.writable and state is not None:
            state.writers -= 1
            if state.writers == 0:
                await self._close_state(node, state)
        self.ns.release_open(node)

    async def _close_state(self, node: Node, state: FileState) -> None:
        """The last writer is gone: commit what flush did not (errors can only be logged)."""
        async with state.lock:
            try:
                if state.error is None:
                    await self._commit_locked(node, state)
            except Exception as exc:
                log.error("%s: upload at close failed: %s", self.ns.key(node), exc)
            finally:
                if state.content is not None:
                    discard(state.content)
                    state.content = None
                if state.writers == 0 and node.file is state:
                    node.file = None
                    self._drop_if_never_stored(node)

    def _drop_if_never_stored(self, node: Node) -> None:
        """A file created here whose upload failed does not exist: S3 has nothing of it.
        Nor does a held temporary closed without a rename (the registry's error paths)."""
        parent = node.parent
        if node.local and not node.in_s3 and not node.detached and parent is not None:
            if self.held(node):
                log.debug("%s: closed without a rename: discarded", self.ns.key(node))
                self.ns.drop_local(node)
                return
            self.ns.forget_entry(parent, node.name)
            self.ns.detach(node)

    # -- lifecycle -----------------------------------------------------------------------

    async def commit_all(self) -> int:
        """Commit every pending change (unmount, SIGTERM); returns how many failed."""
        failures = 0
        for node in list(self.ns.nodes.values()):
            state = node.file
            if state is None or not state.dirty or self.held(node):
                continue
            try:
                await self.commit_state(node)
                log.info("committed %s at shutdown", self.ns.key(node))
            except Exception as exc:
                failures += 1
                log.error("%s: pending upload failed at shutdown: %s", self.ns.key(node), exc)
        return failures


def discard(content: Content) -> None:
    if isinstance(content, WriteSession):
        content.abort()
    else:
        content.close()
