"""The MCP surface, end to end: the real server over stdio, the SDK's real client, real sshd."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import Any

import anyio
import pytest
from mcp.types import ElicitRequestParams, ElicitResult

from aexp_relay_mcp.adapters.mcp.tools import build_tool_specs
from aexp_relay_mcp.sandbox import Sandbox

from .conftest import processes_matching, snapshot, wait_until
from .mcp_helpers import data, mcp_session

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]

SEVEN = {
    "airgapped_status",
    "airgapped_repo_status",
    "airgapped_fetch",
    "airgapped_pull",
    "airgapped_rebase",
    "airgapped_push",
    "airgapped_wandb_sync",
}


async def test_exactly_seven_tools_with_honest_annotations_and_schemas(sandbox: Sandbox) -> None:
    async with mcp_session(sandbox) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
    assert set(tools) == SEVEN
    a = {n: t.annotations for n, t in tools.items()}
    assert a["airgapped_status"].read_only_hint and a["airgapped_status"].idempotent_hint  # type: ignore[union-attr]
    assert a["airgapped_repo_status"].read_only_hint  # type: ignore[union-attr]
    fetch = a["airgapped_fetch"]
    assert fetch is not None
    assert (fetch.read_only_hint, fetch.destructive_hint, fetch.idempotent_hint) == (
        False,
        False,
        True,
    )
    assert a["airgapped_rebase"].destructive_hint is True  # type: ignore[union-attr]
    assert a["airgapped_push"].destructive_hint is False  # type: ignore[union-attr]
    wandb = a["airgapped_wandb_sync"]
    assert wandb is not None and wandb.open_world_hint and wandb.idempotent_hint is False
    for tool in tools.values():
        assert tool.output_schema and tool.description
        assert tool.input_schema["additionalProperties"] is False
        assert all(p.get("description") for p in tool.input_schema["properties"].values())
    assert set(tools["airgapped_push"].input_schema["properties"]) == {
        "ssh_host", "remote_repo", "timeout", "remote", "branch"
    }  # fmt: skip
    assert set(tools["airgapped_wandb_sync"].input_schema["properties"]) >= {"approve", "runs"}


async def test_every_successful_call_returns_structured_content_with_id_and_duration(
    sandbox: Sandbox,
) -> None:
    async with mcp_session(sandbox) as s:
        for name in [
            "airgapped_repo_status",
            "airgapped_fetch",
            "airgapped_pull",
            "airgapped_push",
        ]:
            result = data(await s.call_tool(name, {}))
            assert result["request_id"] and result["duration_s"] > 0
        status = data(await s.call_tool("airgapped_status", {}))
        assert status["reachable"] and status["branch"] == "main"


async def test_unknown_arguments_and_loose_types_are_refused_as_json(sandbox: Sandbox) -> None:
    async with mcp_session(sandbox) as s:
        for name, args, needle in [
            ("airgapped_push", {"force": True}, "unknown argument 'force'"),
            ("airgapped_wandb_sync", {"approve": "yes"}, "approve"),
            ("airgapped_wandb_sync", {"approve": "true"}, "approve"),
            ("airgapped_fetch", {"timeout": "30"}, "timeout"),
            ("airgapped_push", {"branch": "--force"}, "plain git name"),
            ("airgapped_repo_status", {"ssh_host": "-oProxyCommand=touch /tmp/x"}, "option"),
        ]:
            result = await s.call_tool(name, args)
            assert result.is_error, (name, args)
            err = data(result)
            assert err["kind"] == "invalid_request" and needle in err["message"], err
            assert err["hint"]
    assert not sandbox.wandb_log.exists()
    outcomes = [json.loads(x)["outcome"] for x in sandbox.audit_log.read_text().splitlines()]
    assert outcomes.count("rejected") == 6


async def test_failures_carry_kind_hint_naming_the_next_tool_and_stderr(sandbox: Sandbox) -> None:
    sandbox.push_from_other()
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local")
    async with mcp_session(sandbox) as s:
        pull = data(await s.call_tool("airgapped_pull", {}))
        assert pull["kind"] == "diverged" and "airgapped_rebase" in pull["hint"]
        push = data(await s.call_tool("airgapped_push", {}))
        assert push["kind"] == "non_fast_forward"
        assert "airgapped_rebase" in push["hint"] and "airgapped_push" in push["hint"]
        assert push["exit_code"] != 0 and "rejected" in push["stderr_tail"]
        missing = data(await s.call_tool("airgapped_repo_status", {"remote_repo": "/nope/x"}))
        assert missing["kind"] == "repo_missing"


async def test_rebase_conflict_reports_files_and_leaves_the_repo_as_it_was(
    sandbox: Sandbox,
) -> None:
    sandbox.push_from_other("train.py", "print('theirs')\n")
    sandbox.commit(sandbox.cluster, "train.py", "print('mine')\n", "mine")
    before = snapshot(sandbox, sandbox.cluster)
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool("airgapped_rebase", {}))
    assert err["kind"] == "conflict"
    assert err["conflicted_files"] == ["train.py"] and err["restored"] is True
    assert snapshot(sandbox, sandbox.cluster) == before


async def test_unreachable_host_is_a_normal_status_result_with_a_hint(sandbox: Sandbox) -> None:
    async with mcp_session(sandbox) as s:
        result = await s.call_tool("airgapped_status", {"ssh_host": "aexp-sandbox-closed"})
    assert not result.is_error
    status = data(result)
    assert status["reachable"] is False and status["problem"] == "connection_refused"
    assert status["hint"]


# ------------------------------------------------------------------ consent


async def test_wandb_without_approve_is_consent_required_with_preview(sandbox: Sandbox) -> None:
    async with mcp_session(sandbox) as s:
        err = data(await s.call_tool("airgapped_wandb_sync", {}))
    assert err["kind"] == "consent_required"
    assert len(err["preview"]["runs"]) == 2 and len(err["preview"]["commands"]) == 2
    assert "approve=true" in err["hint"]
    assert not sandbox.wandb_log.exists()


async def accept(context: Any, params: ElicitRequestParams) -> ElicitResult:
    assert "offline-run-" in params.message and "one `wandb sync` per run" in params.message
    assert params.message.count(" sync wandb/offline-run-") == 2  # every command it runs
    return ElicitResult(action="accept", content={"approve": True})


async def decline(context: Any, params: ElicitRequestParams) -> ElicitResult:
    return ElicitResult(action="decline")


async def test_elicit_mode_uploads_only_after_the_human_accepts(sandbox: Sandbox) -> None:
    env = {"AEXP_RELAY_CONSENT": "elicit"}
    async with mcp_session(sandbox, env, elicitation_callback=accept) as s:
        result = data(await s.call_tool("airgapped_wandb_sync", {"approve": True}))
    assert len(result["synced"]) == 2
    assert sandbox.wandb_log.read_text().count("sync ") == 2  # one wandb sync per run


async def test_elicit_mode_declined_uploads_nothing_even_with_approve(sandbox: Sandbox) -> None:
    env = {"AEXP_RELAY_CONSENT": "elicit"}
    async with mcp_session(sandbox, env, elicitation_callback=decline) as s:
        err = data(await s.call_tool("airgapped_wandb_sync", {"approve": True}))
    assert err["kind"] == "consent_declined"
    assert not sandbox.wandb_log.exists()


async def dismiss(context: Any, params: ElicitRequestParams) -> ElicitResult:
    return ElicitResult(action="cancel")  # Esc in the form, or `claude -p` with nobody to ask


async def accept_unticked(context: Any, params: ElicitRequestParams) -> ElicitResult:
    return ElicitResult(action="accept", content={"approve": False})


@pytest.mark.parametrize(
    ("answer", "kind", "said"),
    [
        (decline, "consent_declined", "The user declined"),
        (accept_unticked, "consent_declined", "The user declined"),
        (dismiss, "consent_cancelled", "did not decide"),
    ],
)
async def test_elicit_mode_tells_a_decision_from_a_dismissed_question(
    sandbox: Sandbox, answer: Any, kind: str, said: str
) -> None:
    env = {"AEXP_RELAY_CONSENT": "elicit"}
    async with mcp_session(sandbox, env, elicitation_callback=answer) as s:
        err = data(await s.call_tool("airgapped_wandb_sync", {"approve": True}))
    assert err["kind"] == kind and said in err["message"], err
    assert err["tool"] == "airgapped_wandb_sync" and len(err["preview"]["runs"]) == 2
    assert not sandbox.wandb_log.exists()
    outcomes = [json.loads(x)["outcome"] for x in sandbox.audit_log.read_text().splitlines()]
    assert outcomes[-1] == kind


async def test_elicit_mode_fails_closed_when_the_client_cannot_elicit(sandbox: Sandbox) -> None:
    async with mcp_session(sandbox, {"AEXP_RELAY_CONSENT": "elicit"}) as s:
        err = data(await s.call_tool("airgapped_wandb_sync", {"approve": True}))
    assert err["kind"] == "consent_unavailable" and "elicitation" in err["message"]
    assert "approve=true" in err["hint"]
    assert not sandbox.wandb_log.exists()


async def test_elicit_mode_without_approve_still_returns_the_preview(sandbox: Sandbox) -> None:
    async with mcp_session(
        sandbox, {"AEXP_RELAY_CONSENT": "elicit"}, elicitation_callback=accept
    ) as s:
        err = data(await s.call_tool("airgapped_wandb_sync", {}))
    assert err["kind"] == "consent_required" and err["preview"]["runs"]
    assert not sandbox.wandb_log.exists()


# ------------------------------------------------------------------ stdin, progress, concurrency


async def test_a_remote_command_that_reads_stdin_gets_eof_and_returns_promptly(
    sandbox: Sandbox,
) -> None:
    reader = "sh -c 'if read line; then echo GOT:$line; else echo STDIN-EOF; fi'"
    started = time.monotonic()
    async with mcp_session(sandbox, {"AEXP_RELAY_WANDB": reader}) as s:
        result = data(await s.call_tool("airgapped_wandb_sync", {"approve": True, "timeout": 20}))
    assert time.monotonic() - started < 10
    assert "STDIN-EOF" in result["output_tail"]


async def test_long_ops_send_progress_heartbeats(sandbox: Sandbox) -> None:
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 5; git-upload-pack")
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append((progress, total, message))

    async with mcp_session(sandbox) as s:
        result = await s.call_tool("airgapped_fetch", {}, progress_callback=on_progress)
    assert not result.is_error
    assert len(seen) >= 1
    values = [p for p, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values)
    assert all(m and "fetch" in m for _, _, m in seen)


async def test_read_only_calls_are_not_blocked_by_a_slow_mutating_call(sandbox: Sandbox) -> None:
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 4; git-upload-pack")
    async with mcp_session(sandbox) as s:
        done: dict[str, float] = {}
        started = time.monotonic()

        async def call(name: str) -> None:
            result = await s.call_tool(name, {})
            assert not result.is_error, data(result)
            done[name] = time.monotonic() - started

        async with anyio.create_task_group() as tg:
            tg.start_soon(call, "airgapped_fetch")
            await anyio.sleep(0.3)
            tg.start_soon(call, "airgapped_repo_status")
    assert done["airgapped_repo_status"] < 3 < done["airgapped_fetch"]


async def test_concurrent_pushes_are_serialized_and_never_collide(sandbox: Sandbox) -> None:
    for i in range(3):
        sandbox.git(sandbox.cluster, "branch", f"b{i}")
    async with mcp_session(sandbox) as s:
        results: list[Any] = []

        async def push(branch: str) -> None:
            results.append(await s.call_tool("airgapped_push", {"branch": branch}))

        async with anyio.create_task_group() as tg:
            for i in range(3):
                tg.start_soon(push, f"b{i}")
    assert all(not r.is_error for r in results), [data(r) for r in results]
    assert {f"refs/heads/b{i}" for i in range(3)} <= set(sandbox.origin_refs())


# ------------------------------------------------------------------ cancellation and shutdown


async def test_cancelled_call_kills_local_and_remote_processes_and_the_session_lives_on(
    sandbox: Sandbox,
) -> None:
    sandbox.git(sandbox.cluster, "config", "remote.origin.uploadpack", "sleep 47; git-upload-pack")
    async with mcp_session(sandbox) as s:
        with anyio.move_on_after(1.5):
            await s.call_tool("airgapped_fetch", {})
        cancelled_at = time.monotonic()
        assert await anyio.to_thread.run_sync(
            lambda: wait_until(lambda: sandbox.processes(masters=False) == [], 3)
        )
        assert await anyio.to_thread.run_sync(
            lambda: wait_until(lambda: processes_matching("sleep 47") == [], 6)
        )
        assert time.monotonic() - cancelled_at < 6
        sandbox.git(sandbox.cluster, "config", "--unset", "remote.origin.uploadpack")
        assert not (await s.call_tool("airgapped_repo_status", {})).is_error
    assert await anyio.to_thread.run_sync(
        lambda: wait_until(lambda: '"outcome": "cancelled"' in sandbox.audit_log.read_text(), 3)
    )


def test_tool_table_derives_from_the_op_registry() -> None:
    names = {spec.name for spec in build_tool_specs()}
    assert names == SEVEN


TOOL = "airgapped_repo_status"


@pytest.mark.skipif(shutil.which("npx") is None, reason="npx (Node.js) is not installed")
def test_the_mcp_inspector_cli_lists_and_calls_tools(sandbox: Sandbox) -> None:
    """An independent client: the official MCP Inspector, pinned (it must run on Node 20)."""
    base = ["npx", "-y", "@modelcontextprotocol/inspector@2.12.0", "--cli"]
    env_args = [a for k, v in sandbox.env().items() for a in ("-e", f"{k}={v}")]
    server = [sys.executable, "-m", "aexp_relay_mcp", "serve"]
    listed = subprocess.run(
        [*base, *env_args, *server, "--method", "tools/list"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr[-2000:]
    names = {t["name"] for t in json.loads(listed.stdout)["tools"]}
    assert names == SEVEN
    called = subprocess.run(
        [*base, *env_args, *server, "--method", "tools/call", "--tool-name", TOOL],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert called.returncode == 0, called.stderr[-2000:]
    result = json.loads(called.stdout)
    assert not result.get("isError"), result
    assert result["structuredContent"]["branch"] == "main"


async def test_elicit_mode_uploads_exactly_the_runs_the_human_saw(sandbox: Sandbox) -> None:
    late = sandbox.cluster / "wandb" / "offline-run-20260101_130000-late"

    async def accept_then_a_run_appears(context: Any, params: ElicitRequestParams) -> ElicitResult:
        assert "late" not in params.message
        late.mkdir()
        (late / "run-late.wandb").write_text("x" * 100)
        return ElicitResult(action="accept", content={"approve": True})

    env = {"AEXP_RELAY_CONSENT": "elicit"}
    async with mcp_session(sandbox, env, elicitation_callback=accept_then_a_run_appears) as s:
        result = data(await s.call_tool("airgapped_wandb_sync", {"approve": True}))
    assert sorted(result["synced"]) == [
        "offline-run-20260101_120000-run0", "offline-run-20260101_120001-run1"
    ]  # fmt: skip
    assert "late" not in sandbox.wandb_log.read_text()
