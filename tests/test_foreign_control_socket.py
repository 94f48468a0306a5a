"""Trust only the masters you can vouch for: a control socket another local account owns
gets no command and no descriptor, and the op still succeeds by a safe route.

The scenario: the user's ~/.ssh/config puts ControlPath in a directory every account can
write to (``/tmp/cm-%r@%h:%p``, copied from a blog post), and another account listens there
first, answering OpenSSH's mux protocol (tests/foreign_master.py) and writing down anything
it is sent.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aexp_relay_mcp import RelayClient
from aexp_relay_mcp.model.results import RepoStatus
from aexp_relay_mcp.sandbox import Sandbox, intruder
from aexp_relay_mcp.ssh import trust

from .conftest import running_sandbox, wait_until
from .mcp_helpers import data, mcp_session

FOREIGN_MASTER = Path(__file__).with_name("foreign_master.py")


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("a second local account needs root")


class Foreign:
    """Another account's process listening at the user's ControlPath."""

    def __init__(self, sb: Sandbox, path: str) -> None:
        self.path = path
        self.log = Path(path).with_name("foreign-master.log")
        who = intruder()
        self.uid = who.uid
        self.proc = subprocess.Popen(
            [sys.executable, str(FOREIGN_MASTER), path, str(self.log), str(who.uid), str(who.gid)],
            stdin=subprocess.DEVNULL,
        )
        assert wait_until(lambda: Path(path).is_socket(), 10, 0.02), "it never listened"

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [e for e in map(json.loads, lines) if e["event"] != "listening"]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def trap() -> Iterator[tuple[Sandbox, str, Foreign]]:
    needs_root()
    with running_sandbox() as sb:
        alias, path = sb.shared_control_path()
        foreign = Foreign(sb, path)
        try:
            yield sb, alias, foreign
        finally:
            foreign.close()


def told(text: str, foreign: Foreign) -> bool:
    """A warning that names the socket, its owner, and what to change."""
    return (
        foreign.path in text
        and "aexp-intruder" in text
        and "ControlPath ~/.ssh/cm-%C" in text
        and "~/.ssh/config" in text
    )


@pytest.mark.anyio
@pytest.mark.sshd
async def test_another_accounts_socket_gets_no_command_and_the_op_succeeds_by_a_safe_route(
    trap: tuple[Sandbox, str, Foreign],
) -> None:
    sb, alias, foreign = trap
    async with mcp_session(sb, {"AEXP_RELAY_SSH_HOST": alias}) as s:
        result = data(await s.call_tool("airgapped_repo_status", {}))
        again = data(await s.call_tool("airgapped_repo_status", {}))
    assert result["head"] == sb.head(sb.cluster) and again["head"] == result["head"]
    assert any(told(w, foreign) for w in result["warnings"]), result["warnings"]
    assert foreign.events() == [], "the relay talked to another account's socket"
    assert Path(foreign.path).is_socket(), "the relay removed a socket that is not its own"
    assert foreign.proc.poll() is None
    # the safe route: a master of the relay's own, in its own 0700 directory
    own = list((sb.root / "cm").glob("*"))
    assert any(p.is_socket() and p.stat().st_uid == os.geteuid() for p in own), own


@pytest.mark.anyio
@pytest.mark.sshd
@pytest.mark.parametrize("mux", ["native", "ssh"])
async def test_the_status_check_passes_over_it_and_says_so(
    trap: tuple[Sandbox, str, Foreign], mux: str
) -> None:
    sb, alias, foreign = trap
    client = RelayClient(config=sb.config(ssh_host=alias, mux_client=mux))
    status = await client.check_connection()
    assert status.reachable and status.is_git_repo and status.problem is None
    assert status.shared_connection and status.control_path != foreign.path
    assert any(told(w, foreign) for w in status.warnings), status.warnings
    result = await client.request("repo_status")
    assert isinstance(result, RepoStatus) and result.head == sb.head(sb.cluster)
    assert foreign.events() == []


@pytest.mark.sshd
def test_connect_and_disconnect_never_touch_it(trap: tuple[Sandbox, str, Foreign]) -> None:
    sb, alias, foreign = trap
    env = {**os.environ, **sb.env(), "AEXP_RELAY_SSH_HOST": alias}
    cli = [sys.executable, "-m", "aexp_relay_mcp"]
    up = subprocess.run([*cli, "connect", alias], env=env, capture_output=True, text=True,
                        stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert up.returncode == 0, up.stderr
    assert told(up.stderr, foreign), up.stderr
    assert "Connected." in up.stdout and foreign.path not in up.stdout
    status = anyio.run(RelayClient(config=sb.config(ssh_host=alias)).check_connection)
    assert status.shared_connection and status.control_path != foreign.path
    down = subprocess.run([*cli, "disconnect", alias], env=env, capture_output=True, text=True,
                          stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert down.returncode == 0 and "Closed 1 shared connection" in down.stdout, down
    assert foreign.events() == []
    assert Path(foreign.path).is_socket() and foreign.proc.poll() is None


@pytest.mark.anyio
@pytest.mark.sshd
async def test_a_controlpath_others_can_write_is_warned_about_before_anyone_abuses_it() -> None:
    with running_sandbox() as sb:
        alias, path = sb.shared_control_path()
        client = RelayClient(config=sb.config(ssh_host=alias))
        status = await client.check_connection()
        assert status.reachable and status.control_path == path  # nobody there: it is used
        (warning,) = [w for w in status.warnings if "can write to" in w]
        assert str(Path(path).parent) in warning and "ControlPath ~/.ssh/cm-%C" in warning
        # ... but never handed to a spawned ssh, which cannot check who listens
        spawned = RelayClient(config=sb.config(ssh_host=alias, mux_client="ssh"))
        result = await spawned.request("repo_status")
        assert isinstance(result, RepoStatus) and result.head == sb.head(sb.cluster)
        assert any(path in w for w in result.warnings), result.warnings


# ------------------------------------------------------------------ the checks themselves


def test_the_peer_of_a_connected_socket_is_read_from_the_kernel() -> None:
    one, two = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with one, two:
        assert trust.peer_uid(one) == os.geteuid()
        assert trust.peer_problem(one, "/x") is None


def test_a_peer_of_another_uid_is_distrusted() -> None:
    class Elsewhere:  # the kernel's answer for a socket another account listens on
        def getsockopt(self, *args: object) -> bytes:
            import struct

            return struct.pack("3i", 1, os.geteuid() + 1, 0)

    problem = trust.peer_problem(Elsewhere(), "/run/x")  # type: ignore[arg-type]
    assert problem is not None and "not as you" in problem.reason


def test_a_symlink_to_a_socket_and_a_socket_in_a_directory_anyone_can_write_are_refused(
    tmp_path: Path,
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(private / "s"))
    link = private / "link"
    link.symlink_to(private / "s")
    try:
        assert trust.vouch(str(private / "s")) is None
        refused = trust.vouch(str(link))
        assert refused is not None and "symbolic link" in refused.reason
        open_dir = tmp_path / "open"
        open_dir.mkdir()
        open_dir.chmod(0o777)  # writable by all, not sticky: anyone can swap the socket
        refused = trust.vouch(str(open_dir / "cm"))
        assert refused is not None and "can be written by other users" in refused.reason
        open_dir.chmod(0o1777)  # sticky, like /tmp: usable, but never handed to ssh
        assert trust.vouch(str(open_dir / "cm")) is None
        assert trust.vouch_for_handoff(str(open_dir / "cm")) is not None
        assert stat.S_ISSOCK(os.lstat(private / "s").st_mode)
    finally:
        sock.close()
