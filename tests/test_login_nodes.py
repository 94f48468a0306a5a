"""Real login nodes: noisy and slow shells, shared logins across servers, foreign-owned
checkouts, wandb runs outside the repo, bastions and MFA."""

from __future__ import annotations

import asyncio
import os
import pty
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from aexp_relay_mcp import RelayClient, RelayDownError, RelayValidationError, RemoteCommandError
from aexp_relay_mcp.adapters.selftest.realistic import session_calls
from aexp_relay_mcp.model.config import RelayConfig
from aexp_relay_mcp.model.results import RepoStatus, WandbSyncResult
from aexp_relay_mcp.remote.ops import OPS, NoArgs
from aexp_relay_mcp.remote.output import parse_script_output
from aexp_relay_mcp.remote.script import Script, build_remote_command, step
from aexp_relay_mcp.sandbox import JUMP_ALIAS, MFA_ALIAS, MFA_PASSWORD, Sandbox
from aexp_relay_mcp.ssh.masters import ConnectionManager

from .conftest import processes_matching, running_sandbox, wait_until

pytestmark = [pytest.mark.anyio]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (another user, a password)")
NONCE = "feedfacecafe0001"


# ------------------------------------------------------------------ output a login shell prints


def run_on_a_noisy_shell(body: Script) -> subprocess.CompletedProcess[str]:
    """What sshd does: the login shell reads its rc file (which prints), then our command."""
    noise = (
        "echo 'Welcome to login1'; echo 'module: git loaded' >&2; "
        f"echo '@AEXP-{NONCE}@ end status 0'; "  # the real nonce, printed before our start
        "echo '@AEXP-0000000000000000@ begin head'; "
    )
    command = build_remote_command(body, "/", NONCE, timeout=30, grace=1)
    return subprocess.run(["sh", "-c", noise + command], capture_output=True, text=True, timeout=30)


def test_what_a_login_shell_prints_before_our_command_never_reaches_a_parser() -> None:
    proc = run_on_a_noisy_shell(Script(step("status", "printf", "%s\\n", "# branch.oid abc")))
    out = parse_script_output(proc.stdout, proc.stderr, NONCE)
    section = out.require("status")
    assert section.stdout == "# branch.oid abc\n" and section.exit_code == 0
    assert out.shell_stdout.startswith("Welcome to login1")
    assert "module: git loaded" in out.shell_stderr
    assert "Welcome" not in out.stdout and "module" not in out.stderr


def test_output_between_steps_is_ignored() -> None:
    body = Script("echo stray; " + step("one", "echo", "1") + "; echo stray2 >&2")
    out = parse_script_output(*_streams(body), NONCE)
    assert out.require("one").stdout == "1\n" and list(out.sections) == ["one"]


def _streams(body: Script) -> tuple[str, str]:
    proc = run_on_a_noisy_shell(body)
    return proc.stdout, proc.stderr


@pytest.mark.parametrize("op", ["repo_status", "fetch", "pull", "rebase", "push"])
def test_a_missing_section_is_unparseable_output_never_a_null(op: str) -> None:
    from aexp_relay_mcp.relay.diagnose import unparseable
    from aexp_relay_mcp.remote.output import UnparseableOutput

    proc = run_on_a_noisy_shell(Script("true"))
    out = parse_script_output(proc.stdout, proc.stderr, NONCE)
    spec = OPS[op]
    with pytest.raises(UnparseableOutput) as err:
        spec.parse(out, spec.args_model.model_validate({}) if op != "repo_status" else NoArgs())
    error = unparseable(out, str(err.value))
    assert error.kind == "unparseable_output" and "repo_status" in error.hint
    assert "Welcome to login1" in error.stderr_tail  # the raw tail shows what came back


