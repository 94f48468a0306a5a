"""``aexp-relay-mcp connect`` / ``disconnect``: the shared ssh connection, by hand.

For clusters that need a password, MFA or a Duo push: ``connect`` opens the master with
the terminal attached (no BatchMode), once; every relay call then reuses it until it has
been idle for AEXP_RELAY_CONTROL_PERSIST (10m by default).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from .config import RelayConfig
from .connection import ConnectionManager
from .errors import RelayError
from .remote import validate_host

EXIT_OK, EXIT_USAGE, EXIT_UNREACHABLE = 0, 2, 3


def _manager(host_arg: str | None) -> tuple[ConnectionManager, str, str] | int:
    try:
        config = RelayConfig.from_env()
        host = validate_host(host_arg or config.ssh_host)
    except RelayError as exc:
        print(f"aexp-relay-mcp: {exc}", file=sys.stderr)
        return EXIT_USAGE
    manager = ConnectionManager(config)
    if not manager.enabled:
        print(
            "aexp-relay-mcp: connection reuse is off (AEXP_RELAY_CONTROL_PERSIST=no); "
            "unset it to share one login between calls.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path = asyncio.run(manager.control_path(host))
    if path is None:
        print(f"aexp-relay-mcp: no usable ControlPath for {host}.", file=sys.stderr)
        return EXIT_USAGE
    return manager, host, path


def connect(host_arg: str | None) -> int:
    found = _manager(host_arg)
    if isinstance(found, int):
        return found
    manager, host, path = found
    if asyncio.run(manager.check(host)).live:
        print(f"A shared connection to {host} is already up ({path}).")
        return EXIT_OK
    print(f"Opening a shared connection to {host}; answer any password or MFA prompt.")
    code = subprocess.call(manager.connect_argv(host, path))
    state = asyncio.run(manager.check(host))
    if code == 0 and state.live:
        print(
            f"Connected. The relay reuses this login for {host} until it has been idle for "
            f"{manager.config.control_persist} (socket {path}). "
            f"`aexp-relay-mcp disconnect {host}` closes it."
        )
        return EXIT_OK
    print(f"Could not open a shared connection to {host} (ssh exit {code}).", file=sys.stderr)
    return EXIT_UNREACHABLE


def disconnect(host_arg: str | None) -> int:
    found = _manager(host_arg)
    if isinstance(found, int):
        return found
    manager, host, path = found
    if not asyncio.run(manager.check(host)).live:
        print(f"No shared connection to {host} is up.")
        return EXIT_OK
    proc = subprocess.run(
        manager.exit_argv(host, path), stdin=subprocess.DEVNULL, capture_output=True, text=True
    )
    if proc.returncode == 0:
        print(f"Closed the shared connection to {host}.")
        return EXIT_OK
    print(f"ssh -O exit failed: {proc.stderr.strip()}", file=sys.stderr)
    return EXIT_UNREACHABLE
