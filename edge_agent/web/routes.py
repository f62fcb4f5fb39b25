"""URL -> endpoint, as a pure function (tested without a server)."""

from __future__ import annotations

from typing import NamedTuple


class Route(NamedTuple):
    endpoint: str  # see ``EdgeApp`` for the handler of each
    method: str  # the one method the endpoint answers
    name: str | None = None  # pipeline or model name
    version: str | None = None


_STATIC = {
    "/infer": Route("infer", "POST"),
    "/pipelines": Route("list_pipelines", "GET"),
    "/models": Route("list_models", "GET"),
    "/metrics": Route("metrics", "GET"),
    "/status": Route("status", "GET"),
    "/v2": Route("server_metadata", "GET"),
    "/v2/health/live": Route("live", "GET"),
    "/v2/health/ready": Route("ready", "GET"),
}
_MODEL_ACTIONS = {
    "": ("model_metadata", "GET"),
    "ready": ("model_ready", "GET"),
    "infer": ("model_infer", "POST"),
}


def _model_route(parts: list[str]) -> Route | None:
    # parts after "/v2/models/": name [versions v] [ready|infer]
    if not parts or not parts[0]:
        return None
    name, rest = parts[0], parts[1:]
    version = None
    if len(rest) >= 2 and rest[0] == "versions":
        version, rest = rest[1], rest[2:]
    if len(rest) > 1:
        return None
    action = _MODEL_ACTIONS.get(rest[0] if rest else "")
    if action is None:
        return None
    return Route(action[0], action[1], name, version)


_seen: dict[str, Route] = {}
_SEEN_MAX = 256


def route(path: str) -> Route | None:
    """The endpoint for ``path``; None for an unknown path.

    Paths that resolved are remembered (a few hundred at most), since a client calls the
    same endpoint over and over.
    """
    found = _seen.get(path)
    if found is None:
        found = _route(path)
        if found is not None and len(_seen) < _SEEN_MAX:
            _seen[path] = found
    return found


def _route(path: str) -> Route | None:
    static = _STATIC.get(path)
    if static is not None:
        return static
    path = path.rstrip("/") or "/"
    static = _STATIC.get(path)
    if static is not None:
        return static
    if path.startswith("/pipelines/"):
        name = path[len("/pipelines/") :]
        return Route("pipeline_infer", "POST", name) if name and "/" not in name else None
    if path.startswith("/v2/models/"):
        return _model_route(path[len("/v2/models/") :].split("/"))
    return None
