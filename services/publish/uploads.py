"""Model bytes into the verified store: only this service writes it.

An SDK user may write only the upload area (``edgepub_model_uploads``); on
``model.upload`` the entry is streamed from there into ``edgepub_model_files`` while its
SHA-256 and size are checked, and removed from the upload area either way. So no user can
overwrite the bytes a publish reads, and an entry that does not match (tampered, or left
by an older version) is replaced by the next correct upload instead of blocking the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.errors import ObjectNotFoundError

from edgepub.shared import objects, subjects
from edgepub.shared.errors import InvalidModelError, InvalidRequestError
from edgepub.shared.schemas import ModelUploadReply, ModelUploadRequest

log = structlog.get_logger("edgepub.publish.uploads")


def _check(req: ModelUploadRequest) -> None:
    """The Struct bounds each field; this ties the upload's name to the bytes."""
    if req.upload is not None and objects.upload_of(req.upload) != req.sha256:
        raise InvalidRequestError(
            f"upload {req.upload[:100]!r} is not an upload of {req.sha256}: expected "
            "'<sha256>.<32 hex digits>'"
        )


async def _info(js: JetStreamContext, bucket: str, name: str) -> ObjectInfo | None:
    store = await js.object_store(bucket)
    try:
        info = await store.get_info(name)
    except (ObjectNotFoundError, JsNotFoundError):
        return None
    return None if info.deleted or info.is_link() or not info.nuid else info


async def stored_model(js: JetStreamContext, sha256: str) -> ObjectInfo | None:
    """The verified store's entry for these bytes, whatever it holds (None: no entry)."""
    return await _info(js, subjects.OBJECT_STORE_MODELS, sha256)


def matches(info: ObjectInfo | None, sha256: str, size: int) -> bool:
    return info is not None and info.size == size and objects.digest_hex(info) == sha256


@dataclass
class ModelUploads:
    js: JetStreamContext

    async def upload(self, user: str, req: ModelUploadRequest) -> ModelUploadReply:
        _check(req)
        stored = await stored_model(self.js, req.sha256)
        present = matches(stored, req.sha256, req.size)
        if req.upload is None:
            return ModelUploadReply(present=present)
        staged = await _info(self.js, subjects.OBJECT_STORE_UPLOADS, req.upload)
        if staged is None:
            raise InvalidModelError(
                f"no upload named {req.upload} in {subjects.OBJECT_STORE_UPLOADS}; "
                "upload the file again"
            )
        try:
            if not present:
                await self._copy_verified(staged, stored, req)
                log.info("model_bytes_stored", sha256=req.sha256, size=req.size, user=user)
        finally:
            await objects.remove(self.js, staged)
        return ModelUploadReply(present=True)

    async def _copy_verified(
        self, staged: ObjectInfo, stored: ObjectInfo | None, req: ModelUploadRequest
    ) -> None:
        if staged.size != req.size:
            raise InvalidModelError(
                f"upload {staged.name} holds {staged.size} bytes, not the declared {req.size}; "
                "upload the file again"
            )
        bucket = subjects.OBJECT_STORE_MODELS
        # The copy goes on a fresh chunk subject; the entry switches to it (the meta) only
        # when every byte matched, so a reader never sees a half or wrong entry.
        nuid = objects.new_nuid()
        written = await objects.write_chunks(self.js, bucket, nuid, objects.read(self.js, staged))
        if written.sha256 != req.sha256 or written.size != req.size:
            await objects.purge_chunks(self.js, bucket, nuid)
            raise InvalidModelError(
                f"upload {staged.name}: its bytes do not match sha256 {req.sha256} "
                f"(got {written.sha256[:12]}…, {written.size} bytes); upload the file again"
            )
        await objects.write_meta(self.js, bucket, req.sha256, written)
        if stored is not None:  # the mismatched entry this one repairs
            await objects.purge_chunks(self.js, bucket, stored.nuid)
