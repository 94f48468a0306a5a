"""Exact totals at any size, over the real sshd: past the default output cap's worth of
entries, and with the cap set small (64 KiB), every count equals what git itself says, and
no total changes with the cap. (`benchmarks/bench_scale.py` goes to 50,000 files.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from aexp_relay_mcp import ConsentRequiredError, RelayClient
from aexp_relay_mcp.model.budget import RESULT_CHARS, json_size
from aexp_relay_mcp.model.results import FetchResult, PullResult, RepoStatus
from aexp_relay_mcp.sandbox import Sandbox
from aexp_relay_mcp.sandbox.wandb_stub import make_sweep

from .conftest import running_sandbox

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]

FILES, BRANCHES, COMMITS, RUNS = 3000, 3000, 1500, 3000
SMALL_CAP = 64 * 1024


@pytest.fixture(scope="module")
def lab() -> Iterator[Sandbox]:
    """Long paths, long branch names, long subjects: megabytes of git output in all."""
    with running_sandbox() as sb:
        sb.changed_tracked_files(FILES)
        sb.new_branches(BRANCHES, long=True)
        sb.upstream_commits(COMMITS, subject_chars=400)
        make_sweep(sb.cluster / "wandb", RUNS, sb.repos)
        yield sb


def fits(value: object) -> bool:
    dump = value.model_dump(mode="json")  # type: ignore[attr-defined]
    return 2 * json_size(dump) <= RESULT_CHARS


async def test_read_only_totals_are_gits_own_whatever_the_output_cap(lab: Sandbox) -> None:
    records = lab.git(lab.cluster, "status", "--porcelain=v2", "-z").split("\0")
    unstaged = sum(r[:2] in ("1 ", "2 ") and r[3:4] == "M" for r in records)
    assert unstaged == FILES
    seen = []
    for cap in (None, SMALL_CAP):
        client = RelayClient(config=lab.config(**({"output_cap": cap} if cap else {})))
        status = await client.request("repo_status")
        assert isinstance(status, RepoStatus) and fits(status)
        with pytest.raises(ConsentRequiredError) as consent:
            await client.request("wandb_sync")
        preview = consent.value.preview
        seen.append((status.unstaged_count, status.lists_truncated, preview.selected_count))
        assert 0 < len(status.unstaged) < FILES
    # 3000 sweep runs and the sandbox's two unsynced ones; never a smaller number
    assert seen == [(FILES, True, RUNS + 2)] * 2


@pytest.mark.parametrize("cap", [None, SMALL_CAP], ids=["default-cap", "64KiB-cap"])
async def test_fetch_and_pull_totals_are_gits_own_whatever_the_output_cap(cap: int | None) -> None:
    with running_sandbox() as sb:
        sb.new_branches(BRANCHES, long=True)
        upstream = sb.upstream_commits(COMMITS, subject_chars=400)
        client = RelayClient(config=sb.config(**({"output_cap": cap} if cap else {})))
        fetched = await client.request("fetch")
        pulled = await client.request("pull")
        branches = len(sb.git(sb.cluster, "for-each-ref", "refs/remotes/origin/ci").splitlines())
        commits = int(sb.git(sb.cluster, "rev-list", "--count", "HEAD@{1}..HEAD").strip())
    assert isinstance(fetched, FetchResult) and fits(fetched)
    assert (fetched.new_count, fetched.updated_count) == (branches, 1) == (BRANCHES, 1)
    assert fetched.updated_refs[0].ref == "origin/main" and fetched.refs_truncated
    assert isinstance(pulled, PullResult) and fits(pulled)
    assert pulled.commit_count == commits == COMMITS and pulled.new_head == upstream
    assert pulled.commits_truncated and all(len(c.subject) <= 500 for c in pulled.commits)
