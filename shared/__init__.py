"""Pieces every edgepub process shares: wire schemas, names, settings, logging, the bus."""
