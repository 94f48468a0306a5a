"""The transport: sessions asked of the ControlMaster directly (PROTOCOL.mux), with the
spawned ssh client as the fallback, and remote kills that wait only as long as needed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.model.results import RepoStatus
from aexp_relay_mcp.sandbox import HOST_ALIAS, Sandbox
from aexp_relay_mcp.ssh.mux import MasterUnavailable, SessionRefused, alive_check, run_session
from aexp_relay_mcp.ssh.remote_kill import KILL_DONE, build_kill_command

from .conftest import calls_held_at_once, running_sandbox, wait_until

pytestmark = [pytest.mark.anyio]


@pytest.fixture
def master(sandbox: Sandbox) -> Iterator[str]:
    """A ControlMaster for the sandbox host, started as a user would; its socket path."""
    path = str(sandbox.root / "cm-test")
    subprocess.run(
        ["ssh", "-F", str(sandbox.ssh_config), "-fNM", "-o", f"ControlPath={path}",
         "-o", "ControlPersist=120", HOST_ALIAS],
        check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, timeout=20,
    )  # fmt: skip
    yield path
    subprocess.run(
        ["ssh", "-F", str(sandbox.ssh_config), "-O", "exit", "-o", f"ControlPath={path}",
         HOST_ALIAS], capture_output=True, timeout=10,
    )  # fmt: skip


@pytest.mark.sshd
async def test_a_native_session_keeps_stdout_stderr_and_the_exit_status_apart(master: str) -> None:
    result = await run_session(
        master, "echo out; echo err >&2; exit 7", timeout=10, output_cap=1 << 20
    )
    assert (result.stdout, result.stderr, result.exit_code) == ("out\n", "err\n", 7)


@pytest.mark.sshd
async def test_a_native_session_caps_huge_output_keeping_head_and_tail(master: str) -> None:
    command = "printf H; head -c 3000000 /dev/zero | tr '\\000' x; printf TAIL"
    result = await run_session(master, command, timeout=30, output_cap=100_000)
    assert result.stdout_truncated and result.stdout_bytes == 3_000_005
    assert result.stdout.startswith("H") and result.stdout.endswith("TAIL")


@pytest.mark.sshd
async def test_a_native_session_gives_the_command_eof_on_stdin(master: str) -> None:
    result = await run_session(
        master, "if read x; then echo GOT; else echo EOF; fi", timeout=10, output_cap=4096
    )
    assert result.stdout == "EOF\n"


@pytest.mark.sshd
async def test_no_master_at_a_path_is_master_unavailable_and_stale_is_told_apart(
    sandbox: Sandbox,
) -> None:
    with pytest.raises(MasterUnavailable) as missing:
        await run_session(str(sandbox.root / "none"), "true", timeout=5, output_cap=1024)
    assert not missing.value.stale
    stale = sandbox.root / "stale"
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # a socket file nobody listens on: a master that was killed
    with pytest.raises(MasterUnavailable) as dead:
        await run_session(str(stale), "true", timeout=5, output_cap=1024)
    assert dead.value.stale
    assert await alive_check(str(stale)) is None


@pytest.fixture
def tight_sandbox() -> Iterator[Sandbox]:
    with running_sandbox(max_sessions=2) as sb:
        yield sb


@pytest.mark.sshd
async def test_a_session_the_server_refuses_is_retried_never_a_fresh_login(
    tight_sandbox: Sandbox,
) -> None:
    """sshd allows 2 sessions here; the relay is told 8. Refused sessions wait for a free
    one instead of logging in afresh (on an MFA host, a prompt)."""
    client = RelayClient(config=tight_sandbox.config(max_sessions=8))
    results, logins = await calls_held_at_once(tight_sandbox, client, 6, 0.5)
    assert all(isinstance(r, RepoStatus) for r in results)
    assert logins == 0


@pytest.mark.sshd
async def test_session_refused_is_what_the_master_says_above_max_sessions(
    tight_sandbox: Sandbox,
) -> None:
    client = RelayClient(config=tight_sandbox.config())
    await client.request("repo_status")
    path = await client.connections.control_path(HOST_ALIAS)
    assert path is not None
    holders = [
        asyncio.ensure_future(run_session(path, "sleep 2", timeout=10, output_cap=1024))
        for _ in range(2)
    ]
    await asyncio.sleep(0.5)
    with pytest.raises(SessionRefused):
        await run_session(path, "true", timeout=5, output_cap=1024)
    await asyncio.gather(*holders)


@pytest.mark.sshd
@pytest.mark.parametrize(("setting", "via"), [("native", "mux"), ("ssh", "ssh")])
async def test_both_ways_over_the_master_run_every_op(
    sandbox: Sandbox, setting: str, via: str
) -> None:
    client = RelayClient(config=sandbox.config(mux_client=setting))
    sandbox.commit(sandbox.cluster, "x.txt", "x\n", "x")
    for op in ("repo_status", "fetch", "pull", "push"):
        await client.request(op)
    finals = [json.loads(x) for x in sandbox.audit_log.read_text().splitlines()]
    finals = [x for x in finals if x["outcome"] != "started"]
    assert [x["outcome"] for x in finals] == ["ok"] * 4
    assert {x["via"] for x in finals} == {via}


@pytest.mark.sshd
async def test_a_master_gone_between_check_and_call_is_replaced_within_the_call(
    sandbox: Sandbox,
) -> None:
    client = RelayClient(config=sandbox.config())
    await client.request("repo_status")
    [pid] = sandbox.processes(masters=True)
    os.kill(pid, signal.SIGKILL)  # its socket file stays: stale
    assert wait_until(lambda: sandbox.processes(masters=True) == [], 3)
    assert isinstance(await client.request("repo_status"), RepoStatus)
    assert len(sandbox.processes(masters=True)) == 1


# ------------------------------------------------------------------ remote kill


def run_kill(pgid: int) -> tuple[str, float]:
    started = time.monotonic()
    out = subprocess.run(
        ["sh", "-c", build_kill_command(pgid)], capture_output=True, text=True, timeout=20
    ).stdout
    return out.strip(), time.monotonic() - started


def group(script: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    time.sleep(0.2)
    return proc


def test_the_remote_kill_returns_as_soon_as_the_group_is_gone() -> None:
    proc = group("sleep 30 & sleep 30 & wait")
    said, took = run_kill(proc.pid)
    proc.wait(timeout=5)
    assert said == f"{KILL_DONE} gone" and took < 1.0


def test_the_remote_kill_uses_kill_only_for_a_group_that_ignores_term() -> None:
    proc = group("trap '' TERM; sleep 30 & wait; sleep 30")
    said, took = run_kill(proc.pid)
    proc.wait(timeout=5)
    assert said == f"{KILL_DONE} killed" and took >= 1.5


def test_the_remote_kill_refuses_process_group_one() -> None:
    with pytest.raises(ValueError):
        build_kill_command(1)


@pytest.mark.sshd
async def test_a_master_our_client_cannot_talk_to_is_handed_to_a_spawned_ssh(
    sandbox: Sandbox,
) -> None:
    """A live socket whose master speaks another protocol version: ssh's client gets the
    call. This one talks to no client at all: then the relay logs in by itself, once, and
    says so (ssh's own client is never let fall back to a login behind the relay's back)."""
    import contextlib
    import socket
    import struct
    import threading

    client = RelayClient(config=sandbox.config())
    path = await client.connections.control_path(HOST_ALIAS)
    assert path is not None
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)

    def speak_version_3() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):  # the relay's liveness probe hangs up
                conn.sendall(struct.pack(">III", 8, 1, 3))  # HELLO, version 3

    threading.Thread(target=speak_version_3, daemon=True).start()
    try:
        result = await client.request("repo_status")
    finally:
        server.close()
    assert isinstance(result, RepoStatus) and result.branch == "main"
    final = json.loads(sandbox.audit_log.read_text().splitlines()[-1])
    assert final["via"] == "direct" and final["outcome"] == "ok"
    assert sandbox.logins() == 1


@pytest.mark.sshd
async def test_a_master_that_never_answers_does_not_hold_the_call(sandbox: Sandbox) -> None:
    """A stopped master accepts connections and never answers: the call connects directly
    within seconds instead of waiting out its timeout."""
    client = RelayClient(config=sandbox.config())
    await client.request("repo_status")
    [master] = sandbox.processes(masters=True)
    os.kill(master, signal.SIGSTOP)
    try:
        started = time.monotonic()
        result = await client.request("repo_status", timeout=30)
        assert isinstance(result, RepoStatus) and time.monotonic() - started < 10
    finally:
        os.kill(master, signal.SIGCONT)
    final = json.loads(sandbox.audit_log.read_text().splitlines()[-1])
    assert final["via"] == "direct"
