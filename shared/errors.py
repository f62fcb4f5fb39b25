"""The one error tree. Each class has a stable ``code``; over the wire an error is an
``ErrorReply`` and the receiving side re-raises the same class (see ``from_reply``).

Every class derives from ``Exception`` (as Wallaroo's bare exceptions did), so existing
``except Exception`` code keeps working.
"""

from __future__ import annotations

from typing import ClassVar


class EdgepubError(Exception):
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidNameError(EdgepubError, ValueError):
    code = "invalid_name"


class InvalidModelError(EdgepubError, ValueError):
    code = "invalid_model"


class ModelExternalDataError(InvalidModelError):
    """The model keeps tensors in files beside it (ONNX external data): the one file
    edgepub uploads is not the whole model."""

    code = "model_external_data"


class InvalidRequestError(EdgepubError, ValueError):
    code = "invalid_request"


class NotFoundError(EdgepubError, LookupError):
    code = "not_found"


class EmptyPipelineError(EdgepubError, ValueError):
    code = "empty_pipeline"


class ConflictError(EdgepubError):
    code = "conflict"


class ConfigError(EdgepubError, ValueError):
    code = "config"


class RegistryError(EdgepubError):
    code = "registry"


class RegistryAuthError(RegistryError):
    code = "registry_auth"


class RegistryUnavailableError(RegistryError):
    code = "registry_unavailable"


class PublishFailedError(EdgepubError):
    code = "publish_failed"


class ServiceUnavailableError(EdgepubError, ConnectionError):
    code = "unavailable"


class NotAuthorizedError(EdgepubError, PermissionError):
    """The broker refused the credentials (or an action the user may not take)."""

    code = "not_authorized"


class DigestMismatchError(EdgepubError):
    code = "digest_mismatch"


class EdgeNameTakenError(ConflictError):
    """Edge names are unique across the instance: remove_edge frees one."""

    code = "edge_name_taken"


class PublishNotReadyError(ConflictError):
    """An edge can only be added to a publish that is Published (it has a pipeline URL)."""

    code = "publish_not_ready"


def _all_subclasses(cls: type[EdgepubError]) -> list[type[EdgepubError]]:
    out: list[type[EdgepubError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_KNOWN: list[type[EdgepubError]] = [EdgepubError, *_all_subclasses(EdgepubError)]
BY_CODE: dict[str, type[EdgepubError]] = {c.code: c for c in _KNOWN}


def from_code(code: str, message: str) -> EdgepubError:
    """Rebuild the error a service raised; unknown codes become the base class."""
    return BY_CODE.get(code, EdgepubError)(message)
