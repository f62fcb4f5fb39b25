"""The SDK's edges without a bus: ``Edge``/``EdgeList`` and their tables, ``add_edge`` /
``remove_edge`` / ``list_edges`` and the replace move, against an in-memory token and
publish service answering the same typed requests the real ones do."""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub import Client, Edge, EdgeList, PipelinePublish
from edgepub import cli as cli_module
from edgepub.commands import docker_run_command, helm_install_command
from edgepub.display import Commands, publish_fields
from edgepub.edge_display import (
    EDGE_COLUMNS,
    NO_EDGES,
    connection_text,
    credential_text,
    edges_html,
    edges_text,
    last_seen_text,
    running_text,
    seconds_text,
)
from edgepub.pipeline import Pipeline
from edgepub.shared import subjects
from edgepub.shared.edge_messages import (
    EdgeAdded,
    EdgeAddRequest,
    EdgeInfo,
    EdgeListRequest,
    EdgeMoved,
    EdgeMoveRequest,
    EdgeRemoved,
    EdgeRemoveRequest,
)
from edgepub.shared.edge_messages import EdgeList as EdgeListReply
from edgepub.shared.engine_config import EngineConfig
from edgepub.shared.errors import (
    EdgeNameTakenError,
    InvalidNameError,
    InvalidRequestError,
    NotFoundError,
    ServiceUnavailableError,
)
from edgepub.shared.schemas import (
    HelmInfo,
    PipelineRecord,
    PublishCreateRequest,
    PublishGetRequest,
    PublishListRequest,
    PublishRecord,
)
from edgepub.shared.schemas import PublishList as PublishListReply

NOW = datetime(2024, 3, 26, 19, 7, 43, tzinfo=UTC)
VERSION = "446aeed9-2d52-47ae-9e5c-f2a05ef0d4d6"
PIPELINE_URL = f"ghcr.io/example/pipelines/demo:{VERSION}"
ENGINE_URL = "ghcr.io/example/engine:main"
CHART = "ghcr.io/example/charts/demo"
FULL_BUNDLE = "RlVMTC1CVU5ETEU="  # what add_edge returns: shown once
TOKENLESS = "T01JVFRFRC1CVU5ETEU="  # EdgeInfo.bundle: JOIN_TOKEN=omitted_for_replace
PIPELINE_RECORD = PipelineRecord(id=1, name="demo", created_by="sdk", created_at=NOW)
CONFIG = {"engine": {"resources": {"limits": {"cpu": 4.0, "memory": "3Gi"}}}}


def _publish(publish_id: int = 4, **changes: Any) -> PublishRecord:
    record = PublishRecord(
        id=publish_id,
        pipeline_name="demo",
        pipeline_version_id=26,
        pipeline_version_name=VERSION,
        status="Published",
        engine_url=ENGINE_URL,
        pipeline_url=PIPELINE_URL,
        helm=HelmInfo(reference="ghcr.io/example/charts@sha256:26", chart=CHART, version="0.0.1"),
        docker_run_variables={"PIPELINE_URL": PIPELINE_URL},
        engine_config=EngineConfig.from_dict(CONFIG),
        created_at=NOW,
        updated_at=NOW,
    )
    return msgspec.structs.replace(record, **changes)


def _info(name: str = "shop-1", publish_id: int = 4, **changes: Any) -> EdgeInfo:
    info = EdgeInfo(
        id="50fa7f30-7725-4f27-8ddb-6000e8674cd6",
        name=name,
        tags=(),
        workspace_id=1,
        workspace_name="default",
        publish_id=publish_id,
        pipeline_name="demo",
        pipeline_version_id=26,
        pipeline_version_name=VERSION,
        pipeline_url=PIPELINE_URL,
        spiffe_id="edgepub.local/ns/deployments/edge/50fa7f30-7725-4f27-8ddb-6000e8674cd6",
        cpus=4.0,
        memory="3Gi",
        created_at=NOW,
        created_on_version="0.1.0",
        credential_state="pending",
        credential_expires_at=None,
        connection="never",
        offline_after_s=90.0,
        last_seen=None,
        running_publish_id=None,
        running_version=None,
        agent_version=None,
        status=None,
        backlog=None,
        bundle=TOKENLESS,
    )
    return msgspec.structs.replace(info, **changes)


