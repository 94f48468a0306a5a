"""The server's life under a real client: stopped on the first signal, every call audited
even when the server is killed, and ``aexp-relay-mcp audit`` to read it back."""

from __future__ import annotations

import datetime as dt
import json
import os
import pty
import secrets
import select
import signal
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest

from aexp_relay_mcp.adapters.selftest.stdio_driver import StdioServer
from aexp_relay_mcp.relay.audit import AuditLog, parse_since, read_audit
from aexp_relay_mcp.sandbox import Sandbox

from .conftest import BOTH_PROFILES, processes_matching, running_sandbox, wait_until


def hang_tag() -> str:
    """A hanging remote command no other test runs: `sleep 57.<random>`."""
    return f"sleep 57.{secrets.randbelow(10**6):06d}"


def audit_lines(sb: Sandbox) -> list[dict[str, object]]:
    return [json.loads(x) for x in sb.audit_log.read_text().splitlines()]


def start_hanging_call(sb: Sandbox, env: dict[str, str] | None = None) -> tuple[StdioServer, str]:
    """A server with a fetch in flight that hangs on the login node."""
    tag = hang_tag()
    sb.git(sb.cluster, "config", "remote.origin.uploadpack", f"{tag}; git-upload-pack")
    server = StdioServer(sb, env)
    server.start_call("airgapped_fetch", {})
    assert wait_until(lambda: processes_matching(tag) != [], 15), server.stderr()
    return server, tag


def nothing_left(sb: Sandbox, server: StdioServer, tag: str) -> bool:
    """No server, no ssh client of ours, nothing on the login node (the shared
    ControlMaster outlives the server by design)."""
    return (
        server.proc.poll() is not None
        and sb.processes(masters=False) == []
        and processes_matching(tag) == []
    )


@pytest.fixture(params=BOTH_PROFILES)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    with running_sandbox(**request.param) as sb:
        yield sb


@pytest.mark.sshd
@pytest.mark.parametrize("mux", ["native", "ssh"])
def test_stopped_like_claude_code_it_exits_on_sigint_and_leaves_nothing_behind(
    sandbox: Sandbox, mux: str
) -> None:
    """Claude Code: SIGINT, SIGTERM 100 ms later, SIGKILL 400 ms after that."""
    server, tag = start_hanging_call(sandbox, {"AEXP_RELAY_MUX_CLIENT": mux})
    stopped = server.stop_like_claude_code()
    server.close()
    assert stopped.by == "SIGINT" and stopped.exit_code == 128 + signal.SIGINT, stopped
    assert wait_until(lambda: nothing_left(sandbox, server, tag), 2), processes_matching(tag)
    fetch = [line for line in audit_lines(sandbox) if line["op"] == "fetch"]
    assert [line["outcome"] for line in fetch] == ["started", "interrupted"]
    assert fetch[0]["request_id"] == fetch[1]["request_id"]


@pytest.mark.sshd
def test_a_call_stopped_before_its_start_came_back_never_runs_on_after_the_server() -> None:
    """Stopped while the login shell still read its rc file: the relay never learnt the
    command's process group, and finds it on the login node by its marker instead. (The
    rc file ignores SIGPIPE, as some site profiles and job wrappers leave it: a command
    whose connection went away then does not die on its first write, and would run on.)"""
    with running_sandbox() as sb:
        tag = hang_tag()
        sb.git(sb.cluster, "config", "remote.origin.uploadpack", f"{tag}; git-upload-pack")
        sb.account.delay_s = 1.7  # an rc file that takes its time
        sb.set_profile("noisy")
        bashrc = sb.account.home / ".bashrc"
        bashrc.write_text("trap '' PIPE\n" + bashrc.read_text())
        server = StdioServer(sb)
        server.start_call("airgapped_fetch", {})
        assert wait_until(lambda: processes_matching("sleep 1.7") != [], 15), server.stderr()
        stopped = server.stop_like_claude_code()  # sent; its shell still in the rc file
        server.close()
        assert stopped.by == "SIGINT", stopped
        time.sleep(2.5)  # the fetch would have started, and hung, by now
        assert processes_matching(tag) == []
        fetch = [line for line in audit_lines(sb) if line["op"] == "fetch"]
    assert [line["outcome"] for line in fetch] == ["started", "interrupted"]


