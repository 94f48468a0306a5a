"""Pure: git porcelain, push, fetch, wandb and ssh output -> typed values and error kinds."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from .results import BranchState, Commit, FileEntry, PushedRef, RefUpdate, WandbRun

LIST_CAP = 200
COMMIT_CAP = 100
STDERR_TAIL_LINES = 20
STDERR_TAIL_CHARS = 4000


class UnparseableOutput(Exception):
    """Remote output did not have the shape a parser needs. Never papered over with a
    guess: the client reports kind ``unparseable_output`` with the raw tail."""


_CREDENTIALS_IN_URL = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)


def clean_text(text: str, *, keep_newlines: bool = False) -> str:
    """Escape terminal control characters so they are shown, never interpreted."""
    out = []
    for ch in text:
        if keep_newlines and ch in "\n\t":
            out.append(ch)
        elif unicodedata.category(ch) == "Cc":
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return "".join(out)


def human_size(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    value = n / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"


def redact(text: str) -> str:
    """Drop credentials embedded in URLs (https://user:token@host)."""
    return _CREDENTIALS_IN_URL.sub(r"\1***@", text)


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last lines, progress meters collapsed, control characters escaped, URLs redacted."""
    rows = [row.rsplit("\r", 1)[-1] for row in text.replace("\r\n", "\n").split("\n")]
    kept = "\n".join([r for r in rows if r.strip()][-lines:])
    if len(kept) > STDERR_TAIL_CHARS:
        kept = kept[-STDERR_TAIL_CHARS:]
    return clean_text(redact(kept), keep_newlines=True)


# --------------------------------------------------------------------------- status


@dataclass(frozen=True)
class ParsedStatus:
    state: BranchState
    staged: list[FileEntry]
    unstaged: list[FileEntry]
    untracked: list[str]
    conflicted: list[str]
    counts: tuple[int, int, int, int]

    @property
    def truncated(self) -> bool:
        shown = (len(self.staged), len(self.unstaged), len(self.untracked), len(self.conflicted))
        return any(n > k for n, k in zip(self.counts, shown, strict=True))


def parse_status_z(text: str, cap: int = LIST_CAP) -> ParsedStatus:
    """Parse ``git status --porcelain=v2 --branch -z``."""
    branch: str | None = None
    head: str | None = None
    upstream: str | None = None
    ahead: int | None = None
    behind: int | None = None
    staged: list[FileEntry] = []
    unstaged: list[FileEntry] = []
    untracked: list[str] = []
    conflicted: list[str] = []
    counts = [0, 0, 0, 0]
    records = text.split("\0")
    i = 0
    while i < len(records):
        rec = records[i]
        i += 1
        if not rec:
            continue
        if rec.startswith("# branch.oid "):
            oid = rec[len("# branch.oid ") :]
            head = None if oid == "(initial)" else oid
        elif rec.startswith("# branch.head "):
            name = rec[len("# branch.head ") :]
            branch = None if name == "(detached)" else clean_text(name)
        elif rec.startswith("# branch.upstream "):
            upstream = clean_text(rec[len("# branch.upstream ") :])
        elif rec.startswith("# branch.ab "):
            m = re.match(r"# branch\.ab \+(\d+) -(\d+)", rec)
            if m:
                ahead, behind = int(m.group(1)), int(m.group(2))
        elif rec[:2] in ("1 ", "2 "):
            fields = rec.split(" ", 8 if rec[0] == "1" else 9)
            xy = fields[1]
            path = clean_text(fields[-1])
            orig = None
            if rec[0] == "2" and i < len(records):
                orig = clean_text(records[i])
                i += 1
            entry = FileEntry(path=path, status=xy, orig_path=orig)
            if xy[0] != ".":
                counts[0] += 1
                if len(staged) < cap:
                    staged.append(entry)
            if xy[1] != ".":
                counts[1] += 1
                if len(unstaged) < cap:
                    unstaged.append(entry)
        elif rec.startswith("u "):
            counts[3] += 1
            if len(conflicted) < cap:
                conflicted.append(clean_text(rec.split(" ", 10)[-1]))
        elif rec.startswith("? "):
            counts[2] += 1
            if len(untracked) < cap:
                untracked.append(clean_text(rec[2:]))
    state = BranchState(branch=branch, head=head, upstream=upstream, ahead=ahead, behind=behind)
    return ParsedStatus(state, staged, unstaged, untracked, conflicted, tuple(counts))  # type: ignore[arg-type]


def parse_head_line(text: str) -> tuple[str | None, str | None]:
    line = text.strip("\n")
    if not line:
        return None, None
    sha, _, subject = line.partition("\t")
    return sha or None, clean_text(subject)


def parse_commits(text: str, cap: int = COMMIT_CAP) -> list[Commit]:
    commits = []
    for line in text.splitlines():
        sha, sep, subject = line.partition("\t")
        if sep and re.fullmatch(r"[0-9a-f]{7,64}", sha):
            commits.append(Commit(sha=sha, subject=clean_text(subject)))
        if len(commits) >= cap:
            break
    return commits


def parse_sha(text: str) -> str | None:
    value = text.strip()
    return value if re.fullmatch(r"[0-9a-f]{7,64}", value) else None


# --------------------------------------------------------------------------- progress

# git --progress phases, in the order they happen, for one overall percentage.
_PROGRESS_RE = re.compile(
    rb"(Counting objects|Compressing objects|Receiving objects|Resolving deltas|Writing objects)"
    rb":\s+(\d{1,3})%"
)
_PHASE_ORDER = {
    b"Counting objects": 0,
    b"Compressing objects": 1,
    b"Receiving objects": 2,
    b"Writing objects": 2,
    b"Resolving deltas": 3,
}


class GitProgress:
    """Feeds on git's stderr bytes; calls back with (overall percent, message) as it moves."""

    def __init__(self, callback: Callable[[float, str], None]) -> None:
        self.callback = callback
        self.last = -1.0
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        data = self.pending + chunk
        cut = max(data.rfind(b"\r"), data.rfind(b"\n"))
        self.pending = data[cut + 1 :][-256:] if cut >= 0 else data[-256:]
        for match in _PROGRESS_RE.finditer(data[: cut + 1] if cut >= 0 else b""):
            phase = match.group(1)
            pct = min(100, int(match.group(2)))
            overall = (_PHASE_ORDER[phase] * 100 + pct) / 4
            if overall > self.last:
                self.last = overall
                self.callback(overall, f"{phase.decode()}: {pct}%")


# --------------------------------------------------------------------------- fetch


def parse_ref_snapshot(text: str) -> dict[str, str]:
    refs = {}
    for line in text.splitlines():
        sha, _, ref = line.partition(" ")
        if ref and not ref.endswith("/HEAD"):
            refs[ref] = sha
    return refs


def diff_refs(before: dict[str, str], after: dict[str, str]) -> list[RefUpdate]:
    updates = []
    for ref in sorted(set(before) | set(after)):
        old, new = before.get(ref), after.get(ref)
        if old == new:
            continue
        change = "new" if old is None else "deleted" if new is None else "updated"
        short = clean_text(ref.removeprefix("refs/remotes/"))
        updates.append(RefUpdate(ref=short, old=old, new=new, change=change))
    return updates


# --------------------------------------------------------------------------- push

_PUSH_FLAGS = {" ": "ok", "+": "forced", "-": "deleted", "*": "new", "=": "up_to_date"}


def parse_push_porcelain(text: str) -> list[PushedRef]:
    """Lines ``<flag>\\t<from>:<to>\\t<summary>`` from ``git push --porcelain``."""
    refs = []
    for line in text.splitlines():
        if len(line) < 2 or line[1] != "\t":
            continue
        flag, _, rest = line[0], "", line[2:]
        spec, _, summary = rest.partition("\t")
        local, _, remote_ref = spec.partition(":")
        if flag == "!":
            status = "remote_rejected" if "remote rejected" in summary else "rejected"
        else:
            status = _PUSH_FLAGS.get(flag, "unknown")
        refs.append(
            PushedRef(
                local=clean_text(local),
                remote_ref=clean_text(remote_ref),
                status=status,
                summary=clean_text(summary),
            )
        )
    return refs


# --------------------------------------------------------------------------- wandb

RUN_NAME_RE = re.compile(r"^offline-run-[A-Za-z0-9_.-]+$")


def parse_wandb_runs(text: str) -> list[WandbRun]:
    """Lines ``<name>\\t<KiB>\\t<synced 0|1>`` from the run listing."""
    runs = []
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) != 3 or not RUN_NAME_RE.match(parts[0]) or ".." in parts[0]:
            continue
        kib = int(parts[1]) if parts[1].isdigit() else 0
        runs.append(WandbRun(name=parts[0], size_bytes=kib * 1024, synced=parts[2] == "1"))
    return sorted(runs, key=lambda r: r.name)


