"""CLI adapter: ``aexp-relay-mcp [serve | --selftest [--live] | --version]``.

Heavy imports (the ``mcp`` SDK, pydantic) happen only in the branch that needs them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

VERSION = "0.1.0"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aexp-relay-mcp",
        description="Run whitelisted git and wandb ops on an HPC login node over ssh. "
        "With no command, serves MCP over stdio.",
    )
    parser.add_argument("--version", action="version", version=f"aexp-relay-mcp {VERSION}")
    parser.add_argument(
        "--selftest",
        action="store_true",
        help="build a private sandbox (sshd on 127.0.0.1, origin, clone, stub wandb), drive every "
        "MCP tool through a real stdio client, print a table, exit 0 only if all passed",
    )
    parser.add_argument(
        "--live",
        action="store_true",
        help="with --selftest: run only the read-only tools against the configured real host",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve MCP over stdio (the default)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.selftest:
        from .selftest import run_selftest

        return run_selftest(live=args.live)
    if args.live:
        print("aexp-relay-mcp: --live only goes with --selftest", file=sys.stderr)
        return 2
    from .server import serve

    return serve()
