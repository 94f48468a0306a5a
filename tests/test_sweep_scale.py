"""Sweep scale: at a busy lab's size, every tool's whole result fits the agent's context,
with exact totals. Through the real server over stdio, as the agent gets them."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mcp.types import CallToolResult

from aexp_relay_mcp.model.budget import JSON_CHARS, RESULT_CHARS, fit, fit_data
from aexp_relay_mcp.model.results import FileEntry, RepoStatus
from aexp_relay_mcp.sandbox import Sandbox
from aexp_relay_mcp.sandbox.wandb_stub import make_sweep

from .conftest import running_sandbox
from .mcp_helpers import data, mcp_session

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]


def whole_result(result: CallToolResult) -> int:
    """Characters the client gets: structuredContent and every text block."""
    texts = sum(len(c.text) for c in result.content if hasattr(c, "text"))
    structured = result.structured_content
    return texts + (len(json.dumps(structured, ensure_ascii=False)) if structured else 0)


def unsynced_runs(sb: Sandbox) -> list[Path]:
    return [
        d
        for d in sorted((sb.cluster / "wandb").glob("offline-run-*"))
        if not (d / f"run-{d.name.rsplit('-', 1)[-1]}.wandb.synced").exists()
    ]


def du(dirs: list[Path]) -> int:
    """Their size as the login node measures it (du -sk, in bytes)."""
    out = subprocess.run(["du", "-sk", *map(str, dirs)], capture_output=True, text=True).stdout
    return sum(int(line.split("\t")[0]) * 1024 for line in out.splitlines())


@pytest.fixture(scope="module")
def lab() -> Iterator[Sandbox]:
    with running_sandbox() as sb:
        sb.at_lab_scale(refs=5000, runs=2000, files=10000, commits=2000)
        yield sb


async def test_every_tool_fits_the_budget_at_lab_scale_with_exact_totals(lab: Sandbox) -> None:
    sizes: list[tuple[str, int]] = []

    async def call(tool: str, args: dict[str, Any] | None = None) -> dict[str, Any]:
        result = await s.call_tool(tool, args or {})
        sizes.append((tool, whole_result(result)))
        return data(result)

    async with mcp_session(lab) as s:
        status = await call("airgapped_status")
        assert status["reachable"] and status["is_git_repo"]

        repo = await call("airgapped_repo_status")
        assert repo["untracked_count"] == 10000 and repo["lists_truncated"]
        assert 0 < len(repo["untracked"]) < 10000

        fetch = await call("airgapped_fetch")
        assert (fetch["new_count"], fetch["updated_count"], fetch["deleted_count"]) == (5000, 1, 0)
        assert fetch["refs_truncated"] and fetch["updated_refs"][0]["ref"] == "origin/main"
        assert fetch["after"]["behind"] == 2000

        pull = await call("airgapped_pull")
        assert pull["commit_count"] == 2000 and pull["commits_truncated"]
        assert pull["new_head"] == lab.head(lab.other)

        preview = await call("airgapped_wandb_sync")
        assert preview["kind"] == "consent_required"
        shown = preview["preview"]
        unsynced = unsynced_runs(lab)  # the sweep, and the sandbox's own two
        # counted on the login node: exact; one preview shows (one approval covers) a page
        assert (shown["selected_count"], shown["selected_bytes"]) == (len(unsynced), du(unsynced))
        assert 0 < shown["run_count"] == len(shown["runs"]) < 2000
        each = [shown["command_template"].replace("<run>", r["name"]) for r in shown["runs"]]
        assert shown["commands"] in ([], each)  # every command, or the template for each run
        assert shown["total_bytes"] == du(unsynced[: shown["run_count"]])
        assert shown["more_runs"] == len(unsynced) - shown["run_count"]

        page = await call("airgapped_wandb_sync", shown["next_page"])
        assert page["preview"]["selected_count"] == len(unsynced) - shown["run_count"]
        assert page["preview"]["first_run"] > shown["last_run"]

        upload = await call("airgapped_wandb_sync", {"approve": True, "limit": 40})
        assert upload["synced_count"] == 40

        push = await call("airgapped_push")
        assert push["up_to_date"]
    too_big = [(tool, n) for tool, n in sizes if n > RESULT_CHARS]
    assert not too_big, too_big
    assert len(sizes) == 8, sizes


entries = st.lists(
    st.builds(
        FileEntry,
        path=st.text(min_size=1, max_size=300),
        status=st.sampled_from([".M", "M.", "A.", ".D"]),
        orig_path=st.none() | st.text(max_size=200),
    ),
    max_size=400,
)


@settings(max_examples=60, deadline=None)
@given(staged=entries, unstaged=entries, untracked=st.lists(st.text(max_size=400), max_size=600))
def test_a_result_of_any_size_fits_the_budget_and_keeps_its_counts(
    staged: list[FileEntry], unstaged: list[FileEntry], untracked: list[str]
) -> None:
    result = RepoStatus(
        op="repo_status", request_id="r", host="h", repo="/r", duration_s=0.0,
        branch="main", head="a" * 40, upstream="origin/main", ahead=0, behind=0,
        head_subject="s", clean=False, staged=staged, unstaged=unstaged, untracked=untracked,
        conflicted=[], staged_count=len(staged), unstaged_count=len(unstaged),
        untracked_count=len(untracked), conflicted_count=0, lists_truncated=False,
        interrupted_ops=[],
    )  # fmt: skip
    fitted = fit(result)
    assert len(fitted.model_dump_json()) <= JSON_CHARS + 100  # model_dump_json is compact
    assert len(json.dumps(fitted.model_dump(mode="json"), ensure_ascii=False)) <= JSON_CHARS
    assert (fitted.staged_count, fitted.unstaged_count, fitted.untracked_count) == (
        len(staged), len(unstaged), len(untracked)
    )  # fmt: skip
    assert fitted.staged == staged[: len(fitted.staged)]  # a prefix: what matters first
    cut = len(fitted.untracked) < len(untracked) or len(fitted.staged) < len(staged)
    assert fitted.lists_truncated == (cut or len(fitted.unstaged) < len(unstaged))


@settings(max_examples=40, deadline=None)
@given(files=st.lists(st.text(max_size=500), max_size=500))
def test_an_error_of_any_size_fits_the_budget(files: list[str]) -> None:
    error = {"kind": "conflict", "message": "m", "details": {"conflicted_files": files}}
    fitted = fit_data(error)
    assert len(json.dumps(fitted, ensure_ascii=False)) <= JSON_CHARS
    shown = fitted["details"]["conflicted_files"]
    assert shown == files[: len(shown)] and fitted.get("lists_truncated", False) == (
        len(shown) < len(files)
    )


@pytest.fixture
def sweep() -> Iterator[Sandbox]:
    with running_sandbox(runs=1) as sb:
        make_sweep(sb.cluster / "wandb", 12, sb.repos)
        sb.write(sb.wandb_log.with_name(sb.wandb_log.name + ".delay"), "0.5")
        yield sb


def finished(sb: Sandbox) -> list[str]:
    """Each run wandb finished uploading, as often as it did."""
    done = sb.wandb_log.with_name(sb.wandb_log.name + ".done")
    return [line.rsplit("/", 1)[-1] for line in done.read_text().splitlines()]


async def test_an_upload_cut_short_says_what_is_left_and_resumes_without_uploading_twice(
    sweep: Sandbox,
) -> None:
    approved = [d.name for d in unsynced_runs(sweep)]
    progress: list[str] = []

    async def on_progress(done: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    async with mcp_session(sweep) as s:
        cut = data(
            await s.call_tool(
                "airgapped_wandb_sync",
                {"approve": True, "timeout": 4},
                progress_callback=on_progress,
            )
        )
        assert cut["kind"] == "timeout"
        uploaded, left = cut["uploaded"], cut["left"]
        assert 0 < cut["uploaded_count"] == len(uploaded) < len(approved)
        assert cut["left_count"] == len(left) == len(approved) - len(uploaded)
        assert uploaded + left == approved  # in order: the first ones went up
        assert cut["continue_with"] == {"approve": True, "to_run": approved[-1]}
        assert "consent covers the runs left" in cut["hint"] and "continue_with" in cut["hint"]
        assert any(f"run 1 of {len(approved)} uploaded" in m for m in progress), progress

        rest = data(await s.call_tool("airgapped_wandb_sync", cut["continue_with"]))
        assert rest["synced"] == left and rest["synced_count"] == len(left)
    assert sorted(finished(sweep)) == approved, "a run was uploaded twice, or not at all"
    assert not unsynced_runs(sweep)


async def test_runs_named_again_after_they_were_uploaded_are_skipped(sweep: Sandbox) -> None:
    names = [d.name for d in unsynced_runs(sweep)][:3]
    sweep.wandb_log.with_name(sweep.wandb_log.name + ".delay").unlink()
    async with mcp_session(sweep) as s:
        first = data(await s.call_tool("airgapped_wandb_sync", {"approve": True, "runs": names}))
        again = data(await s.call_tool("airgapped_wandb_sync", {"approve": True, "runs": names}))
    assert first["synced"] == names
    assert (again["synced"], again["already_synced"]) == ([], 3)
    assert finished(sweep) == names