# --- an in-memory bus ------------------------------------------------------------------------


class FakeServices:
    """Answers the verbs the SDK sends, keeping what it was asked."""

    def __init__(self) -> None:
        self.publishes: dict[int, PublishRecord] = {4: _publish()}
        self.edges: dict[str, EdgeInfo] = {}
        self.removed: dict[str, EdgeInfo] = {}  # tombstones, as the token service keeps them
        self.sent: list[tuple[str, msgspec.Struct]] = []
        self.down: set[str] = set()  # verbs nobody answers

    def answer(self, verb: str, request: Any) -> Any:
        self.sent.append((verb, request))
        if verb in self.down:
            raise ServiceUnavailableError(f"no token service answers {verb}; is it running?")
        handler: Callable[[Any], Any] = getattr(self, "_" + verb.replace(".", "_"))
        return handler(request)

    def _token_edge_add(self, r: EdgeAddRequest) -> EdgeAdded:
        if r.name in self.edges:
            raise EdgeNameTakenError(f"edge {r.name!r} already exists; remove_edge first")
        info = _info(r.name, r.publish_id, tags=r.tags)
        self.edges[r.name] = info
        self.removed.pop(r.name, None)  # the new record replaces the tombstone
        return EdgeAdded(edge=info, bundle=FULL_BUNDLE)

    def _token_edge_remove(self, r: EdgeRemoveRequest) -> EdgeRemoved:
        gone = self.edges.pop(r.name, None)
        if gone is None:
            raise NotFoundError(f"no edge {r.name!r}")
        self.removed[r.name] = msgspec.structs.replace(
            gone, credential_state="revoked", revoked_at=NOW, connection="offline"
        )
        return EdgeRemoved(name=r.name, disconnected=0)

    def _token_edge_list(self, r: EdgeListRequest) -> EdgeListReply:
        every = [*self.edges.values(), *(self.removed.values() if r.include_removed else ())]
        found = [
            e
            for e in every
            if (r.pipeline_name is None or e.pipeline_name == r.pipeline_name)
            and (r.publish_id is None or e.publish_id == r.publish_id)
        ]
        return EdgeListReply(edges=tuple(found))

    def _token_edge_move(self, r: EdgeMoveRequest) -> EdgeMoved:
        new = self.publishes[r.publish_id]
        moved = []
        for name, e in list(self.edges.items()):
            if e.publish_id in new.replaces:
                self.edges[name] = msgspec.structs.replace(e, publish_id=new.id)
                moved.append(name)
        return EdgeMoved(moved=tuple(moved))

    def _publish_publish_get(self, r: PublishGetRequest) -> PublishRecord:
        if r.id not in self.publishes:
            raise NotFoundError(f"no publish {r.id}")
        return self.publishes[r.id]

    def _publish_publish_list(self, r: PublishListRequest) -> PublishListReply:
        found = [p for p in self.publishes.values() if p.pipeline_name == r.pipeline_name]
        return PublishListReply(publishes=tuple(found))

    def _publish_publish_create(self, r: PublishCreateRequest) -> PublishRecord:
        record = _publish(max(self.publishes) + 1, replaces=list(r.replaces))
        self.publishes[record.id] = record
        return record


class FakeSession:
    """``Session``'s shape, answering at once: the client's ``_run`` passes values through."""

    def __init__(self, services: FakeServices) -> None:
        self.services = services
        self.user = "sdk"

    def call(self, verb: str, request: Any, _type: type, *, retry_for: float = 15.0) -> Any:
        return self.services.answer(verb, request)

    def watch_publish(self, publish_id: int, *_: Any) -> PublishRecord:
        return self.services.publishes[publish_id]

    def close(self) -> None:
        return None


class PassThrough:
    def run(self, value: Any) -> Any:
        return value

    def close(self) -> None:
        return None


@pytest.fixture
def services() -> FakeServices:
    return FakeServices()


