"""``aexp-relay-mcp --selftest``: the product end to end, through a real MCP stdio client.

It builds the sandbox (private sshd on 127.0.0.1, origin, the cluster clone, a stub
wandb), spawns ``aexp-relay-mcp serve`` as a subprocess, connects the SDK's client,
checks ``tools/list``, calls every tool, prints a table, and exits 0 only if all passed.
Without sshd it says so and runs the sweep through a local stand-in for the ssh hop,
labelled as such: it never claims to have exercised ssh when it did not.
``--realistic`` adds the sweep of ``realistic``; ``--live`` runs the read-only tools
against the configured host.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from ...model.config import ENV_VARS
from ...sandbox import Sandbox, sshd_available
from ..mcp.launch import server_command
from .realistic import realistic_sweep
from .sweep import CALL_TIMEOUT_S, Check, Sweep, live_sweep, print_table, sandbox_sweep


async def run_sweep(env: dict[str, str], body: Callable[[Sweep], Awaitable[None]]) -> list[Check]:
    command, args = server_command(search_path=False)
    params = StdioServerParameters(command=command, args=args, env=env)
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write, read_timeout_seconds=CALL_TIMEOUT_S) as session,
    ):
        await session.initialize()
        sweep = Sweep(session)
        await body(sweep)
        return sweep.checks


def _on_a_tcsh_account() -> list[Check]:
    """Every tool again, for an account whose login shell is tcsh with a noisy ~/.cshrc
    (root only: the account is one of its own)."""
    if os.geteuid() != 0:
        print("\nThe tcsh account needs root (an account of its own); skipped.", file=sys.stderr)
        return []
    with Sandbox(shell="tcsh", profile="noisy") as sb:
        checks = anyio.run(run_sweep, sb.env(), lambda sweep: sandbox_sweep(sweep, sb))
    print()
    print_table(
        "aexp-relay-mcp selftest --realistic: every tool again, for an account whose login "
        "shell is tcsh, with a ~/.cshrc that prints, loads modules and takes 0.3 s",
        checks,
    )
    return checks


def run_selftest(live: bool = False, realistic: bool = False) -> int:
    if live:
        env = {k: v for k, v in os.environ.items() if k in ENV_VARS}
        if not env.get("AEXP_RELAY_SSH_HOST") or not env.get("AEXP_RELAY_REMOTE_REPO"):
            print(
                "selftest --live needs AEXP_RELAY_SSH_HOST and AEXP_RELAY_REMOTE_REPO "
                "(run `aexp-relay-mcp init` first, or export them).",
                file=sys.stderr,
            )
            return 2
        checks = anyio.run(run_sweep, env, live_sweep)
        print_table(
            f"aexp-relay-mcp selftest --live: read-only tools against {env['AEXP_RELAY_SSH_HOST']}",
            checks,
        )
        return 0 if all(c.ok for c in checks) else 1

    standin = not sshd_available()
    if standin:
        print(
            "sshd (OpenSSH server) is not installed, so this selftest CANNOT exercise ssh.\n"
            "Install it for the real check: sudo apt-get install -y openssh-server "
            "(Debian/Ubuntu) or sudo dnf install -y openssh-server (Fedora/RHEL).\n"
            "Running the sweep through a LOCAL STAND-IN for the ssh hop instead.\n",
            file=sys.stderr,
        )
    with Sandbox(standin=standin) as sb:
        checks = anyio.run(run_sweep, sb.env(), lambda sweep: sandbox_sweep(sweep, sb))
        transport = (
            "LOCAL STAND-IN for ssh (sshd not installed; ssh was NOT exercised)"
            if standin
            else f"real OpenSSH, private sshd on 127.0.0.1:{sb.port}"
        )
        print_table(
            f"aexp-relay-mcp selftest: every MCP tool over stdio; transport: {transport}", checks
        )
    if realistic and not standin:
        with Sandbox(profile="noisy", gitconfig="power", bastion=True) as sb:
            more = anyio.run(realistic_sweep, sb)
        print()
        print_table(
            "aexp-relay-mcp selftest --realistic: a login shell that prints on stdout and "
            "stderr and takes 0.3 s, a power user's git config with chatty hooks, a bastion, "
            "three servers, a killed master, a rebase cut short, a Claude Code-style stop",
            more,
        )
        checks += more
        checks += _on_a_tcsh_account()
    elif realistic:
        print("--realistic needs sshd; skipped.", file=sys.stderr)
    return 0 if all(c.ok for c in checks) else 1
