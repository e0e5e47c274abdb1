"""The pyfuse3 adapter: thin handlers around vfs.Filesystem, one error boundary.

Each handler decodes its arguments, calls the logic, and encodes the answer. `fuse_errors`
is the only place an exception becomes an errno: domain errors through the one table in
errors.py, anything unexpected logged with its traceback and answered EIO. A handler that
let any other exception escape would end `pyfuse3.main()` and the mount with it.

Not implemented on purpose (pyfuse3 answers ENOSYS): poll (Go sets O_NONBLOCK on every fd
and polls FUSE files; ENOSYS makes the kernel treat them as always ready), xattrs, locks.
symlink, link and mknod of anything but a regular file are refused with EPERM: S3 objects
cannot represent them.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import cast

import pyfuse3

from s3fs_registry import metrics
from s3fs_registry.config import MountConfig
from s3fs_registry.errors import FsError, S3fsError, to_errno
from s3fs_registry.namespace import Entry
from s3fs_registry.vfs import Attr, Filesystem

log = logging.getLogger(__name__)

BLOCK_SIZE = 512
IO_SIZE = 1024 * 1024  # st_blksize: cp and friends size their buffers from it
STATFS_BLOCKS = 1 << 40  # S3 has no capacity; report a petabyte-scale free space like peers do


@asynccontextmanager
async def fuse_errors(operation: str) -> AsyncIterator[None]:
    """Turn every exception into a FUSEError with the table's errno, logging as it says;
    count the request and its errno (metrics.py)."""
    metrics.fuse_operation(operation)
    try:
        yield
    except pyfuse3.FUSEError as exc:
        metrics.fuse_error(operation, exc.errno)
        raise
    except S3fsError as exc:
        code = to_errno(exc)
        metrics.fuse_error(operation, code)
        log.log(
            exc.level if code != errno.EIO else logging.WARNING,
            "%s: %s (%s)",
            operation,
            exc,
            errno.errorcode.get(code, code),
        )
        raise pyfuse3.FUSEError(code) from None
    except OSError as exc:
        log.warning("%s: %s", operation, exc)
        metrics.fuse_error(operation, exc.errno or errno.EIO)
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    except Exception:
        log.exception("%s: unexpected error", operation)
        metrics.fuse_error(operation, errno.EIO)
        raise pyfuse3.FUSEError(errno.EIO) from None


def _name(raw: bytes) -> str:
    """FUSE names are bytes; S3 keys are UTF-8. A name that is not UTF-8 cannot be a key."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FsError(errno.EINVAL, f"name {raw!r} is not valid UTF-8") from None


