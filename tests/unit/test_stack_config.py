"""Config generation for the embedded stack: pure functions, no servers."""

from __future__ import annotations

import bcrypt
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.services.stack import config
from edgepub.shared import xkeys


def test_generated_credentials_cover_every_user_and_differ() -> None:
    creds = config.generate_credentials()
    assert set(creds.nats_users) == {*config.SERVICE_USERS, "admin"}
    secrets = [*creds.nats_users.values(), creds.registry_password, creds.registry_http_secret]
    assert len(set(secrets)) == len(secrets)
    assert all(len(s) >= 40 for s in secrets)
    assert creds.registry_username == "edgepub"
    assert config.generate_credentials().registry_password != creds.registry_password


def test_sdk_user_may_publish_only_its_own_requests() -> None:
    perms = config.sdk_permissions("alice")
    assert "edgepub.req.alice.>" in perms.publish_allow
    assert not any(p.startswith("edgepub.req.*") or p == ">" for p in perms.publish_allow)
    assert perms.subscribe_allow == ("_INBOX.alice.>",)
    with pytest.raises(ValueError):
        config.sdk_permissions("a.b")


def _wide(pattern: str) -> bool:
    """A pattern that reaches past one user's own things: the whole bus, every JetStream
    API call, any KV bucket or object store, or everyone's inboxes."""
    return pattern in {">", "$JS.API.>", "$KV.>", "$O.>", "_INBOX.>", "$JS.>"} or (
        pattern.startswith("$JS.API.STREAM.DELETE") or pattern.startswith("$JS.API.>")
    )


def test_no_user_gets_the_whole_bus_or_deletes_streams() -> None:
    creds = config.generate_credentials(sdk_user="alice")
    for user, spec in config.nats_users(creds).items():
        p = spec.permissions
        wide = [x for x in (*p.publish_allow, *p.subscribe_allow) if _wide(x)]
        assert wide == [], f"{user} may {wide}"
        assert p.subscribe_allow[-1] == f"_INBOX.{user}.>" or user == "alice"
        purges = [x for x in p.publish_allow if ".PURGE." in x]
        assert all(x.startswith("$JS.API.STREAM.PURGE.OBJ_edgepub_model_") for x in purges), user


def test_sdk_user_cannot_write_verified_models_or_kv() -> None:
    perms = config.sdk_permissions("alice")
    assert "$O.edgepub_model_uploads.>" in perms.publish_allow
    assert not any(x.startswith(("$O.edgepub_model_files", "$KV.")) for x in perms.publish_allow)
    changes = (".STREAM.CREATE", ".STREAM.UPDATE", ".STREAM.DELETE", ".STREAM.PURGE")
    assert not any(c in x for x in perms.publish_allow for c in changes)
    reads = [x for x in perms.publish_allow if ".STREAM." in x]
    assert reads and all(x.endswith(".EDGEPUB_LOGS") for x in reads)  # pipeline.logs()


def test_each_service_answers_only_its_own_verbs() -> None:
    users = config.nats_users(config.generate_credentials())
    publish = users["publish"].permissions
    assert publish.subscribe_allow[0] == "edgepub.req.*.publish.>"
    assert publish.allow_responses
    push = users["registry-push"].permissions
    assert not any(x.startswith("edgepub.req") for x in push.subscribe_allow)
    assert "edgepub.work.publish.pushed" in push.publish_allow
    assert "edgepub.work.publish.requested" not in push.publish_allow
    assert "edgepub.work.publish.pushed" not in publish.publish_allow
    assert users["publish"].password != users["registry-push"].password


def test_nats_config_has_listen_jetstream_and_every_user() -> None:
    creds = config.generate_credentials()
    text = config.nats_config(
        host="127.0.0.1", port=4333, store_dir="/data/js", users=config.nats_users(creds)
    )
    assert 'listen: "127.0.0.1:4333"' in text
    assert 'store_dir: "/data/js"' in text
    assert f"max_payload: {config.MAX_PAYLOAD}" in text
    assert "http:" not in text
    for user, password in creds.nats_users.items():
        assert f'user: "{user}", password: "{password}"' in text
    assert "no_auth_user" not in text


def test_nats_config_optional_monitoring_port() -> None:
    users = {"a": config.UserSpec(password="pw")}
    text = config.nats_config(host="127.0.0.1", port=1, store_dir="/s", users=users, http_port=8222)
    assert 'http: "127.0.0.1:8222"' in text


