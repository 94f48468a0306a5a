"""How the command line names things and ends: verbs, flags, exit codes.

Kept apart from ``main`` so every verb's module can use it, and cheap to import:
``aexp-relay-mcp --help`` must not load pydantic.

Exit codes:

| code | meaning                                   |
|------|-------------------------------------------|
| 0    | ok                                        |
| 1    | the remote command failed                 |
| 2    | usage or validation error                 |
| 3    | the host is unreachable (relay down)      |
| 4    | timeout                                   |
| 5    | consent required                          |
| 130  | interrupted                               |
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ...model.errors import (
    ConsentRequiredError,
    RelayDownError,
    RelayError,
    RelayTimeoutError,
    RelayValidationError,
    Surface,
)

if TYPE_CHECKING:
    from ...model.results import ConnectionStatus

EXIT_OK = 0
EXIT_REMOTE_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_TIMEOUT = 4
EXIT_CONSENT = 5
EXIT_INTERRUPTED = 130

# verb -> (op, help). A test checks that every op in the registry has its verb.
OP_VERBS: dict[str, tuple[str, str]] = {
    "repo-status": ("repo_status", "branch, ahead/behind and changed files (read-only)"),
    "fetch": ("fetch", "git fetch --prune (default all remotes)"),
    "pull": ("pull", "git pull --ff-only; fails with 'diverged' instead of merging"),
    "rebase": ("rebase", "git pull --rebase; on conflict aborted, repo left as it was"),
    "push": ("push", "git push <remote> <branch>; never forced"),
    "wandb-sync": ("wandb_sync", "upload offline wandb runs; previews unless --approve"),
}


def verb_for(op: str) -> str:
    return "status" if op == "status" else op.replace("_", "-")


# How hints name arguments on the command line.
CLI_FLAGS = {
    "ssh_host": "--host",
    "remote_repo": "--repo",
    "timeout": "--timeout",
    "remote": "--remote",
    "branch": "--branch",
    "runs": "--run",
    "match": "--match",
    "after_run": "--after-run",
    "to_run": "--to-run",
    "limit": "--limit",
    "approve": "--approve",
}


def cli_command(op: str) -> str:
    return f"aexp-relay-mcp {verb_for(op)}"


def cli_surface() -> Surface:
    def flag(arg: str) -> str:
        return CLI_FLAGS.get(arg, arg)

    return Surface("cli", "command", cli_command, flag, flag)


def exit_code_for(exc: RelayError) -> int:
    if isinstance(exc, ConsentRequiredError):
        return EXIT_CONSENT
    if isinstance(exc, RelayValidationError):
        return EXIT_USAGE
    if isinstance(exc, RelayDownError):
        return EXIT_UNREACHABLE
    if isinstance(exc, RelayTimeoutError):
        return EXIT_TIMEOUT
    return EXIT_REMOTE_FAILED


def status_exit_code(status: ConnectionStatus) -> int:
    if not status.reachable:
        return EXIT_UNREACHABLE
    return EXIT_REMOTE_FAILED if status.problem else EXIT_OK