@pytest.mark.sshd
@pytest.mark.parametrize(
    ("how", "code"),
    [("SIGTERM", 128 + signal.SIGTERM), ("SIGHUP", 128 + signal.SIGHUP), ("stdin EOF", 0)],
)
def test_every_way_to_stop_the_server_ends_calls_the_same_way(
    sandbox: Sandbox, how: str, code: int
) -> None:
    server, tag = start_hanging_call(sandbox)
    if how == "stdin EOF":
        assert server.proc.stdin is not None
        server.proc.stdin.close()
    else:
        server.proc.send_signal(getattr(signal, how))
    assert server.proc.wait(timeout=5) == code
    server.close()
    assert wait_until(lambda: nothing_left(sandbox, server, tag), 2), processes_matching(tag)
    assert [line["outcome"] for line in audit_lines(sandbox)] == ["started", "interrupted"]


@pytest.mark.sshd
def test_a_server_killed_mid_call_leaves_a_started_line_that_audit_shows_as_never_ended(
    sandbox: Sandbox,
) -> None:
    server, _ = start_hanging_call(sandbox)
    server.proc.kill()
    server.close()
    lines = audit_lines(sandbox)
    assert [line["outcome"] for line in lines] == ["started"]
    env = {**os.environ, **sandbox.env()}
    cli = [sys.executable, "-m", "aexp_relay_mcp", "audit"]
    as_json = subprocess.run([*cli, "--json"], env=env, capture_output=True, text=True, timeout=30)
    calls = json.loads(as_json.stdout)
    assert [(c["op"], c["outcome"]) for c in calls] == [("fetch", "never_ended")]
    assert calls[0]["request_id"] == lines[0]["request_id"]
    human = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=30)
    assert human.returncode == 0 and "NEVER ENDED" in human.stdout
    assert f"pid {lines[0]['pid']}" in human.stdout


@pytest.mark.sshd
def test_a_call_the_client_cancels_is_audited_cancelled_and_the_server_lives_on(
    sandbox: Sandbox,
) -> None:
    server, tag = start_hanging_call(sandbox)
    server.notify("notifications/cancelled", {"requestId": server.next_id, "reason": "user"})
    assert wait_until(lambda: processes_matching(tag) == [], 5)
    sandbox.git(sandbox.cluster, "config", "--unset", "remote.origin.uploadpack")
    assert server.call("airgapped_repo_status", {})["branch"] == "main"
    server.close()
    fetch = [line["outcome"] for line in audit_lines(sandbox) if line["op"] == "fetch"]
    assert fetch == ["started", "cancelled"]


# ------------------------------------------------------------------ the audit reader


def write_log(path: Path, *entries: dict[str, object]) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))


NOW = dt.datetime(2026, 11, 28, 12, 0, tzinfo=dt.timezone.utc)


def at(minutes_ago: float) -> str:
    return (NOW - dt.timedelta(minutes=minutes_ago)).isoformat()