@pytest.fixture
def client(services: FakeServices) -> Iterator[Client]:
    fake = Client.__new__(Client)  # a real Client, its bus replaced
    fake._loop = PassThrough()  # type: ignore[assignment]
    fake._session = FakeSession(services)  # type: ignore[assignment]
    yield fake


def _verbs(services: FakeServices) -> list[str]:
    return [verb for verb, _ in services.sent]


# --- Edge and its table ----------------------------------------------------------------------


def test_edge_has_the_seeds_attributes_and_the_fleets() -> None:
    seen = NOW - timedelta(seconds=12)
    edge = Edge(_info(tags=("eu",), last_seen=seen, connection="online", agent_version="0.1.0"))
    assert edge.id == "50fa7f30-7725-4f27-8ddb-6000e8674cd6"
    assert (edge.name, edge.tags, edge.cpus, edge.memory) == ("shop-1", ["eu"], 4.0, "3Gi")
    assert edge.should_run_publish == 4
    assert edge.spiffe_id.endswith("/ns/deployments/edge/" + edge.id)
    assert (edge.pipeline_name, edge.pipeline_version_id) == ("demo", 26)
    assert edge.pipeline_version_name == VERSION
    assert (edge.workspace_id, edge.workspace_name) == (1, "default")
    assert (edge.created_at, edge.created_on_version) == (NOW, "0.1.0")
    assert (edge.last_seen, edge.connection, edge.offline_after_s) == (seen, "online", 90.0)
    assert (edge.credential_state, edge.credential_expires_at) == ("pending", None)
    assert (edge.running_version, edge.running_publish_id, edge.backlog) == (None, None, None)
    assert (edge.agent_version, edge.status) == ("0.1.0", None)
    assert edge.bundle == TOKENLESS


def test_empty_edge_list_is_the_seeds() -> None:
    assert repr(EdgeList()) == NO_EDGES == "(No Edges)"
    assert EdgeList()._repr_html_() == "(No Edges)"


def test_edge_table_columns_and_cells() -> None:
    markup = edges_html([_info(tags=("eu", "north"))], NOW)
    assert list(EDGE_COLUMNS)[:5] == ["ID", "Name", "Tags", "Pipeline Version", "SPIFFE ID"]
    assert all(f"<th>{c}</th>" in markup for c in EDGE_COLUMNS)
    assert "<td>['eu', 'north']</td>" in markup  # the seed shows tags as a list: []
    assert "<td>26</td>" in markup and "<td>never connected</td>" in markup
    text = edges_text([_info()], NOW)
    assert "shop-1" in text and "SPIFFE ID" in text and "pending join" in text


def test_connection_states_the_threshold() -> None:
    assert connection_text(_info()) == "never connected"
    assert connection_text(_info(connection="online", status="serving")) == "online, serving"
    assert connection_text(_info(connection="offline")) == "offline (no contact for over 90s)"
    long = _info(connection="offline", offline_after_s=600)
    assert connection_text(long) == "offline (no contact for over 10m)"


def test_a_removed_edge_is_offline_because_it_was_removed() -> None:
    removed = _info(credential_state="revoked", connection="offline", revoked_at=NOW)
    assert connection_text(removed) == "offline (removed)"
    never = _info(credential_state="revoked", connection="never", revoked_at=NOW)
    assert connection_text(never) == "never connected"
    text = edges_text([removed], NOW)
    assert "offline (removed)" in text and "revoked (removed 2024-03-26 19:07:43+00:00)" in text
    assert Edge(removed).revoked_at == NOW and Edge(_info()).revoked_at is None


