"""Unlink and rename: server-side copies and deletes, with the namespace following.

S3 has no rename: a file is copied (CopyObject, or a parallel UploadPartCopy above the
registry's `multipartcopythresholdsize`) and then deleted, and the destination is complete
before `rename` returns. A file still being written that was never uploaded under its old
name goes straight to the new one. Directories are renamed key by key.

Registry v3.1's PutContent renames its temporary `<path>.<uuidv7>.tmp` onto `<path>`
while the file is still open: the held content (vfs/files.py) is uploaded right there to
`<path>`, one PutObject as under the native driver, and `rename` reports its outcome.
"""

from __future__ import annotations

import errno
import logging

import trio

from s3fs_registry.config import S3Config
from s3fs_registry.errors import FsError
from s3fs_registry.namespace import DETERMINISTIC_PATH, V31_TEMP, Entry, Node
from s3fs_registry.store import MAX_PARTS, Store
from s3fs_registry.vfs.files import Files, FileState, discard
from s3fs_registry.vfs.names import Names
from s3fs_registry.writer import SpoolSession, WriteContext, WriteSession

log = logging.getLogger(__name__)

COPY_PARALLEL_KEYS = 16


class Moves:
    """Unlink and rename (see the module docstring)."""

    def __init__(
        self, names: Names, files: Files, store: Store, writes: WriteContext, s3: S3Config
    ) -> None:
        self.names = names
        self.files = files
        self.ns = names.ns
        self.store = store
        self.writes = writes
        self.s3 = s3

    async def unlink(self, parent_ino: int, name: str) -> None:
        parent = self.names.directory(parent_ino)
        node = await self.names.resolve(parent, name)
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
        if self.files.held(node):  # never in S3: the registry's Delete(tmp) costs nothing
            if node.file is not None and node.file.content is not None:
                discard(node.file.content)
                node.file.content = None
            self.ns.drop_local(node)
            return
        had_pending = node.pending is not None
        await self.files.abort_pending(node)
        state = node.file
        if state is not None and state.content is not None:
            discard(state.content)
            state.content = None
        if node.in_s3 or not node.local or had_pending:
            await self.store.delete(self.ns.key(node))
        if parent.children.get(node.name) is node:
            self.ns.forget_entry(parent, node.name)
        self.ns.detach(node)

    async def rename(
        self, old_ino: int, old_name: str, new_ino: int, new_name: str, noreplace: bool
    ) -> None:
        old_parent, new_parent = self.names.directory(old_ino), self.names.directory(new_ino)
        src = await self.names.resolve(old_parent, old_name)
        if src is None:
            raise FsError(errno.ENOENT)
        dst = await self.names.resolve(new_parent, new_name)
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
                await self.names.require_empty(dst)
        self.names.child_rel(new_parent, new_name)
        if src.is_dir:
            await self._rename_dir(src, new_parent, new_name)
        else:
            await self._rename_file(src, new_parent, new_name)

    async def _rename_file(self, src: Node, new_parent: Node, new_name: str) -> None:
        state = src.file
        if state is None:
            if src.pending is not None:
                await self.files.settle(src)
            await self._move_file(src, new_parent, new_name)
            return
        async with state.lock:
            if state.error is not None:
                raise state.error
            content = state.content
            dst_key = self.ns.prefix + self.ns.child_rel(new_parent, new_name)
            if self.files.held(src):
                await self._commit_held(src, state, new_parent, new_name)
                return
            if isinstance(content, WriteSession) and content.retarget(dst_key):
                await self._commit_renamed(src, state, content, new_parent, new_name)
                return
            await self.files.settle_locked(src, state)
            await self._move_file(src, new_parent, new_name)
            if isinstance(state.content, SpoolSession):
                state.content.key = self.ns.key(src)

    async def _commit_held(
        self, src: Node, state: FileState, new_parent: Node, new_name: str
    ) -> None:
        """v3.1's rename of its temporary onto the real name: upload the held content there.

        When `rename` returns 0 the object is complete in S3; when the upload fails the
        rename fails with its errno, the target keeps its old object and the temporary is
        still there for the registry's Delete(tmp). A rewrite with the bytes this mount
        stored moments ago under a path whose content its name determines (the registry
        writes every hash state twice) sends nothing, as the in-place rewrite of 2.8 does.
        """
        dst_rel = self.ns.child_rel(new_parent, new_name)
        if V31_TEMP.match(dst_rel):  # from one temporary name to another: still held
            self.ns.move(src, new_parent, new_name)
            return
        content = state.content or WriteSession(self.writes, "", None)
        key = self.ns.prefix + dst_rel
        if isinstance(content, WriteSession):
            content.retarget(key, self._stored_here(new_parent, new_name, dst_rel))
        else:
            content.key = key
        await self._commit_renamed(src, state, content, new_parent, new_name)

    def _stored_here(self, parent: Node, name: str, rel: str) -> str:
        """The ETag of `rel` if this mount stored it moments ago and its name fixes its
        content (namespace.DETERMINISTIC_PATH); else "" (always upload)."""
        node = parent.children.get(name)
        if node is None or node.is_dir or not DETERMINISTIC_PATH.match(rel):
            return ""
        return node.etag if node.stored_here and self.ns.confirmed_recently(node) else ""

    async def _commit_renamed(
        self, src: Node, state: FileState, content: WriteSession | SpoolSession,
        new_parent: Node, new_name: str,
    ) -> None:  # fmt: skip
        """A file never uploaded under its old name goes straight to the new one."""
        old_key, had_object = self.ns.key(src), src.in_s3
        try:
            committed = await content.commit()
        except BaseException as exc:
            state.error, state.content = exc, None
            raise
        finally:
            if isinstance(content, SpoolSession):
                content.close()
        state.content = None
        if had_object:
            await self.store.delete(old_key)
        old_parent, old_name = src.parent, src.name
        assert old_parent is not None
        self.ns.move(src, new_parent, new_name)
        self.ns.forget_entry(old_parent, old_name)
        self.files.note_committed(src, committed.size, committed.etag)

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
        s3 = self.s3
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
                await self.files.commit_state(node)
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
        self.ns.note_entry(new_parent, new_name, Entry(True, 0, self.names.dir_mtime))
        for node in [src, *self.ns.descendants(src)]:
            node.listing, node.etag = None, ""  # copies have new ETags
