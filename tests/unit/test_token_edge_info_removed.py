"""What list_edges shows of a removed edge (a tombstone) and of a name added again, pure:
a removed edge is never online, carries its removal time, and a report from an earlier
edge of the same name is not the new edge's."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from edgepub.services.token.decisions import edge_info
from edgepub.services.token.settings import TokenSettings
from edgepub.shared import keys
from edgepub.shared.edge_messages import Assignment, EdgeRecord, EdgeSeen

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
CFG = TokenSettings(
    issuer_seed=keys.new_seed("account"),
    system_seed=keys.new_seed("user"),
    opscenter_host="ws://127.0.0.1:1/edge",
    trust_domain="edgepub.test",
    offline_after_s=30.0,
)
ASSIGNMENT = Assignment(
    publish_id=7,
    pipeline_name="houses",
    pipeline_version_id=3,
    pipeline_version_name="v3",
    pipeline_url="registry:5000/edgepub/pipelines/houses:v3",
)
PENDING = EdgeRecord(
    id="6f1c7d2e-8a9b-4c0d-9e1f-2a3b4c5d6e7f",
    name="shop-1",
    assignment=ASSIGNMENT,
    join_token_sha256="0" * 64,
    join_token_expires_at=NOW + timedelta(hours=1),
    created_at=NOW - timedelta(hours=1),
)
JOINED = msgspec.structs.replace(
    PENDING,
    state="joined",
    public_key=keys.public_key(keys.new_seed("user")),
    joined_at=NOW - timedelta(minutes=50),
    credential_expires_at=NOW + timedelta(days=7),
)
REMOVED_AT = NOW - timedelta(seconds=2)
REVOKED = msgspec.structs.replace(JOINED, state="revoked", public_key=None, revoked_at=REMOVED_AT)


def seen_at(at: datetime) -> EdgeSeen:
    return EdgeSeen(at=at, status="serving", running_publish_id=7, running_version="v3")


def test_a_removed_edge_seen_a_moment_ago_is_offline_with_its_removal_time() -> None:
    seen = seen_at(NOW - timedelta(seconds=3))
    assert edge_info(JOINED, seen, NOW, CFG, "").connection == "online"  # before removal
    info = edge_info(REVOKED, seen, NOW, CFG, "")
    assert (info.credential_state, info.connection) == ("revoked", "offline")
    assert info.revoked_at == REMOVED_AT
    assert info.last_seen == seen.at and info.running_version == "v3"  # its last report stays
    assert info.credential_expires_at == REMOVED_AT  # it stopped working when revoked


def test_a_removed_edge_never_seen_is_never_and_had_no_credential() -> None:
    removed = msgspec.structs.replace(PENDING, state="revoked", revoked_at=REMOVED_AT)
    info = edge_info(removed, None, NOW, CFG, "")
    assert (info.credential_state, info.connection, info.last_seen) == ("revoked", "never", None)
    assert (info.revoked_at, info.credential_expires_at) == (REMOVED_AT, None)


def test_a_live_edge_has_no_removal_time() -> None:
    assert edge_info(JOINED, None, NOW, CFG, "").revoked_at is None
    assert edge_info(PENDING, None, NOW, CFG, "").revoked_at is None


@settings(max_examples=100)
@given(ago_s=st.floats(min_value=-1.0, max_value=3600.0, allow_nan=False))
def test_a_removed_edge_is_never_online(ago_s: float) -> None:
    seen = seen_at(NOW - timedelta(seconds=ago_s))
    info = edge_info(REVOKED, seen, NOW, CFG, "")
    assert info.connection == ("never" if seen.at < REVOKED.created_at else "offline")


def test_a_name_added_again_does_not_show_the_earlier_edges_report() -> None:
    """remove_edge then add_edge of the same name: ``seen.<name>`` still holds the old
    agent's last heartbeat, from before the new record was created."""
    old_report = seen_at(NOW - timedelta(seconds=5))
    again = msgspec.structs.replace(
        PENDING, id="0d3b9c1a-2f4e-4a6b-8c7d-9e0f1a2b3c4d", created_at=NOW - timedelta(seconds=1)
    )
    info = edge_info(again, old_report, NOW, CFG, "")
    assert (info.connection, info.last_seen, info.running_version) == ("never", None, None)
    fresh = seen_at(NOW)
    assert edge_info(again, fresh, NOW, CFG, "").last_seen == fresh.at
