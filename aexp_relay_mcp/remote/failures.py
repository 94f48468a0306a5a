"""Pure: what git (or a guard of the remote script) said -> an error kind, a message and
a hint. First match wins. Hints use ``{op:NAME}`` placeholders (see ``model.errors``),
and ``{host}`` and ``{repo}``, which the relay fills with the call's own (quoted for a
shell), so that a hint names the real host, path and command."""

from __future__ import annotations

import re

from ..model.errors import Failure

Needle = str | re.Pattern[str]

# git, wandb and the shell each say "full" differently.
DISK_FULL = (
    "No space left on device",
    "Disk quota exceeded",
    "Out of diskspace",
    "short write",
    "[Errno 28]",
    "[Errno 122]",
)
# A write inside .git refused: a checkout shared with a group where another member's
# objects or refs are not writable for you. Never origin's "Permission denied (publickey)".
REPO_NOT_WRITABLE = (
    "insufficient permission for adding an object",
    re.compile(r"\.git/[^\n]*Permission denied"),
    re.compile(
        r"(?:Unable to create|cannot lock ref|unable to (?:create|write|open)|"
        r"could not (?:open|write|create))[^\n]*Permission denied",
        re.IGNORECASE,
    ),
)

GIT_FAILURES: tuple[tuple[str, tuple[Needle, ...], str, str], ...] = (
    (
        "disk_full",
        DISK_FULL,
        "The disk (or your quota) on the login node is full: git could not write, and stopped.",
        "Free space on {host}: `quota -s` and `df -h {repo}` show where; old wandb runs, "
        "conda or pip caches and core files are the usual culprits (`du -sh ~/.cache "
        "~/.conda`). Then retry; {op:repo_status} shows the checkout.",
    ),
    (
        "checkout_filter_failed",
        ("smudge filter", "external filter", "clean filter", "git-lfs filter-process"),
        "A checkout filter on the login node (git-lfs, or another smudge filter in the git "
        "config) failed while git wrote files.",
        "On {host}, `git -C {repo} config --get-regexp '^filter\\.'` shows the filters; for "
        "git-lfs, `git -C {repo} lfs env` and its server's reachability. {op:repo_status} "
        "shows the checkout.",
    ),
    (
        "dubious_ownership",
        ("detected dubious ownership",),
        "git refuses the repo: it is owned by another user on the login node.",
        "If you trust it, its owner (or you, on {host}) can run "
        "`git config --global --add safe.directory {repo}`; the relay never changes git "
        "config.",
    ),
    (
        "git_identity_missing",
        (
            "Please tell me who you are",
            "unable to auto-detect email address",
            "empty ident name",
            "identity unknown",
        ),
        "git on the login node has no identity (user.name, user.email), and the rebase has "
        "to write commits. Nothing was changed.",
        'On {host} run `git config --global user.name "Your Name"` and `git config --global '
        'user.email "you@example.org"` (or the same without --global in {repo}, for this '
        "checkout only), then {op:rebase} again.",
    ),
    (
        "repo_permission_denied",
        REPO_NOT_WRITABLE,
        "Your account cannot write inside the repo's .git on the login node: a checkout "
        "shared with a group, where objects or refs another member created are not writable "
        "for you.",
        "On {host}, `find {repo}/.git ! -writable | head` lists them. Their owner (or an "
        "admin) can fix it with `chmod -R g+w {repo}/.git`, and `git -C {repo} config "
        "core.sharedRepository group` keeps new files group-writable.",
    ),
    (
        "not_a_repo",
        ("not a git repository",),
        "The path on the login node is not a git checkout.",
        "Point {arg:remote_repo} / AEXP_RELAY_REMOTE_REPO at the top directory of the clone.",
    ),
    (
        "locked",
        ("index.lock", "Another git process seems to be running", "cannot lock ref"),
        "Another git process holds a lock in the repo.",
        "Wait for it to finish and retry. If no git process runs there, a stale lock file "
        "must be removed by hand on {host} (`ls {repo}/.git/*.lock`).",
    ),
    (
        "diverged",
        (
            "Not possible to fast-forward",
            "Diverging branches can't be fast-forwarded",
            "not possible to fast-forward",
        ),
        "Local and upstream both have new commits, so a fast-forward pull is impossible.",
        "Run {op:rebase} to replay the local commits on top of upstream, then {op:push}.",
    ),
    (
        "dirty_worktree",
        (
            "would be overwritten by",
            "You have unstaged changes",
            "Your index contains uncommitted changes",
            "Please commit or stash them",
            "contains uncommitted changes",
        ),
        "The checkout has uncommitted changes that this op would touch; nothing was changed.",
        "Commit or stash them on the login node (the relay never discards work), then retry. "
        "{op:repo_status} lists them.",
    ),
    (
        "push_rejected",
        ("[remote rejected]", "hook declined", "protected branch"),
        "Origin refused the push (a server hook or branch protection). Nothing changed.",
        "Read the remote's message in stderr_tail; push to another branch or open a pull request.",
    ),
    (
        "non_fast_forward",
        ("[rejected]", "non-fast-forward", "fetch first", "Updates were rejected"),
        "Origin has commits that the local branch does not have; the push was rejected.",
        "Run {op:rebase} to put the local commits on top of origin, then {op:push} again.",
    ),
    (
        "no_upstream",
        ("There is no tracking information", "no upstream", "has no upstream branch"),
        "The current branch has no upstream branch.",
        "Set one on {host} (`git -C {repo} branch --set-upstream-to=origin/<branch>`), "
        "or use {op:push} with an explicit branch.",
    ),
    (
        "detached_head",
        (
            "You are not currently on a branch",
            "not a full refname",
            "HEAD (no branch)",
            "does not point to a branch",
        ),
        "HEAD is detached in the checkout.",
        "Check out a branch on the login node, or pass branch explicitly to {op:push}.",
    ),
    (
        "unknown_branch",
        ("src refspec", "does not match any"),
        "No local branch by that name.",
        "Omit branch to push the current branch; {op:repo_status} shows it.",
    ),
    (
        "auth_to_origin_failed",
        (
            "Permission denied",
            "Authentication failed",
            "could not read Username",
            "terminal prompts disabled",
            "Host key verification failed",
            "invalid credentials",
        ),
        "The login node could not authenticate to origin.",
        "Fix git's credentials on the login node: an ssh key or agent for git@ URLs, a "
        "credential helper or token for https. Prompts are disabled on purpose.",
    ),
    (
        "origin_unreachable",
        (
            "Could not resolve host",
            "Could not read from remote repository",
            "unable to access",
            "Connection refused",
            "Connection timed out",
            "does not appear to be a git repository",
        ),
        "The login node could not reach origin.",
        "Check the remote's URL (`git -C {repo} remote -v` on {host}) and the login node's "
        "network access.",
    ),
    (
        "git_too_old",
        ("unknown option", "unknown switch", "usage: git "),
        "git on the login node does not know an option this relay uses; it is too old.",
        "Load git 2.20 or newer on the login node (e.g. `module load git`).",
    ),
    (
        "git_missing",
        ("git: command not found", "git: not found"),
        "git is not on PATH for non-interactive ssh sessions on the login node.",
        "Make git available there (e.g. `module load git` near the top of ~/.bashrc, before "
        "any early return for non-interactive shells).",
    ),
)

