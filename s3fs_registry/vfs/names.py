"""Names and directories: what S3 says about a path, turned into the namespace's beliefs.

A lookup is answered from a fresh belief when there is one (a node, a directory listing,
a negative entry), otherwise from S3: one `ListObjectsV2` with the key as prefix tells a
file, a directory and nothing apart (`probe`); a registry upload's `data` may also be a
multipart upload kept open (`pending_entry`). Directory listings may cover a whole subtree
at once (`scan`), so that walks cost a few listing pages instead of one per directory.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import trio

from s3fs_registry.errors import FsError
from s3fs_registry.namespace import (
    UPLOAD_DATA,
    UPLOAD_DIR,
    V31_TEMP,
    Entry,
    Listing,
    Namespace,
    Node,
    Pending,
)
from s3fs_registry.store import ObjectInfo, Store, check_key

log = logging.getLogger(__name__)

NAME_MAX = 255
BIG_DIR_MEMORY = 10  # metadata TTLs for which a directory over one listing page is remembered
SUBTREE_PAGES = 10  # listing pages a directory scan may take for everything below it
PAGE_KEYS = 1000  # keys per page of a subtree scan (S3's most)
PROBE_KEYS = 1000  # keys a lookup's listing brings back (from the name and below it)
SPAN_ENTRIES = 64  # in a directory listed with this many names, lookups of them use spans
#: the registry's top directories: a lookup needs only their existence (one key shows it),
#: and the first page of their subtree is blobs, which a lookup of them cannot use
SKELETON_TOP = frozenset({"docker", "docker/registry", "docker/registry/v2"})
FILE = Entry(False)


@dataclass(frozen=True)
class Attr:
    """Attributes of one node, with how long the kernel may cache them."""

    ino: int
    is_dir: bool
    size: int
    mtime: float
    ttl: float


@dataclass
class _Probe:
    """A probe in flight, which concurrent lookups of the same name wait for."""

    when: float
    done: trio.Event = field(default_factory=trio.Event)
    entry: Entry | None = None
    answered: bool = False


class Names:
    """Lookups, attributes and directories of the mount (see the module docstring)."""

    def __init__(self, ns: Namespace, store: Store) -> None:
        self.ns = ns
        self.store = store
        self.dir_mtime = time.time()
        self._probes: dict[str, _Probe] = {}
        #: told every key a listing shows (the link cache learns the digests they name)
        self.learn: Callable[[Iterable[str]], None] | None = None

    def attr(self, node: Node) -> Attr:
        rel = self.ns.rel(node)
        # an upload's data may grow on another replica at any moment: the kernel asks each
        # time (lseek(SEEK_END) included), and this mount answers from what it knows; a
        # v3.1 temporary file lives only until its rename or close, so it is asked too
        volatile = node.detached or UPLOAD_DATA.match(rel) or V31_TEMP.match(rel)
        ttl = 0.0 if volatile else self.ns.trust_left(node, rel)
        mtime = node.mtime if not node.is_dir else self.dir_mtime
        return Attr(node.ino, node.is_dir, node.size, mtime, ttl)

    def child_rel(self, parent: Node, name: str) -> str:
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

    def directory(self, ino: int) -> Node:
        node = self.ns.get(ino)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        return node

    async def resolve(self, parent: Node, name: str, recheck: bool = False) -> Node | None:
        """The child `name` of `parent`, from trusted beliefs or else (`recheck`: always)
        from S3."""
        rel = self.child_rel(parent, name)
        node = parent.children.get(name)
        if not recheck and node is not None and self.ns.fresh(node):
            return node
        if node is None and V31_TEMP.match(rel):
            return None  # held by the mount that made it, never in S3: nothing to ask
        if not recheck and self.ns.is_negative(rel):
            return None
        entry, when = await self._entry(parent, name, rel, recheck)
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
        node = self.ns.attach(parent, name, entry, when)
        self.ns.confirm_ancestors(node, when)
        return node

    async def _entry(
        self, parent: Node, name: str, rel: str, recheck: bool
    ) -> tuple[Entry | None, float]:
        """What S3 says of `name` and when it said so: from a fresh listing of the parent
        that covers the name, from a kept listing of the name itself (a directory), or a
        probe."""
        if not recheck:
            if not self.ns.listing_fresh(parent) and self.ns.creating_in(parent):
                listing = await self._fetch_small_listing(parent)
                if listing is not None:
                    parent.listing = listing
            listing = self.ns.listing_of(parent)
            if listing is not None and listing.covers(name):
                return listing.entries.get(name), listing.fetched
            known = self.ns.present_long(parent, name, rel)
            if known is not None:
                return known
            seen = self.ns.prefetched_dir(rel)
            if seen is not None:
                return Entry(True, 0, self.dir_mtime), seen
            if self._walked(parent, name):
                found = await self._span_lookup(parent, rel)
                if found is not None:
                    return found
        return await self._shared_probe(self.ns.prefix + rel, join=not recheck)

    async def _shared_probe(self, key: str, join: bool) -> tuple[Entry | None, float]:
        """The probe of `key` and when it was sent. Lookups of a name while its probe is in
        flight (the registry's goroutines resolving one path at once) wait for its answer
        instead of sending the same request; `join=False` always asks anew."""
        current = self._probes.get(key) if join else None
        if current is not None:
            await current.done.wait()
            if current.answered:
                return current.entry, current.when
        probe = _Probe(self.ns.clock())
        self._probes.setdefault(key, probe)
        try:
            probe.entry = await self._probe(key)
            probe.answered = True
        finally:
            probe.done.set()
            if self._probes.get(key) is probe:
                del self._probes[key]
        return probe.entry, probe.when

    async def _probe(self, key: str) -> Entry | None:
        """Is `key` a file, a directory (some key under `key/`), or nothing? One LIST, usually.

        The listing has `key` as prefix and no delimiter: the object `key` itself comes
        first, then everything under `key/` (after siblings such as `key-x`, whose names
        extend `key` with a character sorting before "/"). So one request answers this name
        and, kept as listings of every directory below it (`_keep_subtree`), the lookups
        and directory reads that usually follow: a registry resolving
        `<repo>/_manifests/tags/<tag>/current/link` lists once, not once per component.
        A directory wins over a file of the same name. When siblings fill the page before
        `key/`, the answer comes from a listing with delimiter "/" (`_probe_delimited`).
        """
        rel = key[len(self.ns.prefix) :]
        if UPLOAD_DATA.match(rel):
            pending = await self.pending_entry(key)  # first: as the S3 driver, 2 requests
            if pending is not None:
                return pending
        keys = 1 if rel in SKELETON_TOP else PROBE_KEYS
        page = await self.store.list_page(key, delimiter="", max_keys=keys)
        below = [o for o in page.objects if o.key.startswith(key + "/")]
        last = page.objects[-1].key if page.objects else ""
        truncated = page.next_token is not None
        if below:
            cut = truncated and last.startswith(key + "/")
            self._keep_subtree(rel, key + "/", below, cut)
            return Entry(True, 0, self.dir_mtime)
        if truncated and last < key + "/":
            return await self._probe_delimited(key)
        for obj in page.objects:
            if obj.key == key:
                return Entry(False, obj.size, obj.mtime, obj.etag)
        return None

    def _keep_subtree(self, base: str, prefix: str, objects: list[ObjectInfo], cut: bool) -> None:
        """Keep the listings of `base` and every directory under it that `objects` (keys
        under `prefix`, in S3's order) show. When the page was `cut` short, the directories
        holding its last key are known only up to that key (`Listing.upto`)."""
        listings = self._subtree_listings(base, prefix, objects)
        if cut:
            _cut_at(listings, base, objects[-1].key[len(prefix) :])
        self._keep(listings)

    def _keep(self, listings: dict[str, Listing]) -> None:
        """Keep listings of a subtree for when their directories are visited. An upload's
        directory is `blind` to its `data` (it may be an upload kept open): a lookup of it
        asks S3, and reading the directory lists it itself."""
        for rel, listing in listings.items():
            if UPLOAD_DIR.match(rel):
                listing.blind = True
        self.ns.store_prefetched(listings)

    async def _probe_delimited(self, key: str) -> Entry | None:
        """The probe with delimiter "/": the object `key` and the common prefix `key/`;
        only siblings sorting before "/" can push that prefix to a later page."""
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

    async def pending_entry(self, key: str) -> Entry | None:
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
        node = await self.resolve(self.directory(parent_ino), name)
        if node is None:
            raise FsError(errno.ENOENT)
        self.ns.remember_lookup(node)
        return self.attr(node)

    async def getattr(self, ino: int) -> Attr:
        node = self.ns.get(ino)
        if node.parent is not None and not node.detached and not self.ns.fresh(node):
            found = await self.resolve(node.parent, node.name)
            if found is not node:
                raise FsError(errno.ENOENT, "gone from S3")
        return self.attr(node)

    def forget(self, pairs: Iterable[tuple[int, int]]) -> None:
        for ino, count in pairs:
            self.ns.forget(ino, count)

    # -- directories ---------------------------------------------------------------------

    async def mkdir(self, parent_ino: int, name: str) -> Attr:
        parent = self.directory(parent_ino)
        if await self.resolve(parent, name) is not None:
            raise FsError(errno.EEXIST)
        node = self.ns.new_local(parent, name, True, self.dir_mtime)
        self.ns.remember_lookup(node)
        return self.attr(node)

    async def rmdir(self, parent_ino: int, name: str) -> None:
        parent = self.directory(parent_ino)
        known = parent.children.get(name)
        node = await self.resolve(parent, name)
        if node is None and known is not None and known.is_dir:
            node = known  # emptied by its last unlink: S3 no longer shows it, the kernel does
        if node is None:
            raise FsError(errno.ENOENT)
        if not node.is_dir:
            raise FsError(errno.ENOTDIR)
        await self.require_empty(node)
        self.ns.forget_entry(parent, name)
        self.ns.detach(node)

    async def require_empty(self, node: Node) -> None:
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
        node = self.directory(ino)
        if not self.ns.listing_fresh(node):
            node.listing = await self._scan(node)
        assert node.listing is not None
        if node.listing.entries:  # keys under it: it and every directory above it exist
            node.checked = max(node.checked, node.listing.fetched)
            self.ns.confirm_ancestors(node, node.listing.fetched)
        entries = dict(node.listing.entries)
        for name, child in self.ns.local_children(node):
            # keep `pending`: readdir re-attaches its entries, and a registry upload's data
            # taken for an object would be deleted, not aborted, by a RemoveAll
            entries[name] = Entry(child.is_dir, child.size, child.mtime, child.etag, child.pending)
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
        memory = now + BIG_DIR_MEMORY * self.ns.metadata_ttl
        if root.subtree_big_until > now or UPLOAD_DIR.match(self.ns.rel(node)):
            return await self._fetch_listing(node)  # (an upload's data may be kept open)
        parent = node.parent
        if root is node and parent is not None and parent.subtree_big_until > now:
            own = await self._fetch_span(node, parent)
            if own is not None:
                node.subtree_ok_until = memory
                return own
        listings = await self._fetch_subtree(root)
        if listings is None:
            root.subtree_big_until, root.subtree_ok_until = memory, 0.0
            return await self._fetch_listing(node)
        root.subtree_ok_until = memory
        rel = self.ns.rel(node)
        own = listings.pop(rel, None) or Listing({}, self.ns.clock())
        self._keep(listings)
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
        """Listings of `root` and every directory below it, or None beyond SUBTREE_PAGES
        (then the listings of the directories those pages showed whole are kept)."""
        prefix = self.ns.dir_prefix(root)
        objects: list[ObjectInfo] = []
        token: str | None = None
        for _ in range(SUBTREE_PAGES):
            page = await self.store.list_page(prefix, delimiter="", token=token, max_keys=PAGE_KEYS)
            objects.extend(page.objects)
            token = page.next_token
            if token is None:
                return self._subtree_listings(self.ns.rel(root), prefix, objects)
        if objects:
            self._keep_subtree(self.ns.rel(root), prefix, objects, cut=True)
        return None

    async def _fetch_span(self, node: Node, parent: Node) -> Listing | None:
        """The listing of `node`, a directory in a parent too big to list whole, from one
        page of the parent's keys that starts at `node`: a walk (the registry's catalog,
        garbage collection) visits the siblings in order, and the page holds the listings
        of the next ones too. None when the page does not hold all of `node`."""
        prefix, key = self.ns.dir_prefix(parent), self.ns.key(node)
        page = await self.store.list_page(
            prefix, delimiter="", max_keys=PROBE_KEYS, start_after=key
        )
        base, rel = self.ns.rel(parent), self.ns.rel(node)
        listings = self._subtree_listings(base, prefix, page.objects)
        listings.pop(base, None)  # the parent's: this page starts in its middle
        cut = page.next_token is not None
        if cut:
            _cut_at(listings, base, page.objects[-1].key[len(prefix) :])
        own = listings.pop(rel, None)
        self._keep(listings)
        if own is None:  # nothing under `node`, unless siblings like `node-x` filled the page
            last = page.objects[-1].key if page.objects else ""
            return None if cut and last < key + "/" else Listing({}, self.ns.clock())
        return own if own.complete else None

    def _walked(self, parent: Node, name: str) -> bool:
        """Is `name` likely one of many siblings being visited in order: a directory that
        the last listing of a big `parent` (of any age) showed? A name it did not show (a
        file about to be created) gets the probe, which also answers "absent"."""
        listing = parent.listing
        if listing is None or len(listing.entries) < SPAN_ENTRIES:
            return False
        entry = listing.entries.get(name)
        return entry is not None and entry.is_dir

    async def _span_lookup(self, parent: Node, rel: str) -> tuple[Entry, float] | None:
        """A lookup in a big directory, answered by one page of its keys from the name on
        (`_fetch_span`): the name's subtree, then the next siblings' (a walk looks them up
        next). Only a directory is answered, since `StartAfter` skips the key itself:
        None (it is gone, or was a file) sends the lookup to the probe."""
        when = self.ns.clock()
        prefix, key = self.ns.dir_prefix(parent), self.ns.prefix + rel
        page = await self.store.list_page(
            prefix, delimiter="", max_keys=PROBE_KEYS, start_after=key
        )
        base = self.ns.rel(parent)
        listings = self._subtree_listings(base, prefix, page.objects)
        listings.pop(base, None)  # the parent's: this page starts in its middle
        if page.next_token is not None:
            _cut_at(listings, base, page.objects[-1].key[len(prefix) :])
        found = rel in listings
        self._keep(listings)
        return (Entry(True, 0, self.dir_mtime), when) if found else None

    def _subtree_listings(
        self, base: str, prefix: str, objects: list[ObjectInfo]
    ) -> dict[str, Listing]:
        fetched = self.ns.clock()
        listings: dict[str, Listing] = {base: Listing({}, fetched)}
        if self.learn is not None:
            self.learn(o.key for o in objects)
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
            entry = await self.pending_entry(prefix + "data")
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
        listing = self._listing_of(prefix, page.objects, page.prefixes)
        listing.blind = UPLOAD_DIR.match(self.ns.rel(node)) is not None  # (see `_keep`)
        return listing

    def _listing_of(self, prefix: str, objects: list[ObjectInfo], prefixes: list[str]) -> Listing:
        entries: dict[str, Entry] = {}
        if self.learn is not None:
            self.learn(o.key for o in objects)
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


def _cut_at(listings: dict[str, Listing], base: str, last: str) -> None:
    """The page that made `listings` stopped at `last` (a key relative to `base`'s prefix):
    the directories holding it are known only up to it."""
    where, rest = base, last
    while True:
        listing = listings.get(where)
        if listing is not None:
            listing.upto = rest
        name, slash, rest = rest.partition("/")
        if not slash:
            return
        where = f"{where}/{name}" if where else name


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
