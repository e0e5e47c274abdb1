"""Inodes, names and what this mount believes about S3, with the TTL rules.

A `Node` is one path the kernel knows (it holds a lookup count) or this mount needs (a file
being written, an empty directory made with mkdir). Paths, not objects, have identity: a
node keeps its inode number when the object under it is replaced, and moves with rename.
Keys are derived from the chain of parent names, so renaming a directory moves every
descendant at once.

Beliefs about S3 age. Each node records when its attributes were last confirmed
(`checked`, on a monotonic clock); each directory may hold the listing it was last read
with. How long a belief is trusted depends on the path: blobs (`blobs/**`) are named by
their content and only garbage collection removes them, so their attributes are trusted
for `immutable_ttl`, and so are the registry's skeleton directories (`docker/registry/v2`,
its `blobs` and `repositories`); everything else for `metadata_ttl`, which bounds how stale
another mount's change can look (a manifest's revision link too: a manifest DELETE on
another replica removes it, and this mount must say 404 within that bound). "Does not
exist" is remembered for `negative_ttl`. What this mount itself did is always known at
once: its own writes, renames and deletes update the nodes, listings and negative entries
directly.

Listings answer lookups. A lookup that finds no fresh answer lists the name as a prefix
without delimiter (vfs/names.py): one request says what the name is and brings the
listings of every directory below it, kept in `prefetched` until they are visited; a page
that stopped early gives partial listings (`Listing.upto`) that still answer the names
before the key it stopped at. Any key below a directory proves the directory and all its
ancestors exist at that moment (`confirm_ancestors`), so a path confirmed deep keeps its
chain fresh, and the time a belief dates from is the listing's, never later.

Nothing here does I/O or imports pyfuse3; vfs.py drives it.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from s3fs_registry import metrics
from s3fs_registry.errors import FsError

log = logging.getLogger(__name__)

ROOT_INODE = 1
NEGATIVE_CACHE_ENTRIES = 65536
MISSES_BEFORE_LISTING = 3  # vain lookups in a directory before it is listed instead
PREFETCHED_LISTINGS = 20000  # listings of subdirectories kept from subtree scans
IMMUTABLE_PATH = re.compile(r"^docker/registry/v2/blobs/.+$")
#: registry files whose content is a function of their path (hash states of an upload at an
#: offset, links named by the digest they hold, blobs): rewriting one with the bytes this
#: mount stored moments ago cannot be undoing another writer's change
DETERMINISTIC_PATH = re.compile(
    r"^docker/registry/v2/(blobs/.+/data"
    r"|repositories/.+/(_uploads/[^/]+/hashstates/.+"
    r"|_layers/.+/link|_manifests/revisions/.+/link|_manifests/tags/[^/]+/index/.+/link))$"
)
#: directories every registry with data has, and never loses
REGISTRY_SKELETON = frozenset(
    {
        "docker",
        "docker/registry",
        "docker/registry/v2",
        "docker/registry/v2/blobs",
        "docker/registry/v2/repositories",
    }
)
#: the bytes of a registry upload in flight, kept as a pending multipart upload
UPLOAD_DATA = re.compile(r"^docker/registry/v2/repositories/.+/_uploads/[^/]+/data$")
UPLOAD_DIR = re.compile(r"^docker/registry/v2/repositories/.+/_uploads/[^/]+$")
#: a registry upload's hash state: `_uploads/<uuid>/hashstates/<alg>/<offset>`
UPLOAD_HASHSTATE = re.compile(
    r"^docker/registry/v2/repositories/.+/_uploads/[^/]+/hashstates/[^/]+/[^/]+$"
)
#: registry v3.1's PutContent writes `<path>.<uuidv7>.tmp` and renames it onto `<path>`
#: (filesystem driver.go: fmt.Sprintf("%s.%s.tmp", subPath, uuid.NewString()), a v7 UUID).
#: Such a file is held here until its rename uploads it to `<path>`: it never reaches S3.
V31_TEMP = re.compile(
    r"^docker/registry/v2/(?:.+/)?[^/]+"
    r"\.[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.tmp$"
)


@dataclass
class Pending:
    """A file whose content is a multipart upload kept open (a registry upload in flight).

    As with the registry's own S3 driver, the bytes of an upload in flight are the parts of
    a pending multipart upload: durable in S3, found by ListMultipartUploads and ListParts,
    and completed into an object only when the upload is committed (renamed into place).
    """

    upload_id: str
    etags: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)

    @property
    def size(self) -> int:
        return sum(self.sizes)


@dataclass(frozen=True)
class Entry:
    """One name in a directory listing."""

    is_dir: bool
    size: int = 0
    mtime: float = 0.0
    etag: str = ""
    pending: Pending | None = None


@dataclass
class Listing:
    """A directory's children as last read from S3, kept up to date with this mount's own
    changes. A directory made here starts with an empty listing: until `metadata_ttl` has
    passed, only what this mount put in it can be there, so lookups need no request."""

    entries: dict[str, Entry]
    fetched: float
    marker: bool = False  # S3 holds a `dir/` marker object (written by another tool)
    #: None: every name of the directory is here. Otherwise the listing came from a page
    #: that stopped at this key (relative to the directory's prefix): only the names all of
    #: whose keys sort before it are known, present or absent (`covers`)
    upto: str | None = None
    #: a registry upload's directory listed with a subtree: its `data` may be a multipart
    #: upload kept open, which no listing shows, so that one name is always asked of S3
    blind: bool = False

    @property
    def complete(self) -> bool:
        """Does the listing stand for the whole directory (readdir, rmdir)?"""
        return self.upto is None and not self.blind

    def covers(self, name: str) -> bool:
        """Does the listing tell whether `name` exists (as a file or a directory)?"""
        if self.blind and name == "data":
            return False
        upto = self.upto
        return upto is None or (upto > name + "/" and not upto.startswith(name + "/"))


class Node:
    """One path this mount knows; see the module docstring."""

    __slots__ = (
        "big_until",
        "checked",
        "children",
        "detached",
        "etag",
        "file",
        "in_s3",
        "ino",
        "is_dir",
        "listing",
        "local",
        "lookups",
        "miss_since",
        "misses",
        "mtime",
        "name",
        "opens",
        "parent",
        "pending",
        "pinned",
        "size",
        "stored_here",
        "subtree_big_until",
        "subtree_ok_until",
    )

    def __init__(self, ino: int, parent: Node | None, name: str, is_dir: bool) -> None:
        self.ino = ino
        self.parent = parent
        self.name = name
        self.is_dir = is_dir
        self.size = 0
        self.mtime = 0.0
        self.etag = ""
        self.checked = float("-inf")
        self.lookups = 0
        self.opens = 0
        self.children: dict[str, Node] = {}
        self.listing: Listing | None = None
        self.local = False  # exists only in this mount (mkdir'd dir, file not yet uploaded)
        self.in_s3 = False  # a file whose object is known to exist
        self.detached = False  # unlinked or replaced: no longer reachable by its name
        self.stored_here = False  # the object's current ETag is from this mount's own write
        self.misses = 0  # directories: names looked up in vain lately ...
        self.miss_since = 0.0  # ... since this time
        self.big_until = 0.0  # directories: more than a listing page, known until this time
        self.pinned = False  # made by mkdir here and still empty: kept even when forgotten
        self.pending: Pending | None = None  # content is a multipart upload kept open
        self.subtree_ok_until = 0.0  # directories: everything below fits a scan, until then
        self.subtree_big_until = 0.0  # ... or does not, until then
        self.file: Any = None  # vfs.FileState while the file is open for writing

    def __repr__(self) -> str:
        return f"Node({self.ino}, {self.name!r}, dir={self.is_dir})"


class Namespace:
    """The inode table and the beliefs of the module docstring."""

    def __init__(
        self,
        prefix: str,
        metadata_ttl: float,
        immutable_ttl: float,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.prefix = prefix
        self.metadata_ttl = metadata_ttl
        self.immutable_ttl = immutable_ttl
        self.negative_ttl = negative_ttl
        self.clock = clock
        self.root = Node(ROOT_INODE, None, "", True)
        self.root.local = True  # the root always exists, even on an empty prefix
        self.nodes: dict[int, Node] = {ROOT_INODE: self.root}
        self._next_ino = ROOT_INODE + 1
        self._negative: OrderedDict[str, float] = OrderedDict()
        self.prefetched: OrderedDict[str, Listing] = OrderedDict()
        #: told of every path found or made absent (the blob cache drops what lay there)
        self.on_gone: Callable[[str], None] | None = None

    # -- names ---------------------------------------------------------------------------

    def rel(self, node: Node) -> str:
        """Path of `node` relative to the mount root, without a leading slash."""
        names: list[str] = []
        while node.parent is not None:
            names.append(node.name)
            node = node.parent
        return "/".join(reversed(names))

    def key(self, node: Node) -> str:
        return self.prefix + self.rel(node)

    def child_rel(self, parent: Node, name: str) -> str:
        base = self.rel(parent)
        return f"{base}/{name}" if base else name

    def dir_prefix(self, node: Node) -> str:
        """The listing prefix of a directory: its key and a slash (just the prefix for the root)."""
        rel = self.rel(node)
        return self.prefix + (rel + "/" if rel else "")

    # -- trust ---------------------------------------------------------------------------

    def ttl(self, rel: str) -> float:
        if rel in REGISTRY_SKELETON or IMMUTABLE_PATH.match(rel):
            return self.immutable_ttl
        return self.metadata_ttl

    def trust_left(self, node: Node, rel: str) -> float:
        """How much longer the node's attributes are trusted (what the kernel may cache):
        the rest of its TTL since it was confirmed, so that an answer taken from a listing
        made a while ago is not cached for a whole TTL more."""
        ttl = self.ttl(rel)
        if node.local or node.file is not None:
            return ttl
        return min(ttl, max(0.0, node.checked + ttl - self.clock()))

    def confirmed_recently(self, node: Node) -> bool:
        """Were the node's attributes confirmed (by S3 or this mount's own write) within
        its TTL? Unlike `fresh`, being open for writing does not count."""
        return self.clock() - node.checked < self.ttl(self.rel(node))

    def fresh(self, node: Node) -> bool:
        """Are the node's attributes still trusted without asking S3?"""
        fresh = node.local or node.file is not None
        fresh = fresh or self.clock() - node.checked < self.ttl(self.rel(node))
        (metrics.ATTRIBUTES_HIT if fresh else metrics.ATTRIBUTES_MISS).inc()
        return fresh

    def note_miss(self, parent: Node) -> None:
        """A name was looked up in `parent` and did not exist (a create is likely next)."""
        now = self.clock()
        if now - parent.miss_since > self.metadata_ttl:
            parent.misses, parent.miss_since = 0, now
        parent.misses += 1

    def creating_in(self, parent: Node) -> bool:
        """Are names being created in `parent` one after another (cp -r, many small files)?

        Then one listing answers the next lookups for `metadata_ttl` instead of one probe
        each; directories bigger than one listing page keep being probed.
        """
        now = self.clock()
        recent = now - parent.miss_since <= self.metadata_ttl
        return recent and parent.misses >= MISSES_BEFORE_LISTING and now >= parent.big_until

    def listing_fresh(self, node: Node) -> bool:
        """Is the directory's complete listing at hand and fresh?"""
        listing = self.listing_of(node)
        return listing is not None and listing.complete

    def listing_of(self, node: Node) -> Listing | None:
        """The directory's listing while it is fresh, complete or partial (`Listing.upto`)."""
        now = self.clock()
        listing = node.listing
        if listing is not None and now - listing.fetched >= self.metadata_ttl:
            listing = None
        if (listing is None or not listing.complete) and self.prefetched:
            # a listing of an ancestor's subtree may cover this directory
            kept = self.prefetched.pop(self.rel(node), None)
            fresh = kept is not None and now - kept.fetched < self.metadata_ttl
            if fresh and kept is not None and _better(kept, listing):
                node.listing = listing = kept
            elif kept is not None and (node.listing is None or node.listing.fetched < kept.fetched):
                node.listing = kept  # stale, but what it shows of blobs still holds (below)
        return listing

    def present_long(self, parent: Node, name: str, rel: str) -> tuple[Entry, float] | None:
        """A blob (or its directory) that the directory's last listing showed, while that
        listing is younger than `immutable_ttl`: a blob once seen stays trusted as long as
        its own attributes would be. Only presence: absence is asked again after
        `metadata_ttl`, since another replica may push the blob meanwhile."""
        listing, ttl = parent.listing, self.ttl(rel)
        if listing is None or ttl <= self.metadata_ttl or self.clock() - listing.fetched >= ttl:
            return None
        entry = listing.entries.get(name)
        return None if entry is None else (entry, listing.fetched)

    def prefetched_dir(self, rel: str) -> float | None:
        """When a kept subtree listing last showed `rel` as a directory (some key under it),
        while that is fresh; None if none does."""
        listing = self.prefetched.get(rel) if self.prefetched else None
        if listing is None or self.clock() - listing.fetched >= self.metadata_ttl:
            return None
        return listing.fetched

    def confirm_ancestors(self, node: Node, when: float) -> None:
        """A key under `node` (or `node` itself) existed in S3 at `when`, and so did every
        directory above it: a deep path confirmed keeps its whole chain fresh."""
        parent = node.parent
        while parent is not None and parent is not self.root and parent.checked < when:
            parent.checked = when
            parent = parent.parent

    def _drop_prefetched(self, parent: Node) -> None:
        if self.prefetched:
            self.prefetched.pop(self.rel(parent), None)

    def store_prefetched(self, listings: dict[str, Listing]) -> None:
        """Listings of directories below a scanned one, for when they are visited."""
        for rel, listing in listings.items():
            self.prefetched[rel] = listing
            self.prefetched.move_to_end(rel)
        while len(self.prefetched) > PREFETCHED_LISTINGS:
            self.prefetched.popitem(last=False)

    def is_negative(self, rel: str) -> bool:
        expiry = self._negative.get(rel)
        if expiry is not None and self.clock() >= expiry:
            del self._negative[rel]
            expiry = None
        (metrics.NEGATIVE_MISS if expiry is None else metrics.NEGATIVE_HIT).inc()
        return expiry is not None

    def set_negative(self, rel: str) -> None:
        """`rel` does not exist (S3 said so, or this mount removed it)."""
        if self.on_gone is not None:
            self.on_gone(rel)
        if self.negative_ttl <= 0:
            return
        self._negative[rel] = self.clock() + self.negative_ttl
        self._negative.move_to_end(rel)
        while len(self._negative) > NEGATIVE_CACHE_ENTRIES:
            self._negative.popitem(last=False)

    def clear_negative(self, rel: str) -> None:
        self._negative.pop(rel, None)

    def clear_negative_under(self, rel: str) -> None:
        """Forget "does not exist" for `rel` and its ancestors (a file was created there)."""
        while rel:
            self._negative.pop(rel, None)
            rel = rel.rpartition("/")[0]

    # -- the table -----------------------------------------------------------------------

    def get(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FsError(116, f"inode {ino} is not known")  # ESTALE
        return node

    def child(self, parent: Node, name: str) -> Node | None:
        return parent.children.get(name)

    def attach(self, parent: Node, name: str, entry: Entry, when: float | None = None) -> Node:
        """The child `name` as `entry` says, created or updated, attributes confirmed at
        `when` (the time of the listing that said so; now if not given). What the node
        learnt later than `when` is kept."""
        when = self.clock() if when is None else when
        node = parent.children.get(name)
        if node is not None and when < node.checked and node.is_dir == entry.is_dir:
            return node  # confirmed since that listing was made: it knows better
        if node is not None and node.is_dir != entry.is_dir and node.file is None:
            self.detach(node)
            node = None
        if node is None:
            node = Node(self._next_ino, parent, name, entry.is_dir)
            self._next_ino += 1
            self.nodes[node.ino] = node
            parent.children[name] = node
        if node.file is None:  # a file being written knows better than S3
            if entry.etag != node.etag:
                node.stored_here = False  # someone else wrote it since
            node.size, node.mtime, node.etag = entry.size, entry.mtime, entry.etag
            node.in_s3 = not entry.is_dir and entry.pending is None
            node.pending = entry.pending
        node.checked = when
        self.clear_negative(self.child_rel(parent, name))
        return node

    def new_local(self, parent: Node, name: str, is_dir: bool, mtime: float) -> Node:
        """A node that exists only in this mount so far (mkdir, create)."""
        old = parent.children.get(name)
        if old is not None:
            self.detach(old)
        node = self.attach(parent, name, Entry(is_dir, 0, mtime))
        node.local = True
        node.in_s3 = False
        if is_dir:
            node.listing = Listing({}, self.clock())
            node.pinned = True
        self.note_entry(parent, name, Entry(is_dir, 0, mtime))
        return node

    def detach(self, node: Node) -> None:
        """`node` is no longer reachable by name (unlinked, replaced, gone from S3)."""
        parent = node.parent
        if parent is not None and parent.children.get(node.name) is node:
            del parent.children[node.name]
        node.detached = True
        node.local = node.pinned = False
        self._maybe_drop(node)

    def move(self, node: Node, parent: Node, name: str) -> None:
        """Rename: `node` (and everything under it) now lives at parent/name."""
        if node.is_dir:
            self.prefetched.clear()  # listings kept by path would describe the old tree
        old_parent = node.parent
        assert old_parent is not None
        if old_parent.children.get(node.name) is node:
            del old_parent.children[node.name]
        self.forget_entry(old_parent, node.name)
        existing = parent.children.get(name)
        if existing is not None and existing is not node:
            self.detach(existing)
        node.parent, node.name = parent, name
        parent.children[name] = node
        self.clear_negative(self.child_rel(parent, name))

    def remember_lookup(self, node: Node) -> None:
        node.lookups += 1

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or node is self.root:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_drop(node)

    def release_open(self, node: Node) -> None:
        node.opens = max(0, node.opens - 1)
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        """Free a node nobody needs: no lookups, not open, not being written, no children.

        A directory made by mkdir stays until it is removed or gains a file, as the operator
        expects. One that exists only because this mount emptied it goes once the kernel
        forgets it: S3 has nothing of it, and keeping every such directory (GC leaves many)
        would grow without bound.
        """
        while (
            node is not self.root
            and node.lookups == 0
            and node.opens == 0
            and node.file is None
            and not node.pinned
            and not node.children
        ):
            self.nodes.pop(node.ino, None)
            parent = node.parent
            if parent is None:
                return
            if parent.children.get(node.name) is node:
                del parent.children[node.name]
            node = parent

    # -- listings ------------------------------------------------------------------------

    def note_entry(self, parent: Node, name: str, entry: Entry) -> None:
        """Record in the cached listing that `name` now exists (this mount made it so)."""
        self._drop_prefetched(parent)
        if parent.listing is not None:
            parent.listing.entries[name] = entry
        self.clear_negative(self.child_rel(parent, name))

    def forget_entry(self, parent: Node, name: str) -> None:
        """Record that `name` is gone (this mount removed it).

        The directory stays, as it would on a local disk, even if that was its last key in
        S3: the registry removes an upload's directory and expects `_uploads` to remain.
        So do its ancestors, which that key may have been the last one under too (`a` of
        `a/b/f`, `repo` of `repo/_uploads/<uuid>`): each is this mount's own from now on,
        until a file is written under it again, it is removed, or the kernel forgets it.
        """
        self._drop_prefetched(parent)
        if parent.listing is not None:
            parent.listing.entries.pop(name, None)
        self.set_negative(self.child_rel(parent, name))
        now = self.clock()
        node: Node | None = parent
        while node is not None and node is not self.root and not node.detached:
            node.local, node.checked = True, now
            node = node.parent

    def drop_local(self, node: Node) -> None:
        """`node` existed only in this mount and goes without trace (a temporary file
        discarded): unlike `forget_entry`, nothing is said about S3 or the directories."""
        parent = node.parent
        if parent is not None and parent.listing is not None:
            parent.listing.entries.pop(node.name, None)
        self.detach(node)

    def local_children(self, parent: Node) -> Iterator[tuple[str, Node]]:
        """Children that exist here but maybe not yet in S3 (new dirs, files being written)."""
        for name, node in parent.children.items():
            if node.local or node.file is not None or node.pending is not None:
                yield name, node

    def descendants(self, node: Node) -> Iterator[Node]:
        for child in list(node.children.values()):
            yield child
            yield from self.descendants(child)


def _better(kept: Listing, current: Listing | None) -> bool:
    """Should a kept listing replace the partial or missing one a directory holds?"""
    return current is None or kept.complete or kept.fetched > current.fetched
