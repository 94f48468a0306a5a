"""``aexp-relay-mcp connect`` / ``disconnect``: the shared ssh connection, by hand.

For clusters that need a password, MFA or a Duo push: ``connect`` opens the master with
the terminal attached (no BatchMode), once. It stays up until ``disconnect`` or until it
has been idle for AEXP_RELAY_CONNECT_PERSIST (12 h by default): the user asked for this
login, and each new one costs a prompt. Every relay call, in every session, reuses it.
``disconnect`` ends it, and every other master the relay started for the host.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from ...model.config import RelayConfig
from ...model.errors import RelayError
from ...model.targets import validate_host
from ...ssh.masters import ConnectionManager
from .surface import EXIT_OK, EXIT_UNREACHABLE, EXIT_USAGE, cli_surface


def _manager(verb: str, host_arg: str | None) -> tuple[ConnectionManager, str, str] | int:
    try:
        config = RelayConfig.from_env()
        if not (host_arg or config.ssh_host):
            print(
                f"aexp-relay-mcp {verb}: no ssh host given. Name it "
                f"(`aexp-relay-mcp {verb} mycluster`) or set AEXP_RELAY_SSH_HOST.",
                file=sys.stderr,
            )
            return EXIT_USAGE
        host = validate_host(host_arg or config.ssh_host)
    except RelayError as exc:
        print(f"aexp-relay-mcp {verb}: {exc.render(cli_surface())}", file=sys.stderr)
        return EXIT_USAGE
    manager = ConnectionManager(config)
    if not manager.enabled:
        print(
            "aexp-relay-mcp: connection reuse is off (AEXP_RELAY_CONTROL_PERSIST=no); "
            "unset it to share one login between calls.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    path, _, passed_over = asyncio.run(manager.safe_path(host))
    if passed_over is not None:  # never used, never removed: not the user's
        print(f"warning: {passed_over.warning(host, path)}", file=sys.stderr)
    if path is None:
        print(f"aexp-relay-mcp: no usable ControlPath for {host}.", file=sys.stderr)
        return EXIT_USAGE
    return manager, host, path


def connect(host_arg: str | None) -> int:
    found = _manager("connect", host_arg)
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
            f"Connected. Every relay call to {host} reuses this login until "
            f"`aexp-relay-mcp disconnect {host}`, or until it has been idle for "
            f"{manager.config.connect_persist} (socket {path})."
        )
        return EXIT_OK
    print(f"Could not open a shared connection to {host} (ssh exit {code}).", file=sys.stderr)
    return EXIT_UNREACHABLE


def disconnect(host_arg: str | None) -> int:
    found = _manager("disconnect", host_arg)
    if isinstance(found, int):
        return found
    manager, host, _ = found
    ended = asyncio.run(manager.disconnect(host))
    if ended:
        print(f"Closed {ended} shared connection(s) to {host}.")
    else:
        print(f"No shared connection to {host} is up.")
    return EXIT_OK
