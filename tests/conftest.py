"""Shared fixtures: a real sandbox (private sshd on 127.0.0.1, bare origin, clones)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.sandbox import Sandbox, sshd_available
from aexp_relay_mcp.ssh.procs import process_table

REQUIRE_SSHD = os.environ.get("AEXP_RELAY_REQUIRE_SSHD") == "1"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def need_sshd() -> None:
    if sshd_available():
        return
    reason = (
        "OpenSSH server (/usr/sbin/sshd) is not installed: the real-ssh tests cannot run. "
        "Install it with `apt-get install -y openssh-server`."
    )
    if REQUIRE_SSHD:
        pytest.fail(f"AEXP_RELAY_REQUIRE_SSHD=1 but {reason}")
    pytest.skip(reason)


# Login nodes for tests that must hold on all of them: a clean account; one as users have
# them (a noisy, slow login shell and a power user's git config with chatty hooks); and
# accounts whose login shell is tcsh or fish, with noisy rc files of their own.
BOTH_PROFILES = [
    pytest.param({"profile": "clean"}, id="clean"),
    pytest.param(
        {"profile": "noisy", "gitconfig": "power"}, id="noisy+power", marks=pytest.mark.realism
    ),
    pytest.param({"profile": "noisy", "shell": "tcsh"}, id="tcsh", marks=pytest.mark.realism),
    pytest.param({"profile": "noisy", "shell": "fish"}, id="fish", marks=pytest.mark.realism),
]


def need_shell(shell: str) -> None:
    """An account whose login shell is ``shell``: root, and the shell installed."""
    if shell == "bash":
        return
    if os.geteuid() != 0:
        pytest.skip(f"a {shell} login shell needs an account of its own, which needs root")
    if shutil.which(shell, path="/bin:/usr/bin:/usr/local/bin:/usr/sbin:/sbin") is None:
        reason = f"the login shell {shell} is not installed (`apt-get install -y {shell}`)"
        if REQUIRE_SSHD:
            pytest.fail(f"AEXP_RELAY_REQUIRE_SSHD=1 but {reason}")
        pytest.skip(reason)


@contextlib.contextmanager
def running_sandbox(**options: Any) -> Iterator[Sandbox]:
    """A sandbox with these options (see ``Sandbox``), or a skip when sshd (or the login
    shell it asks for) is missing."""
    need_sshd()
    need_shell(options.get("shell", "bash"))
    with Sandbox(**options) as sb:
        yield sb


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    """A fresh sandbox per test: mutating tests never see each other's commits."""
    with running_sandbox() as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> RelayClient:
    return RelayClient(config=sandbox.config())


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.1) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def processes_matching(text: str) -> list[tuple[int, str]]:
    """Live processes whose command line contains text (reads /proc)."""
    return [
        (p.pid, p.cmdline)
        for p in process_table()
        if p.pid != os.getpid() and p.state != "Z" and text in p.cmdline
    ]


def snapshot(sb: Sandbox, repo: Path) -> dict[str, str]:
    """Everything that must not change when an op fails: HEAD, refs, index, worktree, stash."""
    return {
        "head": sb.git(repo, "rev-parse", "HEAD"),
        "symbolic": sb.git(repo, "symbolic-ref", "-q", "HEAD", check=False),
        "refs": sb.git(
            repo, "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads", "refs/tags"
        ),
        "index": sb.git(repo, "ls-files", "-s"),
        "status": sb.git(repo, "--no-optional-locks", "status", "--porcelain=v1", "-uall"),
        "diff": sb.git(repo, "diff"),
        "stash": sb.git(repo, "stash", "list"),
        "worktree": "\n".join(
            f"{p.relative_to(repo)}:{p.read_bytes().hex()}"
            for p in sorted(repo.rglob("*"))
            if p.is_file() and ".git" not in p.relative_to(repo).parts
        ),
    }


async def calls_held_at_once(
    sb: Sandbox, client: RelayClient, calls: int, hold_s: float
) -> tuple[list[Any], int]:
    """``calls`` repo_status calls at once, each holding its session ``hold_s`` seconds
    (after a first call that starts the master): their results, and how many logins they
    made."""
    await client.request("repo_status")
    slow_status(sb, hold_s)
    before = sb.logins()
    results = await asyncio.gather(*(client.request("repo_status") for _ in range(calls)))
    return list(results), sb.logins() - before


def slow_status(sb: Sandbox, seconds: float) -> None:
    """Make every `git status` in the cluster checkout hold its session for a while (a slow
    fsmonitor hook), so concurrent calls really are open at once."""
    hook = sb.bin_dir / "slow-fsmonitor"
    sb.write(hook, f"#!/bin/sh\nsleep {seconds}\nexit 1\n")
    hook.chmod(0o755)
    sb.git(sb.cluster, "config", "core.fsmonitor", str(hook))