def test_a_cluster_node_routes_to_the_others_with_a_password_and_advertises_none() -> None:
    creds = config.generate_credentials()
    spec = config.ClusterSpec(
        name="edgepub",
        host="127.0.0.1",
        port=6222,
        peers=(("127.0.0.1", 6223), ("127.0.0.1", 6224)),
        password=creds.route_password,
    )
    text = config.nats_config(
        host="127.0.0.1",
        port=4222,
        store_dir="/s",
        users=config.nats_users(creds),
        server_name="edgepub-1",
        cluster=spec,
    )
    assert 'server_name: "edgepub-1"' in text and 'listen: "127.0.0.1:6222"' in text
    pw = creds.route_password
    assert f'"nats-route://route:{pw}@127.0.0.1:6223"' in text
    assert f'"nats-route://route:{pw}@127.0.0.1:6224"' in text
    assert '127.0.0.1:6222"' not in text.split("routes:")[1].split("\n")[0]  # not itself
    assert f'password: "{pw}"' in text and "no_advertise: true" in text
    assert "cluster {" not in config.nats_config(
        host="127.0.0.1", port=4222, store_dir="/s", users=config.nats_users(creds)
    )


def test_credentials_from_before_clusters_gain_a_route_password() -> None:
    old = msgspec.structs.replace(config.generate_credentials(), route_password="")
    assert not old.complete
    new = config.completed(old)
    assert new.complete and new.route_password and new.nats_users == old.nats_users


def test_credentials_from_before_the_callout_xkey_gain_one() -> None:
    old = msgspec.structs.replace(config.generate_credentials(), auth_xkey_seed="")
    assert not old.complete
    new = config.completed(old)
    assert new.complete and new.auth_xkey_seed.startswith("SX")
    assert msgspec.structs.replace(new, auth_xkey_seed="") == old  # nothing else changed
    assert xkeys.public_key(new.auth_xkey_seed).startswith("X")


def test_the_auth_callout_is_sealed_to_the_token_services_xkey() -> None:
    creds = config.generate_credentials()
    text = config.nats_config(
        host="127.0.0.1",
        port=4333,
        store_dir="/s",
        users=config.nats_users(creds),
        callout=config.callout_spec(creds),
    )
    block = text.split("  auth_callout {")[1].split("\n  }")[0]
    assert f'    xkey: "{xkeys.public_key(creds.auth_xkey_seed)}"' in block.splitlines()
    assert creds.auth_xkey_seed not in text  # the server holds only the public key


def test_nats_config_refuses_no_users() -> None:
    with pytest.raises(ValueError, match="never open"):
        config.nats_config(host="127.0.0.1", port=1, store_dir="/s", users={})


def test_deny_and_allow_responses_are_rendered() -> None:
    perms = config.Permissions(publish_deny=("x.>",), allow_responses=True)
    text = config.nats_config(
        host="h",
        port=1,
        store_dir="/s",
        users={"u": config.UserSpec(password="p", permissions=perms)},
    )
    assert 'deny: ["x.>"]' in text and "allow_responses: true" in text


def _unquote(quoted: str) -> str:
    """nats-server's reading of a double-quoted string (only the escapes quote() emits)."""
    assert quoted.startswith('"') and quoted.endswith('"')
    out, chars = [], iter(quoted[1:-1])
    for c in chars:
        if c == '"':
            raise AssertionError("unescaped quote ends the string early")
        out.append(next(chars) if c == "\\" else c)
    return "".join(out)


@given(st.text(st.characters(min_codepoint=0x20, max_codepoint=0x2FF, exclude_characters="\x7f")))
def test_quote_round_trips(value: str) -> None:
    assert _unquote(config.quote(value)) == value


def test_quote_refuses_control_characters() -> None:
    with pytest.raises(ValueError):
        config.quote("a\nb")


def test_registry_config_fields() -> None:
    text = config.registry_config(
        host="127.0.0.1",
        port=5111,
        root_dir="/data/registry",
        htpasswd_path="/data/htpasswd",
        http_secret="s3cr3t",
    )
    assert text.startswith("# Generated")
    assert "version: 0.1" in text
    assert 'rootdirectory: "/data/registry"' in text
    assert 'addr: "127.0.0.1:5111"' in text
    assert 'secret: "s3cr3t"' in text
    assert 'path: "/data/htpasswd"' in text
    assert "realm: edgepub" in text
    assert "delete:\n    enabled: true" in text
    assert "level: warn" in text


def test_htpasswd_line_verifies_with_bcrypt_at_cost_5() -> None:
    line = config.htpasswd_line("edgepub", "pw-123")
    user, hashed = line.rstrip("\n").split(":", 1)
    assert user == "edgepub" and line.endswith("\n")
    assert bcrypt.checkpw(b"pw-123", hashed.encode())
    assert not bcrypt.checkpw(b"pw-124", hashed.encode())
    assert hashed.split("$")[2] == "05"


