"""The whitelist, as data: one registry entry per op.

Each ``OpSpec`` holds the op's argument model, the body of its remote script,
the parser of its output, and its flags. Tools, CLI verbs, docs tables and
validation derive from ``OPS``; nothing else lists the ops.
"""

from __future__ import annotations

import fnmatch
import functools
import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..model.config import DEFAULT_OP_TIMEOUT, DEFAULT_WANDB_DIR, DEFAULT_WANDB_TIMEOUT
from ..model.errors import RelayValidationError, args_placeholder
from ..model.results import (
    FetchResult,
    OpResult,
    PullResult,
    PushResult,
    RebaseResult,
    RepoStatus,
    WandbRun,
    WandbSyncResult,
)
from ..model.text import tail
from .counting import (
    counted,
    counted_names,
    counted_status,
    moved_refs,
    parse_selected_runs,
    selected_runs,
    whole,
)
from .output import ScriptOutput, UnparseableOutput
from .parsing import (
    RUN_NAME_RE,
    SUBJECT_CHARS,
    ParsedStatus,
    glob_to_ere,
    parse_commits,
    parse_head_line,
    parse_moved_refs,
    parse_push_porcelain,
    parse_sha,
    parse_status_records,
)
from .quoting import Raw, Word, expands, quote_path, render_words
from .rollback import REPORT_DIR, arm, parse_reports
from .script import Script, enter_repo, guard, step, step_shell, variables_set

MAX_NAME_LEN = 200
MAX_RUNS = 500
_GIT_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")
_REMOTE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

GIT_NAME_RULE = (
    "letters, digits and _ . / - only; not starting with '-', '.' or '/'; no '..', '//', "
    "whitespace, ':', '~^?*[\\' or '@{'; not ending in '/', '.' or '.lock'; "
    f"at most {MAX_NAME_LEN} characters"
)


def check_git_name(value: str, what: str, *, allow_slash: bool = True) -> str:
    """A plain git ref or remote name; never an option, refspec, URL or path trick."""
    pattern = _GIT_NAME_RE if allow_slash else _REMOTE_NAME_RE
    bad = (
        not value
        or len(value) > MAX_NAME_LEN
        or not pattern.match(value)
        or ".." in value
        or "//" in value
        or value.endswith(("/", ".", ".lock"))
    )
    if bad:
        rule = GIT_NAME_RULE if allow_slash else GIT_NAME_RULE.replace(" / -", " -")
        raise ValueError(f"{what} {value!r} is not a plain git name: allowed are {rule}")
    return value


def check_run_name(value: str) -> str:
    if len(value) > MAX_NAME_LEN or ".." in value or not RUN_NAME_RE.match(value):
        raise ValueError(
            f"run {value!r} is not a bare offline run directory name: it must look like "
            "offline-run-20260101_120000-abc123 (offline-run- then letters, digits, _ . -), "
            "with no '/' or '..'"
        )
    return value


class OpArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NoArgs(OpArgs):
    pass


class FetchArgs(OpArgs):
    remote: str | None = Field(
        default=None, description="Remote to fetch, e.g. origin. Default: all remotes."
    )

    @field_validator("remote")
    @classmethod
    def _remote(cls, v: str | None) -> str | None:
        return None if v is None else check_git_name(v, "remote", allow_slash=False)


class PushArgs(OpArgs):
    remote: str = Field(default="origin", description="A configured remote name. Default origin.")
    branch: str = Field(
        default="HEAD",
        description="Local branch to push to the same name on the remote. Default HEAD, the "
        "current branch. Never forced.",
    )

    @field_validator("remote")
    @classmethod
    def _remote(cls, v: str) -> str:
        return check_git_name(v, "remote", allow_slash=False)

    @field_validator("branch")
    @classmethod
    def _branch(cls, v: str) -> str:
        return check_git_name(v, "branch")


_RUN_GLOB_RE = re.compile(r"^[A-Za-z0-9_.*?\[\]-]{1,200}$")
MAX_LIMIT = 100_000


class WandbSyncArgs(OpArgs):
    runs: list[str] | None = Field(
        default=None,
        description="Names of offline-run-* directories in the wandb directory (the repo's "
        "wandb/ unless AEXP_RELAY_WANDB_DIR says otherwise) to upload. Default: every run not "
        "yet synced. Runs already synced are skipped: nothing is uploaded twice.",
    )
    match: str | None = Field(
        default=None,
        description="Only runs whose name matches this glob, e.g. offline-run-20260301_*.",
    )
    after_run: str | None = Field(
        default=None,
        description="Only runs named after this one (by name: the preview's last_run pages on).",
    )
    to_run: str | None = Field(
        default=None, description="Only runs named up to this one, itself included."
    )
    limit: int | None = Field(
        default=None, description="At most this many runs: the first ones by name."
    )

    @field_validator("runs")
    @classmethod
    def _runs(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return None
        if not v:
            raise ValueError("runs is empty: omit it to sync every unsynced run, or name some")
        if len(v) > MAX_RUNS:
            raise ValueError(
                f"at most {MAX_RUNS} runs per call: select more with match, after_run, to_run "
                "and limit instead"
            )
        return list(dict.fromkeys(check_run_name(r) for r in v))

    @field_validator("match")
    @classmethod
    def _match(cls, v: str | None) -> str | None:
        if v is not None and not _RUN_GLOB_RE.match(v):
            raise ValueError(
                f"match {v!r} is not a run-name glob: letters, digits and _ . - * ? [ ] only"
            )
        return v

    @field_validator("after_run", "to_run")
    @classmethod
    def _bound(cls, v: str | None) -> str | None:
        return None if v is None else check_run_name(v)

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: int | None) -> int | None:
        if v is not None and not 1 <= v <= MAX_LIMIT:
            raise ValueError(f"limit must be between 1 and {MAX_LIMIT}")
        return v

    def selects(self, name: str) -> bool:
        """Whether a run's name is in this selection (runs, match, after_run, to_run)."""
        return (
            (self.runs is None or name in self.runs)
            and (self.match is None or fnmatch.fnmatchcase(name, self.match))
            and (self.after_run is None or name > self.after_run)
            and (self.to_run is None or name <= self.to_run)
        )


