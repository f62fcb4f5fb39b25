"""The embedded stack: ``edgepub up`` runs NATS, a registry and the services, supervised."""

from edgepub.shared.stack_file import StackInfo, load_stack_info

__all__ = ["StackInfo", "load_stack_info"]
