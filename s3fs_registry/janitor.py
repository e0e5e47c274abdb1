"""Aborts multipart uploads under the mount's prefix that nobody will complete.

A daemon killed during a large upload (or a registry's native S3 driver whose client gave
up) leaves a pending multipart upload behind: invisible, but billed, and enough of them
break some S3-compatible stores (distribution#1948). At start and then periodically, every
upload under `rootdirectory` initiated more than `janitor_age` ago (default 168h, the
registry's own upload-purging age) is aborted. Listing is paginated and scoped to the
prefix; a key outside it is never touched, even if a server returned one, and neither is
an upload this process is still writing (moto, for one, reports every upload as initiated
in 2010).
"""

from __future__ import annotations

import logging
import time

import trio

from s3fs_registry import metrics
from s3fs_registry.errors import NotFoundError, StoreError
from s3fs_registry.namespace import UPLOAD_DATA
from s3fs_registry.store import Store

log = logging.getLogger(__name__)


class Janitor:
    """See the module docstring."""

    def __init__(self, store: Store, prefix: str, age: float, interval: float) -> None:
        self.store = store
        self.prefix = prefix
        self.age = age
        self.interval = interval
        self.aborted = 0

    async def run(self) -> None:
        """Sweep now and then every `interval`; errors are logged and retried next time."""
        while True:
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning(
                    "janitor: listing multipart uploads under %r failed: %s", self.prefix, exc
                )
            await trio.sleep(self.interval)

    async def _registry_still_owns(self, key: str) -> bool:
        """An upload in flight of the registry (its `data` kept open, as the registry's S3
        driver keeps it) is the registry's while its `startedat` exists: the registry's
        upload purging removes it, with the upload, when it is old."""
        if not UPLOAD_DATA.match(key[len(self.prefix) :]):
            return False
        try:
            await self.store.head(key.rpartition("/")[0] + "/startedat")
        except NotFoundError:
            return False
        return True

    async def sweep(self) -> int:
        """Abort every stale upload under the prefix; returns how many were aborted."""
        cutoff = time.time() - self.age
        stale = [
            u
            for u in await self.store.list_uploads(self.prefix)
            if u.key.startswith(self.prefix)
            and u.initiated < cutoff
            and u.upload_id not in self.store.live_uploads  # never one of ours in flight
        ]
        before = self.aborted
        for upload in stale:
            if await self._registry_still_owns(upload.key):
                continue
            try:
                await self.store.abort_multipart(upload.key, upload.upload_id)
            except StoreError as exc:
                log.warning("janitor: could not abort the upload of %s: %s", upload.key, exc)
                metrics.JANITOR_FAILED.inc()
                continue
            self.aborted += 1
            metrics.JANITOR_ABORTED.inc()
            log.info(
                "janitor: aborted a multipart upload of %s started %s",
                upload.key,
                time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(upload.initiated)),
            )
        return self.aborted - before
