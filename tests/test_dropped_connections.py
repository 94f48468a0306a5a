"""A dropped connection is routine: read-only calls run again (once, within their deadline,
one new login however many callers saw the drop), changing ops never do and say what became
of the checkout, and a drop is always called one, never `killed` or `unreachable`.

The drops are real: the shared master SIGKILLed (a laptop that slept, a `disconnect` in
another terminal), or the sshd process serving the connection killed (a login node that
restarts its sshd, a NAT that forgot the flow).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from aexp_relay_mcp import RelayClient, RelayDownError, RemoteCommandError
from aexp_relay_mcp.adapters.selftest.soak import soak
from aexp_relay_mcp.model.results import ConnectionStatus, FetchResult, RepoStatus, WandbPreview
from aexp_relay_mcp.sandbox import MFA_ALIAS, MFA_PASSWORD, Sandbox

from .conftest import processes_matching, running_sandbox, slow_status, snapshot, wait_until
from .test_login_nodes import connect_under_a_pty

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]

PATHS = [
    pytest.param("native", id="native-mux"),
    pytest.param("ssh", id="spawned-ssh"),
]


def kill_master(sb: Sandbox) -> int:
    masters = sb.processes(masters=True)
    for pid in masters:
        os.kill(pid, signal.SIGKILL)
    return len(masters)


DROPS: dict[str, Callable[[Sandbox], Any]] = {
    "master killed": kill_master,
    "sshd's session killed": lambda sb: sb.kill_sessions(),
}


async def drop_when(
    sb: Sandbox, ready: Callable[[], bool], how: str, *, after: float = 0.0
) -> None:
    """Drop the connection once ready() says the calls are under way on the login node
    (and ``after`` seconds more)."""
    for _ in range(400):
        if ready():
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(after)
    DROPS[how](sb)


def hook_runs(sb: Sandbox) -> bool:
    """The slow fsmonitor hook (conftest.slow_status) of this sandbox is running."""
    return processes_matching(str(sb.bin_dir / "slow-fsmonitor")) != []


def tag(sb: Sandbox, what: str) -> str:
    """A process name no other sandbox's test uses."""
    return f"aexp-{what}-{sb.root.name}"


async def warm(sb: Sandbox, **config: Any) -> RelayClient:
    """A client whose shared connection is up (its first call made it)."""
    client = RelayClient(config=sb.config(**config))
    await client.request("repo_status")
    return client


def audit(sb: Sandbox) -> list[dict[str, Any]]:
    return [json.loads(line) for line in sb.audit_log.read_text().splitlines()]


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with running_sandbox() as sb:
        yield sb


# ------------------------------------------------------------------ read-only calls


@pytest.mark.parametrize("how", list(DROPS))
@pytest.mark.parametrize("path", PATHS)
async def test_read_only_calls_cut_by_a_drop_succeed_with_one_new_login(
    sandbox: Sandbox, path: str, how: str
) -> None:
    sb = sandbox
    client = await warm(sb, mux_client=path)
    slow_status(sb, 1.5)  # repo_status and fetch hold their sessions
    sb.push_from_other()
    upstream = sb.git(sb.other, "rev-parse", "HEAD").strip()
    before = sb.logins()
    calls: list[Awaitable[Any]] = [
        client.request("repo_status"),
        client.request("fetch"),
        client.check_connection(),
        client.wandb_preview(),
    ]
    results = await asyncio.gather(
        *calls,
        drop_when(sb, lambda: hook_runs(sb), how),
        return_exceptions=True,
    )
    status, fetch, check, preview = results[:4]
    assert isinstance(status, RepoStatus) and status.head == sb.head(sb.cluster), status
    assert isinstance(fetch, FetchResult), fetch
    assert [u.new for u in fetch.updated_refs if u.ref == "origin/main"] == [upstream]
    assert isinstance(check, ConnectionStatus) and check.reachable and check.problem is None
    assert check.login_shell_ms is not None  # measured again over the new connection
    assert isinstance(preview, WandbPreview) and preview.run_count == 2
    # the ones cut said so, and ran again: each attempt in the audit, under one id
    cut = [r for r in (status, fetch) if any("dropped" in w for w in r.warnings)]
    assert cut == [status, fetch]
    lines = audit(sb)
    for result in cut:
        mine = [x["outcome"] for x in lines if x["request_id"] == result.request_id]
        assert mine == ["started", "retrying", "ok"], mine
    # one new login for every caller that saw the drop, and nothing left running
    assert sb.logins() - before == 1
    assert wait_until(lambda: not hook_runs(sb), 5)


