"""Every op, for real: the sandbox's sshd, a bare origin, and the cluster clone."""

from __future__ import annotations

import json
import os
import shlex
import stat
from collections.abc import Iterator

import pytest

from aexp_relay_mcp import (
    ConsentRequiredError,
    RelayClient,
    RelayDownError,
    RemoteCommandError,
)
from aexp_relay_mcp.model.results import (
    FetchResult,
    PullResult,
    PushResult,
    RebaseResult,
    RepoStatus,
    WandbSyncResult,
)
from aexp_relay_mcp.sandbox import Sandbox

from .conftest import BOTH_PROFILES, running_sandbox, snapshot

pytestmark = [pytest.mark.anyio, pytest.mark.sshd]


@pytest.fixture(params=BOTH_PROFILES)
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """Every op test runs four times: on a clean account; on a login node whose shell
    prints a banner on stdout, notices on stderr, and takes 0.3 s to start, and whose user
    has a power user's git config (untracked files hidden, colours, pagers, rebase and
    autostash defaults, pushing tags) and chatty hooks; and on accounts whose login shell is
    tcsh (a noisy ~/.cshrc) and fish (a noisy config.fish): every value must be the same."""
    with running_sandbox(**request.param) as sb:
        yield sb


def audit_lines(sb: Sandbox) -> list[dict[str, object]]:
    return [json.loads(line) for line in sb.audit_log.read_text().splitlines()]


# ------------------------------------------------------------------ repo_status


async def test_repo_status_reports_branch_head_and_clean_tree(
    client: RelayClient, sandbox: Sandbox
) -> None:
    result = await client.request("repo_status")
    assert isinstance(result, RepoStatus)
    assert result.branch == "main"
    assert result.upstream == "origin/main"
    assert (result.ahead, result.behind) == (0, 0)
    assert result.head == sandbox.head(sandbox.cluster)
    assert result.head_subject == "second commit"
    assert result.clean


async def test_repo_status_lists_staged_unstaged_untracked_files(
    client: RelayClient, sandbox: Sandbox
) -> None:
    c = sandbox.cluster
    sandbox.commit(c, "local.txt", "local\n", "local work")
    sandbox.write(c / "README.md", "changed\n")
    sandbox.write(c / "new.txt", "new\n")
    sandbox.git(c, "add", "new.txt")
    sandbox.write(c / "notes.txt", "untracked\n")
    result = await client.request("repo_status")
    assert isinstance(result, RepoStatus)
    assert [e.path for e in result.staged] == ["new.txt"]
    assert [e.path for e in result.unstaged] == ["README.md"]
    assert result.untracked == ["notes.txt"]
    assert (result.staged_count, result.unstaged_count, result.untracked_count) == (1, 1, 1)
    assert result.ahead == 1 and not result.clean


async def test_repo_status_caps_file_lists_but_keeps_exact_counts(
    client: RelayClient, sandbox: Sandbox
) -> None:
    for i in range(250):
        sandbox.write(sandbox.cluster / f"u{i:03}.txt", "x")
    result = await client.request("repo_status")
    assert isinstance(result, RepoStatus)
    assert result.untracked_count == 250
    assert len(result.untracked) == 200
    assert result.lists_truncated


async def test_repo_path_with_spaces_and_quotes_is_entered_literally(
    client: RelayClient, sandbox: Sandbox
) -> None:
    odd = sandbox.remote_dir / "it's a $(weird) `repo`; name"
    sandbox.git(sandbox.remote_dir, "clone", "-q", str(sandbox.origin), str(odd))
    result = await client.request("repo_status", remote_repo=str(odd))
    assert isinstance(result, RepoStatus) and result.branch == "main"


async def test_tilde_repo_path_expands_on_the_remote(client: RelayClient, sandbox: Sandbox) -> None:
    # The login node's home is the sandbox's own (sshd sets HOME for the session).
    sandbox.git(
        sandbox.remote_dir, "clone", "-q", str(sandbox.origin), str(sandbox.account.home / "exp")
    )
    result = await client.request("repo_status", remote_repo="~/exp")
    assert isinstance(result, RepoStatus) and result.branch == "main"