def test_audit_pairs_started_and_final_lines_by_request_id(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(
        log,
        {"time": at(10), "request_id": "a", "op": "push", "outcome": "started", "pid": 11},
        {"time": at(9), "request_id": "b", "op": "fetch", "outcome": "rejected", "pid": 11,
         "kind": "invalid_request"},
        {"time": at(8), "request_id": "a", "op": "push", "outcome": "failed", "pid": 11,
         "kind": "non_fast_forward", "exit_code": 1, "duration_s": 0.2},
        {"time": at(7), "request_id": "c", "op": "pull", "outcome": "started", "pid": 12},
        {"time": at(6), "request_id": "d", "op": "fetch", "outcome": "started", "pid": 13},
    )  # fmt: skip
    report = read_audit(log, None, now=NOW, alive=lambda pid: pid == 13)
    got = [(c.request_id, c.op, c.outcome, c.kind) for c in report.calls]
    assert got == [
        ("a", "push", "failed", "non_fast_forward"),
        ("b", "fetch", "rejected", "invalid_request"),
        ("c", "pull", "never_ended", None),
        ("d", "fetch", "running", None),
    ]
    assert report.calls[0].duration_s == 0.2 and report.calls[0].time == at(10)


def test_audit_since_leaves_out_older_calls_and_counts_unreadable_lines(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    write_log(
        log,
        {"time": at(120), "request_id": "old", "op": "push", "outcome": "ok"},
        {"time": at(5), "request_id": "new", "op": "pull", "outcome": "ok"},
    )
    with log.open("a") as fh:
        fh.write("not json\n")
    report = read_audit(log, parse_since("1h"), now=NOW)
    assert [c.request_id for c in report.calls] == ["new"] and report.unreadable_lines == 1


@pytest.mark.parametrize(("text", "seconds"), [("30m", 1800), ("2h", 7200), ("1d", 86400)])
def test_audit_since_takes_durations(text: str, seconds: float) -> None:
    assert parse_since(text) == seconds


def test_every_audit_line_names_the_process_that_wrote_it(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.log")
    log.record(request_id="x", op="push", outcome="started")
    entry = json.loads((tmp_path / "a.log").read_text())
    assert entry["pid"] == os.getpid() and entry["outcome"] == "started"


def test_audit_counts_a_call_that_ran_again_after_a_drop_once(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    base = {"request_id": "r1", "op": "fetch", "pid": os.getpid()}
    write_log(
        log,
        {**base, "outcome": "started", "time": at(2)},
        {**base, "outcome": "retrying", "kind": "connection_dropped", "time": at(1.9)},
        {**base, "outcome": "ok", "time": at(1.8), "duration_s": 1.2},
        {"request_id": "r2", "op": "status", "pid": 1, "outcome": "started", "time": at(1)},
        {"request_id": "r2", "op": "status", "pid": 1, "outcome": "retrying", "time": at(0.9)},
    )
    report = read_audit(log, alive=lambda pid: False)
    first, second = report.calls
    assert (first.outcome, first.attempts) == ("ok", 2)
    # a retrying line is no final line: a server that died after it never ended the call
    assert (second.outcome, second.attempts) == ("never_ended", 2)


# ------------------------------------------------------------------ a bare start


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "a terminal", "version": "0"},
    },
}


def read_line(fd: int, timeout: float = 20) -> bytes:
    """One line from a pipe, within timeout."""
    data = b""
    deadline = time.monotonic() + timeout
    while not data.endswith(b"\n") and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            chunk = os.read(fd, 1)
            if not chunk:
                break
            data += chunk
    return data


@pytest.mark.parametrize("stdin", ["a terminal", "a pipe"])
def test_a_bare_start_on_a_terminal_says_what_it_is_on_stderr_and_still_serves(
    sandbox_env: dict[str, str], stdin: str
) -> None:
    """Typed in a terminal, it says on stderr what it is and how to try it, and serves on;
    started by a client (pipes), it says nothing of the kind. stdout stays the protocol's."""
    if stdin == "a terminal":
        master, slave = pty.openpty()
        tty.setraw(slave)  # no echo, no line editing: bytes pass as written
        proc = subprocess.Popen(
            [sys.executable, "-m", "aexp_relay_mcp"],
            stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=sandbox_env,
        )  # fmt: skip
        os.close(slave)
        write_to = master
    else:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aexp_relay_mcp"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=sandbox_env,
        )  # fmt: skip
        assert proc.stdin is not None
        write_to = proc.stdin.fileno()
    assert proc.stdout is not None and proc.stderr is not None
    try:
        said = read_line(proc.stderr.fileno(), 10) if stdin == "a terminal" else b""
        os.write(write_to, (json.dumps(INITIALIZE) + "\n").encode())
        answer = json.loads(read_line(proc.stdout.fileno()))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
        os.close(write_to)
    assert answer["id"] == 1 and answer["result"]["serverInfo"]["name"] == "aexp"
    rest = proc.stderr.read().decode()
    if stdin == "a terminal":
        assert said.decode().startswith("aexp-relay-mcp ") and "MCP server" in said.decode()
        assert "--selftest" in said.decode() and "Claude Code" in said.decode()
    else:
        assert "waiting for a client" not in rest


@pytest.fixture
def sandbox_env(tmp_path: Path) -> dict[str, str]:
    """Enough environment to start the server (no call is made)."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "AEXP_RELAY_AUDIT_LOG": str(tmp_path / "audit.log"),
    }
