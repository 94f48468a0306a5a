"""CLI adapter (placeholder until the CLI issue lands)."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--version"]:
        from . import __version__

        print(f"aexp-relay-mcp {__version__}")
        return 0
    print("aexp-relay-mcp: the CLI verbs are not built yet; use the Python API.", file=sys.stderr)
    return 2