class S3Operations(pyfuse3.Operations):
    """pyfuse3 handlers; all logic is in vfs.Filesystem."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, fs: Filesystem, mount: MountConfig) -> None:
        super().__init__()
        self.fs = fs
        self._uid = mount.uid if mount.uid >= 0 else os.geteuid()
        self._gid = mount.gid if mount.gid >= 0 else os.getegid()
        self._file_mode = mount.file_mode
        self._dir_mode = mount.dir_mode
        self._dirs: dict[int, tuple[int, list[tuple[str, Entry]] | None]] = {}
        self._next_dir = 1

    def entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        out = pyfuse3.EntryAttributes()
        out.st_ino = attr.ino
        out.generation = 0
        out.entry_timeout = attr.ttl
        out.attr_timeout = attr.ttl
        kind, perm = (
            (stat.S_IFDIR, self._dir_mode) if attr.is_dir else (stat.S_IFREG, self._file_mode)
        )
        out.st_mode = kind | perm
        out.st_nlink = 1  # 1 tells find not to trust link counts for leaf detection
        out.st_uid, out.st_gid = self._uid, self._gid
        out.st_size = attr.size
        out.st_blksize = IO_SIZE
        out.st_blocks = -(-attr.size // BLOCK_SIZE)
        ns = int(attr.mtime * 1e9)
        out.st_atime_ns = out.st_mtime_ns = out.st_ctime_ns = ns
        return out

    # -- names and attributes ------------------------------------------------------------

    async def lookup(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async with fuse_errors("lookup"):
            return self.entry(await self.fs.names.lookup(parent_inode, _name(name)))
        raise AssertionError("unreachable")

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        try:
            self.fs.names.forget(inode_list)
        except Exception:  # forget may not raise at all
            log.exception("forget failed")

    async def getattr(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        async with fuse_errors("getattr"):
            return self.entry(await self.fs.names.getattr(inode))
        raise AssertionError("unreachable")

    async def setattr(
        self,
        inode: pyfuse3.InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: pyfuse3.FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        async with fuse_errors("setattr"):
            node = self.fs.ns.get(inode)
            current = self.entry(self.fs.names.attr(node))
            if (
                (fields.update_mode and stat.S_IMODE(attr.st_mode) != stat.S_IMODE(current.st_mode))
                or (fields.update_uid and attr.st_uid != self._uid)
                or (fields.update_gid and attr.st_gid != self._gid)
            ):
                raise FsError(errno.EPERM, "mode and ownership are set for the whole mount")
            if fields.update_size:
                await self.fs.files.truncate(node, attr.st_size)
            # atime/mtime: S3 keeps LastModified itself; accepted and ignored (touch works)
            return self.entry(await self.fs.names.getattr(inode))
        raise AssertionError("unreachable")

    # -- directories ---------------------------------------------------------------------

    async def mkdir(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        async with fuse_errors("mkdir"):
            return self.entry(await self.fs.names.mkdir(parent_inode, _name(name)))
        raise AssertionError("unreachable")

    async def rmdir(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        async with fuse_errors("rmdir"):
            await self.fs.names.rmdir(parent_inode, _name(name))

    async def opendir(
        self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileHandleT:
        """No listing yet: opening a directory just to fsync it (v3.1's syncDir) costs nothing."""
        async with fuse_errors("opendir"):
            self.fs.ns.get(inode)
            fh, self._next_dir = self._next_dir, self._next_dir + 1
            self._dirs[fh] = (inode, None)
            return fh
        raise AssertionError("unreachable")

    async def readdir(
        self, fh: pyfuse3.FileHandleT, start_id: int, token: pyfuse3.ReaddirToken
    ) -> None:
        """Offsets index a snapshot taken at the first readdir, so they stay stable."""
        async with fuse_errors("readdir"):
            parent, entries = self._dirs.get(fh, (0, []))
            if entries is None:
                entries = await self.fs.names.list_dir(parent)
                self._dirs[fh] = (parent, entries)
            for index in range(start_id, len(entries)):
                name, entry = entries[index]
                node = self.fs.names.entry_node(parent, name, entry)
                if not pyfuse3.readdir_reply(
                    token, name.encode(), self.entry(self.fs.names.attr(node)), index + 1
                ):
                    self.fs.names.forget([(node.ino, 0)])
                    return
                self.fs.ns.remember_lookup(node)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        """Directories are virtual and every entry change was synchronous: nothing to do."""

    # -- files ---------------------------------------------------------------------------

    async def create(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        async with fuse_errors("create"):
            fh, attr = await self.fs.files.create(parent_inode, _name(name))
            return pyfuse3.FileInfo(fh=fh), self.entry(attr)
        raise AssertionError("unreachable")

    async def mknod(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        async with fuse_errors("mknod"):
            if not stat.S_ISREG(mode):
                raise FsError(errno.EPERM, "only regular files can be stored in S3")
            fh, attr = await self.fs.files.create(parent_inode, _name(name))
            await self.fs.files.flush(fh)
            await self.fs.files.release(fh)
            return self.entry(attr)
        raise AssertionError("unreachable")

    async def open(
        self, inode: pyfuse3.InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        async with fuse_errors("open"):
            fh, keep_cache = await self.fs.files.open(inode, flags)
            return pyfuse3.FileInfo(fh=fh, keep_cache=keep_cache)
        raise AssertionError("unreachable")

    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        async with fuse_errors("read"):
            # pyfuse3 takes any buffer (PyObject_GetBuffer): a memoryview saves a copy
            return cast(bytes, await self.fs.files.read(fh, off, size))
        raise AssertionError("unreachable")

    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        async with fuse_errors("write"):
            return await self.fs.files.write(fh, off, buf)
        raise AssertionError("unreachable")

    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        async with fuse_errors("flush"):
            await self.fs.files.flush(fh)

    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        async with fuse_errors("fsync"):
            await self.fs.files.fsync(fh)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        async with fuse_errors("release"):
            await self.fs.files.release(fh)

    async def unlink(
        self, parent_inode: pyfuse3.InodeT, name: pyfuse3.FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        async with fuse_errors("unlink"):
            await self.fs.moves.unlink(parent_inode, _name(name))

    async def rename(
        self,
        parent_inode_old: pyfuse3.InodeT,
        name_old: pyfuse3.FileNameT,
        parent_inode_new: pyfuse3.InodeT,
        name_new: pyfuse3.FileNameT,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        async with fuse_errors("rename"):
            if flags & pyfuse3.RENAME_EXCHANGE:
                raise FsError(errno.EINVAL, "RENAME_EXCHANGE cannot be done atomically on S3")
            await self.fs.moves.rename(
                parent_inode_old,
                _name(name_old),
                parent_inode_new,
                _name(name_new),
                bool(flags & pyfuse3.RENAME_NOREPLACE),
            )

    async def symlink(
        self,
        parent_inode: pyfuse3.InodeT,
        name: pyfuse3.FileNameT,
        target: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def link(
        self,
        inode: pyfuse3.InodeT,
        new_parent_inode: pyfuse3.InodeT,
        new_name: pyfuse3.FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        raise pyfuse3.FUSEError(errno.EPERM)

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        out = pyfuse3.StatvfsData()
        out.f_bsize = out.f_frsize = 4096
        out.f_blocks = out.f_bfree = out.f_bavail = STATFS_BLOCKS
        out.f_files = out.f_ffree = out.f_favail = 1 << 32
        out.f_namemax = 255
        return out