def test_htpasswd_refuses_a_colon_in_the_user() -> None:
    with pytest.raises(ValueError):
        config.htpasswd_line("a:b", "pw")


def test_the_publish_service_creates_every_bucket_and_writes_only_its_own() -> None:
    from edgepub.shared import bus, subjects

    created = {c.bucket for c in bus.bucket_configs()}
    assert created == {*subjects.KV_PUBLISH_SERVICE, subjects.KV_EDGES}
    users = config.nats_users(config.generate_credentials())
    allowed = users["publish"].permissions
    for bucket in subjects.KV_PUBLISH_SERVICE:
        assert f"$KV.{bucket}.>" in allowed.publish_allow
    assert f"$KV.{subjects.KV_EDGES}.>" not in allowed.publish_allow
    assert f"$KV.{subjects.KV_EDGES}.>" in users["token"].permissions.publish_allow


def test_the_log_collector_may_append_logs_and_nothing_else() -> None:
    from edgepub.shared import subjects

    perms = config.nats_users(config.generate_credentials())["log-collector"].permissions
    allowed = set(perms.publish_allow)
    assert {"edgepub.logs.>", "edgepub.wm.>"} <= allowed
    assert "$JS.API.DIRECT.GET.EDGEPUB_LOGS.>" in allowed
    # pages are read ahead by sequence (the payload form), never by a subject in the API's
    assert "$JS.API.DIRECT.GET.EDGEPUB_EDGE_PAGES" in allowed
    assert "$JS.API.DIRECT.GET.EDGEPUB_EDGE_PAGES.>" not in allowed
    assert "$JS.API.CONSUMER.MSG.NEXT.EDGEPUB_EDGE_PAGES.log-collector" in allowed
    assert "$JS.ACK.EDGEPUB_EDGE_PAGES.log-collector.>" in allowed
    assert not any(x.startswith(("edgepub.edge", "$KV.", "$O.")) for x in allowed)
    changes = (".STREAM.CREATE", ".STREAM.UPDATE", ".STREAM.DELETE", ".STREAM.PURGE")
    assert not any(c in x for x in allowed for c in changes)
    streams = {x.split(".")[-1] for x in allowed if x.startswith("$JS.API.STREAM.")}
    assert streams == {subjects.PAGES_STREAM, subjects.LOGS_STREAM}
    assert perms.subscribe_allow == ("_INBOX.log-collector.>",)
    assert not perms.allow_responses


def test_log_limits_come_from_the_environment_with_the_defaults() -> None:
    from edgepub.shared import bus
    from edgepub.shared.errors import ConfigError
    from edgepub.shared.settings import Env

    assert bus.LogLimits.from_env(Env({})) == bus.LogLimits()
    limits = bus.LogLimits.from_env(
        Env({"EDGEPUB_LOGS_MAX_AGE_S": "60", "EDGEPUB_PAGES_DUPLICATE_WINDOW_S": "2"})
    )
    pages, logs = bus.log_stream_configs(1, limits)
    assert logs.max_age == 60 and logs.max_bytes == bus.LOGS_MAX_BYTES
    assert pages.duplicate_window == 2 and pages.max_age == bus.PAGES_MAX_AGE_S
    with pytest.raises(ConfigError, match="EDGEPUB_LOGS_MAX_BYTES"):
        bus.LogLimits.from_env(Env({"EDGEPUB_LOGS_MAX_BYTES": "0"}))


def test_edges_get_an_account_of_their_own_that_imports_only_the_edge_subjects() -> None:
    creds = config.generate_credentials()
    text = config.nats_config(
        host="127.0.0.1",
        port=4333,
        store_dir="/s",
        users=config.nats_users(creds),
        callout=config.callout_spec(creds),
    )
    app, edges = text.split("  EDGES {")
    edges_block = edges.split("\n  }")[0]
    # the edge account: no users of its own, no JetStream, two imports and nothing else
    assert "jetstream" not in edges_block and "users" not in edges_block
    assert '{ service: { account: EDGEPUB, subject: "edgepub.edge.>" } }' in edges_block
    assert '{ stream: { account: EDGEPUB, subject: "edgepub.control.>" } }' in edges_block
    assert edges_block.count("account: EDGEPUB") == 2
    assert '{ service: "edgepub.edge.>", response_type: singleton }' in app
    assert '{ stream: "edgepub.control.>" }' in app
    assert "account: EDGEPUB\n" in text  # the callout's own users stay in the app account
    without = config.nats_config(
        host="127.0.0.1", port=4333, store_dir="/s", users=config.nats_users(creds)
    )
    assert "EDGES" not in without and "exports" not in without