@pytest.mark.sshd
@pytest.mark.realism
async def test_status_says_the_login_shell_prints_and_what_it_costs() -> None:
    with running_sandbox(profile="noisy") as sb:
        noisy = await RelayClient(config=sb.config()).check_connection()
        sb.set_profile("clean")
        clean = await RelayClient(config=sb.config()).check_connection()
    assert noisy.reachable and noisy.branch == "main" and noisy.problem is None
    assert noisy.login_shell_output == "both"
    assert noisy.login_shell_first_line is not None and "=====" in noisy.login_shell_first_line
    assert noisy.login_shell_ms is not None and noisy.login_shell_ms >= 200
    assert len(noisy.warnings) == 2 and "case $- in *i*)" in noisy.warnings[0]
    assert "ms to start" in noisy.warnings[1]
    assert clean.login_shell_output is None and clean.warnings == []
    assert clean.login_shell_ms is not None and clean.login_shell_ms < 150


# ------------------------------------------------------------------ checkouts git refuses

# Every op, with the arguments that take each of its code paths (named remotes included:
# their guard once read a silent `git config` failure as "no such remote").
GIT_CALLS = [
    ("repo_status", {}),
    ("fetch", {}),
    ("fetch", {"remote": "origin"}),
    ("pull", {}),
    ("rebase", {}),
    ("push", {}),
    ("push", {"remote": "origin", "branch": "main"}),
]


@ROOT_ONLY
@pytest.mark.sshd
@pytest.mark.parametrize(("op", "args"), GIT_CALLS)
async def test_in_a_checkout_owned_by_another_user_every_op_says_dubious_ownership(
    sandbox: Sandbox, op: str, args: dict[str, str]
) -> None:
    foreign = sandbox.foreign_clone()
    client = RelayClient(config=sandbox.config(remote_repo=str(foreign)))
    with pytest.raises(RemoteCommandError) as err:
        await client.request(op, args)
    assert err.value.kind == "dubious_ownership", err.value
    assert "safe.directory" in err.value.hint


@ROOT_ONLY
@pytest.mark.sshd
async def test_status_and_wandb_in_a_foreign_owned_checkout(sandbox: Sandbox) -> None:
    """status names the problem; wandb runs no git, so its preview still works there."""
    foreign = sandbox.foreign_clone()
    client = RelayClient(config=sandbox.config(remote_repo=str(foreign)))
    status = await client.check_connection()
    assert status.reachable and status.problem == "dubious_ownership"
    assert "safe.directory" in status.hint
    preview = await client.wandb_preview()
    assert [r.name for r in preview.runs] == ["offline-run-20260101_120000-run0"]


@pytest.mark.sshd
@pytest.mark.parametrize(("op", "args"), GIT_CALLS)
async def test_in_a_directory_that_is_no_checkout_every_op_says_not_a_repo(
    sandbox: Sandbox, op: str, args: dict[str, str]
) -> None:
    client = RelayClient(config=sandbox.config(remote_repo=str(sandbox.bin_dir)))
    with pytest.raises(RemoteCommandError) as err:
        await client.request(op, args)
    assert err.value.kind == "not_a_repo", err.value


# ------------------------------------------------------------------ wandb runs elsewhere


@pytest.mark.sshd
@pytest.mark.parametrize("where", ["absolute", "home"])
async def test_runs_in_a_wandb_dir_outside_the_repo_are_previewed_and_synced(
    sandbox: Sandbox, where: str
) -> None:
    from aexp_relay_mcp.sandbox.wandb_stub import make_runs

    scratch = sandbox.account.home / "scratch" / "wandb"
    names = make_runs(scratch, 2, sandbox.repos)
    sandbox.repos.own(sandbox.account.home)
    setting = str(scratch) if where == "absolute" else "~/scratch/wandb"
    client = RelayClient(config=sandbox.config(wandb_dir=setting))
    preview = await client.wandb_preview()
    assert [r.name for r in preview.runs] == names[:1]  # the second is already synced
    assert preview.wandb_dir == setting and preview.wandb_dir_exists
    result = await client.request("wandb_sync", approve=True)
    assert isinstance(result, WandbSyncResult) and result.synced == names[:1]
    assert sandbox.wandb_log.read_text().split() == ["sync", f"{scratch}/{names[0]}"]
    assert (scratch / names[0] / "run-run0.wandb.synced").exists()


