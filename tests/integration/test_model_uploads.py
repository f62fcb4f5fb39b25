"""Model bytes reach the verified store only through the publish service, checked: a wrong
upload is refused and leaves nothing behind, and an entry that does not match its name (as
an SDK user could once make by overwriting it) is repaired by uploading the right bytes."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.js.errors import NotFoundError as JsNotFoundError
from nats.js.errors import ObjectNotFoundError

from edgepub import Client, InvalidModelError
from edgepub.shared import bus, objects, rpc, subjects
from edgepub.shared.schemas import ModelUploadReply, ModelUploadRequest
from support.servers import NatsServer

pytestmark = pytest.mark.timeout(180)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def _entry(server: NatsServer, bucket: str, name: str) -> bytes | None:
    nc = await bus.connect(server.settings("publish"), name="test-read")
    try:
        js = nc.jetstream()
        try:
            info = await (await js.object_store(bucket)).get_info(name)
        except (ObjectNotFoundError, JsNotFoundError):
            return None
        if info.deleted:
            return None
        return b"".join([c async for c in objects.read(js, info)])
    finally:
        await nc.close()


async def _tamper(server: NatsServer, sha256: str) -> None:
    """Replace the verified entry's bytes, as an overwrite used to."""
    nc = await bus.connect(server.settings("publish"), name="tamper")
    try:
        js = nc.jetstream()
        await objects.write(
            js, subjects.OBJECT_STORE_MODELS, sha256, objects.new_nuid(), _chunks(b"garbage")
        )
    finally:
        await nc.close()


def test_a_tampered_entry_is_repaired_by_uploading_again(
    client: Client, model_file: Path, nats_server: NatsServer
) -> None:
    data = model_file.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    first = client.upload_model("rf", model_file)
    assert asyncio.run(_entry(nats_server, subjects.OBJECT_STORE_MODELS, sha)) == data

    asyncio.run(_tamper(nats_server, sha))
    again = client.upload_model("rf", model_file)  # asks, finds a mismatch, uploads, repaired
    assert again.version == first.version
    assert asyncio.run(_entry(nats_server, subjects.OBJECT_STORE_MODELS, sha)) == data
    publish = client.build_pipeline("repaired").add_model_step(again).publish(progress=False)
    assert publish.status == "Published"


def test_an_upload_whose_bytes_do_not_match_is_refused_and_removed(
    client: Client, nats_server: NatsServer
) -> None:
    real = b"the real model bytes"
    sha = hashlib.sha256(real).hexdigest()
    name = objects.upload_name(sha)

    async def scenario() -> None:
        nc = await bus.connect(nats_server.settings(), name="raw-sdk")
        try:
            js = nc.jetstream()
            await objects.write(
                js, subjects.OBJECT_STORE_UPLOADS, name, objects.new_nuid(), _chunks(b"X" * 20)
            )
            subject = subjects.request("admin", subjects.VERB_MODEL_UPLOAD)
            take = ModelUploadRequest(sha256=sha, size=len(real), upload=name)
            with pytest.raises(InvalidModelError, match="do not match sha256"):
                await rpc.call(nc, subject, take, ModelUploadReply)
            ask = ModelUploadRequest(sha256=sha, size=len(real))
            assert not (await rpc.call(nc, subject, ask, ModelUploadReply)).present
            # an upload of other bytes' name, or not an upload name at all
            for bad in (objects.upload_name("b" * 64), "../../etc", sha):
                wrong = ModelUploadRequest(sha256=sha, size=len(real), upload=bad)
                with pytest.raises(Exception, match="is not an upload of"):
                    await rpc.call(nc, subject, wrong, ModelUploadReply)
        finally:
            await nc.close()

    asyncio.run(scenario())
    assert asyncio.run(_entry(nats_server, subjects.OBJECT_STORE_MODELS, sha)) is None
    assert asyncio.run(_entry(nats_server, subjects.OBJECT_STORE_UPLOADS, name)) is None


def test_the_same_bytes_are_sent_once(
    client: Client, model_file: Path, nats_server: NatsServer
) -> None:
    """A second upload of identical bytes asks and sends nothing: the upload area stays
    empty (the first upload was taken and removed)."""
    client.upload_model("once", model_file)
    client.upload_model("once-again", model_file)

    async def uploads_stream_messages() -> int:
        nc = await bus.connect(nats_server.settings("publish"), name="count")
        try:
            info = await nc.jetstream().stream_info(
                objects.stream_of(subjects.OBJECT_STORE_UPLOADS)
            )
            return info.state.messages
        finally:
            await nc.close()

    assert asyncio.run(uploads_stream_messages()) == 0
