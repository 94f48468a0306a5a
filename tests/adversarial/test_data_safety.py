"""Data safety, every mutating op, through the real MCP server over stdio.

Before each op: a snapshot of the checkout (HEAD, branch refs, index, worktree, stash).
After a failure it must be identical; after a success, changed exactly as intended.
Nothing committed may ever be lost.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from aexp_relay_mcp.sandbox import Sandbox

from ..conftest import processes_matching, snapshot, wait_until
from ..mcp_helpers import data, mcp_session

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]


def all_commits(sb: Sandbox) -> set[str]:
    return set(sb.git(sb.cluster, "rev-list", "--all").split())


def no_locks(sb: Sandbox) -> bool:
    return not any(p.name.endswith(".lock") for p in (sb.cluster / ".git").rglob("*"))


def diverged(sb: Sandbox) -> None:
    sb.push_from_other()
    sb.commit(sb.cluster, "local.txt", "mine\n", "local commit")


def overwrite(sb: Sandbox) -> None:
    sb.push_from_other("train.py", "print('upstream')\n")
    sb.write(sb.cluster / "train.py", "print('uncommitted edit')\n")


def conflict(sb: Sandbox) -> None:
    sb.push_from_other("train.py", "print('theirs')\n")
    sb.commit(sb.cluster, "train.py", "print('mine')\n", "mine")


def dirty(sb: Sandbox) -> None:
    sb.push_from_other()
    sb.write(sb.cluster / "README.md", "uncommitted\n")


def protected(sb: Sandbox) -> None:
    hook = sb.origin / "hooks" / "pre-receive"
    sb.write(hook, "#!/bin/sh\necho 'refusing: main is protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    sb.commit(sb.cluster, "x.txt", "x\n", "x")


def stash_and_untracked(sb: Sandbox) -> None:
    """Extra state that must survive: a stash entry and an untracked file."""
    sb.write(sb.cluster / "README.md", "stashed work\n")
    sb.git(sb.cluster, "stash", "push", "-q", "-m", "keep me")
    sb.write(sb.cluster / "notes.txt", "untracked notes\n")


FAILURES: list[tuple[str, Callable[[Sandbox], None], str, dict[str, Any], str]] = [
    ("pull on diverged branches", diverged, "airgapped_pull", {}, "diverged"),
    ("pull over local changes", overwrite, "airgapped_pull", {}, "dirty_worktree"),
    ("rebase with a conflict", conflict, "airgapped_rebase", {}, "conflict"),
    ("rebase with a dirty worktree", dirty, "airgapped_rebase", {}, "dirty_worktree"),
    ("push rejected as non-fast-forward", diverged, "airgapped_push", {}, "non_fast_forward"),
    ("push to a protected ref", protected, "airgapped_push", {}, "push_rejected"),
    ("wandb sync without consent", lambda sb: None, "airgapped_wandb_sync", {}, "consent_required"),
]


@pytest.mark.parametrize(
    ("setup", "tool", "args", "kind"),
    [f[1:] for f in FAILURES],
    ids=[f[0] for f in FAILURES],
)
async def test_a_failed_op_leaves_the_repo_exactly_as_it_was(
    sandbox: Sandbox, setup: Callable[[Sandbox], None], tool: str, args: dict[str, Any], kind: str
) -> None:
    stash_and_untracked(sandbox)
    setup(sandbox)
    before, commits = snapshot(sandbox, sandbox.cluster), all_commits(sandbox)
    origin = sandbox.origin_refs()
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool(tool, args))
    assert err["kind"] == kind, err
    assert snapshot(sandbox, sandbox.cluster) == before
    assert all_commits(sandbox) >= commits
    assert sandbox.origin_refs() == origin
    assert no_locks(sandbox)
    assert not sandbox.wandb_log.exists()


async def test_successful_ops_change_exactly_what_they_should(sandbox: Sandbox) -> None:
    stash_and_untracked(sandbox)
    stash = sandbox.git(sandbox.cluster, "stash", "list")
    async with mcp_session(sandbox) as s:
        up = sandbox.push_from_other()
        result = data(await s.call_tool("airgapped_pull", {}))
        assert result["new_head"] == up == sandbox.head(sandbox.cluster)
        assert (sandbox.cluster / "upstream.txt").read_text() == "upstream\n"
        mine = sandbox.commit(sandbox.cluster, "mine.txt", "mine\n", "my work")
        patch = sandbox.git(sandbox.cluster, "show", "--format=", mine)
        up2 = sandbox.push_from_other("up2.txt", "up2\n")
        data(await s.call_tool("airgapped_rebase", {}))
        assert sandbox.git(sandbox.cluster, "rev-parse", "HEAD~1").strip() == up2
        assert sandbox.git(sandbox.cluster, "show", "--format=", "HEAD") == patch
        data(await s.call_tool("airgapped_push", {}))
        assert sandbox.origin_refs()["refs/heads/main"] == sandbox.head(sandbox.cluster)
    assert sandbox.git(sandbox.cluster, "stash", "list") == stash
    assert (sandbox.cluster / "notes.txt").read_text() == "untracked notes\n"


async def test_connection_killed_mid_fetch_ends_that_run_and_fetches_again_over_a_new_one(
    sandbox: Sandbox,
) -> None:
    """A direct connection (no shared master) killed mid-fetch: the first run is ended on
    the login node, the fetch runs again over a new connection, and the checkout itself is
    never touched."""
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 53; git-upload-pack")
    upstream = sandbox.push_from_other()
    before = snapshot(sandbox, sandbox.cluster)

    def killer() -> None:
        wait_until(lambda: processes_matching("sleep 53") != [], 10)
        time.sleep(0.3)
        sandbox.git(sandbox.cluster, "config", "--unset", "remote.origin.uploadpack")
        sandbox.kill_sessions()

    thread = threading.Thread(target=killer)
    thread.start()
    async with mcp_session(sandbox, {"AEXP_RELAY_CONTROL_PERSIST": "no"}) as s:
        result = data(await s.call_tool("airgapped_fetch", {"timeout": 20}))
    thread.join()
    assert [u["new"] for u in result["updated_refs"] if u["ref"] == "origin/main"] == [upstream]
    assert any("dropped" in w for w in result["warnings"]), result
    assert await anyio.to_thread.run_sync(
        lambda: wait_until(lambda: processes_matching("sleep 53") == [], 8)
    )
    assert snapshot(sandbox, sandbox.cluster) == before
    assert no_locks(sandbox)


async def test_timeout_mid_fetch_changes_nothing_and_leaves_no_lock(sandbox: Sandbox) -> None:
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 59; git-upload-pack")
    sandbox.push_from_other()
    before = snapshot(sandbox, sandbox.cluster)
    tracking = sandbox.git(sandbox.cluster, "rev-parse", "origin/main")
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool("airgapped_fetch", {"timeout": 2}))
        assert err["kind"] == "timeout"
        assert await anyio.to_thread.run_sync(
            lambda: wait_until(lambda: processes_matching("sleep 59") == [], 6)
        )
        assert snapshot(sandbox, sandbox.cluster) == before
        assert sandbox.git(sandbox.cluster, "rev-parse", "origin/main") == tracking
        assert no_locks(sandbox)
        sandbox.git(sandbox.cluster, "config", "--unset", "remote.origin.uploadpack")
        assert data(await s.call_tool("airgapped_fetch", {}))["updated_refs"]
