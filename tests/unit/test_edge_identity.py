"""The edge's identity on disk and the start-up decision: every branch of ``plan_connect``,
the file's 0600 mode and atomic write, a corrupt file as one line, the seed never shown."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from edgepub.edge_agent.identity import (
    IDENTITY_FILE,
    SERVE_ONLY,
    ConnectPlan,
    Identity,
    fresh_seed,
    joined,
    load_identity,
    plan_connect,
    renewed,
    save_identity,
)
from edgepub.shared import keys, logs
from edgepub.shared.bundle import EdgeBundle, join_token_sha256
from edgepub.shared.errors import ConfigError

TOKEN = "26fc1cb8-2512-4be7-94de-6464b50d638b"
NEW_TOKEN = "9d1c6f0e-6b7a-4c52-9f43-6a1d1b0c2e7f"
NOW = datetime(2024, 3, 26, 19, 7, 43, tzinfo=UTC)
SEED = keys.new_seed("user")
OTHER_SEED = keys.new_seed("user")


def bundle(
    token: str | None = TOKEN, name: str = "shop-12", host: str = "ops.example.com/edge"
) -> EdgeBundle:
    return EdgeBundle(
        edge_name=name,
        join_token=token,
        opscenter_host=host,
        pipeline_url="r.example.com/edgepub/pipelines/p:1",
        workspace_id=7,
    )


def identity(
    *,
    name: str = "shop-12",
    seed: str = SEED,
    token: str = TOKEN,
    is_joined: bool = True,
) -> Identity:
    pending = Identity(
        edge_name=name,
        public_key=keys.public_key(seed),
        seed=seed,
        pending_token_sha256=join_token_sha256(token),
        server_url="wss://ops.example.com/edge",
    )
    if not is_joined:
        return pending
    return joined(pending, at=NOW, credential_expires_at=NOW + timedelta(days=7))


def no_new_key() -> str:
    raise AssertionError("this branch must not make a key pair")


# --- plan_connect ---------------------------------------------------------------------------


def test_no_bundle_and_no_identity_serves_without_ops() -> None:
    assert plan_connect(None, None, no_new_key) == SERVE_ONLY
    assert SERVE_ONLY.action == "serve_only" and SERVE_ONLY.seed is None


def test_no_bundle_reuses_the_kept_key() -> None:
    kept = identity()
    plan = plan_connect(kept, None, no_new_key)
    assert (plan.action, plan.seed, plan.join_token, plan.first_join) == (
        "reuse",
        SEED,
        None,
        False,
    )
    assert plan.edge_name == "shop-12" and plan.server_url == kept.server_url
    assert plan.identity == kept


def test_the_same_bundle_after_a_restart_reuses_the_key() -> None:
    plan = plan_connect(identity(), bundle(TOKEN), no_new_key)
    assert plan.action == "reuse" and plan.seed == SEED and plan.join_token is None
    assert not plan.first_join


def test_a_replace_bundle_reuses_the_key_and_its_host() -> None:
    plan = plan_connect(identity(), bundle(None, host="nats://10.0.0.5:4222"), no_new_key)
    assert plan.action == "reuse" and plan.seed == SEED and plan.join_token is None
    assert plan.server_url == "nats://10.0.0.5:4222"
    assert plan.identity is not None and plan.identity.server_url == "nats://10.0.0.5:4222"
    assert plan.identity.joined and plan.identity.seed == SEED


def test_first_join_makes_a_fresh_key_pair_and_presents_the_token() -> None:
    plan = plan_connect(None, bundle(TOKEN), lambda: OTHER_SEED)
    assert (plan.action, plan.join_token, plan.first_join) == ("join", TOKEN, True)
    assert plan.seed == OTHER_SEED and plan.server_url == "wss://ops.example.com/edge"
    kept = plan.identity
    assert kept is not None and not kept.joined and kept.joined_token_sha256 == ""
    assert kept.public_key == keys.public_key(OTHER_SEED)
    assert kept.pending_token_sha256 == join_token_sha256(TOKEN)
    assert kept.joined_at is None and kept.credential_expires_at is None


def test_a_new_token_for_the_same_edge_joins_again_with_a_fresh_key() -> None:
    """Re-added after its credential expired: a new bundle, a new key, and on it goes."""
    plan = plan_connect(identity(), bundle(NEW_TOKEN), lambda: OTHER_SEED)
    assert plan.action == "join" and plan.join_token == NEW_TOKEN and plan.first_join
    assert plan.seed == OTHER_SEED != SEED
    assert plan.identity is not None and plan.identity.pending_token_sha256 == (
        join_token_sha256(NEW_TOKEN)
    )


def test_a_bundle_for_another_edge_joins_as_that_edge_with_a_fresh_key() -> None:
    plan = plan_connect(identity(), bundle(NEW_TOKEN, name="shop-13"), lambda: OTHER_SEED)
    assert plan.action == "join" and plan.edge_name == "shop-13" and plan.seed == OTHER_SEED
    assert plan.identity is not None and plan.identity.edge_name == "shop-13"


def test_an_unfinished_join_retries_with_the_same_key() -> None:
    kept = identity(is_joined=False)
    plan = plan_connect(kept, bundle(TOKEN), no_new_key)
    assert plan.action == "join" and plan.join_token == TOKEN and plan.first_join
    assert plan.seed == SEED and plan.identity == kept


def test_an_unfinished_join_with_a_new_token_takes_a_fresh_key() -> None:
    plan = plan_connect(identity(is_joined=False), bundle(NEW_TOKEN), lambda: OTHER_SEED)
    assert plan.action == "join" and plan.seed == OTHER_SEED


def test_the_joined_token_for_another_name_is_not_reused() -> None:
    plan = plan_connect(identity(name="shop-13"), bundle(TOKEN), lambda: OTHER_SEED)
    assert plan.action == "join" and plan.seed == OTHER_SEED


def test_a_replace_bundle_without_persist_is_one_line_saying_what_to_do() -> None:
    with pytest.raises(ConfigError) as info:
        plan_connect(None, bundle(None), no_new_key)
    message = info.value.message
    assert "\n" not in message and "'shop-12'" in message, message
    for words in ("already joined", "omitted_for_replace", "/persist", "remove_edge", "add_edge"):
        assert words in message, message


def test_a_replace_bundle_for_another_edge_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        plan_connect(identity(name="shop-13"), bundle(None), no_new_key)
    message = info.value.message
    assert "'shop-12'" in message and "'shop-13'" in message and "\n" not in message
    assert SEED not in message


def test_a_replace_bundle_after_an_unfinished_join_tries_the_kept_key() -> None:
    plan = plan_connect(identity(is_joined=False), bundle(None), no_new_key)
    assert plan.action == "reuse" and plan.seed == SEED and plan.join_token is None


def test_the_default_key_maker_makes_a_user_key_it_redacts() -> None:
    seed = fresh_seed()
    assert seed.startswith("SU") and keys.public_key(seed).startswith("U")
    assert logs.redact(None, "info", {"event": f"x {seed}"})["event"] == f"x {logs.MASK}"


def test_joined_and_renewed() -> None:
    pending = identity(is_joined=False)
    done = joined(pending, at=NOW, credential_expires_at=NOW + timedelta(days=7))
    assert done.joined and done.joined_token_sha256 == join_token_sha256(TOKEN)
    assert done.joined_at == NOW
    later = renewed(done, credential_expires_at=NOW + timedelta(days=9))
    assert later.credential_expires_at == NOW + timedelta(days=9) and later.joined


# --- repr: the seed and the token are secrets -----------------------------------------------


def test_reprs_hide_the_seed_and_the_token() -> None:
    plan = plan_connect(None, bundle(TOKEN), lambda: OTHER_SEED)
    assert plan.identity is not None
    for shown in (repr(plan), str(plan), repr(plan.identity), str(plan.identity)):
        assert OTHER_SEED not in shown and TOKEN not in shown, shown
        assert OTHER_SEED[:12] not in shown
    assert "seed=<hidden>" in repr(plan.identity)
    assert "shop-12" in repr(plan)


@given(st.sampled_from([True, False]))
def test_repr_of_any_identity_hides_the_seed(is_joined: bool) -> None:
    kept = identity(is_joined=is_joined)
    assert SEED not in repr(kept) and kept.public_key in repr(kept)


# --- the file ---------------------------------------------------------------------------------


def test_nothing_kept_before_the_first_join(tmp_path: Path) -> None:
    assert load_identity(tmp_path) is None


@pytest.mark.parametrize("is_joined", [True, False])
def test_save_then_load_is_the_same_identity(tmp_path: Path, is_joined: bool) -> None:
    kept = identity(is_joined=is_joined)
    path = save_identity(tmp_path, kept)
    assert path == tmp_path / IDENTITY_FILE
    assert load_identity(tmp_path) == kept


def test_the_file_is_mode_0600_also_over_a_looser_one(tmp_path: Path) -> None:
    path = tmp_path / IDENTITY_FILE
    path.write_text("{}")
    path.chmod(0o644)
    save_identity(tmp_path, identity())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_copied_file_with_loose_bits_is_tightened_on_load(tmp_path: Path) -> None:
    path = save_identity(tmp_path, identity())
    path.chmod(0o644)
    assert load_identity(tmp_path) == identity()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_leftover_temp_file_is_never_read_as_the_identity(tmp_path: Path) -> None:
    """A crash between writing the temp file and the rename leaves the temp file behind."""
    (tmp_path / f".{IDENTITY_FILE}.12345.tmp").write_text('{"half": ')
    assert load_identity(tmp_path) is None
    save_identity(tmp_path, identity())
    (tmp_path / f".{IDENTITY_FILE}.{os.getpid()}.tmp").write_bytes(
        msgspec.json.encode(identity(seed=OTHER_SEED))
    )
    assert load_identity(tmp_path) == identity()


def test_a_failed_write_leaves_the_old_identity_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_identity(tmp_path, identity())

    def no_rename(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", no_rename)
    with pytest.raises(OSError):
        save_identity(tmp_path, identity(seed=OTHER_SEED, token=NEW_TOKEN))
    monkeypatch.undo()
    assert load_identity(tmp_path) == identity()
    assert [p.name for p in tmp_path.iterdir()] == [IDENTITY_FILE]


def _problem(tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_identity(tmp_path)
    return info.value.message


CORRUPT = [
    ("empty", b""),
    ("half", b'{"edge_name": "shop-12", "se'),
    ("not-json", b"\x00\xff\x00"),
    ("list", b"[]"),
    ("no-seed", b'{"edge_name": "shop-12", "public_key": "U", "server_url": "wss://x"}'),
    (
        "bad-name",
        msgspec.json.encode(msgspec.structs.asdict(identity()) | {"edge_name": "Shop_12"}),
    ),
    ("bad-seed", msgspec.json.encode(msgspec.structs.asdict(identity()) | {"seed": "SUxyz"})),
    (
        "other-key",
        msgspec.json.encode(
            msgspec.structs.asdict(identity()) | {"public_key": keys.public_key(OTHER_SEED)}
        ),
    ),
    (
        "flipped-seed",
        msgspec.json.encode(
            msgspec.structs.asdict(identity())
            | {"seed": SEED[:20] + ("A" if SEED[20] != "A" else "B") + SEED[21:]}
        ),
    ),
]


@pytest.mark.parametrize("data", [c[1] for c in CORRUPT], ids=[c[0] for c in CORRUPT])
def test_a_corrupt_file_is_one_line_naming_the_file_and_the_fix(
    tmp_path: Path, data: bytes
) -> None:
    (tmp_path / IDENTITY_FILE).write_bytes(data)
    message = _problem(tmp_path)
    assert message.startswith(str(tmp_path / IDENTITY_FILE)), message
    assert "\n" not in message and "move it away" in message and "add_edge" in message
    assert SEED not in message and SEED[4:20] not in message


def test_an_unreadable_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / IDENTITY_FILE).mkdir()
    message = _problem(tmp_path)
    assert "cannot be read" in message and "move it away" in message and "\n" not in message


@given(st.binary(max_size=512))
def test_any_bytes_in_the_file_load_or_are_one_line(raw: bytes) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        (Path(directory) / IDENTITY_FILE).write_bytes(raw)
        try:
            load_identity(Path(directory))
        except ConfigError as exc:
            assert "\n" not in exc.message


# --- redaction ----------------------------------------------------------------------------------


def test_a_loaded_seed_is_redacted_from_log_lines(tmp_path: Path) -> None:
    seed = keys.new_seed("user")
    kept = msgspec.structs.replace(identity(), seed=seed, public_key=keys.public_key(seed))
    path = tmp_path / IDENTITY_FILE
    path.write_bytes(msgspec.json.encode(kept))  # a previous process wrote it: not registered
    assert load_identity(tmp_path) == kept
    with structlog.testing.capture_logs(processors=[logs.redact]) as captured:
        structlog.get_logger().info("connecting", detail=f"seed {seed}", extra=[seed])
    assert seed not in repr(captured)


def test_a_saved_seed_is_redacted_from_log_lines(tmp_path: Path) -> None:
    seed = keys.new_seed("user")
    kept = msgspec.structs.replace(identity(), seed=seed, public_key=keys.public_key(seed))
    save_identity(tmp_path, kept)
    assert logs.redact(None, "info", {"event": seed})["event"] == logs.MASK


def test_plans_are_plain_data() -> None:
    assert isinstance(plan_connect(identity(), None, no_new_key), ConnectPlan)
