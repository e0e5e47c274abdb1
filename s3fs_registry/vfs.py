"""The file system's logic, free of pyfuse3: what each operation does to S3 and the namespace.

fs.py translates FUSE requests into calls of `Filesystem` and its results back; tests drive
`Filesystem` directly. Operations take and return plain values (`Attr`, names as `str`);
POSIX refusals are `FsError(errno)`, S3 failures the store's domain errors.

Concurrency (all on the trio thread; see doc/DEVELOPMENT.md): handlers interleave at every
`await`. Each file being written has a `FileState` with a lock that serialises its writes,
truncates, commits, unlink and rename, so that a commit never races a write and an unlink
never races the upload it cancels. Namespace updates happen after the S3 request that
justifies them, with no `await` between re-reading a node and changing it.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from s3fs_registry.config import Config
from s3fs_registry.errors import FsError
from s3fs_registry.namespace import (
    DETERMINISTIC_PATH,
    UPLOAD_DATA,
    UPLOAD_DIR,
    UPLOAD_HASHSTATE,
    Entry,
    Listing,
    Namespace,
    Node,
    Pending,
)
from s3fs_registry.reader import Buffer, ObjectReader, ReadContext
from s3fs_registry.store import MAX_PARTS, MIN_PART, ObjectInfo, Store, check_key
from s3fs_registry.writer import Base, SpoolSession, WriteContext, WriteSession

log = logging.getLogger(__name__)

Content = WriteSession | SpoolSession
NAME_MAX = 255
BIG_DIR_MEMORY = 10  # metadata TTLs for which a directory over one listing page is remembered
SUBTREE_PAGES = 10  # listing pages a directory scan may take for everything below it
FILE = Entry(False)
COPY_PARALLEL_KEYS = 16


@dataclass(frozen=True)
class Attr:
    """Attributes of one node, with how long the kernel may cache them."""

    ino: int
    is_dir: bool
    size: int
    mtime: float
    ttl: float


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
    reader: ObjectReader | None = None


class Filesystem:
    """S3-backed operations on the namespace; see the module docstring."""

    def __init__(
        self, config: Config, store: Store, writes: WriteContext, reads: ReadContext
    ) -> None:
        self.config = config
        self.store = store
        self.writes = writes
        self.reads = reads
        mount = config.mount
        self.ns = Namespace(
            config.s3.key_prefix(), mount.metadata_ttl, mount.immutable_ttl, mount.negative_ttl
        )
        self.dir_mtime = time.time()
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1

    # -- attributes and names ------------------------------------------------------------

    def attr(self, node: Node) -> Attr:
        rel = self.ns.rel(node)
        # an upload's data may grow on another replica at any moment: the kernel asks each
        # time (lseek(SEEK_END) included), and this mount answers from what it knows
        ttl = 0.0 if node.detached or UPLOAD_DATA.match(rel) else self.ns.ttl(rel)
        mtime = node.mtime if not node.is_dir else self.dir_mtime
        return Attr(node.ino, node.is_dir, node.size, mtime, ttl)

    def _child_rel(self, parent: Node, name: str) -> str:
        if not name or name in {".", ".."} or "/" in name:
            raise FsError(errno.EINVAL, f"invalid name {name!r}")
        if _has_control(name):
            # S3 keys may hold control characters, but S3-compatible servers differ on them
            # (moto cannot store a newline) and listings need URL encoding: refuse them all
            raise FsError(errno.EINVAL, f"control character in name {name!r}")
        if len(name.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise FsError(errno.ENAMETOOLONG, "name longer than 255 bytes")
        rel = self.ns.child_rel(parent, name)
        check_key(self.ns.prefix + rel)
        return rel

    def _dir(self, ino: int) -> Node:
        node = self.ns.get(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    async def _resolve(self, parent: Node, name: str, recheck: bool = False) -> Node | None:
        """The child `name` of `parent`, from trusted beliefs or else (`recheck`: always)
        from S3."""
        rel = self._child_rel(parent, name)
        node = parent.children.get(name)
        if not recheck and node is not None and self.ns.fresh(node):
            return node
        if not recheck and self.ns.is_negative(rel):
            return None
        entry = await self._entry(parent, name, rel, recheck)
        if entry is None:
            self.ns.note_miss(parent)
        node = parent.children.get(name)  # re-read: the probe awaited
        if node is not None and (node.local or node.file is not None):
            return node
        if entry is None:
            if node is not None:
                self.ns.detach(node)
            self.ns.set_negative(rel)
            return None
        return self.ns.attach(parent, name, entry)

    async def _entry(self, parent: Node, name: str, rel: str, recheck: bool) -> Entry | None:
        """What the parent's listing says of `name`, or a probe when it has none fresh."""
        if not recheck:
            if not self.ns.listing_fresh(parent) and self.ns.creating_in(parent):
                listing = await self._fetch_small_listing(parent)
                if listing is not None:
                    parent.listing = listing
            if self.ns.listing_fresh(parent):
                assert parent.listing is not None
                return parent.listing.entries.get(name)
        return await self._probe(self.ns.prefix + rel)

    async def _probe(self, key: str) -> Entry | None:
        """Is `key` a file, a directory (some key under `key/`), or nothing? One LIST, usually.

        Listing with prefix `key` and delimiter "/" returns the object `key` itself and rolls
        everything under `key/` into one common prefix; only siblings whose names extend
        `key` with a character sorting before "/" can push that prefix to a later page.
        A directory wins over a file of the same name.
        """
        if UPLOAD_DATA.match(key[len(self.ns.prefix) :]):
            pending = await self._pending_entry(key)  # first: as the S3 driver, 2 requests
            if pending is not None:
                return pending
        file_entry: Entry | None = None
        token: str | None = None
        while True:
            page = await self.store.list_page(key, token=token)
            for obj in page.objects:
                if obj.key == key:
                    file_entry = Entry(False, obj.size, obj.mtime, obj.etag)
            if key + "/" in page.prefixes:
                return Entry(True, 0, self.dir_mtime)
            last = max([o.key for o in page.objects] + page.prefixes, default="")
            if page.next_token is None or last > key + "/":
                return file_entry
            token = page.next_token

    async def _pending_entry(self, key: str) -> Entry | None:
        """A registry upload in flight: the newest multipart upload kept open under `key`."""
        uploads = [u for u in await self.store.list_uploads(key) if u.key == key]
        if not uploads:
            return None
        upload = max(uploads, key=lambda u: u.initiated)
        parts = sorted(await self.store.list_parts(key, upload.upload_id))
        pending = Pending(
            upload.upload_id, [etag for _, _, etag in parts], [size for _, size, _ in parts]
        )
        if [number for number, _, _ in parts] != list(range(1, len(parts) + 1)):
            log.warning(
                "%s: the parts of upload %s are not 1..%d; the upload is not used",
                key,
                upload.upload_id,
                len(parts),
            )
            return None
        return Entry(False, pending.size, upload.initiated, "", pending)

    async def lookup(self, parent_ino: int, name: str) -> Attr:
        node = await self._resolve(self._dir(parent_ino), name)
        if node is None:
            raise FsError(errno.ENOENT)
        self.ns.remember_lookup(node)
        return self.attr(node)

    async def getattr(self, ino: int) -> Attr:
        node = self.ns.get(ino)
        if node.parent is not None and not node.detached and not self.ns.fresh(node):
            found = await self._resolve(node.parent, node.name)
            if found is not node:
                raise FsError(errno.ENOENT, "gone from S3")
        return self.attr(node)

    def forget(self, pairs: Iterable[tuple[int, int]]) -> None:
        for ino, count in pairs:
            self.ns.forget(ino, count)

    # -- directories ---------------------------------------------------------------------

    async def mkdir(self, parent_ino: int, name: str) -> Attr:
        parent = self._dir(parent_ino)
        if await self._resolve(parent, name) is not None:
            raise FsError(errno.EEXIST)
        node = self.ns.new_local(parent, name, True, self.dir_mtime)
        self.ns.remember_lookup(node)
        return self.attr(node)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self._dir(parent_ino)
        known = parent.children.get(name)
        node = await self._resolve(parent, name)
        if node is None and known is not None and known.is_dir:
            node = known  # emptied by its last unlink: S3 no longer shows it, the kernel does
        if node is None:
            raise FsError(errno.ENOENT)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        await self._require_empty(node)
        self.ns.forget_entry(parent, name)
        self.ns.detach(node)

    async def _require_empty(self, node: Node) -> None:
        """ENOTEMPTY unless `node` has no children here or in S3; deletes a `dir/` marker."""
        if any(True for _ in self.ns.local_children(node)):
            raise FsError(errno.ENOTEMPTY)
        listing = node.listing
        if self.ns.listing_fresh(node) and listing is not None:
            if listing.entries:
                raise FsError(errno.ENOTEMPTY)
            if not listing.marker:
                return  # known empty, no marker: nothing to ask S3
        prefix = self.ns.dir_prefix(node)
        page = await self.store.list_page(prefix, max_keys=2)
        if page.prefixes or any(o.key != prefix for o in page.objects):
            raise FsError(errno.ENOTEMPTY)
        if page.objects:
            await self.store.delete(prefix)  # a marker object written by another tool

    async def list_dir(self, ino: int) -> list[tuple[str, Entry]]:
        """A snapshot of the directory for one opendir: S3's listing merged with local state."""
        node = self._dir(ino)
        if not self.ns.listing_fresh(node):
            node.listing = await self._scan(node)
        assert node.listing is not None
        entries = dict(node.listing.entries)
        for name, child in self.ns.local_children(node):
            entries[name] = Entry(child.is_dir, child.size, child.mtime, child.etag)
        return sorted(entries.items())

    async def _scan(self, node: Node) -> Listing:
        """The directory's listing; when everything below it (or below the ancestor last
        found small) fits `SUBTREE_PAGES` pages, all of it is listed at once.

        `ls -lR`, `find`, and the registry's catalog and garbage-collection walks then cost
        a few listing pages instead of one ListObjectsV2 per directory; the listings of the
        subdirectories wait in the namespace until they are visited (for `metadata_ttl`).
        """
        now = self.ns.clock()
        root = self._scan_root(node, now)
        if root.subtree_big_until > now or UPLOAD_DIR.match(self.ns.rel(node)):
            return await self._fetch_listing(node)  # (an upload's data may be kept open)
        listings = await self._fetch_subtree(root)
        memory = now + BIG_DIR_MEMORY * self.ns.metadata_ttl
        if listings is None:
            root.subtree_big_until, root.subtree_ok_until = memory, 0.0
            return await self._fetch_listing(node)
        root.subtree_ok_until = memory
        rel = self.ns.rel(node)
        own = listings.pop(rel, None) or Listing({}, self.ns.clock())
        # an upload's directory is always listed itself: its data may be an upload kept open
        self.ns.store_prefetched({k: v for k, v in listings.items() if not UPLOAD_DIR.match(k)})
        return own

    def _scan_root(self, node: Node, now: float) -> Node:
        """The highest directory above `node` (or `node`) whose subtree was found small."""
        root, ancestor = node, node.parent
        while ancestor is not None:
            if ancestor.subtree_ok_until > now:
                root = ancestor
            ancestor = ancestor.parent
        return root

    async def _fetch_subtree(self, root: Node) -> dict[str, Listing] | None:
        """Listings of `root` and every directory below it, or None beyond SUBTREE_PAGES."""
        prefix = self.ns.dir_prefix(root)
        objects: list[ObjectInfo] = []
        token: str | None = None
        for _ in range(SUBTREE_PAGES):
            page = await self.store.list_page(prefix, delimiter="", token=token)
            objects.extend(page.objects)
            token = page.next_token
            if token is None:
                return self._subtree_listings(self.ns.rel(root), prefix, objects)
        return None

    def _subtree_listings(
        self, base: str, prefix: str, objects: list[ObjectInfo]
    ) -> dict[str, Listing]:
        fetched = self.ns.clock()
        listings: dict[str, Listing] = {base: Listing({}, fetched)}
        for obj in objects:
            *dirs, last = obj.key[len(prefix) :].split("/")
            where = base
            for name in dirs:
                if not _listable(name):
                    break
                listings[where].entries[name] = Entry(True, 0, self.dir_mtime)
                where = f"{where}/{name}" if where else name
                listings.setdefault(where, Listing({}, fetched))
            else:
                if last == "":
                    listings[where].marker = True  # a `dir/` object of another tool
                elif _listable(last) and not listings[where].entries.get(last, FILE).is_dir:
                    listings[where].entries[last] = Entry(False, obj.size, obj.mtime, obj.etag)
        return listings

    async def _fetch_listing(self, node: Node) -> Listing:
        prefix = self.ns.dir_prefix(node)
        objects, prefixes = await self.store.list_all(prefix)
        listing = self._listing_of(prefix, objects, prefixes)
        if UPLOAD_DIR.match(self.ns.rel(node)):  # its data may be an upload kept open
            entry = await self._pending_entry(prefix + "data")
            if entry is not None:
                listing.entries["data"] = entry
        return listing

    async def _fetch_small_listing(self, node: Node) -> Listing | None:
        """The directory's listing if it fits one page; None (and remembered) if it does not."""
        prefix = self.ns.dir_prefix(node)
        page = await self.store.list_page(prefix)
        if page.next_token is not None:
            node.big_until = self.ns.clock() + BIG_DIR_MEMORY * self.ns.metadata_ttl
            return None
        return self._listing_of(prefix, page.objects, page.prefixes)

    def _listing_of(self, prefix: str, objects: list[ObjectInfo], prefixes: list[str]) -> Listing:
        entries: dict[str, Entry] = {}
        for obj in objects:
            name = obj.key[len(prefix) :]
            if _listable(name):
                entries[name] = Entry(False, obj.size, obj.mtime, obj.etag)
        for common in prefixes:
            name = common[len(prefix) : -1]
            if _listable(name):
                entries[name] = Entry(True, 0, self.dir_mtime)
        marker = any(obj.key == prefix for obj in objects)
        return Listing(entries, self.ns.clock(), marker)

    def entry_node(self, parent_ino: int, name: str, entry: Entry) -> Node:
        """The node for a readdir entry, attributes taken from the listing (no HEAD)."""
        parent = self.ns.get(parent_ino)
        node = parent.children.get(name)
        if node is not None and (node.local or node.file is not None):
            return node
        return self.ns.attach(parent, name, entry)

    # -- files: open, read, write, commit ------------------------------------------------

    async def create(self, parent_ino: int, name: str) -> tuple[int, Attr]:
        parent = self._dir(parent_ino)
        rel = self._child_rel(parent, name)
        if UPLOAD_HASHSTATE.match(rel):
            await self._require_live_upload(parent, rel)
        node = self.ns.new_local(parent, name, False, time.time())
        state = FileState()
        state.content = WriteSession(self.writes, self.ns.key(node), None)
        node.file = state
        self.ns.remember_lookup(node)
        return self._open_handle(node, True), self.attr(node)

    async def _require_live_upload(self, parent: Node, rel: str) -> None:
        """A registry upload's hash state is only stored while the upload has its `startedat`.

        When the registry cancels an upload it deletes `_uploads/<uuid>` and then, closing
        the upload, writes `hashstates/<alg>/<offset>` once more; under either storage driver
        that object would stay forever (upload purging ignores uploads without `startedat`).
        Refusing it with ENOENT keeps the bucket clean; the registry only logs the error.
        """
        upload = parent.parent.parent if parent.parent is not None else None
        if upload is not None and await self._resolve(upload, "startedat") is None:
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
            found = await self._resolve(node.parent, node.name, recheck=recheck)
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
        if (state is not None and state.content is not None) or node.pending is not None:
            await self._settle(node)  # read what was written, from S3
        key = self.ns.key(node)
        reader = handle.reader
        if reader is None or reader.key != key or reader.size != node.size:
            if reader is not None:
                reader.close()
            reader = handle.reader = ObjectReader(self.reads, key, node.size, node.etag)
        return await reader.read(offset, size)

    async def write(self, fh: int, offset: int, data: bytes) -> int:
        handle = self._handle(fh)
        node, state = handle.node, handle.node.file
        if not handle.writable or state is None:
            raise FsError(errno.EBADF)
        async with state.lock:
            if state.error is not None:
                raise state.error
            if node.detached:
                return len(data)  # an unlinked file's bytes go nowhere, as on any file system
            content = await self._content_for(node, state, offset)
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

    async def _truncate_locked(self, node: Node, state: FileState, size: int) -> None:
        content = state.content
        current = content.size if content is not None else node.size
        if size == current and content is not None:
            return
        if size == 0:
            await self._abort_pending(node)
            if content is not None:
                _discard(content)
            same_skippable = DETERMINISTIC_PATH.match(self.ns.rel(node)) is not None
            recent = same_skippable and node.stored_here and self.ns.confirmed_recently(node)
            stored = node.etag if recent else ""
            state.content = WriteSession(self.writes, self.ns.key(node), None, stored)
        elif isinstance(content, WriteSession) and size > current:
            await content.extend(size)
        elif size != current:
            spool = await self._to_spool(node, state)
            await spool.truncate(size)
        node.size, node.mtime = size, time.time()

    async def _abort_pending(self, node: Node) -> None:
        """Abort the upload kept open whose content is being thrown away, before saying it is
        gone: an upload left behind would be found again by the next lookup. A failure
        raises and changes nothing."""
        if node.pending is not None:
            await self.store.abort_multipart(self.ns.key(node), node.pending.upload_id)
            node.pending = None

    async def _commit_locked(self, node: Node, state: FileState) -> None:
        """Upload the pending change of `node`, if any, and record the result."""
        content = state.content
        if content is None or not state.dirty:
            return
        if node.detached:
            _discard(content)
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
            self._note_committed(node, committed.size, committed.etag)

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
        self._note_committed(node, pending.size, etag)

    async def _settle(self, node: Node) -> None:
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
                await self._settle_locked(node, state)
        finally:
            if transient and node.file is state and state.content is None:
                node.file = None

    async def _settle_locked(self, node: Node, state: FileState) -> None:
        await self._commit_locked(node, state)
        if node.pending is not None:
            await self._complete_pending(node)

    def _note_committed(self, node: Node, size: int, etag: str) -> None:
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
            await self._commit_state(handle.node)

    async def fsync(self, fh: int) -> None:
        await self._commit_state(self._handle(fh).node)

    async def _commit_state(self, node: Node) -> None:
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
                    _discard(state.content)
                    state.content = None
                if state.writers == 0 and node.file is state:
                    node.file = None
                    self._drop_if_never_stored(node)

    def _drop_if_never_stored(self, node: Node) -> None:
        """A file created here whose upload failed does not exist: S3 has nothing of it."""
        parent = node.parent
        if node.local and not node.in_s3 and not node.detached and parent is not None:
            self.ns.forget_entry(parent, node.name)
            self.ns.detach(node)

    # -- unlink and rename ---------------------------------------------------------------

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self._dir(parent_ino)
        node = await self._resolve(parent, name)
        if node is None:
            raise FsError(errno.ENOENT)
        if node.is_dir:
            raise FsError(errno.EISDIR)
        state = node.file
        if state is not None:
            async with state.lock:
                await self._unlink_locked(parent, node)
        else:
            await self._unlink_locked(parent, node)

    async def _unlink_locked(self, parent: Node, node: Node) -> None:
        had_pending = node.pending is not None
        await self._abort_pending(node)
        state = node.file
        if state is not None and state.content is not None:
            _discard(state.content)
            state.content = None
        if node.in_s3 or not node.local or had_pending:
            await self.store.delete(self.ns.key(node))
        if parent.children.get(node.name) is node:
            self.ns.forget_entry(parent, node.name)
        self.ns.detach(node)

    async def rename(
        self, old_ino: int, old_name: str, new_ino: int, new_name: str, noreplace: bool
    ) -> None:
        old_parent, new_parent = self._dir(old_ino), self._dir(new_ino)
        src = await self._resolve(old_parent, old_name)
        if src is None:
            raise FsError(errno.ENOENT)
        dst = await self._resolve(new_parent, new_name)
        if dst is src:
            return
        if dst is not None:
            if noreplace:
                raise FsError(errno.EEXIST)
            if src.is_dir and not dst.is_dir:
                raise FsError(errno.ENOTDIR)
            if dst.is_dir and not src.is_dir:
                raise FsError(errno.EISDIR)
            if dst.is_dir:
                await self._require_empty(dst)
        self._child_rel(new_parent, new_name)
        if src.is_dir:
            await self._rename_dir(src, new_parent, new_name)
        else:
            await self._rename_file(src, new_parent, new_name)

    async def _rename_file(self, src: Node, new_parent: Node, new_name: str) -> None:
        state = src.file
        if state is None:
            if src.pending is not None:
                await self._settle(src)
            await self._move_file(src, new_parent, new_name)
            return
        async with state.lock:
            if state.error is not None:
                raise state.error
            content = state.content
            dst_key = self.ns.prefix + self.ns.child_rel(new_parent, new_name)
            if isinstance(content, WriteSession) and content.retarget(dst_key):
                await self._commit_renamed(src, state, content, new_parent, new_name)
                return
            await self._settle_locked(src, state)
            await self._move_file(src, new_parent, new_name)
            if isinstance(state.content, SpoolSession):
                state.content.key = self.ns.key(src)

    async def _commit_renamed(
        self, src: Node, state: FileState, content: WriteSession, new_parent: Node, new_name: str
    ) -> None:
        """A file never uploaded under its old name goes straight to the new one."""
        old_key, had_object = self.ns.key(src), src.in_s3
        try:
            committed = await content.commit()
        except BaseException as exc:
            state.error, state.content = exc, None
            raise
        state.content = None
        if had_object:
            await self.store.delete(old_key)
        old_parent, old_name = src.parent, src.name
        assert old_parent is not None
        self.ns.move(src, new_parent, new_name)
        self.ns.forget_entry(old_parent, old_name)
        self._note_committed(src, committed.size, committed.etag)

    async def _move_file(self, src: Node, new_parent: Node, new_name: str) -> None:
        """Server-side copy to the new key, then delete the old one; the node follows."""
        src_key = self.ns.key(src)
        dst_key = self.ns.prefix + self.ns.child_rel(new_parent, new_name)
        if src.in_s3 or not src.local:
            size = src.size if self.ns.fresh(src) else (await self.store.head(src_key)).size
            src.etag = await self.copy_object(src_key, dst_key, size)
            await self.store.delete(src_key)
            src.size = size
        old_parent, old_name = src.parent, src.name
        assert old_parent is not None
        self.ns.move(src, new_parent, new_name)
        self.ns.forget_entry(old_parent, old_name)
        src.checked = self.ns.clock()
        self.ns.note_entry(new_parent, new_name, Entry(False, src.size, src.mtime, src.etag))

    async def copy_object(self, src_key: str, dst_key: str, size: int) -> str:
        """CopyObject up to the threshold, else parallel UploadPartCopy (the driver's `copy`);
        returns the new ETag."""
        s3 = self.config.s3
        if size <= s3.multipartcopythresholdsize:
            return await self.store.copy(src_key, dst_key)
        chunk = max(s3.multipartcopychunksize, -(-size // MAX_PARTS))
        upload_id = await self.store.create_multipart(dst_key)
        etags: dict[int, str] = {}
        try:
            async with trio.open_nursery() as nursery:
                for number, first in enumerate(range(0, size, chunk), start=1):
                    last = min(size, first + chunk) - 1
                    nursery.start_soon(
                        self._copy_part, dst_key, upload_id, number, src_key, first, last, etags
                    )
            return await self.store.complete_multipart(
                dst_key, upload_id, [etags[n] for n in sorted(etags)]
            )
        except BaseException:
            with trio.CancelScope(shield=True):
                try:
                    await self.store.abort_multipart(dst_key, upload_id)
                except Exception as exc:
                    log.warning("could not abort copy of %s: %s", dst_key, exc)
            raise

    async def _copy_part(
        self,
        key: str,
        upload_id: str,
        number: int,
        src_key: str,
        first: int,
        last: int,
        etags: dict[int, str],
    ) -> None:
        async with self.writes.copy_limiter:
            etags[number] = await self.store.upload_part_copy(
                key, upload_id, number, src_key, first, last
            )

    async def _rename_dir(self, src: Node, new_parent: Node, new_name: str) -> None:
        """Commit pending files under `src`, copy every key to the new prefix, delete the old."""
        for node in list(self.ns.descendants(src)):
            if node.file is not None:
                await self._commit_state(node)
        src_prefix = self.ns.dir_prefix(src)
        dst_prefix = self.ns.prefix + self.ns.child_rel(new_parent, new_name) + "/"
        objects, _ = await self.store.list_all(src_prefix, delimiter="")
        limiter = trio.CapacityLimiter(COPY_PARALLEL_KEYS)

        async def move_one(src_key: str, size: int) -> None:
            async with limiter:
                await self.copy_object(src_key, dst_prefix + src_key[len(src_prefix) :], size)

        async with trio.open_nursery() as nursery:
            for obj in objects:
                nursery.start_soon(move_one, obj.key, obj.size)
        await self.store.delete_many(o.key for o in objects)
        old_parent, old_name = src.parent, src.name
        assert old_parent is not None
        self.ns.move(src, new_parent, new_name)
        self.ns.forget_entry(old_parent, old_name)
        self.ns.note_entry(new_parent, new_name, Entry(True, 0, self.dir_mtime))
        for node in [src, *self.ns.descendants(src)]:
            node.listing, node.etag = None, ""  # copies have new ETags

    # -- lifecycle -----------------------------------------------------------------------

    async def commit_all(self) -> int:
        """Commit every pending change (unmount, SIGTERM); returns how many failed."""
        failures = 0
        for node in list(self.ns.nodes.values()):
            state = node.file
            if state is None or not state.dirty:
                continue
            try:
                await self._commit_state(node)
                log.info("committed %s at shutdown", self.ns.key(node))
            except Exception as exc:
                failures += 1
                log.error("%s: pending upload failed at shutdown: %s", self.ns.key(node), exc)
        return failures


def _listable(name: str) -> bool:
    """Names that can appear in a directory: the ones a lookup accepts (not empty as in keys
    like `a//b`, not . or .., at most 255 bytes, no control characters)."""
    return (
        bool(name)
        and name not in {".", ".."}
        and len(name.encode()) <= NAME_MAX
        and not _has_control(name)
    )


def _has_control(name: str) -> bool:
    return any(ord(c) < 0x20 or c == "\x7f" for c in name)


def _discard(content: Content) -> None:
    if isinstance(content, WriteSession):
        content.abort()
    else:
        content.close()
