"""How publishes show themselves: rows, HTML and terminal text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from html.parser import HTMLParser
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.commands import docker_run_command, helm_install_command
from edgepub.display import (
    LIST_COLUMNS,
    PUBLISH_LABELS,
    Commands,
    format_datetime,
    publish_fields,
    publish_html,
    publish_rows,
    publish_text,
    publishes_html,
    publishes_text,
)
from edgepub.shared.engine_config import Engine, EngineConfig, Resources, ResourceSpec
from edgepub.shared.schemas import HelmInfo, PublishRecord

CREATED = datetime(2023, 8, 17, 14, 4, 44, 939862, tzinfo=UTC)
SEED_CONFIG: dict[str, Any] = {
    "engine": {
        "resources": {
            "limits": {"cpu": 0.5, "memory": "900Mi"},
            "requests": {"cpu": 0.5, "memory": "900Mi"},
        }
    },
    "engineAux": {"images": {}},
    "enginelb": {},
}
VERSION = "6c3d9899-1335-456b-aaa0-52d03a017cc4"
PIPELINE_URL = f"sample-registry.example.com/pipelines/p1:{VERSION}"
ENGINE_URL = "sample-registry.example.com/engine:main"
CHART = "sample-registry.example.com/charts/p1"


def _record(**changes: Any) -> PublishRecord:
    record = PublishRecord(
        id=4,
        pipeline_name="p1",
        pipeline_version_id=10,
        pipeline_version_name=VERSION,
        status="Published",
        engine_url=ENGINE_URL,
        pipeline_url=PIPELINE_URL,
        helm=HelmInfo(
            reference="sample-registry.example.com/charts@sha256:5523891f",
            chart=CHART,
            version=f"0.0.1-{VERSION}",
        ),
        engine_config=EngineConfig.from_dict(SEED_CONFIG),
        created_by="db13ee60-4162-4a42-a571-61c32e225e3e",
        created_at=CREATED,
        updated_at=CREATED,
    )
    return msgspec.structs.replace(record, **changes)


class _Balance(HTMLParser):
    """Fails on a closing tag that does not match the open one; collects the text."""

    VOID = frozenset({"br", "hr", "img", "meta", "link", "input"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        assert tag in self.VOID, f"<{tag}/> is not a void element"
        self.tags.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(markup: str) -> _Balance:
    parser = _Balance()
    parser.feed(markup)
    parser.close()
    assert parser.stack == [], f"unclosed: {parser.stack}"
    return parser


# --- rows ---------------------------------------------------------------------------------


def test_labels_are_wallaroos() -> None:
    assert [label for label, _ in publish_rows(_record())] == list(PUBLISH_LABELS)


def test_values_like_the_seed() -> None:
    rows = dict(publish_rows(_record()))
    assert rows["ID"] == "4"
    assert rows["Pipeline Version"] == VERSION
    assert rows["Status"] == "Published"
    assert rows["Workspace Id"] == "1"
    assert rows["Workspace Name"] == "default"
    assert rows["Engine URL"] == ENGINE_URL
    assert rows["Pipeline URL"] == PIPELINE_URL
    assert rows["Helm Chart URL"] == f"oci://{CHART}"
    assert rows["Helm Chart Version"] == f"0.0.1-{VERSION}"
    assert rows["Engine Config"] == (
        "{'engine': {'resources': {'limits': {'cpu': 0.5, 'memory': '900Mi'}, 'requests': "
        "{'cpu': 0.5, 'memory': '900Mi'}}}, 'engineAux': {'images': {}}, 'enginelb': {}}"
    )
    assert rows["User Images"] == "[]"
    assert rows["Created At"] == "2023-08-17 14:04:44.939862+00:00"
    assert rows["Updated At"] == "2023-08-17 14:04:44.939862+00:00"
    assert rows["Edges"] == ""
    assert rows["Replaces"] == ""


def test_chart_url_gets_exactly_one_oci_prefix() -> None:
    record = _record(helm=HelmInfo(reference="r", chart=f"oci://{CHART}", version="1"))
    assert dict(publish_rows(record))["Helm Chart URL"] == f"oci://{CHART}"


def test_datetimes_are_shown_in_utc() -> None:
    plus_two = timezone(timedelta(hours=2))
    assert format_datetime(datetime(2024, 3, 26, 21, 7, 43, 158229, tzinfo=plus_two)) == (
        "2024-03-26 19:07:43.158229+00:00"
    )
    assert format_datetime(datetime(2024, 3, 26, 19, 7, 43)) == "2024-03-26 19:07:43+00:00"


def test_replaces_with_and_without_detail() -> None:
    old = _record(id=10, pipeline_name="edge-inline-replacement-demo", pipeline_version_id=26)
    record = _record(id=11, replaces=[10, 9])
    assert dict(publish_rows(record))["Replaces"] == "Publish 10\nPublish 9"
    assert dict(publish_rows(record, replaced={10: old}))["Replaces"] == (
        'Publish 10, Pipeline "edge-inline-replacement-demo", Version 26\nPublish 9'
    )


def test_docker_command_without_edges_is_the_no_observability_form() -> None:
    rows = dict(publish_rows(_record()))
    expected = docker_run_command(
        pipeline_url=PIPELINE_URL, engine_url=ENGINE_URL, engine_config=SEED_CONFIG
    )
    assert rows["Docker Run Command"] == (
        f"{expected}\n\nNote: Please set the EDGE_PORT, OCI_USERNAME, and OCI_PASSWORD "
        "environment variables."
    )
    assert "PERSISTENT_VOLUME_DIR" not in rows["Docker Run Command"]
    assert rows["Podman Run Command"].startswith("podman run \\\n")
    assert rows["Helm Install Command"] == (
        helm_install_command(chart_url=CHART, chart_version=f"0.0.1-{VERSION}")
        + "\n\nNote: Please set the HELM_INSTALL_NAME, HELM_INSTALL_NAMESPACE, OCI_USERNAME, "
        "and OCI_PASSWORD environment variables."
    )


def test_one_command_per_edge() -> None:
    edges = {"shop-1": "QlVORExFMQ==", "shop-2": "QlVORExFMg=="}
    fields = dict(publish_fields(_record(), edges))
    docker = fields["Docker Run Command"]
    assert isinstance(docker, Commands)
    assert [edge for edge, _ in docker.entries] == ["shop-1", "shop-2"]
    assert "-e EDGE_BUNDLE=QlVORExFMg==" in docker.entries[1][1]
    assert docker.entries[0][1].startswith("docker run -v $PERSISTENT_VOLUME_DIR:/persist \\\n")
    assert docker.note == (
        "Note: Please set the PERSISTENT_VOLUME_DIR, EDGE_PORT, OCI_USERNAME, and OCI_PASSWORD "
        "environment variables."
    )
    helm = fields["Helm Install Command"]
    assert isinstance(helm, Commands)
    # A publish that replaces nothing: each edge is a first install, with its bundle.
    assert all(
        cmd.startswith("helm install --atomic $HELM_INSTALL_NAME") for _, cmd in helm.entries
    )
    assert helm.entries[0][1].endswith("--set edgeBundle=QlVORExFMQ==")
    rows = dict(publish_rows(_record(), edges))
    assert rows["Edges"] == "shop-1\nshop-2"
    assert rows["Docker Run Command"].startswith("Edge: shop-1\ndocker run -v")


def test_replaced_locations_get_helm_upgrade() -> None:
    """The seed's replace example: edges moved from a replaced publish are upgraded in place
    (no --atomic); an edge added afresh to the same publish is installed."""
    edges = {"moved": "QlVORExFMQ==", "fresh": "QlVORExFMg=="}
    fields = dict(publish_fields(_record(id=11, replaces=[10]), edges, upgrades={"moved"}))
    helm = fields["Helm Install Command"]
    assert isinstance(helm, Commands)
    commands = dict(helm.entries)
    assert commands["moved"] == helm_install_command(
        chart_url=CHART,
        chart_version=f"0.0.1-{VERSION}",
        edge_bundle="QlVORExFMQ==",
        upgrade=True,
    )
    assert commands["moved"].startswith("helm upgrade $HELM_INSTALL_NAME \\\n")
    assert "--atomic" not in commands["moved"]
    assert commands["fresh"].startswith("helm install --atomic $HELM_INSTALL_NAME")
    text = publish_text(_record(id=11, replaces=[10]), edges, upgrades={"moved"})
    assert "Edge: moved\nhelm upgrade" in text and "Edge: fresh\nhelm install --atomic" in text


def test_bundle_in_docker_run_variables_without_edges() -> None:
    record = _record(docker_run_variables={"EDGE_BUNDLE": "YWJjZGU="})
    rows = dict(publish_rows(record))
    assert rows["Docker Run Command"].startswith("docker run -v $PERSISTENT_VOLUME_DIR:/persist")
    assert "-e EDGE_BUNDLE=YWJjZGU=" in rows["Docker Run Command"]
    assert "Note: Please set the PERSISTENT_VOLUME_DIR, EDGE_PORT" in rows["Docker Run Command"]


def test_pending_publish_has_no_commands_yet() -> None:
    record = _record(status="PendingPublish", engine_url=None, pipeline_url=None, helm=None)
    rows = dict(publish_rows(record))
    for label in ("Docker Run Command", "Podman Run Command", "Helm Install Command"):
        assert rows[label] == "(available once the publish is Published)"
    assert rows["Helm Chart URL"] == ""
    assert rows["Engine URL"] == ""


def test_failed_publish_shows_its_error() -> None:
    record = _record(status="Error", error="registry refused: unauthorized", helm=None)
    labels = [label for label, _ in publish_rows(record)]
    assert labels[labels.index("Status") + 1] == "Error"
    assert dict(publish_rows(record))["Error"] == "registry refused: unauthorized"
    assert dict(publish_rows(record))["Helm Install Command"] == "(none: the publish failed)"


def test_bad_engine_config_does_not_break_the_display() -> None:
    # Not decodable (the service refuses it); a record built in-process can still hold it.
    lots = Resources(memory="lots")
    record = _record(engine_config=EngineConfig(engine=Engine(resources=ResourceSpec(limits=lots))))
    rows = dict(publish_rows(record))
    assert rows["Docker Run Command"].startswith("(cannot render: memory 'lots'")


# --- HTML ---------------------------------------------------------------------------------


def test_html_is_balanced_and_has_every_label() -> None:
    parsed = _parse(publish_html(_record(replaces=[3])))
    text = "".join(parsed.text)
    for label in PUBLISH_LABELS:
        assert label in text
    assert parsed.tags.count("pre") == 3


def test_html_edge_sub_table() -> None:
    markup = publish_html(_record(), {"shop-1": "QlVORExFMQ==", "shop-2": "QlVORExFMg=="})
    parsed = _parse(markup)
    assert parsed.tags.count("pre") == 6
    assert markup.count("<b>Edge</b>") == 3
    assert "<tr><td>shop-1</td><td><pre" in markup
    assert "Edges</td><td>shop-1<br/>shop-2</td>" in markup


def test_html_escapes_hostile_values() -> None:
    hostile = "<script>alert('x')</script>"
    record = _record(pipeline_name=hostile, created_by='"><img src=x onerror=alert(1)>')
    markup = publish_html(record, {hostile: "b"})
    assert "<script>" not in markup
    assert "<img" not in markup
    parsed = _parse(markup)
    assert "script" not in parsed.tags
    assert hostile in "".join(parsed.text)


def test_html_command_text_is_the_command() -> None:
    parsed = _parse(publish_html(_record()))
    expected = docker_run_command(
        pipeline_url=PIPELINE_URL, engine_url=ENGINE_URL, engine_config=SEED_CONFIG
    )
    assert expected in parsed.text


@given(st.text(min_size=1, max_size=40), st.text(max_size=20))
def test_html_is_balanced_for_any_text(name: str, edge: str) -> None:
    markup = publish_html(_record(pipeline_name=name, created_by=edge), {edge or "e": name})
    parsed = _parse(markup)
    assert name.replace("\n", "") in "".join(parsed.text)  # newlines become <br/>


def test_publishes_html() -> None:
    assert publishes_html([]) == "(no publishes)"
    markup = publishes_html([_record(), _record(id=5, pipeline_version_name="v-5")])
    parsed = _parse(markup)
    assert parsed.tags.count("tr") == 3
    assert parsed.text[: len(LIST_COLUMNS)] == list(LIST_COLUMNS)
    assert parsed.text[len(LIST_COLUMNS) : 2 * len(LIST_COLUMNS)] == [
        "4",
        VERSION,
        ENGINE_URL,
        PIPELINE_URL,
        "db13ee60-4162-4a42-a571-61c32e225e3e",
        "2023-17-Aug 14:04:44",
        "2023-17-Aug 14:04:44",
    ]


def test_publishes_html_escapes() -> None:
    markup = publishes_html([_record(created_by="<b>me</b>")])
    assert "&lt;b&gt;me&lt;/b&gt;" in markup


# --- text ---------------------------------------------------------------------------------


def test_publish_text_has_fields_and_copyable_commands() -> None:
    edges = {"shop-1": "QlVORExFMQ=="}
    text = publish_text(_record(replaces=[3]), edges)
    assert "\x1b" not in text
    for label in PUBLISH_LABELS:
        assert label in text
    docker = docker_run_command(
        pipeline_url=PIPELINE_URL,
        engine_url=ENGINE_URL,
        engine_config=SEED_CONFIG,
        edge_bundle="QlVORExFMQ==",
    )
    assert f"Edge: shop-1\n{docker}\n" in text  # unwrapped, so a copy runs as it is
    assert "2023-08-17 14:04:44.939862+00:00" in text
    assert all(line == line.rstrip() for line in text.splitlines())


def test_publish_text_does_not_interpret_markup() -> None:
    text = publish_text(_record(pipeline_name="[bold]p[/bold]", user_images=["[red]x"]))
    assert "[bold]p[/bold]" in text
    assert "['[red]x']" in text


@pytest.mark.parametrize("width", [60, 120])
def test_publish_text_long_values_are_folded_not_lost(width: int) -> None:
    text = publish_text(_record(), width=width)
    assert PIPELINE_URL.replace(" ", "") in "".join(text.split())


def test_publishes_text() -> None:
    assert publishes_text([]) == "(no publishes)"
    text = publishes_text([_record(), _record(id=5)])
    for column in LIST_COLUMNS:
        assert column in text
    assert ENGINE_URL in text
    assert "2023-17-Aug 14:04:44" in text
    assert "\x1b" not in text
