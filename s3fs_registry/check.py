"""`s3fs-registry check`: does the bucket grant every S3 permission the registry needs?

Each of the eight actions of the registry's documented IAM policy is exercised on a
scratch key under rootdirectory, which is removed afterwards, so the answer is what S3
does rather than what a policy document seems to say. Where an action cannot be tried
because an earlier one was refused (no object to read without PutObject), it is tried in a
way that still tells "refused" from "allowed" (a missing key, an unknown upload id).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from s3fs_registry.config import Config
from s3fs_registry.errors import AccessDeniedError, CredentialsError, StoreError
from s3fs_registry.store import Store

log = logging.getLogger(__name__)

PERMISSIONS = (
    "ListBucket",
    "GetBucketLocation",
    "ListBucketMultipartUploads",
    "PutObject",
    "GetObject",
    "DeleteObject",
    "ListMultipartUploadParts",
    "AbortMultipartUpload",
)
FAKE_UPLOAD_ID = "s3fs-registry-check-no-such-upload"


@dataclass
class Outcome:
    """The result for one permission."""

    permission: str
    granted: bool
    detail: str


class PermissionCheck:
    """Runs the probes in order; `outcomes` holds one line per permission."""

    def __init__(self, store: Store, config: Config) -> None:
        self.store = store
        self.prefix = config.s3.key_prefix()
        self.key = f"{self.prefix}s3fs-registry-check-{uuid.uuid4()}"
        self.outcomes: list[Outcome] = []
        self._stored = False
        self._upload_id = ""

    async def run(self) -> list[Outcome]:
        probes: list[tuple[str, Callable[[], Awaitable[str]]]] = [
            ("ListBucket", self._list),
            ("GetBucketLocation", self._location),
            ("ListBucketMultipartUploads", self._list_uploads),
            ("PutObject", self._put),
            ("GetObject", self._get),
            ("ListMultipartUploadParts", self._list_parts),
            ("AbortMultipartUpload", self._abort),
            ("DeleteObject", self._delete),
        ]
        for permission, probe in probes:
            await self._try(permission, probe)
        self.outcomes.sort(key=lambda o: PERMISSIONS.index(o.permission))
        return self.outcomes

    async def _try(self, permission: str, probe: Callable[[], Awaitable[str]]) -> None:
        try:
            detail = await probe()
        except CredentialsError:
            raise
        except AccessDeniedError as exc:
            self.outcomes.append(Outcome(permission, False, f"refused: {exc.code}"))
            return
        self.outcomes.append(Outcome(permission, True, detail))

    async def _list(self) -> str:
        await self.store.list_page(self.prefix, max_keys=1)
        return f"ListObjectsV2 s3://{self.store.bucket}/{self.prefix}"

    async def _location(self) -> str:
        return f"GetBucketLocation: {await self.store.bucket_location()}"

    async def _list_uploads(self) -> str:
        await self.store.list_uploads(self.key)
        return "ListMultipartUploads under the prefix"

    async def _put(self) -> str:
        await self.store.put(self.key, b"s3fs-registry permission check\n")
        self._stored = True
        self._upload_id = await self.store.create_multipart(self.key)
        return f"PutObject and CreateMultipartUpload {self.key}"

    async def _get(self) -> str:
        try:
            await self.store.get(self.key)
        except StoreError as exc:
            if self._stored or exc.code not in {"NoSuchKey", "404"}:
                raise
            return "GetObject of a missing key answered NoSuchKey (allowed)"
        return f"GetObject {self.key}"

    async def _list_parts(self) -> str:
        try:
            await self.store.list_parts(self.key, self._upload_id or FAKE_UPLOAD_ID)
        except StoreError as exc:
            if self._upload_id or exc.code != "NoSuchUpload":
                raise
            return "ListParts of an unknown upload answered NoSuchUpload (allowed)"
        return "ListParts of the scratch upload"

    async def _abort(self) -> str:
        await self.store.abort_multipart(self.key, self._upload_id or FAKE_UPLOAD_ID)
        self._upload_id = ""
        return "AbortMultipartUpload of the scratch upload"

    async def _delete(self) -> str:
        await self.store.delete_many([self.key])
        self._stored = False
        return "DeleteObjects of the scratch key"

    async def cleanup(self) -> None:
        """Best effort: leave nothing behind even when a probe was refused halfway."""
        if self._upload_id:
            try:
                await self.store.abort_multipart(self.key, self._upload_id)
            except StoreError as exc:
                log.warning("could not abort scratch upload %s: %s", self.key, exc)
        if self._stored:
            try:
                await self.store.delete(self.key)
            except StoreError as exc:
                log.warning("could not delete scratch key %s: %s", self.key, exc)


async def probe(store: Store, config: Config) -> list[Outcome]:
    """Every permission's outcome; the scratch key and upload are removed in any case."""
    check = PermissionCheck(store, config)
    try:
        return await check.run()
    finally:
        await check.cleanup()


def format_table(outcomes: list[Outcome]) -> str:
    width = max(len(f"s3:{o.permission}") for o in outcomes)
    lines = [f"{'permission':<{width}}  result   detail"]
    for o in outcomes:
        result = "granted" if o.granted else "MISSING"
        lines.append(f"{'s3:' + o.permission:<{width}}  {result:<7}  {o.detail}")
    return "\n".join(lines)