def test_last_seen_credential_and_running_texts() -> None:
    assert last_seen_text(_info(), NOW) == "never"
    seen = _info(last_seen=NOW - timedelta(seconds=12))
    assert last_seen_text(seen, NOW) == "2024-03-26 19:07:31+00:00 (12s ago)"
    joined = _info(credential_state="joined", credential_expires_at=NOW + timedelta(days=7))
    assert credential_text(joined, NOW) == "joined, expires 2024-04-02 19:07:43+00:00 (in 7d)"
    assert credential_text(_info(credential_state="revoked"), NOW) == "revoked"
    removed = _info(credential_state="revoked", revoked_at=NOW - timedelta(seconds=5))
    assert credential_text(removed, NOW) == "revoked (removed 2024-03-26 19:07:38+00:00)"
    assert credential_text(_info(credential_state="expired"), NOW).startswith("expired")
    assert running_text(_info()) == ""
    assert running_text(_info(running_version=VERSION, running_publish_id=4)) == VERSION
    behind = _info(publish_id=5, running_version=VERSION, running_publish_id=4)
    assert running_text(behind) == f"{VERSION} (publish 4; should run 5)"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (45, "45s"),
        (90, "90s"),
        (119, "119s"),
        (120, "2m"),
        (3600, "60m"),
        (7200, "2h"),
        (86400 * 2, "2d"),
        (86400 * 7, "7d"),
        (-3, "0s"),
    ],
)
def test_seconds_text(seconds: float, text: str) -> None:
    assert seconds_text(seconds) == text


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


@given(st.text(min_size=1, max_size=30), st.lists(st.text(min_size=1, max_size=10), max_size=3))
def test_edge_html_escapes_everything(status: str, tags: list[str]) -> None:
    info = _info(connection="online", status=status, tags=tuple(tags), agent_version=status)
    parser = _Text()
    parser.feed(edges_html([info], NOW))
    assert set(parser.tags) <= {"table", "tr", "th", "td"}
    assert f"online, {status}" in "".join(parser.text)


# --- commands per edge -----------------------------------------------------------------------


def test_edge_commands_are_the_publish_displays() -> None:
    record = _publish()
    edge = Edge(_info(), record, FULL_BUNDLE)
    expected = docker_run_command(
        pipeline_url=PIPELINE_URL,
        engine_url=ENGINE_URL,
        engine_config=record.engine_config.as_dict(),
        edge_bundle=FULL_BUNDLE,
    )
    assert edge.docker_run == expected
    assert edge.docker_run.startswith("docker run -v $PERSISTENT_VOLUME_DIR:/persist \\\n    ")
    assert f"-e EDGE_BUNDLE={FULL_BUNDLE}" in edge.docker_run
    assert edge.podman_run.startswith("podman run -v $PERSISTENT_VOLUME_DIR:/persist")
    assert edge.helm_install.startswith("helm install --atomic $HELM_INSTALL_NAME")
    assert edge.helm_install.endswith(f"--set edgeBundle={FULL_BUNDLE}")
    fields = dict(publish_fields(record, {"shop-1": FULL_BUNDLE}))
    docker = fields["Docker Run Command"]
    assert isinstance(docker, Commands) and dict(docker.entries)["shop-1"] == edge.docker_run
    helm = fields["Helm Install Command"]
    assert isinstance(helm, Commands) and dict(helm.entries)["shop-1"] == edge.helm_install


def test_a_moved_edge_is_upgraded_in_place() -> None:
    record = _publish(11, replaces=[10])
    edge = Edge(_info(publish_id=11), record)  # no fresh bundle: it came with the replace
    assert edge.helm_install == helm_install_command(
        chart_url=CHART, chart_version="0.0.1", edge_bundle=TOKENLESS, upgrade=True
    )
    assert Edge(_info(publish_id=11), record, FULL_BUNDLE).helm_install.startswith(
        "helm install --atomic"
    )


def test_edge_without_its_publish_says_so() -> None:
    edge = Edge(_info())
    assert edge.docker_run == "(no run command: the edge's publish could not be read)"
    assert edge.helm_install == "(no helm command: the edge's publish could not be read)"


# --- add_edge / remove_edge / list_edges -----------------------------------------------------


