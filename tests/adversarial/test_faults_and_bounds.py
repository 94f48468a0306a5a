"""Faults and resource bounds, through the real MCP server over stdio (and the CLI)."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from aexp_relay_mcp.sandbox import Sandbox

from ..conftest import processes_matching, wait_until
from ..mcp_helpers import data, mcp_session, server_pids

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]


def vm_hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


# ------------------------------------------------------------------ remote environment


async def test_git_missing_on_the_login_node_is_reported_with_a_hint(sandbox: Sandbox) -> None:
    tools = sandbox.root / "nogit"
    tools.mkdir()
    for prog in ("sh", "timeout", "du", "cut", "sleep", "kill", "printf"):
        found = Path("/usr/bin", prog) if Path("/usr/bin", prog).exists() else Path("/bin", prog)
        if found.exists():
            (tools / prog).symlink_to(found)
    sandbox.set_remote_path(str(tools))
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool("airgapped_repo_status", {}))
        status = data(await s.call_tool("airgapped_status", {}))
    assert err["kind"] == "git_missing" and "module load git" in err["hint"]
    assert status["reachable"] and status["problem"] == "git_missing"


async def test_a_login_node_without_coreutils_timeout_still_works(sandbox: Sandbox) -> None:
    """macOS and minimal images lack `timeout`: ops still run, bounded by the local timeout."""
    tools = sandbox.root / "notimeout"
    tools.mkdir()
    coreutils = ("tr", "sort", "head", "xargs", "awk", "du", "cut", "sleep", "kill")
    for prog in ("sh", "git", *coreutils):
        found = Path("/usr/bin", prog) if Path("/usr/bin", prog).exists() else Path("/bin", prog)
        if found.exists():
            (tools / prog).symlink_to(found)
    sandbox.set_remote_path(str(tools), "/usr/lib/git-core")
    async with mcp_session(sandbox) as s:
        status = data(await s.call_tool("airgapped_repo_status", {}))
        pushed = data(await s.call_tool("airgapped_push", {}))
    assert status["branch"] == "main" and pushed["up_to_date"] is True


async def test_a_git_too_old_for_our_options_is_reported(sandbox: Sandbox) -> None:
    fake = sandbox.bin_dir / "git"
    sandbox.write(
        fake,
        "#!/bin/sh\n"
        'case "$1" in --version) echo "git version 1.8.3.1"; exit 0 ;; esac\n'
        'echo "error: unknown option \\`no-optional-locks\'" >&2\n'
        'echo "usage: git [--version] [--help] <command> [<args>]" >&2\n'
        "exit 129\n",
    )
    fake.chmod(0o755)
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool("airgapped_repo_status", {}))
        status = data(await s.call_tool("airgapped_status", {}))
    assert err["kind"] == "git_too_old" and "2.20" in err["hint"]
    assert status["problem"] == "git_too_old"


async def test_a_paused_sshd_times_out_with_partial_stderr_and_no_process_left(
    sandbox: Sandbox,
) -> None:
    async with mcp_session(sandbox, {"AEXP_RELAY_CONTROL_PERSIST": "no"}) as s:
        sandbox.pause_sshd()
        try:
            started = time.monotonic()
            err = data(await s.call_tool("airgapped_repo_status", {"timeout": 2}))
            assert time.monotonic() - started < 6
        finally:
            sandbox.resume_sshd()
    assert err["kind"] == "timeout" and "timeout_s" in err
    assert sandbox.processes(masters=False) == []


# ------------------------------------------------------------------ audit log


@pytest.mark.parametrize("where", ["unwritable", "full"])
async def test_an_audit_log_that_cannot_be_written_never_breaks_an_op(
    sandbox: Sandbox, where: str, tmp_path: Path
) -> None:
    if where == "unwritable":
        blocker = tmp_path / "file"
        blocker.write_text("")
        path = str(blocker / "audit.log")
    else:
        path = "/dev/full"
    env = {**os.environ, **sandbox.env(), "AEXP_RELAY_AUDIT_LOG": path}
    proc = subprocess.run(
        [sys.executable, "-m", "aexp_relay_mcp", "repo-status", "--json"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and json.loads(proc.stdout)["branch"] == "main"
    assert proc.stderr.count("cannot write the audit log") == 1
    async with mcp_session(sandbox, {"AEXP_RELAY_AUDIT_LOG": path}) as s:
        for _ in range(2):
            assert data(await s.call_tool("airgapped_repo_status", {}))["branch"] == "main"


# ------------------------------------------------------------------ concurrency


async def test_twenty_concurrent_mixed_calls_are_all_answered_without_lock_collisions(
    sandbox: Sandbox,
) -> None:
    for i in range(4):
        sandbox.git(sandbox.cluster, "branch", f"c{i}")
    sandbox.push_from_other()
    calls: list[tuple[str, dict[str, Any]]] = [
        ("airgapped_repo_status", {}), ("airgapped_status", {}), ("airgapped_fetch", {}),
        ("airgapped_pull", {}), ("airgapped_wandb_sync", {}),
    ] * 3 + [("airgapped_push", {"branch": f"c{i}"}) for i in range(4)] + [
        ("airgapped_rebase", {})
    ]  # fmt: skip
    assert len(calls) == 20
    answers: list[dict[str, Any]] = []
    async with mcp_session(sandbox) as s:

        async def call(name: str, args: dict[str, Any]) -> None:
            answers.append({"tool": name, **data(await s.call_tool(name, args))})

        async with anyio.create_task_group() as tg:
            for name, args in calls:
                tg.start_soon(call, name, args)
    assert len(answers) == 20
    kinds = [a.get("kind") for a in answers]
    assert "locked" not in kinds, answers
    assert all(k in (None, "consent_required") for k in kinds), answers
    assert {f"refs/heads/c{i}" for i in range(4)} <= set(sandbox.origin_refs())


# ------------------------------------------------------------------ resource bounds


@pytest.mark.parametrize("stream", ["stdout", "stderr"])
async def test_200_mb_of_remote_output_is_capped_and_the_stream_stays_valid(
    sandbox: Sandbox, stream: str
) -> None:
    redirect = "" if stream == "stdout" else " >&2"
    flood = f"sh -c 'head -c 200000000 /dev/zero | tr \"\\000\" x{redirect}; echo done'"
    async with mcp_session(sandbox, {"AEXP_RELAY_WANDB": flood}) as s:
        baseline = vm_hwm_kb(server_pids()[0])
        result = await s.call_tool(
            "airgapped_wandb_sync",
            {"runs": ["offline-run-20260101_120000-run0"], "approve": True, "timeout": 120},
        )
        grown_mb = (vm_hwm_kb(server_pids()[0]) - baseline) / 1024
        assert not result.is_error, data(result)
        body = data(result)
        assert len(json.dumps(body)) < 20_000
        assert data(await s.call_tool("airgapped_repo_status", {}))["branch"] == "main"
    assert grown_mb < 40, f"server memory grew {grown_mb:.0f} MB"


async def test_control_bytes_and_invalid_utf8_in_git_output_are_escaped(sandbox: Sandbox) -> None:
    evil_file = "evil\x1b]0;pwned\x07\x1b[31m.txt"
    (sandbox.cluster / evil_file).write_text("x")
    os.chown(sandbox.cluster / evil_file, sandbox.user.uid, sandbox.user.gid)
    raw_name = sandbox.cluster / os.fsdecode(b"bad-\xff-name.txt")
    raw_name.write_text("x")
    os.chown(raw_name, sandbox.user.uid, sandbox.user.gid)
    sandbox.git(sandbox.cluster, "checkout", "-q", "-b", os.fsdecode(b"br-\xfe-anch"))
    async with mcp_session(sandbox) as s:
        result = await s.call_tool("airgapped_repo_status", {})
    text = result.content[0].text  # type: ignore[union-attr]
    body = data(result)
    assert "\x1b" not in text and "\x07" not in text
    assert "\\u001b" not in text, "control bytes must be escaped as text, not JSON-escaped raw"
    assert any("\\x1b]0;pwned\\x07" in u for u in body["untracked"])
    assert any("\\xff" in u for u in body["untracked"])
    assert "\\xfe" in body["branch"]
    env = {**os.environ, **sandbox.env()}
    cli = subprocess.run(
        [sys.executable, "-m", "aexp_relay_mcp", "repo-status"],
        env=env, capture_output=True, timeout=60,
    )  # fmt: skip
    assert cli.returncode == 0
    assert b"\x1b" not in cli.stdout and b"\x07" not in cli.stdout
    assert b"\\x1b]0;pwned" in cli.stdout


class _AuthRequired(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="origin"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def auth_origin() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _AuthRequired)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/repo.git"
    finally:
        server.shutdown()


async def test_a_credential_prompt_on_the_login_node_never_hangs(
    sandbox: Sandbox, auth_origin: str
) -> None:
    sandbox.git(sandbox.cluster, "remote", "set-url", "origin", auth_origin)
    started = time.monotonic()
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool("airgapped_fetch", {"remote": "origin", "timeout": 30}))
    assert time.monotonic() - started < 10
    assert err["kind"] == "auth_to_origin_failed", err
    assert "terminal prompts disabled" in err["stderr_tail"]


async def test_an_ssh_origin_that_would_prompt_fails_fast_in_batch_mode(sandbox: Sandbox) -> None:
    url = f"ssh://{sandbox.user.name}@127.0.0.1:{sandbox.port}{sandbox.origin}"
    sandbox.git(sandbox.cluster, "remote", "set-url", "origin", url)
    started = time.monotonic()
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool("airgapped_fetch", {"timeout": 30}))
    assert time.monotonic() - started < 10
    assert err["kind"] == "auth_to_origin_failed", err
    assert processes_matching(f"127.0.0.1:{sandbox.port}") == []


# ------------------------------------------------------------------ allowlists


async def test_allowlists_confine_the_agent_to_the_configured_targets(sandbox: Sandbox) -> None:
    env = {
        "AEXP_RELAY_ALLOWED_HOSTS": "aexp-sandbox",
        "AEXP_RELAY_ALLOWED_REPOS": f"{sandbox.cluster}/",
    }
    logins = sandbox.logins()
    async with mcp_session(sandbox, {**env, "AEXP_RELAY_CONTROL_PERSIST": "no"}) as s:
        ok = data(await s.call_tool("airgapped_repo_status", {}))
        assert ok["branch"] == "main"
        host = data(await s.call_tool("airgapped_repo_status", {"ssh_host": "aexp-sandbox-noauth"}))
        repo = data(await s.call_tool("airgapped_repo_status", {"remote_repo": str(sandbox.other)}))
        status = data(await s.call_tool("airgapped_status", {"ssh_host": "elsewhere"}))
    assert host["kind"] == "invalid_request" and "aexp-sandbox" in host["hint"]
    assert repo["kind"] == "invalid_request" and str(sandbox.cluster) in repo["hint"]
    assert status["kind"] == "invalid_request"
    assert sandbox.logins() - logins == 1  # only the allowed call logged in
    rejected = [
        json.loads(x) for x in sandbox.audit_log.read_text().splitlines()
        if '"rejected"' in x
    ]  # fmt: skip
    assert len(rejected) == 3


async def test_server_processes_are_gone_after_every_session(sandbox: Sandbox) -> None:
    async with mcp_session(sandbox) as s:
        await s.call_tool("airgapped_repo_status", {})
    assert await anyio.to_thread.run_sync(lambda: wait_until(lambda: server_pids() == [], 5))