# Failures reported by the remote script's own guards (remote.guard / f).
GUARD_FAILURES: dict[str, tuple[str, str]] = {
    "not_a_repo": (
        "The path on the login node is not a git checkout.",
        "Point {arg:remote_repo} / AEXP_RELAY_REMOTE_REPO at the top directory of the clone.",
    ),
    "repo_missing": (
        "The repo path does not exist on the login node.",
        "Check {arg:remote_repo} / AEXP_RELAY_REMOTE_REPO; {op:status} shows what the host sees.",
    ),
    "repo_not_dir": (
        "The repo path on the login node is a file, not a directory.",
        "Point {arg:remote_repo} / AEXP_RELAY_REMOTE_REPO at the clone's directory.",
    ),
    "repo_inaccessible": (
        "The repo directory on the login node cannot be entered (permission denied).",
        "Check the directory's permissions for your login user.",
    ),
    "operation_in_progress": (
        "A rebase, merge, cherry-pick or revert is already in progress in the checkout; "
        "the relay will not touch it.",
        "Finish or abort it by hand on the login node, then retry. {op:repo_status} shows "
        "the conflicted files.",
    ),
    "unknown_remote": (
        "No remote by that name is configured in the repo.",
        "Omit {arg:remote} to use origin (or all remotes for {op:fetch}), or pass a configured "
        "remote; `git remote -v` on the login node lists them.",
    ),
    "run_not_found": (
        "A requested run is not a directory in the wandb directory (the repo's wandb/, or "
        "AEXP_RELAY_WANDB_DIR).",
        "Call {op:wandb_sync} without {arg:runs} to see the unsynced offline runs.",
    ),
    "wandb_missing": (
        "The wandb command was not found on the login node.",
        "Set AEXP_RELAY_WANDB to its absolute path there, e.g. ~/venv/bin/wandb.",
    ),
    "git_missing": (
        "git is not on PATH for non-interactive ssh sessions on the login node.",
        "Make git available there, e.g. `module load git` near the top of ~/.bashrc.",
    ),
    "git_too_old": (
        "git on the login node is older than 2.20, which this relay needs.",
        "Load a newer git on the login node (e.g. `module load git`).",
    ),
    "path_variable_unset": (
        "A variable in the path is not set (or empty) in non-interactive shells on the login "
        "node, so the path cannot be resolved there.",
        "Set it near the top of ~/.bashrc on {host}, above the line that returns early for "
        "non-interactive shells, or spell the path out; {op:status} shows how the login node "
        "resolves it.",
    ),
    "repo_not_absolute": (
        "The repo path is not absolute once the login node expanded its variables.",
        "Pass {arg:remote_repo} with a variable that holds an absolute path ($HOME, $SCRATCH) "
        "or spell it out.",
    ),
    "untracked_in_the_way": (
        "Untracked files in the checkout are in the way of files the upstream adds; nothing "
        "was changed (git would refuse to overwrite them too).",
        "{op:repo_status} lists the untracked files: move or delete the ones in the way on "
        "{host}, or commit them, then retry.",
    ),
}
# Guards that stop for a reason git itself words the same way.
for _kind in ("detached_head", "no_upstream", "dirty_worktree", "git_identity_missing"):
    _entry = next(f for f in GIT_FAILURES if f[0] == _kind)
    GUARD_FAILURES[_kind] = (_entry[2], _entry[3])


