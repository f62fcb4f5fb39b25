"""The edge's pattern checks are whole-string: a trailing newline never passes (a "$"
anchor would let "512Mi\n" through)."""

from __future__ import annotations

import pytest

from edgepub.edge_agent.sizes import SizeError, parse_size


@pytest.mark.parametrize("text", ["512Mi\n", "\n512Mi", "1Gi\r\n"])
def test_a_size_with_a_line_break_is_refused(text: str) -> None:
    with pytest.raises(SizeError):
        parse_size(text)
    assert parse_size(text.strip()) > 0
