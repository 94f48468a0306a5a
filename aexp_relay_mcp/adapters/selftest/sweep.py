"""The selftest's sweep: every tool through a real MCP stdio client, each check a row of
the table (``Check``). ``sandbox_sweep`` drives all seven tools against the sandbox,
``live_sweep`` the read-only ones against a real host."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from mcp import ClientSession
from mcp.types import CallToolResult

from ...sandbox import Sandbox
from ..mcp.tools import TOOL_HINTS, build_tool_specs, tool_name

CALL_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    ms: float
    detail: str


class CheckFailed(AssertionError):
    pass


def expect(condition: object, detail: str) -> None:
    if not condition:
        raise CheckFailed(detail)


def payload(result: CallToolResult) -> dict[str, Any]:
    if result.structured_content is not None and not result.is_error:
        return dict(result.structured_content)
    text = result.content[0].text if result.content else "{}"  # type: ignore[union-attr]
    try:
        data = json.loads(text)
    except ValueError:
        return {"kind": "not_json", "message": text}
    return data if isinstance(data, dict) else {"value": data}


class Sweep:
    def __init__(self, session: ClientSession) -> None:
        self.session = session
        self.checks: list[Check] = []
        self.kinds: list[str] = []  # every error kind the tools answered with

    async def step(self, name: str, body: Callable[[], Awaitable[str]]) -> None:
        started = time.perf_counter()
        try:
            detail = await body()
            ok = True
        except CheckFailed as exc:
            detail, ok = f"FAILED: {exc}", False
        except Exception as exc:  # a broken step must not hide the others
            detail, ok = f"FAILED: {type(exc).__name__}: {exc}", False
        self.checks.append(Check(name, ok, (time.perf_counter() - started) * 1000, detail))

    async def call(
        self, tool: str, args: dict[str, Any] | None = None
    ) -> tuple[bool, dict[str, Any]]:
        result = await self.session.call_tool(tool, args or {}, read_timeout_seconds=CALL_TIMEOUT_S)
        data = payload(result)
        if result.is_error:
            self.kinds.append(str(data.get("kind")))
        return bool(result.is_error), data


async def _check_tools(sweep: Sweep) -> str:
    listed = (await sweep.session.list_tools()).tools
    expected = {spec.name: spec for spec in build_tool_specs()}
    names = sorted(t.name for t in listed)
    expect(names == sorted(expected), f"tools are {names}, expected {sorted(expected)}")
    for tool in listed:
        spec = expected[tool.name]
        a = tool.annotations
        expect(a is not None, f"{tool.name} has no annotations")
        assert a is not None
        got = (a.read_only_hint, a.destructive_hint, a.idempotent_hint, a.open_world_hint)
        want = spec.annotations
        expect(
            got
            == (
                want.read_only_hint,
                want.destructive_hint,
                want.idempotent_hint,
                want.open_world_hint,
            ),
            f"{tool.name} annotations {got}",
        )
        expect(tool.output_schema, f"{tool.name} has no outputSchema")
        props = tool.input_schema.get("properties", {})
        expect(
            all(p.get("description") for p in props.values()),
            f"{tool.name}: an argument lacks a description",
        )
        expect(
            tool.input_schema.get("additionalProperties") is False,
            f"{tool.name} accepts unknown arguments",
        )
    expect(set(TOOL_HINTS) == {s.op for s in expected.values() if s.op != "status"}, "hint table")
    return f"{len(listed)} tools, annotations, input and output schemas"


async def sandbox_sweep(sweep: Sweep, sb: Sandbox) -> None:
    async def status() -> str:
        err, data = await sweep.call(tool_name("status"))
        expect(not err and data.get("reachable"), f"not reachable: {data}")
        expect(data.get("is_git_repo") and data.get("branch") == "main", f"repo: {data}")
        shell = data.get("login_shell")
        expect(sb.standin or shell == sb.user.shell, f"login shell {shell}, not {sb.user.shell}")
        return (
            f"reachable, rtt {data.get('rtt_ms')} ms, git {data.get('git_version')}, "
            f"login shell {shell}"
        )

    async def repo_status() -> str:
        err, data = await sweep.call(tool_name("repo_status"))
        expect(not err and data.get("branch") == "main" and data.get("clean"), str(data))
        expect(data.get("head") == sb.head(sb.cluster), f"head {data.get('head')}")
        expect(data.get("head_subject") == "second commit", f"subject {data.get('head_subject')}")
        return f"{data['branch']} ↑{data['ahead']} ↓{data['behind']}, clean, HEAD and subject right"

    async def push() -> str:
        sha = sb.commit(sb.cluster, "selftest.txt", "pushed by selftest\n", "selftest: push")
        err, data = await sweep.call(tool_name("push"))
        expect(not err, str(data))
        expect(sb.origin_refs().get("refs/heads/main") == sha, "commit did not land in origin")
        return f"{sha[:8]} landed in origin/main"

    async def fetch() -> str:
        sha = sb.push_from_other("upstream.txt", "from someone else\n")
        err, data = await sweep.call(tool_name("fetch"), {"remote": "origin"})
        expect(not err, str(data))
        moved = {u["ref"]: u["new"] for u in data.get("updated_refs", [])}
        expect(moved.get("origin/main") == sha, f"fetch did not see {sha[:8]}: {moved}")
        expect(data["after"]["behind"] == 1, f"behind {data['after']['behind']}")
        return f"origin/main -> {sha[:8]}, behind 1"

    async def pull() -> str:
        upstream = sb.git(sb.other, "rev-parse", "HEAD").strip()
        err, data = await sweep.call(tool_name("pull"))
        expect(not err and data.get("new_head") == upstream, str(data))
        span = f"{data['old_head'][:8]}..{data['new_head'][:8]}"
        return f"fast-forward {span}, {data['commit_count']} commit(s)"

    async def diverged_pull() -> str:
        sb.push_from_other("upstream2.txt", "more upstream\n")
        sb.commit(sb.cluster, "local.txt", "local work\n", "selftest: local commit")
        err, data = await sweep.call(tool_name("pull"))
        expect(err and data.get("kind") == "diverged", str(data))
        expect(tool_name("rebase") in data.get("hint", ""), f"hint: {data.get('hint')}")
        return "refused: kind diverged, hint names airgapped_rebase"

    async def rebase() -> str:
        err, data = await sweep.call(tool_name("rebase"))
        expect(not err, str(data))
        after = data["after"]
        expect((after["ahead"], after["behind"]) == (1, 0), f"after: {after}")
        return "local commit replayed on upstream, ↑1 ↓0"

    async def push_after_rebase() -> str:
        err, data = await sweep.call(tool_name("push"))
        expect(not err, str(data))
        expect(sb.origin_refs()["refs/heads/main"] == sb.head(sb.cluster), "origin not updated")
        return "rebased commit landed in origin/main"

    shown: list[str] = []

    async def wandb_refused() -> str:
        err, data = await sweep.call(tool_name("wandb_sync"))
        expect(err and data.get("kind") == "consent_required", str(data))
        preview = data["preview"]
        runs = [r["name"] for r in preview["runs"]]
        expect(len(runs) == 2 and not sb.wandb_log.exists(), "uploaded without approval")
        shown.extend(preview["commands"])
        expect(len(shown) == 2 and "one `wandb sync` per run" in data["message"], str(data))
        return f"consent_required, preview of {len(runs)} runs and their 2 commands, none run"

    async def wandb_approved() -> str:
        err, data = await sweep.call(tool_name("wandb_sync"), {"approve": True})
        expect(not err and len(data.get("synced", [])) == 2, str(data))
        got = sb.wandb_received()
        # what ran is what the preview showed, word for word
        expect(got == [shlex.split(c) for c in shown], f"ran {got}, showed {shown}")
        return f"uploaded {len(data['synced'])} runs: exactly the 2 commands the preview showed"

    for name, body in [
        ("tools/list", lambda: _check_tools(sweep)),
        (tool_name("status"), status),
        (tool_name("repo_status"), repo_status),
        (tool_name("push"), push),
        (tool_name("fetch"), fetch),
        (tool_name("pull"), pull),
        (f"{tool_name('pull')} (diverged)", diverged_pull),
        (tool_name("rebase"), rebase),
        (f"{tool_name('push')} (after rebase)", push_after_rebase),
        (f"{tool_name('wandb_sync')} (no approve)", wandb_refused),
        (f"{tool_name('wandb_sync')} (approve)", wandb_approved),
    ]:
        await sweep.step(name, body)


async def live_sweep(sweep: Sweep) -> None:
    async def status() -> str:
        err, data = await sweep.call(tool_name("status"))
        expect(not err and data.get("reachable"), data.get("hint") or str(data))
        expect(not data.get("problem"), data.get("hint", ""))
        return f"reachable, rtt {data.get('rtt_ms')} ms, branch {data.get('branch')}"

    async def repo_status() -> str:
        err, data = await sweep.call(tool_name("repo_status"))
        expect(not err, str(data))
        return f"{data.get('branch')} ↑{data.get('ahead')} ↓{data.get('behind')}"

    await sweep.step("tools/list", lambda: _check_tools(sweep))
    await sweep.step(tool_name("status"), status)
    await sweep.step(tool_name("repo_status"), repo_status)


def print_table(title: str, checks: list[Check]) -> None:
    width = max(len(c.name) for c in checks) + 2
    print(title)
    print(f"{'tool':<{width}}{'outcome':<9}{'ms':>8}  detail")
    for c in checks:
        print(f"{c.name:<{width}}{'ok' if c.ok else 'FAIL':<9}{c.ms:>8.0f}  {c.detail}")
    passed = sum(c.ok for c in checks)
    print(f"\n{passed} passed, {len(checks) - passed} failed")
