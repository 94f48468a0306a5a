"""One SSH login per session: ControlMaster reuse, owned by the relay, counted in sshd's log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time

import pytest

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.model.results import RepoStatus
from aexp_relay_mcp.sandbox import HOST_ALIAS, Sandbox

from .conftest import calls_held_at_once, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]


async def test_twenty_sequential_ops_make_one_login(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config())
    before = sandbox.logins()
    for _ in range(20):
        await client.request("repo_status")
    assert sandbox.logins() - before == 1
    finals = [json.loads(x) for x in sandbox.audit_log.read_text().splitlines()]
    finals = [line for line in finals if line["outcome"] != "started"]
    assert len(finals) == 20 and all(line["multiplexed"] is True for line in finals)


async def test_concurrent_first_calls_make_one_login_not_eight(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config())
    before = sandbox.logins()
    results = await asyncio.gather(*(client.request("repo_status") for _ in range(8)))
    assert all(isinstance(r, RepoStatus) for r in results)
    assert sandbox.logins() - before == 1


@pytest.mark.parametrize("limit", [8, 20])
async def test_twenty_parallel_calls_never_fall_back_to_fresh_logins(
    sandbox: Sandbox, limit: int
) -> None:
    """sshd's MaxSessions is 10 here. Above it, a spawned ssh client silently falls back to
    a fresh login (on an MFA host, a prompt). The relay holds a session slot per call (8 by
    default) and, when the server refuses a session anyway, waits for one: even a limit of
    20 makes no second login, and every call succeeds."""
    client = RelayClient(config=sandbox.config(max_sessions=limit))
    # Each status holds its session for a second, so 20 calls really are open at once.
    results, logins = await calls_held_at_once(sandbox, client, 20, 1)
    assert all(isinstance(r, RepoStatus) for r in results)
    assert logins == 0


async def test_without_reuse_every_call_logs_in(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config(control_persist="no"))
    before = sandbox.logins()
    for _ in range(3):
        await client.request("repo_status")
    assert sandbox.logins() - before == 3


async def test_a_master_killed_between_calls_is_replaced(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config())
    await client.request("repo_status")
    masters = sandbox.processes(masters=True)
    assert len(masters) == 1
    os.kill(masters[0], signal.SIGKILL)
    assert wait_until(lambda: sandbox.processes(masters=True) == [], 3)
    before = sandbox.logins()
    for _ in range(3):
        assert isinstance(await client.request("repo_status"), RepoStatus)
    assert len(sandbox.processes(masters=True)) == 1
    assert sandbox.logins() - before <= 2  # at most one fallback call, then one new master


async def test_when_the_master_cannot_start_calls_connect_directly(sandbox: Sandbox) -> None:
    too_long = sandbox.root / ("d" * 120)
    client = RelayClient(config=sandbox.config(control_dir=str(too_long)))
    result = await client.request("repo_status")
    assert isinstance(result, RepoStatus)
    assert sandbox.processes(masters=True) == []
    assert '"multiplexed": false' in sandbox.audit_log.read_text()


async def test_a_control_path_from_the_user_ssh_config_is_honoured(sandbox: Sandbox) -> None:
    user_socket = sandbox.root / "user-cm"
    config = sandbox.ssh_dir / "ssh_config_user"
    config.write_text(
        f"Host {HOST_ALIAS}\n    ControlPath {user_socket}\n" + sandbox.ssh_config.read_text()
    )
    subprocess.run(
        ["ssh", "-F", str(config), "-fNM", "-o", "ControlPersist=60", HOST_ALIAS],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, timeout=20,
    )  # fmt: skip
    try:
        before = sandbox.logins()
        client = RelayClient(config=sandbox.config(ssh_config=str(config)))
        for _ in range(3):
            await client.request("repo_status")
        status = await client.check_connection()
        assert sandbox.logins() == before
        assert status.shared_connection and status.control_path == str(user_socket)
    finally:
        subprocess.run(
            ["ssh", "-F", str(config), "-O", "exit", HOST_ALIAS],
            stdin=subprocess.DEVNULL, capture_output=True, timeout=10,
        )  # fmt: skip


async def test_status_reports_the_shared_connection_and_its_age(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config())
    first = await client.check_connection()
    assert first.shared_connection is True and first.control_path
    await asyncio.sleep(1.1)
    second = await client.check_connection()
    assert second.shared_connection_age_s is not None and second.shared_connection_age_s >= 1
    off = RelayClient(config=sandbox.config(control_persist="no"))
    assert (await off.check_connection()).shared_connection is None


async def test_verbose_ssh_with_a_short_persist_never_holds_the_call_open(
    sandbox: Sandbox,
) -> None:
    client = RelayClient(config=sandbox.config(ssh_verbose=True, control_persist="5"))
    for _ in range(2):
        started = time.monotonic()
        assert isinstance(await client.request("repo_status"), RepoStatus)
        assert time.monotonic() - started < 2.5
