"""``python -m edgepub.services.stack up|render|run [options]``."""

from __future__ import annotations

import sys

from edgepub.shared.errors import ConfigError

USAGE = "usage: python -m edgepub.services.stack up|render|run [options]  (VERB --help)"


def main(argv: list[str]) -> int:
    verb, rest = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if verb == "up":
            from .up import up_main

            return up_main(rest)
        if verb in ("render", "run"):
            from .render import render_main, run_main

            return render_main(rest) if verb == "render" else run_main(rest)
    except ConfigError as exc:
        print(f"edgepub: {exc}", file=sys.stderr)
        return 2
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