# --------------------------------------------------------------------------- failures


@dataclass(frozen=True)
class Failure:
    kind: str
    message: str
    hint: str


# First match wins. Hints use {op:NAME} placeholders (see errors.render_hint).
GIT_FAILURES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "dubious_ownership",
        ("detected dubious ownership",),
        "git refuses the repo: it is owned by another user on the login node.",
        "If you trust it, its owner (or you, on the login node) can run "
        "`git config --global --add safe.directory <path>`; the relay never changes git config.",
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
        "must be removed by hand on the login node.",
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
        "Set one on the login node (git branch --set-upstream-to=origin/<branch>), "
        "or use {op:push} with an explicit branch.",
    ),
    (
        "detached_head",
        ("You are not currently on a branch", "not a full refname", "HEAD (no branch)"),
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
        "Check the remote's URL (git remote -v on the login node) and the login node's "
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
}


MIN_GIT = (2, 20)


def git_version_ok(version: str) -> bool:
    numbers = re.findall(r"\d+", version)[:2]
    return len(numbers) == 2 and (int(numbers[0]), int(numbers[1])) >= MIN_GIT


def classify_git_failure(stderr: str, exit_code: int) -> Failure:
    for kind, needles, message, hint in GIT_FAILURES:
        if any(n in stderr for n in needles):
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


