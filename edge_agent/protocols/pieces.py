"""A JSON list decoded and encoded a piece at a time, so no single call holds the GIL long.

msgspec decodes and encodes in C without releasing the GIL: a 64 MiB list of records is
one call of about a second, during which no other thread (the event loop's included) runs
Python. ``split`` cuts a JSON list into pieces of about ``size`` bytes at what looks like
a boundary between two objects (``},`` then ``{``), and each piece is decoded as a list of
its own. A cut in the wrong place (inside a string, or inside a nested object) always
leaves the piece before it unterminated, so its decode fails with a ``DecodeError``; the
piece is then grown to the next candidate (doubling, so a body costs at most about twice
its decode) and decoded again. A piece that decodes is exactly the elements the whole list
holds at that place, since it starts where the piece before it ended, at an element.

Errors are reported as decoding the whole body would: the element index and byte offset
in msgspec's message are shifted from the piece's to the body's.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import numpy as np

PIECE_BYTES = 256 << 10  # ~4 ms of typed decoding on a slow core
_INDEX = re.compile(r"\$\[(\d+)\]")
_BYTE = re.compile(r"\(byte (\d+)\)")
_WHITESPACE = b" \t\r\n"


class PieceError(Exception):
    """A piece's decode failed; ``error`` is msgspec's, with body positions."""

    def __init__(self, error: msgspec.ValidationError | msgspec.DecodeError) -> None:
        super().__init__(str(error))
        self.error = error


def _shift(exc: Exception, first: int, start: int) -> Exception:
    """``exc`` as the whole body's decode would say it: element ``first`` of the body is the
    piece's element 0, and the piece's byte 1 is the body's byte ``start``."""
    text = _INDEX.sub(lambda m: f"$[{int(m[1]) + first}]", str(exc), count=1)
    text = _BYTE.sub(lambda m: f"(byte {max(0, int(m[1]) - 1 + start)})", text)
    return type(exc)(text)


def _skip(body: bytes, at: int, step: int) -> int:
    """The first position from ``at`` (going by ``step``) that is not whitespace (no copy
    of the body, which ``strip`` would make)."""
    while 0 <= at < len(body) and body[at] in _WHITESPACE:
        at += step
    return at


def _opening(body: bytes) -> int | None:
    """Where the first element starts (after ``[``), or None if ``body`` is not a list."""
    at = _skip(body, 0, 1)
    return at + 1 if body[at : at + 1] == b"[" else None


def _cut(body: bytes, start: int, size: int, end: int) -> int:
    """The first candidate boundary at least ``size`` bytes past ``start`` (the position of
    the ``,`` after a ``}``), or ``end`` when there is none."""
    at = body.find(b"},", start + size, end)
    while at != -1:
        after = at + 2
        while after < end and body[after] in _WHITESPACE:
            after += 1
        if after < end and body[after] == 0x7B:  # {
            return at + 1
        at = body.find(b"},", after, end)
    return end


def decode_list(
    body: bytes,
    decode: Callable[[bytes], list[Any]],
    each: Callable[[list[Any], int], None],
    size: int = PIECE_BYTES,
) -> int:
    """Decode the JSON list ``body`` piece by piece with ``decode`` (a list decoder), handing
    each piece's elements to ``each(elements, index of the first)``; returns the count.

    A body that is not a list, or smaller than ``size``, is decoded in one call. Raises
    ``PieceError`` carrying msgspec's error, its positions those of the whole body.
    """
    start = _opening(body)
    if start is None or len(body) <= size:
        try:
            elements = decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise PieceError(exc) from None
        each(elements, 0)
        return len(elements)
    end = _skip(body, len(body) - 1, -1)  # the closing ``]`` (if the body is well formed)
    count = 0
    while True:
        grow = size
        while True:
            cut = _cut(body, start, grow, end)
            last = cut >= end
            piece = b"[" + body[start:] if last else b"[" + body[start:cut] + b"]"
            try:
                elements = decode(piece)
                break
            except msgspec.DecodeError as exc:
                if last:
                    raise PieceError(_shift(exc, count, start)) from None  # type: ignore[arg-type]
                grow *= 2  # a cut in the wrong place: take more
            except msgspec.ValidationError as exc:
                raise PieceError(_shift(exc, count, start)) from None  # type: ignore[arg-type]
        each(elements, count)
        count += len(elements)
        if last:
            return count
        start = cut + 1  # past the ``,``


def decode_numbers(
    body: bytes,
    start: int,
    end: int,
    decode: Callable[[bytes], list[Any]],
    dtype: Any,
    size: int = PIECE_BYTES,
) -> np.ndarray[Any, Any]:
    """The flat JSON list of numbers ``body[start:end]`` (its ``[`` to its ``]``) as one
    array, a piece of about ``size`` bytes per call: every comma in such a list is between
    two numbers (one that holds anything else fails to decode: msgspec's errors, or
    ``ValueError`` from numpy)."""
    parts: list[np.ndarray[Any, Any]] = []
    at, close = start + 1, end - 1
    while at < close:
        cut = body.find(b",", at + size, close)
        stop = close if cut == -1 else cut
        parts.append(np.asarray(decode(b"[" + body[at:stop] + b"]"), dtype=dtype))
        at = stop + 1
    if not parts:
        return np.asarray(decode(body[start:end]), dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def encode_list(items: Iterator[list[Any]], encode: Callable[[Any], bytes]) -> list[bytes]:
    """A JSON list of every item of every chunk, as pieces whose concatenation is the list
    (each chunk encoded in one call, so no call is longer than one chunk's)."""
    pieces: list[bytes] = [b"["]
    for chunk in items:
        if not chunk:
            continue
        if len(pieces) > 1:
            pieces.append(b",")
        pieces.append(encode(chunk)[1:-1])
    pieces.append(b"]")
    return pieces