@pytest.mark.sshd
async def test_a_run_is_synced_only_with_its_own_wandb_synced_marker(sandbox: Sandbox) -> None:
    run0 = sandbox.cluster / "wandb" / "offline-run-20260101_120000-run0"
    sandbox.write(run0 / "notes.synced", "")  # not run-run0.wandb.synced
    preview = await RelayClient(config=sandbox.config()).wandb_preview()
    assert "offline-run-20260101_120000-run0" in [r.name for r in preview.runs]
    sandbox.write(run0 / "run-run0.wandb.synced", "")
    preview = await RelayClient(config=sandbox.config()).wandb_preview()
    assert "offline-run-20260101_120000-run0" not in [r.name for r in preview.runs]


@pytest.mark.sshd
async def test_a_missing_wandb_dir_is_said_plainly(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config(wandb_dir="/nonexistent/wandb"))
    result = await client.request("wandb_sync", approve=True)
    assert isinstance(result, WandbSyncResult) and result.synced == []
    assert "no wandb directory at /nonexistent/wandb" in result.output_tail


@pytest.mark.parametrize("value", ["-rf", "~other/wandb", "a\nb"])
def test_aexp_relay_wandb_dir_is_validated_like_the_repo_path(value: str) -> None:
    with pytest.raises(RelayValidationError) as err:
        RelayConfig.from_env({"AEXP_RELAY_WANDB_DIR": value})
    assert "AEXP_RELAY_WANDB_DIR" in err.value.message and err.value.hint


# ------------------------------------------------------------------ one login per host


@pytest.mark.sshd
@pytest.mark.realism
async def test_three_servers_with_eight_calls_each_make_one_login_under_max_sessions_10() -> None:
    with running_sandbox(max_sessions=10) as sb:
        before = sb.logins()
        answers: list[dict[str, object]] = []

        async def server() -> None:
            answers.extend(await session_calls(sb.env(), 8))

        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(server)
        assert len(answers) == 24 and not [a for a in answers if a["error"]]
        assert sb.logins() - before == 1
        assert len(sb.processes(masters=True)) == 1
        assert "disabling multiplexing" not in "".join(
            p.read_text() for p in (sb.root / "cm" / "state").glob("master-*.log")
        )


