"""edgepub: publish ONNX pipelines to the edge and bring their inference logs home.

    from edgepub import Client, DeploymentConfigBuilder

Names load on first use (PEP 562), so ``edgepub.edge_agent`` and the services start
without importing the SDK's client, NATS client and table rendering.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgepub.shared.errors import (
        EdgeNameTakenError,
        EdgepubError,
        EmptyPipelineError,
        InvalidModelError,
        InvalidNameError,
        NotFoundError,
        PublishFailedError,
        PublishNotReadyError,
    )

    from .client import Client
    from .deployment_config import DeploymentConfig, DeploymentConfigBuilder
    from .edge import Edge, EdgeList
    from .model import Framework, Model
    from .pipeline import Pipeline
    from .publish import PipelinePublish, PublishList

_WHERE = {
    "Client": ".client",
    "DeploymentConfig": ".deployment_config",
    "DeploymentConfigBuilder": ".deployment_config",
    "Edge": ".edge",
    "EdgeList": ".edge",
    "Framework": ".model",
    "Model": ".model",
    "Pipeline": ".pipeline",
    "PipelinePublish": ".publish",
    "PublishList": ".publish",
    "EdgeNameTakenError": "edgepub.shared.errors",
    "EdgepubError": "edgepub.shared.errors",
    "EmptyPipelineError": "edgepub.shared.errors",
    "InvalidModelError": "edgepub.shared.errors",
    "InvalidNameError": "edgepub.shared.errors",
    "NotFoundError": "edgepub.shared.errors",
    "PublishFailedError": "edgepub.shared.errors",
    "PublishNotReadyError": "edgepub.shared.errors",
}

__all__ = [
    "Client",
    "DeploymentConfig",
    "DeploymentConfigBuilder",
    "Edge",
    "EdgeList",
    "EdgeNameTakenError",
    "EdgepubError",
    "EmptyPipelineError",
    "Framework",
    "InvalidModelError",
    "InvalidNameError",
    "Model",
    "NotFoundError",
    "Pipeline",
    "PipelinePublish",
    "PublishFailedError",
    "PublishList",
    "PublishNotReadyError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from edgepub.shared.version import VERSION

        return VERSION
    where = _WHERE.get(name)
    if where is None:
        raise AttributeError(f"module 'edgepub' has no attribute {name!r}")
    module = importlib.import_module(where, __name__)
    value = getattr(module, name)
    globals()[name] = value
    return value
