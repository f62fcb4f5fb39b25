"""JetStream Object Store entries written and read chunk by chunk, in the store's own format.

Why not ``ObjectStore.put``/``get``: ``put`` first reads the entry's info and purges old
chunks (JetStream API calls an SDK user may not make: see
``services/stack/permissions.py``), and ``get`` holds the whole object in memory. Here a
writer only publishes (chunks, then the meta message, as the store lays them out) and a
reader streams the chunks with an ordered consumer, so any ``ObjectStore`` client reads
what we write and a model of any size passes through bounded memory.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from datetime import UTC, datetime

import msgspec
from nats.js import JetStreamContext
from nats.js.api import Header, ObjectInfo, ObjectMetaOptions

CHUNK = 128 * 1024  # the store's default chunk size
CHUNK_WAIT_S = 10.0  # longest silence from the store mid-object


_UPLOAD = re.compile(r"([0-9a-f]{64})\.[0-9a-f]{32}")


def upload_name(sha256: str) -> str:
    """A fresh name in the upload area for one upload of these bytes (never reused, so an
    upload never has to replace, i.e. purge, an entry)."""
    return f"{sha256}.{uuid.uuid4().hex}"


def upload_of(name: str) -> str | None:
    """The sha256 an upload name is for, or None if it is not an upload name."""
    m = _UPLOAD.fullmatch(name)
    return m.group(1) if m else None


def new_nuid() -> str:
    return uuid.uuid4().hex


def stream_of(bucket: str) -> str:
    return f"OBJ_{bucket}"


def chunk_subject(bucket: str, nuid: str) -> str:
    return f"$O.{bucket}.C.{nuid}"


def meta_subject(bucket: str, name: str) -> str:
    return f"$O.{bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"


def digest_hex(info: ObjectInfo) -> str:
    """The entry's SHA-256 as hex ('' when it has none)."""
    raw = (info.digest or "").split("=", 1)[-1]
    if not raw:
        return ""
    return base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).hex()


class Written(msgspec.Struct, frozen=True, kw_only=True):
    nuid: str
    size: int
    chunks: int
    sha256: str  # hex


async def write_chunks(
    js: JetStreamContext, bucket: str, nuid: str, chunks: AsyncIterable[bytes]
) -> Written:
    """Publish ``chunks`` on the chunk subject ``nuid``: not an entry until ``write_meta``."""
    h = hashlib.sha256()
    size = count = 0
    subject = chunk_subject(bucket, nuid)
    async for chunk in chunks:
        if not chunk:
            continue
        h.update(chunk)
        await js.publish(subject, chunk, stream=stream_of(bucket))
        size += len(chunk)
        count += 1
    return Written(nuid=nuid, size=size, chunks=count, sha256=h.hexdigest())


async def write_meta(js: JetStreamContext, bucket: str, name: str, written: Written) -> ObjectInfo:
    """Make the written chunks the entry ``name`` (replacing what it was)."""
    info = ObjectInfo(
        name=name,
        bucket=bucket,
        nuid=written.nuid,
        size=written.size,
        chunks=written.chunks,
        mtime=datetime.now(UTC).isoformat(),
        digest="SHA-256=" + base64.urlsafe_b64encode(bytes.fromhex(written.sha256)).decode(),
        options=ObjectMetaOptions(max_chunk_size=CHUNK),
    )
    await js.publish(
        meta_subject(bucket, name),
        json.dumps(info.as_dict()).encode(),
        headers={Header.ROLLUP: "sub"},
        stream=stream_of(bucket),
    )
    return info


async def write(
    js: JetStreamContext, bucket: str, name: str, nuid: str, chunks: AsyncIterable[bytes]
) -> ObjectInfo:
    """Chunks, then the meta: the entry becomes visible only with the meta message, so a
    writer that dies midway leaves orphan chunks (the upload area's max age removes them),
    never a torn entry."""
    return await write_meta(js, bucket, name, await write_chunks(js, bucket, nuid, chunks))


async def read(js: JetStreamContext, info: ObjectInfo) -> AsyncIterator[bytes]:
    """The entry's chunks in order, straight from its chunk subject (bounded memory)."""
    if not info.size:
        return
    sub = await js.subscribe(
        chunk_subject(info.bucket, info.nuid), stream=stream_of(info.bucket), ordered_consumer=True
    )
    try:
        received = 0
        while received < info.size:
            msg = await sub.next_msg(timeout=CHUNK_WAIT_S)
            received += len(msg.data)
            yield msg.data
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()


async def file_chunks(path: str, size: int = CHUNK) -> AsyncIterator[bytes]:
    """A local file as chunks (small synchronous reads: a 128 KiB read is microseconds)."""
    with open(path, "rb") as f:  # noqa: ASYNC230 - see the docstring
        while chunk := f.read(size):
            yield chunk


async def purge_chunks(js: JetStreamContext, bucket: str, nuid: str) -> None:
    await js.purge_stream(stream_of(bucket), subject=chunk_subject(bucket, nuid))


async def remove(js: JetStreamContext, info: ObjectInfo) -> None:
    """Purge an entry's chunks and meta entirely (needs the stream's purge permission)."""
    await purge_chunks(js, info.bucket, info.nuid)
    await js.purge_stream(stream_of(info.bucket), subject=meta_subject(info.bucket, info.name))
