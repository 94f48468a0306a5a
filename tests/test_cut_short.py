"""Leave the checkout as it was: an op the relay cuts short is undone by its own script.

Each cut point is a slow part of a real git op (a hook, a smudge filter: what git-lfs or
a slow shared filesystem does), and each way of cutting is what users meet: the call's
timeout, a cancel from the client, the server stopped by a signal or by stdin closing,
and the server SIGKILLed (then the login node's own `timeout` is what cuts). Afterwards
the checkout is bit-identical to before (or exactly as after success, once git had
passed its point of no return), and whoever is still there is told which, with HEAD.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import anyio
import pytest

from aexp_relay_mcp import RelayClient, RelayTimeoutError, RemoteCommandError
from aexp_relay_mcp.adapters.selftest.stdio_driver import StdioServer
from aexp_relay_mcp.model.results import RepoStatus
from aexp_relay_mcp.sandbox import Sandbox

from .conftest import processes_matching, running_sandbox, snapshot, wait_until

pytestmark = [pytest.mark.sshd]


@dataclass(frozen=True)
class CutPoint:
    op: str
    tag: str  # what runs while the op is slow there
    state: str  # what the checkout must be after the cut
    prepare: Callable[[Sandbox], str]  # returns the upstream commit


def _diverged(sb: Sandbox) -> str:
    up = sb.push_from_other("upstream.txt", "theirs\n")
    sb.commit(sb.cluster, "local.txt", "mine\n", "local work")
    return up


def rebase_checkout(sb: Sandbox) -> str:
    up = _diverged(sb)
    sb.slow_hook("post-checkout", 41.31, "aexp-slow-hook")
    return up


def rebase_replay(sb: Sandbox) -> str:
    up = _diverged(sb)  # before the hook: the test's own commit must not wait on it
    sb.slow_hook("post-commit", 42.31, "aexp-slow-hook")
    return up


def fast_forward_checkout(sb: Sandbox) -> str:
    # In checkout order: B-new.txt (added) and README.md (changed) are written before the
    # first .dat file's smudge filter runs, and is cut.
    sb.slow_filter("*.dat", 43.31)
    sb.git(sb.other, "pull", "-q", "--ff-only", "origin", "main")
    for name, text in (("B-new.txt", "new\n"), ("README.md", "# changed\n"), ("a.dat", "a\n")):
        sb.write(sb.other / name, text)
    sb.git(sb.other, "add", "-A")
    sb.git(sb.other, "commit", "-q", "-m", "data")
    sb.git(sb.other, "push", "-q", "origin", "main")
    return sb.head(sb.other)


def post_merge(sb: Sandbox) -> str:
    up = sb.push_from_other("upstream.txt", "theirs\n")
    sb.slow_hook("post-merge", 44.31, "aexp-slow-hook")
    return up


CUT_POINTS = {
    "the rebase's checkout": CutPoint("rebase", "sleep 41.31", "as_before", rebase_checkout),
    "the replay of commits": CutPoint("rebase", "sleep 42.31", "as_before", rebase_replay),
    "a fast-forward's checkout": CutPoint(
        "pull", "sleep 43.31", "as_before", fast_forward_checkout
    ),
    "post-merge": CutPoint("pull", "sleep 44.31", "completed", post_merge),
}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as sb:
        yield sb


def expected_after(sb: Sandbox, point: CutPoint, before: dict[str, str], up: str) -> str:
    """The HEAD the checkout must have, checking that everything else is as it must be."""
    assert not (sb.cluster / ".git" / "rebase-merge").exists()
    assert not (sb.cluster / ".git" / "index.lock").exists()
    if point.state == "as_before":
        assert snapshot(sb, sb.cluster) == before
        return before["head"].strip()
    # completed: exactly what a successful fast-forward leaves
    assert sb.head(sb.cluster) == up
    assert sb.git(sb.cluster, "symbolic-ref", "HEAD").strip() == "refs/heads/main"
    assert sb.git(sb.cluster, "status", "--porcelain", "-uall") == before["status"]
    assert sb.git(sb.cluster, "diff", "--stat", up) == ""
    return up


def hook_runs(point: CutPoint) -> Callable[[], bool]:
    return lambda: bool(processes_matching(point.tag))


def audit(sb: Sandbox, op: str) -> list[dict[str, object]]:
    lines = [json.loads(x) for x in sb.audit_log.read_text().splitlines()]
    return [line for line in lines if line["op"] == op]


@pytest.mark.anyio
@pytest.mark.parametrize("where", CUT_POINTS)
async def test_a_timeout_at_each_cut_point_leaves_the_checkout_as_before_or_as_after(
    sandbox: Sandbox, where: str
) -> None:
    point = CUT_POINTS[where]
    up = point.prepare(sandbox)
    before = snapshot(sandbox, sandbox.cluster)
    client = RelayClient(config=sandbox.config())
    with pytest.raises(RelayTimeoutError) as err:
        await client.request(point.op, timeout=3)
    head = expected_after(sandbox, point, before, up)
    assert err.value.details["checkout"] == point.state
    assert err.value.details["head"] == head
    assert head[:12] in err.value.message
    assert not processes_matching(point.tag)
    assert sandbox.undo_reports() == {}, "the probe reads and removes the report"


@pytest.mark.parametrize("where", CUT_POINTS)
@pytest.mark.parametrize("how", ["cancel", "SIGINT", "stdin EOF", "SIGKILL"])
def test_a_cut_through_the_server_leaves_the_checkout_as_before_or_as_after(
    sandbox: Sandbox, where: str, how: str
) -> None:
    point = CUT_POINTS[where]
    up = point.prepare(sandbox)
    before = snapshot(sandbox, sandbox.cluster)
    server = StdioServer(sandbox)
    # After a SIGKILL only the login node's own time limit (timeout + 5 s) cuts the op.
    rid = server.start_call(f"airgapped_{point.op}", {"timeout": 2 if how == "SIGKILL" else 60})
    assert wait_until(hook_runs(point), 15), f"the op never reached {where}"
    if how == "cancel":
        server.notify("notifications/cancelled", {"requestId": rid, "reason": "user"})
    elif how == "SIGINT":
        server.proc.send_signal(signal.SIGINT)
    elif how == "stdin EOF":
        assert server.proc.stdin is not None
        server.proc.stdin.close()
    else:
        server.proc.kill()
    # Where the outcome goes: a server that is still there (a cancel; stdin closed, which
    # ends nothing at once) waits for the undo and writes it on the call's audit line. A
    # server stopped by a signal, or killed, leaves it to the undo's report in the repo.
    waits = how in ("cancel", "stdin EOF")
    if waits:
        assert wait_until(lambda: len(audit(sandbox, point.op)) == 2, 30), "no final audit line"
    else:
        assert wait_until(lambda: bool(sandbox.undo_reports()), 30), "no undo report"
    assert wait_until(lambda: not processes_matching(point.tag), 20), "the op outlived the cut"
    server.close()
    head = expected_after(sandbox, point, before, up)
    if waits:
        final = audit(sandbox, point.op)[1]
        assert final["outcome"] == ("cancelled" if how == "cancel" else "interrupted")
        assert (final["checkout"], final["head"]) == (point.state, head)
        assert sandbox.undo_reports() == {}
    else:
        (report,) = sandbox.undo_reports().values()
        assert f"state {point.state}\n" in report and f"head {head}\n" in report
        # ... and repo_status tells the next session (the audit says the call never ended)
        status = anyio.run(RelayClient(config=sandbox.config()).request, "repo_status")
        assert isinstance(status, RepoStatus)
        (cut,) = status.interrupted_ops
        assert (cut.op, cut.checkout, cut.head) == (point.op, point.state, head)
        assert cut.request_id == audit(sandbox, point.op)[0]["request_id"]


@pytest.mark.anyio
async def test_an_undo_that_fails_says_the_state_and_the_commands_that_restore_it(
    sandbox: Sandbox,
) -> None:
    point = CUT_POINTS["the rebase's checkout"]
    point.prepare(sandbox)
    before = snapshot(sandbox, sandbox.cluster)
    client = RelayClient(config=sandbox.config())
    lock = sandbox.cluster / ".git" / "index.lock"

    def lock_once_it_runs() -> None:
        wait_until(hook_runs(point), 15)
        sandbox.write(lock, "")  # another git process, as far as git can tell

    locker = threading.Thread(target=lock_once_it_runs)
    locker.start()
    with pytest.raises(RelayTimeoutError) as err:
        await client.request("rebase", timeout=3)
    locker.join()
    details = err.value.details
    assert details["checkout"] == "undo_failed"
    assert "undoing it failed" in err.value.message and "To restore it on" in err.value.message
    commands = details["restore_commands"]
    assert commands[0] == f"cd {sandbox.cluster}" and "git rebase --abort" in commands[1]
    assert "restore_commands" in err.value.hint
    # the commands do what they say, once the other git process is gone
    lock.unlink()
    shell = " && ".join(c for c in commands if not c.startswith("#"))
    subprocess.run(
        ["sh", "-c", shell],
        check=True,
        capture_output=True,
        env=sandbox.git_env(),
        user=sandbox.user.uid if sandbox.user.uid else None,
    )
    assert snapshot(sandbox, sandbox.cluster) == before


@pytest.mark.anyio
async def test_a_failed_fast_forward_puts_back_what_it_wrote_in_the_same_call(
    sandbox: Sandbox,
) -> None:
    """Not a cut: git itself stops half-way (its smudge filter dies, as git-lfs can) and
    the same undo runs before the script reports."""
    up = fast_forward_checkout(sandbox)
    before = snapshot(sandbox, sandbox.cluster)
    client = RelayClient(config=sandbox.config())

    def kill_the_filter() -> None:
        wait_until(lambda: bool(processes_matching("sleep 43.31")), 15)
        for pid, _ in processes_matching("sleep 43.31"):  # the filter's sh, and its sleep
            subprocess.run(["kill", "-KILL", str(pid)], check=False)

    killer = threading.Thread(target=kill_the_filter)
    killer.start()
    with pytest.raises(RemoteCommandError) as err:
        await client.request("pull", timeout=30)
    killer.join()
    assert err.value.kind == "checkout_filter_failed", err.value
    assert err.value.details["checkout"] == "as_before"
    assert "exactly as before" in err.value.message
    assert snapshot(sandbox, sandbox.cluster) == before
    assert sandbox.head(sandbox.cluster) != up