async def test_missing_repo_fails_with_repo_missing(client: RelayClient, sandbox: Sandbox) -> None:
    with pytest.raises(RemoteCommandError) as err:
        await client.request("repo_status", remote_repo=str(sandbox.remote_dir / "nope"))
    assert err.value.kind == "repo_missing"
    assert "remote_repo" in err.value.hint


async def test_repo_path_that_is_a_file_fails_with_repo_not_dir(
    client: RelayClient, sandbox: Sandbox
) -> None:
    with pytest.raises(RemoteCommandError) as err:
        await client.request("repo_status", remote_repo=str(sandbox.wandb))
    assert err.value.kind == "repo_not_dir"


async def test_directory_that_is_not_a_checkout_fails_with_not_a_repo(
    client: RelayClient, sandbox: Sandbox
) -> None:
    with pytest.raises(RemoteCommandError) as err:
        await client.request("repo_status", remote_repo=str(sandbox.bin_dir))
    assert err.value.kind == "not_a_repo"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own a repo as another user")
async def test_repo_owned_by_another_user_fails_with_dubious_ownership(
    client: RelayClient, sandbox: Sandbox
) -> None:
    foreign = sandbox.root / "foreign"
    import subprocess

    subprocess.run(["git", "init", "-q", str(foreign)], check=True)
    os.chmod(foreign, 0o755)
    with pytest.raises(RemoteCommandError) as err:
        await client.request("repo_status", remote_repo=str(foreign))
    assert err.value.kind == "dubious_ownership"
    assert "safe.directory" in err.value.hint


# ------------------------------------------------------------------ fetch / pull


async def test_fetch_reports_moved_refs_and_behind_count(
    client: RelayClient, sandbox: Sandbox
) -> None:
    new_sha = sandbox.push_from_other()
    result = await client.request("fetch", {"remote": "origin"})
    assert isinstance(result, FetchResult)
    assert [(u.ref, u.new, u.change) for u in result.updated_refs] == [
        ("origin/main", new_sha, "updated")
    ]
    assert result.after.behind == 1


async def test_fetch_prunes_deleted_remote_branches(client: RelayClient, sandbox: Sandbox) -> None:
    sandbox.git(sandbox.other, "push", "-q", "origin", "main:feature")
    await client.request("fetch")
    sandbox.git(sandbox.other, "push", "-q", "origin", ":feature")
    result = await client.request("fetch")
    assert isinstance(result, FetchResult)
    assert [(u.ref, u.change) for u in result.updated_refs] == [("origin/feature", "deleted")]


async def test_fetch_of_an_unconfigured_remote_is_refused_by_the_remote_guard(
    client: RelayClient, sandbox: Sandbox
) -> None:
    with pytest.raises(RemoteCommandError) as err:
        await client.request("fetch", {"remote": "upstream"})
    assert err.value.kind == "unknown_remote"


async def test_pull_fast_forwards_and_lists_commits_taken(
    client: RelayClient, sandbox: Sandbox
) -> None:
    old = sandbox.head(sandbox.cluster)
    sha = sandbox.push_from_other()
    result = await client.request("pull")
    assert isinstance(result, PullResult)
    assert (result.old_head, result.new_head) == (old, sha)
    assert [c.sha for c in result.commits] == [sha]
    assert result.commit_count == 1 and not result.up_to_date
    assert sandbox.head(sandbox.cluster) == sha