def test_add_edge_returns_a_new_publish_with_the_bundle(
    client: Client, services: FakeServices
) -> None:
    publish = client.get_publish(4)
    assert publish.edges == [] and publish.edge_bundles == {}
    added = publish.add_edge("shop-1", tags=["eu"])
    assert added is not publish and isinstance(added, PipelinePublish)
    assert added.docker_run_variables == {"PIPELINE_URL": PIPELINE_URL, "EDGE_BUNDLE": FULL_BUNDLE}
    assert added.edge_bundles == {"shop-1": FULL_BUNDLE}
    assert publish.docker_run_variables == {"PIPELINE_URL": PIPELINE_URL}  # unchanged
    request = next(r for v, r in services.sent if v == subjects.VERB_EDGE_ADD)
    assert request == EdgeAddRequest(publish_id=4, name="shop-1", tags=("eu",))
    text = repr(added)
    assert f"-e EDGE_BUNDLE={FULL_BUNDLE}" in text and "Edge: shop-1\ndocker run -v" in text
    assert "helm install --atomic" in text and f"--set edgeBundle={FULL_BUNDLE}" in text
    html = added._repr_html_()
    assert "<tr><td>Edges</td><td>shop-1</td></tr>" in html


def test_add_edge_keeps_the_other_edges_of_the_publish(
    client: Client, services: FakeServices
) -> None:
    publish = client.get_publish(4)
    publish.add_edge("shop-1")
    second = publish.add_edge("shop-2")
    assert second.edge_bundles == {"shop-1": TOKENLESS, "shop-2": FULL_BUNDLE}
    services.down.add(subjects.VERB_EDGE_LIST)  # the list after the add goes unanswered
    third = second.add_edge("shop-3")
    assert list(third.edge_bundles) == ["shop-1", "shop-2", "shop-3"]
    assert third.edge_bundles["shop-2"] == FULL_BUNDLE  # still known to this object


def test_add_edge_checks_what_it_sends(client: Client, services: FakeServices) -> None:
    publish = client.get_publish(4)
    with pytest.raises(InvalidNameError, match="edge name 'Shop_1'"):
        publish.add_edge("Shop_1")
    with pytest.raises(InvalidRequestError, match="tags takes a list of strings"):
        publish.add_edge("shop-1", tags="eu")  # type: ignore[arg-type]
    assert subjects.VERB_EDGE_ADD not in _verbs(services)


def test_errors_of_the_token_service_reach_the_caller(client: Client) -> None:
    client.get_publish(4).add_edge("shop-1")
    with pytest.raises(EdgeNameTakenError, match="shop-1"):
        client.get_publish(4).add_edge("shop-1")
    assert client.remove_edge("shop-1") is None
    with pytest.raises(NotFoundError, match="shop-1"):
        client.remove_edge("shop-1")
    client.get_publish(4).add_edge("shop-1")  # the name is free again


def test_publish_remove_edge_returns_none(client: Client, services: FakeServices) -> None:
    client.get_publish(4).add_edge("shop-1")
    assert client.get_publish(4).remove_edge("shop-1") is None
    assert services.edges == {}


def test_list_edges_of_a_publish_and_of_a_pipeline(client: Client, services: FakeServices) -> None:
    services.publishes[5] = _publish(5)
    client.get_publish(4).add_edge("shop-1")
    client.get_publish(5).add_edge("shop-2")
    of_publish = client.get_publish(5).list_edges()
    assert isinstance(of_publish, EdgeList) and [e.name for e in of_publish] == ["shop-2"]
    pipeline = Pipeline(client, PIPELINE_RECORD)
    edges = pipeline.list_edges()
    assert [(e.name, e.should_run_publish) for e in edges] == [("shop-1", 4), ("shop-2", 5)]
    assert all(e.publish is not None and e.publish.id == e.should_run_publish for e in edges)
    assert "SPIFFE ID" in repr(edges) and "<table>" in edges._repr_html_()
    assert [e.name for e in client.list_edges()] == ["shop-1", "shop-2"]


def _list_requests(services: FakeServices) -> list[EdgeListRequest]:
    return [r for _, r in services.sent if isinstance(r, EdgeListRequest)]


