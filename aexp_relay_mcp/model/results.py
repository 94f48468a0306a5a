"""Frozen result values. These cross every layer: the MCP tools return them as
structured content, the CLI renders them, ``--json`` dumps them.

A result that carries lists names them in ``BUDGET_LISTS``: ``budget.fit`` cuts them to
the size budget and sets ``BUDGET_FLAG``; the counts beside them stay exact.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class OpResult(_Frozen):
    op: str = Field(description="The op that ran.")
    request_id: str = Field(description="Id of this call; the audit log has the same id.")
    host: str = Field(description="The ssh host it ran on.")
    repo: str = Field(description="The repo path on the host.")
    duration_s: float = Field(description="Wall time of the call in seconds.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What works but needs your attention, with what to change (e.g. an ssh "
        "control socket of another user's that the relay passed over).",
    )


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
    BUDGET_LISTS: ClassVar[tuple[str, ...]] = (
        "staged",
        "unstaged",
        "untracked",
        "conflicted",
        "interrupted_ops",
    )
    BUDGET_FLAG: ClassVar[str] = "lists_truncated"

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
    lists_truncated: bool = Field(
        description="True when a list was cut to fit the result's size; the counts are exact."
    )
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
    BUDGET_LISTS: ClassVar[tuple[str, ...]] = ("updated_refs",)
    BUDGET_FLAG: ClassVar[str] = "refs_truncated"

    remote: str = Field(description="The remote fetched, or 'all'.")
    updated_refs: list[RefUpdate] = Field(
        description="The refs that moved, what matters first: the current branch's upstream, "
        "then its remote's branches, then the rest (by name). Cut to fit; see the counts."
    )
    new_count: int = Field(description="Refs the fetch created (exact).")
    updated_count: int = Field(description="Refs the fetch moved (exact).")
    deleted_count: int = Field(description="Refs --prune deleted (exact).")
    refs_truncated: bool = Field(description="True when updated_refs was cut to fit.")
    after: BranchState = Field(description="Branch and ahead/behind after the fetch.")


class Commit(_Frozen):
    sha: str
    subject: str


class _History(OpResult):
    """What a pull or a rebase moved: HEAD before and after, and the commits between."""

    BUDGET_LISTS: ClassVar[tuple[str, ...]] = ("commits",)
    BUDGET_FLAG: ClassVar[str] = "commits_truncated"

    old_head: str | None
    new_head: str | None
    up_to_date: bool
    commits: list[Commit] = Field(description="old_head..new_head, newest first (cut to fit).")
    commit_count: int = Field(description="Commits in old_head..new_head (exact).")
    commits_truncated: bool = Field(description="True when commits was cut.")
    after: BranchState = Field(description="ahead > 0 means local commits wait to be pushed.")


class PullResult(_History):
    pass


class RebaseResult(_History):
    pass


class PushedRef(_Frozen):
    local: str
    remote_ref: str
    status: str = Field(description="ok, new, up_to_date, rejected or remote_rejected.")
    summary: str = Field(
        description="git's own summary, e.g. 'abc..def' or '[rejected] (fetch first)'."
    )


class PushResult(OpResult):
    BUDGET_LISTS: ClassVar[tuple[str, ...]] = ("refs",)
    BUDGET_FLAG: ClassVar[str] = "refs_truncated"

    remote: str
    refs: list[PushedRef]
    ref_count: int = Field(description="Refs git reported (exact).")
    refs_truncated: bool = Field(description="True when refs was cut.")
    up_to_date: bool = Field(description="Nothing needed pushing.")


class WandbRun(_Frozen):
    name: str = Field(description="The offline-run-* directory name in the wandb directory.")
    size_bytes: int
    synced: bool


class WandbPreview(_Frozen):
    """What an approval covers: exactly ``runs``, one ``wandb sync`` each. A sweep larger
    than one preview can show is covered page by page (``more_runs``, ``next_page``)."""

    runs: list[WandbRun] = Field(
        description="The runs an approval uploads, every one of them, by name: the first "
        "runs the arguments select (at most 100)."
    )
    run_count: int = Field(description="How many runs an approval uploads (len of runs).")
    total_bytes: int = Field(description="Their size together (exact).")
    first_run: str | None = Field(description="The first of them by name.")
    last_run: str | None = Field(description="The last of them by name.")
    command_template: str = Field(
        description="The command that runs once per run, exactly as the login node gets "
        "it, with <run> standing for the run's name."
    )
    commands: list[str] = Field(
        description="Every command the upload runs, in order, one per run; empty when they "
        "would not fit in the result (command_template and runs say the same)."
    )
    selected_count: int = Field(
        description="Unsynced runs the arguments select, limit applied (exact). More than "
        "run_count when they do not fit in one preview."
    )
    selected_bytes: int = Field(description="Their size together (exact).")
    more_runs: int = Field(
        description="Selected runs this preview does not cover (selected_count - run_count): "
        "an approval does not upload them."
    )
    next_page: dict[str, Any] | None = Field(
        description="Arguments that preview the selected runs after these; after this "
        "upload, the same arguments again do too. None when there are none."
    )
    all_runs: int = Field(description="Offline runs in the wandb directory, synced or not.")
    unsynced_runs: int = Field(description="Of those, not synced yet (any selection).")
    wandb_available: bool = Field(
        description="Whether the wandb command was found on the login node."
    )
    wandb_dir: str = Field(
        description="Where the runs were looked for (relative to the repo, or absolute)."
    )
    wandb_dir_exists: bool = Field(description="Whether that directory exists.")


class WandbSyncResult(OpResult):
    BUDGET_LISTS: ClassVar[tuple[str, ...]] = ("synced",)
    BUDGET_FLAG: ClassVar[str] = "runs_truncated"

    synced: list[str] = Field(description="Run names uploaded, in order (cut to fit).")
    synced_count: int = Field(description="Runs uploaded by this call (exact).")
    already_synced: int = Field(
        description="Runs asked for that were synced already, and skipped: nothing is "
        "uploaded twice."
    )
    runs_truncated: bool = Field(description="True when synced was cut.")
    command_template: str | None = Field(
        description="The command that ran once per run (<run>: its name); None when nothing "
        "needed syncing."
    )
    more_runs: int = Field(
        default=0,
        description="Selected runs the approval did not cover (beyond one preview): preview "
        "again with the same arguments to see them.",
    )
    output_tail: str = Field(description="Last lines of wandb's output.")


class ConnectionStatus(_Frozen):
    host: str
    repo: str | None = Field(description="The repo path as given.")
    repo_resolved: str | None = Field(
        description="The repo path as the login node resolved it (~ and $VARIABLES expanded)."
    )
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
    login_shell: str | None = Field(
        description="The account's login shell on the host ($SHELL), e.g. /bin/bash or "
        "/usr/bin/tcsh; None when no command could start there."
    )
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