MIN_GIT = (2, 20)


def git_version_ok(version: str) -> bool:
    numbers = re.findall(r"\d+", version)[:2]
    return len(numbers) == 2 and (int(numbers[0]), int(numbers[1])) >= MIN_GIT


def _said(needle: Needle, text: str) -> bool:
    return bool(needle.search(text)) if isinstance(needle, re.Pattern) else needle in text


def classify_git_failure(stderr: str, exit_code: int) -> Failure:
    for kind, needles, message, hint in GIT_FAILURES:
        if any(_said(n, stderr) for n in needles):
            return Failure(kind, message, hint)
    if exit_code == 127:
        kind, needles, message, hint = next(f for f in GIT_FAILURES if f[0] == "git_missing")
        return Failure(kind, message, hint)
    return Failure(
        "command_failed",
        f"The command failed on the login node with exit code {exit_code}.",
        "Read stderr_tail for git's own message. {op:repo_status} shows the checkout's state.",
    )


# git refusing the whole checkout: this wins over whichever guard tripped on it.
REPO_REFUSALS = ("dubious_ownership", "not_a_repo", "git_too_old", "git_missing")


def classify_guard_failure(kind: str, git_said: str) -> Failure:
    """A guard stopped the script. Classify by what git said, not by which guard failed:
    in a checkout git refuses, ``git remote get-url`` fails too, and that is not
    ``unknown_remote``."""
    if git_said.strip():
        said = classify_git_failure(git_said, 1)
        if said.kind in REPO_REFUSALS:
            return said
    return guard_failure(kind)


def guard_failure(kind: str) -> Failure:
    message, hint = GUARD_FAILURES.get(
        kind, ("The remote command stopped early.", "Read stderr_tail for details.")
    )
    return Failure(kind, message, hint)


# --------------------------------------------------------------------------- a proxy

_PROXY_VALUE = re.compile(r"(?i)(?:https?|all)_proxy\s*[= ]\s*[\"']?([^\"'\s;]+)")


def proxy_failure(evidence: str) -> Failure | None:
    """origin was unreachable: is it because the login node's proxy is set only for
    interactive shells? ``evidence`` is the ``proxy`` step's output: ``env NAME`` for a
    proxy variable this (non-interactive) session has, ``git http.proxy`` when git has
    one, ``rc FILE<TAB>LINE`` for an rc file that sets one."""
    lines = evidence.splitlines()
    if any(line.startswith(("env ", "git ")) for line in lines):
        return None
    found = [line[3:].split("\t", 1) for line in lines if line.startswith("rc ")]
    if not found or len(found[0]) != 2:
        return None
    where, text = found[0]
    match = _PROXY_VALUE.search(text)
    value = _redact_proxy(match.group(1)) if match else "http://PROXY:PORT"
    return Failure(
        "origin_needs_proxy",
        f"The login node could not reach origin, and its proxy is set only for interactive "
        f"shells: {where} sets one, but ssh commands, cron and batch jobs do not get it.",
        f"Give it to git itself on {{host}}: `git config --global http.proxy {value}` (git "
        f"uses it for https too), or move the proxy export in {where} above the line that "
        "returns early for non-interactive shells. Then retry.",
    )


def _redact_proxy(value: str) -> str:
    return re.sub(r"//[^/@\s]+@", "//USER:PASSWORD@", value)