def test_removed_edges_are_listed_only_when_asked(client: Client, services: FakeServices) -> None:
    client.get_publish(4).add_edge("shop-1")
    client.get_publish(4).add_edge("shop-2")
    client.remove_edge("shop-1")
    publish, pipeline = client.get_publish(4), Pipeline(client, PIPELINE_RECORD)
    services.sent.clear()
    listings = [client.list_edges(), pipeline.list_edges(), publish.list_edges()]
    assert [[e.name for e in edges] for edges in listings] == [["shop-2"]] * 3
    assert [r.include_removed for r in _list_requests(services)] == [False] * 3
    services.sent.clear()
    listings = [
        client.list_edges(include_removed=True),
        pipeline.list_edges(include_removed=True),
        publish.list_edges(include_removed=True),
    ]
    assert [r.include_removed for r in _list_requests(services)] == [True] * 3
    for edges in listings:
        shown = {e.name: (e.credential_state, e.connection, e.revoked_at) for e in edges}
        assert shown == {
            "shop-1": ("revoked", "offline", NOW),
            "shop-2": ("pending", "never", None),
        }


def test_list_edges_keeps_its_default_and_takes_include_removed_by_keyword() -> None:
    for method in (Client.list_edges, Pipeline.list_edges, PipelinePublish.list_edges):
        param = inspect.signature(method).parameters["include_removed"]
        assert (param.kind, param.default) == (inspect.Parameter.KEYWORD_ONLY, False)
    assert list(inspect.signature(Pipeline.list_edges).parameters) == ["self", "include_removed"]


def test_a_removed_edge_never_shows_the_bundle_added_under_its_name(
    client: Client, services: FakeServices
) -> None:
    added = client.get_publish(4).add_edge("shop-1")
    assert added.edges is not None and added.edges[0].bundle == FULL_BUNDLE
    added.remove_edge("shop-1")
    (removed,) = added.list_edges(include_removed=True)
    assert (removed.credential_state, removed.bundle) == ("revoked", TOKENLESS)


def test_publishes_carry_their_edges(client: Client, services: FakeServices) -> None:
    services.publishes[5] = _publish(5)
    client.get_publish(5).add_edge("shop-2")
    pipeline = Pipeline(client, PIPELINE_RECORD)
    listed = pipeline.publishes()
    assert {p.id: list(p.edge_bundles) for p in listed} == {4: [], 5: ["shop-2"]}
    assert _verbs(services).count(subjects.VERB_EDGE_LIST) >= 1
    services.down.add(subjects.VERB_EDGE_LIST)
    without = pipeline.publishes()  # no token service: shown without edges, no error
    assert [p.edges for p in without] == [None, None]


def test_a_publish_made_without_a_client_says_how_to_get_one() -> None:
    with pytest.raises(InvalidRequestError, match=r"client\.get_publish\(4\)"):
        PipelinePublish(_publish()).add_edge("shop-1")


# --- replace ---------------------------------------------------------------------------------


def _steps(pipeline: Pipeline) -> Pipeline:
    from edgepub.model import Model
    from edgepub.shared.schemas import ModelVersion

    model = ModelVersion(
        name="m",
        version="c0396244-66ea-4729-9830-3dd11ccdf85a",
        sha256="0" * 64,
        size=1,
        file_name="m.onnx",
    )
    return pipeline.add_model_step(Model(model))


def test_replace_moves_the_edges_and_shows_helm_upgrade(
    client: Client, services: FakeServices
) -> None:
    old = client.get_publish(4)
    old.add_edge("shop-1")
    pipeline = _steps(Pipeline(client, PIPELINE_RECORD))
    new = pipeline.publish(replaces=[old], progress=False)
    assert services.sent[-2] == (subjects.VERB_EDGE_MOVE, EdgeMoveRequest(publish_id=new.id))
    assert [e.name for e in new.list_edges()] == ["shop-1"]
    assert new.edge_bundles == {"shop-1": TOKENLESS}
    text = repr(new)
    assert "Edge: shop-1\nhelm upgrade $HELM_INSTALL_NAME" in text
    assert "helm install --atomic" not in text
    assert old.list_edges() == []


def test_replace_without_a_token_service_still_returns_the_publish(
    client: Client, services: FakeServices
) -> None:
    services.down.add(subjects.VERB_EDGE_MOVE)
    pipeline = _steps(Pipeline(client, PIPELINE_RECORD))
    new = pipeline.publish(replaces=[4], progress=False)
    assert new.replaces == [4] and new.edges is None


