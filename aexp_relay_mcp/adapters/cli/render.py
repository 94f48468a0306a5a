"""Human rendering of results and errors for the CLI. Pure: values in, text out.

``--json`` bypasses this module: it prints the same structured result the MCP tool returns.
"""

from __future__ import annotations

import shlex

from pydantic import BaseModel

from ...model.errors import RelayError, Surface
from ...model.results import (
    BranchState,
    ConnectionStatus,
    FetchResult,
    OpResult,
    PullResult,
    PushResult,
    RebaseResult,
    RepoStatus,
    WandbPreview,
    WandbSyncResult,
)
from ...model.text import human_size

FILES_SHOWN = 20


class Style:
    """ANSI colour only when asked for (a TTY without NO_COLOR)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.enabled else text

    def ok(self, text: str) -> str:
        return self._wrap("32", text)

    def bad(self, text: str) -> str:
        return self._wrap("31", text)

    def dim(self, text: str) -> str:
        return self._wrap("2", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)


def short(sha: str | None) -> str:
    return sha[:8] if sha else "-"


def branch_line(state: BranchState) -> str:
    name = state.branch or f"(detached at {short(state.head)})"
    if state.upstream is None:
        return f"{name} (no upstream)"
    return f"{name} ↑{state.ahead or 0} ↓{state.behind or 0}"


def render_repo_status(r: RepoStatus, s: Style) -> str:
    counts = []
    if r.staged_count:
        counts.append(f"{r.staged_count} staged")
    if r.unstaged_count:
        counts.append(f"{r.unstaged_count} modified")
    if r.untracked_count:
        counts.append(f"{r.untracked_count} untracked")
    if r.conflicted_count:
        counts.append(s.bad(f"{r.conflicted_count} conflicted"))
    head = f"{s.bold(branch_line(r))}, {', '.join(counts) if counts else s.ok('clean')}"
    lines = [head]
    if r.head:
        lines.append(s.dim(f"HEAD {short(r.head)} {r.head_subject or ''}".rstrip()))
    shown = 0
    for label, entries in (
        ("staged", [e.path for e in r.staged]),
        ("modified", [e.path for e in r.unstaged]),
        ("untracked", r.untracked),
        ("conflicted", r.conflicted),
    ):
        for path in entries:
            if shown < FILES_SHOWN:
                lines.append(f"  {label:<10} {path}")
            shown += 1
    if shown > FILES_SHOWN:
        lines.append(s.dim(f"  ... and {shown - FILES_SHOWN} more (--json for all listed)"))
    return "\n".join(lines)


REFS_SHOWN = 10


def render_fetch(r: FetchResult, s: Style) -> str:
    total = r.new_count + r.updated_count + r.deleted_count
    if not total:
        moved = "nothing new"
    else:
        moved = ", ".join(
            f"{u.ref} {u.change}"
            + (f" {short(u.old)}..{short(u.new)}" if u.change == "updated" else "")
            for u in r.updated_refs[:REFS_SHOWN]
        )
        if total > REFS_SHOWN:
            moved += s.dim(
                f" ... {total} refs in all: {r.new_count} new, {r.updated_count} updated, "
                f"{r.deleted_count} deleted"
            )
    return f"fetched {r.remote}: {moved}\nnow {branch_line(r.after)}"


def _history(verb: str, r: PullResult | RebaseResult, s: Style) -> str:
    if r.up_to_date:
        return f"already up to date; {branch_line(r.after)}"
    lines = [
        f"{verb} {short(r.old_head)}..{short(r.new_head)} ({r.commit_count} commit"
        f"{'' if r.commit_count == 1 else 's'}); now {branch_line(r.after)}"
    ]
    lines += [f"  {short(c.sha)} {c.subject}" for c in r.commits[:10]]
    if r.commit_count > 10:
        lines.append(s.dim(f"  ... and {r.commit_count - 10} more"))
    return "\n".join(lines)


def render_push(r: PushResult, s: Style) -> str:
    if r.up_to_date:
        return f"{r.remote}: already up to date"
    return "\n".join(
        f"pushed {ref.local} -> {r.remote} {ref.remote_ref.removeprefix('refs/heads/')} "
        f"({ref.status}: {ref.summary})"
        for ref in r.refs
    )


def render_preview(p: WandbPreview, s: Style) -> str:
    """Every run an approval covers, and the command run for each: nothing hidden."""
    lines = [
        f"Would upload {p.run_count} offline run(s), {human_size(p.total_bytes)}, from "
        f"{p.wandb_dir}, one `wandb sync` per run:"
    ]
    lines += [f"  {run.name}  {human_size(run.size_bytes)}" for run in p.runs]
    lines.append(f"Command on the login node, for each run: {p.command_template}")
    if p.more_runs:
        lines.append(
            s.dim(
                f"{p.more_runs} more selected run(s) are not in this preview and --approve "
                "does not upload them: after these, run again for the next ones "
                f"(or --after-run {p.last_run} to see them now)."
            )
        )
    if not p.wandb_available:
        lines.append(s.bad("wandb was not found on the login node (set AEXP_RELAY_WANDB)."))
    lines.append("Nothing was uploaded. Run again with --approve to upload these runs.")
    return "\n".join(lines)


def render_wandb(r: WandbSyncResult, s: Style) -> str:
    if not r.synced_count:
        return r.output_tail
    names = ", ".join(r.synced[:FILES_SHOWN]) + (" ..." if r.synced_count > FILES_SHOWN else "")
    skipped = f" ({r.already_synced} synced already, skipped)" if r.already_synced else ""
    return f"uploaded {r.synced_count} run(s){skipped}: {names}\n{s.dim(r.output_tail)}"


def render_status(r: ConnectionStatus, s: Style) -> str:
    if not r.reachable:
        return f"{r.host}: {s.bad('unreachable')} ({r.problem})\n{r.hint}"
    parts = [f"{r.host}: {s.ok('reachable')} (round trip {r.rtt_ms:.0f} ms)"]
    if r.repo:
        where = f"on {r.branch}" if r.branch else "(detached)" if r.is_git_repo else ""
        state = "a git checkout" if r.is_git_repo else s.bad("not a git checkout")
        parts.append(f"repo {r.repo}: {state} {where}".rstrip())
    parts.append(
        f"git {r.git_version or s.bad('missing')}, wandb {'yes' if r.wandb_available else 'no'}"
    )
    if r.shared_connection is None:
        parts.append("shared connection: off (AEXP_RELAY_CONTROL_PERSIST=no)")
    elif r.shared_connection:
        parts.append(f"shared connection: live, {r.shared_connection_age_s or 0:.0f}s old")
    else:
        parts.append("shared connection: none (each call logs in)")
    shell = f"login shell: {r.login_shell or 'unknown'}, "
    shell += (
        f"starts in {r.login_shell_ms:.0f} ms"
        if r.login_shell_ms is not None
        else "start-up not measured"
    )
    shell += f", prints on {r.login_shell_output}" if r.login_shell_output else ", prints nothing"
    parts.append(shell)
    for warning in r.warnings:
        parts.append(s.bad("warning: ") + warning)
    if r.problem:
        parts.append(s.bad(f"problem: {r.problem}") + f"\n{r.hint}")
    return "\n".join(parts)


def render_result(result: BaseModel, s: Style) -> str:
    text = _render_result(result, s)
    if isinstance(result, OpResult) and result.warnings:
        text += "".join(f"\n{s.bad('warning:')} {w}" for w in result.warnings)
    return text


def _render_result(result: BaseModel, s: Style) -> str:
    if isinstance(result, RepoStatus):
        return render_repo_status(result, s)
    if isinstance(result, FetchResult):
        return render_fetch(result, s)
    if isinstance(result, PullResult):
        return _history("fast-forwarded", result, s)
    if isinstance(result, RebaseResult):
        return _history("rebased", result, s)
    if isinstance(result, PushResult):
        return render_push(result, s)
    if isinstance(result, WandbSyncResult):
        return render_wandb(result, s)
    if isinstance(result, ConnectionStatus):
        return render_status(result, s)
    return result.model_dump_json(indent=2)


def render_error(exc: RelayError, surface: Surface, s: Style) -> str:
    who = f"{surface.op_label(exc.op)}: " if exc.op else ""
    lines = [f"{who}{s.bad('error')} [{exc.kind}]: {exc.message}"]
    if exc.hint_template:
        lines.append(f"hint: {surface.render(exc.hint_template)}")
    files = exc.details.get("conflicted_files")
    if files:
        lines.append("conflicted files: " + ", ".join(files))
    commands = exc.details.get("restore_commands")
    if commands:
        lines.append("to restore it on the login node:\n  " + "\n  ".join(commands))
    go_on = exc.details.get("continue_with")
    if go_on:
        words = [surface.op_label(exc.op or "wandb_sync")]
        for key, value in go_on.items():
            flag = surface.arg_label(key)
            values = value if isinstance(value, list) else [value]
            words += [flag if v is True else f"{flag} {shlex.quote(str(v))}" for v in values]
        lines.append("to continue: " + " ".join(words))
    if exc.stderr_tail:
        lines.append(s.dim("stderr:\n" + exc.stderr_tail))
    return "\n".join(lines)