@dataclass(frozen=True)
class BuildContext:
    """What a script body may use besides the args: fixed by config, not by the caller."""

    repo: str
    wandb_words: tuple[str, ...]
    wandb_dir: str = DEFAULT_WANDB_DIR
    request_id: str = "0" * 12  # names the report of a cut op (rollback.py)


Parser = Callable[[ScriptOutput, Any], dict[str, Any]]


@dataclass(frozen=True)
class DropProbe:
    """What to ask the login node after a changing op's connection dropped (it is never
    run again blindly): a short read-only script, and what its output says, as a sentence
    for the error's message and fields for its details. ``read`` gets None when the probe
    could not run."""

    script: Script
    read: Callable[[ScriptOutput | None], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class OpSpec:
    name: str
    summary: str
    args_model: type[OpArgs]
    mutating: bool
    consent: bool
    default_timeout: float
    commands: tuple[str, ...]  # for docs: what runs in the repo, in order
    build: Callable[[Any, BuildContext], Script]
    parse: Parser
    result_model: type[OpResult]
    undoes: bool = False  # its script undoes what it started when cut short (rollback.py)
    # read-only: run once more over a new connection when the connection drops
    retry_on_drop: bool = False
    # a changing op that does not undo itself: what to ask after a drop
    after_drop: Callable[[Any, BuildContext], DropProbe] | None = None


# --------------------------------------------------------------------------- script pieces

# No setting on the login node (~/.gitconfig, the repo's, the system's) may change a value
# a tool reports: every git the relay reads from runs with these, and each command below
# spells out what its config could change (untracked files, renames, ahead/behind,
# signatures). Hooks and credential helpers are followed on purpose (docs/airgapped.md).
GIT = (
    "git",
    "--no-pager",
    "-c",
    "color.ui=never",
    "-c",
    "core.quotePath=false",
    "-c",
    "log.showSignature=false",
    "-c",
    "i18n.logOutputEncoding=UTF-8",
)
STATUS = (
    *GIT,
    "--no-optional-locks",
    "status",
    "--porcelain=v2",
    "--branch",
    "--untracked-files=normal",
    "--ignore-submodules=none",
    "--ahead-behind",
    "--find-renames",
)
# A subject git cuts (see parsing.SUBJECT_CHARS), so that no list of them outgrows the cap.
SUBJECT = f"%H%x09%<({SUBJECT_CHARS},trunc)%s"
HEAD_LINE = (*GIT, "--no-optional-locks", "log", "-1", "--no-show-signature", f"--format={SUBJECT}")
REV_HEAD = ("git", "rev-parse", "-q", "--verify", "HEAD")
LOG_RANGE = (
    *GIT,
    "log",
    f"--max-count={100}",
    "--no-show-signature",
    f"--format={SUBJECT}",
    Raw('"$o..HEAD"'),
)
COUNT_RANGE = ("git", "rev-list", "--count", Raw('"$o..HEAD"'))


# Remote-tracking refs, each line tagged B (before a fetch) or A (after): counting.moved_refs.
def _refs(tag: str) -> str:
    listing = ("git", "for-each-ref", f"--format={tag} %(objectname) %(refname)", "refs/remotes")
    return f"{render_words(listing)} </dev/null"


# What the pull, rebase and push defaults in a config could change: autostash, rebasing
# merges or other branches' refs, squashing, pushing tags or submodules, diffstats.
# (-c for keys an old git does not know yet: it ignores them; a flag would fail.)
FETCH = (*GIT, "fetch", "--progress")
FAST_FORWARD = (
    *GIT,
    "-c",
    "merge.autoStash=false",
    "merge",
    "--ff-only",
    "--no-stat",
    "--no-edit",
    "--progress",
    Raw('"$t"'),
)
REBASE = (
    *GIT,
    "-c",
    "rebase.autoStash=false",
    "-c",
    "rebase.updateRefs=false",
    "-c",
    "rebase.autoSquash=false",
    "rebase",
    "--fork-point",
    "--no-autostash",
    "--no-rebase-merges",
    "@{upstream}",
)
PUSH = (*GIT, "-c", "push.followTags=false", "-c", "push.recurseSubmodules=no", "push")
GIT_PRESENT = "command -v git >/dev/null 2>&1 || f git_missing"
# git must accept the checkout before any other guard runs: a guard that fails silently
# in a repo git refuses (dubious ownership) would otherwise be read as its own kind.
REPO_ACCEPTED = guard("not_a_repo", "git", "rev-parse", "--git-dir")
# Refuse to start on top of someone's half-done rebase, merge, cherry-pick or revert.
# Safe after REPO_ACCEPTED: --git-path then always answers.
NO_OP_IN_PROGRESS = (
    "for _p in rebase-merge rebase-apply MERGE_HEAD CHERRY_PICK_HEAD REVERT_HEAD; do "
    '[ ! -e "$(git rev-parse --git-path "$_p")" ] || f operation_in_progress; done'
)
SAVE_HEAD = "o=$(git rev-parse -q --verify HEAD </dev/null)"
# A checkout shared with a group says so in git's own setting: every file an op writes
# (FETCH_HEAD, the index, refs, work-tree files, wandb's markers) is then group-writable,
# whatever the member's umask, as git does for objects alone. An octal mode gives its bits
# (directories also x where r).
SHARED_UMASK = (
    "_sr=$(git config --get core.sharedRepository </dev/null 2>/dev/null); case $_sr in "
    "group|true|1) umask g+rw ;; "
    "all|world|everybody|2) umask g+rw,o+r ;; "
    "0[0-7][0-7][0-7]|[0-7][0-7][0-7]) _m=$((0$_sr)); "
    'umask "$(printf %o $((0777 & ~(_m | ((_m & 0444) >> 2)))))" ;; esac'
)
# git talks to origin over ssh without ever prompting; a core.sshCommand of the user's
# (a key for GitHub) is kept, as git itself would.
NO_SSH_PROMPT = (
    "git config --get core.sshCommand >/dev/null 2>&1 || "
    "export GIT_SSH_COMMAND='ssh -o BatchMode=yes'"
)
ON_A_BRANCH = "b=$(git symbolic-ref -q HEAD </dev/null) || f detached_head"
UPSTREAM = (
    f"{guard('no_upstream', 'git', 'rev-parse', '--verify', '@{upstream}^{commit}')}; "
    "t=$(git rev-parse -q --verify '@{upstream}^{commit}' </dev/null); "
    'b target; printf %s "$t"; e target 0'
)
# When origin cannot be reached: does this (non-interactive) session have a proxy, does
# git, and does an rc file set one anyway (then it is set for interactive shells only)?
_PROXY_EVIDENCE = (
    "env | grep -i -E '^(https?|all)_proxy=.' | sed 's/=.*//; s/^/env /'; "
    'for f in "$HOME/.bashrc" "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile" '
    '"$HOME/.zshrc" "$HOME/.zshenv" "$HOME/.zprofile" "$HOME/.cshrc" "$HOME/.tcshrc" '
    "/etc/profile /etc/bash.bashrc /etc/profile.d/*.sh; do "
    '[ -r "$f" ] || continue; '
    "_l=$(grep -i -m1 -E '^[^#]*(https?|all)_proxy[ =]' \"$f\" 2>/dev/null) && "
    'printf \'rc %s\\t%s\\n\' "$f" "$_l"; done; '
    "git config --get http.proxy >/dev/null 2>&1 && echo 'git http.proxy'; exit 0"
)


def _network(text: str) -> str:
    """A step that talks to origin; when it fails, the proxy evidence is recorded."""
    evidence = step("proxy", "sh", "-c", _PROXY_EVIDENCE)
    return f"{{ {text} || {{ _nr=$?; {evidence}; (exit $_nr); }}; }}"


# A new pull or rebase supersedes what earlier cut ones reported (repo_status lists them
# until then).
OLD_REPORTS = (
    f'_od=$(git rev-parse --git-path {REPORT_DIR}); rm -f "$_od"/cut-* "$_od"/done-* 2>/dev/null'
)


def _seq(*parts: str) -> Script:
    return Script("; ".join(parts))


def _remote_exists(remote: str) -> str:
    # `git remote get-url` needs the repo, so in a checkout git refuses it says so
    # (unlike `git config --get`, which then fails silently); "No such remote" otherwise.
    return guard("unknown_remote", "git", "remote", "get-url", "--", remote)


def _state(out: ScriptOutput) -> ParsedStatus:
    """The status step, counted on the login node (``counting.counted_status``)."""
    found = counted(out.require("status"), 4)
    staged, unstaged, untracked, conflicted = found.totals
    return parse_status_records(found.records, (staged, unstaged, untracked, conflicted))


def _status_step(cap: int = 0) -> str:
    """The status as a step: counted; ``cap`` entries of each kind (0: the branch only)."""
    return step_shell("status", counted_status(render_words(STATUS), cap))


def _stdout(out: ScriptOutput, name: str) -> str:
    return out.require(name).stdout


# --------------------------------------------------------------------------- repo_status


def _build_repo_status(args: NoArgs, ctx: BuildContext) -> Script:
    # The two git processes run side by side (status in the background, the HEAD subject in
    # a command substitution): on a multi-core login node that halves the op's remote time.
    # The status step's begin marker is printed before it starts, its end after `wait`.
    # Reports of ops cut short with nobody left to tell (rollback.py) are read with shell
    # builtins only; where they are is asked of git only when .git is no plain directory.
    where = (
        f"if [ -d .git ]; then _rd=.git/{REPORT_DIR}; "
        f"else _rd=$(git rev-parse --git-path {REPORT_DIR} </dev/null 2>/dev/null); fi"
    )
    return _seq(
        GIT_PRESENT,
        "b status",
        f"{counted_status(render_words(STATUS))} & _sp=$!",  # $!: the counter, last
        f"_h=$({render_words(HEAD_LINE)} </dev/null 2>/dev/null); _hr=$?",
        where,
        "wait $_sp; _sr=$?",
        "e status $_sr",
        'if [ $_sr -eq 0 ]; then b head; printf "%s" "$_h"; e head $_hr; '
        'b cuts; for _f in "$_rd"/cut-*; do [ -f "$_f" ] || continue; '
        "while IFS= read -r _l; do printf '%s\\n' \"$_l\"; done < \"$_f\"; printf '\\n'; done; "
        "e cuts 0; fi",
        "(exit $_sr)",
    )


def _parse_repo_status(out: ScriptOutput, args: NoArgs) -> dict[str, Any]:
    parsed = _state(out)
    subject: str | None = None
    if parsed.state.head is not None:
        sha, subject = parse_head_line(_stdout(out, "head"))
        if sha != parsed.state.head:
            raise UnparseableOutput(
                f"HEAD moved while the status ran (git log saw {sha}, git status "
                f"{parsed.state.head}): a commit landed at the same moment; retry"
            )
    staged, unstaged, untracked, conflicted = parsed.counts
    return {
        **parsed.state.model_dump(),
        "head_subject": subject,
        "clean": not any(parsed.counts),
        "staged": parsed.staged,
        "unstaged": parsed.unstaged,
        "untracked": parsed.untracked,
        "conflicted": parsed.conflicted,
        "staged_count": staged,
        "unstaged_count": unstaged,
        "untracked_count": untracked,
        "conflicted_count": conflicted,
        "lists_truncated": parsed.truncated,
        "interrupted_ops": parse_reports(_stdout(out, "cuts")),
    }


# --------------------------------------------------------------------------- fetch


def _build_fetch(args: FetchArgs, ctx: BuildContext) -> Script:
    target: tuple[Word, ...] = ("--all",) if args.remote is None else (args.remote,)
    parts = [GIT_PRESENT, REPO_ACCEPTED, SHARED_UMASK]
    if args.remote is not None:
        parts.append(_remote_exists(args.remote))
    parts.append(NO_SSH_PROMPT)
    fetch = _network(step("fetch", *FETCH, "--prune", *target))
    # Which refs moved is worked out on the login node (the before-listing in a variable,
    # never printed): 20,000 refs with long names are megabytes. What matters first: the
    # upstream ($_up), then its remote's branches ($_upre).
    upstream = (
        "_up=$(git rev-parse -q --symbolic-full-name '@{upstream}' </dev/null 2>/dev/null); "
        "_upre=; case $_up in refs/remotes/*/*) _ur=${_up#refs/remotes/}; "
        '_upre="refs/remotes/${_ur%%/*}/" ;; esac'
    )
    moved = moved_refs("printf '%s\\n' \"$_rb\"", _refs("A"))
    parts += [upstream, f"_rb=$({_refs('B')})"]
    parts.append(f"{fetch} && {step_shell('moved', moved)} && {_status_step()}")
    return _seq(*parts)


def _parse_fetch(out: ScriptOutput, args: FetchArgs) -> dict[str, Any]:
    found = counted(out.require("moved"), 3, prefix="0 ")
    moved = parse_moved_refs(found.records)
    new, updated, deleted = found.totals
    return {
        "remote": args.remote or "all",
        "updated_refs": moved,  # what matters first: the upstream, its remote's, the rest
        "new_count": new,
        "updated_count": updated,
        "deleted_count": deleted,
        "refs_truncated": len(moved) < new + updated + deleted,
        "after": _state(out).state,
    }


# --------------------------------------------------------------------------- pull / rebase


def _history(out: ScriptOutput, args: NoArgs) -> dict[str, Any]:
    old_text = _stdout(out, "old").strip()
    old = parse_sha(old_text) if old_text else None  # empty: an unborn branch
    if old_text and old is None:
        raise UnparseableOutput(f"HEAD before the op is not a commit id: {old_text[:80]!r}")
    new = parse_sha(_stdout(out, "new"))
    if new is None:
        raise UnparseableOutput("HEAD after the op is not a commit id")
    moved = old != new
    count = _stdout(out, "count").strip() if moved and old else "0"
    if not count.isdigit():
        raise UnparseableOutput(f"the commit count is not a number: {count[:80]!r}")
    commits = parse_commits(_stdout(out, "log")) if moved and old else []
    return {
        "old_head": old,
        "new_head": new,
        "up_to_date": not moved,
        "commits": commits,
        "commit_count": int(count),
        "commits_truncated": len(commits) < int(count),
        "after": _state(out).state,
    }


def _after_history() -> str:
    return (
        f"{step('new', *REV_HEAD)} && "
        f'{{ if [ -n "$o" ]; then {step("log", *LOG_RANGE)} && '
        f"{step('count', *COUNT_RANGE)}; fi; }} && {_status_step()}"
    )


def _mutating(op: str, ctx: BuildContext, checks: list[str], apply: str, failed: str) -> Script:
    """pull and rebase: save HEAD and the branch, arm the undo (rollback.py), fetch, check
    that the step can be undone exactly, then the step itself. A step that fails is undone
    in the same call (``failed`` runs first, e.g. to record conflicts)."""
    return _seq(
        GIT_PRESENT,
        REPO_ACCEPTED,
        SHARED_UMASK,
        NO_OP_IN_PROGRESS,
        ON_A_BRANCH,
        SAVE_HEAD,
        NO_SSH_PROMPT,
        OLD_REPORTS,
        arm(op, ctx.request_id),
        step("old", *REV_HEAD),
        f"if {_network(step('fetch', *FETCH))}; then "
        + "; ".join(
            [
                UPSTREAM,
                *checks,
                f"_ph=apply; {apply}",
                "_ar=$?",  # not _r: the step helper s sets that
                f"if [ $_ar -ne 0 ]; then {failed}_undo; _report; (exit $_ar); "
                f"else _ph=done; _done; {_after_history()}; fi",
            ]
        )
        + "; else _ar=$?; _undo; _report; (exit $_ar); fi",
    )


def _build_pull(args: NoArgs, ctx: BuildContext) -> Script:
    # pull's own two steps, apart, so the undo knows which has run. Only a true
    # fast-forward is checked first: every file it writes must be clean and every file it
    # adds absent, as git requires, so that putting them back is exact.
    true_ff = '[ -n "$o" ] && [ "$t" != "$o" ] && git merge-base --is-ancestor "$o" "$t"'
    return _mutating(
        "pull",
        ctx,
        [f"if {true_ff}; then _same || f dirty_worktree; fi"],
        step("merge", *FAST_FORWARD),
        "",
    )


def _build_rebase(args: NoArgs, ctx: BuildContext) -> Script:
    # onto the upstream from the fork point, as git pull --rebase. The tree must be clean
    # (git's own rule) and no file the upstream adds may be in the way; commits are
    # written only when there are local ones to replay, and then need an identity.
    replays = (
        'if [ -n "$o" ] && ! git merge-base --is-ancestor "$o" "$t" && '
        '! git merge-base --is-ancestor "$t" "$o"; then '
        "git var GIT_COMMITTER_IDENT >/dev/null 2>&1 || f git_identity_missing; fi"
    )
    conflicts = step_shell(
        "conflicts",
        counted_names(render_words((*GIT, "diff", "--name-only", "--diff-filter=U"))),
    )
    return _mutating(
        "rebase",
        ctx,
        [
            "_clean || f dirty_worktree",
            '[ -z "$o" ] || _P A | _absent || f untracked_in_the_way',
            replays,
        ],
        step("rebase", *REBASE),
        f"if _inrb; then {conflicts}; fi; ",
    )


# --------------------------------------------------------------------------- push


def _push_refspec(branch: str) -> str:
    # An explicit refspec without '+' is never forced, and never reads
    # remote.<name>.push or .mirror from the repo's config.
    return "HEAD" if branch == "HEAD" else f"refs/heads/{branch}:refs/heads/{branch}"


def _build_push(args: PushArgs, ctx: BuildContext) -> Script:
    refspec = _push_refspec(args.branch)
    return _seq(
        GIT_PRESENT,
        REPO_ACCEPTED,
        SHARED_UMASK,
        _remote_exists(args.remote),
        NO_SSH_PROMPT,
        _network(step("push", *PUSH, "--porcelain", "--progress", args.remote, refspec)),
    )


def _push_probe(args: PushArgs, ctx: BuildContext) -> DropProbe:
    """After a push's connection dropped: where the branch is here and on the remote."""
    branch = (
        ["git", "symbolic-ref", "-q", "HEAD"]
        if args.branch == "HEAD"
        else ["printf", "%s", f"refs/heads/{args.branch}"]
    )
    script = _seq(
        GIT_PRESENT,
        f"_ref=$({render_words(branch)} </dev/null)",
        'b ref; printf %s "$_ref"; e ref 0',
        step("local", "git", "rev-parse", "-q", "--verify", Raw('"$_ref"')),
        NO_SSH_PROMPT,
        step("remote", *GIT, "ls-remote", "--", args.remote, Raw('"$_ref"')),
    )

    def read(out: ScriptOutput | None) -> tuple[str, dict[str, Any]]:
        sections = [out.section(n) if out is not None else None for n in ("ref", "local", "remote")]
        ref, local, remote = sections
        if ref is None or local is None or remote is None or remote.exit_code != 0:
            return (
                f"Whether the push reached {args.remote} could not be read; "
                "`git ls-remote` there tells.",
                {"push_landed": None},
            )
        name = ref.stdout.strip().removeprefix("refs/heads/")
        mine = parse_sha(local.stdout)
        theirs = next(
            (line.split("\t")[0] for line in remote.stdout.splitlines() if "\t" in line), None
        )
        landed = mine is not None and mine == theirs
        said = (
            f"The push had landed: {args.remote}'s {name} is at {mine[:12] if mine else '?'}, "
            "as here."
            if landed
            else f"The push had not landed: {args.remote}'s {name} is at "
            f"{theirs[:12] if theirs else 'nothing'}, here it is at "
            f"{mine[:12] if mine else 'nothing'}."
        )
        return said, {"push_landed": landed, "local_head": mine, "remote_head": theirs}

    return DropProbe(script, read)


def _parse_push(out: ScriptOutput, args: PushArgs) -> dict[str, Any]:
    refs = parse_push_porcelain(whole(out.require("push")))
    if not refs:
        raise UnparseableOutput("git push --porcelain reported no ref")
    return {
        "remote": args.remote,
        "refs": refs,
        "ref_count": len(refs),
        "refs_truncated": False,
        "up_to_date": all(r.status == "up_to_date" for r in refs),
    }


# --------------------------------------------------------------------------- wandb

# Lists <dir>/offline-run-* as "<name>\t<KiB>\t<synced 0|1>", by name, in a few processes
# whatever the number of runs (du through xargs: 50,000 names are more than one command
# line holds). A run counts as synced when run-<id>.wandb.synced sits next to
# run-<id>.wandb, which is what `wandb sync` writes. counting.selected_runs selects them.
LIST_RUNS = (
    'cd -- "$1" 2>/dev/null || exit 0; '
    "{ printf '%s\\0' offline-run-*/ | xargs -0 du -sk -- 2>/dev/null; echo --; "
    'for d in offline-run-*; do [ -d "$d" ] || continue; i=${d##*-}; '
    'if [ -e "$d/run-$i.wandb.synced" ]; then printf \'%s\\t1\\n\' "$d"; '
    "else printf '%s\\t0\\n' \"$d\"; fi; done; } | "
    "awk -F '\\t' '$0 == \"--\" {p = 1; next} "
    '!p {sub("/$", "", $2); k[$2] = $1; next} '
    '{print $1 "\\t" (k[$1] + 0) "\\t" $2}\''
)
# Uploads the runs named in its arguments, one `wandb sync` each, in order, skipping any
# synced meanwhile; prints what became of each, and "aexp-run: k/n name" on stderr as each
# is done (the progress the relay reports). Stops at the first failure.
SYNC_RUNS = (
    'd=$1; shift; n=$#; k=0; for r in "$@"; do k=$((k+1)); '
    'if [ ! -d "$d/$r" ]; then printf \'missing %s\\n\' "$r"; exit 3; fi; '
    'if [ -e "$d/$r/run-${r##*-}.wandb.synced" ]; then '
    "printf 'skipped %s\\n' \"$r\"; continue; fi; "
    '{WANDB} sync "$d/$r" </dev/null >&2 || { _x=$?; printf \'failed %s\\n\' "$r"; exit $_x; }; '
    'printf \'uploaded %s\\n\' "$r"; printf \'aexp-run: %s/%s %s\\n\' "$k" "$n" "$r" >&2; done'
)


@functools.lru_cache(maxsize=8)
def wandb_words(command: str) -> tuple[str, ...]:
    """The configured wandb command line, split into words (config, not agent input)."""
    words = tuple(shlex.split(command))
    if not words:
        raise RelayValidationError(
            "AEXP_RELAY_WANDB is empty.", hint="Set it to the wandb command on the login node."
        )
    return words


def _path_word(word: str) -> Word:
    # ~/ and $NAME expand on the login node; everything else in the path is quoted.
    return Raw(quote_path(word)) if expands(word) else word


def run_path(ctx: BuildContext, run: str) -> str:
    """Where a run lives, as the login node sees it (relative to the repo, absolute or ~/)."""
    return f"{ctx.wandb_dir.rstrip('/')}/{run}"


def _wandb_program(ctx: BuildContext) -> list[Word]:
    return [_path_word(w) if i == 0 else w for i, w in enumerate(ctx.wandb_words)]


def wandb_command(ctx: BuildContext, run: str) -> str:
    """The exact command the upload runs for one run, as the login node gets it."""
    return render_words([*_wandb_program(ctx), "sync", _path_word(run_path(ctx, run))])


RUN_PLACEHOLDER = "<run>"


def wandb_command_template(ctx: BuildContext) -> str:
    """``wandb_command`` with ``<run>`` where each run's name goes (a name needs no quoting:
    letters, digits and ``_ . -`` only)."""
    sample = "offline-run-0"
    return wandb_command(ctx, sample).replace(sample, RUN_PLACEHOLDER)


def _wandb_probe(ctx: BuildContext) -> str:
    prog = render_words([_path_word(ctx.wandb_words[0])])
    return f"b wandb; command -v {prog} >/dev/null 2>&1; e wandb $?"


def build_wandb_preview(args: WandbSyncArgs, ctx: BuildContext) -> Script:
    directory = render_words([_path_word(ctx.wandb_dir)])
    listing = render_words(["sh", "-c", LIST_RUNS, "sh", _path_word(ctx.wandb_dir)])
    selected = selected_runs(
        listing,
        names=args.runs,
        glob_ere=glob_to_ere(args.match) if args.match is not None else "",
        after=args.after_run or "",
        to=args.to_run or "",
        limit=args.limit or 0,
    )
    return _seq(
        f"{variables_set(ctx.wandb_dir)}b wandb_dir; [ -d {directory} ]; e wandb_dir $?",
        step_shell("runs", selected),
        _wandb_probe(ctx),
    )


@dataclass(frozen=True)
class WandbListing:
    """What the wandb directory holds, and which of it the call's arguments select: all
    counted on the login node, whatever the sweep's size."""

    page: list[WandbRun]  # what one approval covers: the first selected runs, by name
    skipped: list[str]  # named explicitly, but synced already
    missing: list[str]  # named explicitly, but not there
    all_runs: int
    unsynced: int
    selected: int  # unsynced runs the arguments select, limit applied
    selected_bytes: int
    wandb_available: bool
    dir_exists: bool


def parse_wandb_preview(out: ScriptOutput, args: WandbSyncArgs) -> WandbListing:
    found = parse_selected_runs(out.require("runs"))
    return WandbListing(
        page=[WandbRun(name=n, size_bytes=kib * 1024, synced=False) for n, kib in found.page],
        skipped=found.skipped,
        missing=sorted(found.missing),
        all_runs=found.all_runs,
        unsynced=found.unsynced,
        selected=found.selected,
        selected_bytes=found.selected_kib * 1024,
        wandb_available=out.require("wandb").exit_code == 0,
        dir_exists=out.require("wandb_dir").exit_code == 0,
    )


def _build_wandb_sync(args: WandbSyncArgs, ctx: BuildContext) -> Script:
    # args.runs is the exact list the preview selected (the relay pins it before this).
    prog = render_words([_path_word(ctx.wandb_words[0])])
    loop = SYNC_RUNS.replace("{WANDB}", render_words(_wandb_program(ctx)))
    return _seq(
        SHARED_UMASK,
        f"{variables_set(ctx.wandb_dir)}command -v {prog} >/dev/null 2>&1 || f wandb_missing",
        step("sync", "sh", "-c", loop, "sh", _path_word(ctx.wandb_dir), *(args.runs or [])),
    )


def parse_sync_lines(text: str) -> dict[str, list[str]]:
    """The sync loop's account: uploaded, skipped, failed and missing runs, in order."""
    seen: dict[str, list[str]] = {"uploaded": [], "skipped": [], "failed": [], "missing": []}
    for line in text.splitlines():
        word, _, name = line.partition(" ")
        if word in seen and RUN_NAME_RE.match(name):
            seen[word].append(name)
    return seen


def _parse_wandb_sync(out: ScriptOutput, args: WandbSyncArgs) -> dict[str, Any]:
    sec = out.require("sync")
    seen = parse_sync_lines(whole(sec))
    if len(seen["uploaded"]) + len(seen["skipped"]) != len(args.runs or []):
        raise UnparseableOutput(
            f"the upload accounted for {len(seen['uploaded']) + len(seen['skipped'])} of "
            f"{len(args.runs or [])} runs"
        )
    return {
        "synced": seen["uploaded"],
        "synced_count": len(seen["uploaded"]),
        "already_synced": len(seen["skipped"]),
        "runs_truncated": False,
        "output_tail": tail(sec.stderr + sec.stdout, 10),
    }


# --------------------------------------------------------------------------- connection check


def build_check(ctx: BuildContext) -> Script:
    """Not an op: what `check_connection` runs. Reports git, wandb and the repo in one call."""
    parts = [step("git_version", "git", "--version"), _wandb_probe(ctx)]
    if ctx.repo:
        parts += [
            enter_repo(ctx.repo),
            "b resolved; pwd; e resolved 0",  # the path as the login node resolved it
            step("inside", "git", "rev-parse", "--is-inside-work-tree"),
            step("branch", "git", "symbolic-ref", "--short", "-q", "HEAD"),
        ]
    return _seq(*parts)


# --------------------------------------------------------------------------- registry

OPS: dict[str, OpSpec] = {
    spec.name: spec
    for spec in (
        OpSpec(
            name="repo_status",
            summary="Branch, upstream, ahead/behind, and changed files of the checkout. Read-only.",
            args_model=NoArgs,
            mutating=False,
            consent=False,
            default_timeout=DEFAULT_OP_TIMEOUT,
            commands=(
                "git --no-optional-locks status --porcelain=v2 --branch -z",
                "git --no-optional-locks log -1 --format=%H%x09%s",
            ),
            build=_build_repo_status,
            parse=_parse_repo_status,
            result_model=RepoStatus,
            retry_on_drop=True,
        ),
        OpSpec(
            name="fetch",
            summary="Fetch from a remote (default all), pruning deleted branches; "
            "reports refs that moved and ahead/behind after.",
            args_model=FetchArgs,
            mutating=True,
            consent=False,
            default_timeout=DEFAULT_OP_TIMEOUT,
            commands=(
                "git rev-parse --git-dir",
                "git remote get-url -- <remote>  (when a remote is named)",
                "git for-each-ref refs/remotes",
                "git fetch --prune --progress (--all | <remote>)",
                "git for-each-ref refs/remotes",
                "git --no-optional-locks status --porcelain=v2 --branch -z",
            ),
            build=_build_fetch,
            parse=_parse_fetch,
            result_model=FetchResult,
            # it moves only remote-tracking refs: running it again is what the agent would do
            retry_on_drop=True,
        ),
        OpSpec(
            name="pull",
            summary="Fast-forward the current branch to its upstream. Never merges or rebases; "
            "fails with kind 'diverged' when both sides have new commits. Cut short (timeout, "
            "cancel) or failed, it puts back what it wrote; the error's `checkout` says "
            "whether the checkout is as before or as after, with `head`.",
            args_model=NoArgs,
            mutating=True,
            consent=False,
            default_timeout=DEFAULT_OP_TIMEOUT,
            commands=(
                "git rev-parse --git-dir; git symbolic-ref -q HEAD (on a branch)",
                "git fetch --progress",
                "git rev-parse @{upstream}",
                "on a fast-forward: git diff-tree/diff-index (the files it writes are clean)",
                "git merge --ff-only --no-stat --no-edit --progress <upstream>",
                "cut short or failed: the files it wrote are put back (checkout <old> -- ...)",
                "git log --format=%H%x09%s <old>..HEAD",
                "git --no-optional-locks status --porcelain=v2 --branch -z ...",
            ),
            build=_build_pull,
            parse=_history,
            result_model=PullResult,
            undoes=True,
        ),
        OpSpec(
            name="rebase",
            summary="Rebase local commits onto the upstream (git pull --rebase). On conflict, "
            "or when cut short (timeout, cancel), the rebase is aborted in the same call; the "
            "error's `checkout` says whether the repo is exactly as before, with `head`.",
            args_model=NoArgs,
            mutating=True,
            consent=False,
            default_timeout=DEFAULT_OP_TIMEOUT,
            commands=(
                "git rev-parse --git-dir; git symbolic-ref -q HEAD (on a branch)",
                "git fetch --progress",
                "git rev-parse @{upstream}; git diff-index (the tree is clean)",
                "git var GIT_COMMITTER_IDENT (when local commits are replayed)",
                "git rebase --fork-point --no-autostash --no-rebase-merges @{upstream}",
                "on conflict: git diff --name-only --diff-filter=U -z",
                "cut short or failed: git rebase --abort (hooks off)",
                "git log --format=%H%x09%s <old>..HEAD",
                "git --no-optional-locks status --porcelain=v2 --branch -z ...",
            ),
            build=_build_rebase,
            parse=_history,
            result_model=RebaseResult,
            undoes=True,
        ),
        OpSpec(
            name="push",
            summary="Push a branch (default the current one) to the same name on a remote "
            "(default origin). Never forces, deletes or mirrors.",
            args_model=PushArgs,
            mutating=True,
            consent=False,
            default_timeout=DEFAULT_OP_TIMEOUT,
            commands=(
                "git rev-parse --git-dir",
                "git remote get-url -- <remote>",
                "git push --porcelain --progress <remote> (HEAD | refs/heads/<b>:refs/heads/<b>)",
            ),
            build=_build_push,
            parse=_parse_push,
            result_model=PushResult,
            after_drop=_push_probe,
        ),
        OpSpec(
            name="wandb_sync",
            summary="Upload offline wandb runs (from the repo's wandb/, or AEXP_RELAY_WANDB_DIR). "
            "Consent op: without approval nothing is uploaded and a preview is returned (exact "
            "counts and sizes; a sweep's run list is cut, and match, after_run, to_run and limit "
            "page through it). Uploads one run at a time with progress; runs synced already are "
            "skipped, and an upload cut short says which runs are left and how to continue.",
            args_model=WandbSyncArgs,
            mutating=True,
            consent=True,
            default_timeout=DEFAULT_WANDB_TIMEOUT,
            commands=(
                "preview: du -sk <wandb dir>/offline-run-*/ and run-<id>.wandb.synced markers",
                "for each selected run not synced yet, by name: <wandb> sync <wandb dir>/<run>",
            ),
            build=_build_wandb_sync,
            parse=_parse_wandb_sync,
            result_model=WandbSyncResult,
        ),
    )
}


COMMON_ARGUMENTS = ("ssh_host", "remote_repo", "timeout")


def op_arguments(op: str) -> list[str]:
    """Every argument a call of op accepts (``status`` included), in library names."""
    spec = OPS.get(op)
    fields = list(spec.args_model.model_fields) if spec else []
    return [*fields, *(["approve"] if spec and spec.consent else []), *COMMON_ARGUMENTS]


def validate_request(op: str, args: Mapping[str, Any] | None = None) -> tuple[OpSpec, OpArgs]:
    """Check op and args against the whitelist; raise RelayValidationError before anything runs."""
    spec = OPS.get(op) if isinstance(op, str) else None
    if spec is None:
        raise RelayValidationError(
            f"Op {op!r} is not in the whitelist.",
            hint=f"Use one of: {', '.join(OPS)}.",
        )
    if args is not None and not isinstance(args, Mapping):
        raise RelayValidationError(
            f"Arguments must be a mapping, not {type(args).__name__}.",
            hint=f"{{op:{op}}} accepts: {args_placeholder(op_arguments(op))}.",
            op=op,
        )
    try:
        return spec, spec.args_model.model_validate(dict(args or {}))
    except ValidationError as exc:
        raise invalid_arguments(op, exc) from None


def invalid_arguments(op: str, exc: ValidationError) -> RelayValidationError:
    """The one shape of an argument error, for the registry and the tool schemas alike."""
    return RelayValidationError(
        f"Invalid arguments: {describe_validation_error(exc)}.",
        hint=f"{{op:{op}}} accepts: {args_placeholder(op_arguments(op))}. Types are strict: "
        "booleans are true/false, "
        "numbers are numbers, lists are JSON arrays.",
        op=op,
    )


def describe_validation_error(exc: ValidationError) -> str:
    """pydantic's errors as one line an agent can act on ("unknown argument 'force'; ...")."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ())) or "arguments"
        if error.get("type") == "extra_forbidden":
            problems.append(f"unknown argument {where!r}")
        else:
            msg = str(error.get("msg", "invalid")).removeprefix("Value error, ")
            problems.append(f"{where}: {msg}")
    return "; ".join(problems)
