"""``edgepub``: the SDK's verbs for shell users.

    edgepub up                                   start the embedded stack
    edgepub dashboard [--nats-url URL --user U]  the fleet dashboard against any deployment
    edgepub demo                                 publish a sample pipeline end to end
    edgepub model upload NAME PATH
    edgepub pipeline publish NAME --model M[:VERSION] [--cpus --memory --replicas --replaces]
    edgepub pipeline publishes NAME
    edgepub publish show ID
    edgepub edge add NAME --publish ID [--tag T ...]
    edgepub edge remove NAME
    edgepub edge list [--pipeline P] [--publish ID] [--removed]
    edgepub logs show PIPELINE [--limit N] [--partition EDGE]
    edgepub logs tail PIPELINE [--partition EDGE]   follow new rows until Ctrl-C
Add ``--json`` for output a script can read.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from edgepub.shared.errors import EdgepubError
from edgepub.shared.version import VERSION

from . import log_print


def _connection_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--nats-url", help="NATS URL (default: EDGEPUB_NATS_URL or the embedded stack)")
    p.add_argument("--user", help="NATS user (default: EDGEPUB_NATS_USER or the stack's)")
    p.add_argument("--password", help="NATS password (prefer EDGEPUB_NATS_PASSWORD)")
    p.add_argument(
        "--data-dir", help="embedded stack directory (default: $EDGEPUB_HOME or ~/.edgepub)"
    )
    p.add_argument("--json", action="store_true", help="print JSON for scripts")


# Help is plain text: argparse prints it as written, so no reST markup from the docstring.
DESCRIPTION = "edgepub: the SDK's verbs for shell users."
EPILOG = "Each verb has its own --help; add --json for output a script can read."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgepub", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"edgepub {VERSION}")
    verbs = parser.add_subparsers(dest="verb", required=True)

    verbs.add_parser(
        "up", help="start the embedded stack (nats-server, registry, services)", add_help=False
    )
    verbs.add_parser(
        "dashboard", help="the fleet dashboard against any deployment (a web page)", add_help=False
    )
    demo = verbs.add_parser("demo", help="run the end-to-end demo on the embedded stack")
    demo.add_argument("--data-dir", help="stack directory (default: a fresh temporary one)")
    demo.add_argument(
        "--keep",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="at the end, keep the stack and the dashboard up with an edge sending traffic "
        "until Ctrl-C (default: when run on a terminal)",
    )

    model = verbs.add_parser("model", help="models").add_subparsers(dest="action", required=True)
    up = model.add_parser("upload", help="upload an ONNX file as a model version")
    up.add_argument("name")
    up.add_argument("path")
    _connection_args(up)

    pipe = verbs.add_parser("pipeline", help="pipelines").add_subparsers(
        dest="action", required=True
    )
    pub = pipe.add_parser("publish", help="publish a pipeline of model steps")
    pub.add_argument("name")
    pub.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="NAME[:VERSION]",
        help="a model step (repeat, in order); latest version when none given",
    )
    pub.add_argument("--cpus", type=float)
    pub.add_argument("--memory", help="Kubernetes quantity, e.g. 900Mi")
    pub.add_argument("--replicas", type=int)
    pub.add_argument("--replaces", type=int, action="append", default=[], metavar="PUBLISH_ID")
    pub.add_argument("--timeout", type=float, default=600.0)
    _connection_args(pub)
    lst = pipe.add_parser("publishes", help="list a pipeline's publishes")
    lst.add_argument("name")
    _connection_args(lst)

    publish = verbs.add_parser("publish", help="publishes").add_subparsers(
        dest="action", required=True
    )
    show = publish.add_parser("show", help="show one publish")
    show.add_argument("id", type=int)
    _connection_args(show)
    _edge_verbs(verbs)
    log_print.add_parser(verbs, _connection_args)
    return parser


def _edge_verbs(verbs: Any) -> None:
    edge = verbs.add_parser("edge", help="edge locations").add_subparsers(
        dest="action", required=True
    )
    add = edge.add_parser(
        "add", help="add an edge to a publish; prints its bundle (shown this once)"
    )
    add.add_argument("name", help="unique across the instance, DNS-safe")
    add.add_argument("--publish", type=int, required=True, metavar="ID")
    add.add_argument("--tag", action="append", default=[], dest="tags", metavar="TAG")
    _connection_args(add)
    rm = edge.add_parser("remove", help="remove an edge: its credential stops working at once")
    rm.add_argument("name")
    _connection_args(rm)
    lst = edge.add_parser("list", help="list edges: every one, or a pipeline's or a publish's")
    lst.add_argument("--pipeline", metavar="NAME")
    lst.add_argument("--publish", type=int, metavar="ID")
    lst.add_argument(
        "--removed",
        action="store_true",
        help="also list removed edges still on record (credential_state revoked)",
    )
    _connection_args(lst)


def _client(args: argparse.Namespace) -> Any:
    from .client import Client

    return Client(args.nats_url, args.user, args.password, data_dir=args.data_dir)


def _print(args: argparse.Namespace, human: object, machine: object) -> None:
    if args.json:
        sys.stdout.write(msgspec.json.encode(machine).decode() + "\n")
    else:
        print(human)


def _publish(args: argparse.Namespace) -> None:
    from .deployment_config import DeploymentConfigBuilder

    with _client(args) as client:
        pipeline = client.build_pipeline(args.name)
        for spec in args.model:
            name, _, version = spec.partition(":")
            pipeline.add_model_step(client.get_model(name, version or None))
        builder = DeploymentConfigBuilder()
        if args.cpus is not None:
            builder = builder.cpus(args.cpus)
        if args.memory is not None:
            builder = builder.memory(args.memory)
        if args.replicas is not None:
            builder = builder.replica_count(args.replicas)
        config = builder.build() if (args.cpus or args.memory or args.replicas) else None
        publish = pipeline.publish(
            config, replaces=args.replaces, timeout=args.timeout, progress=not args.json
        )
        _print(args, publish, publish.record)


def _edge(args: argparse.Namespace) -> None:
    from edgepub.shared.edge_messages import EdgeAdded

    with _client(args) as client:
        if args.action == "add":
            publish = client.get_publish(args.publish)
            added = publish.add_edge(args.name, args.tags)
            edge = next(e for e in added.edges or () if e.name == args.name)
            result = EdgeAdded(edge=edge.info, bundle=edge.bundle)
            _print(args, _added_text(result, edge.docker_run), result)
        elif args.action == "remove":
            removed = client._remove_edge(args.name)
            _print(args, f"edge {removed.name!r} removed", removed)
        else:
            edges = client.list_edges(args.pipeline, args.publish, include_removed=args.removed)
            _print(args, repr(edges).rstrip("\n"), [e.info for e in edges])


def _added_text(added: Any, docker_run: str) -> str:
    edge = added.edge
    return (
        f"edge {edge.name!r} added to publish {edge.publish_id} "
        f"(pipeline {edge.pipeline_name!r}).\n"
        "EDGE_BUNDLE (shown this once; it holds the edge's single-use join token):\n"
        f"{added.bundle}\n\n"
        f"Docker Run Command\n{docker_run}\n\n"
        "Note: Please set the PERSISTENT_VOLUME_DIR, EDGE_PORT, OCI_USERNAME, and "
        "OCI_PASSWORD environment variables."
    )


def run(argv: Sequence[str]) -> int:
    argv = list(argv)
    if argv and argv[0] == "up":
        from edgepub.services.stack.up import up_main

        return up_main(argv[1:])
    if argv and argv[0] == "dashboard":
        from edgepub.services.dashboard.__main__ import dashboard_main

        return dashboard_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.verb == "demo":
        from .demo import run_demo

        keep = sys.stdin.isatty() and sys.stdout.isatty() if args.keep is None else args.keep
        return run_demo(args.data_dir, keep=keep)
    if args.verb == "model":
        with _client(args) as client:
            model = client.upload_model(args.name, args.path)
            _print(args, model, model.record)
    elif args.verb == "pipeline" and args.action == "publish":
        _publish(args)
    elif args.verb == "pipeline" and args.action == "publishes":
        with _client(args) as client:
            publishes = client.build_pipeline(args.name).publishes()
            _print(args, publishes, [p.record for p in publishes])
    elif args.verb == "edge":
        _edge(args)
    elif args.verb == "logs":
        with _client(args) as client:
            log_print.run(args, client)
    elif args.verb == "publish":
        with _client(args) as client:
            publish = client.get_publish(args.id)
            _print(args, publish, publish.record)
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    try:
        code = run(sys.argv[1:] if argv is None else argv)
    except EdgepubError as exc:
        print(f"edgepub: error [{exc.code}]: {exc.message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
