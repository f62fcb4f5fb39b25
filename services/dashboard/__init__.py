"""The fleet dashboard: what it shows, computed from what the services publish (view.py),
owning no state of its own."""
