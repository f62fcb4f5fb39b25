"""The embedded stack: ``edgepub up`` runs NATS, a registry and the services, supervised."""

from .state import StackInfo, load_stack_info

__all__ = ["StackInfo", "load_stack_info"]
