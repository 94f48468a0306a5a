"""``--selftest --realistic``: the product against a login node as clusters have them.

A sandbox whose login shell prints a banner on stdout and notices on stderr and takes
0.3 s to start, reached directly and through a bastion. On it: every tool again (their
answers must be exactly as on a clean account), what ``status`` says about the shell,
three servers whose first calls start together (one login), a master killed
mid-session, and a server stopped the way Claude Code stops one.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from ...sandbox import JUMP_ALIAS, Sandbox
from ...ssh.procs import process_table
from ..mcp.launch import server_command
from ..mcp.tools import tool_name
from .stdio_driver import StdioServer
from .sweep import CALL_TIMEOUT_S, Check, CheckFailed, Sweep, expect, sandbox_sweep

SERVERS = 3
CALLS_EACH = 8


async def _timed(checks: list[Check], name: str, body: Callable[[], Awaitable[str]]) -> None:
    started = time.perf_counter()
    try:
        detail, ok = await body(), True
    except CheckFailed as exc:
        detail, ok = f"FAILED: {exc}", False
    except Exception as exc:  # a broken check must not hide the others
        detail, ok = f"FAILED: {type(exc).__name__}: {exc}", False
    checks.append(Check(name, ok, (time.perf_counter() - started) * 1000, detail))


async def session_calls(env: dict[str, str], calls: int) -> list[dict[str, Any]]:
    """One server process, ``calls`` concurrent repo_status calls."""
    command, args = server_command(search_path=False)
    answers: list[dict[str, Any]] = []
    async with (
        stdio_client(StdioServerParameters(command=command, args=args, env=env)) as (r, w),
        ClientSession(r, w, read_timeout_seconds=CALL_TIMEOUT_S) as session,
    ):
        await session.initialize()
        sweep = Sweep(session)

        async def one() -> None:
            err, data = await sweep.call(tool_name("repo_status"))
            answers.append({"error": err, **data})

        async with anyio.create_task_group() as tg:
            for _ in range(calls):
                tg.start_soon(one)
    return answers


def _remote_sleepers(tag: str) -> list[int]:
    return [p.pid for p in process_table() if p.state != "Z" and tag in p.cmdline]


async def realistic_sweep(sb: Sandbox) -> list[Check]:
    checks: list[Check] = []
    env = sb.env()
    command, args = server_command(search_path=False)
    async with (
        stdio_client(StdioServerParameters(command=command, args=args, env=env)) as (r, w),
        ClientSession(r, w, read_timeout_seconds=CALL_TIMEOUT_S) as session,
    ):
        await session.initialize()
        sweep = Sweep(session)
        await sandbox_sweep(sweep, sb)
        checks += [Check(f"noisy+power: {c.name}", c.ok, c.ms, c.detail) for c in sweep.checks]

        async def status_sees_the_shell() -> str:
            err, data = await sweep.call(tool_name("status"))
            expect(not err and data["reachable"], str(data))
            expect(data["login_shell_output"] == "both", f"output: {data['login_shell_output']}")
            expect(
                "Welcome" in (data["login_shell_first_line"] or "")
                or "=" in (data["login_shell_first_line"] or ""),
                str(data["login_shell_first_line"]),
            )
            ms = data["login_shell_ms"]
            expect(ms is not None and ms >= 200, f"login_shell_ms {ms}")
            expect(len(data["warnings"]) == 2, f"warnings: {data['warnings']}")
            return f"prints on both streams, starts in {ms:.0f} ms, 2 warnings with the fix"

        async def through_a_bastion() -> str:
            before = sb.bastion.logins() if sb.bastion else 0
            err, data = await sweep.call(tool_name("repo_status"), {"ssh_host": JUMP_ALIAS})
            expect(not err and data.get("head") == sb.head(sb.cluster), str(data))
            logins = (sb.bastion.logins() if sb.bastion else 0) - before
            expect(logins == 1, f"{logins} logins on the bastion")
            return "ProxyJump: the right HEAD, one login on the bastion"

        async def rebase_cut_short() -> str:
            sb.push_from_other("cut.txt", "upstream\n")
            sb.commit(sb.cluster, "cut-local.txt", "mine\n", "selftest: a commit to replay")
            before = _checkout(sb)
            sb.slow_hook("post-checkout", 37, "aexp-selftest-slow-hook")
            try:
                err, data = await sweep.call(tool_name("rebase"), {"timeout": 3})
            finally:
                sb.set_gitconfig(sb.account.gitconfig)  # its own hooks back
            expect(err and data.get("kind") == "timeout", str(data))
            expect(data.get("checkout") == "as_before", f"checkout: {data.get('checkout')}")
            expect(data.get("head") == before[0], f"head {data.get('head')}, was {before[0]}")
            expect(_checkout(sb) == before, "the checkout is not as it was")
            return (
                f"cut at 3 s in a slow post-checkout hook: undone, HEAD {before[0][:8]} as before"
            )

        async def no_unknown_failure() -> str:
            expect("command_failed" not in sweep.kinds, f"kinds: {sweep.kinds}")
            return f"every error had its kind: {', '.join(sorted(set(sweep.kinds)))}"

        await _timed(checks, "noisy: status reports the login shell", status_sees_the_shell)
        await _timed(checks, "ProxyJump through a bastion", through_a_bastion)
        await _timed(checks, "rebase cut short by its timeout", rebase_cut_short)
        await _timed(checks, "no command_failed anywhere", no_unknown_failure)

    async def three_servers_one_login() -> str:
        sb.stop_masters()
        expect(
            await anyio.to_thread.run_sync(lambda: _wait(lambda: not sb.processes(masters=True))),
            "old master lives",
        )
        before = sb.logins()
        answers: list[dict[str, Any]] = []

        async def server() -> None:
            answers.extend(await session_calls(env, CALLS_EACH))

        async with anyio.create_task_group() as tg:
            for _ in range(SERVERS):
                tg.start_soon(server)
        failed = [a for a in answers if a["error"]]
        expect(len(answers) == SERVERS * CALLS_EACH and not failed, f"failures: {failed[:2]}")
        logins, masters = sb.logins() - before, len(sb.processes(masters=True))
        expect(logins == 1 and masters == 1, f"{logins} logins, {masters} masters")
        return f"{SERVERS} servers x {CALLS_EACH} calls at once: all ok, 1 login, 1 master"

    async def master_killed_mid_session() -> str:
        masters = sb.processes(masters=True)
        expect(len(masters) == 1, f"{len(masters)} masters before")
        os.kill(masters[0], signal.SIGKILL)
        answers = await session_calls(env, 2)
        expect(all(not a["error"] for a in answers), str(answers[:1]))
        after = sb.processes(masters=True)
        expect(len(after) == 1 and after != masters, f"masters after: {after}")
        return "the next calls noticed it, started one new master, and succeeded"

    async def stopped_like_claude_code() -> str:
        tag = "sleep 53"
        sb.git(sb.cluster, "config", "remote.origin.uploadpack", f"{tag}; git-upload-pack")
        try:
            server = await anyio.to_thread.run_sync(lambda: StdioServer(sb))
            rid = server.start_call(tool_name("fetch"), {})
            expect(
                await anyio.to_thread.run_sync(lambda: _wait(lambda: bool(_remote_sleepers(tag)))),
                "fetch never started",
            )
            stopped = server.stop_like_claude_code()
            server.close()
            expect(stopped.by != "SIGKILL", "it needed SIGKILL")
            gone = await anyio.to_thread.run_sync(
                lambda: _wait(lambda: not _remote_sleepers(tag), 2.0)
            )
            expect(gone, "the remote fetch outlived the server by 2 s")
            lines = [json.loads(x) for x in sb.audit_log.read_text().splitlines()]
            mine = [x["outcome"] for x in lines if x["op"] == "fetch"][-2:]
            expect(mine == ["started", "interrupted"], f"audit: {mine} (request {rid})")
        finally:
            sb.git(sb.cluster, "config", "--unset", "remote.origin.uploadpack")
        return (
            f"exited {stopped.exit_code}, {stopped.seconds * 1000:.0f} ms after {stopped.by}; "
            "nothing left; audit says interrupted"
        )

    await _timed(checks, f"{SERVERS} servers at once", three_servers_one_login)
    await _timed(checks, "master killed mid-session", master_killed_mid_session)
    await _timed(checks, "stopped like Claude Code", stopped_like_claude_code)
    return checks


def _checkout(sb: Sandbox) -> tuple[str, str, bool]:
    """HEAD, the status of every file, and whether a rebase is under way."""
    status = sb.git(sb.cluster, "--no-optional-locks", "status", "--porcelain", "-uall")
    return sb.head(sb.cluster), status, (sb.cluster / ".git" / "rebase-merge").exists()


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()
