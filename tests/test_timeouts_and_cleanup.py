"""Never hang, never leave a process behind: locally or on the login node."""

from __future__ import annotations

import asyncio
import os
import sys
import time

import pytest

from aexp_relay_mcp import RelayClient, RelayTimeoutError
from aexp_relay_mcp.sandbox import HANG_ALIAS, Sandbox
from aexp_relay_mcp.ssh.procs import process_table
from aexp_relay_mcp.ssh.runner import ProcessTimeout, run_process

from .conftest import processes_matching, wait_until

pytestmark = pytest.mark.anyio


@pytest.mark.sshd
@pytest.mark.parametrize(
    ("persist", "said"),
    [("10m", "starting the shared ssh connection hung"), ("no", "had not got the command running")],
)
async def test_timeout_in_a_hanging_proxycommand_kills_the_whole_local_group(
    sandbox: Sandbox, persist: str, said: str
) -> None:
    client = RelayClient(config=sandbox.config(control_persist=persist))
    started = time.monotonic()
    with pytest.raises(RelayTimeoutError) as err:
        await client.request("repo_status", ssh_host=HANG_ALIAS, timeout=1.5)
    assert time.monotonic() - started < 5
    assert said in err.value.message
    assert wait_until(lambda: processes_matching("sleep 600") == [], timeout=2)


@pytest.mark.sshd
async def test_timeout_mid_fetch_leaves_no_process_on_the_login_node(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 37; git-upload-pack")
    sandbox.push_from_other()
    before = sandbox.git(sandbox.cluster, "rev-parse", "origin/main")
    started = time.monotonic()
    with pytest.raises(RelayTimeoutError) as err:
        await client.request("fetch", timeout=2)
    assert time.monotonic() - started < 6
    assert "stopped there too" in err.value.message
    assert wait_until(lambda: processes_matching("sleep 37") == [], timeout=5), processes_matching(
        "sleep 37"
    )
    assert sandbox.git(sandbox.cluster, "rev-parse", "origin/main") == before
    # The repo is usable right away: no lock was left behind.
    sandbox.git(sandbox.cluster, "config", "--unset", "remote.origin.uploadpack")
    assert (await client.request("fetch")).op == "fetch"  # type: ignore[union-attr]


@pytest.mark.sshd
async def test_cancelled_call_kills_local_and_remote_processes(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 27; git-upload-pack")
    task = asyncio.ensure_future(client.request("fetch", timeout=30))
    assert await asyncio.to_thread(wait_until, lambda: processes_matching("sleep 27") != [], 10)
    task.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 4
    assert wait_until(lambda: processes_matching("sleep 27") == [], timeout=5)
    assert sandbox.processes(masters=False) == []
    last = sandbox.audit_log.read_text().splitlines()[-1]
    assert '"outcome": "cancelled"' in last


@pytest.mark.sshd
async def test_paused_sshd_times_out_with_partial_stderr(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.pause_sshd()
    try:
        with pytest.raises(RelayTimeoutError) as err:
            await client.request("repo_status", timeout=1.5)
        assert err.value.kind == "timeout"
        assert sandbox.processes(masters=False) == []
    finally:
        sandbox.resume_sshd()


@pytest.mark.sshd
async def test_verbose_ssh_goes_to_a_log_file_and_never_to_the_pipe(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config(ssh_verbose=True))
    result = await client.request("repo_status")
    assert result.op == "repo_status"
    logs = list((sandbox.root / "ssh-logs").iterdir())
    assert logs and "debug1" in logs[0].read_text()


# ------------------------------------------------------------------ runner, no ssh


async def test_runner_timeout_kills_grandchildren_that_hold_the_pipes() -> None:
    code = "import subprocess,time; subprocess.Popen(['sleep','29']); time.sleep(60)"
    argv = [sys.executable, "-c", code]
    started = time.monotonic()
    with pytest.raises(ProcessTimeout):
        await run_process(argv, timeout=0.5, output_cap=1024)
    assert time.monotonic() - started < 3
    assert wait_until(lambda: processes_matching("sleep 29") == [], timeout=2)


async def test_runner_caps_output_keeping_head_and_tail() -> None:
    script = "import sys; sys.stdout.write('H' + 'x' * 5_000_000 + 'TAIL')"
    result = await run_process([sys.executable, "-c", script], timeout=20, output_cap=100_000)
    assert result.stdout_truncated and result.stdout_bytes == 5_000_005
    assert result.stdout.startswith("H") and result.stdout.endswith("TAIL")
    assert len(result.stdout) < 200_000


async def test_runner_decodes_invalid_utf8_without_failing() -> None:
    script = "import sys; sys.stdout.buffer.write(b'ok \\xff\\xfe end')"
    result = await run_process([sys.executable, "-c", script], timeout=10, output_cap=1024)
    assert result.exit_code == 0 and result.stdout.startswith("ok ") and "end" in result.stdout


async def test_runner_gives_children_eof_on_stdin() -> None:
    script = "import sys; print(repr(sys.stdin.read()))"
    result = await run_process([sys.executable, "-c", script], timeout=5, output_cap=1024)
    assert result.stdout.strip() == "''"


async def test_runner_reports_nonzero_exit_without_raising() -> None:
    result = await run_process(["sh", "-c", "echo oops >&2; exit 7"], timeout=5, output_cap=1024)
    assert (result.exit_code, result.stderr.strip(), result.ok) == (7, "oops", False)


async def test_runner_cancel_reaps_the_child() -> None:
    task = asyncio.ensure_future(run_process(["sleep", "23"], timeout=30, output_cap=1024))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert processes_matching("sleep 23") == []
    # No zombie either: the child was reaped.
    assert wait_until(lambda: zombie_children() == [], timeout=2)


def zombie_children() -> list[int]:
    return [p.pid for p in process_table() if p.state == "Z" and p.ppid == os.getpid()]
