"""Damage an edge's local log file on disk the way a failing card does, where SQLite is sure
to notice: the header of a B-tree leaf of its ``blocks`` table (a leaf holds row bodies'
first bytes; bytes inside a body could read back as garbage instead of as corrupt)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = 0
    for i in range(9):
        byte = data[at + i]
        if i == 8:
            return (value << 8) | byte, at + 9
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    raise AssertionError("unreachable")


def _last_rowid(page: bytes, header_at: int) -> int:
    """The rowid (a block's last seq) of a table leaf's last cell."""
    cells = int.from_bytes(page[header_at + 3 : header_at + 5], "big")
    pointer = header_at + 8 + 2 * (cells - 1)
    cell = int.from_bytes(page[pointer : pointer + 2], "big")
    _, at = _varint(page, cell)  # the payload's size
    rowid, _ = _varint(page, at)
    return rowid


def damage_leaf(path: Path, above_seq: int) -> int:
    """Overwrite the header of the middle one of the ``blocks`` leaves that hold seqs above
    ``above_seq``. The file must be closed (its WAL checkpointed into it). Returns the
    page number."""
    wal = Path(f"{path}-wal")
    assert not wal.exists() or wal.stat().st_size == 0, "close the log first: its WAL holds pages"
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        size = int(db.execute("PRAGMA page_size").fetchone()[0])
        leaves = [
            int(r[0])
            for r in db.execute(
                "SELECT pageno FROM dbstat WHERE name = 'blocks' AND pagetype = 'leaf'"
                " ORDER BY pageno"
            )
        ]
    finally:
        db.close()
    with path.open("r+b") as f:
        held = []
        for pageno in leaves:
            f.seek((pageno - 1) * size)
            page = f.read(size)
            if _last_rowid(page, 100 if pageno == 1 else 0) > above_seq:
                held.append(pageno)
        assert held, f"no leaf of {path} holds seqs above {above_seq}"
        chosen = held[len(held) // 2]
        f.seek((chosen - 1) * size)
        f.write(b"\xff" * 8)  # no valid page type: SQLite reports the file malformed
    return chosen
