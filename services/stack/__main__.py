"""``python -m edgepub.services.stack up [options]``."""

from __future__ import annotations

import sys

from .up import up_main


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "up":
        print("usage: python -m edgepub.services.stack up [options]  (up --help)", file=sys.stderr)
        return 2
    return up_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