async def test_pull_on_diverged_branches_fails_with_diverged_and_changes_nothing(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.push_from_other()
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local commit")
    before = snapshot(sandbox, sandbox.cluster)
    with pytest.raises(RemoteCommandError) as err:
        await client.request("pull")
    assert err.value.kind == "diverged"
    assert "rebase" in err.value.hint
    assert snapshot(sandbox, sandbox.cluster) == before


async def test_pull_that_would_overwrite_local_changes_fails_with_dirty_worktree(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.push_from_other("train.py", "print('upstream')\n")
    sandbox.write(sandbox.cluster / "train.py", "print('my edit')\n")
    before = snapshot(sandbox, sandbox.cluster)
    with pytest.raises(RemoteCommandError) as err:
        await client.request("pull")
    assert err.value.kind == "dirty_worktree"
    assert snapshot(sandbox, sandbox.cluster) == before


# ------------------------------------------------------------------ rebase


async def test_rebase_replays_local_commits_on_top_of_upstream(
    client: RelayClient, sandbox: Sandbox
) -> None:
    up = sandbox.push_from_other()
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local commit")
    result = await client.request("rebase")
    assert isinstance(result, RebaseResult)
    assert result.after.ahead == 1 and result.after.behind == 0
    assert sandbox.git(sandbox.cluster, "rev-parse", "HEAD~1").strip() == up


async def test_rebase_conflict_is_aborted_and_the_repo_is_exactly_as_before(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.push_from_other("train.py", "print('theirs')\n")
    sandbox.commit(sandbox.cluster, "train.py", "print('mine')\n", "my change")
    before = snapshot(sandbox, sandbox.cluster)
    with pytest.raises(RemoteCommandError) as err:
        await client.request("rebase")
    assert err.value.kind == "conflict"
    assert err.value.details["conflicted_files"] == ["train.py"]
    assert err.value.details["restored"] is True
    assert snapshot(sandbox, sandbox.cluster) == before
    assert not (sandbox.cluster / ".git" / "rebase-merge").exists()


async def test_rebase_with_a_dirty_worktree_is_refused_and_changes_nothing(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.push_from_other()
    sandbox.write(sandbox.cluster / "README.md", "uncommitted\n")
    before = snapshot(sandbox, sandbox.cluster)
    with pytest.raises(RemoteCommandError) as err:
        await client.request("rebase")
    assert err.value.kind == "dirty_worktree"
    assert snapshot(sandbox, sandbox.cluster) == before


async def test_rebase_never_touches_a_rebase_already_in_progress(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.push_from_other("train.py", "print('theirs')\n")
    sandbox.commit(sandbox.cluster, "train.py", "print('mine')\n", "my change")
    sandbox.git(sandbox.cluster, "fetch", "-q")
    sandbox.git(sandbox.cluster, "rebase", "origin/main", check=False)  # user's own, conflicted
    assert (sandbox.cluster / ".git" / "rebase-merge").exists()
    with pytest.raises(RemoteCommandError) as err:
        await client.request("rebase")
    assert err.value.kind == "operation_in_progress"
    assert (sandbox.cluster / ".git" / "rebase-merge").exists()


# ------------------------------------------------------------------ push


async def test_push_lands_the_commit_in_origin(client: RelayClient, sandbox: Sandbox) -> None:
    sha = sandbox.commit(sandbox.cluster, "result.txt", "42\n", "result")
    result = await client.request("push")
    assert isinstance(result, PushResult)
    assert [(r.remote_ref, r.status) for r in result.refs] == [("refs/heads/main", "ok")]
    assert sandbox.origin_refs()["refs/heads/main"] == sha


async def test_push_of_a_named_branch_creates_it_on_origin(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.git(sandbox.cluster, "branch", "exp/lr-sweep")
    result = await client.request("push", {"branch": "exp/lr-sweep"})
    assert isinstance(result, PushResult) and result.refs[0].status == "new"
    assert "refs/heads/exp/lr-sweep" in sandbox.origin_refs()


async def test_push_rejected_as_non_fast_forward_changes_nothing_anywhere(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.push_from_other()
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local commit")
    before_origin = sandbox.origin_refs()
    before = snapshot(sandbox, sandbox.cluster)
    with pytest.raises(RemoteCommandError) as err:
        await client.request("push")
    assert err.value.kind == "non_fast_forward"
    assert "rebase" in err.value.hint and "push" in err.value.hint
    assert sandbox.origin_refs() == before_origin
    assert snapshot(sandbox, sandbox.cluster) == before


async def test_push_refused_by_a_server_hook_fails_with_push_rejected(
    client: RelayClient, sandbox: Sandbox
) -> None:
    hook = sandbox.origin / "hooks" / "pre-receive"
    sandbox.write(hook, "#!/bin/sh\necho 'main is protected' >&2\nexit 1\n")
    hook.chmod(0o755)
    sandbox.commit(sandbox.cluster, "x.txt", "x\n", "x")
    before_origin = sandbox.origin_refs()
    with pytest.raises(RemoteCommandError) as err:
        await client.request("push")
    assert err.value.kind == "push_rejected"
    assert "main is protected" in err.value.stderr_tail
    assert sandbox.origin_refs() == before_origin


async def test_push_ignores_a_forcing_push_refspec_in_the_repo_config(
    client: RelayClient, sandbox: Sandbox
) -> None:
    """A repo config that would force-push (remote.origin.push=+...) is never used."""
    sandbox.push_from_other()
    sandbox.git(sandbox.cluster, "config", "remote.origin.push", "+refs/heads/*:refs/heads/*")
    sandbox.commit(sandbox.cluster, "local.txt", "mine\n", "local commit")
    before_origin = sandbox.origin_refs()
    with pytest.raises(RemoteCommandError) as err:
        await client.request("push")
    assert err.value.kind == "non_fast_forward"
    assert sandbox.origin_refs() == before_origin


# ------------------------------------------------------------------ wandb


async def test_wandb_sync_without_approval_uploads_nothing_and_returns_a_preview(
    client: RelayClient, sandbox: Sandbox
) -> None:
    with pytest.raises(ConsentRequiredError) as err:
        await client.request("wandb_sync")
    preview = err.value.preview
    assert [r.name for r in preview.runs] == [
        "offline-run-20260101_120000-run0",
        "offline-run-20260101_120001-run1",
    ]
    assert preview.all_runs == 3
    assert (preview.run_count, preview.unsynced_runs) == (2, 2)
    assert all(r.size_bytes > 0 for r in preview.runs)
    assert preview.total_bytes == sum(r.size_bytes for r in preview.runs)
    # one wandb sync per run, every one of them shown as it will run
    assert [c.split(" ", 1)[1] for c in preview.commands] == [
        "sync wandb/offline-run-20260101_120000-run0",
        "sync wandb/offline-run-20260101_120001-run1",
    ]
    assert preview.command_template == f"{sandbox.wandb} sync wandb/<run>"
    assert (preview.selected_count, preview.more_runs, preview.next_page) == (2, 0, None)
    assert "one `wandb sync` per run" in str(err.value)
    assert not sandbox.wandb_log.exists()
    assert audit_lines(sandbox)[-1]["outcome"] == "consent_required"


async def test_wandb_sync_with_approval_runs_the_previewed_command(
    client: RelayClient, sandbox: Sandbox
) -> None:
    shown = (await client.wandb_preview()).commands
    result = await client.request("wandb_sync", approve=True)
    assert isinstance(result, WandbSyncResult)
    assert len(result.synced) == 2 and result.synced_count == 2
    assert sandbox.wandb_log.read_text().splitlines() == [
        "sync wandb/offline-run-20260101_120000-run0",
        "sync wandb/offline-run-20260101_120001-run1",
    ]
    # what the stub received is what the preview showed, word for word
    assert sandbox.wandb_received() == [shlex.split(c) for c in shown]
    assert result.command_template == f"{sandbox.wandb} sync wandb/<run>"
    again = await client.request("wandb_sync", approve=True)
    assert isinstance(again, WandbSyncResult) and again.synced == []
    assert again.command_template is None


async def test_wandb_sync_of_named_runs_only_uploads_those(
    client: RelayClient, sandbox: Sandbox
) -> None:
    name = "offline-run-20260101_120001-run1"
    result = await client.request("wandb_sync", {"runs": [name]}, approve=True)
    assert isinstance(result, WandbSyncResult) and result.synced == [name]
    assert sandbox.wandb_log.read_text().split() == ["sync", f"wandb/{name}"]


async def test_wandb_sync_of_an_unknown_run_fails_before_uploading(
    client: RelayClient, sandbox: Sandbox
) -> None:
    with pytest.raises(RemoteCommandError) as err:
        await client.request("wandb_sync", {"runs": ["offline-run-nope"]}, approve=True)
    assert err.value.kind == "run_not_found"
    assert not sandbox.wandb_log.exists()


async def test_wandb_missing_on_the_remote_fails_with_wandb_missing(sandbox: Sandbox) -> None:
    client = RelayClient(config=sandbox.config(wandb="/nonexistent/wandb"))
    with pytest.raises(RemoteCommandError) as err:
        await client.request("wandb_sync", approve=True)
    assert err.value.kind == "wandb_missing"
    assert "AEXP_RELAY_WANDB" in err.value.hint


async def test_remote_exit_255_is_a_command_failure_not_a_dead_relay(sandbox: Sandbox) -> None:
    """ssh itself also exits 255; the status marker tells the two apart."""
    client = RelayClient(config=sandbox.config(wandb="sh -c 'exit 255'"))
    with pytest.raises(RemoteCommandError) as err:
        await client.request("wandb_sync", approve=True)
    assert err.value.exit_code == 255
    assert not isinstance(err.value, RelayDownError)


# ------------------------------------------------------------------ connection


async def test_check_connection_reports_git_branch_and_wandb(
    client: RelayClient, sandbox: Sandbox
) -> None:
    status = await client.check_connection()
    assert status.reachable and status.problem is None
    assert status.is_git_repo and status.repo_exists and status.branch == "main"
    assert status.git_version and status.git_version[0].isdigit()
    assert status.wandb_available is True
    assert status.rtt_ms is not None and status.rtt_ms > 0


async def test_check_connection_to_a_missing_repo_is_reachable_with_a_hint(
    client: RelayClient, sandbox: Sandbox
) -> None:
    status = await client.check_connection(remote_repo="/nonexistent/repo")
    assert status.reachable and status.repo_exists is False
    assert status.problem == "repo_missing" and "remote_repo" in status.hint


async def test_stopped_sshd_raises_relay_down_with_connection_refused(
    client: RelayClient, sandbox: Sandbox
) -> None:
    sandbox.stop_sshd()
    with pytest.raises(RelayDownError) as err:
        await client.request("repo_status")
    assert err.value.kind == "connection_refused"
    status = await client.check_connection()
    assert not status.reachable and status.problem == "connection_refused"
    sandbox.start_sshd()
    assert isinstance(await client.request("repo_status"), RepoStatus)


@pytest.mark.parametrize(
    ("alias", "kind"),
    [
        ("aexp-sandbox-badhostkey", "host_key_changed"),
        ("aexp-sandbox-unknownhostkey", "host_key_unknown"),
        ("aexp-sandbox-noauth", "auth_failed"),
        ("aexp-sandbox-closed", "connection_refused"),
        ("no-such-host.invalid", "unresolvable_host"),
    ],
)
async def test_ssh_failures_are_classified_and_never_bypassed(
    client: RelayClient, sandbox: Sandbox, alias: str, kind: str
) -> None:
    with pytest.raises(RelayDownError) as err:
        await client.request("repo_status", ssh_host=alias)
    assert err.value.kind == kind
    assert err.value.hint


# ------------------------------------------------------------------ audit


async def test_audit_log_writes_started_before_ssh_then_one_final_line_with_mode_0600(
    client: RelayClient, sandbox: Sandbox
) -> None:
    await client.request("repo_status")
    with pytest.raises(RemoteCommandError):
        await client.request("repo_status", remote_repo="/nonexistent")
    with pytest.raises(Exception):  # noqa: B017 - any validation error
        await client.request("push", {"branch": "--force"})
    lines = audit_lines(sandbox)
    assert [line["outcome"] for line in lines] == ["started", "ok", "started", "failed", "rejected"]
    # A call that reached ssh: the same request_id on its started and final lines.
    assert lines[0]["request_id"] == lines[1]["request_id"] != lines[2]["request_id"]
    assert lines[2]["request_id"] == lines[3]["request_id"]
    assert lines[3]["kind"] == "repo_missing"
    assert {"time", "request_id", "op", "args", "host", "repo", "approved", "exit_code"} <= set(
        lines[1]
    )
    assert all(line["pid"] == os.getpid() and line["surface"] == "library" for line in lines)
    assert lines[1]["via"] == "mux" and lines[1]["multiplexed"] is True
    assert stat.S_IMODE(os.stat(sandbox.audit_log).st_mode) == 0o600
