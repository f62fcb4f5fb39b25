"""Helpers for tests: real servers, service processes, waiting with deadlines."""
