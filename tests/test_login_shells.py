"""Every login shell a cluster account has: the one seam where a command meets it
(``ssh.login_shell``), proved on the real shells, and every tool on an account of each."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aexp_relay_mcp import RelayClient, RemoteCommandError
from aexp_relay_mcp.adapters.mcp.tools import tool_name
from aexp_relay_mcp.adapters.selftest.run import run_sweep
from aexp_relay_mcp.adapters.selftest.sweep import sandbox_sweep
from aexp_relay_mcp.model.results import RepoStatus
from aexp_relay_mcp.remote.quoting import quote
from aexp_relay_mcp.sandbox.account import SHELLS
from aexp_relay_mcp.ssh.login_shell import (
    MAX_LINE_BYTES,
    CommandTooLong,
    for_login_shell,
    login_shell_failure,
)

from .conftest import running_sandbox
from .mcp_helpers import data, mcp_session

pytestmark = [pytest.mark.anyio]
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="an account per login shell needs root")
# Every shell an account can have, that this machine has (CI installs them all).
REAL_SHELLS = [s for s in SHELLS if s != "nologin" and shutil.which(s)]
# What any shell might read differently: quotes, backslashes (fish reads \\ and \' inside
# single quotes), $ and $$ (fish: "$$ is not the pid"), !, newlines (csh cannot keep a
# quoted argument across lines), backquotes, globs, braces, ; & | < > and non-ASCII.
NASTY = "a'b\"c\\\\d\\'e $$ ${X:-y} $(id) `id` !1 !! *? {a,b} ; & | < > \n\tline two ünï 🎉"


def run_in(shell: str, line: str, home: Path) -> subprocess.CompletedProcess[bytes]:
    """What sshd does with a command: ``$SHELL -c line``, the rc files of home read."""
    env = {"HOME": str(home), "PATH": "/usr/local/bin:/usr/bin:/bin", "SHELL": shell}
    return subprocess.run([shell, "-c", line], env=env, capture_output=True, timeout=20)


# ------------------------------------------------------------------ the line itself


def test_the_line_a_login_shell_gets_has_nothing_any_shell_reads_differently() -> None:
    line = for_login_shell(f'printf %s {quote(NASTY)}; echo "$$"; if true; then :; fi\n')
    assert "\n" not in line and "!" not in line
    assert line.count("'") == 2 and line.startswith("exec /bin/sh -c '") and line.endswith("'")
    # a backslash only ever before three octal digits: never fish's \\ or \', csh's \!
    assert "\\" not in re.sub(r"\\[0-7]{3}", "", line)


def test_a_script_too_long_for_one_argument_is_refused_before_it_is_sent() -> None:
    with pytest.raises(CommandTooLong):
        for_login_shell("x" * MAX_LINE_BYTES)


@pytest.mark.parametrize("shell", REAL_SHELLS)
def test_every_shell_runs_the_script_exactly_and_keeps_its_pid(shell: str, tmp_path: Path) -> None:
    script = f'printf \'%s|%s\' "$$" {quote(NASTY)}; if [ -n "$$" ]; then exit 7; fi'
    proc = subprocess.Popen(
        [shell, "-c", for_login_shell(script)],
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=20)
    pid, _, text = out.decode().partition("|")
    assert (text, err, proc.returncode) == (NASTY, b"", 7)
    # exec all the way down: the pid sshd started is the one the remote kill aims at
    assert int(pid) == proc.pid


@pytest.mark.parametrize("shell", REAL_SHELLS)
@settings(max_examples=25, deadline=None)
@given(text=st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\0")))
def test_any_text_reaches_sh_unchanged_through_every_shell(shell: str, text: str) -> None:
    home = Path("/nonexistent-aexp-home")
    proc = run_in(shell, for_login_shell(f"printf %s {quote(text)}"), home)
    assert proc.stdout.decode() == text and proc.returncode == 0


def test_a_shell_that_names_itself_is_named_in_the_failure() -> None:
    failure = login_shell_failure(None, 1, "tcsh: Unmatched '''.\n")
    assert failure.kind == "login_shell_failed" and "(tcsh)" in failure.message
    assert "exit code 1" in failure.message and "~/.tcshrc" in failure.hint
    fish = login_shell_failure("/usr/bin/fish", 127, "")
    assert "(fish)" in fish.message and "status is-interactive; or return" in fish.hint


# ------------------------------------------------------------------ accounts of every shell


@ROOT_ONLY
@pytest.mark.sshd
@pytest.mark.realism
@pytest.mark.parametrize("shell", ["tcsh", "csh", "fish", "mksh", "dash", "zsh", "bash"])
async def test_every_tool_gives_exact_values_on_an_account_of_each_login_shell(
    shell: str,
) -> None:
    """The selftest's sweep, over the real MCP server: status (with the login shell),
    repo_status (HEAD, subject), push (landed), fetch (moved refs), pull, a diverged pull,
    rebase, push, and wandb_sync preview and upload (what the stub received)."""
    with running_sandbox(shell=shell, profile="noisy") as sb:
        checks = await run_sweep(sb.env(), lambda sweep: sandbox_sweep(sweep, sb))
    failed = [f"{c.name}: {c.detail}" for c in checks if not c.ok]
    assert not failed and len(checks) == 11


@ROOT_ONLY
@pytest.mark.sshd
@pytest.mark.realism
@pytest.mark.parametrize("shell", ["tcsh", "fish"])
async def test_status_names_a_worked_around_shell_and_how_to_set_path_variables(
    shell: str,
) -> None:
    with running_sandbox(shell=shell, profile="noisy") as sb:
        client = RelayClient(config=sb.config())
        status = await client.check_connection()
        # $SCRATCH is an environment variable there (as clusters set it): it resolves
        by_variable = await client.request("repo_status", remote_repo="$SCRATCH/cluster")
        head = sb.head(sb.cluster)
    assert status.reachable and status.problem is None and status.branch == "main"
    assert status.login_shell == sb.user.shell
    export = "setenv NAME value" if shell == "tcsh" else "set -gx NAME value"
    said = [w for w in status.warnings if f"login shell is {shell}" in w]
    assert len(said) == 1 and export in said[0]
    guard = "if ( ! $?prompt ) exit" if shell == "tcsh" else "status is-interactive; or return"
    assert any(guard in w and "prints on stdout" in w for w in status.warnings)
    assert isinstance(by_variable, RepoStatus) and by_variable.head == head


@pytest.mark.sshd
async def test_a_posix_login_shell_gets_no_warning_about_itself() -> None:
    with running_sandbox() as sb:
        status = await RelayClient(config=sb.config()).check_connection()
    assert status.login_shell == sb.user.shell == "/bin/bash"
    assert not any("login shell is" in w for w in status.warnings)


# ------------------------------------------------------------------ a shell that will not run it

TRANSPORTS = [
    pytest.param({}, id="native-mux"),
    pytest.param({"AEXP_RELAY_MUX_CLIENT": "ssh"}, id="spawned-ssh"),
    pytest.param({"AEXP_RELAY_CONTROL_PERSIST": "no"}, id="direct"),
]


@ROOT_ONLY
@pytest.mark.sshd
@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_an_rc_file_that_execs_another_shell_is_named_never_called_unreachable(
    transport: dict[str, str],
) -> None:
    with running_sandbox(shell="tcsh", profile="noisy") as sb:
        async with mcp_session(sb, env=transport) as session:
            first = data(await session.call_tool(tool_name("status"), {}))
            before = sb.head(sb.cluster)
            sb.break_login_shell()
            status = data(await session.call_tool(tool_name("status"), {}))
            kinds = {
                tool: data(await session.call_tool(tool_name(tool), {})).get("kind")
                for tool in ("repo_status", "fetch", "pull", "rebase", "push", "wandb_sync")
            }
            after = sb.head(sb.cluster)
    assert first["problem"] is None and first["login_shell"] == sb.user.shell
    assert status["reachable"] is True and status["problem"] == "login_shell_failed"
    # named: the relay remembers the shell from the call that worked
    assert "login shell (tcsh) did not run" in status["hint"]
    assert "~/.tcshrc" in status["hint"] and "exec" in status["hint"]
    assert set(kinds.values()) == {"login_shell_failed"}, kinds
    assert before == after


@ROOT_ONLY
@pytest.mark.sshd
async def test_an_account_whose_login_shell_is_no_shell_gets_its_own_kind() -> None:
    with running_sandbox(shell="nologin") as sb:
        client = RelayClient(config=sb.config())
        status = await client.check_connection()
        with pytest.raises(RemoteCommandError) as err:
            await client.request("repo_status")
    assert status.reachable and status.problem == "login_shell_failed"
    assert status.login_shell is None
    assert err.value.kind == "login_shell_failed" and err.value.exit_code == 1
    assert "currently not available" in err.value.stderr_tail
    assert "ask the admins" in err.value.hint
