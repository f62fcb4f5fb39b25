"""edgepub: publish ONNX pipelines to the edge and bring their inference logs home.

from edgepub import Client, DeploymentConfigBuilder
"""

from edgepub.shared.errors import (
    EdgepubError,
    EmptyPipelineError,
    InvalidModelError,
    InvalidNameError,
    NotFoundError,
    PublishFailedError,
)
from edgepub.shared.version import VERSION as __version__

from .client import Client
from .deployment_config import DeploymentConfig, DeploymentConfigBuilder
from .model import Framework, Model
from .pipeline import Pipeline
from .publish import PipelinePublish, PublishList

__all__ = [
    "Client",
    "DeploymentConfig",
    "DeploymentConfigBuilder",
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
    "__version__",
]
