"""Frozen result values. These cross every layer: the MCP tools return them as
structured content, the CLI renders them, ``--json`` dumps them."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OpResult(_Frozen):
    op: str = Field(description="The op that ran.")
    request_id: str = Field(description="Id of this call; the audit log has the same id.")
    host: str = Field(description="The ssh host it ran on.")
    repo: str = Field(description="The repo path on the host.")
    duration_s: float = Field(description="Wall time of the call in seconds.")


class FileEntry(_Frozen):
    path: str
    status: str = Field(description="Two-letter git XY status, e.g. 'M.' staged, '.M' unstaged.")
    orig_path: str | None = Field(default=None, description="Source path of a rename or copy.")


class BranchState(_Frozen):
    branch: str | None = Field(description="Current branch; None when HEAD is detached.")
    head: str | None = Field(description="HEAD commit sha; None on an unborn branch.")
    upstream: str | None = Field(description="Upstream ref, e.g. origin/main; None if unset.")
    ahead: int | None = Field(description="Commits on HEAD not on upstream.")
    behind: int | None = Field(description="Commits on upstream not on HEAD.")


class InterruptedOp(_Frozen):
    """An op the relay cut short when nobody was left to tell (its server stopped or was
    killed): how its own undo left the checkout."""

    request_id: str = Field(description="The call's id; the audit log has it too.")
    op: str
    checkout: str = Field(
        description="as_before (undone), completed (it had finished) or undo_failed."
    )
    head: str | None = Field(description="HEAD after the undo.")
    when: str | None = Field(description="When it was cut (UTC, the login node's clock).")


class RepoStatus(OpResult, BranchState):
    head_subject: str | None = Field(description="Subject line of the HEAD commit.")
    clean: bool = Field(description="No staged, unstaged, untracked or conflicted files.")
    staged: list[FileEntry]
    unstaged: list[FileEntry]
    untracked: list[str]
    conflicted: list[str]
    staged_count: int
    unstaged_count: int
    untracked_count: int
    conflicted_count: int
    lists_truncated: bool = Field(description="True when a file list was capped; counts are exact.")
    interrupted_ops: list[InterruptedOp] = Field(
        description="Ops cut short while nobody was left to report to (a stopped or killed "
        "server), with how each left the checkout. The next pull or rebase clears them."
    )


class RefUpdate(_Frozen):
    ref: str
    old: str | None = Field(description="Sha before; None for a new ref.")
    new: str | None = Field(description="Sha after; None for a deleted (pruned) ref.")
    change: str = Field(description="new, updated or deleted.")


class FetchResult(OpResult):
    remote: str = Field(description="The remote fetched, or 'all'.")
    updated_refs: list[RefUpdate]
    after: BranchState = Field(description="Branch and ahead/behind after the fetch.")


class Commit(_Frozen):
    sha: str
    subject: str


class PullResult(OpResult):
    old_head: str | None
    new_head: str | None
    up_to_date: bool
    commits: list[Commit] = Field(description="Commits taken, newest first (capped).")
    commit_count: int
    after: BranchState


class RebaseResult(OpResult):
    old_head: str | None
    new_head: str | None
    up_to_date: bool
    commits: list[Commit] = Field(description="old_head..new_head, newest first (capped).")
    commit_count: int
    after: BranchState = Field(description="ahead > 0 means local commits now wait to be pushed.")


class PushedRef(_Frozen):
    local: str
    remote_ref: str
    status: str = Field(description="ok, new, up_to_date, rejected or remote_rejected.")
    summary: str = Field(
        description="git's own summary, e.g. 'abc..def' or '[rejected] (fetch first)'."
    )


class PushResult(OpResult):
    remote: str
    refs: list[PushedRef]
    up_to_date: bool = Field(description="Nothing needed pushing.")


class WandbRun(_Frozen):
    name: str = Field(description="The offline-run-* directory name in the wandb directory.")
    size_bytes: int
    synced: bool


class WandbPreview(_Frozen):
    runs: list[WandbRun] = Field(description="The runs that would be uploaded.")
    total_bytes: int
    all_runs: int = Field(description="Offline runs found under wandb/, synced or not.")
    command: str = Field(
        description="The exact command that would run in the repo on the login node."
    )
    wandb_available: bool = Field(
        description="Whether the wandb command was found on the login node."
    )
    wandb_dir: str = Field(
        description="Where the runs were looked for (relative to the repo, or absolute)."
    )
    wandb_dir_exists: bool = Field(description="Whether that directory exists.")


class WandbSyncResult(OpResult):
    synced: list[str] = Field(description="Run names uploaded.")
    command: str | None = Field(
        description="The command that ran; None when nothing needed syncing."
    )
    output_tail: str = Field(description="Last lines of wandb's output.")


class ConnectionStatus(_Frozen):
    host: str
    repo: str | None
    reachable: bool
    rtt_ms: float | None = Field(description="Round-trip time of the check command.")
    repo_exists: bool | None
    is_git_repo: bool | None
    branch: str | None
    git_version: str | None
    wandb_available: bool | None
    shared_connection: bool | None = Field(
        description="Whether a shared ssh connection (ControlMaster) to the host is live; "
        "None when reuse is off (AEXP_RELAY_CONTROL_PERSIST=no)."
    )
    shared_connection_age_s: float | None = Field(description="Age of the shared connection.")
    control_path: str | None = Field(description="The ControlPath socket used for the host.")
    login_shell_output: str | None = Field(
        description="Where the login shell prints before every command: stdout, stderr or "
        "both; None when it prints nothing (or the host is unreachable)."
    )
    login_shell_first_line: str | None = Field(
        description="The first line it prints, cut short; None when it prints nothing."
    )
    login_shell_ms: float | None = Field(
        description="How long the login shell takes to start, in ms: a shell-starting call "
        "minus a call that starts no shell (medians). None when it could not be measured."
    )
    warnings: list[str] = Field(
        description="What works but costs (a login shell that prints, or is slow), each with "
        "what to change."
    )
    problem: str | None = Field(description="Error kind when something is wrong, else None.")
    hint: str = Field(description="What to do next; empty when all is well.")
    request_id: str
    duration_s: float