SSH_FAILURES: tuple[tuple[str, tuple[str, ...], str, str], ...] = (
    (
        "host_key_changed",
        ("REMOTE HOST IDENTIFICATION HAS CHANGED",),
        "The host's key differs from the one in known_hosts; ssh refused to connect.",
        "This can be an attack, and the relay never bypasses host key checks. Verify the new "
        "key with your cluster's admins, then remove the old one (ssh-keygen -R <host>).",
    ),
    (
        "host_key_unknown",
        ("Host key verification failed", "host key is known", "No ED25519 host key"),
        "The host's key is not in known_hosts, and the relay does not accept new keys.",
        "Run `ssh <host>` once in a terminal, check the fingerprint, and accept it.",
    ),
    (
        "unresolvable_host",
        ("Could not resolve hostname", "Name or service not known", "nodename nor servname"),
        "The host name does not resolve.",
        "Check the host / AEXP_RELAY_SSH_HOST, and HostName in ~/.ssh/config for an alias.",
    ),
    (
        "connection_refused",
        ("Connection refused",),
        "Nothing accepts ssh connections at the host and port.",
        "Check the host name and Port in ~/.ssh/config, and that the login node is up.",
    ),
    (
        "auth_failed",
        ("Permission denied", "Too many authentication failures", "Authentication failed"),
        "ssh could not log in without a prompt.",
        "Load your key into ssh-agent (ssh-add). For password, MFA or Duo logins, run "
        "`aexp-relay-mcp connect` once in a terminal to open a shared connection.",
    ),
    (
        "connection_timeout",
        ("Connection timed out", "Operation timed out", "timed out during banner"),
        "The connection to the host timed out.",
        "Check the network path (VPN, ProxyJump) and AEXP_RELAY_CONNECT_TIMEOUT.",
    ),
    (
        "connection_dropped",
        (
            "closed by remote host",
            "Connection reset",
            "Broken pipe",
            "Connection closed by",
            "ControlMaster) closed before the command finished",
        ),
        "The ssh connection dropped before the command finished.",
        "Retry; {op:repo_status} shows whether anything changed. If it keeps dropping, run "
        "with AEXP_RELAY_SSH_VERBOSE=1 and read the ssh log.",
    ),
)


def classify_ssh_failure(stderr: str) -> Failure:
    for kind, needles, message, hint in SSH_FAILURES:
        if any(n in stderr for n in needles):
            return Failure(kind, message, hint)
    return Failure(
        "unreachable",
        "ssh could not run the command on the host.",
        "Run {op:status}, or retry with AEXP_RELAY_SSH_VERBOSE=1 and read the ssh log.",
    )