@pytest.mark.sshd
async def test_disconnect_ends_every_master_the_relay_started_for_the_host(
    sandbox: Sandbox,
) -> None:
    client = RelayClient(config=sandbox.config())
    await client.request("repo_status")
    path = await client.connections.control_path("aexp-sandbox")
    assert path is not None
    # A master that lost a race before the cross-process lock existed: its socket was
    # taken, so it disabled multiplexing and stayed logged in.
    manager = client.connections
    log = sandbox.root / "loser.log"
    subprocess.run(manager.master_argv("aexp-sandbox", path, log), check=True, timeout=20)
    assert wait_until(lambda: len(sandbox.processes(masters=True)) == 2, 5)
    env = {**os.environ, **sandbox.env()}
    proc = subprocess.run(
        [sys.executable, "-m", "aexp_relay_mcp", "disconnect"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0 and "Closed 2 shared connection(s)" in proc.stdout, proc
    assert wait_until(lambda: sandbox.processes(masters=True) == [], 5)


@pytest.mark.sshd
@pytest.mark.parametrize("how", ["killed", "sshd restarted"])
async def test_a_master_that_died_mid_session_is_replaced_by_the_next_call(
    sandbox: Sandbox, how: str
) -> None:
    client = RelayClient(config=sandbox.config())
    await client.request("repo_status")
    masters = sandbox.processes(masters=True)
    assert len(masters) == 1
    if how == "killed":
        os.kill(masters[0], signal.SIGKILL)
    else:
        sandbox.server.kill_sessions()
    assert wait_until(lambda: sandbox.processes(masters=True) == [], 5)
    before = sandbox.logins()
    for _ in range(3):
        result = await client.request("repo_status")
        assert isinstance(result, RepoStatus)
    new = sandbox.processes(masters=True)
    assert len(new) == 1 and new != masters
    assert sandbox.logins() - before == 1  # one new master; no direct login on the side


# ------------------------------------------------------------------ bastion


@pytest.fixture
def jump_sandbox() -> Iterator[Sandbox]:
    with running_sandbox(bastion=True, profile="noisy") as sb:
        yield sb


@pytest.mark.sshd
@pytest.mark.realism
async def test_calls_through_a_proxyjump_bastion_log_in_once_on_each_hop(
    jump_sandbox: Sandbox,
) -> None:
    sb = jump_sandbox
    assert sb.bastion is not None
    client = RelayClient(config=sb.config(ssh_host=JUMP_ALIAS))
    for _ in range(3):
        result = await client.request("repo_status")
        assert isinstance(result, RepoStatus) and result.head == sb.head(sb.cluster)
    assert sb.bastion.logins() == 1 and sb.logins() == 1


@pytest.mark.sshd
@pytest.mark.realism
async def test_a_timeout_through_a_bastion_leaves_nothing_behind(jump_sandbox: Sandbox) -> None:
    from aexp_relay_mcp import RelayTimeoutError

    sb = jump_sandbox
    sb.git(sb.cluster, "config", "remote.origin.uploadpack", "sleep 39; git-upload-pack")
    client = RelayClient(config=sb.config(ssh_host=JUMP_ALIAS, control_persist="no"))
    with pytest.raises(RelayTimeoutError):
        await client.request("fetch", timeout=3)
    assert wait_until(lambda: processes_matching("sleep 39") == [], 5)
    assert sb.processes(masters=False) == []


# ------------------------------------------------------------------ MFA


@pytest.fixture
def mfa_sandbox() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("the MFA stand-in checks a password, which needs root")
    with running_sandbox(mfa=True) as sb:
        yield sb


def connect_under_a_pty(sb: Sandbox, host: str, password: str) -> tuple[int, str]:
    """`aexp-relay-mcp connect` in a terminal, answering the password prompt."""
    env = {**os.environ, **sb.env(), "AEXP_RELAY_SSH_HOST": host}
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal session, as a user's
        os.execve(sys.executable, [sys.executable, "-m", "aexp_relay_mcp", "connect"], env)
    seen, answered, deadline = b"", False, time.monotonic() + 30
    reading = True
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd] if reading else [], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the terminal's other side is gone
                chunk = b""
            reading = bool(chunk)
            seen += chunk
            if not answered and b"password:" in seen.lower():
                os.write(fd, password.encode() + b"\n")
                answered = True
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            os.close(fd)
            return os.waitstatus_to_exitcode(status), seen.decode(errors="replace")
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    os.close(fd)
    return -1, seen.decode(errors="replace")


@pytest.mark.sshd
@pytest.mark.realism
async def test_mfa_host_fails_fast_until_connect_then_every_call_shares_one_password_login(
    mfa_sandbox: Sandbox,
) -> None:
    sb = mfa_sandbox
    assert sb.mfa is not None
    client = RelayClient(config=sb.config(ssh_host=MFA_ALIAS))
    started = time.monotonic()
    with pytest.raises(RelayDownError) as err:
        await client.request("repo_status")
    assert time.monotonic() - started < 5
    assert err.value.kind == "auth_failed" and "aexp-relay-mcp connect" in err.value.hint

    code, terminal = await asyncio.to_thread(connect_under_a_pty, sb, MFA_ALIAS, MFA_PASSWORD)
    assert code == 0 and "Connected" in terminal, terminal
    connected = RelayClient(config=sb.config(ssh_host=MFA_ALIAS))
    for _ in range(5):
        assert isinstance(await connected.request("repo_status"), RepoStatus)
    await asyncio.gather(*(connected.request("repo_status") for _ in range(5)))
    assert sb.mfa.logins("password") == 1

    # The login dies (laptop sleep, a restart): the next call fails fast, with the hint.
    for pid in sb.processes(masters=True):
        os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(RelayDownError) as err:
        await connected.request("repo_status")
    assert time.monotonic() - started < 5
    assert "aexp-relay-mcp connect" in err.value.hint
    assert sb.mfa.logins("password") == 1


def test_connect_keeps_its_login_for_a_working_day_and_ops_keep_their_own_persist() -> None:
    manager = ConnectionManager(RelayConfig(control_persist="10m"))
    connect = manager.connect_argv("login", "/tmp/cm")
    op_master = manager.master_argv("login", "/tmp/cm", Path("/tmp/log"))
    assert "ControlPersist=12h" in connect and "BatchMode=yes" not in connect
    assert "ControlPersist=10m" in op_master and "BatchMode=yes" in op_master