def test_a_publish_that_replaces_nothing_asks_the_token_service_nothing(
    client: Client, services: FakeServices
) -> None:
    new = _steps(Pipeline(client, PIPELINE_RECORD)).publish(progress=False)
    assert new.edges == []
    assert not [v for v in _verbs(services) if subjects.service_of(v) == "token"]


# --- the edgepub command ---------------------------------------------------------------------


def _cli(
    monkeypatch: pytest.MonkeyPatch, client: Client, capsys: pytest.CaptureFixture[str]
) -> Callable[..., tuple[int, str, str]]:
    monkeypatch.setattr(cli_module, "_client", lambda args: client)

    def run(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as exit_:
            cli_module.main(list(argv))
        out = capsys.readouterr()
        return int(exit_.value.code or 0), out.out, out.err

    return run


def test_cli_edge_add_list_remove(
    monkeypatch: pytest.MonkeyPatch, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _cli(monkeypatch, client, capsys)
    code, out, _ = run("edge", "add", "shop-1", "--publish", "4", "--tag", "eu", "--tag", "x")
    assert code == 0
    assert FULL_BUNDLE in out and "docker run -v $PERSISTENT_VOLUME_DIR:/persist" in out
    code, out, _ = run("edge", "add", "shop-2", "--publish", "4", "--json")
    added = msgspec.json.decode(out, type=EdgeAdded)
    assert added.bundle == FULL_BUNDLE and added.edge.name == "shop-2"
    code, out, _ = run("edge", "list", "--json")
    listed = json.loads(out)
    assert [e["name"] for e in listed] == ["shop-1", "shop-2"]
    assert listed[0]["tags"] == ["eu", "x"]
    assert set(listed[0]) == set(EdgeInfo.__struct_fields__)
    code, out, _ = run("edge", "list", "--pipeline", "demo", "--publish", "4")
    assert code == 0 and "shop-1" in out and "SPIFFE ID" in out
    code, out, _ = run("edge", "remove", "shop-1", "--json")
    assert json.loads(out) == {"name": "shop-1", "disconnected": 0}
    code, out, _ = run("edge", "list", "--publish", "7")
    assert out.strip() == "(No Edges)"


def test_cli_edge_list_removed(
    monkeypatch: pytest.MonkeyPatch, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _cli(monkeypatch, client, capsys)
    run("edge", "add", "shop-1", "--publish", "4")
    run("edge", "add", "shop-2", "--publish", "4")
    run("edge", "remove", "shop-1")
    code, out, _ = run("edge", "list", "--json")
    assert code == 0 and [e["name"] for e in json.loads(out)] == ["shop-2"]
    code, out, _ = run("edge", "list", "--publish", "4", "--removed", "--json")
    rows = {e["name"]: e for e in json.loads(out)}
    assert code == 0 and sorted(rows) == ["shop-1", "shop-2"]
    assert rows["shop-1"]["credential_state"] == "revoked"
    assert rows["shop-1"]["revoked_at"] == "2024-03-26T19:07:43Z"
    assert rows["shop-2"]["revoked_at"] is None
    assert all(set(r) == set(EdgeInfo.__struct_fields__) for r in rows.values())
    code, out, _ = run("edge", "list", "--removed")
    assert code == 0 and "offline (removed)" in out and "revoked (removed 2024-03-26" in out


def test_cli_edge_errors_are_one_line(
    monkeypatch: pytest.MonkeyPatch, client: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _cli(monkeypatch, client, capsys)
    code, _, err = run("edge", "remove", "ghost")
    assert code == 2 and err == "edgepub: error [not_found]: no edge 'ghost'\n"
    run("edge", "add", "shop-1", "--publish", "4")
    code, _, err = run("edge", "add", "shop-1", "--publish", "4")
    assert code == 2 and err.startswith("edgepub: error [edge_name_taken]: edge 'shop-1'")
    assert err.count("\n") == 1