async def test_a_drop_before_the_command_started_is_retried_and_the_first_run_ended(
    sandbox: Sandbox,
) -> None:
    """Cut while the login shell still read its rc file: no start marker came back, so the
    relay finds that run on the host by its marker and ends it before running again."""
    sb = sandbox
    client = await warm(sb)
    sb.account.delay_s = 1.43  # an rc file that takes 1.43 s before the command starts
    sb.set_profile("noisy")
    before = sb.logins()
    result, check, _ = await asyncio.gather(
        client.request("repo_status"),
        client.check_connection(),
        drop_when(sb, lambda: len(processes_matching("sleep 1.43")) >= 2, "master killed"),
    )
    assert isinstance(result, RepoStatus) and result.head == sb.head(sb.cluster)
    assert any("dropped" in w for w in result.warnings)
    assert check.reachable and check.problem is None and check.branch == "main"
    assert any("dropped" in w for w in check.warnings)
    assert check.login_shell_ms is not None and check.login_shell_ms > 1000  # the rc file
    assert sb.logins() - before == 1


async def test_a_drop_with_no_time_left_for_a_second_run_is_connection_dropped(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    client = await warm(sb)
    slow_status(sb, 2.0)
    started = time.monotonic()
    outcome, _ = await asyncio.gather(
        client.request("repo_status", timeout=1.5),
        drop_when(sb, lambda: hook_runs(sb), "master killed", after=0.7),
        return_exceptions=True,
    )
    assert isinstance(outcome, RelayDownError) and outcome.kind == "connection_dropped"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("path", PATHS)
async def test_a_command_killed_on_the_host_is_killed_not_a_drop(
    sandbox: Sandbox, path: str
) -> None:
    """The connection is fine and the command died of a signal there (an admin's kill,
    the OOM killer): that is `killed`, and it is not run again."""
    sb = sandbox
    client = await warm(sb, mux_client=path)
    slow_status(sb, 5)

    def kill_the_command() -> None:
        for pid, cmdline in processes_matching("timeout -k"):
            if "@AEXP-" in cmdline and str(sb.cluster) in cmdline:  # this test's command
                os.killpg(pid, signal.SIGKILL)

    outcome, _ = await asyncio.gather(
        client.request("repo_status"),
        asyncio.to_thread(
            lambda: (wait_until(lambda: hook_runs(sb), 10),
                     kill_the_command()),
        ),
        return_exceptions=True,
    )  # fmt: skip
    assert isinstance(outcome, RemoteCommandError) and outcome.kind == "killed", outcome
    assert len(sb.processes(masters=True)) == 1  # the connection lives on


@pytest.mark.realism
async def test_a_drop_on_an_mfa_host_is_not_retried_and_says_to_connect() -> None:
    if os.geteuid() != 0:
        pytest.skip("the MFA stand-in checks a password, which needs root")
    with running_sandbox(mfa=True) as sb:
        assert sb.mfa is not None
        code, terminal = await asyncio.to_thread(connect_under_a_pty, sb, MFA_ALIAS, MFA_PASSWORD)
        assert code == 0, terminal
        client = await warm(sb, ssh_host=MFA_ALIAS)
        slow_status(sb, 1.5)
        started = time.monotonic()
        outcome, _ = await asyncio.gather(
            client.request("repo_status"),
            drop_when(sb, lambda: hook_runs(sb), "master killed"),
            return_exceptions=True,
        )
        assert isinstance(outcome, RelayDownError) and outcome.kind == "connection_dropped"
        assert "aexp-relay-mcp connect" in outcome.hint and "needs you" in outcome.message
        assert time.monotonic() - started < 5
        assert sb.mfa.logins("password") == 1  # no new login was attempted with a prompt


# ------------------------------------------------------------------ changing ops


@pytest.mark.parametrize("how", list(DROPS))
@pytest.mark.parametrize("end", ["ended there", "ran on to its end"])
async def test_a_pull_cut_by_a_drop_says_the_checkout_is_as_after_it_finished(
    sandbox: Sandbox, how: str, end: str
) -> None:
    """The fast-forward had landed; its post-merge hook was still running. The relay ends
    the pull on the host, or finds that it ran on to its end with nobody to tell (its
    hook returns the moment the connection is gone, before the relay is back)."""
    sb = sandbox
    client = await warm(sb)
    upstream = sb.push_from_other()
    flag = sb.root / "dropped"
    waiting = tag(sb, "post-merge")
    if end == "ended there":
        sb.slow_hook("post-merge", 3, waiting)
    else:
        hook = sb.hooks_dir / "post-merge"
        sb.write(hook, f"#!/bin/sh\nexec sh -c 'while [ ! -e {flag} ]; do sleep 0.01; done' "
                       f"{waiting}\n")  # fmt: skip
        hook.chmod(0o755)
        sb.account.delay_s = 0.5  # the relay's next session takes a while to start
        sb.set_profile("noisy")

    async def drop() -> None:
        await drop_when(sb, lambda: processes_matching(waiting) != [], how)
        flag.touch()

    outcome, _ = await asyncio.gather(client.request("pull"), drop(), return_exceptions=True)
    assert isinstance(outcome, RelayDownError) and outcome.kind == "connection_dropped", outcome
    assert outcome.details["checkout"] == "completed"
    assert outcome.details["head"] == upstream == sb.head(sb.cluster)
    assert "as after a successful pull" in outcome.message
    assert not sb.undo_reports()  # read and removed


@pytest.mark.parametrize("how", list(DROPS))
async def test_a_rebase_cut_by_a_drop_is_undone_and_says_so(sandbox: Sandbox, how: str) -> None:
    sb = sandbox
    client = await warm(sb)
    sb.push_from_other()
    sb.commit(sb.cluster, "local.txt", "mine\n", "local work")
    before = snapshot(sb, sb.cluster)
    waiting = tag(sb, "checkout")
    sb.slow_hook("post-checkout", 3, waiting)  # the rebase's checkout
    outcome, _ = await asyncio.gather(
        client.request("rebase"),
        drop_when(sb, lambda: processes_matching(waiting) != [], how),
        return_exceptions=True,
    )
    assert isinstance(outcome, RelayDownError) and outcome.kind == "connection_dropped", outcome
    assert outcome.details["checkout"] == "as_before" and outcome.details["restored"]
    assert outcome.details["head"] == before["head"].strip()
    assert snapshot(sb, sb.cluster) == before
    # never run again: one started line, one final
    mine = [x["outcome"] for x in audit(sb) if x["request_id"] == outcome.request_id]
    assert mine == ["started", "unreachable"]


@pytest.mark.parametrize("landed", [True, False], ids=["landed", "not-landed"])
async def test_a_push_cut_by_a_drop_says_whether_it_landed(sandbox: Sandbox, landed: bool) -> None:
    sb = sandbox
    client = await warm(sb)
    mine = sb.commit(sb.cluster, "x.txt", "x\n", "to push")
    old = sb.origin_refs()["refs/heads/main"]
    # origin's post-receive runs after the ref moved; the local pre-push before it does
    where = sb.origin / "hooks" / "post-receive" if landed else sb.hooks_dir / "pre-push"
    waiting = tag(sb, "push")
    sb.write(where, f"#!/bin/sh\ncat >/dev/null\nexec sh -c 'sleep 4' {waiting}\n")
    where.chmod(0o755)
    outcome, _ = await asyncio.gather(
        client.request("push"),
        drop_when(sb, lambda: processes_matching(waiting) != [], "master killed"),
        return_exceptions=True,
    )
    assert isinstance(outcome, RelayDownError) and outcome.kind == "connection_dropped", outcome
    assert outcome.details["push_landed"] is landed
    assert outcome.details["local_head"] == mine
    assert outcome.details["remote_head"] == (mine if landed else old)
    assert sb.origin_refs()["refs/heads/main"] == (mine if landed else old)
    assert ("had landed" if landed else "had not landed") in outcome.message


async def test_an_upload_cut_by_a_drop_says_which_runs_went_up_and_how_to_continue(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    client = await warm(sb)
    sb.write(sb.wandb_log.with_name(sb.wandb_log.name + ".delay"), "1")
    done = sb.wandb_log.with_name(sb.wandb_log.name + ".done")
    outcome, _ = await asyncio.gather(
        client.request("wandb_sync", approve=True),
        drop_when(sb, lambda: done.exists(), "master killed"),  # the first run is up
        return_exceptions=True,
    )
    assert isinstance(outcome, RelayDownError) and outcome.kind == "connection_dropped", outcome
    d = outcome.details
    assert (d["approved_count"], d["uploaded_count"], d["left_count"]) == (2, 1, 1)
    assert d["uploaded"] == [done.read_text().split()[1].rsplit("/", 1)[-1]]
    assert d["continue_with"]["approve"] is True
    resumed = await client.request("wandb_sync", {k: v for k, v in d["continue_with"].items()
                                                  if k != "approve"}, approve=True)  # fmt: skip
    assert resumed.synced == d["left"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ under load


@pytest.mark.realism
async def test_a_soak_with_the_master_killed_under_load_fails_no_read_only_call(
    sandbox: Sandbox,
) -> None:
    """Three servers, eight callers each, every read-only tool, the master SIGKILLed every
    4 s (`benchmarks/bench_soak.py` runs it for longer and prints the figures)."""
    slow_status(sandbox, 0.1)  # calls in flight whenever the master dies
    figures = await soak(sandbox, seconds=12, kill_every=4)
    assert figures.failed == 0, figures.summary()
    assert figures.kills >= 2 and figures.calls > 30, figures.summary()
    # every drop was a real one (the next call logged in again), and cost one login, for
    # all three servers together
    assert figures.logins == figures.kills, figures.summary()
